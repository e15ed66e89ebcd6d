"""The SCU training loop for PyTorch LoRA fine-tuning.

Data flows one way, once per optimizer step:

    micro-batches -> CE (+ lambda * ParamBPT * ln2) -> backward -> clip -> optimizer step
    -> StepTelemetry (one host sync) -> controllers -> merged Action -> next step's lambda, LR, ...

The whole step is `train_step`; `train` around it only sets up, records and checkpoints.
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from scu import ScuError
from scu.config.schema import Config, dump_config
from scu.core.bits import LN2, nats_to_bits
from scu.core.equilibrium import EquilibriumDetector
from scu.core.pi import PIConfig, PIController
from scu.core.simplified import SimplifiedController, regularized_target
from scu.core.telemetry import Action, StepTelemetry, merge
from scu.data.corpus import TrainData, load_train_val
from scu.energy.runtime import ThermalRun
from scu.eval.bpt import block_bpt, cross_entropy_sum
from scu.report.card import write_model_card
from scu.report.records import MetricsLog, atomic_write_json, package_versions
from scu.torch.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from scu.torch.distributed import check_loop_layout
from scu.torch.model import add_lora, load_model, load_tokenizer
from scu.torch.regularizer import LoraPenalty

MAX_CONSECUTIVE_NAN = 10


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
    if cfg.scu.enabled and cfg.scu.lambda_min < cfg.scu.lambda_max:  # equilibrium needs a controlled lambda
        controllers["equilibrium"] = EquilibriumDetector(cfg.equilibrium)
    return controllers


@dataclass
class Run:
    cfg: Config
    out: Path
    model: torch.nn.Module
    tokenizer: Any
    data: TrainData
    tokens_per_epoch: int
    penalty: LoraPenalty | None
    optimizer: torch.optim.Optimizer
    accelerator: Any
    controllers: dict[str, Any]
    order: BlockOrder
    state: RunState
    metrics: MetricsLog


def setup(cfg: Config, out: Path, resume: bool = False) -> Run:
    """Load and validate everything before the output directory is touched."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    has_run = (out / CHECKPOINT).exists() or (out / "metadata.json").exists()
    if has_run and not resume:
        raise ScuError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    if resume and not (out / CHECKPOINT).exists():
        raise ScuError(f"no checkpoint in {out} to resume from; drop --resume to start a new run")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = load_train_val(cfg.data, tokenizer, cfg.training.block_size, cfg.training.seed)
    model = load_model(cfg.model)
    tokens_per_epoch = cfg.data.tokens_per_epoch or data.tokens_per_epoch
    set_seed(cfg.training.seed)
    model = add_lora(model, cfg.lora, cfg.model.gradient_checkpointing)
    penalty = LoraPenalty(model, cfg.scu.prior, cfg.scu.prior_sigma, tokens_per_epoch) if cfg.scu.enabled else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    check_loop_layout(model)  # refuses FSDP / ZeRO-3 layouts this loop cannot measure or checkpoint
    run = Run(
        cfg, out, model, tokenizer, data, tokens_per_epoch, penalty, optimizer, accelerator,
        build_controllers(cfg), BlockOrder(len(data.train), cfg.training.seed),
        RunState(grad_accum=cfg.training.gradient_accumulation), MetricsLog(out / "metrics.jsonl"),
    )
    if cfg.tscu.enabled:  # T-SCU: measures every step, paces or pauses it (docs/tscu.md)
        if accelerator.num_processes > 1:
            raise ScuError("T-SCU runs in one process only (ranks would pace and pause independently); drop --controller thermal")
        run.controllers["thermal"] = ThermalRun(cfg.tscu, tokens_per_epoch, cfg.training.gradient_accumulation)
    if resume:
        load_checkpoint(run)
    return run


@dataclass
class StepResult:
    data_nats: float  # summed CE over the step's tokens, all ranks
    param_bpt: float | None
    grad_norm: float
    tokens: int


def accumulate_gradients(run: Run, lam: float) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Backward over the step's micro-batches: token-weighted CE, plus the penalty once per step.

    Returns the summed CE (nats, this rank), ParamBPT (detached) and this rank's token count.
    """
    model, acc, st, t = run.model, run.accelerator, run.state, run.cfg.training
    world, rank = acc.num_processes, acc.process_index
    step_tokens = st.grad_accum * t.batch_size * (t.block_size - 1)
    ce_nats = torch.zeros((), device=acc.device)
    pbpt = None
    for micro in range(st.grad_accum):
        idx = run.order.indices(st.cursor, t.batch_size * world)[rank * t.batch_size : (rank + 1) * t.batch_size]
        st.cursor += t.batch_size * world
        ids = torch.from_numpy(run.data.train[idx]).to(acc.device)
        with nullcontext() if micro == st.grad_accum - 1 else acc.no_sync(model):
            ce_sum = cross_entropy_sum(model(input_ids=ids).logits, ids)
            loss = ce_sum / step_tokens
            if run.penalty is not None and micro == 0:
                pbpt = run.penalty()
                loss = loss + lam * LN2 * pbpt
            acc.backward(loss)
        ce_nats += ce_sum.detach()
    return ce_nats, None if pbpt is None else pbpt.detach(), step_tokens


def train_step(run: Run, lam: float, lr: float) -> StepResult:
    """One optimizer step with a single host sync; a NaN/inf step is measured but not applied."""
    opt, acc, st = run.optimizer, run.accelerator, run.state
    for group in opt.param_groups:
        group["lr"] = lr
        group["weight_decay"] = run.cfg.training.weight_decay * st.reg_factor  # S-SCU without a lambda penalty
    ce_nats, pbpt, step_tokens = accumulate_gradients(run, lam)
    max_norm = run.cfg.training.max_grad_norm * st.grad_clip_factor
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], max_norm)
    if acc.num_processes > 1:
        ce_nats = acc.reduce(ce_nats, reduction="sum")
    measured = torch.stack([ce_nats.float(), grad_norm.float(), (pbpt if pbpt is not None else ce_nats * 0).float()])
    data_nats, gnorm, param_value = measured.tolist()  # the step's single host sync
    if math.isfinite(data_nats) and math.isfinite(gnorm):
        opt.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(data_nats, param_value if pbpt is not None else None, gnorm, step_tokens * acc.num_processes)


def current_lambda(run: Run) -> float:
    """A fixed lambda is scaled by S-SCU's reg_factor; a PI-controlled one follows S*/reg_factor instead."""
    pi = run.controllers.get("pi")
    if pi is None:
        return 0.0
    return pi.lam * run.state.reg_factor if pi.fixed else pi.lam


def regularization_acts_on(run: Run) -> str:
    """What S-SCU's reg_factor changes in this run (docs/sscu.md)."""
    pi = run.controllers.get("pi")
    if pi is not None:
        return "lambda" if pi.fixed else "pi_target"
    return "weight_decay" if run.cfg.training.weight_decay > 0 else "nothing"


def apply(run: Run, action: Action) -> None:
    """Apply a merged Action to the loop state used by the next step."""
    st = run.state
    st.lr_factor, st.reg_factor, st.grad_clip_factor = action.lr_factor, action.reg_factor, action.grad_clip_factor
    if action.grad_accum is not None:
        st.grad_accum = max(1, int(action.grad_accum))
    if action.sleep_s > 0:
        time.sleep(action.sleep_s)


def record_step(run: Run, res: StepResult, lam_used: float, lr: float, dt: float) -> dict[str, Any]:
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


def metadata(run: Run, status: str) -> dict[str, Any]:
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


def write_outputs(run: Run, status: str, adapter: bool) -> None:
    if not run.accelerator.is_main_process:
        return
    if adapter:
        run.accelerator.unwrap_model(run.model).save_pretrained(run.out)
    (run.out / "config.yaml").write_text(dump_config(run.cfg))
    atomic_write_json(run.out / "metadata.json", metadata(run, status))
    if adapter:
        write_model_card(run.out)  # README.md from the files just written (docs/evaluation.md)
    write_sscu_files(run)
    if "thermal" in run.controllers:
        run.controllers["thermal"].write()


def write_sscu_files(run: Run) -> None:
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


class _StopOnSignal:
    """First Ctrl-C: finish the current step, checkpoint, exit cleanly. Second Ctrl-C: default behaviour."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> "_StopOnSignal":
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune under SCU control; returns metadata.json's content."""
    run = setup(cfg, Path(out), resume)
    t, st = cfg.training, run.state
    if run.accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
    show = progress and run.accelerator.is_main_process  # when shown, tqdm's own TQDM_DISABLE still applies
    bar = tqdm(total=t.steps, initial=st.step, desc="scu train", dynamic_ncols=True, **({} if show else {"disable": True}))
    status = "completed"
    run.model.train()
    thermal = run.controllers.get("thermal")
    if thermal is not None:
        thermal.start(run.out, st.step)
    with _StopOnSignal() as sig:
        while st.step < t.steps:
            lam = current_lambda(run)
            lr = scheduled_lr(st.step + 1, t) * st.lr_factor
            t0 = time.perf_counter()
            res = train_step(run, lam, lr)
            dt = time.perf_counter() - t0
            st.step += 1
            if not (math.isfinite(res.data_nats) and math.isfinite(res.grad_norm)):
                st.nan_skips += 1
                st.consecutive_nan += 1
                bar.update(1)
                if st.consecutive_nan >= MAX_CONSECUTIVE_NAN:
                    save_checkpoint(run)
                    write_outputs(run, "failed: NaN loss", adapter=False)
                    raise ScuError(
                        f"loss was NaN/inf for {MAX_CONSECUTIVE_NAN} steps in a row at step {st.step}; "
                        "lower training.learning_rate or use fp32 (model.dtype)"
                    )
                continue
            st.consecutive_nan = 0
            row = record_step(run, res, lam, lr, dt)
            if t.eval_every and st.step % t.eval_every == 0 and run.data.val is not None:
                row["val_bpt"] = block_bpt(run.model, run.data.val, t.batch_size)
            st.last = row
            if run.accelerator.is_main_process:
                run.metrics.append(row)
                for reason in row.get("reasons", []):
                    bar.write(reason)
            bar.update(1)
            bar.set_postfix_str(progress_text(row, res.tokens / max(dt, 1e-9), run))
            if st.step % t.checkpoint_every == 0:
                save_checkpoint(run)
                write_outputs(run, "running", adapter=False)
            if sig.requested:
                status = "interrupted"
                break
            if row.get("stop"):
                status = "stopped at equilibrium" if st.equilibrium_step == st.step else "stopped by a controller"
                break
    bar.close()
    if status != "interrupted" and run.data.val is not None and "val_bpt" not in st.last:
        st.last["val_bpt"] = block_bpt(run.model, run.data.val, t.batch_size)
    save_checkpoint(run)
    write_outputs(run, status, adapter=True)
    if thermal is not None:
        thermal.close()
    return metadata(run, status)


def progress_text(row: dict[str, Any], tokens_per_s: float, run: Run) -> str:
    parts = [f"bpt {row['data_bpt']:.3f}"]
    if row["s"] is not None:
        parts.append(f"S {100 * row['s']:.2f}%/{100 * row['target_s']:g}%")
        flag = {"min": " @MIN", "max": " @MAX"}.get(row["at_bound"], "")
        parts.append(f"λ {row['lambda']:.3g}{flag}")
    parts.append(f"{tokens_per_s:,.0f} tok/s")
    return " ".join(parts)
