"""Reading sources for `scu data prepare`: streamed .txt splitting, file kinds, hub failures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scu import ScuError
from scu.data import sources
from scu.data.sources import iter_documents, iter_txt_documents, join_articles, resolve_source
from scu.data.text import load_documents, split_txt

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"

TRICKY = (
    "  \nfirst doc\nstill first  \n\n \t\n second\n\n\n\nthird \r\n\r\nfourth\n \n"
    "fifth with trailing spaces   \n\n\n   \n  sixth starts with spaces\n\n" + "x" * 50 + "\n \n"
)


@pytest.mark.parametrize("read_chars", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_streamed_txt_splits_exactly_like_split_txt(tmp_path: Path, read_chars: int) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(TRICKY.encode())
    assert list(iter_txt_documents(path, read_chars)) == split_txt(path.read_text())


@pytest.mark.parametrize("name", ["wikitext/wiki2_valid.txt", "shakespeare/input.txt"])
def test_streamed_txt_matches_load_documents_on_shared_files(name: str) -> None:
    path = SHARED / name
    docs = list(iter_txt_documents(path, read_chars=4093))
    assert docs == load_documents(path)


def test_jsonl_parquet_and_folder_give_the_same_documents(tmp_path: Path) -> None:
    import datasets

    docs = [f"document {i}\nwith two lines" for i in range(30)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[:10])))
    datasets.Dataset.from_dict({"body": docs[10:20]}).to_parquet(str(tmp_path / "b.parquet"))
    (tmp_path / "c.txt").write_text("\n\n".join(docs[20:]))
    assert list(iter_documents(resolve_source(str(tmp_path / "a.jsonl")))) == docs[:10]
    assert list(iter_documents(resolve_source(str(tmp_path / "b.parquet"), text_field="body"))) == docs[10:20]
    (tmp_path / "b.parquet").unlink()
    datasets.Dataset.from_dict({"text": docs[10:20]}).to_parquet(str(tmp_path / "b.parquet"))
    assert list(iter_documents(resolve_source(str(tmp_path)))) == docs  # sorted file order: a, b, c


def test_saved_dataset_and_missing_column(tmp_path: Path) -> None:
    import datasets

    splits = {"train": datasets.Dataset.from_dict({"text": ["a b", "", "c d"]}), "test": datasets.Dataset.from_dict({"text": ["e"]})}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "ds"))
    assert list(iter_documents(resolve_source(str(tmp_path / "ds")))) == ["a b", "c d"]
    assert list(iter_documents(resolve_source(f"{tmp_path / 'ds'}:test"))) == ["e"]
    with pytest.raises(ScuError, match="no split 'dev'"):
        list(iter_documents(resolve_source(f"{tmp_path / 'ds'}:dev")))
    with pytest.raises(ScuError, match="--text-field"):
        list(iter_documents(resolve_source(str(tmp_path / "ds"), text_field="content")))


def test_chat_messages_rendered_with_the_template(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": msgs}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    assert list(iter_documents(resolve_source(str(tmp_path / "chat.jsonl")), tok)) == load_documents(tmp_path / "chat.jsonl", tokenizer=tok)


def test_join_articles_starts_at_top_level_titles() -> None:
    rows = ["", " = A = \n", " \n", " text a\n", " = = Section = = \n", " more a\n", " = B = \n", " text b\n"]
    assert list(join_articles(iter(rows))) == [" = A = \n \n text a\n = = Section = = \n more a\n", " = B = \n text b\n"]


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScuError, match="not found"):
        resolve_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScuError, match="no .txt"):
        resolve_source(str(tmp_path / "empty"))


def test_unreachable_hub_fails_fast_naming_the_local_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that accepts connections but never answers: the probe times out instead of hanging."""
    import huggingface_hub.constants

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{blackhole.getsockname()[1]}")
        monkeypatch.setattr(sources, "HUB_TIMEOUT_S", 0.5)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        start = time.monotonic()
        with pytest.raises(ScuError, match=r"cannot reach .*allenai/c4.*hf download allenai/c4.*--dataset DIR"):
            resolve_source("c4")
        assert time.monotonic() - start < 20


def test_offline_hub_name_exits_2_with_the_local_alternative(tiny_base: Path, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 and nothing cached: the CLI says what to do instead, quickly, and writes nothing."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TQDM_DISABLE": "1"}
    out = tmp_path / "prepared"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "scu.cli", "data", "prepare", "--dataset", "wikitext-103", "--tokenizer", str(tiny_base), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "hf download Salesforce/wikitext" in proc.stderr and "--join-articles" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 120
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]
