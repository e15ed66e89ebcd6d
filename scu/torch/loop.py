"""The SCU training loop for PyTorch LoRA fine-tuning.

Data flows one way, once per optimizer step:

    micro-batches -> CE (+ lambda * ParamBPT * ln2) -> backward -> clip -> optimizer step
    -> StepResult (one host sync) -> ControlSession: telemetry -> controllers -> Action -> next step's lambda, LR, ...

The whole step is `train_step`; `scu.driver.drive` around it records, controls and checkpoints (shared with MLX).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scu import ScuError
from scu.config.schema import Config, dump_config
from scu.core.bits import LN2
from scu.data.corpus import load_train_val
from scu.data.text import TrainData
from scu.driver import (
    Backend,
    BlockOrder,
    Callback,
    StepResult,
    check_block_size,
    drive,
    lr_schedule,
    restore,
    run_fingerprints,
)
from scu.eval.bpt import block_bpt, cross_entropy_sum, packed_forward
from scu.report.card import write_model_card
from scu.report.records import atomic_write_text
from scu.rundir import RunLock, check_output, claim, publish
from scu.session import ControlSession, RunFacts, RunState
from scu.torch import checkpoint
from scu.torch.average import load_average, update_average
from scu.torch.checkpoint import CHECKPOINT
from scu.torch.distributed import check_loop_layout
from scu.torch.model import add_lora, load_model, load_tokenizer
from scu.torch.prior_fit import resolve_fit_prior
from scu.torch.prior_linesearch import LINESEARCH_SCALE, line_search_sigma
from scu.torch.regularizer import LoraPenalty
from scu.trackers import ReportTo


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
    session: ControlSession
    order: BlockOrder
    lr_at: Callable[[int], float]
    lock: RunLock | None = None  # held by the process that writes the run's files

    @property
    def state(self) -> RunState:
        return self.session.state


def setup(cfg: Config, out: Path, resume: bool = False, overwrite: bool = False) -> Run:
    """Load and validate everything before the output directory is touched, then claim it."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    trackers = {"log_with": cfg.training.report_to, "project_dir": out} if cfg.training.report_to else {}
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **trackers)
    if accelerator.is_main_process:  # the process that will claim and write it; others would race its claim
        check_output(out, CHECKPOINT, resume, overwrite)
    if cfg.tscu.enabled and accelerator.num_processes > 1:
        raise ScuError("T-SCU runs in one process only (ranks would pace and pause independently); drop --controller thermal")
    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = load_train_val(cfg.data, tokenizer, cfg.training.block_size, cfg.training.seed)
    model = load_model(cfg.model)
    check_block_size(cfg, getattr(model.config, "max_position_embeddings", None))
    tokens_per_epoch = cfg.data.tokens_per_epoch or data.tokens_per_epoch
    set_seed(cfg.training.seed)
    model = add_lora(model, cfg.lora, cfg.model.gradient_checkpointing)
    if cfg.scu.enabled and cfg.scu.prior_sigma == "linesearch":
        cfg = resolve_linesearch_prior(cfg, out, resume, model, data, accelerator.device)
    penalty = LoraPenalty(model, cfg.scu.prior, cfg.scu.prior_sigma, tokens_per_epoch) if cfg.scu.enabled else None
    optimizer = torch.optim.AdamW(trainable(model), lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    check_loop_layout(model)  # refuses FSDP / ZeRO-3 layouts this loop cannot measure or checkpoint
    facts = RunFacts("scu train", "torch", train_docs=data.train_docs, val_docs=data.val_docs, val_split=data.split_rule,
                     world_size=accelerator.num_processes, measures_balance=True)
    session = ControlSession(cfg, tokens_per_epoch, out, facts, is_main=accelerator.is_main_process)
    # the session's config: `law: auto` resolved as this loop runs it (the step reads the law and the penalty step)
    run = Run(session.cfg, out, model, tokenizer, data, tokens_per_epoch, penalty, optimizer, accelerator, session,
              BlockOrder(len(data.train), cfg.training.seed), lr_schedule(cfg.training))
    run.state.fingerprints = run_fingerprints(cfg, data)
    if accelerator.is_main_process:
        run.lock = claim(out, CHECKPOINT, resume, overwrite)
    try:
        if resume:
            load_checkpoint(run)
    except BaseException:
        if run.lock is not None:
            run.lock.release()
        raise
    return run


def resolve_linesearch_prior(cfg: Config, out: Path, resume: bool, model: torch.nn.Module, data: TrainData,
                             device: torch.device) -> Config:
    """`prior_sigma: linesearch` made a number before the first step (scu.torch.prior_linesearch); a resumed run
    takes the number its checkpoint was trained with."""
    if resume and (out / CHECKPOINT).exists():
        sigma = checkpoint.read_checkpoint(out / CHECKPOINT)["config"]["scu"]["prior_sigma"]
    else:
        sigma, found = line_search_sigma(model.to(device), data.train_blocks, cfg.training.batch_size)
        print(f"SCU: prior_sigma linesearch: sigma {sigma:.4g} (the first step's ||dW|| {found['dw_norm']:.4g} over "
              f"{found['dof']:,} LoRA entries, times {LINESEARCH_SCALE:g}; {found['blocks']} blocks, {found['draws']} draws of A, "
              f"{found['evaluations']} evaluations)", flush=True)
    return cfg.model_copy(update={"scu": cfg.scu.model_copy(update={"prior_sigma": float(f"{sigma:.6g}")})})


def save_checkpoint(run: Run) -> None:
    if run.accelerator.is_main_process:
        model = run.accelerator.unwrap_model(run.model)
        checkpoint.save_checkpoint(run.out, model, run.optimizer, run.session.state_dict(), run.cfg.model_dump(mode="json"))


def load_checkpoint(run: Run) -> None:
    payload = checkpoint.read_checkpoint(run.out / CHECKPOINT)
    restore(run, payload, payload["config"])
    checkpoint.load_tensors(payload, run.accelerator.unwrap_model(run.model), run.optimizer)


def accumulate_gradients(
    run: Run, lam: float
) -> tuple[torch.Tensor, torch.Tensor | None, int, list[torch.Tensor | None] | None]:
    """Backward over the step's micro-batches: CE summed over the step's loss targets (all ranks) and divided by
    their count, plus the penalty once per step. Packed documents see only themselves (their position ids restart,
    no cache), and only loss targets count (with chat data, the assistant's tokens; docs/data.md).

    Returns the summed CE (nats, this rank), ParamBPT (detached), the step's loss targets over all ranks, and, for
    `law: balance` or `penalty_step: decoupled`, the penalty's own gradient at lambda 1 (nats), taken before it is
    mixed into the data's (decoupled: it is not mixed in at all).
    """
    model, acc, st, t = run.model, run.accelerator, run.state, run.cfg.training
    world, rank, bs = acc.num_processes, acc.process_index, t.batch_size
    blocks = run.data.train_blocks
    step_idx = run.order.indices(st.cursor, bs * world * st.grad_accum)
    st.cursor += len(step_idx)
    step_tokens = blocks.loss_tokens(step_idx)
    ce_nats = torch.zeros((), device=acc.device)
    pbpt = penalty_grad = None
    for micro in range(st.grad_accum):
        lo = (micro * world + rank) * bs
        with nullcontext() if micro == st.grad_accum - 1 else acc.no_sync(model):
            logits, batch = packed_forward(model, blocks, step_idx[lo : lo + bs], acc.device)
            ce_sum = cross_entropy_sum(logits, batch["input_ids"], batch["loss_mask"])
            loss = ce_sum * world / max(step_tokens, 1)  # DDP averages gradients over ranks; * world undoes it
            if run.penalty is not None and micro == 0:
                pbpt = run.penalty()
                decoupled = run.cfg.scu.penalty_step == "decoupled"
                if run.cfg.scu.law == "balance" or decoupled:
                    penalty_grad = list(torch.autograd.grad(pbpt * LN2, trainable(model), retain_graph=not decoupled,
                                                            allow_unused=True))
                if not decoupled:  # decoupled: the penalty moves the weights after the optimizer step (train_step)
                    loss = loss + lam * LN2 * pbpt
            acc.backward(loss)
        ce_nats += ce_sum.detach()
    return ce_nats, None if pbpt is None else pbpt.detach(), step_tokens, penalty_grad


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def gradient_balance(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, penalty_grad: list[torch.Tensor | None], lam: float,
    decoupled: bool = False, moments: list[torch.Tensor | None] | None = None, bound: float = 1.0,
) -> torch.Tensor:
    """[-<g_d, g_p>, ||g_p||^2, sensitivity / lr] from the step's total gradient and the penalty's own g_p (all ranks).

    The total gradient is g_d + lam * g_p, or g_d alone with `decoupled`. The sensitivity is how far one unit of
    lambda, held, moves the penalty per step, with v_hat AdamW's second moments from the steps before this one (none
    before the first: 0): through the loss it is lr * <g_p, D g_p>, D = 1 / (sqrt(v_hat) + eps); with the decoupled
    step (decoupled_penalty_step, `bound` c) it is that step's derivative,
    lr * sum g_p^2 v_hat / (v_hat + (lam g_p / c)^2)^(3/2)."""
    params = trainable(model)
    moments = adam_second_moments(optimizer, params) if moments is None else moments
    eps = optimizer.param_groups[0]["eps"]
    triples = [(p.grad, g.double(), v) for p, g, v in zip(params, penalty_grad, moments) if g is not None]
    sq = sum((g * g).sum() for _, g, _ in triples)
    dot = sum(((total.double() * g).sum() for total, g, _ in triples if total is not None), sq * 0)
    if decoupled:
        scaled = sum(((g * g * v / ((v + (lam * g / bound) ** 2).pow(1.5) + eps ** 3)).sum()
                      for _, g, v in triples if v is not None), sq * 0)
    else:
        scaled = sum(((g * g / (v.sqrt() + eps)).sum() for _, g, v in triples if v is not None), sq * 0)
    return torch.stack([(0.0 if decoupled else lam) * sq - dot, sq, scaled])


def adam_second_moments(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    """AdamW's bias-corrected v_hat per parameter (float64), from the steps taken so far (None before its first)."""
    beta2 = optimizer.param_groups[0]["betas"][1]
    out: list[torch.Tensor | None] = []
    for p in params:
        state = optimizer.state.get(p, {})
        out.append(state["exp_avg_sq"].double() / (1.0 - beta2 ** float(state["step"])) if "exp_avg_sq" in state else None)
    return out


@torch.no_grad()
def decoupled_penalty_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, penalty_grad: list[torch.Tensor | None],
    moments: list[torch.Tensor | None], lam: float, lr: float, bound: float = 1.0,
) -> None:
    """`penalty_step: decoupled`: theta -= lr * lam * g_p / sqrt(v_hat + (lam * g_p / c)^2), v_hat AdamW's second moment
    of the data's gradient from before this step, c = `penalty_step_bound`, and no momentum, so a new lambda acts in
    full in its own step. Where the penalty's gradient dominates an entry, its step is bounded by c * lr (with
    lam * g_p / sqrt(v_hat) alone, SmolLM2 diverged from step 6: entries the data hardly moves have a tiny v_hat).
    AdamW's own step is at most about lr, so with c 1 the penalty can at best cancel a data step that keeps pushing
    one way. Its sensitivity is read by gradient_balance(decoupled=True), with the same moments and bound."""
    eps = optimizer.param_groups[0]["eps"]
    for p, g, v in zip(trainable(model), penalty_grad, moments):
        if g is not None and v is not None:
            g = g.double()
            p.add_((lam * g / ((v + (lam * g / bound) ** 2).sqrt() + eps)).to(p.dtype), alpha=-lr)


def train_step(run: Run, lam: float, lr: float) -> StepResult:
    """One optimizer step with a single host sync; a NaN/inf step is measured but not applied."""
    opt, acc, st = run.optimizer, run.accelerator, run.state
    for group in opt.param_groups:
        group["lr"] = lr
        group["weight_decay"] = run.cfg.training.weight_decay * st.reg_factor  # S-SCU without a lambda penalty
    ce_nats, pbpt, step_tokens, penalty_grad = accumulate_gradients(run, lam)
    decoupled = run.cfg.scu.penalty_step == "decoupled" and penalty_grad is not None
    moments = adam_second_moments(opt, trainable(run.model)) if penalty_grad is not None else None  # before the step
    bound = run.cfg.scu.step_bound(st.settled)
    balance = (gradient_balance(run.model, opt, penalty_grad, lam, decoupled, moments, bound).float()
               if penalty_grad is not None else None)
    max_norm = run.cfg.training.max_grad_norm * st.grad_clip_factor
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable(run.model), max_norm)
    if acc.num_processes > 1:
        ce_nats = acc.reduce(ce_nats, reduction="sum")
    zero = ce_nats * 0
    measured = torch.stack([ce_nats.float(), grad_norm.float(), (pbpt if pbpt is not None else zero).float(),
                            *(balance.to(zero.device) if balance is not None else (zero, zero, zero))])
    data_nats, gnorm, param_value, pull, grad_sq, scaled = measured.tolist()  # the step's single host sync
    # clip_grad_norm_'s factor: the penalty's share of the step shrinks with it (decoupled: the penalty is not clipped)
    clip = 1.0 if decoupled else min(1.0, max_norm / (gnorm + 1e-6))
    if math.isfinite(data_nats) and math.isfinite(gnorm):
        if decoupled:  # with v_hat from before the optimizer's step, as its sensitivity was read
            decoupled_penalty_step(run.model, opt, penalty_grad, moments, lam, lr, bound)
        opt.step()
    opt.zero_grad(set_to_none=True)
    return StepResult(data_nats, param_value if pbpt is not None else None, gnorm, step_tokens,
                      *((pull, grad_sq, lr * clip * scaled) if balance is not None else (None, None, None)))


def write_outputs(run: Run, status: str, adapter: bool) -> None:
    if not run.accelerator.is_main_process:
        return
    if adapter:
        publish(run.out, run.accelerator.unwrap_model(run.model).save_pretrained)
    atomic_write_text(run.out / "config.yaml", dump_config(run.cfg))
    run.session.write_records(status)
    if adapter:
        write_model_card(run.out)  # README.md from the files just written (docs/evaluation.md)


def train(
    cfg: Config, out: str | Path, resume: bool = False, progress: bool = True, overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fine-tune under SCU control (`scu train`); returns metadata.json's content.

    `out` must be new or empty unless `resume` (continue its checkpoint) or `overwrite` (replace what is there).
    `callbacks` (scu.driver.Callback) see every recorded step and the end of training.
    """
    if cfg.scu.enabled and cfg.scu.prior_sigma == "fit":  # a plain fit first, into <out>/plain_fit
        plain = lambda c, o, r, w: train(c, o, r, progress, w)  # noqa: E731  (the callbacks watch the SCU run)
        cfg, resume = resolve_fit_prior(cfg, Path(out), resume, overwrite, plain)
    run = setup(cfg, Path(out), resume, overwrite)
    backend = Backend(
        "scu train", train_step, lambda r: block_bpt(r.model, r.data.val_blocks, r.cfg.training.batch_size),
        save_checkpoint, write_outputs,
        lambda r, average, weight: update_average(r.accelerator.unwrap_model(r.model), average, weight),
        lambda r, average: load_average(r.accelerator.unwrap_model(r.model), average),
        is_main=run.accelerator.is_main_process,
    )
    trackers = [ReportTo(run.accelerator, run.cfg, run.state.tokens_seen)] if cfg.training.report_to else []
    try:
        return run.session.metadata(drive(run, backend, progress, [*callbacks, *trackers]))
    finally:
        if run.lock is not None:
            run.lock.release()
