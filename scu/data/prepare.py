"""`scu data prepare`: tokenize and pack a corpus once, save it as Arrow, reuse it across runs.

The pipeline reads documents incrementally (scu.data.sources), tokenizes them in chunks with
`datasets.map(batched=True, num_proc=K)`, and streams the token ids into fixed-size blocks,
so memory stays bounded by one chunk whatever the corpus size. Packing is `scu.data.text.pack`
done incrementally: documents in order, one EOS after each, the tail that does not fill a
block dropped; so `tokens_per_epoch` means the same as for raw text.

Train/validation separation is decided per document from its normalized-text hash and the
seed, so exact duplicates always land on the same side and the split needs no global state.
A separate validation source is read first, and training documents that repeat one of its
documents are removed (and counted).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from scu import ScuError
from scu.data.sources import HUB_TIMEOUT_S, Source, iter_documents, resolve_source
from scu.data.chat import epoch_tokens, tokenize_examples
from scu.data.text import (
    MIN_OVERLAP_DOC_CHARS, Blocks, Chat, TrainData, block_positions, load_documents, normalized_hash, pack_documents,
    packing_of, tokenize_documents,
)
from scu.report.records import atomic_write_json, package_versions

PREP_FILE = "prep.json"
FORMAT = "scu-prepared/1"
CHUNK_CHARS = 4 << 20  # characters of text per datasets.map call: sets the memory peak (docs/data.md)
SPLIT_RULE = (
    "a document goes to validation iff int(sha1(f'{seed}:{normalized_hash(doc)}')[:16], 16) / 2**64 < val_fraction; "
    "exact duplicates (same normalized hash) therefore always share a side"
)
_PROBE = "Tokenizer fingerprint probe: 'Hello, World!' 12345 \u00e9\u00e8 \u4e2d\u6587 \n\t  end."
_VERSIONS = ["scu", "datasets", "transformers", "tokenizers", "pyarrow", "numpy"]


# ----------------------------------------------------------------------------- tokenizer

def load_tokenizer(name: str) -> Any:
    """AutoTokenizer from a local directory or a hub id; a missing hub fails fast, in one line."""
    from transformers import AutoTokenizer

    if not Path(name).expanduser().exists():
        if name.startswith((".", "/", "~")):
            raise ScuError(f"tokenizer directory not found: {name}; pass a save_pretrained directory or a hub model id")
        if os.environ.get("HF_HUB_OFFLINE", "").lower() not in {"1", "true", "yes", "on"}:
            from huggingface_hub import HfApi

            try:
                HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
            except Exception as e:
                raise ScuError(
                    f"cannot load tokenizer {name!r} from the Hugging Face Hub ({type(e).__name__}); "
                    "pass a local directory saved with save_pretrained (e.g. the base model's folder) to --tokenizer"
                ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if Path(name).expanduser().exists() else name)
    except Exception as e:
        raise ScuError(f"could not load tokenizer {name!r} ({type(e).__name__}); pass a directory with tokenizer files") from None
    if tok.eos_token_id is None:
        raise ScuError(f"tokenizer {name!r} has no EOS token, which packing puts between documents; use a tokenizer with eos_token")
    return tok


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides token ids: the vocabulary, the EOS id, and the ids of a probe text.

    The probe catches tokenizers that share a vocabulary but normalize or merge differently;
    it does not depend on how a library version serializes the tokenizer file.
    """
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]),
        "eos": tokenizer.eos_token_id,
        "probe": tokenize_documents([_PROBE], tokenizer)[0],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- tokenizing

def document_keys(docs: list[str], min_chars: int = 0) -> np.ndarray:
    """64-bit keys of the normalized-text hashes of the documents of at least `min_chars` characters."""
    return np.array([int(normalized_hash(d)[:16], 16) for d in docs if len(d) >= min_chars], dtype=np.uint64)


def _encode(batch: dict[str, list], tokenizer: Any, seed: int) -> dict[str, list]:
    """datasets.map function: token ids plus the hashes that decide duplicates and the split."""
    texts = batch["text"]
    hashes = [normalized_hash(t) for t in texts]
    return {
        "input_ids": tokenize_documents(texts, tokenizer),
        "key": np.array([int(h[:16], 16) for h in hashes], dtype=np.uint64),
        "draw": np.array([int(hashlib.sha1(f"{seed}:{h}".encode()).hexdigest()[:16], 16) for h in hashes], dtype=np.uint64),
        "chars": [len(t) for t in texts],
    }


def _text_chunks(docs: Iterator[str], max_chars: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for d in docs:
        chunk.append(d)
        size += len(d)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass
class _Chunk:
    """One tokenized chunk, as NumPy arrays (ids flattened, with per-document lengths)."""

    ids: np.ndarray
    lengths: np.ndarray
    keys: np.ndarray
    draws: np.ndarray
    chars: np.ndarray

    def head(self, n: int) -> "_Chunk":
        """The first n documents."""
        return _Chunk(self.ids[: int(self.lengths[:n].sum())], self.lengths[:n], self.keys[:n], self.draws[:n], self.chars[:n])

    def take(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flattened ids, lengths, keys and character counts of the documents where mask is True."""
        token_mask = np.repeat(mask, self.lengths)
        return self.ids[token_mask], self.lengths[mask], self.keys[mask], self.chars[mask]


def _tokenized_chunks(
    docs: Iterator[str], tokenizer: Any, seed: int, num_proc: int, workdir: Path, tag: str, chunk_chars: int
) -> Iterator[_Chunk]:
    import datasets

    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "key": datasets.Value("uint64"),
            "draw": datasets.Value("uint64"),
            "chars": datasets.Value("int64"),
        }
    )
    for i, texts in enumerate(_text_chunks(docs, chunk_chars)):
        ds = datasets.Dataset.from_dict({"text": texts})
        out = ds.map(
            _encode,
            batched=True,
            num_proc=min(num_proc, len(texts)) if num_proc > 1 else None,
            fn_kwargs={"tokenizer": tokenizer, "seed": seed},
            remove_columns=["text"],
            features=features,
            cache_file_name=str(workdir / f"{tag}-{i:06d}.arrow"),
            new_fingerprint=f"{tag}-{i}",
        )
        table = out.data
        ids = table.column("input_ids").combine_chunks()
        chunk = _Chunk(
            ids=ids.flatten().to_numpy(),
            lengths=np.diff(ids.offsets.to_numpy()),
            keys=table.column("key").to_numpy(),
            draws=table.column("draw").to_numpy(),
            chars=table.column("chars").to_numpy(),
        )
        files = [f["filename"] for f in out.cache_files]
        del out, table, ids, ds
        for f in files:
            Path(f).unlink(missing_ok=True)
        yield chunk


# ----------------------------------------------------------------------------- packing

class BlockWriter:
    """`scu.data.text.pack`, streamed: documents + EOS into [*, block_size] blocks on disk (Arrow)."""

    def __init__(self, path: Path, block_size: int, eos_id: int) -> None:
        import pyarrow as pa

        self.path, self.block_size, self.eos_id = path, block_size, eos_id
        self.schema = pa.schema([("input_ids", pa.list_(pa.int32(), block_size))])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._carry = np.empty(0, dtype=np.int32)
        self.documents = 0
        self.tokens = 0  # document tokens + one EOS each, before the tail is dropped
        self.blocks = 0
        self.keys: list[np.ndarray] = []  # normalized-hash keys of the documents written
        self.lengths: list[np.ndarray] = []  # tokens of each document written, its EOS included: the positions
        self.long_keys: list[np.ndarray] = []  # ... of those long enough to count as overlap

    def add(self, ids: np.ndarray, lengths: np.ndarray, keys: np.ndarray, chars: np.ndarray) -> None:
        import pyarrow as pa

        n = len(lengths)
        if n == 0:
            return
        stream = np.empty(ids.size + n, dtype=np.int32)
        eos_at = np.cumsum(lengths + 1) - 1
        is_doc = np.ones(stream.size, dtype=bool)
        is_doc[eos_at] = False
        stream[is_doc] = ids
        stream[eos_at] = self.eos_id
        self.documents += n
        self.tokens += stream.size
        self.keys.append(keys)
        self.lengths.append((lengths + 1).astype(np.int64))
        self.long_keys.append(keys[chars >= MIN_OVERLAP_DOC_CHARS])
        buf = np.concatenate([self._carry, stream])
        full = buf.size // self.block_size
        if full:
            flat = pa.array(buf[: full * self.block_size], type=pa.int32())
            batch = pa.FixedSizeListArray.from_arrays(flat, self.block_size)
            self._writer.write_batch(pa.record_batch([batch], schema=self.schema))
            self.blocks += full
        self._carry = buf[full * self.block_size :].copy()

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def all_keys(self) -> np.ndarray:
        return np.concatenate(self.keys) if self.keys else np.empty(0, dtype=np.uint64)

    def doc_lengths(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.empty(0, dtype=np.int64)

    def overlap_keys(self) -> np.ndarray:
        """Sorted unique keys of the documents of >= MIN_OVERLAP_DOC_CHARS characters."""
        return np.unique(np.concatenate(self.long_keys)) if self.long_keys else np.empty(0, dtype=np.uint64)

    def stats(self) -> dict[str, int]:
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "blocks": self.blocks,
            "block_tokens": self.blocks * self.block_size,
            "dropped_tail_tokens": self.tokens - self.blocks * self.block_size,
        }


# ----------------------------------------------------------------------------- prepare

@dataclass
class _Reader:
    """Tokenizes one source in order and stops at a token budget (a whole-document prefix)."""

    source: Source
    max_tokens: int | None
    documents: int = 0
    tokens: int = 0
    truncated: bool = False
    progress: Any = None
    chats: int = 0  # chat `messages` rows read: rendered as text, so their assistant tokens are not marked

    def _counted(self, docs: Iterator[str]) -> Iterator[str]:
        for d in docs:
            self.chats += isinstance(d, Chat)
            yield d

    def chunks(self, tokenizer: Any, seed: int, num_proc: int, workdir: Path, tag: str, chunk_chars: int) -> Iterator[_Chunk]:
        docs = self._counted(iter_documents(self.source, tokenizer))
        for chunk in _tokenized_chunks(docs, tokenizer, seed, num_proc, workdir, tag, chunk_chars):
            cost = chunk.lengths + 1
            if self.max_tokens is not None:
                fits = np.cumsum(cost) <= self.max_tokens - self.tokens
                if not fits.all():
                    keep = int(fits.sum())
                    chunk, cost = chunk.head(keep), cost[:keep]
                    self.truncated = True
            self.documents += len(chunk.lengths)
            self.tokens += int(cost.sum())
            if self.progress is not None:
                self.progress.update(int(cost.sum()))
            yield chunk
            if self.truncated:
                return

    def describe(self) -> dict[str, Any]:
        return {
            **self.source.describe(),
            "documents_read": self.documents,
            "tokens_read": self.tokens,
            "max_tokens": self.max_tokens,
            "truncated_by_max_tokens": self.truncated,
            "chat_documents": self.chats,
        }


def _bar(desc: str, total: int | None, progress: bool) -> Any:
    """A tokens/s progress bar (TQDM_DISABLE and non-terminals are honoured unless progress=False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, **({} if progress else {"disable": True}))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if overwrite and (out / PREP_FILE).exists():
            return
        hint = "pass --overwrite to replace it" if (out / PREP_FILE).exists() else "choose a new --out"
        raise ScuError(f"output {out} already exists and is not empty; {hint}")


def prepare(
    dataset: str,
    tokenizer: str,
    out: str | Path,
    block_size: int = 128,
    val_fraction: float = 0.05,
    val: str | None = None,
    max_tokens: int | None = None,
    val_max_tokens: int | None = None,
    num_proc: int = 1,
    streaming: bool = False,
    seed: int = 0,
    text_field: str | None = None,
    subset: str | None = None,
    join_articles: bool = False,
    overwrite: bool = False,
    refuse_overlap: bool = False,
    progress: bool = True,
    chunk_chars: int = CHUNK_CHARS,
) -> dict[str, Any]:
    """Prepare `dataset` into `out` (Arrow blocks + prep.json); return the prep.json contents."""
    import datasets

    out = Path(out).expanduser().resolve()
    if block_size < 1:
        raise ScuError(f"--block-size must be >= 1 (got {block_size})")
    if not 0.0 <= val_fraction < 1.0:
        raise ScuError(f"--val-fraction must be in [0, 1) (got {val_fraction}); use 0 for no validation split")
    if num_proc < 1:
        raise ScuError(f"--num-proc must be >= 1 (got {num_proc})")
    for flag, v in (("--max-tokens", max_tokens), ("--val-max-tokens", val_max_tokens)):
        if v is not None and v < 1:
            raise ScuError(f"{flag} must be >= 1 (got {v})")
    _check_out(out, overwrite)
    # a token budget on a hub dataset streams it: a 1 GB subset of C4 should not download all of C4
    train_source = resolve_source(dataset, text_field, subset, streaming or max_tokens is not None, join_articles)
    val_source = None
    if val is not None:
        val_source = resolve_source(val, text_field, subset, streaming or val_max_tokens is not None, join_articles)
    tok = load_tokenizer(tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_workdirs(out)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-{os.getpid()}-", dir=out.parent))
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    # K worker processes tokenize on one thread each (K processes = K cores), without the fork warning
    single_thread = num_proc > 1 and "TOKENIZERS_PARALLELISM" not in os.environ
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if num_proc > 1:  # forked workers then do not copy the parent's pages by touching them in GC passes
        gc.collect()
        gc.freeze()
    try:
        info = _run(train_source, val_source, tok, tokenizer, workdir, block_size, val_fraction, max_tokens, val_max_tokens,
                    num_proc, seed, refuse_overlap, progress, chunk_chars)
        staged = workdir / "out"
        splits = {"train": datasets.Dataset.from_file(str(workdir / "train.arrow"))}
        if info["validation"] is not None:
            splits["validation"] = datasets.Dataset.from_file(str(workdir / "validation.arrow"))
        datasets.DatasetDict(splits).save_to_disk(str(staged))
        del splits
        for side_file in [*workdir.glob("*.overlap_keys.npy"), *workdir.glob("*.doc_lengths.npy")]:
            side_file.rename(staged / side_file.name)
        atomic_write_json(staged / PREP_FILE, info)
        _move_into_place(staged, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if single_thread:
            del os.environ["TOKENIZERS_PARALLELISM"]
        if num_proc > 1:
            gc.unfreeze()
        if bars_were_on:
            datasets.enable_progress_bars()
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_dead_workdirs(out: Path) -> list[Path]:
    """Delete the `.NAME.work-PID-*` folders that killed `data prepare` runs left beside `out`; return them.

    A folder whose process still runs is another prepare in progress and is left alone; one without a
    pid (written before pids were recorded) cannot be judged and is left alone too.
    """
    removed = []
    for workdir in out.parent.glob(f".{out.name}.work-*"):
        pid = workdir.name.removeprefix(f".{out.name}.work-").split("-", 1)[0]
        if workdir.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(workdir)
    return removed


def _move_into_place(staged: Path, out: Path) -> None:
    """Rename the finished directory into place; an old prepared directory is replaced only now."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    staged.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run(
    train_source: Source, val_source: Source | None, tok: Any, tokenizer_name: str, workdir: Path, block_size: int,
    val_fraction: float, max_tokens: int | None, val_max_tokens: int | None, num_proc: int, seed: int,
    refuse_overlap: bool, progress: bool, chunk_chars: int,
) -> dict[str, Any]:
    eos = tok.eos_token_id
    train = BlockWriter(workdir / "train.arrow", block_size, eos)
    has_val = val_source is not None or val_fraction > 0
    valw = BlockWriter(workdir / "validation.arrow", block_size, eos) if has_val else None
    readers = []
    removed = 0
    try:
        if val_source is not None:
            reader = _Reader(val_source, val_max_tokens)
            readers.append(reader)
            with _bar("tokenize validation", val_max_tokens, progress) as bar:
                reader.progress = bar
                for c in reader.chunks(tok, seed, num_proc, workdir, "val", chunk_chars):
                    valw.add(c.ids, c.lengths, c.keys, c.chars)
            val_long = valw.overlap_keys()
        reader = _Reader(train_source, max_tokens)
        readers.append(reader)
        threshold = np.uint64(min(int(val_fraction * 2**64), 2**64 - 1))
        with _bar("tokenize", max_tokens, progress) as bar:
            reader.progress = bar
            for c in reader.chunks(tok, seed, num_proc, workdir, "train", chunk_chars):
                if val_source is not None:
                    overlap = (c.chars >= MIN_OVERLAP_DOC_CHARS) & np.isin(c.keys, val_long)
                    if overlap.any() and refuse_overlap:
                        raise ScuError(
                            f"{int(overlap.sum())} training documents in this chunk also occur in the validation source "
                            f"{val_source.spec}; remove them or drop --refuse-overlap to have them removed from training"
                        )
                    removed += int(overlap.sum())
                    train.add(*c.take(~overlap))
                elif valw is not None:
                    to_val = c.draws < threshold
                    valw.add(*c.take(to_val))
                    train.add(*c.take(~to_val))
                else:
                    train.add(c.ids, c.lengths, c.keys, c.chars)
    finally:
        train.close()
        if valw is not None:
            valw.close()

    if train.blocks == 0:
        raise ScuError(f"the training side has {train.tokens} tokens, fewer than one block of {block_size}; add data or lower --block-size")
    if valw is not None and valw.blocks == 0:
        raise ScuError(
            f"the validation side has {valw.tokens} tokens ({valw.documents} documents), fewer than one block of {block_size}; "
            "raise --val-fraction, pass --val, or use --val-fraction 0"
        )
    for w in (train, valw):
        if w is not None:
            np.save(w.path.with_suffix(".overlap_keys.npy"), w.overlap_keys())
            np.save(w.path.with_suffix(".doc_lengths.npy"), w.doc_lengths())
    train_keys = train.all_keys()
    val_keys = valw.all_keys() if valw is not None else np.empty(0, dtype=np.uint64)
    all_keys = np.concatenate([train_keys, val_keys])
    cross = int(np.intersect1d(train_keys, val_keys).size)
    if val_source is None and cross:  # impossible by the split rule; checked because leaks are silent
        raise ScuError(f"internal error: {cross} documents on both sides of the split; please report this")
    tokens_per_epoch = train.blocks * block_size
    return {
        "format": FORMAT,
        "source": readers[-1].describe(),
        "val_source": readers[0].describe() if val_source is not None else None,
        "tokenizer": {
            "name": tokenizer_name,
            "hash": tokenizer_fingerprint(tok),
            "class": type(tok).__name__,
            "vocab_size": len(tok),
            "eos_token_id": eos,
        },
        "block_size": block_size,
        "packing": "documents in source order, one EOS after each, cut into block_size blocks; the last partial block is dropped",
        "tokens_per_epoch": tokens_per_epoch,
        "train": train.stats(),
        "validation": valw.stats() if valw is not None else None,
        "split": (
            {"rule": "separate validation source", "seed": seed, "overlap_rule": f"training documents of >= {MIN_OVERLAP_DOC_CHARS} characters whose normalized hash occurs in the validation source are removed"}
            if val_source is not None
            else {"rule": SPLIT_RULE if valw is not None else "no validation split", "seed": seed, "val_fraction": val_fraction}
        ),
        "duplicates": {
            "duplicate_documents": int(all_keys.size - np.unique(all_keys).size),
            "cross_split_documents": cross,
            "removed_from_train_overlapping_val": removed,
        },
        "num_proc": num_proc,
        "versions": package_versions(_VERSIONS),
    }


# ----------------------------------------------------------------------------- loading

def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a directory written by `scu data prepare`."""
    return (Path(path) / PREP_FILE).is_file()


def read_info(path: str | Path) -> dict[str, Any]:
    p = Path(path) / PREP_FILE
    if not p.is_file():
        raise ScuError(f"{path} is not a prepared directory (no {PREP_FILE}); run `scu data prepare --out {path}` first")
    info = json.loads(p.read_text())
    if info.get("format") != FORMAT:
        raise ScuError(f"{p} has format {info.get('format')!r}, this scu reads {FORMAT!r}; re-run scu data prepare")
    return info


def _blocks(ds: Any, block_size: int) -> np.ndarray:
    col = ds.data.column("input_ids").combine_chunks()
    return col.flatten().to_numpy().astype(np.int64).reshape(-1, block_size)


def load_prepared(
    path: str | Path, tokenizer: Any, block_size: int
) -> tuple[np.ndarray, np.ndarray | None, int, dict[str, Any]]:
    """(train blocks, validation blocks or None, tokens_per_epoch, prep.json) of a prepared directory.

    Refuses a directory prepared with another tokenizer or block size: its token ids or block
    boundaries would silently be wrong for this model.
    """
    import datasets

    info = read_info(path)
    if info["block_size"] != block_size:
        raise ScuError(
            f"{path} was prepared with block_size {info['block_size']}, but training.block_size is {block_size}; "
            f"set training.block_size: {info['block_size']} or re-run scu data prepare --block-size {block_size}"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != info["tokenizer"]["hash"]:
        raise ScuError(
            f"{path} was prepared with tokenizer {info['tokenizer']['name']!r} (hash {info['tokenizer']['hash']}), "
            f"not this model's tokenizer (hash {fingerprint}); re-run scu data prepare --tokenizer <this model>"
        )
    dd = datasets.load_from_disk(str(path))
    train = _blocks(dd["train"], block_size)
    val = _blocks(dd["validation"], block_size) if "validation" in dd else None
    return train, val, int(info["tokens_per_epoch"]), info


def source_files(info: dict[str, Any]) -> list[str]:
    """The local files a prepared directory was read from; none if any of its sources was not files (hub, saved)."""
    sources = [s for s in (info.get("source"), info.get("val_source")) if s]
    if any(s.get("kind") != "files" for s in sources):
        return []
    return [f for s in sources for f in s.get("files", [])]


def prepared_blocks(path: str | Path, split: str, ids: np.ndarray, one_text: bool = False) -> Blocks:
    """`Blocks` of a prepared split: positions from its recorded document lengths, every token a target but the
    first of each document; as one text (`one_text`), or for a directory prepared before the lengths were
    recorded, one document per block."""
    lengths_file = Path(path) / f"{split}.doc_lengths.npy"
    if one_text or not lengths_file.exists():
        return Blocks.of_ids(ids)
    positions = block_positions(np.load(lengths_file), ids.shape[1], len(ids))
    return Blocks(ids, positions, positions > 0)


def _check_no_chat(path: str, info: dict[str, Any], train_on: str) -> None:
    """Refuse assistant-only training on a directory prepared from chat rows: they were rendered as text, unmarked."""
    chats = sum((source or {}).get("chat_documents", 0) for source in (info.get("source"), info.get("val_source")))
    if chats and train_on == "assistant":
        raise ScuError(
            f"{path} was prepared from {chats} chat conversations rendered as text, so their assistant tokens are not "
            "marked; give the .jsonl itself as data.train_data, or set data.train_on: all to train on every token"
        )


def _side(path: str, data_cfg: Any, tokenizer: Any, block_size: int, role: str) -> tuple[Blocks, Blocks | None, int, int, np.ndarray, str]:
    """(blocks, prepared validation blocks, tokens_per_epoch, documents, overlap keys, rule) of one data path.

    role "val": a prepared directory gives its validation split (or its train split if it has none).
    """
    if is_prepared(path):
        train, val, tokens, info = load_prepared(path, tokenizer, block_size)
        _check_no_chat(path, info, data_cfg.train_on)
        split = "validation" if role == "val" and val is not None else "train"
        one_text = packing_of(data_cfg.packing, source_files(info))
        blocks = prepared_blocks(path, split, val if split == "validation" else train, one_text)
        own_val = prepared_blocks(path, "validation", val, one_text) if role == "train" and val is not None else None
        keys = np.load(Path(path) / f"{split}.overlap_keys.npy")
        return blocks, own_val, tokens, info[split]["documents"], keys, info["split"]["rule"]
    docs = load_documents(path, data_cfg.text_field, tokenizer)
    ids, trained = tokenize_examples(docs, tokenizer, data_cfg.train_on)
    blocks = pack_documents(ids, block_size, tokenizer.eos_token_id, trained, packing_of(data_cfg.packing, [path]))
    tokens = epoch_tokens(blocks, trained, "training" if role == "train" else "validation")
    return blocks, None, tokens, len(docs), document_keys(docs, MIN_OVERLAP_DOC_CHARS), "raw text"


def prepared_train_val(data_cfg: Any, tokenizer: Any, block_size: int) -> TrainData:
    """TrainData when data.train_data and/or data.val_data is a prepared directory.

    A prepared training directory brings its own validation split (split at preparation time;
    data.val_fraction does not apply) unless data.val_data is set. A separate val_data, prepared
    or raw, is refused if it shares documents with the training side, as for raw text.
    """
    train, val, tokens_per_epoch, train_docs, train_keys, rule = _side(data_cfg.train_data, data_cfg, tokenizer, block_size, "train")
    val_docs = 0 if val is None else read_info(data_cfg.train_data)["validation"]["documents"]
    rule = f"prepared {data_cfg.train_data}: {rule}"
    if data_cfg.val_data:
        val, _, _, val_docs, val_keys, _ = _side(data_cfg.val_data, data_cfg, tokenizer, block_size, "val")
        shared = int(np.intersect1d(train_keys, val_keys).size)
        if shared:
            raise ScuError(
                f"{shared} validation documents of {data_cfg.val_data} also occur in the training data; "
                "use a disjoint val_data, or prepare with --val so that overlapping training documents are removed"
            )
        rule = f"given: {data_cfg.val_data}"
    return TrainData(train, val, tokens_per_epoch, train_docs, val_docs, rule)
