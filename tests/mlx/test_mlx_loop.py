"""`scu train` on MLX: the loop closes, resume is exact, the adapter loads in mlx-lm, records match the PyTorch backend's."""

from __future__ import annotations

import json
import os
import signal
import statistics

import mlx.core as mx
import numpy as np
import pytest

import scu.driver as driver
import scu.mlx.loop as loop
from scu.mlx.checkpoint import CHECKPOINT


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_closed_loop_settles_at_a_reachable_target(mlx_cfg, tmp_path):
    target = 0.02
    cfg = mlx_cfg(training__steps=150, scu__target_s=target, scu__ki=0.05, scu__lambda_init=0.3)
    meta = loop.train(cfg, tmp_path / "run", progress=False)
    last = rows(tmp_path / "run")[-50:]
    s_hat = [r["s_hat"] for r in last]
    within = sum(abs(s - target) <= 0.1 * target for s in s_hat) / len(s_hat)
    mean_err = abs(statistics.mean(s_hat) - target) / target
    assert within >= 0.9 and mean_err <= 0.05, (within, mean_err)
    assert all(r["at_bound"] is None for r in last)
    assert meta["lambda_saturation"]["at_max"] == 0 and meta["final_lambda"] != pytest.approx(0.3, rel=0.05)


def test_the_default_law_auto_runs_the_balance_set_here_and_settles_at_a_reachable_target(mlx_cfg, tmp_path):
    """MLX measures the gradient balance and applies the decoupled penalty step, so the default `law: auto` runs as
    PyTorch's `scu train` runs it: config.yaml names the law that ran, every step records the penalty's sensitivity,
    and the smoothed S holds the target over the second half of the run."""
    import yaml

    from scu.config.schema import AUTO_BALANCE

    target = 0.02
    meta = loop.train(mlx_cfg(training__steps=150, scu__target_s=target), tmp_path / "run", progress=False)
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["scu"]
    assert {k: written[k] for k in AUTO_BALANCE} == AUTO_BALANCE and meta["law"] == "balance"
    trace = rows(tmp_path / "run")
    assert all(r["penalty_sensitivity"] > 0 for r in trace[1:])  # none before AdamW's first step, as in PyTorch
    s_hat = [r["s_hat"] for r in trace[-75:]]
    within = sum(abs(s - target) <= 0.1 * target for s in s_hat) / len(s_hat)
    assert within >= 0.9 and abs(statistics.mean(s_hat) - target) <= 0.05 * target, (within, statistics.mean(s_hat))


def test_fixed_lambda_shrinks_the_learned_change(mlx_cfg, tmp_path):
    free = loop.train(mlx_cfg(scu__lambda_min=1e-4, scu__lambda_max=1e-4), tmp_path / "free", progress=False)
    held = loop.train(mlx_cfg(scu__lambda_min=20.0, scu__lambda_max=20.0), tmp_path / "held", progress=False)
    assert held["lambda_range"] == [20.0, 20.0]
    assert held["final_param_bpt"] < 0.5 * free["final_param_bpt"]


def test_ctrl_c_checkpoints_and_resume_reproduces_lambda_trajectory(mlx_cfg, tmp_path, monkeypatch):
    # dropout on, so the per-step random keys must also line up after the resume
    cfg = mlx_cfg(training__steps=12, training__gradient_accumulation=2, training__checkpoint_every=4, lora__dropout=0.1,
                  scu__prior="factors")
    loop.train(cfg, tmp_path / "full", progress=False)

    real_record = driver.record_step

    def interrupt_at_step_6(run, *a, **k):
        row = real_record(run, *a, **k)
        if run.state.step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers
        return row

    monkeypatch.setattr(driver, "record_step", interrupt_at_step_6)
    meta = loop.train(cfg, tmp_path / "cut", progress=False)
    assert meta["status"] == "interrupted" and meta["steps"] == 6
    assert (tmp_path / "cut" / CHECKPOINT).exists() and (tmp_path / "cut" / "adapters.safetensors").exists()
    monkeypatch.setattr(driver, "record_step", real_record)

    loop.train(cfg, tmp_path / "cut", resume=True, progress=False)
    full, resumed = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["lambda"] for r in resumed] == [r["lambda"] for r in full]
    assert [r["data_bpt"] for r in resumed] == [r["data_bpt"] for r in full]
    assert [r["param_bpt"] for r in resumed] == [r["param_bpt"] for r in full]


def test_outputs_match_the_pytorch_backend_and_the_adapter_loads_in_mlx_lm(mlx_cfg, tmp_path, tiny_base):
    from mlx_lm import generate, load

    import scu.torch.loop as torch_loop

    cfg = mlx_cfg(training__steps=4, training__checkpoint_every=2, scu__law="pi")  # the law both backends run
    meta = loop.train(cfg, tmp_path / "mlx", progress=False)
    ref = torch_loop.train(cfg.model_copy(update={"model": cfg.model.model_copy(update={"backend": "torch"})}),
                           tmp_path / "torch", progress=False)
    assert set(meta) == set(ref) | {"backend"} and meta["backend"] == "mlx"
    assert [set(r) for r in rows(tmp_path / "mlx")] == [set(r) for r in rows(tmp_path / "torch")]
    # same data, same block order, same schedule: the first step's loss agrees across frameworks
    assert rows(tmp_path / "mlx")[0]["data_bpt"] == pytest.approx(rows(tmp_path / "torch")[0]["data_bpt"], rel=1e-4)

    run = loop.setup(cfg, tmp_path / "mlx", resume=True)  # the trained weights, restored from the checkpoint
    ids = mx.array(np.arange(40).reshape(2, 20))
    model, tokenizer = load(str(tiny_base), adapter_path=str(tmp_path / "mlx"))
    trained = np.array(run.model(ids))
    assert np.abs(np.array(model(ids)) - trained).max() <= 1e-5 * np.abs(trained).max()
    assert isinstance(generate(model, tokenizer, prompt="def ", max_tokens=5), str)

    # and `scu export --to peft` hands the same trained change to PyTorch
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from scu.mlx.convert import export_adapter

    peft_dir = export_adapter(tmp_path / "mlx", "peft", tmp_path / "peft")
    assert (peft_dir / "metadata.json").exists()
    assert json.loads((peft_dir / "adapter_config.json").read_text())["lora_alpha"] == cfg.lora.alpha
    pt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), peft_dir).eval()
    with torch.no_grad():
        pt_logits = pt(torch.from_numpy(np.array(ids))).logits.numpy()
    assert np.abs(pt_logits - trained).max() <= 1e-4 * np.abs(trained).max()


def test_cli_trains_with_backend_mlx(mlx_cfg, tmp_path, tiny_base, pydoc_txt):
    from scu.cli import main

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        f"model: {{base_model: '{tiny_base}'}}\nlora: {{rank: 4, alpha: 8, dropout: 0.0}}\n"
        f"training: {{batch_size: 2, block_size: 64, steps: 3, warmup_steps: 1}}\ndata: {{train_data: '{pydoc_txt}'}}\n"
    )
    assert main(["train", "--config", str(cfg_file), "--backend", "mlx", "--output", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["backend"] == "mlx" and meta["steps"] == 3 and meta["config"]["model"]["backend"] == "mlx"
    assert (tmp_path / "run" / "adapters.safetensors").exists()


def test_auto_stop_saves_the_weights_averaged_over_the_window(mlx_cfg, tmp_path):
    from mlx.utils import tree_flatten

    from scu.core.equilibrium import EquilibriumConfig

    class Recorder(driver.Callback):
        def __init__(self):
            self.states = []

        def on_step_end(self, run, row):
            self.states.append({n: np.array(a) for n, a in tree_flatten(run.model.trainable_parameters())})

    cfg = mlx_cfg(training__steps=40)
    # tolerances that always hold: the detector fires once its 20-step window is full
    cfg.equilibrium = EquilibriumConfig(auto_stop=True, window=20, lambda_tolerance=1e9, s_tolerance=1e9, loss_tolerance=1e9,
                                         min_epochs=0)
    rec = Recorder()
    meta = loop.train(cfg, tmp_path / "run", progress=False, callbacks=[rec])
    assert meta["status"] == "stopped at equilibrium" and meta["steps"] == 20 == len(rec.states)
    assert meta["weights_averaged_over"] == 20
    expected = {n: a.astype(np.float64) for n, a in rec.states[0].items()}
    for state in rec.states[1:]:
        for n, a in state.items():
            expected[n] += (2 / 21) * (a - expected[n])
    saved = {n: np.array(a) for n, a in mx.load(str(tmp_path / "run" / "adapters.safetensors")).items()}
    assert saved.keys() == expected.keys()
    for n, a in saved.items():
        np.testing.assert_allclose(a, expected[n], rtol=1e-4, atol=1e-6)
    assert max(float(np.abs(rec.states[-1][n] - expected[n]).max()) for n in saved) > 1e-4  # not the last step's weights
