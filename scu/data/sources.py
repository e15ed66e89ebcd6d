"""Where `scu data prepare` reads documents from: named corpora, hub ids, local files and folders.

Every source is read incrementally (a generator of document strings), so a corpus larger
than memory never has to be held at once. A plain .txt file is split into documents exactly
as `scu.data.text.split_txt` splits it (paragraphs separated by blank lines), but chunk by
chunk. Hub access is probed with a short timeout first, so a machine without network gets a
one-line error naming the local alternative instead of minutes of retries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scu import ScuError
from scu.data.text import _row_text, not_utf8, split_txt

HUB_TIMEOUT_S = 10.0  # seconds for the reachability probe before any hub download
TXT_READ_CHARS = 1 << 20
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # the separator split_txt splits on
_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \n?$")  # " = Title = " starts a WikiText article
_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
_SUFFIXES = (".txt", ".parquet") + _JSON_SUFFIXES


@dataclass(frozen=True)
class NamedDataset:
    """A corpus known by a short name: its hub id, config, text column and a download hint."""

    hub_id: str
    config: str | None
    text_field: str = "text"
    articles: bool = False  # rows are lines; join them into whole articles (WikiText)
    sample_files: str = "*"  # --include pattern for a small local download


NAMED: dict[str, NamedDataset] = {
    "c4": NamedDataset("allenai/c4", "en", sample_files="en/c4-train.0000*-of-01024.json.gz"),
    "wikitext-2": NamedDataset("Salesforce/wikitext", "wikitext-2-raw-v1", articles=True, sample_files="wikitext-2-raw-v1/train-*"),
    "wikitext-103": NamedDataset("Salesforce/wikitext", "wikitext-103-raw-v1", articles=True, sample_files="wikitext-103-raw-v1/train-*"),
    "fineweb-edu": NamedDataset("HuggingFaceFW/fineweb-edu", "sample-10BT", sample_files="sample/10BT/000_00000.parquet"),
    "slimpajama": NamedDataset("cerebras/SlimPajama-627B", None, sample_files="train/chunk1/example_train_0.jsonl.zst"),
}


@dataclass(frozen=True)
class Source:
    """A resolved `--dataset` / `--val` argument."""

    spec: str  # what the user wrote
    kind: str  # "files", "saved" (a save_to_disk directory) or "hub"
    files: tuple[Path, ...] = ()
    path: Path | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    articles: bool = False
    streaming: bool = False

    def describe(self) -> dict[str, Any]:
        """The provenance recorded in prep.json."""
        out: dict[str, Any] = {"spec": self.spec, "kind": self.kind, "text_field": self.text_field, "join_articles": self.articles}
        if self.kind == "files":
            out["files"] = [str(f) for f in self.files]
        elif self.kind == "saved":
            out.update(path=str(self.path), split=self.split)
        else:
            out.update(hub_id=self.hub_id, config=self.config, split=self.split, streaming=self.streaming)
        return out


def resolve_source(
    spec: str, text_field: str | None = None, subset: str | None = None, streaming: bool = False, join_articles: bool = False
) -> Source:
    """Turn NAME[:SPLIT], a hub id or a local path into a Source; probe the hub for hub names.

    join_articles: rows are single lines of WikiText; join them into articles (always on for
    the named WikiText datasets).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(spec, path.resolve(), text_field or "text", join_articles, "train")
    base, _, split = spec.rpartition(":")
    if base and Path(base).expanduser().is_dir():  # a save_to_disk folder with a split: PATH:SPLIT
        return _local_source(spec, Path(base).expanduser().resolve(), text_field or "text", join_articles, split)
    if spec.endswith(_SUFFIXES) or spec.startswith((".", "/", "~")):
        raise ScuError(f"data file not found: {spec}; check the path (or pass a hub dataset name)")
    name, _, split = spec.partition(":")
    named = NAMED.get(name)
    hub_id = named.hub_id if named else name
    source = Source(
        spec=spec,
        kind="hub",
        hub_id=hub_id,
        config=subset or (named.config if named else None),
        split=split or "train",
        text_field=text_field or (named.text_field if named else "text"),
        articles=join_articles or bool(named and named.articles),
        streaming=streaming,
    )
    _check_hub_reachable(source, named)
    return source


def _local_source(spec: str, path: Path, text_field: str, articles: bool, split: str) -> Source:
    if path.is_file():
        if not path.name.endswith(_SUFFIXES):
            raise ScuError(f"unsupported data file type for {path}; use .txt, .jsonl, .json(.gz), .parquet or a folder of them")
        return Source(spec=spec, kind="files", files=(path,), text_field=text_field, articles=articles)
    if (path / "prep.json").exists():
        raise ScuError(f"{path} is already a prepared (tokenized) directory; pass it to `scu train` as data.train_data")
    if any((path / marker).exists() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return Source(spec=spec, kind="saved", path=path, split=split, text_field=text_field, articles=articles)
    files = tuple(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES) and not p.name.startswith(".")))
    if not files:
        raise ScuError(f"{path} holds no .txt, .jsonl, .json(.gz) or .parquet files; point --dataset at a data file or folder")
    return Source(spec=spec, kind="files", files=files, text_field=text_field, articles=articles)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def local_alternative(hub_id: str, named: NamedDataset | None) -> str:
    """The command that fetches a local copy, for error messages."""
    include = f" --include '{named.sample_files}'" if named and named.sample_files != "*" else ""
    join = " --join-articles" if named and named.articles else ""
    return f"run `hf download {hub_id} --repo-type dataset{include} --local-dir DIR` where there is network, then pass --dataset DIR{join}"


def _check_hub_reachable(source: Source, named: NamedDataset | None) -> None:
    """Fail fast, in one line, when the hub cannot be reached (rather than hanging in retries)."""
    if _offline():
        return  # offline mode: datasets reads its cache or fails at once; load errors are wrapped later
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().dataset_info(source.hub_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        known = ", ".join(NAMED)
        raise ScuError(f"no dataset {source.hub_id!r} on the Hugging Face Hub and no such local path; use a local file/folder or one of: {known}") from None
    except Exception as e:  # connection refused, DNS failure, timeout: all mean "no network"
        raise ScuError(
            f"cannot reach the Hugging Face Hub for dataset {source.hub_id!r} ({type(e).__name__}); "
            f"{local_alternative(source.hub_id, named)} (or set HF_HUB_OFFLINE=1 to use a copy in the HF cache)"
        ) from None


def iter_documents(source: Source, tokenizer: Any = None) -> Iterator[str]:
    """The source's non-empty documents, in a fixed order, read incrementally."""
    if source.kind == "files":
        rows: Iterator[str] = (doc for f in source.files for doc in _file_documents(f, source.text_field, tokenizer))
    elif source.kind == "saved":
        rows = _batch_texts(_saved_batches(source), source.text_field, tokenizer, str(source.path))
    else:
        rows = _batch_texts(_hub_batches(source), source.text_field, tokenizer, source.hub_id or "")
    if source.articles:
        rows = join_articles(rows)
    return (d for d in rows if d.strip())


def iter_txt_documents(path: Path, read_chars: int = TXT_READ_CHARS) -> Iterator[str]:
    """`split_txt(path.read_text())`, but reading `read_chars` at a time.

    A blank-line separator is only acted on once a non-space character follows it, so a run of
    white space cut by a read boundary is split exactly as in the whole text.
    """
    buffer = ""
    with path.open(encoding="utf-8") as f:
        while chunk := _read_utf8(f, path, read_chars):
            buffer += chunk
            cut = None
            for m in _PARAGRAPH_BREAK.finditer(buffer):
                if m.end() < len(buffer) and not buffer[m.end()].isspace():
                    cut = m
            if cut is not None:
                yield from split_txt(buffer[: cut.start()])
                buffer = buffer[cut.end() :]
    yield from split_txt(buffer)


def _read_utf8(f: Any, path: Path, size: int) -> str:
    try:
        return f.read(size)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def join_articles(lines: Iterator[str]) -> Iterator[str]:
    """Join WikiText rows (one line each) into articles, starting a new one at each ' = Title = ' line."""
    article: list[str] = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line) and any(a.strip() for a in article):
            yield "".join(article)
            article = []
        article.append(line)
    if article:
        yield "".join(article)


def _file_documents(path: Path, text_field: str, tokenizer: Any) -> Iterator[str]:
    if path.name.endswith(".txt"):
        yield from iter_txt_documents(path)
        return
    import datasets

    builder = "parquet" if path.name.endswith(".parquet") else "json"
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
        yield from _batch_texts(ds.iter(batch_size=1000), text_field, tokenizer, str(path))
    except ScuError:
        raise
    except Exception as e:
        raise ScuError(f"could not read {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check that it is valid {builder}") from None


def _batch_texts(batches: Iterator[dict[str, list]], text_field: str, tokenizer: Any, where: str) -> Iterator[str]:
    for batch in batches:
        columns = list(batch)
        if text_field not in batch and "messages" not in batch:
            raise ScuError(f"{where} has neither a {text_field!r} column nor `messages` (columns: {columns}); pass --text-field")
        texts = batch.get(text_field)
        if texts is not None and "messages" not in batch and all(isinstance(t, str) for t in texts):
            yield from texts  # the common case, without building a dict per row
            continue
        for i in range(len(next(iter(batch.values())))):
            row = {k: batch[k][i] for k in columns if batch[k][i] is not None}
            yield _row_text(row, text_field, tokenizer, where)


def _saved_batches(source: Source) -> Iterator[dict[str, list]]:
    import datasets

    ds = datasets.load_from_disk(str(source.path))
    if isinstance(ds, datasets.DatasetDict):
        if source.split not in ds:
            raise ScuError(f"{source.path} has no split {source.split!r} (splits: {list(ds)}); pass PATH:SPLIT")
        ds = ds[source.split]
    yield from ds.iter(batch_size=1000)


def _hub_batches(source: Source) -> Iterator[dict[str, list]]:
    import datasets

    try:
        ds = datasets.load_dataset(source.hub_id, source.config, split=source.split, streaming=source.streaming)
    except Exception as e:
        named = next((n for n in NAMED.values() if n.hub_id == source.hub_id), None)
        raise ScuError(
            f"could not load dataset {source.hub_id!r} (config {source.config!r}, split {source.split!r}; {type(e).__name__}); "
            f"{local_alternative(source.hub_id, named)}"
        ) from None
    yield from ds.iter(batch_size=1000)
