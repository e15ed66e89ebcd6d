"""`scu train` on a config written with the ecosystem's habits: transformers/PEFT key names, output_dir instead
of --output, an mlx-lm data folder, and --set for a key that has no flag."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from scu.cli import main


def test_trains_from_an_ecosystem_style_config(tmp_path: Path, tiny_base: Path, monkeypatch):
    from scu.data.builtin import pydoc_topics

    docs = pydoc_topics()[:40]
    folder = tmp_path / "data"
    folder.mkdir()
    for name, part in (("train.jsonl", docs[:34]), ("valid.jsonl", docs[34:])):
        (folder / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "output_dir": "runs/eco", "max_steps": 3, "learning_rate": 2e-3, "max_seq_length": 64,
        "model": {"base_model": str(tiny_base)},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {"batch_size": 2, "warmup_steps": 1},
        "data": {"train_data": str(folder)},
    }))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(cfg), "--set", "training.checkpoint_every=1", "--set", "scu.target_s=0.1"]) == 0
    meta = json.loads((tmp_path / "runs" / "eco" / "metadata.json").read_text())
    assert meta["steps"] == 3 and meta["target_s"] == 0.1
    lora, training = meta["config"]["lora"], meta["config"]["training"]
    assert (lora["rank"], lora["alpha"], lora["targets"]) == (4, 8.0, ["q_proj", "v_proj"])
    assert (training["block_size"], training["learning_rate"], training["checkpoint_every"]) == (64, 2e-3, 1)
    assert "output_dir" not in meta["config"]
    assert (meta["val_split"], meta["val_docs"]) == (f"given: {folder / 'valid.jsonl'}", 6)
