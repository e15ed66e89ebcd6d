"""End to end: the config `scu suggest` writes trains with `scu train`, unedited."""

from __future__ import annotations

import json

import pytest

from scu.cli import main
from scu.config.schema import load_config


@pytest.mark.slow
def test_suggested_config_trains_without_edits(tiny_base, pydoc_txt, tmp_path):
    cfg_path, run = tmp_path / "suggested.yaml", tmp_path / "run"
    assert main(["suggest", "--model", str(tiny_base), "--data", str(pydoc_txt), "--task", "domain",
                 "--block-size", "128", "--out", str(cfg_path)]) == 0
    cfg = load_config(cfg_path)
    assert cfg.data.train_data == str(pydoc_txt) and cfg.model.base_model == str(tiny_base)
    # Only the step count is shortened, by the train command's own flag, for speed.
    assert main(["train", "--config", str(cfg_path), "--steps", "3", "--output", str(run)]) == 0
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["steps"] == 3
    assert meta["target_s"] == pytest.approx(cfg.scu.target_s)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert (run / "adapter_config.json").exists()
