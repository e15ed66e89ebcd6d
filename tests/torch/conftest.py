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
