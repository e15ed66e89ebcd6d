"""Recovery after compression: distil the dense teacher into the factorized student.

The loss is the per-token KL(teacher || student) averaged over tokens, plus `nll_weight` times the
mean next-token NLL. Both terms are per-token means, so the NLL weight means what it says whatever
the batch or sequence length (a KL summed over tokens would be hundreds of times larger than the
NLL and silently switch the NLL term off).

With held-out calibration blocks, the mean per-token KL to the teacher on them is measured before
training and every `select_every` steps, and the student ends at the best of those states: recovery
then never moves the student further from the dense model on text it did not train on. (NLL on the
base's own pre-training text is no guide: measured on the WikiText base, `nll_weight` 1 lowered the
training NLL while the held-out KL and the evaluation perplexity rose.)

Two modes:
- kd:   train every decoder linear layer (the factors, and any layer left dense), with attention
        layers at `attn_lr_mult` times the learning rate of the MLP layers (10x in the published recipe);
- lora: freeze everything, train LoRA adapters on the factors (peft), then merge them in, which
        leaves the compressed shapes unchanged.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from scu import ScuError
from scu.vac.choices import MODES
from scu.vac.compress import all_linears, is_attention
from scu.vac.profile import decoder_layers, is_factorized


@dataclass
class RecoverSpec:
    mode: str = "kd"
    steps: int = 300
    lr: float = 3e-5
    attn_lr_mult: float = 10.0
    nll_weight: float = 0.0  # pure KD by default: the weighted NLL raised held-out KL on the WikiText base (docs/vac.md)
    batch_size: int = 8
    lora_rank: int = 8
    seed: int = 0
    select_every: int = 25  # held-out KL checks, when held-out blocks are given

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ScuError(f"unknown --recover {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.steps < 1 or self.lr <= 0 or self.nll_weight < 0 or self.attn_lr_mult <= 0 or self.select_every < 1:
            raise ScuError("recovery needs steps >= 1, lr > 0, attention lr multiplier > 0, nll weight >= 0 and select_every >= 1")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor, nll_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean per-token KL(teacher || student) + nll_weight * mean per-token NLL of the next token."""
    s = F.log_softmax(student_logits[:, :-1].float(), dim=-1)
    t = F.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1).mean()
    nll = F.nll_loss(s.reshape(-1, s.shape[-1]), input_ids[:, 1:].reshape(-1))
    kl_value, nll_value = torch.stack([kl.detach(), nll.detach()]).tolist()  # one host sync for both
    return kl + nll_weight * nll, {"kl": kl_value, "nll": nll_value}


TEACHER_CACHE_BYTES = 4 << 30  # the teacher's logits on the recovery blocks are kept when they fit in this
# Blocks per no-grad pass: KL takes several [blocks, T, vocab] float32 temporaries, 0.8 GB each at 16 blocks of
# 256 tokens on SmolLM2's 49k vocabulary; 4 blocks is half a default training batch.
NO_GRAD_BATCH = 4


class TeacherLogits:
    """The frozen teacher's logits on a fixed set of blocks [n, T], computed once when they fit in memory.

    Recovery revisits a few calibration blocks every step and the teacher never changes, so recomputing
    its forward pass was, by FLOP count, about a quarter of each step; above TEACHER_CACHE_BYTES they are
    computed per call instead.
    """

    def __init__(self, teacher: nn.Module, blocks: torch.Tensor, batch_size: int = NO_GRAD_BATCH):
        self.teacher, self.blocks = teacher.eval(), blocks
        self.cache: torch.Tensor | None = None
        first = self._forward(torch.arange(min(batch_size, len(blocks))))
        if first.numel() * first.element_size() * len(blocks) / len(first) <= TEACHER_CACHE_BYTES:
            rest = [self._forward(torch.arange(i, min(i + batch_size, len(blocks)))) for i in range(len(first), len(blocks), batch_size)]
            self.cache = torch.cat([first, *rest])

    @torch.no_grad()
    def _forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.teacher(input_ids=self.blocks[idx]).logits

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.cache[idx] if self.cache is not None else self._forward(idx)

    def __len__(self) -> int:
        return len(self.blocks)


@torch.no_grad()
def heldout_kl(student: nn.Module, teacher: TeacherLogits, batch_size: int = NO_GRAD_BATCH) -> float:
    """Mean per-token KL(teacher || student) over the teacher's blocks."""
    total = 0.0
    for i in range(0, len(teacher), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(teacher)))
        ids = teacher.blocks[idx]
        total += kd_loss(student(input_ids=ids).logits, teacher(idx), ids, 0.0)[1]["kl"] * len(ids)
    return total / len(teacher)


def kept_row(history: list[dict]) -> dict:
    """The history row of the state recovery left the student in: the selected one, else the last."""
    return next((row for row in history if row.get("selected")), history[-1])


def factor_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Trainable linear layers of the compressed decoder: both factors of each FactorizedLinear and any dense one."""
    out = {}
    for name, module in model.named_modules():
        if is_factorized(module):
            if module.int8:
                raise ScuError("recovery must run before int8 quantization")
            out[f"{name}.down"], out[f"{name}.up"] = module.down, module.up
    out.update(all_linears(model))
    return out


def _param_groups(named: dict[str, nn.Parameter], spec: RecoverSpec) -> list[dict]:
    attn = [p for n, p in named.items() if is_attention(n)]
    other = [p for n, p in named.items() if not is_attention(n)]
    return [
        {"params": attn, "lr": spec.lr * spec.attn_lr_mult, "base_lr": spec.lr * spec.attn_lr_mult},
        {"params": other, "lr": spec.lr, "base_lr": spec.lr},
    ]


def recover(
    student: nn.Module, teacher: nn.Module, blocks: torch.Tensor, spec: RecoverSpec,
    heldout: torch.Tensor | None = None, verbose: bool = False,
) -> tuple[nn.Module, list[dict]]:
    """Train the student toward the teacher on calibration `blocks` [n, T]; returns (student, loss history).

    With `heldout` blocks, history rows at step 0 and every `select_every` steps carry `heldout_kl`, and
    the student is left at the state with the lowest one (the row with `selected: True`).
    """
    spec.validate()
    if spec.mode == "none":
        return student, []
    decoder_layers(student)  # fails early on an unsupported architecture
    modules = factor_modules(student)
    for p in student.parameters():
        p.requires_grad_(False)
    if spec.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, lora_dropout=0.0, target_modules=list(modules))
        model = get_peft_model(student, lora)
        named = {n: p for n, p in model.named_parameters() if "lora_" in n}
        for p in named.values():
            p.requires_grad_(True)
    else:
        model = student
        named = {}
        for name, module in modules.items():
            for pname, p in module.named_parameters():
                p.requires_grad_(True)
                named[f"{name}.{pname}"] = p
    groups = _param_groups(named, spec)
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    train_teacher = TeacherLogits(teacher, blocks)
    heldout_teacher = TeacherLogits(teacher, heldout) if heldout is not None else None
    model.train()
    gen = torch.Generator().manual_seed(spec.seed)
    warmup = max(1, spec.steps // 20)
    history: list[dict] = [{"step": 0}]
    best: tuple[float, int, list[torch.Tensor]] | None = None

    def select(row: dict) -> None:
        nonlocal best
        model.eval()
        row["heldout_kl"] = heldout_kl(model, heldout_teacher)
        model.train()
        if best is None or row["heldout_kl"] < best[0]:
            best = (row["heldout_kl"], row["step"], [p.detach().clone() for p in named.values()])

    if heldout is not None:
        select(history[0])
    for step in range(spec.steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * scale
        idx = torch.randint(0, len(blocks), (spec.batch_size,), generator=gen)
        ids = blocks[idx]
        loss, parts = kd_loss(model(input_ids=ids).logits, train_teacher(idx), ids, spec.nll_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": parts["kl"] + spec.nll_weight * parts["nll"], **parts})
        if heldout is not None and ((step + 1) % spec.select_every == 0 or step + 1 == spec.steps):
            select(history[-1])
        if verbose and (step + 1) % max(1, spec.steps // 10) == 0:
            held = f" heldout_kl={history[-1]['heldout_kl']:.5f}" if "heldout_kl" in history[-1] else ""
            print(f"recover {spec.mode}: step {step + 1}/{spec.steps} kl={parts['kl']:.4f} nll={parts['nll']:.4f}{held}",
                  file=sys.stderr, flush=True)
    model.eval()
    if best is not None:
        with torch.no_grad():
            for p, kept in zip(named.values(), best[2]):
                p.copy_(kept)
        history[best[1]]["selected"] = True
    if spec.mode == "lora":
        student = model.merge_and_unload()
    for p in student.parameters():
        p.requires_grad_(False)
    return student, history
