"""SCU in Hugging Face trainers and in any PyTorch loop, through the same control session as `scu train`.

`SCU` is the small API for your own loop (three lines):

    scu = SCU(model, tokens_per_epoch, {"target_s": 0.05}, optimizer=optimizer)
    loss = loss + scu.penalty()                    # in the first micro-batch of each optimizer step
    log(scu.step(ce_sum=ce_sum_nats, tokens=n))    # after optimizer.step(): this rank's summed CE and loss tokens

Given torch's Adam/AdamW as `optimizer`, the default `law: auto` runs as in `scu train` (the balance law with the
decoupled penalty step, in a hook SCU registers on `optimizer.step()`); without it, auto runs `pi`.

`step` takes keywords only, and refuses a first step whose CE is below any base model's
(a mean loss handed over as the sum), so DataBPT and S are never silently wrong.

`SCUTrainer` / `SCUSFTTrainer` do the same inside `transformers.Trainer` / `trl.SFTTrainer`:
the penalty is added in `compute_loss` with the weight that survives the trainer's own
gradient-accumulation scaling (under the default `law: auto`, with torch's AdamW in one process or DDP, the
penalty instead takes its own decoupled step before the optimizer's and the gradient balance is read, as in
`scu train`; elsewhere auto runs `pi`); `SCUCallback` (a TrainerCallback) applies the session's LR and
clipping factors before each optimizer step and hands the finished step to the session after it
(PI, S-SCU, T-SCU pacing, λ-equilibrium and auto-stop); the numbers go through `Trainer.log` under
`scu/` (so `report_to` sees them); metrics.jsonl is written as the run goes, and every `save_model`
(final save and each checkpoint) writes metadata.json, the S-SCU/T-SCU files and the session state
that `resume_from_checkpoint` reads back: the same record as `scu train` (scu.report.schema).

Across processes (DDP, FSDP2) each rank adds the full penalty; DDP's and FSDP2's gradient
averaging then leaves exactly lambda * dpenalty. Per step, one all-reduce sums the CE nats,
token counts and sharded penalty parts, so lambda is computed from identical inputs on every rank.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from scu import ScuError
from scu.config.schema import Config, DataSection, LoraSection, ModelSection, ScuSection, TrainingSection, build_config
from scu.core.bits import LN2
from scu.report.records import atomic_path, atomic_write_json
from scu.report.schema import CONTROL_KEYS
from scu.session import ControlSession, RunFacts, StepResult
from scu.torch.average import load_average, update_average
from scu.torch.distributed import all_reduce_sum_, check_layout, rank, world_size
from scu.torch.loop import adam_second_moments, decoupled_penalty_step, gradient_balance
from scu.torch.regularizer import LoraPenalty
from scu.trackers import scu_logs

STATE_FILE = "scu_state.json"
INIT_FILE = "scu_init.safetensors"
# Below this many nats per loss token, a first step's CE cannot be a summed CE: a base model is never that sure of
# the next token over a whole batch (perplexity 1.05), while a mean loss over N tokens lands at loss / N.
MIN_FIRST_STEP_NATS_PER_TOKEN = 0.05


def scu_section(config: ScuSection | dict[str, Any] | None) -> ScuSection:
    """The `scu:` section of the training config, from a dict of its keys (validated, one-line errors)."""
    if isinstance(config, ScuSection):
        return config
    return build_config({"scu": dict(config or {})}).scu


def reads_moments(model: nn.Module, optimizer: Any) -> bool:
    """Whether the gradient balance can be read for this model and optimizer: torch's Adam/AdamW (whose second
    moments it needs) over whole parameters on every rank (one process or DDP; not FSDP2's shards)."""
    from torch.distributed.tensor import DTensor

    adam = isinstance(getattr(optimizer, "optimizer", optimizer), (torch.optim.Adam, torch.optim.AdamW))
    return adam and not any(isinstance(p, DTensor) for p in model.parameters())


class SCU:
    """λ·ParamBPT penalty for one PEFT model; each optimizer step goes to a ControlSession (the law's λ and the rest)."""

    def __init__(self, model: nn.Module, tokens_per_epoch: int, config: ScuSection | dict[str, Any] | None = None,
                 output_dir: str | Path | None = None, session: ControlSession | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        """`config`: the scu: section's keys; `output_dir`: where metrics.jsonl goes (rank 0; default: nowhere);
        `session`: a session built elsewhere (SCUTrainer's, with the other sections), instead of both;
        `optimizer`: the optimizer that steps `model`. With torch's Adam/AdamW, `law: auto` runs the balance law and
        the decoupled penalty step, through a hook on its step(); without it, auto runs `pi`."""
        check_layout(model)
        if session is None:
            section = scu_section(config)
            if section.enabled:
                facts = RunFacts("SCU loop API", tokens_per_epoch_source="given", world_size=world_size(),
                                 measures_balance=optimizer is not None and reads_moments(model, optimizer))
                session = ControlSession(Config(scu=section), tokens_per_epoch, output_dir, facts, is_main=rank() == 0)
        if session is None or not session.cfg.scu.enabled:
            raise ScuError("scu.enabled is false; train with the plain Trainer/loop instead of SCU's")
        self.session = session
        self.config = session.cfg.scu
        self.tokens_per_epoch = tokens_per_epoch
        self.regularizer = LoraPenalty(model, self.config.prior, self.config.prior_sigma, tokens_per_epoch)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # `law: balance` / `penalty_step: decoupled`, per step: the penalty's own gradient at lambda 1 (nats), AdamW's
        # v_hat from before the step, the balance [pull, ||g_p||^2, sensitivity / lr] and the LR it was read at
        self.penalty_grad: list[Tensor | None] | None = None
        self._moments: list[Tensor | None] | None = None
        self._balance: Tensor | None = None
        self._balance_lr = 0.0
        self._parts: tuple[Tensor, Tensor] | None = None
        self._began = time.perf_counter()
        if optimizer is not None and self.reads_balance:
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_optimizer_step(opt))

    @property
    def lam(self) -> float:
        return self.session.lam

    @property
    def last(self) -> dict[str, Any]:
        """The control columns of the last recorded step (the same on every rank)."""
        last = self.session.state.last
        return {k: last[k] for k in CONTROL_KEYS} if last else {}

    @property
    def reads_balance(self) -> bool:
        """The session's law reads the gradient balance, or the penalty moves the weights outside the loss."""
        return self.config.law == "balance" or self.config.penalty_step == "decoupled"

    def penalty(self, weight: float = 1.0) -> Tensor:
        """lambda * ParamBPT * ln 2 (nats) times `weight`, differentiable. Once per optimizer step.
        With `reads_balance`, the penalty's own gradient is kept in `penalty_grad` as well; with the decoupled
        penalty step the penalty moves the weights itself (before_optimizer_step), so this is 0."""
        replicated, local = self.regularizer.parts()
        self._parts = (replicated.detach(), local.detach())
        bpt = self.regularizer.bpt(replicated + local)
        if self.reads_balance:
            decoupled = self.config.penalty_step == "decoupled"
            self.penalty_grad = list(torch.autograd.grad(bpt * LN2, self.params, retain_graph=not decoupled,
                                                         allow_unused=True))
            if decoupled:
                return bpt.detach() * 0.0
        return (self.lam * LN2 * weight) * bpt

    def read_balance(self, optimizer: torch.optim.Optimizer) -> None:
        """`law: balance`: this step's gradient balance (scu.torch.loop.gradient_balance) from the gradients as they
        are now (all-reduced) and the optimizer's v_hat from before its step; once per step. SCUTrainer calls it
        before clipping, as `scu train` reads it; the loop API, in its hook on optimizer.step()."""
        if self.penalty_grad is None or self._balance is not None:
            return
        self._moments = adam_second_moments(optimizer, self.params)
        self._balance = gradient_balance(self.model, optimizer, self.penalty_grad, self.lam,
                                         self.config.penalty_step == "decoupled", self._moments,
                                         self.config.step_bound(self.session.state.settled))
        self._balance_lr = optimizer.param_groups[0]["lr"]

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Right before optimizer.step(): the balance, if not read yet, and with `penalty_step: decoupled` the
        penalty's own step at the optimizer's LR (scu.torch.loop.decoupled_penalty_step), as in `scu train`."""
        self.read_balance(optimizer)
        if self.config.penalty_step == "decoupled" and self.penalty_grad is not None:
            decoupled_penalty_step(self.model, optimizer, self.penalty_grad, self._moments, self.lam,
                                   optimizer.param_groups[0]["lr"], self.config.step_bound(self.session.state.settled))

    def step(self, *positional: Any, ce_sum: Tensor | float | None = None, tokens: Tensor | int | None = None,
             grad_norm: Tensor | float | None = None, lr: float = 0.0, seconds: float | None = None,
             clip: Tensor | float = 1.0) -> dict[str, Any]:
        """Close the optimizer step: one all-reduce of (CE nats, tokens, sharded penalty part), one host sync,
        then the control session. Returns the step's control columns (data_bpt, param_bpt, s, lambda for the
        next step, ...; scu.report.schema.CONTROL_KEYS).

        `ce_sum`: this rank's cross-entropy summed (not averaged) over the step's loss tokens, in nats;
        `tokens`: how many loss tokens that sum covers. Keywords only, so that a mean loss is never
        passed by position where the sum belongs. Optional: the step's gradient norm (S-SCU reads it), its LR,
        and its duration (default: since this step's penalty()); `clip`: the factor gradient clipping applied to a
        penalty in the loss (`law: balance` with `penalty_step: loss`; SCUTrainer knows it, the loop API takes 1).
        """
        if positional or ce_sum is None or tokens is None:
            raise ScuError("SCU.step takes keywords only: scu.step(ce_sum=<CE summed over the step's loss tokens, nats>, "
                           "tokens=<number of loss tokens>), e.g. ce_sum=loss.detach() * n_tokens for a mean loss")
        if self._parts is None:
            raise ScuError("SCU.step() was called without SCU.penalty() in this optimizer step; "
                           "add scu.penalty() to the loss of the step's first micro-batch")
        replicated, local = self._parts
        self._parts = None
        as64 = lambda x: torch.as_tensor(x, dtype=torch.float64, device=replicated.device).reshape(())  # noqa: E731
        norm = math.nan if grad_norm is None else grad_norm
        measured: list[Tensor] = []
        if self._balance is not None:  # the sensitivity per step: times the LR it was read at and the clipping
            factor = self._balance.new_ones(3)
            factor[2] = self._balance_lr * clip
            measured = list((self._balance * factor).to(device=replicated.device, dtype=torch.float64).unbind())
        self.penalty_grad, self._moments, self._balance = None, None, None
        summed = torch.stack([as64(ce_sum), as64(tokens), as64(local), as64(replicated), as64(norm), *measured])
        all_reduce_sum_(summed[:3])  # the rest is already global (the balance is read from all-reduced gradients)
        nats, n, local_sum, rep, norm, *pull_sq_sens = summed.tolist()  # the same on every rank: every rank raises alike
        check_step_loss(nats, n, first=self.session.state.step == 0)
        param_bpt = float(self.regularizer.bpt(rep + local_sum))
        dt = time.perf_counter() - self._began if seconds is None else seconds
        result = StepResult(nats, param_bpt, None if grad_norm is None else norm, int(n), *pull_sq_sens)
        row = self.session.step(result, self.lam, lr, dt)
        if row is not None:
            self.session.record(row)
        self._began = time.perf_counter()
        return self.last

    def save(self, directory: str | Path, status: str = "running") -> None:
        """Write metadata.json (and the S-SCU/T-SCU files), the session state and the penalty's initial values
        (call on rank 0 only)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        atomic_write_json(directory / STATE_FILE, self.session.state_dict())
        init = self.regularizer.init_state()
        if init:
            with atomic_path(directory / INIT_FILE) as tmp:
                save_file(init, str(tmp))
        self.session.write_records(status, directory)

    def load(self, directory: str | Path) -> None:
        """Restore what `save` wrote (every rank), so lambda continues its trajectory."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / STATE_FILE).exists():
            raise ScuError(f"{directory} has no {STATE_FILE} (saved without SCU); resume from a checkpoint of an SCU run")
        saved = json.loads((directory / STATE_FILE).read_text())
        if "state" not in saved:
            raise ScuError(f"{directory / STATE_FILE} was written by an older scu (no session state); "
                           "resume it with that version, or start the run again")
        self.session.load_state_dict(saved)
        init = directory / INIT_FILE
        self.regularizer.load_init_state(load_file(init) if init.exists() else {})


def check_step_loss(ce_sum: float, tokens: float, first: bool) -> None:
    """Refuse numbers that cannot be an optimizer step's summed CE and loss-token count (one-line errors).

    On the first step a CE far below any base model's is a mean loss passed as the sum: it would give
    DataBPT near 0 and S near 1, and the controller would chase a number that means nothing. Later
    steps are not judged by size, since a long run may legitimately drive its training loss that low.
    """
    if tokens <= 0:
        raise ScuError("an optimizer step had no tokens in the loss (all labels -100); check the data collator")
    if not math.isfinite(ce_sum):
        raise ScuError(f"SCU.step got ce_sum={ce_sum}: the loss diverged; lower the learning rate or train in fp32")
    if ce_sum < 0:
        raise ScuError(f"SCU.step got ce_sum={ce_sum:g}, not a cross-entropy (>= 0 nats); pass the summed CE of the step")
    if first and ce_sum / tokens < MIN_FIRST_STEP_NATS_PER_TOKEN:
        raise ScuError(
            f"SCU.step got ce_sum={ce_sum:.4g} nats over {tokens:.0f} tokens ({ce_sum / tokens:.2g} nats/token), below any "
            f"base model's first-step loss: that is a mean loss; pass ce_sum=loss * n_tokens (the CE summed over the tokens)"
        )


def count_label_tokens(dataset: Any) -> int:
    """Tokens that enter the loss in one epoch: labels != -100 after the shift, else all but the first of each row.
    Counted in Arrow, so a large dataset is never turned into Python lists."""
    import pyarrow.compute as pc
    from datasets import Dataset

    columns = dataset.column_names if isinstance(dataset, Dataset) else []
    name = next((c for c in ("labels", "input_ids") if c in columns), None)
    if name is None:
        raise ScuError("cannot count the training tokens per epoch (not a datasets.Dataset with input_ids or labels); "
                       "pass tokens_per_epoch=")
    shifted = pc.list_flatten(pc.list_slice(dataset.with_format("arrow")[name], 1))
    return int(pc.sum(pc.not_equal(shifted, -100)).as_py() or 0)


def _predicted_tokens(inputs: dict[str, Any], shifts: bool) -> Tensor:
    """This micro-batch's loss tokens, counted the way Trainer counts num_items_in_batch."""
    if "shift_labels" in inputs:
        labels = inputs["shift_labels"]
    elif "labels" in inputs:
        labels = inputs["labels"][..., 1:] if shifts else inputs["labels"]
    else:
        raise ScuError("SCU needs `labels` in the training batches to measure DataBPT; use a collator that adds them")
    return labels.ne(-100).sum()


def trainer_config(trainer: Trainer, sections: dict[str, Any]) -> Config:
    """The run's Config as `scu train` would record it: the control sections as given (validated), and the model,
    LoRA, training and data sections read from the Trainer, its arguments and the PEFT config."""
    cfg = build_config({name: dict(values or {}) for name, values in sections.items()})
    if cfg.tscu.enabled and cfg.tscu.actuator == "grad_accum":
        raise ScuError("tscu.actuator grad_accum needs `scu train` (the Trainer's accumulation is fixed); use sleep or lr")
    args, model = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    peft = getattr(model, "peft_config", {}).get("default")
    targets = getattr(peft, "target_modules", None) or []
    lora = LoraSection.model_construct(
        rank=getattr(peft, "r", None), alpha=getattr(peft, "lora_alpha", None), dropout=getattr(peft, "lora_dropout", 0.0),
        targets=[targets] if isinstance(targets, str) else sorted(targets), use_rslora=getattr(peft, "use_rslora", False),
        use_dora=getattr(peft, "use_dora", False), init=getattr(peft, "init_lora_weights", True),
    )
    base = getattr(peft, "base_model_name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    training = TrainingSection.model_construct(
        learning_rate=args.learning_rate, batch_size=args.per_device_train_batch_size, block_size=None,
        gradient_accumulation=args.gradient_accumulation_steps, steps=args.max_steps, lr_schedule=schedule,
        warmup_steps=args.get_warmup_steps(max(args.max_steps, 0)), weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, checkpoint_every=args.save_steps, eval_every=0,
    )
    data = DataSection.model_construct(train_data=f"{type(trainer).__name__} train_dataset", val_fraction=0.0)
    sscu = dataclasses.replace(cfg.sscu, max_batch_factor=1)  # the Trainer's accumulation is fixed: no batch actions
    return Config.model_construct(**{**dict(cfg), "model": ModelSection(base_model=str(base)), "lora": lora,
                                     "training": training, "data": data, "sscu": sscu})


class SCUCallback(TrainerCallback):
    """The Trainer's loop into SCU's control session: the session's LR and clipping factors before each optimizer
    step, the finished step into the session after it, and the session's stop decision back to the Trainer."""

    def __init__(self, trainer: "SCUTrainerMixin") -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        session = self.trainer.scu.session
        session.cfg.training.steps = state.max_steps
        session.start()

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._scu_step_begin()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.scu.before_optimizer_step(self.trainer.optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer._scu_step_end():
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.scu.session.close()


class SCUTrainerMixin:
    """Adds SCU to a `transformers.Trainer` subclass. Extra keyword arguments: `scu` (the scu: config keys, or a
    ScuSection), `sscu`, `tscu`, `equilibrium` (those sections' keys: S-SCU, T-SCU, λ-equilibrium and auto-stop)
    and `tokens_per_epoch` (default: counted from train_dataset)."""

    def __init__(self, *args: Any, scu: ScuSection | dict[str, Any] | None = None, sscu: dict[str, Any] | None = None,
                 tscu: dict[str, Any] | None = None, equilibrium: dict[str, Any] | None = None,
                 tokens_per_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        given = tokens_per_epoch is not None
        if not given:
            tokens_per_epoch = count_label_tokens(self.train_dataset)
        section = scu_section(scu).model_dump()
        cfg = trainer_config(self, {"scu": section, "sscu": sscu, "tscu": tscu, "equilibrium": equilibrium})
        facts = RunFacts(
            type(self).__name__, base_model=cfg.model.base_model,
            tokens_per_epoch_source="given" if given else "loss tokens of train_dataset",
            train_docs=len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None,
            val_docs=len(self.eval_dataset) if hasattr(self.eval_dataset, "__len__") else None,
            world_size=self.args.world_size, measures_balance=self._scu_can_measure_balance(),
        )
        session = ControlSession(cfg, tokens_per_epoch, self.args.output_dir, facts, is_main=self.args.process_index == 0)
        self.scu = SCU(self.model, tokens_per_epoch, session=session)
        self._scu_nats: Tensor | float = 0.0
        self._scu_tokens: Tensor | int = 0
        self._scu_grad_norm: Tensor | float | None = None
        self._scu_penalized = False  # the penalty of the current optimizer step is in the loss
        self._scu_layout_checked = False
        self._scu_max_grad_norm = self.args.max_grad_norm
        self._scu_lr, self._scu_began = 0.0, 0.0
        self._scu_window: list[dict[str, Any]] = []  # metrics rows since the last log
        self._scu_logged_tokens = 0
        self._scu_average: dict[str, Tensor] | None = None  # what auto-stop leaves in the model (equilibrium.average)
        self.add_callback(SCUCallback(self))

    def _scu_can_measure_balance(self) -> bool:
        """`law: auto` runs the balance law (and its decoupled penalty step) where this trainer can read whole
        gradients and AdamW's second moments on every rank: one process or DDP, with torch's Adam or AdamW."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return False
        if self.optimizer is not None:  # given by the user
            return reads_moments(self.model, self.optimizer)
        return getattr(self.args.optim, "value", self.args.optim) in ("adamw_torch", "adamw_torch_fused")

    def _scu_loss_is_scaled(self, num_items_in_batch: Any) -> bool:
        """The rule Trainer.training_step uses to decide whether it divides the loss by the accumulation steps."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not self._scu_layout_checked:  # the wrapped model (FSDP1 / ZeRO-3 wrap only in train())
            check_layout(model)
            self._scu_layout_checked = True
        tokens = _predicted_tokens(inputs, getattr(self, "_loss_shifts_labels", True))
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        scaled = self._scu_loss_is_scaled(num_items_in_batch)
        if scaled and num_items_in_batch is not None:
            # loss = CE_sum / num_items_in_batch, times the process count when the count spans all ranks
            spread = self.accelerator.num_processes // self.get_tp_size() if self.args.average_tokens_across_devices else 1
            nats = loss.detach() * (num_items_in_batch / spread)
        else:  # a per-micro-batch mean
            nats = loss.detach() * tokens
        self._scu_nats = self._scu_nats + nats.float()
        self._scu_tokens = self._scu_tokens + tokens
        if not self._scu_penalized:
            # Trainer divides an unscaled loss by the accumulation steps; the penalty must reach the step whole
            loss = loss + self.scu.penalty(1.0 if scaled else float(self.current_gradient_accumulation_steps))
            self._scu_penalized = True
        return (loss, *result[1:]) if return_outputs else loss

    def _clip_grad_norm(self, model):
        self.scu.read_balance(self.optimizer)  # from the gradients before clipping, as `scu train` reads it
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        """The step's gradient norm before clipping, as the Trainer measures it, kept for S-SCU."""
        self.scu.read_balance(self.optimizer)
        self._scu_grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        return self._scu_grad_norm

    def _scu_step_begin(self) -> None:
        """The session's factors for this step: LR (on the Trainer's schedule) and gradient clipping."""
        st = self.scu.session.state
        scheduled = self.lr_scheduler.get_last_lr()
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = lr * st.lr_factor
        self._scu_lr = scheduled[0] * st.lr_factor
        self.args.max_grad_norm = self._scu_max_grad_norm * st.grad_clip_factor
        self._scu_began = time.perf_counter()

    def _scu_step_end(self) -> bool:
        """The step into the session; True when the session stops the run (auto-stop, a T-SCU stop)."""
        seconds = time.perf_counter() - self._scu_began
        max_norm = self.args.max_grad_norm  # `law: balance` with the penalty in the loss: clipped with the data's gradient
        clipped = (self.scu.reads_balance and self.scu.config.penalty_step != "decoupled" and max_norm > 0
                   and self._scu_grad_norm is not None)
        clip = torch.as_tensor(max_norm / (self._scu_grad_norm + 1e-6)).clamp(max=1.0) if clipped else 1.0
        self.scu.step(ce_sum=self._scu_nats, tokens=self._scu_tokens, grad_norm=self._scu_grad_norm, lr=self._scu_lr,
                      seconds=seconds, clip=clip)
        session = self.scu.session
        recorded = session.state.last.get("step") == self.state.global_step  # False for a skipped NaN step
        if recorded:
            self._scu_window.append(session.state.last)
        self._scu_nats, self._scu_tokens, self._scu_grad_norm, self._scu_penalized = 0.0, 0, None, False
        detector = session.cfg.equilibrium
        weight = detector.average_weight(session.state.judged_steps) if detector.averaging else None
        if weight is not None and recorded:
            model = self.accelerator.unwrap_model(self.model)
            self._scu_average = update_average(model, self._scu_average, weight)
            if session.stop_status == "stopped at equilibrium":
                load_average(model, self._scu_average)  # the weights the Trainer saves from here on
                session.note_averaged(detector.average_span(session.state.judged_steps))
        return session.stop_status is not None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._scu_window and "loss" in logs:  # a training log: the scu/ keys of the steps since the last one
            logs.update(scu_logs(self._scu_window, self._scu_logged_tokens))
            self._scu_logged_tokens = self._scu_window[-1]["tokens"]
            self._scu_window.clear()
        super().log(logs, *args, **kwargs)

    def _scu_status(self) -> str:
        if self.scu.session.stop_status is not None:
            return self.scu.session.stop_status
        return "completed" if self.state.max_steps and self.state.global_step >= self.state.max_steps else "running"

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            directory = Path(output_dir or self.args.output_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.scu.save(directory, self._scu_status())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.scu.load(resume_from_checkpoint)


class SCUTrainer(SCUTrainerMixin, Trainer):
    """`transformers.Trainer` with the SCU penalty and a controlled lambda."""


def __getattr__(name: str) -> Any:
    if name == "SCUSFTTrainer":  # built on first use: importing trl is slow and optional for SCUTrainer users
        from trl import SFTTrainer

        cls = type("SCUSFTTrainer", (SCUTrainerMixin, SFTTrainer),
                   {"__module__": __name__, "__doc__": "`trl.SFTTrainer` with the SCU penalty and a controlled lambda."})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
