"""λ-equilibrium auto-stop on real tiny-model fine-tunes.

Over-budget: 4 pydoc topics (about 7k tokens, 28 steps per epoch) and a budget of 600 steps (about
21 epochs). Data-rich: all 79 topics (about 200k tokens) and 300 steps (0.4 epochs). Measurements over
seeds: bench/equilibrium.py, docs/evaluation.md.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

import scu.torch.loop as loop
from scu.core.equilibrium import EquilibriumConfig
from scu.data.builtin import pydoc_topics
from scu.data.corpus import load_train_val
from scu.driver import Callback
from scu.session import build_controllers
from scu.eval.bpt import block_bpt
from scu.torch.model import load_model, load_tokenizer

BUDGET = 600


def corpus(tmp_path, n_topics):
    path = tmp_path / f"pydoc{n_topics}.txt"
    path.write_text("\n\n".join(pydoc_topics()[:n_topics]))
    return str(path)


def val_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_bpt"] for r in rows if "val_bpt" in r}


def test_over_budget_fine_tune_stops_at_equilibrium_near_the_best_checkpoint(make_cfg, tmp_path):
    small = corpus(tmp_path, 4)

    def cfg(auto_stop):
        c = make_cfg(data__train_data=small, training__steps=BUDGET, training__eval_every=25, scu__deadband=0.0)
        c.equilibrium = EquilibriumConfig(auto_stop=auto_stop)
        return c

    full = loop.train(cfg(False), tmp_path / "full", progress=False)
    assert full["status"] == "completed" and full["steps"] == full["steps_planned"] == BUDGET
    assert full["equilibrium_step"] is not None and full["equilibrium_step"] < BUDGET / 2  # recorded, not acted on
    vals = val_rows(tmp_path / "full")
    vals[BUDGET] = full["val_bpt"]
    best = min(vals.values())

    stopped = loop.train(cfg(True), tmp_path / "auto", progress=False)
    eq = stopped["equilibrium_step"]
    assert stopped["status"] == "stopped at equilibrium"
    assert stopped["steps"] == eq < BUDGET / 2 and stopped["steps_planned"] == BUDGET
    saved = json.loads((tmp_path / "auto" / "metadata.json").read_text())
    assert saved["steps"] == eq and saved["equilibrium_step"] == eq

    # the adapter on disk is the one at the equilibrium step: reload it and measure held-out BPT
    c = cfg(True)
    data = load_train_val(c.data, load_tokenizer(c.model), c.training.block_size, c.training.seed)
    base = load_model(c.model)
    base_bpt = block_bpt(base, data.val_blocks)
    adapter_bpt = block_bpt(PeftModel.from_pretrained(base, str(tmp_path / "auto")), data.val_blocks)
    assert adapter_bpt == pytest.approx(stopped["val_bpt"], rel=1e-6)
    print(f"equilibrium at step {eq} of {BUDGET}: held-out BPT {adapter_bpt:.4f}, best of the full run {best:.4f} "
          f"(step {min(vals, key=vals.get)}), base {base_bpt:.4f}")
    assert adapter_bpt <= 1.01 * best
    assert base_bpt - adapter_bpt >= 0.5 * (base_bpt - best)  # most of what the full run gained, in < half the steps


@pytest.mark.parametrize("law", ["pi", "auto"])
def test_data_rich_fine_tune_does_not_stop_early(make_cfg, tmp_path, law):
    """Under one epoch every batch is new data; `law: auto`'s smooth λ fired here at step 248 before min_epochs."""
    steps = 300  # half as much again as where the over-budget run stops (about 200); under one epoch here
    cfg = make_cfg(data__train_data=corpus(tmp_path, 79), training__steps=steps, training__eval_every=100, scu__deadband=0.0,
                   scu__law=law)
    cfg.equilibrium = EquilibriumConfig(auto_stop=True)
    meta = loop.train(cfg, tmp_path / "rich", progress=False)
    assert meta["status"] == "completed" and meta["steps"] == steps
    assert meta["equilibrium_step"] is None
    vals = val_rows(tmp_path / "rich")
    assert list(vals.values()) == sorted(vals.values(), reverse=True)  # it was still improving at every evaluation


def test_detector_needs_a_penalty(make_cfg):
    """A controlled λ, or a fixed λ > 0 (target_s: auto: S's own trend is judged); no penalty, no detector."""
    assert "equilibrium" in build_controllers(make_cfg())
    assert "equilibrium" in build_controllers(make_cfg(scu__lambda_min=0.5, scu__lambda_max=0.5))
    assert "equilibrium" not in build_controllers(make_cfg(scu__lambda_min=0.0, scu__lambda_max=0.0))
    assert "equilibrium" not in build_controllers(make_cfg(scu__enabled=False))


class WeightRecorder(Callback):
    """The trainable weights after every recorded step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, run, row):
        self.states.append({n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad})


def fires_at(window: int, average: bool, average_from: str = "start") -> EquilibriumConfig:
    """A detector whose tolerances always hold: it fires once its window is full, at step `window`."""
    return EquilibriumConfig(auto_stop=True, average=average, window=window, lambda_tolerance=1e9, s_tolerance=1e9,
                             loss_tolerance=1e9, min_epochs=0, average_from=average_from)


@pytest.mark.parametrize("average, average_from", [(True, "start"), (False, "start"), (True, "judged")])
def test_auto_stop_saves_the_weights_averaged_over_the_window(make_cfg, tmp_path, average, average_from):
    """From the start: the EMA of span 20 over every step. Over the judged steps: the detector fires on the first step
    it judges, so the mean of the judged steps is that step's weights, and the metadata says one step."""
    cfg = make_cfg(training__steps=60)
    cfg.equilibrium = fires_at(20, average, average_from)
    rec = WeightRecorder()
    meta = loop.train(cfg, tmp_path / "run", progress=False, callbacks=[rec])
    assert meta["status"] == "stopped at equilibrium" and meta["steps"] == 20 == len(rec.states)
    span = (20 if average_from == "start" else 1) if average else None
    assert meta["weights_averaged_over"] == span
    card = (tmp_path / "run" / "README.md").read_text()
    assert (f"averaged over about the last {span} steps" in card) == average

    expected = {n: t.clone() for n, t in rec.states[0].items()}  # the EMA of span 20, computed here step by step
    for state in rec.states[1:]:
        for n, t in state.items():
            expected[n] += (2 / 21) * (t - expected[n])
    if not average or average_from == "judged":
        expected = rec.states[-1]
    reloaded = PeftModel.from_pretrained(load_model(cfg.model), str(tmp_path / "run"))
    saved = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
    assert saved.keys() == expected.keys()
    for n, p in saved.items():
        torch.testing.assert_close(p, expected[n], rtol=1e-5, atol=1e-7)
    moved = max(float((rec.states[-1][n] - expected[n]).abs().max()) for n in saved)
    assert moved > 1e-4 if average_from == "start" and average else moved == 0.0  # the EMA is not the last step's
    data = load_train_val(cfg.data, load_tokenizer(cfg.model), cfg.training.block_size, cfg.training.seed)
    assert block_bpt(reloaded, data.val_blocks) == pytest.approx(meta["val_bpt"], rel=1e-6)  # metadata scores what was saved


class JudgedCounter(WeightRecorder):
    """The weights after every recorded step, and how many steps the detector had judged by then."""

    def __init__(self) -> None:
        super().__init__()
        self.judged: list[int] = []

    def on_step_end(self, run, row):
        super().on_step_end(run, row)
        self.judged.append(run.state.judged_steps)


def test_the_judged_average_is_the_mean_of_the_judged_steps_turning_into_the_windows_ema(make_cfg, tmp_path):
    """S must hold within 30% of S* over a whole 20-step window, so the detector judges several steps before it fires;
    the saved adapter is their plain mean (weights 1, 1/2, 1/3, ...) until that falls below the EMA's 2/21."""
    cfg = make_cfg(training__steps=120)
    cfg.equilibrium = EquilibriumConfig(auto_stop=True, window=20, lambda_tolerance=1e9, s_tolerance=0.3,
                                        loss_tolerance=1e9, min_epochs=0, average_from="judged")
    rec = JudgedCounter()
    meta = loop.train(cfg, tmp_path / "run", progress=False, callbacks=[rec])
    assert meta["status"] == "stopped at equilibrium"
    judged = rec.judged[-1]
    assert judged > 3 and rec.judged[-judged:] == list(range(1, judged + 1))  # judged from step 20 on, then fired
    assert meta["weights_averaged_over"] == min(judged, 20)
    expected: dict[str, torch.Tensor] = {}
    for k, state in enumerate(rec.states[-judged:], start=1):
        w = cfg.equilibrium.average_weight(k)
        expected = {n: t.clone() for n, t in state.items()} if k == 1 else {
            n: expected[n] + w * (t - expected[n]) for n, t in state.items()}
    plain_mean = {n: sum(s[n] for s in rec.states[-judged:]) / judged for n in expected}
    reloaded = PeftModel.from_pretrained(load_model(cfg.model), str(tmp_path / "run"))
    saved = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
    for n, p in saved.items():
        torch.testing.assert_close(p, expected[n], rtol=1e-5, atol=1e-7)
        if judged <= 10:  # 1/k >= 2/21 throughout: the plain mean itself
            torch.testing.assert_close(p, plain_mean[n], rtol=1e-5, atol=1e-7)
