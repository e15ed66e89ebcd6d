"""Convert LoRA adapters between PEFT and mlx-lm, both ways, without loading a model.

The two formats hold the same factors ΔW = scale · B · A (W is out x in):

| | PEFT (`adapter_model.safetensors`) | mlx-lm (`adapters.safetensors`) |
|---|---|---|
| A | `base_model.model.<module>.lora_A.weight`, r x in | `<module>.lora_a`, in x r (A^T) |
| B | `base_model.model.<module>.lora_B.weight`, out x r | `<module>.lora_b`, r x out (B^T) |
| scale | `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora` | `lora_parameters.scale` |
| where | `target_modules` (+ `layers_to_transform`) | `lora_parameters.keys` (relative to a block) + `num_layers` |

Module paths are the same on both sides for the architectures mlx-lm ports from transformers
(`model.layers.<i>.self_attn.q_proj`). mlx-lm attaches LoRA to a key in every one of the last
`num_layers` blocks; a block the adapter does not cover keeps B = 0, so its output is unchanged.
The PEFT config is kept in the mlx-lm config (`peft_config`), so PEFT -> mlx -> PEFT is lossless.

Refused, with the reason: DoRA, LoRA on embeddings or on MoE expert tensors, trained biases,
`modules_to_save`, initializations that change the base weights (PiSSA, OLoRA, CorDA, LoftQ),
and per-module ranks or scales (mlx-lm has one rank and one scale per adapter).
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scu import ScuError
from scu.report.records import atomic_path, atomic_write_json, check_safetensors, read_json

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"
MLX_CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
PEFT_PREFIX = "base_model.model."
LAYER_RE = re.compile(r"^(?P<stack>(?:.+\.)?layers)\.(?P<index>\d+)\.(?P<rel>.+)$")
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")
CARRIED_FILES = ("metadata.json", "metrics.jsonl", "README.md")  # a run's record travels with its adapter


def detect_format(adapter_dir: Path) -> str:
    """'peft' or 'mlx', from the files in the directory."""
    if (adapter_dir / MLX_WEIGHTS).exists():
        return "mlx"
    if (adapter_dir / PEFT_WEIGHTS).exists() or (adapter_dir / PEFT_WEIGHTS_BIN).exists():
        return "peft"
    raise ScuError(
        f"{adapter_dir} holds no adapter ({PEFT_WEIGHTS} for PEFT or {MLX_WEIGHTS} for mlx-lm); "
        "pass an adapter directory"
    )


def _read_json(path: Path) -> dict[str, Any]:
    config = read_json(path)
    if config is None:
        raise ScuError(f"{path} is missing; an adapter directory needs its adapter_config.json")
    return config


def _scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def _peft_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    if (adapter_dir / PEFT_WEIGHTS).exists():
        check_safetensors(adapter_dir / PEFT_WEIGHTS)
        return load_file(str(adapter_dir / PEFT_WEIGHTS))
    return torch.load(adapter_dir / PEFT_WEIGHTS_BIN, map_location="cpu", weights_only=True)


def _check_peft_config(cfg: dict[str, Any], where: Path) -> None:
    def refuse(what: str, fix: str) -> None:
        raise ScuError(f"cannot convert {where} to mlx-lm: {what}; {fix}")

    if cfg.get("peft_type", "LORA") != "LORA":
        refuse(f"it is a {cfg.get('peft_type')} adapter, not LoRA", "only LoRA adapters convert")
    if cfg.get("use_dora"):
        refuse("it is DoRA (a learned magnitude per row)", "retrain with use_dora: false")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        refuse("it trains biases", "retrain with bias: none and lora_bias: false")
    if cfg.get("modules_to_save"):
        refuse(f"it trains full modules {cfg['modules_to_save']}", "retrain without modules_to_save")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        refuse(
            f"init_lora_weights={init!r} changes the base weights",
            "save it with PEFT's path_initial_model_for_weight_conversion to get a plain LoRA first",
        )
    for key in ("layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens"):
        if cfg.get(key):
            refuse(f"it uses {key}", "mlx-lm LoRA has no equivalent")


def peft_to_mlx_tensors(cfg: dict[str, Any], weights: dict[str, torch.Tensor], where: Path) -> tuple[dict, dict]:
    """(mlx-lm tensors, lora_parameters) for a PEFT LoRA adapter; refuses what mlx-lm cannot express."""
    _check_peft_config(cfg, where)
    embedding = [k for k in weights if "lora_embedding_" in k]
    if embedding:
        raise ScuError(f"cannot convert {where} to mlx-lm: it has LoRA on an embedding ({embedding[0]}); "
                       "convert adapters on linear layers only")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in weights.items():
        m = re.match(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$", key)
        if m is None:
            raise ScuError(f"cannot convert {where} to mlx-lm: it holds the non-LoRA tensor {key!r} (a full or saved "
                           "module) that an mlx-lm LoRA adapter cannot carry; convert adapters of LoRA factors only")
        pairs.setdefault(m["module"], {})[m["ab"]] = t
    if not pairs:
        raise ScuError(f"{where} holds no LoRA tensors; pass a PEFT LoRA adapter directory")
    out: dict[str, torch.Tensor] = {}
    ranks, scales = set(), set()
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ScuError(f"{where}: module {module} has lora_{next(iter(ab))} without its partner; the adapter is incomplete")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ScuError(f"{where}: module {module} has LoRA shapes {tuple(a.shape)} and {tuple(b.shape)}; expected r x in and out x r")
        r = a.shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        ranks.add(r)
        scales.add(_scale(alpha, r, bool(cfg.get("use_rslora"))))
        out[f"{module}.lora_a"] = a.T.contiguous()
        out[f"{module}.lora_b"] = b.T.contiguous()
    if len(ranks) > 1 or len(scales) > 1:
        raise ScuError(
            f"cannot convert {where} to mlx-lm: its modules use ranks {sorted(ranks)} and scales {sorted(scales)} "
            "(rank_pattern/alpha_pattern), but an mlx-lm adapter has one rank and one scale; retrain with one rank"
        )
    keys = sorted({_mlx_key(module) for module in pairs})
    params = {"rank": ranks.pop(), "scale": scales.pop(), "dropout": float(cfg.get("lora_dropout", 0.0)), "keys": keys}
    return out, params


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's alpha_pattern lookup: a key matches the end of the module name (as PEFT's get_pattern_key)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _mlx_key(module: str) -> str:
    """mlx-lm's LoRA key: the path inside a transformer block, or the full path outside the blocks."""
    m = LAYER_RE.match(module)
    return m["rel"] if m else module


def mlx_to_peft_tensors(cfg: dict[str, Any], weights: dict[str, torch.Tensor], where: Path) -> tuple[dict, dict]:
    """(PEFT tensors, PEFT config) for an mlx-lm LoRA adapter."""
    kind = cfg.get("fine_tune_type", "lora")
    if kind != "lora":
        fix = "retrain with fine_tune_type: lora" if kind == "dora" else "a full fine-tune is a model, not an adapter"
        raise ScuError(f"cannot convert {where} to PEFT: it is a {kind!r} adapter; {fix}")
    lp = cfg.get("lora_parameters") or {}
    if "rank" not in lp or "scale" not in lp:
        raise ScuError(f"{where / MLX_CONFIG} has no lora_parameters.rank/scale; it is not an mlx-lm LoRA config")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in weights.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise ScuError(f"cannot convert {where} to PEFT: tensor {key!r} is not a LoRA factor; only LoRA adapters convert")
        if t.ndim != 2:
            raise ScuError(f"cannot convert {where} to PEFT: {key} has shape {tuple(t.shape)} (MoE experts); PEFT LoRA has no equivalent")
        pairs.setdefault(module, {})[leaf] = t
    out = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"lora_a", "lora_b"}:
            raise ScuError(f"{where}: module {module} has only {next(iter(ab))}; the adapter is incomplete")
        out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = ab["lora_a"].T.contiguous()
        out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = ab["lora_b"].T.contiguous()
    r, scale = int(lp["rank"]), float(lp["scale"])
    kept = cfg.get("peft_config")
    if kept and kept.get("r") == r and _scale(kept["lora_alpha"], r, bool(kept.get("use_rslora"))) == scale:
        return out, kept
    return out, _new_peft_config(sorted(pairs), r, scale, float(lp.get("dropout", 0.0)), cfg.get("model"))


def _new_peft_config(modules: list[str], r: int, scale: float, dropout: float, base: str | None) -> dict[str, Any]:
    """A PEFT LoraConfig that targets exactly `modules`: leaf names plus layers_to_transform when the
    modules are every listed block times the same keys, an anchored regex otherwise."""
    in_blocks = [LAYER_RE.match(m) for m in modules]
    by_layer: dict[int, set[str]] = {}
    for m in in_blocks:
        if m is not None:
            by_layer.setdefault(int(m["index"]), set()).add(m["rel"])
    rels = set().union(*by_layer.values()) if by_layer else set()
    leaves = {rel.rsplit(".", 1)[-1] for rel in rels}
    uniform = (
        all(m is not None for m in in_blocks)
        and len({m["stack"] for m in in_blocks}) == 1
        and all(v == rels for v in by_layer.values())
        and len(leaves) == len(rels)
    )
    if uniform:
        targets: Any = sorted(leaves)
        layers = {"layers_to_transform": sorted(by_layer), "layers_pattern": in_blocks[0]["stack"].rsplit(".", 1)[-1]}
    else:
        targets = "^(?:" + "|".join(re.escape(m) for m in modules) + ")$"
        layers = {}
    return peft_config_dict(
        r=r, lora_alpha=scale * r, lora_dropout=dropout, target_modules=targets, base_model_name_or_path=base, **layers
    )


def peft_config_dict(**lora_kwargs: Any) -> dict[str, Any]:
    """A causal-LM `peft.LoraConfig` as the JSON-ready dict PEFT writes to adapter_config.json."""
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs).to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def _prepare_out(out_dir: Path, src: Path) -> None:
    if out_dir.resolve() == src.resolve():
        raise ScuError(f"--out {out_dir} is the adapter directory itself; choose a new directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ScuError(f"--out {out_dir} is a file; pass a new directory path")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ScuError(f"--out {out_dir} exists and is not empty; choose a new directory or empty it")


def _carry_records(src: Path, out_dir: Path) -> None:
    for name in CARRIED_FILES:
        if (src / name).exists():
            with atomic_path(out_dir / name) as tmp:
                shutil.copy2(src / name, tmp)


def export_adapter(adapter_dir: str | Path, to: str, out_dir: str | Path) -> Path:
    """Convert the adapter in `adapter_dir` to `to` ('mlx' or 'peft') in `out_dir`; return `out_dir`.

    Everything is read and checked before `out_dir` is created, so a refusal leaves nothing behind.
    """
    src, out = Path(adapter_dir), Path(out_dir)
    if not src.is_dir():
        raise ScuError(f"adapter directory not found: {src}")
    if to not in ("mlx", "peft"):
        raise ScuError(f"--to must be mlx or peft (got {to!r})")
    fmt = detect_format(src)
    if fmt == to:
        raise ScuError(f"{src} is already a {to} adapter; nothing to convert")
    _prepare_out(out, src)
    cfg = _read_json(src / (PEFT_CONFIG if fmt == "peft" else MLX_CONFIG))
    if to == "mlx":
        tensors, params = peft_to_mlx_tensors(cfg, _peft_weights(src), src)
        config = {
            "fine_tune_type": "lora",
            "num_layers": -1,  # every block; blocks the adapter does not cover keep B = 0
            "lora_parameters": params,
            "model": cfg.get("base_model_name_or_path"),
            "peft_config": cfg,
        }
        weights_name, meta = MLX_WEIGHTS, {"format": "mlx"}
    else:
        check_safetensors(src / MLX_WEIGHTS)
        tensors, config = mlx_to_peft_tensors(cfg, load_file(str(src / MLX_WEIGHTS)), src)
        weights_name, meta = PEFT_WEIGHTS, {"format": "pt"}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / weights_name) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    atomic_write_json(out / (MLX_CONFIG if to == "mlx" else PEFT_CONFIG), config)
    _carry_records(src, out)
    return out
