"""`scu train` on a prepared directory: the same first steps as on the raw text, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scu import ScuError
from scu.config.schema import build_config
from scu.data.prepare import prepare

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Training text (tiny-shakespeare) and disjoint validation text (WikiText-2), small slices."""
    d = tmp_path_factory.mktemp("texts")
    (d / "train.txt").write_text((SHARED / "shakespeare" / "input.txt").read_text()[:40_000])
    (d / "val.txt").write_text((SHARED / "wikitext" / "wiki2_valid.txt").read_text()[:12_000])
    return d / "train.txt", d / "val.txt"


def config(tiny_base: Path, train_data: str, val_data: str | None, **data: object):
    return build_config({
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "training": {"learning_rate": 2e-3, "batch_size": 4, "block_size": 64, "steps": 2, "warmup_steps": 1,
                     "checkpoint_every": 1000, "seed": 7},
        "data": {"train_data": train_data, "val_data": val_data, **data},
    })


def first_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_prepared_dir_trains_exactly_like_raw_text(tiny_base: Path, texts: tuple[Path, Path], tmp_path: Path) -> None:
    from scu.torch.loop import train

    train_txt, val_txt = texts
    prepare(str(train_txt), str(tiny_base), tmp_path / "prep", block_size=64, val=str(val_txt), progress=False)
    raw = train(config(tiny_base, str(train_txt), str(val_txt)), tmp_path / "raw", progress=False)
    prepared = train(config(tiny_base, str(tmp_path / "prep"), None), tmp_path / "prepared", progress=False)
    raw_rows, prep_rows = first_rows(tmp_path / "raw"), first_rows(tmp_path / "prepared")
    assert prep_rows[0]["data_bpt"] == raw_rows[0]["data_bpt"]  # the first-step loss, bit for bit
    assert [r["data_bpt"] for r in prep_rows] == [r["data_bpt"] for r in raw_rows]
    assert prep_rows[0]["param_bpt"] == raw_rows[0]["param_bpt"]  # same tokens_per_epoch in the penalty
    info = json.loads((tmp_path / "prep" / "prep.json").read_text())
    assert prepared["tokens_per_epoch"] == raw["tokens_per_epoch"] == info["tokens_per_epoch"]
    assert prepared["val_bpt"] == raw["val_bpt"]
    assert prepared["train_docs"] == raw["train_docs"] and prepared["val_docs"] == raw["val_docs"]


def test_train_refuses_other_tokenizer_block_size_and_overlap(tiny_base: Path, texts: tuple[Path, Path], tmp_path: Path) -> None:
    from scu.models.tiny import train_tokenizer
    from scu.data.text import load_documents
    from scu.torch.loop import train

    train_txt, val_txt = texts
    other = train_tokenizer(load_documents(train_txt), vocab_size=280)
    other.save_pretrained(tmp_path / "other_tok")
    prepare(str(train_txt), str(tmp_path / "other_tok"), tmp_path / "other", block_size=64, val_fraction=0, progress=False)
    with pytest.raises(ScuError, match="prepared with tokenizer"):
        train(config(tiny_base, str(tmp_path / "other"), None), tmp_path / "run1", progress=False)
    prepare(str(train_txt), str(tiny_base), tmp_path / "b32", block_size=32, val_fraction=0.1, progress=False)
    with pytest.raises(ScuError, match="block_size 32, but training.block_size is 64"):
        train(config(tiny_base, str(tmp_path / "b32"), None), tmp_path / "run2", progress=False)
    prepare(str(train_txt), str(tiny_base), tmp_path / "p64", block_size=64, val_fraction=0.1, progress=False)
    with pytest.raises(ScuError, match="also occur in the training data"):  # raw val_data taken from the training text
        train(config(tiny_base, str(tmp_path / "p64"), str(train_txt)), tmp_path / "run3", progress=False)
    assert not any((tmp_path / f"run{i}").exists() for i in (1, 2, 3))
