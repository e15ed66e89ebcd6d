"""S-SCU on the MLX loop: its LR, batch and clipping actions are applied and the three files written."""

from __future__ import annotations

import json

import pytest

import scu.core.simplified as simplified
import scu.mlx.loop as loop
from scu.core.simplified import Rule, SimplifiedConfig

FILES = ("scu_training_metrics.json", "scu_training_summary.json", "simple_training_config.json")


def test_sscu_actions_reach_the_mlx_step(mlx_cfg, tmp_path, monkeypatch):
    rule = Rule("always", "Test situation", "test response", lambda s, c: True, {"lr": "lr_increase", "batch": "batch_grow"})
    monkeypatch.setattr(simplified, "RULES", (rule,))
    cfg = mlx_cfg(training__steps=12, training__lr_schedule="constant", training__warmup_steps=0, scu__enabled=False)
    cfg.sscu = SimplifiedConfig(enabled=True, control_frequency=4, window=4, entropy_window=8, lr_increase=1.5)
    out = tmp_path / "run"
    meta = loop.train(cfg, out, progress=False)
    assert meta["status"] == "completed"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    base = cfg.training.learning_rate
    assert [r["lr"] / base for r in rows] == pytest.approx([1.0] * 4 + [1.5] * 4 + [2.25] * 4)
    step_tokens = [b["tokens"] - a["tokens"] for a, b in zip(rows, rows[1:])]
    per_batch = [sum(step_tokens[:3]) / 3, sum(step_tokens[3:7]) / 4, sum(step_tokens[7:]) / 4]
    # loss targets per step (document starts are none), so the batch's doubling shows within a few percent
    assert [t / per_batch[0] for t in per_batch] == pytest.approx([1, 2, 4], rel=0.1)
    metrics, summary, settings = (json.loads((out / name).read_text()) for name in FILES)
    assert [a["step"] for a in metrics["actions"]] == [4, 8, 12]
    assert summary["total_steps"] == 12 and summary["final_lr"] == rows[-1]["lr"]
    assert settings["sscu"]["control_frequency"] == 4
