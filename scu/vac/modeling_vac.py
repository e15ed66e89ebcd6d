"""Modeling code of a VAC-compressed causal LM. This file is copied next to every saved model.

It depends on torch and transformers only, so that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works without scu installed.
`config.vac_ranks` maps each factorized linear layer to its rank; the model is built at those
shapes directly (the base class's dense layers are created on the meta device, which allocates
nothing, and replaced before any weight exists), so loading never needs room for the dense model.
`config.vac_int8` stores every factor as int8 with one float scale per output channel, and
`config.vac_int8_linears` lists the decoder linear layers kept dense but stored as int8 likewise.

When saving a model of another family, scu rewrites the two BASE lines below to that family's
config and causal-LM classes (exported at the top level of transformers).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from transformers import LlamaConfig as BaseConfig  # BASE-CONFIG
from transformers import LlamaForCausalLM as BaseForCausalLM  # BASE-MODEL

INT8_MAX = 127


class Int8Linear(nn.Module):
    """A bias-optional linear layer whose weight is stored as int8 with a scale per output channel.

    y = (x @ q.T) * scale + bias: the scale is applied to the output, so the float weight is never
    materialized and memory stays at one byte per weight.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Buffer(torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.scale = nn.Buffer(torch.ones(out_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Symmetric per-output-channel quantization of a float linear layer."""
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / INT8_MAX
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, w.device, linear.weight.dtype)
        out.weight.copy_(torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8))
        out.scale.copy_(scale.to(out.scale.dtype))
        if linear.bias is not None:
            out.bias.data.copy_(linear.bias.detach())
        return out

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class FactorizedLinear(nn.Module):
    """W (out x in) replaced by up (out x r) @ down (r x in): r * (in + out) weights instead of in * out."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, bias: bool = False, int8: bool = False, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        layer = Int8Linear if int8 else nn.Linear
        self.down = layer(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = layer(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def int8(self) -> bool:
        return isinstance(self.up, Int8Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def to_int8(self) -> None:
        """Quantize both factors in place (per-channel symmetric int8)."""
        if not self.int8:
            self.down, self.up = Int8Linear.from_linear(self.down), Int8Linear.from_linear(self.up)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def install_factorized(model: nn.Module, ranks: dict[str, int], int8: bool = False, int8_linears: list | None = None) -> None:
    """Replace each linear layer named in `ranks` by an (uninitialized) FactorizedLinear of that rank,
    and each one in `int8_linears` (layers kept dense) by an Int8Linear."""
    for name in int8_linears or []:
        dense = model.get_submodule(name)
        model.set_submodule(name, Int8Linear(dense.in_features, dense.out_features, dense.bias is not None,
                                             dense.weight.device, dense.weight.dtype))
    for name, rank in ranks.items():
        dense = model.get_submodule(name)
        factored = FactorizedLinear(
            dense.in_features, dense.out_features, int(rank), bias=dense.bias is not None, int8=int8,
            device=dense.weight.device, dtype=dense.weight.dtype,
        )
        model.set_submodule(name, factored)


class VacConfig(BaseConfig):
    model_type = "vac_" + BaseConfig.model_type
    vac_ranks: dict | None = None
    vac_int8: bool = False
    vac_int8_linears: list | None = None  # linear layers kept dense but stored as int8
    vac_base_model: str | None = None  # the dense model it was compressed from (for speed comparisons)


class VacForCausalLM(BaseForCausalLM):
    config_class = VacConfig

    def __init__(self, config: VacConfig) -> None:
        device = torch.get_default_device()
        with torch.device("meta"):  # the dense layers are shapes only; they are replaced below
            super().__init__(config)
            install_factorized(self, config.vac_ranks or {}, bool(config.vac_int8), config.vac_int8_linears)
        if device.type != "meta":  # built directly (not by from_pretrained): give every tensor storage
            self.to_empty(device=device)
            self.initialize_weights()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Int8Linear):
            module.weight.zero_()
            module.scale.fill_(1.0)
            if module.bias is not None:
                module.bias.data.zero_()
            return
        super()._init_weights(module)
