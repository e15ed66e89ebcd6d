from __future__ import annotations

from pathlib import Path

import pytest

from scu.config.schema import build_config


@pytest.fixture
def make_cfg(tiny_base: Path, pydoc_txt: Path):
    """A small valid training config on the tiny base; dotted keyword overrides, e.g. scu__target_s=0.1."""

    def make(**overrides):
        data = {
            "model": {"base_model": str(tiny_base)},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "scu": {"target_s": 0.05},
            "training": {"learning_rate": 2e-3, "batch_size": 4, "block_size": 64, "steps": 20,
                         "warmup_steps": 2, "checkpoint_every": 1000},
            "data": {"train_data": str(pydoc_txt)},
        }
        for key, value in overrides.items():
            section, name = key.split("__")
            data[section][name] = value
        return build_config(data)

    return make


@pytest.fixture
def train_cli(tmp_path: Path, tiny_base: Path, pydoc_txt: Path, capsys):
    """Run `scu train` through the CLI on a small config; returns (exit code, stderr).

    `config` replaces sections of the YAML (a value of None writes `section: null`); `flags` are extra CLI args.
    """
    import yaml

    from scu.cli import main

    def run(out: Path, *flags: str, config: dict | None = None) -> tuple[int, str]:
        cfg = {
            "model": {"base_model": str(tiny_base)},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "scu": {"target_s": 0.05},
            "training": {"batch_size": 2, "block_size": 64, "steps": 3, "warmup_steps": 1, "checkpoint_every": 1},
            "data": {"train_data": str(pydoc_txt)},
        }
        for section, values in (config or {}).items():
            cfg[section] = None if values is None else {**cfg.get(section, {}), **values}
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        capsys.readouterr()
        code = main(["train", "--config", str(path), "--output", str(out), *flags])
        return code, capsys.readouterr().err.strip()

    return run
