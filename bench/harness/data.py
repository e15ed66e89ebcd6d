"""The harness's fixed data: training slices, a validation slice and two held-out sets, tokenized once.

Shakespeare is cut in reading order, at document (blank-line paragraph) boundaries:

    [ training pool ........................ | validation | held-out test ]

Every training slice starts at the beginning of the pool, so the sizes are nested. Validation (for every
selection: early stopping, picking a grid value or a transfer rule) sits between the pool and the
held-out set, which is the last part of the file and is only ever reported. Held-out and validation
documents that also occur in the pool (repeated lines like "Exeunt.") are dropped, so both are disjoint
from every training slice. Forgetting is measured on WikiText-2 validation articles, whose titles do
not occur in the WikiText-103 subset the base was pre-trained on. The mid-run data switch goes to
WikiText-103 text (the base's own pre-training domain), a shift in DataBPT the controller must absorb.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scu import ScuError
from scu.data.text import overlapping_documents, pack, split_txt, tokenize_documents
from scu.report.records import atomic_write_json


@dataclass(frozen=True)
class DataSpec:
    train_tokens: tuple[int | None, ...]  # training slice sizes; None: the whole pool
    val_tokens: int
    test_tokens: int
    wiki_tokens: int
    switch_tokens: int
    block_size: int


def files(data_dir: Path) -> dict[str, Path]:
    return {
        "shakespeare": data_dir / "shakespeare" / "input.txt",
        "wiki_pretrain": data_dir / "wikitext" / "wiki103_subset.txt",
        "wiki_heldout": data_dir / "wikitext" / "wiki2_valid.txt",
    }


def check_files(data_dir: Path) -> dict[str, Path]:
    paths = files(data_dir)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ScuError(f"missing data file(s) {', '.join(missing)}; pass --data-dir with the shared data folder")
    return paths


def take(docs: list[str], counts: list[int], tokens: int) -> int:
    """How many leading documents hold at least `tokens` tokens (EOS included); all of them if they don't."""
    total = 0
    for i, c in enumerate(counts):
        total += c + 1
        if total >= tokens:
            return i + 1
    return len(docs)


def prepare(spec: DataSpec, tokenizer: Any, data_dir: Path, work: Path) -> dict[str, Any]:
    """Write training slices (.txt) and held-out block arrays (.npy) under `work`; return what was made."""
    paths = check_files(data_dir)
    work.mkdir(parents=True, exist_ok=True)
    manifest_path = work / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    read = lambda p: split_txt(p.read_text(encoding="utf-8"))  # noqa: E731
    docs = read(paths["shakespeare"])
    counts = [len(t) for t in tokenize_documents(docs, tokenizer)]
    eos = tokenizer.eos_token_id
    margin = spec.block_size  # packing drops a partial last block
    rev_docs, rev_counts = docs[::-1], counts[::-1]
    n_test = take(rev_docs, rev_counts, spec.test_tokens + margin)
    n_val = take(rev_docs[n_test:], rev_counts[n_test:], spec.val_tokens + margin)
    test_docs = docs[len(docs) - n_test :]
    val_docs = docs[len(docs) - n_test - n_val : len(docs) - n_test]
    pool, pool_counts = docs[: len(docs) - n_test - n_val], counts[: len(docs) - n_test - n_val]
    dropped = {}
    for name, held in (("test", test_docs), ("val", val_docs)):
        shared = set(overlapping_documents(pool, held))
        dropped[name] = len(shared)
        held[:] = [d for i, d in enumerate(held) if i not in shared]
    manifest: dict[str, Any] = {"train": {}, "dropped_as_in_pool": dropped}
    for size in spec.train_tokens:
        n = len(pool) if size is None else take(pool, pool_counts, size)
        if size is not None and sum(pool_counts[:n]) + n < size:
            raise ScuError(f"Shakespeare has only {sum(pool_counts) + len(pool)} pool tokens, fewer than the {size} asked")
        label = "pool" if size is None else str(size)
        path = work / f"train_{label}.txt"
        path.write_text("\n\n".join(pool[:n]), encoding="utf-8")
        manifest["train"][label] = {"path": str(path), "docs": n, "tokens": sum(pool_counts[:n]) + n}
    held = {
        "val": val_docs,
        "test": test_docs,
        "wiki": read(paths["wiki_heldout"]),
        "switch": read(paths["wiki_pretrain"])[::-1],  # from the end: far from the base's first batches
    }
    want = {"val": spec.val_tokens, "test": spec.test_tokens, "wiki": spec.wiki_tokens, "switch": spec.switch_tokens}
    manifest["sets"] = {}
    for name, set_docs in held.items():
        set_counts = [len(t) for t in tokenize_documents(set_docs, tokenizer)]
        n = take(set_docs, set_counts, want[name] + margin)
        blocks = pack(tokenize_documents(set_docs[:n], tokenizer), spec.block_size, eos)
        np.save(work / f"{name}.npy", blocks)
        manifest["sets"][name] = {"docs": n, "blocks": len(blocks), "tokens": int(blocks.size),
                                  "predicted_tokens": int(blocks.shape[0] * (blocks.shape[1] - 1))}
    manifest["shakespeare_chars"] = {"pool": sum(map(len, pool)), "val": sum(map(len, val_docs)),
                                     "test": sum(map(len, test_docs))}
    atomic_write_json(manifest_path, manifest)
    return manifest


def load_blocks(work: Path) -> dict[str, np.ndarray]:
    return {name: np.load(work / f"{name}.npy") for name in ("val", "test", "wiki", "switch")}
