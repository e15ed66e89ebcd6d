"""The training configuration: the scaling guide's YAML sections, validated by pydantic.

Every key is optional and has our measured default (docs/method.md). Unknown keys are
refused, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scu import ScuError
from scu.core.pi import PIConfig
from scu.core.equilibrium import EquilibriumConfig
from scu.core.simplified import SimplifiedConfig
from scu.energy.runtime import TscuConfig

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Section(BaseModel):
    # nan and inf are refused in every float: `--kp nan` must not "complete" on an untrained adapter
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    base_model: str = "your-model-id"
    architecture: str = "transformer"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    backend: Literal["torch", "mlx"] = "torch"  # mlx: mlx-lm models and LoRA layers (docs/mlx.md)
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


class LoraSection(Section):
    rank: int = 8
    alpha: float = 16
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] = ALL_PROJECTIONS
    use_rslora: bool = False
    use_dora: bool = False
    init: str | bool = True  # PEFT's init_lora_weights: True, "pissa", "olora", "gaussian", ...

    @field_validator("rank")
    @classmethod
    def _positive_rank(cls, v: int) -> int:
        if v < 1:
            raise ValueError("lora.rank must be >= 1")
        return v


class ScuSection(Section):
    """The controller's defaults live in one place, scu.core.pi.PIConfig (measured: docs/method.md)."""

    enabled: bool = True
    target_s: float = PIConfig.target_s
    kp: float = Field(PIConfig.kp, gt=0)
    ki: float = Field(PIConfig.ki, ge=0)
    deadband: float = Field(PIConfig.deadband, ge=0)
    lambda_init: float = Field(PIConfig.lambda_init, ge=0)
    lambda_min: float = PIConfig.lambda_min
    lambda_max: float = PIConfig.lambda_max
    prior_sigma: float = Field(0.01, gt=0)
    prior: Literal["delta", "factors", "raw"] = "delta"
    law: Literal["pi", "bumpless", "guide"] = PIConfig.law
    ema_alpha: float = PIConfig.ema_alpha

    @field_validator("target_s")
    @classmethod
    def _target_in_unit_interval(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"scu.target_s must be in (0, 1), e.g. 0.05 for 5% (got {v})")
        return v

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "ScuSection":
        if not 0.0 <= self.lambda_min <= self.lambda_max:
            raise ValueError(
                f"need 0 <= scu.lambda_min <= scu.lambda_max (got [{self.lambda_min}, {self.lambda_max}]); "
                "set lambda_min = lambda_max for a fixed-lambda run"
            )
        if self.lambda_min == 0.0 and self.lambda_max > 0.0:
            raise ValueError("scu.lambda_min must be > 0 when lambda is controlled; set lambda_min = lambda_max = 0 to fix it at 0")
        return self


class TrainingSection(Section):
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation: int = 1
    block_size: int = 128
    steps: int = 300
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = Field(0, ge=0)  # 0: evaluate only at the end

    @field_validator("batch_size", "gradient_accumulation", "block_size", "steps", "checkpoint_every")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v})")
        return v

    @field_validator("learning_rate", "max_grad_norm")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not 0 < v <= 10:
            raise ValueError(f"must be in (0, 10], e.g. 2e-4 for a learning rate (got {v})")
        return v


class DataSection(Section):
    train_data: str = "path/to/train.jsonl"
    val_data: str | None = None
    tokens_per_epoch: int | None = None  # default: counted from the packed training set
    val_fraction: float = Field(0.05, ge=0, lt=1)  # 0: no validation split
    text_field: str = "text"


class Config(Section):
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    scu: ScuSection = ScuSection()
    training: TrainingSection = TrainingSection()
    data: DataSection = DataSection()
    sscu: SimplifiedConfig = SimplifiedConfig()  # S-SCU rules (docs/sscu.md); validated by its __post_init__
    tscu: TscuConfig = TscuConfig()  # T-SCU power/temperature control (docs/tscu.md)
    equilibrium: EquilibriumConfig = EquilibriumConfig()  # λ-equilibrium detector and auto-stop (docs/evaluation.md)

    @model_validator(mode="after")
    def _no_weight_decay_under_scu(self) -> "Config":
        if self.scu.enabled and self.training.weight_decay != 0:
            raise ValueError(
                "training.weight_decay must be 0 when SCU is on (the SCU penalty is the regularizer); "
                "set weight_decay: 0.0 or scu.enabled: false"
            )
        return self


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key; remove it or check its spelling"
        parts.append(f"{where}: {msg}")
    return "invalid config: " + "; ".join(parts)


def build_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ScuError(_one_line(e)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (or start from defaults), apply dotted overrides like {"scu.target_s": 0.1}, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ScuError(f"config file not found: {p}; pass --config with an existing YAML file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ScuError(f"{p} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
        if not isinstance(data, dict):
            raise ScuError(f"{p} must be a YAML mapping with sections model/lora/scu/training/data")
    empty = [key for key, value in data.items() if value is None]
    if empty:
        raise ScuError(f"{empty[0]}: is empty in {path}; give it keys or delete the line")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ScuError(f"{key} in {path} must be a mapping of keys, not {node!r}; fix it to set {dotted}")
        node[leaf] = value
    return build_config(data)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
