"""The training loop both backends share: everything but the tensors.

A backend (scu.torch.loop, scu.mlx.loop) builds a run and supplies one optimizer step, held-out BPT
and its files; `drive` does the rest, once per optimizer step:

    train_step -> StepResult (one host sync) -> record_step: StepTelemetry -> controllers -> Action
    -> applied to the next step's lambda, LR, batch; metrics row, progress bar, checkpoint, stop

NaN/inf steps are skipped and never shown to the controllers; Ctrl-C finishes the step, then
checkpoints and writes a valid metadata.json. `Callback`s observe each recorded step and the end of
training (evaluations, early stopping, trackers, benchmark harnesses) without copying the loop.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from scu import ScuError
from scu.config.schema import Config
from scu.core.bits import nats_to_bits
from scu.core.equilibrium import EquilibriumDetector
from scu.core.pi import PIConfig, PIController
from scu.core.simplified import SimplifiedController, regularized_target
from scu.core.telemetry import Action, StepTelemetry, merge
from scu.data.corpus import TrainData
from scu.report.records import MetricsLog, atomic_write_json, package_versions
from scu.rundir import base_fingerprint, fingerprint

MAX_CONSECUTIVE_NAN = 10
STOPPED_BY_SIGNAL = {"interrupted": 130, "terminated": 143}  # status -> the shell's exit code for SIGINT / SIGTERM


@dataclass
class RunState:
    """Everything besides tensors that a checkpoint must restore for an identical continuation."""

    step: int = 0
    cursor: int = 0  # sequences consumed from the deterministic block order (all ranks)
    grad_accum: int = 1
    lr_factor: float = 1.0
    reg_factor: float = 1.0
    grad_clip_factor: float = 1.0
    nan_skips: int = 0
    consecutive_nan: int = 0
    steps_at_min: int = 0
    steps_at_max: int = 0
    lambda_lo: float | None = None
    lambda_hi: float | None = None
    tokens_seen: int = 0
    wall_time: float = 0.0
    equilibrium_step: int | None = None
    last: dict[str, Any] = field(default_factory=dict)  # the last metrics row
    fingerprints: dict[str, str] = field(default_factory=dict)  # train/val blocks and base weights (scu.rundir)


# Keys that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = {("training", "steps"), ("training", "checkpoint_every"), ("training", "eval_every"), ("equilibrium", "auto_stop")}
FINGERPRINTED = {"train": "training data", "val": "validation data", "base": "base model's weights"}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for section, values in current.items():
        for key, value in values.items():
            old = (saved.get(section) or {}).get(key)
            if old != value and (section, key) not in RESUMABLE_CHANGES:
                out.append(f"{section}.{key}: {old!r} -> {value!r}")
    return out


def restored_state(run: LoopRun, saved_state: dict[str, Any], saved_config: dict[str, Any]) -> RunState:
    """The checkpoint's loop state, once the config, data and base are shown to be the ones it was trained with."""
    changes = config_changes(saved_config, run.cfg.model_dump(mode="json"))
    if changes:
        raise ScuError(f"the config differs from the checkpoint's ({'; '.join(changes[:3])}); resume with the original config")
    saved_prints = saved_state.get("fingerprints") or {}
    for what, value in run.state.fingerprints.items():
        if saved_prints.get(what, value) != value:
            raise ScuError(
                f"the {FINGERPRINTED[what]} changed since the checkpoint was written; resume with the original, "
                "or start a new run with --overwrite"
            )
    if saved_state["step"] > run.cfg.training.steps:
        raise ScuError(
            f"the checkpoint is at step {saved_state['step']}, past training.steps {run.cfg.training.steps}; "
            f"resume with --steps above {saved_state['step']}"
        )
    state = RunState(**{f.name: saved_state[f.name] for f in fields(RunState) if f.name in saved_state})
    state.fingerprints = run.state.fingerprints
    return state


def run_fingerprints(cfg: Config, data: TrainData) -> dict[str, str]:
    """What a checkpoint must be resumed with: the packed train and validation blocks, and the base weights."""
    return {"train": fingerprint([data.train]), "val": fingerprint([data.val]), "base": base_fingerprint(cfg.model.base_model)}


def check_block_size(cfg: Config, context: int | None) -> None:
    if context and cfg.training.block_size > context:
        raise ScuError(
            f"training.block_size {cfg.training.block_size} exceeds the model's context of {context} tokens; "
            f"set training.block_size to {context} or less"
        )


class BlockOrder:
    """Deterministic sampling: epoch e visits the blocks in permutation(seed, e). The cursor is the state."""

    def __init__(self, n_blocks: int, seed: int) -> None:
        self.n, self.seed = n_blocks, seed

    def indices(self, cursor: int, count: int) -> np.ndarray:
        out = []
        while count > 0:
            epoch, pos = divmod(cursor, self.n)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            take = perm[pos : pos + count]
            out.append(take)
            cursor += len(take)
            count -= len(take)
        return np.concatenate(out)


def scheduled_lr(step: int, t: Any) -> float:
    """Linear warmup over warmup_steps, then the schedule down to 10% of the peak at the last step."""
    if step <= t.warmup_steps:
        return t.learning_rate * step / max(1, t.warmup_steps)
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    if t.lr_schedule == "constant":
        return t.learning_rate
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if t.lr_schedule == "cosine" else 1 - progress
    return t.learning_rate * (0.1 + 0.9 * decay)


def pi_config(cfg: Config) -> PIConfig:
    s = cfg.scu
    return PIConfig(
        target_s=s.target_s, kp=s.kp, ki=s.ki, deadband=s.deadband, lambda_init=s.lambda_init,
        lambda_min=s.lambda_min, lambda_max=s.lambda_max, ema_alpha=s.ema_alpha, law=s.law,
    )


def build_controllers(cfg: Config) -> dict[str, Any]:
    """The controllers this config asks for, by name. Each has step(), state_dict(), load_state_dict()."""
    controllers: dict[str, Any] = {}
    if cfg.scu.enabled:
        controllers["pi"] = PIController(pi_config(cfg))
    if cfg.sscu.enabled:
        controllers["sscu"] = SimplifiedController(cfg.sscu, cfg.training.gradient_accumulation)
    if cfg.scu.enabled and cfg.scu.lambda_max > 0:  # a controlled λ, or a fixed one whose S settles (target_s: auto)
        controllers["equilibrium"] = EquilibriumDetector(cfg.equilibrium)
    return controllers


@dataclass
class StepResult:
    data_nats: float  # summed CE over the step's tokens, all ranks
    param_bpt: float | None
    grad_norm: float
    tokens: int


def current_lambda(run: LoopRun) -> float:
    """A fixed lambda is scaled by S-SCU's reg_factor; a PI-controlled one follows S*/reg_factor instead."""
    pi = run.controllers.get("pi")
    if pi is None:
        return 0.0
    return pi.lam * run.state.reg_factor if pi.fixed else pi.lam


def regularization_acts_on(run: LoopRun) -> str:
    """What S-SCU's reg_factor changes in this run (docs/sscu.md)."""
    pi = run.controllers.get("pi")
    if pi is not None:
        return "lambda" if pi.fixed else "pi_target"
    return "weight_decay" if run.cfg.training.weight_decay > 0 else "nothing"


def apply(run: LoopRun, action: Action) -> None:
    """Apply a merged Action to the loop state used by the next step."""
    st = run.state
    st.lr_factor, st.reg_factor, st.grad_clip_factor = action.lr_factor, action.reg_factor, action.grad_clip_factor
    if action.grad_accum is not None:
        st.grad_accum = max(1, int(action.grad_accum))
    if action.sleep_s > 0:
        time.sleep(action.sleep_s)


def record_step(run: LoopRun, res: StepResult, lam_used: float, lr: float, dt: float) -> dict[str, Any]:
    st, pi = run.state, run.controllers.get("pi")
    data_bpt = nats_to_bits(res.data_nats / res.tokens)
    if pi is not None and not pi.fixed:  # so the PI loop holds S-SCU's regularization instead of undoing it
        pi.config.target_s = regularized_target(run.cfg.scu.target_s, st.reg_factor)
    telemetry = StepTelemetry(
        step=st.step, data_bpt=data_bpt, param_bpt=res.param_bpt or 0.0, tokens=res.tokens, lr=lr,
        grad_norm=res.grad_norm, wall_time=dt, lam=lam_used if pi else None,
        target_s=pi.config.target_s if pi is not None and not pi.fixed else None,
    )
    action = merge([c.step(telemetry) for c in run.controllers.values()])
    equilibrium = run.controllers.get("equilibrium")
    if equilibrium is not None and st.equilibrium_step is None:
        st.equilibrium_step = equilibrium.equilibrium_step
    apply(run, action)
    lam = current_lambda(run)
    st.lambda_lo = lam if st.lambda_lo is None else min(st.lambda_lo, lam)
    st.lambda_hi = lam if st.lambda_hi is None else max(st.lambda_hi, lam)
    bound = pi.at_bound if pi else None
    st.steps_at_min += bound == "min"
    st.steps_at_max += bound == "max"
    st.tokens_seen += res.tokens
    st.wall_time += dt
    row = {
        "step": st.step,
        "data_bpt": data_bpt,
        "param_bpt": res.param_bpt,
        "s": telemetry.s if res.param_bpt is not None else None,
        "s_hat": pi.s_hat if pi else None,
        "lambda": lam,
        "lambda_used": lam_used,
        "target_s": pi.config.target_s if pi else None,  # S*, divided by S-SCU's reg_factor when S-SCU runs
        "integral": pi.integral if pi else None,
        "at_bound": bound,
        "lr": lr,
        "grad_norm": res.grad_norm,
        "grad_accum": st.grad_accum,
        "tokens": st.tokens_seen,
        "step_time": dt,
        "wall_time": st.wall_time,
    }
    if action.reasons:
        row["reasons"] = action.reasons
    if action.stop:
        row["stop"] = True
    return row


def optimizer_step(
    run: LoopRun, train_step: Callable[[Any, float, float], StepResult]
) -> tuple[StepResult, dict[str, Any] | None, float]:
    """One step at the controlled λ and scheduled LR, measured and shown to the controllers.

    Returns (result, metrics row, seconds); the row is None for a NaN/inf step, which is counted and skipped.
    """
    st = run.state
    lam = current_lambda(run)
    lr = scheduled_lr(st.step + 1, run.cfg.training) * st.lr_factor
    t0 = time.perf_counter()
    res = train_step(run, lam, lr)
    dt = time.perf_counter() - t0
    st.step += 1
    if not (math.isfinite(res.data_nats) and math.isfinite(res.grad_norm)):
        st.nan_skips += 1
        st.consecutive_nan += 1
        return res, None, dt
    st.consecutive_nan = 0
    return res, record_step(run, res, lam, lr, dt), dt


def metadata(run: LoopRun, status: str) -> dict[str, Any]:
    cfg, st, last = run.cfg, run.state, run.state.last
    counted = max(1, st.step - st.nan_skips)
    return {
        "status": status,
        "base_model": cfg.model.base_model,
        "scu_enabled": cfg.scu.enabled,
        "target_s": cfg.scu.target_s if cfg.scu.enabled else None,
        "final_s": last.get("s"),
        "final_s_hat": last.get("s_hat"),
        "final_lambda": last.get("lambda"),
        "lambda_range": [st.lambda_lo, st.lambda_hi],
        "lambda_saturation": {"at_min": st.steps_at_min / counted, "at_max": st.steps_at_max / counted},
        "final_data_bpt": last.get("data_bpt"),
        "final_param_bpt": last.get("param_bpt"),
        "val_bpt": last.get("val_bpt"),
        "kp": cfg.scu.kp,
        "ki": cfg.scu.ki,
        "deadband": cfg.scu.deadband,
        "law": cfg.scu.law,
        "prior": {"type": cfg.scu.prior, "sigma": cfg.scu.prior_sigma},
        "tokens_per_epoch": run.tokens_per_epoch,
        "tokens_per_epoch_source": "config" if cfg.data.tokens_per_epoch else "packed training set",
        "train_docs": run.data.train_docs,
        "val_docs": run.data.val_docs,
        "val_split": run.data.split_rule,
        "steps": st.step,
        "steps_planned": cfg.training.steps,
        "nan_skips": st.nan_skips,
        "equilibrium_step": st.equilibrium_step,
        "tokens_seen": st.tokens_seen,
        "wall_time_s": st.wall_time,
        "seed": cfg.training.seed,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "controllers": {name: c.state_dict() for name, c in run.controllers.items()},
        "config": cfg.model_dump(mode="json"),
    }


def write_sscu_files(run: LoopRun) -> None:
    """S-SCU's actions, summary and settings next to metadata.json (when S-SCU runs)."""
    sscu = run.controllers.get("sscu")
    if sscu is None:
        return
    files = sscu.outputs(
        final_lr=run.state.last.get("lr"), regularization=regularization_acts_on(run),
        training=run.cfg.training.model_dump(mode="json"),
    )
    for name, content in files.items():
        atomic_write_json(run.out / name, content)


class StopOnSignal:
    """First Ctrl-C or SIGTERM (schedulers, `docker stop`): finish the step, checkpoint, exit cleanly.

    A second signal of the same kind gets the default behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> "StopOnSignal":
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def progress_text(row: dict[str, Any], tokens_per_s: float) -> str:
    parts = [f"bpt {row['data_bpt']:.3f}"]
    if row["s"] is not None:
        parts.append(f"S {100 * row['s']:.2f}%/{100 * row['target_s']:g}%")
        flag = {"min": " @MIN", "max": " @MAX"}.get(row["at_bound"], "")
        parts.append(f"λ {row['lambda']:.3g}{flag}")
    parts.append(f"{tokens_per_s:,.0f} tok/s")
    return " ".join(parts)


class LoopRun(Protocol):
    """What `drive` and the shared helpers read of a backend's run (scu.torch.loop.Run, scu.mlx.loop.MlxRun)."""

    cfg: Config
    out: Path
    model: Any
    data: TrainData
    tokens_per_epoch: int
    controllers: dict[str, Any]
    state: RunState
    metrics: MetricsLog


class Callback:
    """Hooks around `drive`, in the spirit of transformers' TrainerCallback; every method is optional.

    A callback reads the run; it may change the training data (run.data.train), and it asks for a stop
    by returning True from `on_step_end`. The controllers' decisions stay in the Actions."""

    def on_step_end(self, run: Any, row: dict[str, Any]) -> bool | None:
        """After a recorded (finite) step and its metrics row; True ends training here."""
        return None

    def on_train_end(self, run: Any, status: str) -> None:
        """After the final checkpoint and outputs are written; the model still holds the final weights."""


@dataclass(frozen=True)
class Backend:
    """What a framework supplies to `drive`."""

    desc: str  # the progress bar's label
    train_step: Callable[[Any, float, float], StepResult]  # (run, lambda, lr): one optimizer step
    val_bpt: Callable[[Any], float]  # held-out bits per token of run.data.val
    save_checkpoint: Callable[[Any], None]
    write_outputs: Callable[[Any, str, bool], None]  # (run, status, adapter)
    is_main: bool = True  # the process that writes files and shows progress


def drive(run: LoopRun, backend: Backend, progress: bool = True, callbacks: Sequence[Callback] = ()) -> str:
    """Train until the step budget, a controller's or callback's stop, or Ctrl-C; returns the run's status."""
    t, st = run.cfg.training, run.state
    show = progress and backend.is_main  # when shown, tqdm's own TQDM_DISABLE still applies
    bar = tqdm(total=t.steps, initial=st.step, desc=backend.desc, dynamic_ncols=True, **({} if show else {"disable": True}))
    status = "completed"
    run.model.train()
    thermal = run.controllers.get("thermal")
    if thermal is not None:
        thermal.start(run.out, st.step)
    with StopOnSignal() as sig:
        while st.step < t.steps:
            res, row, dt = optimizer_step(run, backend.train_step)
            bar.update(1)
            if row is None:
                if st.consecutive_nan >= MAX_CONSECUTIVE_NAN:
                    backend.save_checkpoint(run)
                    backend.write_outputs(run, "failed: NaN loss", False)
                    raise ScuError(
                        f"loss was NaN/inf for {MAX_CONSECUTIVE_NAN} steps in a row at step {st.step}; "
                        "lower training.learning_rate or use fp32 (model.dtype)"
                    )
                continue
            if t.eval_every and st.step % t.eval_every == 0 and run.data.val is not None:
                row["val_bpt"] = backend.val_bpt(run)
            st.last = row
            if backend.is_main:
                run.metrics.append(row)
                for reason in row.get("reasons", []):
                    bar.write(reason)
            bar.set_postfix_str(progress_text(row, res.tokens / max(dt, 1e-9)))
            asked = [cb.on_step_end(run, row) for cb in callbacks]
            if st.step % t.checkpoint_every == 0:
                backend.save_checkpoint(run)
                backend.write_outputs(run, "running", False)
            if sig.requested:
                status = "terminated" if sig.received == signal.SIGTERM else "interrupted"
                break
            if row.get("stop"):
                status = "stopped at equilibrium" if st.equilibrium_step == st.step else "stopped by a controller"
                break
            if any(asked):
                status = "stopped by a callback"
                break
    bar.close()
    if status not in STOPPED_BY_SIGNAL and run.data.val is not None and "val_bpt" not in st.last:
        st.last["val_bpt"] = backend.val_bpt(run)
    backend.save_checkpoint(run)
    backend.write_outputs(run, status, True)
    if thermal is not None:
        thermal.close()
    for cb in callbacks:
        cb.on_train_end(run, status)
    return status
