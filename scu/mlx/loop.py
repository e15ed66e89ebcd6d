"""The SCU training loop on MLX (mlx-lm models and LoRA layers).

The same run as `scu.torch.loop`, step for step (both are driven by `scu.driver.drive`): the same config, data packing and block order,
learning-rate schedule, controllers (scu.core), metrics rows, metadata.json, progress bar,
checkpoint cadence and NaN handling. Only the model, the step and the files that hold tensors
are MLX's: the adapter is mlx-lm's `adapters.safetensors` + `adapter_config.json`.

    micro-batches -> compiled CE (+ lambda * ParamBPT * ln2, or a decoupled penalty step) -> clip -> one host sync
    -> update (skipped on NaN) -> StepTelemetry -> controllers -> next step's lambda, LR, ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from scu import ScuError
from scu.config.schema import Config, dump_config
from scu.core.bits import LN2
from scu.data.corpus import load_train_val
from scu.data.text import Blocks, TrainData
from scu.driver import Backend, BlockOrder, Callback, check_block_size, drive, lr_schedule, restore, run_fingerprints
from scu.mlx import checkpoint
from scu.mlx.checkpoint import CHECKPOINT
from scu.mlx.model import add_lora, load_base, peft_provenance, save_adapter
from scu.mlx.penalty import LoraPenalty
from scu.mlx.step import TrainStep, ce_sum
from scu.report.card import write_model_card
from scu.report.records import atomic_write_text
from scu.rundir import RunLock, check_output, claim
from scu.session import ControlSession, RunFacts, RunState
from scu.trackers import ReportTo


@dataclass
class MlxRun:
    """A `scu.driver.LoopRun`, plus what MLX's step and files need."""

    cfg: Config
    out: Path
    model: nn.Module
    tokenizer: Any
    data: TrainData
    tokens_per_epoch: int
    penalty: LoraPenalty | None
    optimizer: optim.Optimizer
    session: ControlSession
    order: BlockOrder
    lr_at: Callable[[int], float]
    adapter_config: dict[str, Any]
    step: TrainStep | None = None
    lock: RunLock | None = None

    @property
    def state(self) -> RunState:
        return self.session.state


def setup(cfg: Config, out: Path, resume: bool = False, overwrite: bool = False) -> MlxRun:
    """Load and validate everything before the output directory is touched, then claim it."""
    out = Path(out)
    if cfg.scu.penalty_step_bound_settled is not None:
        raise ScuError("scu.penalty_step_bound_settled is not in the MLX backend yet (its step's bound is fixed at "
                       "setup); drop it, or train with model.backend: torch")
    check_output(out, CHECKPOINT, resume, overwrite)
    t = cfg.training
    model, tokenizer, model_config = load_base(cfg.model)
    check_block_size(cfg, model_config.get("max_position_embeddings"))
    data = load_train_val(cfg.data, tokenizer, t.block_size, t.seed)
    tokens_per_epoch = cfg.data.tokens_per_epoch or data.tokens_per_epoch
    adapter_config = add_lora(model, cfg.lora, t.seed, cfg.model.gradient_checkpointing)
    leaves = sorted({k.rsplit(".", 1)[-1] for k in adapter_config["lora_parameters"]["keys"]})
    adapter_config |= {
        "model": cfg.model.base_model,
        "peft_config": peft_provenance(cfg.lora.model_copy(update={"targets": leaves}), cfg.model.base_model),
    }
    penalty = LoraPenalty(model, cfg.scu.prior, cfg.scu.prior_sigma, tokens_per_epoch) if cfg.scu.enabled else None
    optimizer = optim.AdamW(learning_rate=t.learning_rate, weight_decay=t.weight_decay, bias_correction=True)
    facts = RunFacts("scu train (mlx)", "mlx", train_docs=data.train_docs, val_docs=data.val_docs,
                     val_split=data.split_rule, measures_balance=True)
    session = ControlSession(cfg, tokens_per_epoch, out, facts)
    run = MlxRun(session.cfg, out, model, tokenizer, data, tokens_per_epoch, penalty, optimizer, session,
                 BlockOrder(len(data.train), t.seed), lr_schedule(t), adapter_config)
    run.state.fingerprints = run_fingerprints(cfg, data)
    run.lock = claim(out, CHECKPOINT, resume, overwrite)
    try:
        if resume:
            load_checkpoint(run)
    except BaseException:
        run.lock.release()
        raise
    s = run.cfg.scu  # law: auto resolved by the session
    run.step = TrainStep(model, optimizer, penalty, balance=penalty is not None and s.law == "balance",
                         decoupled=penalty is not None and s.penalty_step == "decoupled", bound=s.penalty_step_bound)
    return run


def save_checkpoint(run: MlxRun) -> None:
    a0 = run.penalty.initial_factors() if run.penalty is not None else {}
    checkpoint.save_checkpoint(run.out, run.model.trainable_parameters(), run.optimizer.state, a0,
                               run.session.state_dict(), run.cfg.model_dump(mode="json"))


def load_checkpoint(run: MlxRun) -> None:
    """Restore everything saved; call before the compiled step is built (it captures the optimizer state)."""
    groups, record = checkpoint.read_checkpoint(run.out / CHECKPOINT)
    restore(run, record, record["config"])
    run.model.load_weights(groups["trainable"], strict=False)
    run.optimizer.state = tree_unflatten(groups["optimizer"])
    if run.penalty is not None:
        run.penalty.load_initial_factors(dict(groups["a0"]))
    mx.eval(run.model.parameters(), run.optimizer.state)


def step_seed(seed: int, step: int) -> int:
    """The random key for one step (LoRA dropout): a function of (seed, step), so a resume draws the same."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def train_step(run: MlxRun, lam: float, lr: float):
    """One optimizer step over grad_accum micro-batches from the deterministic block order."""
    st, t = run.state, run.cfg.training
    run.optimizer.learning_rate = lr
    mx.random.seed(step_seed(t.seed, st.step + 1))
    blocks = run.data.train_blocks
    step_idx = run.order.indices(st.cursor, t.batch_size * st.grad_accum)
    st.cursor += len(step_idx)
    micro = [mlx_batch(blocks, step_idx[lo : lo + t.batch_size]) for lo in range(0, len(step_idx), t.batch_size)]
    return run.step(micro, blocks.loss_tokens(step_idx), lam, t.max_grad_norm * st.grad_clip_factor)


def mlx_batch(blocks: Blocks, idx: np.ndarray | slice) -> tuple[mx.array, mx.array, mx.array]:
    """(input_ids, position_ids, loss_mask) of blocks `idx`, as the MLX step and ce_sum take them."""
    batch = blocks.batch(idx)
    return mx.array(batch["input_ids"]), mx.array(batch["position_ids"]), mx.array(batch["loss_mask"])


def block_bpt(model: nn.Module, blocks: Blocks, batch_size: int = 16) -> float:
    """Held-out bits per token over the loss targets of packed blocks (as scu.eval.bpt.block_bpt)."""
    was_training = model.training
    model.eval()
    nats = 0.0
    for i in range(0, len(blocks), batch_size):
        nats += ce_sum(model, *mlx_batch(blocks, slice(i, i + batch_size))).item()
    model.train(was_training)
    return nats / blocks.loss_tokens() / LN2


def average_weights(run: MlxRun, average: dict[str, mx.array] | None, weight: float) -> dict[str, mx.array]:
    """One EMA step of the trainable weights (EquilibriumConfig.average_weight), scheduled now without waiting for
    it (async_eval): no lazy graph builds up across steps and the step gets no extra host sync."""
    params = dict(tree_flatten(run.model.trainable_parameters()))
    average = dict(params) if average is None else {n: a + weight * (params[n] - a) for n, a in average.items()}
    mx.async_eval(list(average.values()))
    return average


def load_weights(run: MlxRun, average: dict[str, mx.array]) -> None:
    run.model.load_weights(list(average.items()), strict=False)
    mx.eval(run.model.parameters())


def write_outputs(run: MlxRun, status: str, adapter: bool) -> None:
    if adapter:
        save_adapter(run.model, run.adapter_config, run.out)
    atomic_write_text(run.out / "config.yaml", dump_config(run.cfg))
    run.session.write_records(status)
    if adapter:
        write_model_card(run.out)  # README.md from the files just written (docs/evaluation.md)


def train(
    cfg: Config, out: str | Path, resume: bool = False, progress: bool = True, overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fine-tune under SCU control on MLX; returns metadata.json's content (`out` as for scu.torch.loop.train)."""
    run = setup(cfg, Path(out), resume, overwrite)
    backend = Backend(
        "scu train (mlx)", train_step, lambda r: block_bpt(r.model, r.data.val_blocks, r.cfg.training.batch_size),
        save_checkpoint, write_outputs, average_weights, load_weights,
    )
    trackers = []
    if cfg.training.report_to:  # Accelerate's trackers need an Accelerator, not a torch model
        from accelerate import Accelerator

        trackers.append(ReportTo(Accelerator(cpu=True, log_with=cfg.training.report_to, project_dir=run.out), cfg,
                                 run.state.tokens_seen))
    try:
        return run.session.metadata(drive(run, backend, progress, [*callbacks, *trackers]))
    finally:
        run.lock.release()
