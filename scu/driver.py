"""The `scu train` loop both backends share: everything but the tensors.

A backend (scu.torch.loop, scu.mlx.loop) builds a run and supplies one optimizer step, held-out BPT
and its files; `drive` does the rest, once per optimizer step:

    train_step at the session's lambda and the scheduled LR -> StepResult (one host sync)
    -> ControlSession.step: telemetry -> controllers -> Action, applied -> metrics row, progress bar,
    callbacks, checkpoint, stop

The control itself (controllers, Actions, the run record, auto-stop) is scu.session.ControlSession,
which SCUTrainer and the loop API use as well. NaN/inf steps are skipped and never shown to the
controllers; Ctrl-C finishes the step, then checkpoints and writes a valid metadata.json. `Callback`s
observe each recorded step and the end of training (evaluations, early stopping, trackers,
benchmark harnesses) without copying the loop.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from scu import ScuError
from scu.config.schema import Config, TrainingSection
from scu.data.text import TrainData
from scu.rundir import base_fingerprint, fingerprint
from scu.session import ControlSession, RunState, StepResult

MAX_CONSECUTIVE_NAN = 10
STOPPED_BY_SIGNAL = {"interrupted": 130, "terminated": 143}  # status -> the shell's exit code for SIGINT / SIGTERM


# Keys that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = {
    ("training", "steps"), ("training", "checkpoint_every"), ("training", "eval_every"), ("training", "report_to"),
    ("equilibrium", "auto_stop"),
}
FINGERPRINTED = {"train": "training data", "val": "validation data", "base": "base model's weights"}


def config_changes(saved: dict[str, Any], current: Config) -> list[str]:
    """The non-resumable keys whose value differs from the checkpoint's. A key the saved config lacks (written by
    an older scu, before the key existed) counts as that key's default, which is what that run trained with."""
    out, defaults = [], Config().model_dump(mode="json")
    for section, values in current.model_dump(mode="json").items():
        saved_section = saved.get(section) or {}
        for key, value in values.items():
            old = saved_section.get(key, defaults[section].get(key))
            if old != value and (section, key) not in RESUMABLE_CHANGES:
                out.append(f"{section}.{key}: {old!r} -> {value!r}")
    return out


def restore(run: LoopRun, saved: dict[str, Any], saved_config: dict[str, Any]) -> None:
    """Continue from a checkpoint's session state, once the config, data and base are shown to be the ones it was
    trained with."""
    changes = config_changes(saved_config, run.cfg)
    if changes:
        raise ScuError(f"the config differs from the checkpoint's ({'; '.join(changes[:3])}); resume with the original config")
    prints = run.state.fingerprints
    saved_prints = saved["state"].get("fingerprints") or {}
    for what, value in prints.items():
        if saved_prints.get(what, value) != value:
            raise ScuError(
                f"the {FINGERPRINTED[what]} changed since the checkpoint was written; resume with the original, "
                "or start a new run with --overwrite"
            )
    step = saved["state"]["step"]
    if step > run.cfg.training.steps:
        raise ScuError(
            f"the checkpoint is at step {step}, past training.steps {run.cfg.training.steps}; resume with --steps above {step}"
        )
    run.session.load_state_dict(saved)
    run.state.fingerprints = prints


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


def lr_schedule(t: TrainingSection) -> Callable[[int], float]:
    """The LR of optimizer step s (1-based): linear warmup over warmup_steps, then cosine or linear decay to 10% of
    the peak at the last step, or constant. A pure function of s, so a resumed run continues the same LR."""
    w, total, peak = t.warmup_steps, t.steps, t.learning_rate
    if t.lr_schedule == "linear":
        # Hand-written: transformers has no linear decay to a floor. Measured at 20 warmup of 300 steps: get_wsd_schedule
        # starts its warmup at the floor (step 1: 14.5% of the peak, here 5%); get_linear_schedule_with_warmup ends at 0.
        return lambda s: peak * s / max(1, w) if s <= w else peak * (0.1 + 0.9 * (1 - (s - w) / max(1, total - w)))
    import torch
    from transformers.optimization import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)  # the schedules are built on an optimizer
    if t.lr_schedule == "cosine":
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(holder, w, total, min_lr_rate=0.1)
    else:
        scheduler = get_constant_schedule_with_warmup(holder, w)
    factor = scheduler.lr_lambdas[0]
    return lambda s: peak * factor(s)


def record_step(run: LoopRun, res: StepResult, lam_used: float, lr: float, dt: float) -> dict[str, Any] | None:
    """The step shown to the run's control session: its metrics row (None for a NaN/inf step)."""
    return run.session.step(res, lam_used, lr, dt)


def optimizer_step(
    run: LoopRun, train_step: Callable[[Any, float, float], StepResult]
) -> tuple[StepResult, dict[str, Any] | None, float]:
    """One step at the session's λ and the scheduled LR (times the controllers' factor), measured and recorded.

    Returns (result, metrics row, seconds); the row is None for a NaN/inf step, which is counted and skipped.
    """
    lam = run.session.lam
    lr = run.lr_at(run.state.step + 1) * run.state.lr_factor
    t0 = time.perf_counter()
    res = train_step(run, lam, lr)
    dt = time.perf_counter() - t0
    return res, record_step(run, res, lam, lr, dt), dt


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


def progress_text(row: dict[str, Any], tokens_per_s: float, controlled: bool = True) -> str:
    """The progress bar's postfix; S* only where lambda is controlled (a fixed lambda has no target)."""
    parts = [f"bpt {row['data_bpt']:.3f}"]
    if row["s"] is not None:
        parts.append(f"S {100 * row['s']:.2f}%" + (f"/{100 * row['target_s']:g}%" if controlled else ""))
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
    session: ControlSession
    lr_at: Callable[[int], float]  # lr_schedule(cfg.training)

    @property
    def state(self) -> RunState: ...


class Callback:
    """Hooks around `drive`, in the spirit of transformers' TrainerCallback; every method is optional.

    A callback reads the run; it may change the training data (run.data.train), and it asks for a stop
    by returning True from `on_step_end`. The controllers' decisions stay in the Actions."""

    def on_train_begin(self, run: Any) -> None:
        """Before the first step of this call (also after a resume): the model, data and controllers are set up."""

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
    average_weights: Callable[[Any, Any, float], Any]  # (run, average or None, weight): the EMA auto-stop saves
    load_weights: Callable[[Any, Any], None]  # (run, average): put the averaged weights into the model
    is_main: bool = True  # the process that writes files and shows progress


def drive(run: LoopRun, backend: Backend, progress: bool = True, callbacks: Sequence[Callback] = ()) -> str:
    """Train until the step budget, a controller's or callback's stop, or Ctrl-C; returns the run's status."""
    t, session = run.cfg.training, run.session
    show = progress and backend.is_main  # when shown, tqdm's own TQDM_DISABLE still applies
    bar = tqdm(total=t.steps, initial=run.state.step, desc=backend.desc, dynamic_ncols=True, **({} if show else {"disable": True}))
    status = "completed"
    detector, average = run.cfg.equilibrium, None  # after a resume the average starts from the resumed weights
    run.model.train()
    session.start()
    for cb in callbacks:
        cb.on_train_begin(run)
    with StopOnSignal() as sig:
        while run.state.step < t.steps:
            res, row, dt = optimizer_step(run, backend.train_step)
            st = run.state
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
            weight = detector.average_weight(st.judged_steps) if detector.averaging else None
            if weight is not None:
                average = backend.average_weights(run, average, weight)
            if t.eval_every and st.step % t.eval_every == 0 and run.data.val is not None:
                row["val_bpt"] = backend.val_bpt(run)
            session.record(row)
            if backend.is_main:
                for reason in row.get("reasons", []):
                    bar.write(reason)
            bar.set_postfix_str(progress_text(row, res.tokens / max(dt, 1e-9), not session.lambda_fixed))
            asked = [cb.on_step_end(run, row) for cb in callbacks]
            if st.step % t.checkpoint_every == 0:
                backend.save_checkpoint(run)
                backend.write_outputs(run, "running", False)
            if sig.requested:
                status = "terminated" if sig.received == signal.SIGTERM else "interrupted"
                break
            if session.stop_status is not None:
                status = session.stop_status
                break
            if any(asked):
                status = "stopped by a callback"
                break
    averaged = status == "stopped at equilibrium" and average is not None
    if averaged:
        backend.load_weights(run, average)
        span = detector.average_span(run.state.judged_steps)
        session.note_averaged(span)
        if backend.is_main:
            bar.write(f"SCU: the adapter saved is the weights averaged over about the last {span} "
                      "steps (equilibrium.average: false keeps the last step's)")
    bar.close()
    if status not in STOPPED_BY_SIGNAL and run.data.val is not None and (averaged or "val_bpt" not in run.state.last):
        run.state.last["val_bpt"] = backend.val_bpt(run)
    backend.save_checkpoint(run)
    backend.write_outputs(run, status, True)
    session.close()
    for cb in callbacks:
        cb.on_train_end(run, status)
    return status
