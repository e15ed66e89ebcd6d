"""Load documents, tokenize, pack into blocks, and keep validation text out of training.

Packing concatenates documents with an EOS token between them and cuts the stream into
blocks of `block_size` tokens; the tail that does not fill a block is dropped. Alongside the
ids, packing records each token's position within its document (restarting at every document
and block start), so a forward pass given these position ids attends within documents only,
and which tokens are loss targets (not a document's first token, whose context is another
document; for chat data, only the assistant's tokens unless data.train_on is `all`). A plain
text's paragraphs are packed as one stream instead (data.packing, `packing_of`).
Arrays are NumPy so every backend can use them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from scu import ScuError

MIN_OVERLAP_DOC_CHARS = 64  # shorter documents ("ACT I", "Amen.") may legitimately repeat


class Chat(str):
    """A chat example: its text as the chat template renders it (what splitting, hashing and overlap checks
    read, as for any document), carrying its `messages` so that the assistant's tokens can be found."""

    messages: list[dict[str, Any]]
    where: str  # file:line, for error messages

    def __new__(cls, text: str, messages: list[dict[str, Any]], where: str) -> "Chat":
        chat = super().__new__(cls, text)
        chat.messages, chat.where = messages, where
        return chat


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


def packing_of(setting: str, sources: Sequence[str | Path]) -> bool:
    """Whether `data.packing: setting` packs text read from these files as one stream (DataSection.packing):
    under "auto", when there are files and all are plain text (.txt)."""
    if setting != "auto":
        return setting == "stream"
    return bool(sources) and all(Path(s).suffix == ".txt" for s in sources)


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
        return Chat(tokenizer.apply_chat_template(row["messages"], tokenize=False), row["messages"], where)
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


@dataclass
class Blocks:
    """Packed documents, [n_blocks, block_size] each: token ids (int64), each token's position within its document
    (int32; 0 at every document start and at every block start), and whether the token is a loss target (bool)."""

    ids: np.ndarray
    positions: np.ndarray
    loss_mask: np.ndarray

    @classmethod
    def of_ids(cls, ids: np.ndarray) -> "Blocks":
        """Blocks known by their token ids alone: one document per block, every token a target but the first,
        which is what a forward pass without position ids and a loss over all tokens 2..T amount to."""
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy()
        return cls(ids, positions, positions > 0)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, idx: np.ndarray | slice) -> "Blocks":
        """Blocks `idx` of these, as Blocks."""
        return Blocks(self.ids[idx], self.positions[idx], self.loss_mask[idx])

    def batch(self, idx: np.ndarray | slice) -> dict[str, np.ndarray]:
        """The model inputs of blocks `idx`: input_ids, position_ids (int64, as models take them) and loss_mask."""
        return {"input_ids": self.ids[idx], "position_ids": self.positions[idx].astype(np.int64), "loss_mask": self.loss_mask[idx]}

    def loss_tokens(self, idx: np.ndarray | slice = slice(None)) -> int:
        """Loss targets in blocks `idx`: a block's first token is never one (nothing in the block precedes it)."""
        return int(self.loss_mask[idx, 1:].sum())


def block_positions(doc_lengths: Sequence[int] | np.ndarray, block_size: int, n_blocks: int) -> np.ndarray:
    """[n_blocks, block_size] int32: each token's index since the later of its document's start and its block's.

    Restarting at block starts keeps positions below block_size (a model with learned absolute positions never
    sees one past its context) and matches what a block without position ids gets.
    """
    total = n_blocks * block_size
    starts = np.zeros(total, dtype=bool)
    doc_starts = np.concatenate([[0], np.cumsum(np.asarray(doc_lengths, dtype=np.int64))[:-1]])
    starts[doc_starts[doc_starts < total]] = True
    starts[::block_size] = True
    index = np.arange(total)
    return (index - np.maximum.accumulate(np.where(starts, index, 0))).astype(np.int32).reshape(n_blocks, block_size)


def pack_documents(
    token_docs: list[list[int]], block_size: int, eos_id: int, trained: Sequence[Sequence[bool] | None] | None = None,
    one_text: bool = False,
) -> Blocks:
    """Concatenate documents with EOS after each and cut into [n_blocks, block_size] blocks.

    `trained[i]`: which tokens of document i the loss is taken on (None: all, and its EOS). A token is a loss
    target when it is trained and not its document's first (position 0): predicting a document's first token
    from the end of another one would teach the model nothing about either. Blocks without a target are left
    out (blocks are independent: positions restart in each), so every training step has tokens to measure.
    `one_text`: the documents are parts of one text (a .txt's paragraphs), so positions restart only at block
    starts and a paragraph's first token is predicted from the one before it.
    """
    lengths = np.array([len(d) + 1 for d in token_docs], dtype=np.int64)
    total = int(lengths.sum())
    n_blocks = total // block_size
    if n_blocks == 0:
        raise ScuError(
            f"block_size {block_size} is longer than the data ({total} tokens); lower training.block_size or add data"
        )
    stream = np.empty(total, dtype=np.int64)
    in_loss = np.ones(total, dtype=bool)
    i = 0
    for k, d in enumerate(token_docs):
        stream[i : i + len(d)] = d
        stream[i + len(d)] = eos_id
        mask = None if trained is None else trained[k]
        if mask is not None:
            in_loss[i : i + len(d)] = mask
            in_loss[i + len(d)] = False  # the EOS after a conversation is no assistant token
        i += len(d) + 1
    cut = n_blocks * block_size
    positions = block_positions([total] if one_text else lengths, block_size, n_blocks)
    loss_mask = in_loss[:cut].reshape(n_blocks, block_size) & (positions > 0)
    busy = loss_mask[:, 1:].any(axis=1)  # a block of prompts only would give a step nothing to learn or measure
    return Blocks(stream[:cut].reshape(n_blocks, block_size)[busy], positions[busy], loss_mask[busy])


def pack(token_docs: list[list[int]], block_size: int, eos_id: int) -> np.ndarray:
    """The token ids of `pack_documents`: [n_blocks, block_size] int64."""
    return pack_documents(token_docs, block_size, eos_id).ids


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


@dataclass
class TrainData:
    """The packed training and validation blocks (ids, per-document positions, loss targets) and their record."""

    train_blocks: Blocks
    val_blocks: Blocks | None
    tokens_per_epoch: int  # tokens in the packed training set; with assistant-only chat data, its loss targets
    train_docs: int
    val_docs: int
    split_rule: str

    @property
    def train(self) -> np.ndarray:
        """The training blocks' token ids, [n_blocks, block_size] int64."""
        return self.train_blocks.ids

    @train.setter
    def train(self, ids: np.ndarray) -> None:
        """Swap in other training blocks known by their ids alone (a benchmark that changes the text mid-run)."""
        self.train_blocks = Blocks.of_ids(ids)

    @property
    def val(self) -> np.ndarray | None:
        return None if self.val_blocks is None else self.val_blocks.ids
