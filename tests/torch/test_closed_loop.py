"""The loop closes on a real gradient: S settles at a reachable S* with no limit cycle."""

import json

import pytest

from scu.config.schema import build_config
from scu.core.tracking import tracking_from_rows
from scu.torch.loop import train


@pytest.mark.slow
def test_s_settles_at_reachable_target_with_default_gains(tiny_base, tmp_path):
    from scu.data.builtin import pydoc_topics

    data = tmp_path / "pydoc.txt"
    data.write_text("\n\n".join(pydoc_topics()))
    target = 0.05
    cfg = build_config({
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "scu": {"target_s": target, "law": "pi"},  # the position-form law and its default gains
        "training": {"learning_rate": 2e-3, "batch_size": 8, "block_size": 128, "steps": 300,
                     "warmup_steps": 10, "lr_schedule": "constant", "checkpoint_every": 10**9},
        "data": {"train_data": str(data)},
    })
    meta = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tr = tracking_from_rows(rows, target)
    assert tr.in_band >= 0.90, tr  # smoothed S within +-10% of S* for >= 90% of the second half
    assert tr.error <= 0.05, tr  # mean S within 5% of S* over the second half
    assert tr.log_lambda_p2p is not None and tr.log_lambda_p2p < 0.5, tr  # lambda steady: no limit cycle
    second_half = rows[len(rows) // 2 :]
    assert all(r["at_bound"] is None for r in second_half)
    # lambda moved the right way: S started at 0 < S* (lambda pushed to its floor), then rose with S
    assert rows[0]["lambda"] == cfg.scu.lambda_min and rows[-1]["lambda"] > 100 * cfg.scu.lambda_min
    assert meta["final_s_hat"] == pytest.approx(target, rel=0.1)
