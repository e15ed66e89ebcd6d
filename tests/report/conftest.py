from __future__ import annotations

from pathlib import Path

import pytest

from scu.config.schema import build_config


@pytest.fixture(scope="session")
def good_run(tiny_base: Path, tmp_path_factory) -> Path:
    """A finished SCU run (200 steps, S on its target, held-out BPT every 50 steps) to validate, plot and diagnose."""
    from scu.data.builtin import pydoc_topics
    from scu.torch.loop import train

    root = tmp_path_factory.mktemp("good")
    text = root / "train.txt"
    text.write_text("\n\n".join(pydoc_topics()[:4]))
    cfg = build_config({
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "scu": {"target_s": 0.05},
        "training": {"learning_rate": 2e-3, "batch_size": 4, "block_size": 64, "steps": 200, "warmup_steps": 2,
                     "checkpoint_every": 1000, "eval_every": 50},
        "data": {"train_data": str(text)},
    })
    train(cfg, root / "run", progress=False)
    return root / "run"
