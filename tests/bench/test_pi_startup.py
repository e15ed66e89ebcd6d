"""The start-up criterion of issue 18 on the harness's tiny model, from λ_init = 1000·λ* and λ*/1000.

`scu.law: balance` with the default smoothing (DataBPT only) and lead on the cpu harness (a 1.2M-parameter Llama
pre-trained on WikiText-103, LoRA on 16k tokens of Shakespeare, 200 steps) at the harness's S* 0.875. λ* is the
second-half median λ of the run from the default start. Each far start must keep the smoothed S within ±10% of S*
for ≥ 90% of the second half, settle by step 40, overshoot by ≤ 20% and not cycle about λ's trend (bench.pi_startup.run_job
judges all four; measured: settled at step 30, 3% overshoot, log-λ swing about the trend 0.33, from every start).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.pi_startup import FACTOR, Job, run_job
from bench.scu_vs_baselines import SCALES, prepare_scale, scaled_target

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "shakespeare" / "input.txt").exists(), reason="needs the shared data folder")


@pytest.mark.slow
def test_balance_law_meets_the_startup_criterion_from_a_factor_1000_either_side_of_lambda_star(tmp_path):
    scale = SCALES["cpu"]
    base, manifest, _ = prepare_scale(scale, DATA)
    scale = replace(scale, run=replace(scale.run, base_model=str(base)))
    train_path, target = manifest["train"]["16000"]["path"], scaled_target(0.875, 1.0)
    reference = run_job(Job("balance", "16000", 1.0, "default", 0, 1.0, "data"), scale, train_path, target, tmp_path)
    lam_star = reference["lambda_2nd_half_median"]
    assert 1e-4 < lam_star < 1.0  # the default start (λ_init 1) is itself far above λ*
    for start, lambda_init in (("high", lam_star * FACTOR), ("low", lam_star / FACTOR)):
        result = run_job(Job("balance", "16000", 1.0, start, 0, lambda_init, "data"), scale, train_path, target, tmp_path)
        # the cycle is read about lambda's trend, as the benchmark reports it (λ also drifts with λ* here)
        assert result["meets"]["all_detrended"], (start, lambda_init, result["meets"], result["tracking"], result["limit_cycle"])


def test_a_run_cut_short_by_a_signal_is_not_cached(tmp_path, monkeypatch):
    import bench.pi_startup as startup
    import scu.torch.loop

    def stopped_by_sigterm(cfg, out, progress=True):
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text('{"step": 1, "s": 0.0, "s_hat": 0.0, "lambda": 1.0}\n')
        return {"status": "terminated"}

    monkeypatch.setattr(scu.torch.loop, "train", stopped_by_sigterm)
    job = Job("balance", "16000", 1.0, "default", 0, 1.0)
    with pytest.raises(RuntimeError, match="terminated before its budget"):
        startup.run_job(job, startup.QUICK, "unused.txt", 0.5, tmp_path)
    assert startup.cached(tmp_path, job) is None and not list(tmp_path.iterdir())
