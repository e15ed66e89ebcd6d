"""`scu.prior_sigma: fit`: the prior scale from a plain fit that `scu train` runs first (scu.torch.prior_fit)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from scu import ScuError
from scu.core.bits import fit_scale_sigma
from scu.torch.loop import setup, train
from scu.torch.prior_fit import change_scale
from scu.torch.regularizer import LoraPenalty


def test_fit_scale_is_the_change_spread_over_the_adapters_entries():
    assert fit_scale_sigma(50.0, 2) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        fit_scale_sigma(0.0, 10)  # a plain fit that learned nothing gives no scale


def test_change_scale_of_a_saved_adapter_equals_the_live_penalty(make_cfg, tmp_path):
    """The saved adapter's ||dW||^2 (from the Gram products, PEFT's scaling alpha / r) and entry count match what
    the penalty measures on the live model, so the sigma read back is the plain fit's own."""
    run = setup(make_cfg(lora__alpha=12), tmp_path / "run")
    model = run.accelerator.unwrap_model(run.model)
    with torch.no_grad():
        for p in run.penalty.pairs:
            p.B.normal_(std=0.05)
    model.save_pretrained(tmp_path / "adapter")
    sq_norm, dof = change_scale(tmp_path / "adapter")
    assert sq_norm == pytest.approx(float(run.penalty.sq_norm().detach()), rel=1e-5)
    assert dof == run.penalty.dof == sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden = model.config.hidden_size  # rank 4 on a hidden x hidden projection: 4 * (2 * hidden), not hidden^2
    assert run.penalty.pairs[0].A.numel() + run.penalty.pairs[0].B.numel() == 4 * 2 * hidden


def test_scu_train_fits_plain_first_and_trains_with_its_scale(make_cfg, tmp_path):
    cfg = make_cfg(scu__target_s=0.05, scu__prior_sigma="fit", scu__lambda_min=1.0, scu__lambda_max=1.0,
                   scu__lambda_init=1.0, training__steps=6)
    out = tmp_path / "run"
    meta = train(cfg, out, progress=False)
    plain = out / "plain_fit"
    assert json.loads((plain / "metadata.json").read_text())["status"] == "completed"
    assert yaml.safe_load((plain / "config.yaml").read_text())["scu"]["enabled"] is False
    sq_norm, dof = change_scale(plain)
    sigma = yaml.safe_load((out / "config.yaml").read_text())["scu"]["prior_sigma"]
    assert sigma == pytest.approx(math.sqrt(sq_norm / dof), rel=1e-5)
    assert meta["status"] == "completed" and meta["prior"]["sigma"] == pytest.approx(sigma)
    # the SCU run was regularized: its change is smaller than the plain fit's, from the same seed and data
    reg_sq, _ = change_scale(out)
    assert reg_sq < sq_norm


def test_an_earlier_plain_fit_is_reused_only_with_resume(make_cfg, tmp_path):
    cfg = make_cfg(scu__prior_sigma="fit", training__steps=3)
    out = tmp_path / "run"
    plain = out / "plain_fit"
    plain.mkdir(parents=True)
    (plain / "metadata.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(ScuError, match="--resume"):
        train(cfg, out, progress=False)
    assert sorted(p.name for p in plain.iterdir()) == ["metadata.json"]  # nothing trained over it


def test_resume_reuses_a_finished_plain_fit_and_trains_the_scu_run(make_cfg, tmp_path):
    cfg = make_cfg(scu__prior_sigma="fit", training__steps=3)
    out = tmp_path / "run"
    train(cfg.model_copy(update={"scu": cfg.scu.model_copy(update={"enabled": False})}), out / "plain_fit", progress=False)
    before = (out / "plain_fit" / "metrics.jsonl").read_bytes()
    meta = train(cfg, out, resume=True, progress=False)
    assert meta["status"] == "completed"
    assert (out / "plain_fit" / "metrics.jsonl").read_bytes() == before  # reused, not retrained
    sq_norm, dof = change_scale(out / "plain_fit")
    assert meta["prior"]["sigma"] == pytest.approx(math.sqrt(sq_norm / dof), rel=1e-5)


def test_an_interrupted_scu_run_resumes_with_the_same_sigma_and_the_plain_fit_untouched(make_cfg, tmp_path):
    from scu.driver import Callback

    class StopAt(Callback):
        def on_step_end(self, run, row):
            return run.state.step >= 2

    cfg = make_cfg(scu__prior_sigma="fit", training__steps=4, training__checkpoint_every=1)
    out = tmp_path / "run"
    first = train(cfg, out, progress=False, callbacks=[StopAt()])  # the callbacks watch the SCU run only
    assert first["steps"] == 2 and json.loads((out / "plain_fit" / "metadata.json").read_text())["steps"] == 4
    before = (out / "plain_fit" / "metrics.jsonl").read_bytes()
    meta = train(cfg, out, resume=True, progress=False)
    assert meta["status"] == "completed" and meta["steps"] == 4
    assert meta["prior"]["sigma"] == first["prior"]["sigma"]
    assert (out / "plain_fit" / "metrics.jsonl").read_bytes() == before


def test_backends_without_the_plain_fit_refuse_it(make_cfg, tmp_path):
    run = setup(make_cfg(), tmp_path / "run")
    with pytest.raises(ScuError, match="scu train"):
        LoraPenalty(run.accelerator.unwrap_model(run.model), "delta", "fit", 1000)


def test_scu_train_with_target_auto_fits_plain_first_and_reports_the_fixed_lambda(tmp_path, tiny_base, pydoc_txt, capsys):
    """`scu.target_s: auto` through the CLI: the plain fit runs first, and the summary names lambda and sigma,
    not a target; without it `scu train` keeps one PI run."""
    from scu.cli import main

    base = {"model": {"base_model": str(tiny_base)}, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "training": {"batch_size": 2, "block_size": 64, "steps": 2, "warmup_steps": 1},
            "data": {"train_data": str(pydoc_txt)}, "scu": {"target_s": "auto"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base))
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "training the plain fit first" in printed and "at lambda fixed at 1 (prior sigma 0." in printed
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["scu"]
    assert (written["lambda_min"], written["lambda_max"]) == (1.0, 1.0) and isinstance(written["prior_sigma"], float)
    path.write_text(yaml.safe_dump({**base, "scu": {"enabled": True}}))
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "pi")]) == 0
    assert not (tmp_path / "pi" / "plain_fit").exists()
    assert "target 5%" in capsys.readouterr().out


def test_the_progress_bar_shows_a_target_only_where_lambda_is_controlled():
    from scu.driver import progress_text

    row = {"data_bpt": 5.5, "s": 0.0045, "target_s": 0.05, "lambda": 1.0, "at_bound": None}
    assert "S 0.45%/5%" in progress_text(row, 60.0)
    fixed = progress_text(row, 60.0, controlled=False)
    assert "S 0.45% λ 1" in fixed and "/5%" not in fixed
