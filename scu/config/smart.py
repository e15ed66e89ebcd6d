"""Smart config: from a model and a dataset to a validated SCU configuration (the scaling guide's rules).

`suggest(...)` applies the guide's tables (size category, S* and its adjustments, LoRA rank,
batch by VRAM) plus our own rules where the guide is silent or measured wrong (PI gains, the
size boundary rule, steps, the memory formula), and records one line of reasoning per rule.
`scu suggest` prints those lines and writes the YAML. docs/smart_config.md explains each rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from scu import ScuError
from scu.config.registry import Scale, find_scale
from scu.config.schema import ALL_PROJECTIONS, Config, ModelSection, ScuSection, TrainingSection, build_config

Task = Literal["general", "code", "math", "domain"]
TargetRule = Literal["auto", "measured", "guide"]
Symptom = Literal["lambda-oscillates", "s-overshoots"]

# ---- the guide's tables -------------------------------------------------------------------------
# (category, lower bound in parameters, inclusive; S*). Size = parameters with an untied output
# head left out (see model_size); the bound belongs to the category above it: 1e9 is medium.
CATEGORIES: tuple[tuple[str, float, float], ...] = (
    ("micro", 0.0, 0.005),
    ("tiny", 100e6, 0.010),
    ("small", 500e6, 0.015),
    ("medium", 1e9, 0.020),
    ("large", 3e9, 0.030),
    ("xlarge", 7e9, 0.040),
)
# LoRA (rank, alpha) by category. The guide gives r 16-32 / alpha 32-64 for 3-7B; we take the
# low end, which is what both of its validated large runs (Llama-3.2-3B, OLMo-3-7B) used.
LORA = {"micro": (8, 16), "tiny": (8, 16), "small": (8, 16), "medium": (16, 32), "large": (16, 32), "xlarge": (32, 64)}
# Dataset size adjustments (strictly fewer tokens than the bound); 10M-100M: the guide lists none.
DATA_ADJUSTMENTS: tuple[tuple[float, float, str], ...] = ((1e6, -0.010, "< 1M tokens"), (10e6, -0.005, "< 10M tokens"))
TASK_ADJUSTMENTS: dict[str, float] = {"general": 0.0, "code": 0.005, "math": 0.005, "domain": -0.005}
# The floor: the smallest S* the guide recommends for any model (micro). Below it the guide has
# no validated setting, and lambda saturates at its upper bound trying to reach it.
S_FLOOR = 0.005
# (VRAM in GB at least, micro-batch, gradient accumulation): the largest row that fits is used.
BATCH_BY_VRAM: tuple[tuple[float, int, int], ...] = ((40, 8, 2), (24, 4, 4), (16, 2, 8), (8, 1, 16))
# The guide's troubleshooting, as ratios of its own gains (Kp 0.8 -> 0.5-0.6; Ki 0.15 -> 0.2),
# applied to whatever gains are in use.
SYMPTOM_FACTORS: dict[str, tuple[str, float, str]] = {
    "lambda-oscillates": ("kp", 0.55 / 0.8, "lambda oscillates: Kp lowered by the guide's 0.8 -> 0.55"),
    "s-overshoots": ("ki", 0.2 / 0.15, "S overshoots its target: Ki raised by the guide's 0.15 -> 0.2"),
}
# Steps: about one epoch, at least the guide's shortest validated run (500: time for lambda to
# settle), at most its template and longest validated run (1500: OLMo-3-7B at lambda equilibrium),
# and never more passes over the data than MAX_EPOCHS unless --epochs asks: the guide's 500-step
# floor alone planned about 220 epochs of a 72k-token dataset, which fits the text, not the task.
MIN_STEPS, MAX_STEPS = 500, 1500
# Without --vram the plan's CPU time is estimated, and cut to --cpu-minutes when given. A step costs
# (6 x params + ATTENTION_FLOPS x layers x block x hidden) FLOPs per token: attention's share grows with the
# block. By FLOP count that coefficient is 12; fitted to `scu train` step times of SmolLM2-135M (dequantized Q4_1,
# the config `scu suggest` writes: LoRA r 8 on every projection, fp32, one thread) at blocks 128, 512 and 2048 it
# is 12.7 on an idle machine (13.7 with another job on the second core). The rate is from the same idle run:
# 4 x 128 tokens in 5.9 s, 1 x 2048 in 34.3 s (python -m bench.cpu_step_time, bench/results/cpu_step_time_idle.json).
ATTENTION_FLOPS = 13
CPU_FLOPS = 7.3e10
MAX_EPOCHS = 3.0
# `law: auto` under `scu train` adds the penalty's own backward and a second weight update: +4.5% a step on SmolLM2
# (median of per-pair ratios, against +0.1% for pi; python -m bench.scu_overhead --base smollm2 --law auto,
# bench/results/scu_overhead_smollm2_law_auto.json). CPU_FLOPS was fitted to runs under pi.
AUTO_LAW_STEP_COST = 1.05
# What `--target auto` gave (python -m bench.prior_fit, and the 30-minute plan trained as written; docs/benchmarks.md).
# Printed wherever it is chosen.
AUTO_MEASURED = ("measured level with the best tuned baseline on SmolLM2-135M (dequantized Q4_1) in 100-step runs (18k "
                 "and 72k Shakespeare tokens) and within 0.8% of it on the tiny harness at 16k, but on the 25-step plan "
                 "`--cpu-minutes 30` writes for SmolLM2 and Shakespeare its validation BPT was 3.2% above plain LoRA's "
                 "(5.767 against 5.590): a short plain fit gives a small scale, and the penalty then holds the change "
                 "back (a long one, the other way: it overfits); docs/benchmarks.md")
# What the guide's S* table costs, measured (docs/benchmarks.md, "Real model"): SmolLM2-135M (dequantized Q4_1),
# 18k Shakespeare tokens, 100 steps of 4 x 128, two seeds. Printed wherever `--target guide` is chosen.
GUIDE_COST = ("measured on SmolLM2-135M (dequantized Q4_1, 18k Shakespeare tokens): the guide's S* 0.5% gave held-out "
              "BPT 5.827 against 5.656 at the default S* 5% (+3.0%), with no forgetting (-0.07 against +0.15 bits "
              "on WikiText-2); docs/benchmarks.md")
WARMUP_FRACTION = 0.1  # the guide's template: 150 warm-up steps of 1500
GUIDE_BLOCK_SIZE = 2048  # the guide's template

# ---- the model --------------------------------------------------------------------------------
# Projection roles (the guide's q, k, v, o, gate, up, down) and the module names architectures use.
ROLE_ORDER = ("q", "k", "v", "qkv", "o", "gate", "gate_up", "up", "down")
GUIDE_ROLES = ("q", "k", "v", "o", "gate", "up", "down")
FUSED = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
ATTENTION_NAMES = {
    "q": {"q_proj", "query", "wq", "q_lin"},
    "k": {"k_proj", "key", "wk", "k_lin"},
    "v": {"v_proj", "value", "wv", "v_lin"},
    "qkv": {"c_attn", "qkv_proj", "query_key_value", "wqkv", "w_pack", "att_proj"},
    "o": {"o_proj", "out_proj", "dense", "c_proj", "wo", "out_lin"},
}
MLP_NAMES = {
    "gate": {"gate_proj", "w1"},
    "gate_up": {"gate_up_proj"},
    "up": {"up_proj", "c_fc", "fc1", "fc_in", "dense_h_to_4h", "w3", "lin1"},
    "down": {"down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "lin2"},
}
ATTENTION_PARENTS = ("attn", "attention")
MLP_PARENTS = ("mlp", "ffn", "feed_forward", "moe", "experts")


@dataclass(frozen=True)
class ModelInfo:
    """What the rules need to know about a model, read without loading its weights."""

    name: str | None  # id or path; None for --params
    params: int  # every parameter once (tied embeddings once)
    size: int  # the categorised size: params without an untied output head
    hidden: int
    layers: int
    intermediate: int
    kv_dim: int
    vocab: int
    max_positions: int | None
    targets: tuple[str, ...]  # module names for lora.targets
    roles: dict[str, tuple[str, ...]]  # role -> module names (missing roles absent)
    lora_fan: int  # sum of (in + out) over every targeted module: adapter params = rank * lora_fan
    lora_fan_in: int  # sum of in_features over targeted modules: what LoRA dropout copies
    modules_per_layer: int  # targeted modules in one layer
    model_type: str | None = None
    source: str = ""


def _linear_dims(module: Any) -> tuple[int, int] | None:
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def _role(path: str) -> str | None:
    """The projection role of a linear layer from its name and its parent's name."""
    *parents, leaf = path.lower().split(".")
    parent = next((p for p in reversed(parents) if not p.isdigit()), "")
    groups = [ATTENTION_NAMES] if any(k in parent for k in ATTENTION_PARENTS) else []
    groups += [MLP_NAMES] if any(k in parent for k in MLP_PARENTS) else []
    if not groups:  # e.g. OPT's fc1/fc2 sit directly in the block: use only unambiguous names
        groups = [{r: n - {"dense", "c_proj"} for r, n in g.items()} for g in (ATTENTION_NAMES, MLP_NAMES)]
    return next((r for g in groups for r, names in g.items() if leaf in names), None)


def _target_modules(model: Any) -> tuple[dict[str, tuple[str, ...]], list[tuple[str, tuple[int, int]]]]:
    """Roles found in the model's module list and every (name, (in, out)) linear layer they select."""
    head = model.get_output_embeddings()
    linears = [(n, d) for n, m in model.named_modules() if m is not head and (d := _linear_dims(m)) is not None]
    roles: dict[str, list[str]] = {}
    for name, _ in linears:
        role = _role(name)
        if role is not None and name.split(".")[-1] not in roles.setdefault(role, []):
            roles[role].append(name.split(".")[-1])
    leaves = {leaf for names in roles.values() for leaf in names}
    chosen = [(n, d) for n, d in linears if n.split(".")[-1] in leaves]
    return {r: tuple(roles[r]) for r in ROLE_ORDER if r in roles}, chosen


def _config_int(config: Any, *names: str, default: int | None = None) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


def inspect_model(model: str, trust_remote_code: bool = False) -> ModelInfo:
    """Read a model's config (local directory, `.gguf` file or hub id) and count its parameters on the meta device.

    Only config.json is read (from the hub when `model` is not a local directory); the model is
    instantiated on PyTorch's meta device, so no weights are downloaded or allocated. A `.gguf` file
    is dequantized into its cache directory first, which `scu train` then reuses.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scu.models.gguf import resolve

    source = resolve(model)
    local = Path(source)
    if local.exists() and not (local / "config.json").is_file():
        raise ScuError(f"{local} has no config.json; point --model at a saved model directory or pass --params N")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ScuError(
            f"could not read the config of {model!r} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "pass a local model directory, check the hub id and your connection, or give --params N"
        ) from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, ImportError) as e:
        raise ScuError(f"cannot build {model!r} ({config.model_type}) as a causal LM ({e}); pass --params N instead") from None
    params = sum(p.numel() for p in meta.parameters())  # parameters() yields a tied tensor once
    head, embed = meta.get_output_embeddings(), meta.get_input_embeddings()
    untied_head = head is not None and head.weight is not embed.weight
    size = params - (head.weight.numel() if untied_head else 0)
    roles, chosen = _target_modules(meta)
    if not chosen:
        raise ScuError(f"no attention/MLP projections recognised in {model!r} ({config.model_type}); "
                       "set lora.targets by hand in the written config")
    hidden = _config_int(text, "hidden_size", "n_embd", "d_model", default=embed.weight.shape[1])
    heads = _config_int(text, "num_attention_heads", "n_head", default=1)
    head_dim = _config_int(text, "head_dim", default=hidden // heads)
    layers = _config_int(text, "num_hidden_layers", "n_layer", "num_layers", default=1)
    return ModelInfo(
        name=model,
        params=params,
        size=size,
        hidden=hidden,
        layers=layers,
        intermediate=_config_int(text, "intermediate_size", "n_inner", "ffn_dim", default=None) or 4 * hidden,
        kv_dim=_config_int(text, "num_key_value_heads", default=heads) * head_dim,
        vocab=embed.weight.shape[0],
        max_positions=_config_int(text, "max_position_embeddings", "n_positions", "max_sequence_length"),
        targets=tuple(dict.fromkeys(n for names in roles.values() for n in names)),
        roles=roles,
        lora_fan=sum(i + o for _, (i, o) in chosen),
        lora_fan_in=sum(i for _, (i, _o) in chosen),
        modules_per_layer=max(1, round(len(chosen) / layers)),
        model_type=config.model_type,
        source=f"config.json of {local}" if local.exists() else f"hub config of {model}",
    )


def model_from_params(params: int) -> ModelInfo:
    """A Llama-shaped stand-in for a bare parameter count (no architecture to read).

    Llama models keep depth = width / 128 and about 12 * width^2 parameters per layer
    (7B: 4096 wide, 32 deep), so width = (128 * P / 12)^(1/3). Vocabulary: 32,000.
    """
    if params < 1:
        raise ScuError(f"--params must be a positive parameter count (got {params}), e.g. --params 1.2e9")
    hidden = max(64, 64 * round((128 * params / 12) ** (1 / 3) / 64))
    layers = max(1, round(params / (12 * hidden * hidden)))
    inter = 64 * round(8 / 3 * hidden / 64)
    fans = [(hidden, hidden)] * 4 + [(hidden, inter)] * 2 + [(inter, hidden)]  # q k v o gate up down
    return ModelInfo(
        name=None, params=params, size=params, hidden=hidden, layers=layers, intermediate=inter, kv_dim=hidden,
        vocab=32000, max_positions=None, targets=tuple(ALL_PROJECTIONS),
        roles={r: (f"{r}_proj",) for r in GUIDE_ROLES},
        lora_fan=layers * sum(i + o for i, o in fans), lora_fan_in=layers * sum(i for i, _ in fans),
        modules_per_layer=7, source="--params",
    )


# ---- memory -----------------------------------------------------------------------------------
GB = 1e9
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
QUANT_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0}  # NF4 + one fp32 absmax per 64 weights; int8
CUDA_RUNTIME_BYTES = 0.5 * GB  # CUDA context, cuBLAS workspace, allocator slack
ADAPTER_BYTES_PER_PARAM = 16  # fp32 weight, its gradient, Adam's two moments


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak training memory in bytes, by part."""

    weights: float
    adapter: float
    activations: float
    logits: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.adapter + self.activations + self.logits + self.runtime

    def describe(self) -> str:
        unit, scale = ("GB", GB) if self.total >= GB else ("MB", 1e6)
        parts = ("weights", "adapter", "activations", "logits", "runtime")
        return " + ".join(f"{p} {getattr(self, p) / scale:.2f}" for p in parts) + f" = {self.total / scale:.2f} {unit}"


def estimate_memory(
    info: ModelInfo,
    rank: int,
    batch_size: int,
    block_size: int,
    dtype: str = "fp32",
    quant: str | None = None,
    gradient_checkpointing: bool = False,
    lora_dropout: float = 0.05,
    device: Literal["cuda", "cpu"] = "cuda",
) -> MemoryEstimate:
    """Peak memory of one LoRA training step: weights + adapter state + saved activations + logits.

    Activations (per token, per layer, in elements of the compute dtype) are what autograd keeps
    for the backward pass of a pre-norm decoder layer with SDPA attention: about 7 hidden-sized
    tensors (norm inputs/outputs, q and the attention output, residuals), 4 intermediate-sized
    (gate, up, activation, product), 2 key/value-sized, the rank-sized LoRA A outputs, and, with
    LoRA dropout, a copy of each targeted input plus its 1-byte mask. Gradient checkpointing keeps
    only each layer's input plus one layer's activations. Logits: the compute-dtype logits, the
    fp32 log-softmax kept for the loss and its gradient (plus an fp32 upcast when the compute
    dtype is 16-bit). docs/smart_config.md compares this with measured peaks.
    """
    b = DTYPE_BYTES[dtype]
    tokens = batch_size * block_size
    embed = info.vocab * info.hidden * (2 if info.params - info.size else 1)
    weights = (info.params - embed) * QUANT_BYTES[quant] + embed * b if quant else info.params * b
    adapter = rank * info.lora_fan * ADAPTER_BYTES_PER_PARAM
    dropout_in = info.lora_fan_in / info.layers if lora_dropout > 0 else 0
    per_layer = b * (7 * info.hidden + 4 * info.intermediate + 2 * info.kv_dim
                     + rank * info.modules_per_layer + dropout_in) + dropout_in
    saved = b * info.hidden * info.layers + per_layer if gradient_checkpointing else per_layer * info.layers
    logits = info.vocab * (b + 8 + (4 if b != 4 else 0))
    return MemoryEstimate(
        weights=weights,
        adapter=adapter,
        activations=tokens * saved,
        logits=tokens * logits,
        runtime=CUDA_RUNTIME_BYTES if device == "cuda" else 0.0,
    )


# ---- the rules --------------------------------------------------------------------------------
def category_of(size: float) -> str:
    """The guide's size category; a boundary value belongs to the larger category (1e9 is medium)."""
    return [name for name, low, _ in CATEGORIES if size >= low][-1]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _count(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"


def count_tokens(data: str, tokenizer_source: str, text_field: str = "text") -> int:
    """Tokens of a dataset as training packs it: each document's tokens plus one EOS."""
    from transformers import AutoTokenizer

    from scu.data.text import load_documents, tokenize_documents
    from scu.models.gguf import resolve

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(tokenizer_source))
    except (OSError, ValueError) as e:
        raise ScuError(f"no tokenizer for {tokenizer_source!r} ({type(e).__name__}); pass --tokens N instead of --data") from None
    docs = load_documents(data, text_field, tokenizer)
    return sum(len(ids) + 1 for ids in tokenize_documents(docs, tokenizer))


@dataclass
class Suggestion:
    """A suggested configuration and why: one line per rule applied."""

    config: Config
    category: str
    model: ModelInfo
    tokens: int | None
    memory: MemoryEstimate
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    batch: int
    accum: int
    steps: int
    warmup: int


@dataclass
class _Hardware:
    dtype: str
    quant: str | None
    checkpointing: bool
    memory: MemoryEstimate


LAWS = {
    "auto": "the measured start-up set (balance law, decoupled penalty step) under `scu train`, SCUTrainer and the loop API given AdamW, else pi",
    "pi": "position-form PI on log lambda",
    "bumpless": "velocity-form PI on log-odds, started near S*",
    "balance": "PI on log-odds around the measured gradient balance",
    "guide": "the reference's velocity law",
}


def suggest(
    model: str | None = None,
    *,
    params: float | None = None,
    tokens: float | None = None,
    data: str | None = None,
    task: Task = "general",
    vram_gb: float | None = None,
    block_size: int | None = None,
    family: str | None = None,
    symptoms: Sequence[Symptom] = (),
    scales_file: str | Path | None = None,
    text_field: str = "text",
    trust_remote_code: bool = False,
    epochs: float = MAX_EPOCHS,
    cpu_minutes: float | None = None,
    target: TargetRule = "measured",
) -> Suggestion:
    """Apply the scaling guide's rules to a model (id/path, or a bare parameter count) and a dataset."""
    if (model is None) == (params is None):
        raise ScuError("give exactly one of --model (id or path) and --params N")
    if tokens is not None and data is not None:
        raise ScuError("give --tokens or --data, not both (--data counts the tokens itself)")
    if tokens is not None and tokens < 1:
        raise ScuError(f"--tokens must be a positive token count (got {tokens}), e.g. --tokens 50M")
    if task not in TASK_ADJUSTMENTS:
        raise ScuError(f"unknown task {task!r}; use one of {', '.join(TASK_ADJUSTMENTS)}")
    if data is not None and model is None:
        raise ScuError("--data needs --model (its tokenizer counts the tokens); with --params give --tokens N")
    if vram_gb is not None and vram_gb <= 0:
        raise ScuError(f"--vram must be positive GB (got {vram_gb})")
    if block_size is not None and block_size < 1:
        raise ScuError(f"--block-size must be >= 1 (got {block_size})")
    if not 0 < epochs < math.inf:
        raise ScuError(f"--epochs must be a positive, finite number of passes over the data (got {epochs:g}), "
                       "e.g. --epochs 5")
    unknown = [s for s in symptoms if s not in SYMPTOM_FACTORS]
    if unknown:
        raise ScuError(f"unknown symptom {unknown[0]!r}; use {' or '.join(SYMPTOM_FACTORS)}")
    reasons: list[str] = []
    warnings: list[str] = []

    info = inspect_model(model, trust_remote_code) if model is not None else model_from_params(int(params))
    category = category_of(info.size)
    counted = f"{info.params:,} parameters" + (f", {info.size:,} without the untied output head" if info.params != info.size else "")
    reasons.append(f"size: {counted} ({info.source}) -> {category} ({_category_range(category)})")
    if data is not None:
        tokens = count_tokens(data, model, text_field)
        reasons.append(f"dataset: {int(tokens):,} tokens in {data} (counted with the model's tokenizer, one EOS per document)")

    if target not in ("auto", "measured", "guide"):
        raise ScuError(f"unknown --target {target!r}; use measured (S* 5%, the default), auto (a plain fit's prior) or guide "
                       "(the guide's table)")
    scale = find_scale(model, info.model_type, family, scales_file)
    if target == "guide" or scale is not None:
        target_s: float | str = _target_s(category, scale, tokens, task, reasons, warnings)
    elif target == "auto":
        target_s = "auto"
        reasons.append("S*: auto: a plain fit first, then lambda 1 under the prior scale it gives, no validation data and no "
                       "grid; it trains twice (the time below counts both)")
        warnings.append(f"--target auto: {AUTO_MEASURED}")
    else:
        target_s = ScuSection().target_s
        reasons.append(f"S* = {_pct(target_s)}: the engine's default, the best arm measured on a real model (SmolLM2-135M, "
                       "18k tokens: held-out BPT 0.18% under the best tuned baseline's, with 20% of plain LoRA's "
                       "forgetting under law auto and 22% under pi; on the tiny harness it "
                       "over-regularizes; docs/benchmarks.md). --target auto or guide choose otherwise")
    if target == "guide":
        warnings.append(f"--target guide: {GUIDE_COST}")
    elif task != "general" and scale is None:
        warnings.append(f"--task {task} adjusts the guide's S* only, so it changes nothing here; add --target guide to use it")
    rank, alpha = LORA[category]
    spread = " (guide: r 16-32, alpha 32-64; the low end, as in its validated 3B and 7B runs)" if category == "large" else ""
    reasons.append(f"lora: {category} -> r {rank}, alpha {alpha}{spread}")
    reasons.append(_targets_line(info))
    if target_s == "auto":  # lambda is fixed at 1: no PI gains to set
        gains = {}
        if symptoms:
            warnings.append("--symptom tunes the PI gains, which target auto does not use (lambda is fixed); add --target measured")
    else:
        gains = _controller(scale, symptoms, reasons)
    block = _block_size(info, block_size, reasons)
    plan = _steps(tokens, epochs, *_batch_row(vram_gb, reasons), block, reasons, warnings)
    if vram_gb is None:
        fits = 2 if target_s == "auto" else 1  # auto trains the plain fit first
        step_s = cpu_step_seconds(info, plan.batch * plan.accum, block)
        if ScuSection(**gains).law == "auto" and target_s != "auto":
            step_s *= AUTO_LAW_STEP_COST
            reasons.append(f"time: law auto's penalty step adds about {100 * (AUTO_LAW_STEP_COST - 1):.0f}% a step "
                           "(measured on SmolLM2-135M)")
        plan = _cpu_budget(plan, step_s, cpu_minutes, reasons, warnings, fits)
    hw = _hardware(info, rank, vram_gb, plan.batch, block, reasons, warnings)

    if data is None:
        warnings.append("no --data: set data.train_data in the written config before training")
    if model is None:
        warnings.append("no --model: set model.base_model in the written config before training")
    config = build_config({
        "model": {"base_model": model or "your-model-id", "dtype": hw.dtype, "load_in_4bit": hw.quant == "4bit",
                  "gradient_checkpointing": hw.checkpointing, "trust_remote_code": trust_remote_code},
        "lora": {"rank": rank, "alpha": alpha, "targets": list(info.targets)},
        "scu": {"target_s": target_s, **gains},
        "training": {"batch_size": plan.batch, "gradient_accumulation": plan.accum, "block_size": block,
                     "steps": plan.steps, "warmup_steps": plan.warmup, "weight_decay": 0.0},
        "data": {"train_data": data or "path/to/train.jsonl", "text_field": text_field},
    })
    return Suggestion(config, category, info, None if tokens is None else int(tokens), hw.memory, reasons, warnings)


def _target_s(category: str, scale: Scale | None, tokens: float | None, task: str,
              reasons: list[str], warnings: list[str]) -> float:
    """S*: the category's (or a registered family's), then the dataset and task adjustments, then the floor."""
    target = dict((n, s) for n, _, s in CATEGORIES)[category]
    if scale is not None:
        reasons.append(f"S*: model family {scale.name!r} (registry) -> {_pct(scale.s_target)} "
                       f"instead of {category}'s {_pct(target)}")
        target = scale.s_target
    else:
        reasons.append(f"S*: {category} -> {_pct(target)}")
    if tokens is None:
        reasons.append("dataset adjustment: none (size unknown; pass --tokens or --data)")
    else:
        standard = "> 100M tokens: standard" if tokens > 100e6 else "10M-100M tokens: the guide lists none"
        delta, why = next(((d, w) for bound, d, w in DATA_ADJUSTMENTS if tokens < bound), (0.0, standard))
        target += delta
        reasons.append(f"dataset adjustment: {_count(tokens)} tokens, {why} -> {delta * 100:+.1f}%")
    target += TASK_ADJUSTMENTS[task]
    reasons.append(f"task adjustment: {task} -> {TASK_ADJUSTMENTS[task] * 100:+.1f}%")
    if target < S_FLOOR - 1e-12:
        warnings.append(f"S* {_pct(target)} is below the floor {_pct(S_FLOOR)}; using {_pct(S_FLOOR)}")
        reasons.append(f"floor: {_pct(target)} < {_pct(S_FLOOR)} (smallest S* the guide recommends) -> {_pct(S_FLOOR)}")
        target = S_FLOOR
    target = round(target, 6)
    reasons.append(f"S* = {_pct(target)}")
    return target


def _targets_line(info: ModelInfo) -> str:
    mapped = ", ".join(f"{r} -> {'/'.join(n)}" for r, n in info.roles.items())
    covered = {part for role in info.roles for part in FUSED.get(role, (role,))}
    missing = [r for r in GUIDE_ROLES if r not in covered]
    where = "Llama names (no architecture to read)" if info.name is None else f"read from {info.model_type}'s modules"
    return f"lora targets: {mapped} ({where})" + (f"; no {', '.join(missing)} projection" if missing else "")


def _controller(scale: Scale | None, symptoms: Sequence[str], reasons: list[str]) -> dict[str, Any]:
    """The schema's default law as it is, unless gains are asked for (a registered family's, or the troubleshooting of
    --symptom): those are PI gains, so the config names `law: pi` with them."""
    d = ScuSection()
    family = scale is not None and (scale.kp is not None or scale.ki is not None)
    if d.law == "auto" and not family and not symptoms:
        reasons.append(f"controller: law auto ({LAWS['auto']}), which sets its own gains (docs/method.md, \"law: auto\"); "
                       f"lambda in [{d.lambda_min:g}, {d.lambda_max:g}]")
        return {}
    gains: dict[str, Any] = {"kp": d.kp, "ki": d.ki}
    law = "pi" if d.law == "auto" else d.law
    reasons.append(
        f"PI: the engine's measured gains (law {law!r}: {LAWS[law]}; kp {gains['kp']:g}, ki {gains['ki']:g}, deadband "
        f"{d.deadband:g}, lambda in [{d.lambda_min:g}, {d.lambda_max:g}]); not the guide's 0.8/0.15/0.003/[1e-4, 2.0], "
        "which belong to the reference's law that oscillates (docs/method.md)"
    )
    if family:
        gains.update({k: v for k, v in (("kp", scale.kp), ("ki", scale.ki)) if v is not None})
        reasons.append(f"PI: model family {scale.name!r} -> kp {gains['kp']:g}, ki {gains['ki']:g}")
    for symptom in dict.fromkeys(symptoms):
        key, factor, why = SYMPTOM_FACTORS[symptom]
        gains[key] = round(gains[key] * factor, 6)
        reasons.append(f"PI: {why} (x{factor:.3g}) -> {key} {gains[key]:g}")
    return {"law": law, **gains}


def _block_size(info: ModelInfo, block_size: int | None, reasons: list[str]) -> int:
    """--block-size, else the guide's template capped by the model's context."""
    if block_size is None:
        block_size = min(GUIDE_BLOCK_SIZE, info.max_positions or GUIDE_BLOCK_SIZE)
        cap = f", capped by the model's {info.max_positions} positions" if block_size < GUIDE_BLOCK_SIZE else ""
        reasons.append(f"block size: {block_size} (the guide's template{cap})")
    return block_size


def _batch_row(vram_gb: float | None, reasons: list[str]) -> tuple[int, int]:
    """The guide's (micro-batch, accumulation) row for the VRAM; its smallest without --vram (CPU)."""
    if vram_gb is None:
        _, batch, accum = BATCH_BY_VRAM[-1]
        reasons.append(f"batch: {batch} x {accum} (no --vram: the guide's smallest row; {ModelSection().dtype} weights, "
                       "the schema's default; pass --vram GB to size both for a GPU)")
    else:
        low, batch, accum = next((r for r in BATCH_BY_VRAM if vram_gb >= r[0]), BATCH_BY_VRAM[-1])
        row = f"{low:g} GB{'+' if low == BATCH_BY_VRAM[0][0] else ''}"
        below = f", below its {low:g} GB" if vram_gb < low else ""
        reasons.append(f"batch: {vram_gb:g} GB VRAM -> {batch} x {accum} (guide row {row}{below})")
    return batch, accum


def _hardware(info: ModelInfo, rank: int, vram_gb: float | None, batch: int, block_size: int,
              reasons: list[str], warnings: list[str]) -> _Hardware:
    """The cheapest weight format whose memory estimate fits the VRAM; the schema's dtype on CPU."""
    if vram_gb is None:
        dtype, quant, checkpointing, device = ModelSection().dtype, None, False, "cpu"
    else:
        dtype, device = "bf16", "cuda"
        # Exact changes first: bf16, then checkpointing (slower, same numbers), then 4-bit weights
        # (the guide's table; changes the base model's numerics), then both.
        for quant, checkpointing in ((None, False), (None, True), ("4bit", False), ("4bit", True)):
            if estimate_memory(info, rank, batch, block_size, dtype, quant, checkpointing).total <= vram_gb * GB:
                break
    memory = estimate_memory(info, rank, batch, block_size, dtype, quant, checkpointing, device=device)
    reasons.append(f"memory: {quant or dtype} weights, batch {batch} x {block_size} tokens"
                   f"{', gradient checkpointing' if checkpointing else ''}: {memory.describe()}")
    if vram_gb is not None and memory.total > vram_gb * GB:
        warnings.append(f"estimated {memory.total / GB:.1f} GB exceeds --vram {vram_gb:g} GB even with 4-bit weights and "
                        "gradient checkpointing; lower --block-size or use a larger GPU")
    return _Hardware(dtype, quant, checkpointing, memory)


def _steps(tokens: float | None, epochs: float, batch: int, accum: int, block: int,
           reasons: list[str], warnings: list[str]) -> _Plan:
    """About one epoch within the guide's validated 500-1500 steps, but at most `epochs` passes over the data.

    When that budget cannot fill MIN_STEPS, tokens per step are traded for steps: lambda's settling and
    the warm-up are counted in steps, not tokens, and LoRA trains on small batches (docs/sscu.md's
    fine-tunes use 8 x 128 tokens a step). Accumulation goes first (the micro-batch, and so the speed of
    each forward pass, stays), then the micro-batch, down to one sequence a step; the block size stays,
    as it is the model's context or the user's choice. Only when even one sequence a step leaves fewer
    than MIN_STEPS does the plan run fewer steps, and it warns.
    """
    if tokens is None:
        steps = MAX_STEPS
        reasons.append(f"steps: {steps} (the guide's template; dataset size unknown, so no epoch cap: "
                       "pass --tokens or --data)")
    else:
        budget = epochs * tokens
        row = batch, accum
        row_epochs = MIN_STEPS * batch * accum * block / tokens
        while budget // (batch * accum * block) < MIN_STEPS and batch * accum > 1:
            batch, accum = (batch, accum // 2) if accum > 1 else (batch // 2, accum)
        per_step = batch * accum * block
        fits = int(budget // per_step)
        if fits < 1:
            raise ScuError(f"{int(tokens):,} tokens x {epochs:g} epochs is less than one sequence of {block} tokens; "
                           "lower --block-size or raise --epochs")
        epoch = math.ceil(tokens / per_step)
        steps = min(MAX_STEPS, max(MIN_STEPS, epoch), fits)
        if (batch, accum) != row:
            reasons.append(f"batch: lowered from {row[0]} x {row[1]} to {batch} x {accum} so that {epochs:g} epochs "
                           "give more steps (lambda settles in steps, not tokens)")
        trained = steps * per_step
        reasons.append(f"steps: about one epoch ({epoch} steps) kept within the guide's validated {MIN_STEPS}-{MAX_STEPS}, "
                       f"capped at {epochs:g} epochs: {steps} steps × {per_step:,} tokens = {_count(trained)} tokens "
                       f"≈ {trained / tokens:.3g} epochs of {_count(tokens)}")
        if steps < MIN_STEPS:
            warnings.append(f"{_count(tokens)} tokens are too few for the guide's validated {MIN_STEPS}-{MAX_STEPS} "
                            f"steps ({MIN_STEPS} steps at {row[0]} x {row[1]} would be {row_epochs:.3g} epochs): "
                            f"planning {steps} steps of {per_step:,} tokens (batch {batch} x {accum}) "
                            f"≈ {trained / tokens:.3g} epochs; for more steps lower --block-size or raise --epochs")
    warmup = max(1, round(WARMUP_FRACTION * steps))
    reasons.append(f"warm-up: {warmup} steps (10%, as in the guide's template); "
                   f"learning rate: the schema's {TrainingSection().learning_rate:g}")
    return _Plan(batch, accum, steps, warmup)


def cpu_step_seconds(info: ModelInfo, sequences: int, block: int) -> float:
    """Estimated seconds of one LoRA step of `sequences` x `block` tokens on one idle CPU thread (see CPU_FLOPS)."""
    per_token = 6 * info.params + ATTENTION_FLOPS * info.layers * block * info.hidden
    return per_token * sequences * block / CPU_FLOPS


def _cpu_budget(plan: _Plan, step_s: float, minutes: float | None, reasons: list[str], warnings: list[str],
                fits: int = 1) -> _Plan:
    """The plan's time on one CPU thread at `step_s` seconds a step, over `fits` trainings (auto: plain fit, then SCU);
    with `minutes`, fewer steps to fit it."""
    if minutes is not None and not 0 < minutes < math.inf:
        raise ScuError(f"--cpu-minutes must be a positive, finite number (got {minutes:g}), e.g. --cpu-minutes 30")
    per_step = step_s * fits
    rate = f"est. {step_s:.1f} s a step" + (f", {fits} fits" if fits > 1 else "")
    if minutes is None or plan.steps * per_step <= minutes * 60:
        hint = "" if minutes is not None else "; --cpu-minutes M cuts the plan to fit M minutes"
        reasons.append(f"time: about {plan.steps * per_step / 60:.0f} min on one CPU thread ({rate}{hint})")
        return plan
    steps = max(1, int(minutes * 60 // per_step))
    warnings.append(f"on CPU the plan's {plan.steps} steps would take about {plan.steps * per_step / 60:.0f} min "
                    f"({rate} on one thread); planning {steps} steps to fit --cpu-minutes {minutes:g}; "
                    "pass --vram GB for a GPU plan, or a larger --cpu-minutes")
    warmup = max(1, round(WARMUP_FRACTION * steps))
    reasons.append(f"time: {steps} steps fit {minutes:g} min on one CPU thread ({rate}); "
                   f"warm-up cut to {warmup} steps (10%)")
    return _Plan(plan.batch, plan.accum, steps, warmup)


def _category_range(category: str) -> str:
    names = [n for n, _, _ in CATEGORIES]
    i = names.index(category)
    low = _count(CATEGORIES[i][1]) if i else "0"
    return f"{low}-{_count(CATEGORIES[i + 1][1])}" if i + 1 < len(CATEGORIES) else f"{low}+"
