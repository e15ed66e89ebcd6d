"""SCU in Hugging Face trainers and in any PyTorch loop.

`SCU` is the small API for your own loop (three lines):

    scu = SCU(model, tokens_per_epoch, {"target_s": 0.05})
    loss = loss + scu.penalty()                    # in the first micro-batch of each optimizer step
    log(scu.step(ce_sum=ce_sum_nats, tokens=n))    # after optimizer.step(): this rank's summed CE and loss tokens

`step` takes keywords only, and refuses a first step whose CE is below any base model's
(a mean loss handed over as the sum), so DataBPT and S are never silently wrong.

`SCUTrainer` / `SCUSFTTrainer` do the same inside `transformers.Trainer` / `trl.SFTTrainer`:
the penalty is added in `compute_loss` with the weight that survives the trainer's own
gradient-accumulation scaling, lambda moves once per optimizer step (`on_step_end`), the
numbers go through `Trainer.log` (so `report_to` sees them), and every `save_model` (final
save and each checkpoint) writes metadata.json plus the controller state that
`resume_from_checkpoint` reads back.

Across processes (DDP, FSDP2) each rank adds the full penalty; DDP's and FSDP2's gradient
averaging then leaves exactly lambda * dpenalty. Per step, one all-reduce sums the CE nats,
token counts and sharded penalty parts, so lambda is computed from identical inputs on every rank.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from scu import ScuError
from scu.config.schema import Config, ScuSection, build_config
from scu.core.bits import LN2, info_ratio
from scu.core.pi import PIController
from scu.driver import pi_config
from scu.report.records import atomic_path, atomic_write_json, package_versions
from scu.torch.distributed import all_reduce_sum_, check_layout, world_size
from scu.torch.regularizer import LoraPenalty

STATE_FILE = "scu_state.json"
INIT_FILE = "scu_init.safetensors"
LOGGED = ("data_bpt", "param_bpt", "s")
# Below this many nats per loss token, a first step's CE cannot be a summed CE: a base model is never that sure of
# the next token over a whole batch (perplexity 1.05), while a mean loss over N tokens lands at loss / N.
MIN_FIRST_STEP_NATS_PER_TOKEN = 0.05


def scu_section(config: ScuSection | dict[str, Any] | None) -> ScuSection:
    """The `scu:` section of the training config, from a dict of its keys (validated, one-line errors)."""
    if isinstance(config, ScuSection):
        return config
    return build_config({"scu": dict(config or {})}).scu


class SCU:
    """PI-controlled lambda * ParamBPT penalty for one PEFT model, stepped once per optimizer step."""

    def __init__(self, model: nn.Module, tokens_per_epoch: int, config: ScuSection | dict[str, Any] | None = None) -> None:
        check_layout(model)
        self.config = scu_section(config)
        if not self.config.enabled:
            raise ScuError("scu.enabled is false; train with the plain Trainer/loop instead of SCU's")
        self.tokens_per_epoch = tokens_per_epoch
        self.regularizer = LoraPenalty(model, self.config.prior, self.config.prior_sigma, tokens_per_epoch)
        self.controller = PIController(pi_config(Config(scu=self.config)))
        self._parts: tuple[Tensor, Tensor] | None = None
        self.lambda_range: list[float] = [self.controller.lam, self.controller.lam]
        self.last: dict[str, float] = {}

    @property
    def lam(self) -> float:
        return self.controller.lam

    def penalty(self, weight: float = 1.0) -> Tensor:
        """lambda * ParamBPT * ln 2 (nats) times `weight`, differentiable. Once per optimizer step."""
        replicated, local = self.regularizer.parts()
        self._parts = (replicated.detach(), local.detach())
        return (self.lam * LN2 * weight) * self.regularizer.bpt(replicated + local)

    def step(self, *positional: Any, ce_sum: Tensor | float | None = None, tokens: Tensor | int | None = None) -> dict[str, float]:
        """Close the optimizer step: one all-reduce of (CE nats, tokens, sharded penalty part), one host sync,
        then the PI update. Returns this step's data_bpt, param_bpt, s and the lambda for the next step.

        `ce_sum`: this rank's cross-entropy summed (not averaged) over the step's loss tokens, in nats;
        `tokens`: how many loss tokens that sum covers. Keywords only, so that a mean loss is never
        passed by position where the sum belongs.
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
        summed = torch.stack([as64(ce_sum), as64(tokens), as64(local), as64(replicated)])
        all_reduce_sum_(summed[:3])  # the replicated part is already global: never summed over ranks
        nats, n, local_sum, rep = summed.tolist()  # the same numbers on every rank, so every rank raises alike
        check_step_loss(nats, n, first=self.controller.step_count == 0)
        data_bpt = nats / n / LN2
        param_bpt = float(self.regularizer.bpt(rep + local_sum))
        s = info_ratio(data_bpt, param_bpt)
        lam_used = self.lam
        lam = self.controller.update(s)
        self.lambda_range = [min(self.lambda_range[0], lam), max(self.lambda_range[1], lam)]
        self.last = {"data_bpt": data_bpt, "param_bpt": param_bpt, "s": s, "lambda": lam, "lambda_used": lam_used,
                     "s_hat": self.controller.s_hat, "tokens": int(n)}
        return dict(self.last)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "lambda_range": self.lambda_range, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.lambda_range = list(state["lambda_range"])
        self.last = dict(state["last"])

    def metadata(self, **run: Any) -> dict[str, Any]:
        """metadata.json: the run's SCU settings and where the controller stands; `run` adds caller facts."""
        return {
            **run,
            "target_s": self.config.target_s,
            "final_s": self.last.get("s"),
            "final_s_hat": self.controller.s_hat,
            "final_lambda": self.lam,
            "lambda_range": self.lambda_range,
            "final_data_bpt": self.last.get("data_bpt"),
            "final_param_bpt": self.last.get("param_bpt"),
            "prior": {"type": self.config.prior, "sigma": self.config.prior_sigma},
            "tokens_per_epoch": self.tokens_per_epoch,
            "controller_steps": self.controller.step_count,
            "world_size": world_size(),
            "scu": self.config.model_dump(mode="json"),
            "controllers": {"pi": self.controller.state_dict()},
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
        }

    def save(self, directory: str | Path, **run: Any) -> None:
        """Write metadata.json, the controller state and the penalty's initial values (call on rank 0 only)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        atomic_write_json(directory / STATE_FILE, self.state_dict())
        init = self.regularizer.init_state()
        if init:
            with atomic_path(directory / INIT_FILE) as tmp:
                save_file(init, str(tmp))
        atomic_write_json(directory / "metadata.json", self.metadata(**run))

    def load(self, directory: str | Path) -> None:
        """Restore what `save` wrote (every rank), so lambda continues its trajectory."""
        import json

        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / STATE_FILE).exists():
            raise ScuError(f"{directory} has no {STATE_FILE} (saved without SCU); resume from a checkpoint of an SCU run")
        self.load_state_dict(json.loads((directory / STATE_FILE).read_text()))
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


class _StepEnd(TrainerCallback):
    def __init__(self, trainer: "SCUTrainerMixin") -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._scu_step_end()


class SCUTrainerMixin:
    """Adds SCU to a `transformers.Trainer` subclass. Extra keyword arguments:
    `scu` (the scu: config keys, or a ScuSection) and `tokens_per_epoch` (default: counted from train_dataset)."""

    def __init__(self, *args: Any, scu: ScuSection | dict[str, Any] | None = None, tokens_per_epoch: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tokens_per_epoch is None:
            tokens_per_epoch = count_label_tokens(self.train_dataset)
        self.scu = SCU(self.model, tokens_per_epoch, scu)
        self._scu_nats: Tensor | float = 0.0
        self._scu_tokens: Tensor | int = 0
        self._scu_penalized = False  # the penalty of the current optimizer step is in the loss
        self._scu_layout_checked = False
        self._scu_window: list[dict[str, float]] = []  # steps since the last log
        self.add_callback(_StepEnd(self))

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

    def _scu_step_end(self) -> None:
        self._scu_window.append(self.scu.step(ce_sum=self._scu_nats, tokens=self._scu_tokens))
        self._scu_nats, self._scu_tokens, self._scu_penalized = 0.0, 0, False

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._scu_window and "loss" in logs:  # a training log: means since the last one, and the current lambda
            window = self._scu_window
            logs.update({k: sum(r[k] for r in window) / len(window) for k in LOGGED})
            logs["lambda"] = window[-1]["lambda"]
            window.clear()
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            directory = Path(output_dir or self.args.output_dir)
            directory.mkdir(parents=True, exist_ok=True)
            status = "completed" if self.state.max_steps and self.state.global_step >= self.state.max_steps else "running"
            base = getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "_name_or_path", None)
            self.scu.save(directory, status=status, base_model=base, steps=self.state.global_step,
                          steps_planned=self.state.max_steps)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.scu.load(resume_from_checkpoint)


class SCUTrainer(SCUTrainerMixin, Trainer):
    """`transformers.Trainer` with the SCU penalty and PI-controlled lambda."""


def __getattr__(name: str) -> Any:
    if name == "SCUSFTTrainer":  # built on first use: importing trl is slow and optional for SCUTrainer users
        from trl import SFTTrainer

        cls = type("SCUSFTTrainer", (SCUTrainerMixin, SFTTrainer),
                   {"__module__": __name__, "__doc__": "`trl.SFTTrainer` with the SCU penalty and PI-controlled lambda."})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
