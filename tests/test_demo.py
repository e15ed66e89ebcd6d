"""`scu demo`, the README's first command, end to end on the test suite's tiny base (no download, no pre-training)."""

from __future__ import annotations

import argparse

import pytest

from scu import ScuError
from scu.config.schema import load_config


def test_demo_writes_a_config_that_reloads_trains_and_reports_held_out_bits(tiny_base, tmp_path, monkeypatch, capsys):
    import scu.demo

    monkeypatch.setattr(scu.demo, "cached_base", lambda spec: tiny_base)
    out = tmp_path / "demo"
    assert scu.demo.run(argparse.Namespace(output=str(out), steps=3)) == 0

    printed = capsys.readouterr().out
    assert "held-out bits/token: base" in printed
    cfg = load_config(out / "config.yaml")
    assert cfg.model.base_model == str(tiny_base)
    assert cfg.training.steps == 3
    assert (out / "run" / "adapter_model.safetensors").is_file()
    assert (out / "run" / "metadata.json").is_file()
    assert [p.name for p in out.rglob(".*")] == [".scu.lock"]  # no temporary file or folder left behind

    with pytest.raises(ScuError, match="already exists; pass another --output"):
        scu.demo.run(argparse.Namespace(output=str(out), steps=3))
