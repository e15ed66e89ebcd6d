"""The training configuration: the scaling guide's YAML sections, validated by pydantic.

Every key is optional and has our measured default (docs/method.md). Unknown keys are
refused, with the nearest valid key named, so a typo never silently falls back to a default.
The ecosystem's names (ALIASES) are accepted for ours, so a config written for transformers,
PEFT or TRL habits needs no translation (docs/cli.md).
"""

from __future__ import annotations

import dataclasses
import difflib
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

# transformers' TrainingArguments, PEFT's LoraConfig and TRL's SFTConfig names for our keys; accepted at the
# top level (flat, as those libraries write them) or inside the section they map to.
ALIASES = {
    "max_steps": "training.steps",
    "learning_rate": "training.learning_rate",
    "gradient_accumulation_steps": "training.gradient_accumulation",
    "lr_scheduler_type": "training.lr_schedule",
    "max_seq_length": "training.block_size",
    "r": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "target_modules": "lora.targets",
}


# `scu.law: auto` (the default since 2026-12-06): the start-up set measured best, where the trainer can run it.
# `scu train` (PyTorch and MLX) measures the gradient balance and applies a decoupled penalty step, so it gets the
# balance law with these settings; the other trainers get the position-form PI with the schema's defaults. The run's
# config.yaml and metadata hold the law it ran.
# The penalty step may reach twice lr: at once lr, given 300 steps (8.5 epochs) on SmolLM2 it ran lambda into its bound
# and lost S* (docs/method.md, "`penalty_step_bound`"). From tracking until settled the centre is at least the gradient
# balance: without it one SmolLM2 start-up overshot S* by 22% (docs/method.md, "The balance as a floor").
AUTO_BALANCE: dict[str, Any] = {
    "law": "balance", "penalty_step": "decoupled", "smoothing": "data", "feedforward": "growth", "growth_alpha": 0.5,
    "approach": "horizon", "kp": 1.0, "ki": 0.0, "start_band": 0.2, "horizon_steps": 5.0, "tracking_alpha": 0.1,
    "settle_steps": 10, "penalty_step_bound": 2.0, "balance_floor": "tracking",
}


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
    """The controller's defaults live in one place, scu.core.pi.PIConfig (measured: docs/method.md); the default law,
    `auto`, is this schema's: AUTO_BALANCE where the trainer can run it, else PIConfig's `pi`."""

    enabled: bool = True
    target_s: float = PIConfig.target_s
    kp: float = Field(PIConfig.kp, ge=0)  # 0: no proportional part (law balance with approach horizon: the growth model alone)
    ki: float = Field(PIConfig.ki, ge=0)
    deadband: float = Field(PIConfig.deadband, ge=0)
    lambda_init: float = Field(PIConfig.lambda_init, ge=0)
    lambda_min: float = PIConfig.lambda_min
    lambda_max: float = PIConfig.lambda_max
    # auto: the RMS of the adapted base weights; fit: from a plain fit that `scu train` runs first (scu.core.bits)
    prior_sigma: float | Literal["auto", "fit", "linesearch"] = 0.01
    prior: Literal["delta", "factors", "raw"] = "delta"
    # auto: AUTO_BALANCE or pi, by trainer. Unnamed, it yields to pi where the config sets what auto would choose
    # (_default_law_yields)
    law: Literal["auto", "pi", "bumpless", "balance", "guide"] = "auto"
    # how the penalty reaches the weights: through the loss, hence AdamW's momentum ("loss"), or as its own step after
    # the optimizer's, scaled by AdamW's per-entry step size without its momentum ("decoupled", scu train only)
    penalty_step: Literal["loss", "decoupled"] = "loss"
    # decoupled: the most one entry's penalty step may move it, in units of lr. AdamW's data step is at most about lr,
    # so at 1 the penalty can at best cancel a data step that keeps pushing; above 1 a large lambda still shrinks it
    penalty_step_bound: float = Field(1.0, ge=1)
    # decoupled, balance law: the bound once the law has settled (None: penalty_step_bound throughout). Early on AdamW's
    # v_hat is tiny where the data hardly moves an entry, and a small bound keeps the start-up's λ estimates sane; late
    # in a long run the data's step outgrows a penalty step held at 2·lr (docs/method.md, "penalty_step_bound at thirty epochs")
    penalty_step_bound_settled: float | None = Field(None, ge=1)
    ema_alpha: float = PIConfig.ema_alpha
    smoothing: Literal["data", "ratio"] = PIConfig.smoothing
    lead_steps: float = Field(PIConfig.lead_steps, ge=0)  # balance law: steps ahead its proportional part looks
    tracking_alpha: float | None = Field(PIConfig.tracking_alpha, gt=0, le=1)  # balance law: its EMA rate once tracking
    settle_steps: int | None = Field(PIConfig.settle_steps, ge=1)  # balance law: tracking_alpha only after this many steps in band
    balance_margin: float = Field(PIConfig.balance_margin, gt=0)  # balance law: lambda around this multiple of lambda_bal
    feedforward: Literal["balance", "growth"] = PIConfig.feedforward  # balance law: what sets lambda's centre
    growth_alpha: float | None = Field(PIConfig.growth_alpha, gt=0, le=1)  # feedforward growth: its EMA rate
    # feedforward growth: the centre is at least the gradient balance until settled, from the start or from tracking
    balance_floor: Literal["start", "tracking"] | None = PIConfig.balance_floor
    start_band: float = Field(PIConfig.start_band, gt=0, lt=1)  # bumpless, balance: tracking from S_hat >= (1 - start_band) * S*
    approach: Literal["lead", "horizon"] = PIConfig.approach  # balance law: how lambda moves about its centre
    horizon_steps: float = Field(PIConfig.horizon_steps, ge=1)  # approach horizon: steps over which ParamBPT reaches its target
    horizon_memory: Literal["lambda", "deficit"] = PIConfig.horizon_memory  # approach horizon: what the momentum carries
    horizon_kp_reads: Literal["error", "heading"] = PIConfig.horizon_kp_reads  # approach horizon: the error kp acts on
    horizon_plant: Literal["integrator", "restoring"] = PIConfig.horizon_plant  # approach horizon: does P relax by itself
    restoring_exponent: float = Field(PIConfig.restoring_exponent, gt=0)  # horizon_plant restoring: its rate's scale

    @model_validator(mode="before")
    @classmethod
    def _default_law_yields(cls, data: Any) -> Any:
        """With no law named, a config that sets one of auto's own settings (kp, ki, smoothing, penalty_step, ...),
        fixes lambda (lambda_min = lambda_max) or asks for `target_s: auto` runs `law: pi`, as every config did before
        auto became the default: what it sets keeps the meaning it was measured with. Naming `law: auto` with one of
        them is refused instead (_auto_law_sets_its_own)."""
        if not isinstance(data, dict) or "law" in data:
            return data
        fixed = "lambda_min" in data and data.get("lambda_min") == data.get("lambda_max")
        if fixed or data.get("target_s") == "auto" or any(k in data for k in AUTO_BALANCE):
            return {**data, "law": "pi"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _auto_target(cls, data: Any) -> Any:
        """`target_s: auto` is shorthand for the two-part code itself: λ fixed at 1 under the prior scale of a plain fit.

        Nothing is tuned and no validation data is read: DataBits + ParamBits is minimized as it stands, with
        sigma^2 = ||dW_plain||^2 / (LoRA entries) (`prior_sigma: fit`; docs/method.md, "target_s: auto").
        """
        if not isinstance(data, dict) or data.get("target_s") != "auto":
            return data
        clash = sorted({"lambda_init", "lambda_min", "lambda_max", "kp", "ki"} & set(data))
        if clash:
            raise ValueError(f"scu.target_s: auto fixes lambda at 1; drop scu.{clash[0]} or give a numeric target_s")
        out = {k: v for k, v in data.items() if k != "target_s"}
        return {**out, "lambda_init": 1.0, "lambda_min": 1.0, "lambda_max": 1.0, "prior_sigma": out.get("prior_sigma", "fit")}

    @field_validator("prior_sigma")
    @classmethod
    def _positive_sigma(cls, v: float | str) -> float | str:
        if v not in ("auto", "fit", "linesearch") and not v > 0:
            raise ValueError(f"scu.prior_sigma must be > 0, auto, fit or linesearch (got {v})")
        return v

    @field_validator("target_s")
    @classmethod
    def _target_in_unit_interval(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"scu.target_s must be in (0, 1), e.g. 0.05 for 5% (got {v})")
        return v

    @model_validator(mode="after")
    def _auto_law_sets_its_own(self) -> "ScuSection":
        """Under `law: auto` the law's own settings are chosen for it: a value set by hand would be silently replaced."""
        if self.law == "auto":
            fields = type(self).model_fields
            clash = [k for k in AUTO_BALANCE if k != "law" and getattr(self, k) != fields[k].default]
            if clash:
                raise ValueError(f"scu.law: auto sets scu.{clash[0]} itself; drop it, or name a law (pi, balance, ...) "
                                 "to set it by hand")
        return self

    @model_validator(mode="after")
    def _bound_needs_decoupled(self) -> "ScuSection":
        """The bound acts on the decoupled step only: set with the penalty in the loss, it would do nothing."""
        if self.penalty_step_bound != 1.0 and self.penalty_step == "loss":
            raise ValueError("scu.penalty_step_bound bounds the decoupled penalty step only; add scu.penalty_step: "
                             "decoupled, or drop it")
        settles = self.law == "auto" or (self.law == "balance" and self.penalty_step == "decoupled")  # auto sets both
        if self.penalty_step_bound_settled is not None and not settles:
            raise ValueError("scu.penalty_step_bound_settled needs scu.law: auto, or balance with scu.penalty_step: "
                             "decoupled (only that law settles); drop it, or set them")
        return self

    def step_bound(self, settled: bool) -> float:
        """The decoupled penalty step's bound c for the next step: penalty_step_bound_settled once the law has settled."""
        if settled and self.penalty_step_bound_settled is not None:
            return self.penalty_step_bound_settled
        return self.penalty_step_bound

    def resolved(self, measures_balance: bool) -> "ScuSection":
        """`law: auto` made concrete for a trainer that does (`scu train`, PyTorch or MLX) or does not measure the
        gradient balance; any other law as it is."""
        if self.law != "auto":
            return self
        return self.model_copy(update=AUTO_BALANCE if measures_balance else {"law": "pi"})

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
    # experiment trackers (Accelerate's names: tensorboard, wandb, mlflow, trackio, comet_ml, ...; scu.trackers)
    report_to: list[str] = []

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
    # chat `messages` rows: the loss on the assistant's tokens only (SFT), or on every token (scu.data.chat)
    train_on: Literal["assistant", "all"] = "assistant"
    # how packed documents see each other: "documents" keeps each to itself (its own positions and attention,
    # its first token no target); "stream" reads the packed text as one (attention over the whole block, as
    # nanoGPT and transformers' run_clm train); "auto": stream for plain-text (.txt) sources, whose blank-line
    # paragraphs are parts of one text, documents for rows (.jsonl, datasets, chat)
    packing: Literal["auto", "documents", "stream"] = "auto"


class Config(Section):
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    scu: ScuSection = ScuSection()
    training: TrainingSection = TrainingSection()
    data: DataSection = DataSection()
    sscu: SimplifiedConfig = SimplifiedConfig()  # S-SCU rules (docs/sscu.md); validated by its __post_init__
    tscu: TscuConfig = TscuConfig()  # T-SCU power/temperature control (docs/tscu.md)
    equilibrium: EquilibriumConfig = EquilibriumConfig()  # λ-equilibrium detector and auto-stop (docs/evaluation.md)
    # where `scu train` writes the run when --output is not given; left out of the run's record (config.yaml,
    # metadata.json, checkpoint), so a run directory that was moved still resumes
    output_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _no_weight_decay_under_scu(self) -> "Config":
        if self.scu.enabled and self.training.weight_decay != 0:
            raise ValueError(
                "training.weight_decay must be 0 when SCU is on (the SCU penalty is the regularizer); "
                "set weight_decay: 0.0 or scu.enabled: false"
            )
        return self


SECTIONS = [name for name, f in Config.model_fields.items() if isinstance(f.annotation, type)]


def canonical_key(dotted: str) -> str:
    """Our dotted name for a key that may be an alias: "max_steps" and "training.max_steps" -> "training.steps"."""
    *parents, leaf = dotted.split(".")
    target = ALIASES.get(leaf)
    if target is None or parents not in ([], target.split(".")[:-1]):
        return dotted
    return target


def _put(data: dict[str, Any], dotted: str, value: Any, source: Any) -> None:
    """data[a][b] = value for "a.b", creating the sections on the way; `source` names the file for the error."""
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ScuError(f"{key} in {source} must be a mapping of keys, not {node!r}; fix it to set {dotted}")
    node[leaf] = value


def _resolve_aliases(data: dict[str, Any], source: Any) -> dict[str, Any]:
    """A copy of `data` with every alias moved to our key; an alias next to the key it names is refused (which wins?)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    given = [*data, *(f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values)]
    for dotted in given:
        target = canonical_key(dotted)
        if target == dotted:
            continue
        *parents, leaf = dotted.split(".")
        value = (out[parents[0]] if parents else out).pop(leaf)
        section, key = target.split(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            raise ScuError(f"{dotted} is another name for {target}, which is also set in {source}; keep one of them")
        _put(out, target, value, source)
    return out


def _known_keys(parents: list[str]) -> list[str]:
    """The keys valid at the top level ([]) or in one section: its fields and the aliases that land there."""
    if not parents:
        return [*Config.model_fields, *ALIASES]
    field = Config.model_fields.get(parents[0]) if len(parents) == 1 else None
    if field is None:
        return []
    cls = field.annotation
    names = list(cls.model_fields) if issubclass(cls, BaseModel) else [f.name for f in dataclasses.fields(cls)]
    return names + [alias for alias, target in ALIASES.items() if target.startswith(f"{parents[0]}.")]


def _unknown_key(loc: tuple[Any, ...]) -> str:
    *parents, key = (str(p) for p in loc)
    close = difflib.get_close_matches(key, _known_keys(parents), n=1)
    if not close:
        return "unknown key; remove it or check its spelling"
    return f"unknown key; did you mean {'.'.join([*parents, close[0]])}?"


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = _unknown_key(err["loc"])
        parts.append(f"{where}: {msg}")
    return "invalid config: " + "; ".join(parts)


def build_config(data: dict[str, Any]) -> Config:
    """Validate a config mapping; the ecosystem's names (ALIASES) may stand for ours."""
    try:
        return Config.model_validate(_resolve_aliases(data, "the config"))
    except ValidationError as e:
        raise ScuError(_one_line(e)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (or start from defaults), apply dotted overrides like {"scu.target_s": 0.1} over it, validate.

    A key, in the YAML or an override, may be an alias (ALIASES); an override of None writes null.
    """
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
    empty = [key for key, value in data.items() if value is None and key in SECTIONS]
    if empty:
        raise ScuError(f"{empty[0]}: is empty in {path}; give it keys or delete the line")
    data = _resolve_aliases(data, path)
    for dotted, value in (overrides or {}).items():
        _put(data, canonical_key(dotted), value, path)
    return build_config(data)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
