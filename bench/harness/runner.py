"""One fine-tune of the harness: `scu train`'s entry point (scu.torch.loop.train) with a callback.

Every arm trains through the product's own loop, so the loop can change underneath the harness. The
callback (`Measure`) adds what `scu train` does not do: held-out evaluations at intervals, validation
early stopping with a restored best checkpoint, the held-out BPT at the step where λ-equilibrium
fires (the run then continues to the budget: the harness only observes the detector), and a mid-run
switch of the training data.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.scu_overhead import timed_step
from scu.config.schema import build_config
from scu.core.equilibrium import AVERAGE_FROM
from scu.core.tracking import tracking
from scu.driver import STOPPED_BY_SIGNAL, BlockOrder, Callback
from scu.eval.bpt import block_bpt
from scu.torch.average import load_average, update_average
from scu.torch.loop import Run, setup, train
from scu.torch.regularizer import LoraPenalty

PATIENCE = 3  # validation evaluations without improvement before early stopping (the rule)


@dataclass(frozen=True)
class Job:
    """One arm at one seed and one training-set size. `config` is merged into the harness's base config."""

    arm: str
    seed: int
    size: str  # key of the training slice in the data manifest
    config: dict[str, Any] = field(default_factory=dict)
    early_stop: bool = False  # track validation early stopping (patience PATIENCE) along the way
    switch_at: float | None = None  # fraction of the budget after which the training data switches
    evals: str = "curve"  # "curve": held-out along the way (and val, if early_stop); "final": everything at the end only
    kind: str = "train"  # "train", or "overhead": SCU and unregularized stepped alternately in one process

    @property
    def key(self) -> str:
        return f"{self.arm}/seed{self.seed}"


@dataclass(frozen=True)
class Settings:
    """What every fine-tune of one scale shares."""

    steps: int
    batch_size: int
    block_size: int
    learning_rate: float
    warmup_steps: int
    rank: int
    val_evals: int  # validation evaluations per run
    test_evals: int  # held-out evaluations along the way (the last one is the final evaluation)
    overhead_steps: int  # step pairs of the overhead measurement
    eval_batch: int = 32
    base_model: str = ""


def make_config(job: Job, s: Settings, train_path: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"base_model": s.base_model},
        "lora": {"rank": s.rank, "alpha": 2 * s.rank, "dropout": 0.0},
        # every cached harness result was measured with `law: pi` (the default until 2026-12-06) and S_hat an EMA of
        # S (until 2026-12-05; docs/method.md, "What S_hat smooths"): pinned so that the cache and a rerun measure the
        # same controller; an arm names another law with its settings
        "scu": {"enabled": False, "law": "pi", "smoothing": "ratio"},
        "training": {"learning_rate": s.learning_rate, "batch_size": s.batch_size, "block_size": s.block_size,
                     "steps": s.steps, "warmup_steps": s.warmup_steps, "lr_schedule": "constant",
                     "weight_decay": 0.0, "seed": job.seed, "checkpoint_every": 10**9, "eval_every": 0},
        "data": {"train_data": train_path, "val_fraction": 0.0},
    }
    for section, values in job.config.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def trainable_state(run: Run) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}


class Evaluator:
    """Held-out BPT on the harness's block arrays, plus the size of the learned change."""

    def __init__(self, run: Run, blocks: dict[str, np.ndarray], batch: int) -> None:
        self.run, self.blocks, self.batch = run, blocks, batch
        self.penalty = LoraPenalty(run.model, "delta", run.cfg.scu.prior_sigma, run.tokens_per_epoch)
        self.seconds = 0.0

    def __call__(self, *names: str) -> dict[str, float]:
        t0 = time.perf_counter()
        out = {name: block_bpt(self.run.model, self.blocks[name], self.batch) for name in names}
        with torch.no_grad():
            out["dw_norm"] = math.sqrt(float(self.penalty.sq_norm()))
        self.seconds += time.perf_counter() - t0
        return out


def eval_steps(total: int, count: int) -> set[int]:
    return {round(total * (i + 1) / count) for i in range(count)} if count else set()


def run_job(job: Job, s: Settings, train_path: str, blocks: dict[str, np.ndarray]) -> dict[str, Any]:
    if job.kind == "overhead":
        return run_overhead(job, s, train_path)
    cfg = build_config(make_config(job, s, train_path))
    work = Path(tempfile.mkdtemp(prefix="scu-vs-baselines-"))
    measure = Measure(job, s, blocks)
    try:
        train(cfg, work / "run", progress=False, callbacks=[measure])  # `scu train`'s own entry point
        refuse_truncated(measure.result["status"], job.key)
        return measure.result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def refuse_truncated(status: str, name: str) -> None:
    """Raise when a signal cut the run short: a truncated run must not be cached as a measurement."""
    if status in STOPPED_BY_SIGNAL:
        raise RuntimeError(f"{name}: {status} before its budget; not cached, rerun the benchmark to measure it")


class Measure(Callback):
    """What the harness adds to `scu train`, as a callback: held-out curves, validation early stopping with a
    restored best checkpoint, the held-out BPT where λ-equilibrium fires (observed, training goes on to the
    budget), and the mid-run data switch."""

    def __init__(self, job: Job, s: Settings, blocks: dict[str, np.ndarray]) -> None:
        self.job, self.s, self.blocks = job, s, blocks
        self.evaluate: Evaluator | None = None
        self.rows: list[dict[str, Any]] = []
        self.curve: list[dict[str, Any]] = []
        self.best_val, self.best_val_step, self.best_state, self.bad_evals = math.inf, None, None, 0
        self.early: dict[str, Any] | None = None
        self.auto: dict[str, Any] | None = None
        self.switch_info: dict[str, Any] | None = None
        self.t_start = time.perf_counter()
        self.result: dict[str, Any] = {}
        self.averages: dict[str, dict[str, torch.Tensor]] = {}  # per equilibrium.average_from, the trainable weights

    def track_averages(self, run: Run) -> None:
        """The averages `scu train --auto-stop` would save under each `equilibrium.average_from`, side by side (the
        harness observes the detector with auto-stop off)."""
        for start in AVERAGE_FROM:
            weight = replace(run.cfg.equilibrium, average_from=start).average_weight(run.state.judged_steps)
            if weight is not None:
                self.averages[start] = update_average(run.model, self.averages.get(start), weight)

    def on_step_end(self, run: Run, row: dict[str, Any]) -> None:
        job, st, steps = self.job, run.state, run.cfg.training.steps
        if self.evaluate is None:
            self.evaluate = Evaluator(run, self.blocks, self.s.eval_batch)
            self.val_at = eval_steps(steps, self.s.val_evals) if job.evals == "curve" and job.early_stop else set()
            self.test_at = eval_steps(steps, self.s.test_evals) if job.evals == "curve" else set()
            self.switch_step = None if job.switch_at is None else round(steps * job.switch_at)
        evaluate = self.evaluate
        self.rows.append({k: row[k] for k in ("step", "data_bpt", "param_bpt", "s", "s_hat", "lambda", "at_bound", "step_time")})
        self.track_averages(run)
        if self.auto is None and st.equilibrium_step == st.step:  # where `scu train --auto-stop` would end
            self.auto = {"step": st.step, "train_wall_s": st.wall_time, **evaluate("val", "test", "wiki")}
            current = trainable_state(run)
            for start, average in self.averages.items():  # the same, on each average auto-stop can save
                load_average(run.model, average)
                self.auto["averaged" if start == "start" else f"averaged_{start}"] = evaluate("val", "test", "wiki")
            load_average(run.model, current)
        point: dict[str, Any] = {}
        if st.step in self.val_at:
            point.update(evaluate("val"))
        if st.step in self.test_at:
            point.update(evaluate("test"))
        if point:
            self.curve.append({"step": st.step, **point})
        if job.early_stop and "val" in point and self.early is None:
            if point["val"] < self.best_val:
                self.best_val, self.best_val_step, self.best_state, self.bad_evals = point["val"], st.step, trainable_state(run), 0
            else:
                self.bad_evals += 1
            if self.bad_evals >= PATIENCE:
                self.early = restored_eval(run, evaluate, self.best_state, st.step, self.best_val_step, st.wall_time, True)
        if self.switch_step is not None and st.step == self.switch_step:  # the next step trains on the new data
            self.switch_info = switch_data(run, self.blocks["switch"])

    def on_train_end(self, run: Run, status: str) -> None:
        job, st, evaluate, curve = self.job, run.state, self.evaluate, self.curve
        last = curve[-1] if curve and curve[-1]["step"] == st.step else {}  # the last curve point is the final one
        final = {"step": st.step, **last, **evaluate(*(n for n in ("val", "test", "wiki") if n not in last))}
        if job.early_stop and self.early is None and self.best_state is not None:  # never triggered: keep the best
            self.early = restored_eval(run, evaluate, self.best_state, st.step, self.best_val_step, st.wall_time, False)
        rows = self.rows
        result: dict[str, Any] = {
            "arm": job.arm, "seed": job.seed, "size": job.size, "tokens_per_epoch": run.tokens_per_epoch,
            "config": run.cfg.model_dump(mode="json"), "status": status,
            "steps": st.step, "nan_skips": st.nan_skips,
            "train_wall_s": st.wall_time, "eval_wall_s": evaluate.seconds, "wall_s": time.perf_counter() - self.t_start,
            "median_step_s": statistics.median(r["step_time"] for r in rows) if rows else None,
            "train_bpt_final": rows[-1]["data_bpt"] if rows else None,
            "final": final, "curve": curve, "early_stop": self.early, "auto_stop": self.auto,
            "equilibrium_step": st.equilibrium_step,
            "prior_sigma": run.penalty.sigma if run.penalty is not None else None,
            "rows": rows,
        }
        result.update(s_summary(run, rows, self.switch_step))
        if self.switch_info is not None:
            result["switch"] = {**self.switch_info, **switch_tracking(rows, self.switch_step, run.cfg.scu.target_s)}
        self.result = result


def restored_eval(run: Run, evaluate: Evaluator, best: dict[str, torch.Tensor], stop_step: int, best_step: int,
                  wall: float, triggered: bool) -> dict[str, Any]:
    """Held-out BPT of the best-validation checkpoint, as early stopping returns it (also when the patience
    never ran out and training reached the budget); then carry on from the current weights."""
    current = trainable_state(run)
    load_average(run.model, best)
    out = {"stop_step": stop_step, "best_val_step": best_step, "train_wall_s": wall, "triggered": triggered,
           **evaluate("val", "test", "wiki")}
    load_average(run.model, current)
    return out


def switch_data(run: Run, new_blocks: np.ndarray) -> dict[str, Any]:
    """Train on different text from here on: same number of blocks, so the penalty's N is unchanged."""
    n = len(run.data.train)
    if len(new_blocks) < n:
        raise ValueError(f"switch data has {len(new_blocks)} blocks, the training set {n}")
    run.data.train = new_blocks[:n]
    run.order = BlockOrder(n, run.cfg.training.seed + 1)
    return {"step": run.state.step, "blocks": n}


def s_summary(run: Run, rows: list[dict[str, Any]], switch_step: int | None) -> dict[str, Any]:
    """S over the second half (or before the switch), and the controller's tracking when λ is controlled."""
    measured = [r for r in rows if r["s"] is not None]
    if not measured:
        return {}
    scu = run.cfg.scu
    end = len(measured) if switch_step is None else sum(r["step"] <= switch_step for r in measured)
    part = measured[:end]
    half = part[len(part) // 2 :]
    out: dict[str, Any] = {
        "mean_s_2nd_half": statistics.fmean(r["s"] for r in half),
        "final_s_hat": measured[-1]["s_hat"],
        "final_lambda": measured[-1]["lambda"],
        "mean_lambda_2nd_half": math.exp(statistics.fmean(math.log(max(r["lambda"], 1e-30)) for r in half)),
    }
    if scu.lambda_min < scu.lambda_max:
        tr = tracking([r["s"] for r in part], [r["s_hat"] for r in part], [r["lambda"] for r in part],
                      [r["at_bound"] for r in part], scu.target_s)
        out["tracking"] = tr.as_dict()
        out["at_bound_2nd_half"] = sum(r["at_bound"] is not None for r in half) / len(half)
        # the same error on ParamBPT/DataBPT = S/(1 - S): near S = 1 a ±5% band on S is a wide band on the penalty
        mean_odds = statistics.fmean(r["s"] / (1 - r["s"]) for r in half)
        target_odds = scu.target_s / (1 - scu.target_s)
        out["odds_error"] = abs(mean_odds - target_odds) / target_odds
    return out


def switch_tracking(rows: list[dict[str, Any]], switch_step: int, target: float) -> dict[str, Any]:
    """After the switch: how far S_hat was pushed from S*, and the steps until it stays within ±10% again."""
    after = [r for r in rows if r["step"] > switch_step and r["s"] is not None]
    if not after:
        return {}
    tr = tracking([r["s"] for r in after], [r["s_hat"] for r in after], [r["lambda"] for r in after],
                  [r["at_bound"] for r in after], target)
    before = [r for r in rows if r["step"] <= switch_step and r["s"] is not None]
    return {
        "s_hat_before": before[-1]["s_hat"] if before else None,
        "max_deviation_after": max(abs(r["s_hat"] / target - 1) for r in after),
        "resettle_steps": tr.settling_step,  # counted from the switch; None: not back in the band by the end
        "tracking_after": tr.as_dict(),
    }


def run_overhead(job: Job, s: Settings, train_path: str) -> dict[str, Any]:
    """SCU and unregularized set up side by side in one process and stepped alternately (order swapped each
    pair), so machine load hits both alike; the per-pair ratio of step times is the overhead."""
    work = Path(tempfile.mkdtemp(prefix="scu-vs-baselines-overhead-"))
    try:
        runs = {}
        for name, enabled in (("scu", True), ("off", False)):
            cfg = make_config(job, s, train_path)
            if not enabled:
                cfg["scu"] = {"enabled": False}
            cfg["training"]["steps"] = s.overhead_steps + 10
            runs[name] = setup(build_config(cfg), work / name)
            runs[name].model.train()
        times: dict[str, list[float]] = {"scu": [], "off": []}
        for i in range(s.overhead_steps + 10):
            for name in (("scu", "off") if i % 2 == 0 else ("off", "scu")):
                dt = timed_step(runs[name])
                if i >= 10:
                    times[name].append(dt)
        ratios = [a / b for a, b in zip(times["scu"], times["off"])]
        return {
            "arm": job.arm, "seed": job.seed, "size": job.size, "kind": "overhead", "pairs": len(ratios),
            "median_step_s_scu": statistics.median(times["scu"]), "median_step_s_off": statistics.median(times["off"]),
            "median_pair_ratio": statistics.median(ratios),
            "ratio_of_medians": statistics.median(times["scu"]) / statistics.median(times["off"]),
            "torch_threads": torch.get_num_threads(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
