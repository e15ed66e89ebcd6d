"""An mlx-lm data folder (train.jsonl, optionally valid.jsonl) as data.train_data: train.jsonl trains and
valid.jsonl validates unless data.val_data says otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scu.config.schema import DataSection
from scu.data.corpus import load_train_val, resolve_mlx_lm_folder


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    from scu.data.builtin import pydoc_topics

    docs = pydoc_topics()[:30]
    write_jsonl(tmp_path / "train.jsonl", docs[:24])
    write_jsonl(tmp_path / "valid.jsonl", docs[24:])
    return tmp_path


def test_the_folders_files_become_train_and_val_data(folder):
    data = resolve_mlx_lm_folder(DataSection(train_data=str(folder)))
    assert (data.train_data, data.val_data) == (str(folder / "train.jsonl"), str(folder / "valid.jsonl"))


def test_a_given_val_data_wins_and_a_folder_without_valid_jsonl_splits(folder, tmp_path):
    assert resolve_mlx_lm_folder(DataSection(train_data=str(folder), val_data="other.txt")).val_data == "other.txt"
    (folder / "valid.jsonl").unlink()
    data = resolve_mlx_lm_folder(DataSection(train_data=str(folder)))
    assert (data.train_data, data.val_data) == (str(folder / "train.jsonl"), None)


def test_other_sources_are_left_alone(tmp_path):
    data = DataSection(train_data=str(tmp_path), val_data=None)  # a folder without train.jsonl: a datasets dir
    assert resolve_mlx_lm_folder(data) is data


def test_load_train_val_reads_the_folder(folder, tiny_base):
    from scu.config.schema import ModelSection
    from scu.torch.model import load_tokenizer

    tokenizer = load_tokenizer(ModelSection(base_model=str(tiny_base)))
    data = load_train_val(DataSection(train_data=str(folder)), tokenizer, 64, 0)
    assert (data.train_docs, data.val_docs) == (24, 6)
    assert data.split_rule == f"given: {folder / 'valid.jsonl'}"
