"""ParamBPT of a PEFT LoRA model as a differentiable tensor.

The penalty that enters the loss is lambda * ParamBPT * ln 2 (nats), a tensor with a
gradient: unlike the public reference, lambda really changes the update.

Priors (what counts as "the learned change" theta - theta0 of the LoRA factors):
* ``delta``   each module's dW = s * B @ A minus its initial value; ||dW||^2 from r x r Gram
              products, sum((B^T B) o (A A^T)), without materializing the out x in matrix.
              s is PEFT's own `module.scaling`, so rsLoRA's alpha / sqrt(r) is respected;
              PiSSA/OLoRA-style inits (B0 A0 != 0) are measured from their initial dW.
* ``factors`` (A - A0, B - B0).
* ``raw``     (A, B) themselves, as the public reference does. At step 0 this is dominated by
              A's random initialization; use it only for comparisons.

Under every prior, the other trainable tensors are penalized relative to their initial values,
never toward 0: DoRA's magnitude vector (m - m0; m0 are the weight-row norms) and the copies
PEFT trains for `modules_to_save` (relative to the frozen original module).

Sharded models (FSDP2: parameters are DTensors). LoRA factors and DoRA magnitudes are small:
they are all-gathered (differentiably, one collective per shape group) and every rank
computes the same value ("replicated"). `modules_to_save` copies can be large: each rank adds
the sum over its own shard ("local"), and the value that enters S is the all-reduced sum of
the local parts (see `parts`). Without sharding (one process, DDP) the local part is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from scu import ScuError
from scu.core.bits import param_bpt, prior_scale, weight_scale_sigma

Prior = Literal["delta", "factors", "raw"]


def _full(t: Tensor) -> Tensor:
    """The whole tensor on every rank: an FSDP2 shard is all-gathered differentiably, anything else is returned as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class LoraPair:
    """One adapter of one LoRA layer. A, B (and the DoRA magnitude) are looked up live, so the
    parameters FSDP2 swaps in when the model is wrapped after this was built are the ones used."""

    name: str  # qualified module name + adapter, the key of its initial values in `init_state`
    module: nn.Module
    adapter: str
    scale: float
    A0: Tensor | None  # initial factors, kept only where the initial dW is non-zero (or for `factors`)
    B0: Tensor | None
    M0: Tensor | None = None  # initial DoRA magnitude (DoRA layers only)

    @property
    def A(self) -> Tensor:  # [r, in]
        return self.module.lora_A[self.adapter].weight

    @property
    def B(self) -> Tensor:  # [out, r]
        return self.module.lora_B[self.adapter].weight

    @property
    def M(self) -> Tensor | None:  # [out], DoRA only
        mags = getattr(self.module, "lora_magnitude_vector", {})
        return mags[self.adapter].weight if self.adapter in mags else None


def _snapshot(t: Tensor) -> Tensor:
    return _full(t.detach()).clone()


def lora_pairs(model: nn.Module, keep_init: bool) -> list[LoraPair]:
    """The active LoRA factor pairs of a PEFT model, with snapshots of their initial values."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for qual, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            pair = LoraPair(f"{qual}.{adapter}", module, adapter, float(module.scaling[adapter]), None, None)
            if keep_init or bool(_full(pair.B.detach()).abs().amax() > 0):
                pair.A0, pair.B0 = _snapshot(pair.A), _snapshot(pair.B)
            if pair.M is not None:
                pair.M0 = _snapshot(pair.M)
            pairs.append(pair)
    if not pairs:
        raise ScuError("the model has no active LoRA layers; check lora.targets against the model's module names")
    return pairs


def base_weight_rms(pairs: list[LoraPair]) -> float:
    """RMS of the frozen weights under the LoRA layers (`prior_sigma: auto`), over every adapted matrix."""
    sq_sum, count = 0.0, 0
    with torch.no_grad():
        for p in pairs:
            w = _full(p.module.get_base_layer().weight)
            sq_sum += float(w.float().pow(2).sum())
            count += w.numel()
    return weight_scale_sigma(sq_sum, count)


@dataclass
class SavedModule:
    """A trainable copy PEFT keeps for `modules_to_save`; its reference is the frozen original."""

    name: str
    trained: nn.Module
    original: nn.Module


def saved_modules(model: nn.Module) -> list[SavedModule]:
    from peft.utils.other import ModulesToSaveWrapper

    out = []
    for qual, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            for adapter in module.active_adapters:
                if adapter in module.modules_to_save:
                    out.append(SavedModule(f"{qual}.{adapter}", module.modules_to_save[adapter], module.original_module))
    return out


@dataclass
class _Group:
    """LoRA pairs of one shape, evaluated together: a handful of batched ops instead of a few per module."""

    pairs: list[LoraPair]
    scale_sq: Tensor  # [G]
    A0: Tensor | None  # [G, r, in], stacked initial factors
    B0: Tensor | None  # [G, out, r]
    M0: Tensor | None  # [G, out], stacked initial DoRA magnitudes


def product_sq_norm(A: Tensor, B: Tensor) -> Tensor:
    """||B @ A||^2 (over the last two dims, batched over any leading ones) from r x r Gram products,
    sum((B^T B) o (A A^T)), without materializing the out x in matrix."""
    return ((B.transpose(-2, -1) @ B) * (A @ A.transpose(-2, -1))).sum((-2, -1))


def _stack_full(tensors: list[Tensor]) -> Tensor:
    """torch.stack, then (for FSDP2 shards) one all-gather for the whole group."""
    return _full(torch.stack(tensors)).float()


class LoraPenalty:
    """Computes ParamBPT (bits per training token) of the learned change of a PEFT model."""

    def __init__(self, model: nn.Module, prior: Prior, sigma: float | str, tokens_per_epoch: int) -> None:
        if tokens_per_epoch <= 0:
            raise ScuError("tokens_per_epoch must be > 0; check data.tokens_per_epoch")
        self.prior, self.tokens_per_epoch = prior, tokens_per_epoch
        self.pairs = lora_pairs(model, keep_init=(prior == "factors"))
        self.sigma = prior_scale(sigma, lambda: base_weight_rms(self.pairs))
        self.saved = saved_modules(model)
        self._build_groups()

    @property
    def dof(self) -> int:
        """The adapters' trainable LoRA entries, r * (in + out) per matrix: what `prior_sigma: fit` spreads the change over."""
        return sum(_full(p.A.detach()).numel() + _full(p.B.detach()).numel() for p in self.pairs)

    def _build_groups(self) -> None:
        by_shape: dict[tuple, list[LoraPair]] = {}
        for p in self.pairs:
            key = (tuple(p.A0.shape if p.A0 is not None else _full(p.A).shape), tuple(_full(p.B).shape),
                   p.A0 is not None, p.M0 is not None)
            by_shape.setdefault(key, []).append(p)
        self.groups = []
        for (_, _, has_init, dora), pairs in by_shape.items():
            device = pairs[0].A.device
            scale_sq = torch.tensor([p.scale**2 for p in pairs], device=device)
            A0 = torch.stack([p.A0.float() for p in pairs]).to(device) if has_init else None
            B0 = torch.stack([p.B0.float() for p in pairs]).to(device) if has_init else None
            M0 = torch.stack([p.M0.float() for p in pairs]).to(device) if dora else None
            self.groups.append(_Group(pairs, scale_sq, A0, B0, M0))

    def _group_sq_norm(self, g: _Group) -> Tensor:
        A = _stack_full([p.A for p in g.pairs])  # [G, r, in]
        B = _stack_full([p.B for p in g.pairs])  # [G, out, r]
        if g.scale_sq.device != A.device:  # the model moved (accelerator.prepare, .to) after the penalty was built
            g.scale_sq, g.A0, g.B0, g.M0 = (None if t is None else t.to(A.device) for t in (g.scale_sq, g.A0, g.B0, g.M0))
        magnitude = 0.0
        if g.M0 is not None:  # DoRA: the magnitude's change from its initial row norms
            magnitude = (_stack_full([p.M for p in g.pairs]) - g.M0).pow(2).sum()
        if self.prior == "raw":
            return A.pow(2).sum() + B.pow(2).sum() + magnitude
        if self.prior == "factors":
            return (A - g.A0).pow(2).sum() + (B - g.B0).pow(2).sum() + magnitude
        if g.A0 is not None:  # delta from a non-zero init (PiSSA/OLoRA): B A - B0 A0 = [B, -B0] @ [A; A0]
            A, B = torch.cat([A, g.A0], 1), torch.cat([B, -g.B0], 2)
        return (g.scale_sq * product_sq_norm(A, B)).sum() + magnitude

    def _saved_sq_norm(self) -> tuple[Tensor, Tensor]:
        """(replicated, local) squared change of the modules_to_save copies."""
        device = self.pairs[0].A.device
        replicated, local = torch.zeros((), device=device), torch.zeros((), device=device)
        for s in self.saved:
            originals = dict(s.original.named_parameters())
            for pname, p in s.trained.named_parameters():
                if not p.requires_grad:
                    continue
                ref = originals[pname].detach()
                if isinstance(p, DTensor):  # this rank's shard minus the same shard of the original
                    if not isinstance(ref, DTensor):
                        ref = distribute_tensor(ref, p.device_mesh, p.placements, src_data_rank=None)
                    local = local + (p.to_local().float() - ref.to_local().float()).pow(2).sum()
                else:
                    replicated = replicated + (p.float() - ref.float()).pow(2).sum()
        return replicated, local

    def _lora_sq_norm(self) -> Tensor:
        groups = [self._group_sq_norm(g) for g in self.groups]
        return groups[0] if len(groups) == 1 else torch.stack(groups).sum()

    def parts(self) -> tuple[Tensor, Tensor]:
        """||theta - theta0||^2 as (replicated, local): the first is the same on every rank, the second is
        this rank's share of sharded tensors. The loss takes their sum; S takes replicated + all-reduced local."""
        replicated, local = self._saved_sq_norm()
        return self._lora_sq_norm() + replicated, local

    def sq_norm(self) -> Tensor:
        """||theta - theta0||^2 under the prior, as one differentiable scalar (this rank's view when sharded)."""
        if not self.saved:  # the common case: LoRA factors only, no extra ops
            return self._lora_sq_norm()
        return sum(self.parts())

    def bpt(self, sq_norm: Tensor | float) -> Tensor | float:
        """ParamBPT of a squared norm, in this penalty's sigma and tokens per epoch."""
        return param_bpt(sq_norm, self.sigma, self.tokens_per_epoch)

    def __call__(self) -> Tensor:
        return self.bpt(self.sq_norm())

    def init_state(self) -> dict[str, Tensor]:
        """The initial values the penalty measures from, for checkpoints (resume must not re-snapshot trained weights)."""
        out = {}
        for p in self.pairs:
            for key, t in (("A0", p.A0), ("B0", p.B0), ("M0", p.M0)):
                if t is not None:
                    out[f"{p.name}.{key}"] = t.detach().cpu().contiguous()
        return out

    def load_init_state(self, state: dict[str, Tensor]) -> None:
        names = {p.name for p in self.pairs}
        unknown = {k.rsplit(".", 1)[0] for k in state} - names
        if unknown:
            raise ScuError(f"saved SCU initial values do not match this model's LoRA layers ({sorted(unknown)[0]}); "
                           "resume with the model and adapter configuration of the checkpoint")
        for p in self.pairs:
            device = p.A.device
            for key in ("A0", "B0", "M0"):
                t = state.get(f"{p.name}.{key}")
                setattr(p, key, None if t is None else t.to(device))
        self._build_groups()
