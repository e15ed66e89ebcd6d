"""Load a model with mlx-lm, attach mlx-lm's LoRA layers from the config, and save the adapter.

Loading goes through `mlx_lm.utils.load`, so everything mlx-lm reads works here: MLX model
directories, HF-format checkpoints it converts on load, quantized MLX models
(`mlx-community/*-4bit`, trained as QLoRA), local paths and hub ids, and `.gguf` files (through the
dense directory scu.models.gguf caches for them, as the PyTorch backend loads them). `model.load_in_4bit` /
`load_in_8bit` quantize a full-precision model on load with mlx-lm's own `quantize_model`.
The adapter is written the way `mlx_lm.lora` writes it, so `mlx_lm.load(model, adapter_path=DIR)`
reads it unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from scu import ScuError
from scu.mlx.convert import MLX_CONFIG, MLX_WEIGHTS, peft_config_dict
from scu.report.records import atomic_path, atomic_write_json, first_line, read_json

DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16, "fp16": mx.float16}
QUANT_GROUP_SIZE = 64


def rope_overrides(model_dir: str) -> dict[str, Any]:
    """Top-level rope keys for a config.json that transformers 5 wrote, or {}.

    transformers 5 saves `rope_theta` (and any scaling) inside `rope_parameters`; mlx-lm 0.32 reads only the
    top-level `rope_theta`, so without this it runs such a checkpoint at its default theta 10000. Measured on
    SmolLM2-135M (theta 100000): first-step DataBPT 7.402 in MLX against 7.240 in PyTorch (bench/mlx_real.py).
    """
    config = read_json(Path(model_dir) / "config.json") if Path(model_dir).is_dir() else None
    params = (config or {}).get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" in config or "rope_theta" not in params:
        return {}
    out: dict[str, Any] = {"rope_theta": params["rope_theta"]}
    if params.get("rope_type", "default") != "default" and "rope_scaling" not in config:
        out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


def load_base(model_cfg: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, Hugging Face tokenizer, model config) through mlx-lm's loader."""
    from mlx_lm.utils import load, quantize_model

    from scu.models.gguf import resolve

    if model_cfg.load_in_4bit and model_cfg.load_in_8bit:
        raise ScuError("set only one of model.load_in_4bit and model.load_in_8bit")
    name = resolve(model_cfg.base_model)  # an unsupported .gguf is refused here, in its own words
    try:
        model, wrapper, config = load(
            name, model_config=rope_overrides(name), return_config=True, trust_remote_code=model_cfg.trust_remote_code
        )
    except Exception as e:  # missing path, offline hub, unsupported architecture: one message for the user
        raise ScuError(
            f"mlx-lm could not load {model_cfg.base_model!r} ({first_line(e)}); pass a local model directory or a reachable hub id"
        ) from None
    quantized = "quantization" in config
    if model_cfg.load_in_4bit or model_cfg.load_in_8bit:
        if quantized:
            raise ScuError(f"{model_cfg.base_model} is already quantized; drop model.load_in_4bit/load_in_8bit")
        model, config = quantize_model(model, config, QUANT_GROUP_SIZE, 4 if model_cfg.load_in_4bit else 8)
    model.set_dtype(DTYPES[model_cfg.dtype])  # floating tensors only: packed quantized weights stay as they are
    tokenizer = wrapper._tokenizer  # the Hugging Face tokenizer inside mlx-lm's wrapper, for scu.data
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, config


def lora_keys(model: nn.Module, targets: list[str]) -> list[str]:
    """mlx-lm LoRA keys (paths inside a transformer block) whose last name is one of `targets`."""
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    linear = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)
    found = {p for layer in model.layers for p, m in layer.named_modules() if isinstance(m, linear)}
    keys = sorted(p for p in found if p.rsplit(".", 1)[-1] in targets)
    if not keys:
        names = sorted({p.rsplit(".", 1)[-1] for p in found})
        raise ScuError(f"none of lora.targets {targets} exist in this model; its linear layers are {names}")
    return keys


def lora_parameters(lora_cfg: Any, keys: list[str]) -> dict[str, Any]:
    """mlx-lm's `lora_parameters`: the scale is alpha / r, or alpha / sqrt(r) with rsLoRA (as PEFT)."""
    r = lora_cfg.rank
    scale = lora_cfg.alpha / math.sqrt(r) if lora_cfg.use_rslora else lora_cfg.alpha / r
    return {"rank": r, "scale": scale, "dropout": lora_cfg.dropout, "keys": keys}


def add_lora(model: nn.Module, lora_cfg: Any, seed: int, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Freeze the base and attach LoRA to every block's targets; return the adapter config to save."""
    from mlx_lm.tuner.trainer import grad_checkpoint
    from mlx_lm.tuner.utils import linear_to_lora_layers

    if lora_cfg.use_dora:
        raise ScuError("the MLX backend trains plain LoRA; set lora.use_dora: false (or use the PyTorch backend)")
    if lora_cfg.init is not True:
        raise ScuError(
            f"the MLX backend initializes LoRA as mlx-lm does (A uniform, B = 0); lora.init={lora_cfg.init!r} "
            "is PyTorch-only; set lora.init: true"
        )
    params = lora_parameters(lora_cfg, lora_keys(model, lora_cfg.targets))
    model.freeze()
    mx.random.seed(seed)
    linear_to_lora_layers(model, len(model.layers), params)
    if gradient_checkpointing:
        grad_checkpoint(model.layers[0])
    return {"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": params}


def peft_provenance(lora_cfg: Any, base_model: str) -> dict[str, Any]:
    """The PEFT LoraConfig this adapter corresponds to, kept so `scu export --to peft` keeps alpha and rsLoRA."""
    return peft_config_dict(
        r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=list(lora_cfg.targets),
        use_rslora=lora_cfg.use_rslora, base_model_name_or_path=base_model,
    )


def save_adapter(model: nn.Module, adapter_config: dict[str, Any], out: Path) -> None:
    """adapters.safetensors + adapter_config.json, as `mlx_lm.lora` writes them."""
    with atomic_path(out / MLX_WEIGHTS, suffix=".safetensors") as tmp:
        mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())), metadata={"format": "mlx"})
    atomic_write_json(out / MLX_CONFIG, adapter_config)
