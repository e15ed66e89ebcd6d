"""One control session per run, whichever way it trains: `scu train` (scu.driver, PyTorch and MLX),
`SCUTrainer`/`SCUSFTTrainer` (a TrainerCallback) and the loop API (`SCU.step`).

A trainer hands the session each finished optimizer step; the session does the rest in one place:

    StepResult -> StepTelemetry -> energy meter (power, temperature) -> every controller -> merged Action
    -> applied here (lambda, PI target, LR factor, batch, clipping, pacing, pause, stop) -> metrics row

and owns the run record (metadata.json, metrics.jsonl, the S-SCU and T-SCU files, the controller
state in checkpoints; schema in scu.report.schema) and the stop decision. The trainer reads the
knobs for its next step from `state` (lam, lr_factor, grad_accum, grad_clip_factor, reg_factor).
Framework-free: no torch, no MLX.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scu import ScuError
from scu.config.schema import Config
from scu.core.bits import nats_to_bits
from scu.core.equilibrium import EquilibriumDetector
from scu.core.pi import PIConfig, PIController
from scu.core.simplified import SimplifiedController, regularized_target
from scu.core.telemetry import Action, Controller, StepTelemetry, merge
from scu.core.thermal import ThermalController
from scu.energy import Interval
from scu.energy.runtime import EnergyMeter, Pause, TscuRecord
from scu.report.records import MetricsLog, atomic_write_json, package_versions
from scu.report.schema import METADATA_FILE, METRICS_FILE, MetricsRow, RunMetadata, SessionState, TscuRow


@dataclass
class StepResult:
    """What one optimizer step measured (summed over its micro-batches and ranks)."""

    data_nats: float  # summed CE over the step's tokens, all ranks
    param_bpt: float | None  # None: no penalty in this run
    grad_norm: float | None
    tokens: int
    data_pull: float | None = None  # gradient balance, `law: balance` only (scu.core.telemetry.StepTelemetry)
    penalty_grad_sq: float | None = None
    penalty_sensitivity: float | None = None


@dataclass
class RunState:
    """Everything besides tensors that a checkpoint must restore for an identical continuation."""

    step: int = 0
    cursor: int = 0  # sequences consumed from the deterministic block order (all ranks; scu train only)
    lam: float = 0.0  # the PI loop's lambda (or the fixed one) for the next step, as the last Action set it
    target_s: float | None = None  # S* of the PI loop, before S-SCU's reg_factor (None: lambda not controlled)
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
    judged_steps: int = 0  # steps the λ-equilibrium detector has judged since its window last (re)started
    settled: bool = False  # the balance law has settled (scu.penalty_step_bound_settled applies from the next step)
    last: dict[str, Any] = field(default_factory=dict)  # the last metrics row
    fingerprints: dict[str, str] = field(default_factory=dict)  # train/val blocks and base weights (scu.rundir)


@dataclass(frozen=True)
class RunFacts:
    """What only the trainer knows about a run, for metadata.json."""

    trainer: str  # "scu train", "SCUTrainer", ... (RunMetadata.trainer)
    backend: str = "torch"
    base_model: str | None = None  # default: the config's model.base_model
    tokens_per_epoch_source: str = "packed training set"
    train_docs: int | None = None
    val_docs: int | None = None
    val_split: str | None = None
    world_size: int = 1
    measures_balance: bool = False  # reports the gradient balance that `scu.law: balance` needs (scu train)


def pi_config(cfg: Config) -> PIConfig:
    s = cfg.scu
    return PIConfig(
        target_s=s.target_s, kp=s.kp, ki=s.ki, deadband=s.deadband, lambda_init=s.lambda_init,
        lambda_min=s.lambda_min, lambda_max=s.lambda_max, ema_alpha=s.ema_alpha, smoothing=s.smoothing,
        lead_steps=s.lead_steps, tracking_alpha=s.tracking_alpha, settle_steps=s.settle_steps,
        balance_margin=s.balance_margin, feedforward=s.feedforward, growth_alpha=s.growth_alpha,
        balance_floor=s.balance_floor, approach=s.approach, horizon_steps=s.horizon_steps,
        horizon_memory=s.horizon_memory, horizon_kp_reads=s.horizon_kp_reads, start_band=s.start_band,
        horizon_plant=s.horizon_plant, restoring_exponent=s.restoring_exponent, law=s.law,
        # a decoupled penalty step acts in full in its own step: no momentum between lambda and the weights
        momentum=0.0 if s.penalty_step == "decoupled" else PIConfig.momentum,
    )


def build_controllers(cfg: Config, tokens_per_epoch: int | None = None) -> dict[str, Controller]:
    """The controllers this config asks for, by name, in the order their Actions merge."""
    controllers: dict[str, Controller] = {}
    if cfg.scu.enabled:
        try:  # settings that clash with each other (PIConfig checks them together): one line, not a traceback
            controllers["pi"] = PIController(pi_config(cfg))
        except ValueError as e:
            raise ScuError(f"scu: {e}") from None
    if cfg.sscu.enabled:
        controllers["sscu"] = SimplifiedController(cfg.sscu, cfg.training.gradient_accumulation)
    if cfg.scu.enabled and cfg.scu.lambda_max > 0:  # a controlled λ, or a fixed one whose S settles (target_s: auto)
        controllers["equilibrium"] = EquilibriumDetector(cfg.equilibrium, tokens_per_epoch)
    if cfg.tscu.enabled:
        try:
            controllers["thermal"] = ThermalController(cfg.tscu, tokens_per_epoch, cfg.training.gradient_accumulation)
        except ValueError as e:
            raise ScuError(f"tscu: {e}") from None
    return controllers


class ControlSession:
    """The controllers, the run record and the stop decision of one run."""

    def __init__(
        self,
        cfg: Config,
        tokens_per_epoch: int | None,
        out: str | Path | None = None,
        facts: RunFacts = RunFacts("SCU loop API"),
        *,
        is_main: bool = True,
        controllers: dict[str, Controller] | None = None,
        meter: EnergyMeter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        cfg = cfg.model_copy(update={"scu": cfg.scu.resolved(facts.measures_balance)})  # law: auto, for this trainer
        if cfg.scu.enabled and cfg.scu.law == "balance" and not facts.measures_balance:
            raise ScuError(f"scu.law: balance needs the gradient balance, which `scu train`, SCUTrainer and the loop API "
                           f"given torch's AdamW (one process or DDP) measure; {facts.trainer} here cannot: use "
                           f"scu.law: pi (or auto, which runs pi here)")
        if cfg.scu.enabled and cfg.scu.penalty_step == "decoupled" and not facts.measures_balance:
            raise ScuError(f"scu.penalty_step: decoupled is applied by `scu train`, SCUTrainer and the loop API given "
                           f"torch's AdamW (one process or DDP); {facts.trainer} here cannot: use scu.penalty_step: loss "
                           f"(the default)")
        self.cfg, self.tokens_per_epoch, self.facts, self.is_main, self.sleep = cfg, tokens_per_epoch, facts, is_main, sleep
        self.out = None if out is None else Path(out)
        self.controllers = build_controllers(cfg, tokens_per_epoch) if controllers is None else controllers
        self.meter = meter or (EnergyMeter(cfg.tscu, sleep=sleep) if "thermal" in self.controllers else None)
        self.tscu = TscuRecord() if self.meter is not None else None
        self.metrics = None if self.out is None else MetricsLog(self.out / METRICS_FILE)
        self.state = RunState(grad_accum=cfg.training.gradient_accumulation)
        if cfg.scu.enabled:
            self.state.lam = pi_config(cfg).lambda_start
            self.state.target_s = None if self.lambda_fixed else cfg.scu.target_s
        self.stop_status: str | None = None  # set when a controller stopped the run
        self.weights_averaged_over: int | None = None  # set when auto-stop saves window-averaged weights

    # -- the knobs of the next step -------------------------------------------------------
    @property
    def lambda_fixed(self) -> bool:
        return self.cfg.scu.lambda_min == self.cfg.scu.lambda_max

    @property
    def lam(self) -> float:
        """λ for the next step: a fixed λ is scaled by S-SCU's reg_factor; a controlled one follows S*/reg_factor instead."""
        if not self.cfg.scu.enabled:
            return 0.0
        return self.state.lam * self.state.reg_factor if self.lambda_fixed else self.state.lam

    @property
    def target_s(self) -> float | None:
        """The S* the PI loop aims at in the next update (None: λ not controlled)."""
        st = self.state
        return None if st.target_s is None else regularized_target(st.target_s, st.reg_factor)

    def regularization_acts_on(self) -> str:
        """What S-SCU's reg_factor changes in this run (docs/sscu.md)."""
        if self.cfg.scu.enabled:
            return "lambda" if self.lambda_fixed else "pi_target"
        return "weight_decay" if self.cfg.training.weight_decay > 0 else "nothing"

    # -- one optimizer step ---------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        """Before the first step (and after a resume): the energy meter starts (sampling in a thread unless
        `background` is False), T-SCU's rows are reloaded."""
        if self.meter is not None:
            self.meter.start(background)
            if self.out is not None:
                self.tscu.reload(self.out, self.state.step)

    def step(self, res: StepResult, lam_used: float, lr: float, dt: float) -> MetricsRow | None:
        """Count the step, show it to the controllers, apply their Action; the metrics row, or None for a
        NaN/inf step (counted in nan_skips and never shown to the controllers)."""
        st = self.state
        st.step += 1
        if not (math.isfinite(res.data_nats) and (res.grad_norm is None or math.isfinite(res.grad_norm))):
            st.nan_skips += 1
            st.consecutive_nan += 1
            return None
        st.consecutive_nan = 0
        telemetry = StepTelemetry(
            step=st.step, data_bpt=nats_to_bits(res.data_nats / res.tokens), param_bpt=res.param_bpt or 0.0,
            tokens=res.tokens, lr=lr, grad_norm=res.grad_norm, wall_time=dt,
            lam=lam_used if self.cfg.scu.enabled else None, target_s=self.target_s,
            data_pull=res.data_pull, penalty_grad_sq=res.penalty_grad_sq, penalty_sensitivity=res.penalty_sensitivity,
        )
        interval = self.meter.measure(telemetry) if self.meter is not None else None
        actions = {name: c.step(telemetry) for name, c in self.controllers.items()}
        action = merge(actions.values())
        pause = self.apply(action)
        lam = self.lam
        st.lambda_lo = lam if st.lambda_lo is None else min(st.lambda_lo, lam)
        st.lambda_hi = lam if st.lambda_hi is None else max(st.lambda_hi, lam)
        bound = action.report.get("at_bound")
        st.steps_at_min += bound == "min"
        st.steps_at_max += bound == "max"
        st.tokens_seen += res.tokens
        st.wall_time += dt
        if interval is not None:
            self._tscu_row(telemetry, interval, actions["thermal"], pause)
        target = telemetry.target_s  # what this step's PI update aimed at; a fixed λ's run keeps its configured S*
        if target is None and self.cfg.scu.enabled:
            target = self.cfg.scu.target_s
        row: MetricsRow = {
            "step": st.step,
            "data_bpt": telemetry.data_bpt,
            "param_bpt": res.param_bpt,
            "s": telemetry.s if res.param_bpt is not None else None,
            "s_hat": action.report.get("s_hat"),
            "lambda": lam,
            "lambda_used": lam_used,
            "target_s": target,
            "integral": action.report.get("integral"),
            "at_bound": bound,
            "lr": lr,
            "grad_norm": res.grad_norm,
            "grad_accum": st.grad_accum,
            "tokens": st.tokens_seen,
            "step_time": dt,
            "wall_time": st.wall_time,
        }
        for key in ("lambda_balance", "lambda_growth"):
            if key in action.report:
                row[key] = action.report[key]
        if res.penalty_sensitivity is not None:  # what the growth model divides by: kept so its error can be checked
            row["penalty_sensitivity"] = res.penalty_sensitivity
        if action.reasons:
            row["reasons"] = action.reasons
        if action.stop:
            row["stop"] = True
        return row

    def apply(self, action: Action) -> Pause | None:
        """The one place an Action changes the run: λ, target, factors and batch for the next step, then the
        pause (the energy meter waits it out) and the pacing. Returns the pause, if one was taken."""
        st = self.state
        if action.lam is not None:
            st.lam = action.lam
        if action.target_s is not None and st.target_s is not None:
            st.target_s = action.target_s
        st.lr_factor, st.reg_factor, st.grad_clip_factor = action.lr_factor, action.reg_factor, action.grad_clip_factor
        if action.grad_accum is not None:
            st.grad_accum = max(1, int(action.grad_accum))
        if "equilibrium_step" in action.report and st.equilibrium_step is None:
            st.equilibrium_step = action.report["equilibrium_step"]
        st.judged_steps = action.report.get("judged_steps", st.judged_steps)
        st.settled = bool(action.report.get("settled", st.settled))
        pause = None
        if action.pause_until_celsius is not None and self.meter is not None:
            pause = self.meter.wait_until_cool(action.pause_until_celsius)
            self.tscu.add_pause(pause)
            action.reasons.append(pause.reason)
            action.stop = action.stop or not pause.cooled
        if action.sleep_s > 0:
            self.sleep(action.sleep_s)
        if action.stop and self.stop_status is None:
            self.stop_status = "stopped at equilibrium" if st.equilibrium_step == st.step else "stopped by a controller"
        return pause

    def _tscu_row(self, telemetry: StepTelemetry, interval: Interval, thermal: Action, pause: Pause | None) -> None:
        report = thermal.report
        row: TscuRow = {
            "step": telemetry.step,
            "loss": telemetry.loss_nats,
            "power_watts": interval.power_watts,
            "temperature_celsius": interval.temperature_celsius,
            "memory_temperature_celsius": interval.memory_temperature_celsius,
            "energy_joules": interval.energy_joules,
            "duration_s": interval.duration_s,
            "control_factor": report["control_factor"],
            "learning_rate": telemetry.lr,
            "bits_learned": report["bits_learned"],
            "bits_per_joule": report["bits_per_joule"],
            "landauer_efficiency": report["landauer_efficiency"],
            "paused_s": 0.0 if pause is None else pause.interval.duration_s,
            "hardware_throttle": list(interval.throttle_reasons),
            "reasons": list(thermal.reasons) + ([] if pause is None else [pause.reason]),
        }
        self.tscu.rows.append(row)

    def note_averaged(self, span: int) -> None:
        """The model now holds the weights averaged over about `span` steps: metadata.json says so."""
        self.weights_averaged_over = span

    def record(self, row: MetricsRow) -> None:
        """Keep the row as the run's last and append it to metrics.jsonl (main process only)."""
        self.state.last = dict(row)
        if self.metrics is not None and self.is_main:
            self.metrics.append(row)

    # -- the run record -------------------------------------------------------------------
    def metadata(self, status: str) -> RunMetadata:
        cfg, st, last, facts = self.cfg, self.state, self.state.last, self.facts
        counted = max(1, st.step - st.nan_skips)
        return {
            "status": status,
            "trainer": facts.trainer,
            "backend": facts.backend,
            "base_model": facts.base_model or cfg.model.base_model,
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
            "tokens_per_epoch": self.tokens_per_epoch,
            "tokens_per_epoch_source": "config" if cfg.data.tokens_per_epoch else facts.tokens_per_epoch_source,
            "train_docs": facts.train_docs,
            "val_docs": facts.val_docs,
            "val_split": facts.val_split,
            "world_size": facts.world_size,
            "steps": st.step,
            "steps_planned": cfg.training.steps,
            "nan_skips": st.nan_skips,
            "equilibrium_step": st.equilibrium_step,
            "weights_averaged_over": self.weights_averaged_over,
            "tokens_seen": st.tokens_seen,
            "wall_time_s": st.wall_time,
            "seed": cfg.training.seed,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "controllers": {name: c.state_dict() for name, c in self.controllers.items()},
            "config": cfg.model_dump(mode="json"),
        }

    def write_records(self, status: str, directory: str | Path | None = None) -> None:
        """metadata.json and the S-SCU and T-SCU files, into `directory` (default: the run's), main process only."""
        where = Path(directory) if directory is not None else self.out
        if not self.is_main or where is None:
            return
        atomic_write_json(where / METADATA_FILE, self.metadata(status))
        sscu = self.controllers.get("sscu")
        if sscu is not None:
            files = sscu.outputs(final_lr=self.state.last.get("lr"), regularization=self.regularization_acts_on(),
                                 training=self.cfg.training.model_dump(mode="json"))
            for name, content in files.items():
                atomic_write_json(where / name, content)
        if self.tscu is not None:
            self.tscu.write(where, self.controllers["thermal"], self.meter)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> SessionState:
        out: SessionState = {"state": asdict(self.state), "controllers": {n: c.state_dict() for n, c in self.controllers.items()}}
        if self.tscu is not None:
            out["tscu"] = self.tscu.state_dict()
        return out

    def load_state_dict(self, saved: SessionState) -> None:
        """Continue from a checkpoint's session state; metrics.jsonl is cut back to its step."""
        state = dict(saved["state"])
        if "lam" not in state and "pi" in saved["controllers"]:  # written before the session held λ: the PI's
            state["lam"] = saved["controllers"]["pi"]["lam"]
        fresh = asdict(self.state)  # a key the checkpoint lacks keeps this session's starting value
        self.state = RunState(**{f.name: state.get(f.name, fresh[f.name]) for f in fields(RunState)})
        for name, controller in self.controllers.items():
            controller.load_state_dict(saved["controllers"][name])
        if self.tscu is not None:
            self.tscu.load_state_dict(saved["tscu"])
        if self.metrics is not None and self.is_main:
            self.metrics.truncate_after(self.state.step)

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()
