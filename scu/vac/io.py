"""Save a compressed model so that transformers can load it at its compressed shapes.

The directory holds sharded safetensors, the tokenizer, `modeling_vac.py` (scu/vac/modeling_vac.py
with the base family's classes substituted) and a config.json whose `auto_map` points at it, plus
`vac_ranks` (the rank of every factorized layer) and `vac_int8`. Then
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` builds the compressed model
directly. The directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from torch import nn

from scu import ScuError
from scu.report.records import atomic_write_json, atomic_write_text
from scu.vac import modeling_vac
from scu.vac.compress import all_linears
from scu.vac.modeling_vac import Int8Linear
from scu.vac.profile import is_factorized

MODELING_FILE = "modeling_vac.py"


def check_output_dir(out: str | Path) -> Path:
    """Refuse an output directory that already has files in it (nothing is written yet)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ScuError(f"output directory {out} already exists and is not empty; choose a new --out")
    return out


def modeling_source(model: nn.Module) -> str:
    """modeling_vac.py with the config and causal-LM classes of `model`'s family (transformers classes)."""
    model_cls, config_cls = type(model).__name__, type(model.config).__name__
    if getattr(transformers, model_cls, None) is not type(model) or not hasattr(transformers, config_cls):
        raise ScuError(f"{model_cls} is not a transformers causal-LM class; VAC can only save compressed transformers models")
    src = Path(modeling_vac.__file__).read_text()
    src = re.sub(r"import \w+ as BaseConfig  # BASE-CONFIG", f"import {config_cls} as BaseConfig  # BASE-CONFIG", src)
    return re.sub(r"import \w+ as BaseForCausalLM  # BASE-MODEL", f"import {model_cls} as BaseForCausalLM  # BASE-MODEL", src)


def factorized_ranks(model: nn.Module) -> dict[str, int]:
    return {name: m.rank for name, m in model.named_modules() if is_factorized(m)}


def quantize_int8(model: nn.Module) -> None:
    """Store every factor, and every decoder linear layer kept dense, as int8 with per-output-channel scales (in place)."""
    for m in model.modules():
        if is_factorized(m):
            m.to_int8()
    for name, linear in all_linears(model).items():
        model.set_submodule(name, Int8Linear.from_linear(linear))


def int8_linears(model: nn.Module) -> list[str]:
    """Names of the int8 layers that are not factors of a FactorizedLinear."""
    factored = factorized_ranks(model)
    return [n for n, m in model.named_modules()
            if type(m).__name__ == "Int8Linear" and n.rsplit(".", 1)[0] not in factored]


def cast_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating-point tensor to `dtype` (in place), except int8 layers' scales, which stay float32."""
    for module in model.modules():
        if type(module).__name__ == "Int8Linear":
            continue
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t.is_floating_point():
                t.data = t.data.to(dtype)
    model.config.dtype = dtype


def save_compressed(
    model: nn.Module, tokenizer, out: str | Path, report: dict, base_model: str, max_shard_size: str = "2GB",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the compressed `model` (its factorized layers as they are, int8 or not) to `out`.

    `dtype` saves the floating-point weights cast to it, e.g. bfloat16 next to int8 factors. The cast is
    made on a copy: the caller's model keeps its dtype (cast it in place with `cast_floats` first, and pass
    no dtype, where the copy's memory matters).
    """
    out = check_output_dir(out)
    if dtype is not None:
        model = copy.deepcopy(model)
        cast_floats(model, dtype)
    ranks = factorized_ranks(model)
    int8 = any(m.int8 for m in model.modules() if is_factorized(m))
    int8_dense = int8_linears(model)
    source = modeling_source(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.update(
            model_type="vac_" + model.config.model_type,
            architectures=["VacForCausalLM"],
            auto_map={"AutoConfig": "modeling_vac.VacConfig", "AutoModelForCausalLM": "modeling_vac.VacForCausalLM"},
            vac_ranks=ranks,
            vac_int8=int8,
            vac_int8_linears=int8_dense,
            vac_base_model=base_model,
        )
        atomic_write_json(tmp / "config.json", config)
        atomic_write_text(tmp / MODELING_FILE, source)
        atomic_write_json(tmp / "compress_report.json", report)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _trusted(path: str) -> bool:
    """Only a local VAC directory runs its own modeling code (the file scu wrote); hub ids never do."""
    return (Path(path) / MODELING_FILE).exists()


def load_model(path: str, **kwargs):
    """A causal LM from a directory or hub id, at its saved (compressed) shapes."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=_trusted(path), **kwargs)
    except OSError as e:
        raise ScuError(f"cannot load model {path!r} ({e.__class__.__name__}); pass a saved model directory or hub id") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=_trusted(path))
    except OSError as e:
        raise ScuError(f"cannot load a tokenizer from {path!r} ({e.__class__.__name__}); pass a model directory with one") from None
