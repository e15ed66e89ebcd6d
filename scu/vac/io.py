"""Save a compressed model so that transformers can load it at its compressed shapes.

The directory holds sharded safetensors, the tokenizer, `modeling_vac.py` (scu/vac/modeling_vac.py
with the base family's classes substituted) and a config.json whose `auto_map` points at it, plus
`vac_ranks` (the rank of every factorized layer) and `vac_int8`. Then
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` builds the compressed model
directly. The directory is written under a temporary name and renamed into place when complete.

scu itself lets a directory's code run only when it is exactly what this package writes for that
family (`genuine_vac`); anything else runs only with the user's explicit --trust-remote-code.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
import transformers
from torch import nn

from scu import ScuError
from scu.report.records import atomic_write_json, atomic_write_text, check_safetensors, first_line, staging_dir
from scu.vac import modeling_vac
from scu.vac.compress import all_linears
from scu.vac.modeling_vac import Int8Linear
from scu.vac.profile import is_factorized

MODELING_FILE = "modeling_vac.py"
AUTO_MAP = {"AutoConfig": "modeling_vac.VacConfig", "AutoModelForCausalLM": "modeling_vac.VacForCausalLM"}


def check_output_dir(out: str | Path) -> Path:
    """Refuse an output directory that already has files in it (nothing is written yet)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ScuError(f"output directory {out} already exists and is not empty; choose a new --out")
    return out


def family_classes(model_type: str) -> tuple[str, str] | None:
    """Names of the config and causal-LM classes transformers builds `model_type` with, or None for no such family."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_cls, model_cls = CONFIG_MAPPING_NAMES.get(model_type), MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if config_cls and model_cls and hasattr(transformers, config_cls) and hasattr(transformers, model_cls):
        return config_cls, model_cls
    return None


def modeling_source(model_type: str) -> str | None:
    """modeling_vac.py as scu writes it for the base family `model_type` (None: not a transformers causal-LM family).

    It is a function of the family alone, so a saved directory's copy can be checked against it before it runs.
    """
    classes = family_classes(model_type)
    if classes is None:
        return None
    src = Path(modeling_vac.__file__).read_text(encoding="utf-8")
    src = re.sub(r"import \w+ as BaseConfig  # BASE-CONFIG", f"import {classes[0]} as BaseConfig  # BASE-CONFIG", src)
    return re.sub(r"import \w+ as BaseForCausalLM  # BASE-MODEL", f"import {classes[1]} as BaseForCausalLM  # BASE-MODEL", src)


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
    classes = family_classes(model.config.model_type)
    if classes is None or getattr(transformers, classes[1]) is not type(model):
        raise ScuError(f"{type(model).__name__} is not a transformers causal-LM class; VAC can only save compressed transformers models")
    source = modeling_source(model.config.model_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out.parent, f".{out.name}-")
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.update(
            model_type="vac_" + model.config.model_type,
            architectures=["VacForCausalLM"],
            auto_map=AUTO_MAP,
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


def _json_object(path: Path) -> dict:
    """A JSON object file's content; {} when it is missing, unreadable or not an object (nothing to trust)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def genuine_vac(directory: Path) -> bool:
    """The directory's code is exactly what save_compressed writes: modeling_vac.py byte-identical to
    `modeling_source` for the family config.json names, auto_map pointing at its two classes only, and
    no auto_map anywhere else (tokenizer_config.json and the like)."""
    config = _json_object(directory / "config.json")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.startswith("vac_") or config.get("auto_map") != AUTO_MAP:
        return False
    source = modeling_source(model_type.removeprefix("vac_"))
    modeling = directory / MODELING_FILE
    others = [f for f in directory.glob("*config.json") if f.name != "config.json"]
    return (source is not None and modeling.is_file() and modeling.read_bytes() == source.encode("utf-8")
            and not any("auto_map" in _json_object(f) for f in others))


@functools.cache
def _warn_trusted(path: str) -> None:
    print(f"scu: warning: --trust-remote-code: the Python code that {path} ships runs with your permissions", file=sys.stderr)


def remote_code(path: str, trust: bool = False) -> bool:
    """Whether transformers may run `path`'s own code: a genuine VAC directory, or anything the user trusts.

    A directory that claims to be VAC (modeling_vac.py, a vac_ model type) but is not genuine is refused
    without running anything: its code could do anything.
    """
    directory = Path(path)
    if genuine_vac(directory):
        return True
    if trust:
        _warn_trusted(path)
        return True
    claims_vac = str(_json_object(directory / "config.json").get("model_type", "")).startswith("vac_")
    if claims_vac or (directory / MODELING_FILE).exists():
        raise ScuError(f"{path} ships modeling code or an auto_map that differs from what scu writes, so none of it was run; "
                       "re-save it with scu, or pass --trust-remote-code if you trust its source")
    return False


def check_model_dir(path: str) -> None:
    """A local model must be a directory with config.json and intact weights (hub ids are left to transformers)."""
    directory = Path(path)
    if not directory.exists() or directory.suffix == ".gguf":  # a .gguf file is checked by scu.models.gguf
        return
    if not (directory / "config.json").is_file():
        raise ScuError(f"{path} holds no model (no config.json); pass a saved model directory or hub id")
    for f in sorted(directory.glob("*.safetensors")):
        check_safetensors(f)


def load_model(path: str, trust_remote_code: bool = False, **kwargs):
    """A causal LM from a directory or hub id, at its saved (compressed) shapes."""
    from transformers import AutoModelForCausalLM

    from scu.models.gguf import resolve

    path = resolve(path)
    check_model_dir(path)
    trust = remote_code(path, trust_remote_code)
    try:
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, **kwargs)
    except (OSError, ValueError) as e:
        raise ScuError(f"cannot load model {path!r} ({first_line(e)}); pass a saved model directory or hub id") from None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from scu.models.gguf import resolve

    path = resolve(path)
    check_model_dir(path)
    trust = remote_code(path, trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise ScuError(f"cannot load a tokenizer from {path!r} ({first_line(e)}); pass a model directory with one") from None
