"""Builders shared by the Trainer tests and the torchrun workers: a tiny PEFT Llama, a token dataset,
Trainer arguments, a gradient-capturing callback, and the analytic reference for one optimizer step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, TrainingArguments

VOCAB, SIGMA = 64, 0.01


def tiny_peft(seed: int = 0, **lora: object):
    """A random 2-layer Llama with LoRA on q/v/down (same seed, same weights)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4)
    base = LlamaForCausalLM(cfg)
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], **lora}
    return get_peft_model(base, LoraConfig(**kwargs))


def token_dataset(rows: int = 32, length: int = 16, seed: int = 1, vocab: int = VOCAB) -> Dataset:
    """Equal-length rows whose labels hide a different number of leading tokens per row (-100),
    so micro-batches carry different token counts and token weighting matters."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    labels = ids.clone()
    for i in range(rows):
        labels[i, : int(torch.randint(0, length // 2, (), generator=g))] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def trainer_args(out: Path, **kw: object) -> TrainingArguments:
    """Deterministic, quiet CPU arguments: sequential batches, a log every step, no clipping, no saves."""
    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True,
                train_sampling_strategy="sequential", max_grad_norm=0.0, lr_scheduler_type="constant",
                seed=0)
    return TrainingArguments(**{**base, **kw})


class Capture(TrainerCallback):
    """Trainable parameters, their (all-reduced) gradients and lambda right before the optimizer step."""

    def __init__(self, steps: set[int], scu=None) -> None:
        self.steps, self.scu = steps, scu
        self.grads: dict[int, dict[str, torch.Tensor]] = {}
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.lam: dict[int, float] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        if step in self.steps:
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self.grads[step] = {n: p.grad.detach().clone() for n, p in named}
            self.params[step] = {n: p.detach().clone() for n, p in named}
            self.lam[step] = self.scu.lam


def lora_modules(model):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def load_trainable(model, params: dict[str, torch.Tensor]) -> None:
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value)


def reference_gradients(model, params, rows: Dataset, lam: float, tokens_per_epoch: int, micro_batches: int = 1,
                        token_weighted: bool = True) -> tuple[dict[str, torch.Tensor], float]:
    """Autograd CE gradient over the step's rows plus the analytic lambda * dpenalty (delta prior, B0 = 0).

    CE is the token-weighted mean over the whole step, or (token_weighted=False) the mean of the
    micro-batches' own means, which is what Trainer optimizes for a model that ignores num_items_in_batch.
    Returns the gradients by parameter name and the step's DataBPT (token-weighted, bits)."""
    load_trainable(model, params)
    model.zero_grad(set_to_none=True)
    ids, labels = torch.tensor(rows["input_ids"]), torch.tensor(rows["labels"])
    logits = model(input_ids=ids).logits.float()
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                                reduction="none").view(len(ids), -1)
    mask = labels[:, 1:] != -100
    if token_weighted:
        loss = per_token.sum() / mask.sum()
    else:
        loss = sum(c.sum() / m.sum() for c, m in zip(per_token.chunk(micro_batches), mask.chunk(micro_batches))) / micro_batches
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, module in lora_modules(model):
        A, B, s = module.lora_A["default"].weight, module.lora_B["default"].weight, module.scaling["default"]
        dW = (s * B @ A).detach()
        # d/dB [lam ln2 * s^2 ||B A||^2 / (2 sigma^2 ln2 N)] = lam s dW A^T / (sigma^2 N); likewise for A
        grads[f"{name}.lora_B.default.weight"] += lam * s * dW @ A.detach().t() / (SIGMA**2 * tokens_per_epoch)
        grads[f"{name}.lora_A.default.weight"] += lam * s * B.detach().t() @ dW / (SIGMA**2 * tokens_per_epoch)
    data_bpt = (per_token.sum() / mask.sum()).item() / 0.6931471805599453
    return grads, data_bpt


def penalty_share(model, params, lam: float, tokens_per_epoch: int) -> float:
    """max |lambda * dpenalty| over the LoRA gradients at `params`: the test must not pass with the penalty left out."""
    load_trainable(model, params)
    worst = 0.0
    for _, module in lora_modules(model):
        A, B, s = module.lora_A["default"].weight, module.lora_B["default"].weight, module.scaling["default"]
        dW = (s * B @ A).detach()
        worst = max(worst, (lam * s * dW @ A.detach().t() / (SIGMA**2 * tokens_per_epoch)).abs().max().item())
    return worst
