"""The training loop: the penalty trains, resume is exact, Ctrl-C is safe, adapters reload, NaN steps are skipped."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import scu.driver as driver
import scu.torch.loop as loop
from scu import ScuError
from scu.core.pi import PIController
from scu.torch.checkpoint import CHECKPOINT


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def delta_norm(out):
    from safetensors.torch import load_file

    w = load_file(out / "adapter_model.safetensors")
    total = 0.0
    for key, A in w.items():
        if "lora_A" in key:
            B = w[key.replace("lora_A", "lora_B")]
            total += (B @ A).pow(2).sum().item()
    return total**0.5


def test_fixed_lambda_changes_training(make_cfg, tmp_path):
    free = loop.train(make_cfg(scu__lambda_min=0.0, scu__lambda_max=0.0), tmp_path / "free", progress=False)
    held = loop.train(make_cfg(scu__lambda_min=20.0, scu__lambda_max=20.0), tmp_path / "held", progress=False)
    assert free["lambda_range"] == [0.0, 0.0] and held["lambda_range"] == [20.0, 20.0]
    assert delta_norm(tmp_path / "held") < 0.5 * delta_norm(tmp_path / "free")
    assert held["final_param_bpt"] < free["final_param_bpt"]


def test_ctrl_c_checkpoints_and_resume_reproduces_lambda_trajectory(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(training__steps=24, training__gradient_accumulation=2, training__checkpoint_every=5)
    loop.train(cfg, tmp_path / "full", progress=False)

    real_record = driver.record_step

    def interrupt_at_step_11(run, *a, **k):
        row = real_record(run, *a, **k)
        if run.state.step == 11:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers
        return row

    monkeypatch.setattr(driver, "record_step", interrupt_at_step_11)
    meta = loop.train(cfg, tmp_path / "cut", progress=False)
    assert meta["status"] == "interrupted" and meta["steps"] == 11
    saved = json.loads((tmp_path / "cut" / "metadata.json").read_text())
    assert saved["status"] == "interrupted" and saved["final_lambda"] == rows(tmp_path / "cut")[-1]["lambda"]
    assert (tmp_path / "cut" / "adapter_model.safetensors").exists()
    monkeypatch.setattr(driver, "record_step", real_record)

    loop.train(cfg, tmp_path / "cut", resume=True, progress=False)
    full, resumed = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [r["step"] for r in resumed] == list(range(1, 25))
    assert [r["lambda"] for r in resumed] == [r["lambda"] for r in full]
    assert [r["data_bpt"] for r in resumed] == [r["data_bpt"] for r in full]


def test_resume_refuses_corrupt_checkpoint_and_changed_config(make_cfg, tmp_path):
    cfg = make_cfg(training__steps=3)
    loop.train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ScuError, match="--resume"):
        loop.train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ScuError, match="target_s"):
        loop.train(make_cfg(training__steps=6, scu__target_s=0.2), tmp_path / "run", resume=True, progress=False)
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ScuError, match="unreadable"):
        loop.train(make_cfg(training__steps=6), tmp_path / "run", resume=True, progress=False)


def test_saved_adapter_reloads_with_peft_and_reproduces_logits(make_cfg, tmp_path, tiny_base):
    cfg = make_cfg(training__steps=5)
    run = loop.setup(cfg, tmp_path / "run")
    run.lock.release()
    loop.train(cfg, tmp_path / "run", overwrite=True, progress=False)
    trained = loop.setup(cfg, tmp_path / "run2")  # same init; load the trained weights through the checkpoint
    ids = torch.from_numpy(run.data.train[:2])
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    payload = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    with torch.no_grad():
        params = dict(trained.model.named_parameters())
        for name, value in payload["trainable"].items():
            params[name].copy_(value)
        trained.model.eval()
        adapted = peft_model(input_ids=ids).logits
        torch.testing.assert_close(adapted, trained.model(input_ids=ids).logits, rtol=0, atol=1e-5)
        with peft_model.disable_adapter():
            assert not torch.allclose(adapted, peft_model(input_ids=ids).logits, atol=1e-4)


def test_nan_loss_step_is_skipped_counted_and_controller_not_updated(make_cfg, tmp_path, monkeypatch):
    real = loop.cross_entropy_sum
    calls = {"n": 0}

    def nan_on_third_step(logits, ids, *loss_mask):
        calls["n"] += 1
        value = real(logits, ids, *loss_mask)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(loop, "cross_entropy_sum", nan_on_third_step)
    before = {}
    real_update = PIController.update

    def counting_update(self, s, target_s=None, balance=None, parts=None):
        before[len(before) + 1] = s
        return real_update(self, s, target_s, balance, parts)

    monkeypatch.setattr(PIController, "update", counting_update)
    meta = loop.train(make_cfg(training__steps=6), tmp_path / "run", progress=False)
    assert meta["nan_skips"] == 1
    assert len(before) == 5  # the NaN step never reached the controller
    assert [r["step"] for r in rows(tmp_path / "run")] == [1, 2, 4, 5, 6]
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["nan_skips"] == 1
