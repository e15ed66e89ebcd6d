"""Load any causal LM (local directory, `.gguf` file or hub id) and wrap it with PEFT LoRA from the config."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scu import ScuError
from scu.config.schema import ModelSection
from scu.models.gguf import is_gguf, resolve
from scu.report.records import check_safetensors, first_line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PLACEHOLDER = ModelSection.model_fields["base_model"].default
LOCAL_PREFIXES = ("/", "./", "../", "~")


def _load_error(name: str, e: Exception) -> ScuError:
    return ScuError(f"could not load model {name!r} ({first_line(e)}); pass a local model directory or a reachable hub id")


def _source(name: str) -> str:
    """Where transformers loads `name` from. Refused at once: the placeholder and a path that is not there,
    which transformers would otherwise try as a hub id (a minute of network retries, then "Repo id must be...")."""
    if name == PLACEHOLDER:
        raise ScuError(f"model.base_model is still the placeholder {name!r}; set it (or --base-model) to a model directory, a .gguf file or a hub id")
    if not (name.startswith(LOCAL_PREFIXES) or is_gguf(name)):
        return name
    path = Path(name).expanduser()  # transformers takes "~/..." for a hub id
    if not path.exists():
        raise _load_error(name, FileNotFoundError(f"model path {name} does not exist"))
    return resolve(str(path))


def load_tokenizer(model_cfg: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(_source(model_cfg.base_model), trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(model_cfg.base_model, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg: Any) -> nn.Module:
    """The base model in the configured dtype / quantization (quantization needs CUDA + bitsandbytes)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": DTYPES[model_cfg.dtype], "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.load_in_4bit or model_cfg.load_in_8bit:
        if not torch.cuda.is_available():
            raise ScuError("4-bit/8-bit loading needs a CUDA GPU and bitsandbytes; set model.load_in_4bit/8bit: false here")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=model_cfg.load_in_4bit,
            load_in_8bit=model_cfg.load_in_8bit,
            bnb_4bit_compute_dtype=DTYPES[model_cfg.dtype],
        )
    source = _source(model_cfg.base_model)
    for weights in sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []:
        check_safetensors(weights)  # a truncated copy is one line here, a deserializing traceback in transformers
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(model_cfg.base_model, e) from None
    # PEFT records this as the adapter's base: for a .gguf base, the file as given, not its cache directory
    model.name_or_path = model.config.name_or_path = model_cfg.base_model
    return model


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the model's linear layers (what LoRA can target), excluding the LM head."""
    from transformers.pytorch_utils import Conv1D

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    names.discard("lm_head")
    return sorted(names)


def add_lora(model: nn.Module, lora_cfg: Any, gradient_checkpointing: bool = False) -> nn.Module:
    """Wrap `model` with a LoRA adapter on the configured targets that exist in it."""
    from peft import LoraConfig, get_peft_model

    available = linear_module_names(model)
    targets = [t for t in lora_cfg.targets if t in available]
    if not targets:
        raise ScuError(f"none of lora.targets {lora_cfg.targets} exist in this model; its linear layers are {available}")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=lora_cfg.rank,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        use_rslora=lora_cfg.use_rslora,
        use_dora=lora_cfg.use_dora,
        init_lora_weights=lora_cfg.init,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
