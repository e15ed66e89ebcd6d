"""Load documents, tokenize, pack into blocks, and keep validation text out of training.

Packing concatenates documents with an EOS token between them and cuts the stream into
blocks of `block_size` tokens; the tail that does not fill a block is dropped.
Arrays are NumPy so every backend can use them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from scu import ScuError

MIN_OVERLAP_DOC_CHARS = 64  # shorter documents ("ACT I", "Amen.") may legitimately repeat


def load_documents(source: str | Path, text_field: str = "text", tokenizer: Any = None) -> list[str]:
    """Read documents from .txt (blank-line separated), .jsonl (`text` or chat `messages`), or `datasets`."""
    path = Path(source)
    if path.suffix in {".txt", ".jsonl", ".json"} or path.exists():
        if not path.exists():
            raise ScuError(f"data file not found: {path} (check the path in data.train_data / data.val_data)")
        if path.is_dir():
            return _load_datasets_dir(path, text_field)
        if path.suffix == ".txt":
            docs = split_txt(read_utf8(path))
        elif path.suffix in {".jsonl", ".json"}:
            docs = _load_jsonl(path, text_field, tokenizer)
        else:
            raise ScuError(f"unsupported data file type {path.suffix!r} for {path}; use .txt, .jsonl or a datasets directory")
    else:
        docs = _load_hub_dataset(str(source), text_field)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ScuError(f"no text in {source}: the dataset is empty; point data.train_data at a file with text")
    return docs


def split_txt(text: str) -> list[str]:
    """Documents of a plain text file: paragraphs separated by one or more blank lines."""
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def not_utf8(path: Path, e: UnicodeDecodeError) -> ScuError:
    return ScuError(
        f"{path} is not UTF-8 text (it holds byte 0x{e.object[e.start]:02x}); "
        f"convert it first, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
    )


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error, never silent replacement characters."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def _load_jsonl(path: Path, text_field: str, tokenizer: Any) -> list[str]:
    docs = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScuError(f"{path}:{lineno} is not valid JSON ({e.msg}); fix or remove that line") from None
        docs.append(_row_text(row, text_field, tokenizer, f"{path}:{lineno}"))
    return docs


def _row_text(row: dict, text_field: str, tokenizer: Any, where: str) -> str:
    if not isinstance(row, dict):
        raise ScuError(f"{where} is a JSON {type(row).__name__}, not an object; write one {{\"{text_field}\": ...}} object per line")
    if text_field in row:
        text = row[text_field]
        if not isinstance(text, str):
            shown = "null" if text is None else type(text).__name__
            raise ScuError(f"{where}: `{text_field}` is {shown}, not a string; fix or remove that line")
        return text
    if "messages" in row:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ScuError(f"{where} has chat `messages` but the tokenizer has no chat template; use a chat model or a `{text_field}` field")
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    raise ScuError(f"{where} has neither a `{text_field}` field nor `messages`; set data.text_field to the right column")


def _load_datasets_dir(path: Path, text_field: str) -> list[str]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise ScuError(f"{path} is a directory but not a saved `datasets` dataset; pass a .txt/.jsonl file") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if text_field not in ds.column_names:
        raise ScuError(f"{path} has no column {text_field!r} (columns: {ds.column_names}); set data.text_field")
    return list(ds[text_field])


def _load_hub_dataset(name: str, text_field: str) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown name, ...: all mean the same thing to the user
        raise ScuError(f"could not load dataset {name!r} ({type(e).__name__}); pass a local .txt/.jsonl path instead") from None
    if text_field not in ds.column_names:
        raise ScuError(f"dataset {name!r} has no column {text_field!r} (columns: {ds.column_names}); set data.text_field")
    return list(ds[text_field])


def tokenize_documents(docs: Iterable[str], tokenizer: Any) -> list[list[int]]:
    """Token ids per document, without special tokens (packing adds EOS between documents)."""
    return tokenizer(list(docs), add_special_tokens=False)["input_ids"]


def pack(token_docs: list[list[int]], block_size: int, eos_id: int) -> np.ndarray:
    """Concatenate documents with EOS after each and cut into [n_blocks, block_size] int64 blocks."""
    total = sum(len(d) + 1 for d in token_docs)
    stream = np.empty(total, dtype=np.int64)
    i = 0
    for d in token_docs:
        stream[i : i + len(d)] = d
        stream[i + len(d)] = eos_id
        i += len(d) + 1
    n_blocks = total // block_size
    if n_blocks == 0:
        raise ScuError(
            f"block_size {block_size} is longer than the data ({total} tokens); lower training.block_size or add data"
        )
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size)


def normalized_hash(doc: str) -> str:
    """Hash of a document with case and white space folded, for duplicate detection."""
    return hashlib.sha1(" ".join(doc.lower().split()).encode()).hexdigest()


def overlapping_documents(train: list[str], val: list[str]) -> list[int]:
    """Indices of validation documents (of at least MIN_OVERLAP_DOC_CHARS) that also occur in training."""
    seen = {normalized_hash(d) for d in train if len(d) >= MIN_OVERLAP_DOC_CHARS}
    return [i for i, d in enumerate(val) if len(d) >= MIN_OVERLAP_DOC_CHARS and normalized_hash(d) in seen]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic document-level split; exact duplicates always land on the same side."""
    groups: dict[str, list[str]] = {}
    for d in docs:
        groups.setdefault(normalized_hash(d), []).append(d)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    n_val = max(1, round(len(keys) * val_fraction)) if len(keys) > 1 else 0
    val = [d for k in keys[:n_val] for d in groups[k]]
    train = [d for k in keys[n_val:] for d in groups[k]]
    return train, val
