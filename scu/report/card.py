"""The model card (README.md) of an adapter directory, and uploading the directory to the Hugging Face Hub.

The card is rendered from what the run left behind: metadata.json (base model, controller,
outcome), config.yaml, and eval_results.json when `scu eval` was run on the adapter. It is
rewritten whenever one of them changes, so it never disagrees with the files next to it, and
it is only rendered from a metadata.json that holds every fact it states (a `scu train` run's):
a card that filled gaps with defaults would publish false facts ("SCU off", "tokens seen 0").

Its YAML front matter is what the Hub indexes: base_model (a Hub id only, never a local path),
library_name, tags, datasets (the Hub datasets it was trained on) and a model-index with the
held-out results (validation BPT at the end of training, and `scu eval`'s row for this adapter).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from scu import ScuError
from scu.energy.runtime import ANALYSIS_FILE, METRICS_FILE
from scu.report.plots import FILES as PLOT_FILES
from scu.report.plots import PLOT_DIR
from scu.report.records import atomic_write_json, atomic_write_text, first_line, read_json
from scu.report.schema import SSCU_FILES

CARD = "README.md"
EVAL_RESULTS = "eval_results.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MLX_WEIGHTS = "adapters.safetensors"
# What --push-to-hub uploads, when present (the card is rendered for the repo): the adapter and the run's
# records, never the optimizer state or whatever else lies in the directory.
PUSHED = (
    "adapter_config.json", PEFT_WEIGHTS, MLX_WEIGHTS, "metadata.json", "metrics.jsonl", "config.yaml", EVAL_RESULTS,
    *SSCU_FILES, METRICS_FILE, ANALYSIS_FILE, *(f"{PLOT_DIR}/{name}" for name in PLOT_FILES),
)


def adapter_format(adapter_dir: Path) -> str | None:
    """'peft', 'mlx', or None when the directory holds no adapter weights."""
    if (adapter_dir / PEFT_WEIGHTS).exists() or (adapter_dir / "adapter_model.bin").exists():
        return "peft"
    if (adapter_dir / MLX_WEIGHTS).exists():
        return "mlx"
    return None


def portable(obj: Any, run_dir: Path) -> Any:
    """`obj` with each absolute local path relative to the run when inside it, else cut to its last component:
    what is pushed must not reveal, or depend on, this machine's directories."""
    if isinstance(obj, dict):
        return {k: portable(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, run_dir) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        path, root = Path(obj).resolve(), run_dir.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    return obj


def _run_file(d: Path, name: str, for_hub: bool) -> Any:
    """A run's JSON or YAML file, parsed (None when absent); paths made `portable` for the Hub."""
    path = d / name
    if path.suffix == ".yaml":
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    else:
        data = read_json(path)
    return portable(data, d) if for_hub else data


# The facts the card states, so what metadata.json must hold (scu.session.ControlSession.metadata writes them all).
CARD_FACTS = ("base_model", "scu_enabled", "status", "steps", "steps_planned", "tokens_seen", "config")
LORA_FACTS = ("rank", "alpha", "targets")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_LOCAL_SUFFIXES = {".txt", ".jsonl", ".json", ".gz", ".zst", ".parquet", ".gguf", ".safetensors", ".bin", ".yaml"}


def card_problem(adapter_dir: Path) -> str | None:
    """Why no truthful card can be rendered for `adapter_dir` (None when one can): no metadata.json, or one that
    lacks facts the card states, as the metadata another tool writes may."""
    meta = read_json(adapter_dir / "metadata.json")
    if meta is None:
        return "no metadata.json (not a `scu train` run)"
    if not isinstance(meta, dict):
        return "metadata.json is not a JSON object (not a `scu train` run)"
    missing = [k for k in CARD_FACTS if k not in meta]
    lora = meta.get("config", {}).get("lora") if isinstance(meta.get("config"), dict) else None
    missing += [f"config.lora.{k}" for k in LORA_FACTS if not isinstance(lora, dict) or k not in lora]
    if meta.get("scu_enabled") and meta.get("target_s") is None:
        missing.append("target_s")
    if missing:
        return f"metadata.json lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} (not written by `scu train`)"
    return None


def hub_id(spec: Any, kind: str = "models") -> str | None:
    """The Hub id that `spec` (a base model or data setting) names, or None for local data.

    An id stays; a path into the Hub cache (`.../models--owner--name/snapshots/...`) gives its id back; any
    other local path (existing, absolute, relative, or a file by its suffix) is None: it means nothing on the Hub.
    """
    if not isinstance(spec, str) or not spec:
        return None
    for part in Path(spec).parts:
        if part.startswith(f"{kind}--"):
            return part[len(kind) + 2 :].replace("--", "/", 1)
    local = os.path.isabs(spec) or spec.startswith((".", "~")) or Path(spec).expanduser().exists()
    if local or Path(spec).suffix.lower() in _LOCAL_SUFFIXES:
        return None
    return spec if _HUB_ID.fullmatch(spec) else None


def hub_datasets(data_cfg: dict[str, Any]) -> list[str]:
    """The Hub datasets the run trained and validated on: `data.train_data` / `val_data` given as Hub ids, or the
    sources recorded in the prep.json of a directory `scu data prepare` made from the Hub."""
    from scu.data.prepare import PREP_FILE

    found: list[str] = []
    for spec in (data_cfg.get("train_data"), data_cfg.get("val_data")):
        prep = read_json(Path(spec) / PREP_FILE) if isinstance(spec, str) and Path(spec).is_dir() else None
        if isinstance(prep, dict):
            sources = [prep.get("source"), prep.get("val_source")]
            ids = [src.get("hub_id") for src in sources if isinstance(src, dict) and src.get("kind") == "hub"]
        else:
            ids = [hub_id(spec, "datasets")]
        found += [i for i in ids if i and i not in found]
    return found


def _data_name(spec: Any) -> str:
    """How the card names a data setting: its Hub id, else the file or folder name (never a local path)."""
    return hub_id(spec, "datasets") or Path(str(spec)).name


def model_index(meta: dict[str, Any], results: dict[str, Any] | None) -> list[Any]:
    """The held-out results as Hub EvalResults: the validation BPT at the end of training, and this adapter's
    row of `scu eval` (named in eval_results.json by `adapter`), each with its perplexity."""
    from huggingface_hub import EvalResult

    def measured(data: Any, split: str | None, bpt: float, source: str) -> list[Any]:
        name = _data_name(data)
        common = dict(task_type="text-generation", task_name="Causal language modeling", dataset_type=name,
                      dataset_name=f"{name} ({source})", dataset_split=split)
        return [EvalResult(**common, metric_type="bpt", metric_value=round(bpt, 6), metric_name="held-out bits per token"),
                EvalResult(**common, metric_type="perplexity", metric_value=round(2.0**bpt, 4), metric_name="perplexity")]

    out: list[Any] = []
    data = meta["config"].get("data") or {}
    if meta.get("val_bpt") is not None:
        held_out = data.get("val_data") or data.get("train_data")
        source = "validation at the end of training" if data.get("val_data") else "documents held out of training"
        out += measured(held_out, "validation", meta["val_bpt"], source)
    row = next((r for r in (results or {}).get("results", []) if r.get("name") == (results or {}).get("adapter")), None)
    if row is not None:
        out += measured(results["data"], None, row["bpt"], "scu eval")
    return out


def front_matter(meta: dict[str, Any], results: dict[str, Any] | None, name: str, fmt: str | None) -> str:
    """The card's YAML header for the Hub, from the run's own (not `portable`) records, so ids are judged on this
    machine: a local base model is left out of `base_model` rather than named by a path."""
    from huggingface_hub import ModelCardData

    library = "mlx" if fmt == "mlx" else "peft"
    data = ModelCardData(
        base_model=hub_id(meta["base_model"]), library_name=library, pipeline_tag="text-generation",
        tags=["peft", "lora", "scu", *(["mlx"] if library == "mlx" else []), "text-generation"],
        datasets=hub_datasets(meta["config"].get("data") or {}) or None,
        model_name=name, eval_results=model_index(meta, results) or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def method_section(meta: dict[str, Any]) -> list[str]:
    cfg = meta["config"]
    lora = cfg["lora"]
    lines = [
        "## Method",
        "",
        f"LoRA (rank {lora['rank']}, alpha {lora['alpha']}, on {', '.join(lora['targets'])}) "
        f"fine-tuned from `{meta['base_model']}`.",
    ]
    scu = cfg.get("scu") or {}
    if not meta["scu_enabled"]:
        lines += ["", "Plain LoRA (SCU off)."]
    elif scu.get("lambda_min") == scu.get("lambda_max"):
        lines += ["", f"Trained with a fixed SCU penalty λ = {scu.get('lambda_min'):g} on ParamBPT (no PI control)."]
    else:
        lines += [
            "",
            "Trained with SCU (the Shannon Control Unit): the loss adds λ·ParamBPT, the description length of the "
            "learned change in bits per training token, and a PI controller sets λ every optimizer step so that "
            f"S = ParamBPT / (DataBPT + ParamBPT) tracks S* = {100 * meta['target_s']:g}%.",
        ]
    return lines + [""]


def outcome_section(meta: dict[str, Any]) -> list[str]:
    steps = f"{meta['steps']} of {meta['steps_planned']} planned optimizer steps ({meta['status']})"
    rows = [("Steps", steps), ("Tokens seen", f"{meta['tokens_seen']:,}")]
    if meta.get("equilibrium_step") is not None:
        rows.append(("λ-equilibrium step", str(meta["equilibrium_step"])))
    if meta.get("weights_averaged_over"):
        rows.append(("Weights", f"averaged over about the last {meta['weights_averaged_over']} steps (auto-stop)"))
    if meta.get("scu_enabled"):
        rows += [
            ("Final S (smoothed)", "n/a" if meta.get("final_s_hat") is None else f"{100 * meta['final_s_hat']:.2f}%"),
            ("Final λ", _fmt(meta.get("final_lambda"), ".4g")),
            ("λ range", " to ".join(_fmt(v, ".3g") for v in meta.get("lambda_range", [None, None]))),
        ]
    rows += [
        ("Final training DataBPT", _fmt(meta.get("final_data_bpt"))),
        ("Held-out BPT at the end of training", _fmt(meta.get("val_bpt"))),
    ]
    lines = ["## Training outcome", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return lines + [""]


def eval_section(results: dict[str, Any] | None) -> list[str]:
    if not results:
        return [
            "## Evaluation", "",
            "No `scu eval` run yet. `scu eval --model BASE --adapter THIS_DIR --data HELD_OUT.txt` adds the table here.", "",
        ]
    level = round(100 * results["bootstrap"]["level"])
    lines = [
        "## Evaluation",
        "",
        f"`scu eval` on `{results['data']}`: {results['documents']:,} documents, {results['tokens']:,} scored tokens, "
        f"block size {results['block_size']}, stride {results['stride']}; token-weighted bits per token, "
        f"{level}% bootstrap intervals over documents ({results['bootstrap']['samples']} resamples).",
        "",
        f"| model | BPT | {level}% CI | perplexity | ΔBPT vs base | {level}% CI |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["results"]:
        delta = "" if r["delta_bpt"] is None else f"{r['delta_bpt']:+.4f}"
        dci = "" if r["delta_ci"] is None else f"[{r['delta_ci'][0]:+.4f}, {r['delta_ci'][1]:+.4f}]"
        lines.append(
            f"| {r['name']} | {r['bpt']:.4f} | [{r['bpt_ci'][0]:.4f}, {r['bpt_ci'][1]:.4f}] | {r['perplexity']:.2f} | {delta} | {dci} |"
        )
    return lines + [""]


def usage_section(adapter_dir: Path, base: str, fmt: str | None, where: str | None) -> list[str]:
    where = where or str(adapter_dir.resolve())
    peft = [
        "### PEFT (PyTorch)",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({base!r})",
        f"model = PeftModel.from_pretrained(base, {where!r})",
        "```",
        "",
    ]
    mlx_dir = where if fmt == "mlx" else f"{adapter_dir.name}-mlx"
    mlx = ["### MLX (Apple silicon)", "", "```bash"]
    if fmt != "mlx":
        mlx.append(f"scu export {where} --to mlx --out {mlx_dir}   # PEFT -> mlx-lm adapter")
    mlx += [f'mlx_lm.generate --model {base} --adapter-path {mlx_dir} --prompt "Hello"', "```", ""]
    if fmt == "mlx":
        peft[0:0] = [f"This directory holds an mlx-lm adapter; for PEFT, first run `scu export {where} --to peft --out OUT`.", ""]
    return ["## Usage", "", *peft, *mlx]


def active_config(config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The config without the sections that did nothing in this run: those with `enabled: false`, and the
    equilibrium detector's when it did not run (SCU off, or λ fixed). config.yaml keeps them all."""
    ran = meta.get("controllers") or {}

    def idle(name: str, section: Any) -> bool:
        return isinstance(section, dict) and (section.get("enabled") is False or (name == "equilibrium" and name not in ran))

    return {name: section for name, section in config.items() if not idle(name, section)}


def render_card(adapter_dir: str | Path, repo_id: str | None = None) -> str:
    """The card's Markdown for `adapter_dir`; with `repo_id`, for that Hub repo (usage snippets point at it,
    local paths are made `portable`). Refused, in one line, for a directory whose records cannot back it."""
    d = Path(adapter_dir)
    problem = card_problem(d)
    if problem:
        raise ScuError(f"{d}: {problem}; no model card is written from it")
    for_hub = repo_id is not None
    own_meta, own_results = read_json(d / "metadata.json"), read_json(d / EVAL_RESULTS)
    meta = portable(own_meta, d) if for_hub else own_meta
    results = portable(own_results, d) if for_hub else own_results
    base = meta["base_model"]
    fmt = adapter_format(d)
    config = active_config(_run_file(d, "config.yaml", for_hub) or meta["config"], meta)
    lines = [
        front_matter(own_meta, own_results, repo_id or d.name, fmt),
        f"# {repo_id or d.name}",
        "",
        f"A LoRA adapter for `{base}`, trained with `{meta.get('trainer', 'scu train')}`.",
        "",
        *method_section(meta),
        *outcome_section(meta),
        *eval_section(results),
        *usage_section(d, base, fmt, repo_id),
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
        "Sections that did nothing in this run are left out; the full config, defaults included, is in `config.yaml`. "
        "The run's step-by-step record is in `metrics.jsonl`, its outcome in `metadata.json`.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(adapter_dir: str | Path, repo_id: str | None = None) -> Path:
    path = Path(adapter_dir) / CARD
    atomic_write_text(path, render_card(adapter_dir, repo_id))
    return path


def add_eval_results(adapter_dir: str | Path, results: dict[str, Any], adapter: str) -> Path:
    """`scu eval`'s results into a run's eval_results.json (with `adapter`, the name of this adapter's row) and
    its card re-rendered: the eval table and model-index are what change. Refused, touching nothing, where
    the run's records cannot back a card."""
    d = Path(adapter_dir)
    problem = card_problem(d)
    if problem:
        raise ScuError(f"{d}: {problem}")
    atomic_write_json(d / EVAL_RESULTS, {**results, "adapter": adapter})
    return write_model_card(d)


def push_to_hub(adapter_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload the adapter and the run's records (PUSHED) to the Hub in one commit, with the card rendered for `repo_id`.

    JSON and YAML files go up with local paths made `portable`. Nothing on disk changes (the local card
    keeps pointing at the local directory). Without a token or a network the error says so and that
    everything is still in `adapter_dir`.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    d = Path(adapter_dir)
    keep = f"nothing was uploaded; the adapter is kept in {d}"
    if adapter_format(d) is None:
        raise ScuError(f"{d} holds no adapter weights ({PEFT_WEIGHTS} or {MLX_WEIGHTS}); push a finished run directory")
    require_token(d)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=_hub_content(d, name))
                  for name in PUSHED if (d / name).is_file()]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=render_card(d, repo_id).encode()))
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message="Upload SCU LoRA adapter")
    except OfflineModeIsEnabled:
        raise ScuError(f"HF_HUB_OFFLINE is set, so the Hub cannot be reached; {keep}") from None
    except HfHubHTTPError as e:
        raise ScuError(f"the Hub refused the upload to {repo_id} ({first_line(e)}); {keep}") from None
    except Exception as e:  # no network: the HTTP client's connection/DNS/timeout errors
        raise ScuError(f"could not reach the Hugging Face Hub ({type(e).__name__}: {first_line(e)}); {keep}") from None
    return str(info.commit_url)


def _hub_content(d: Path, name: str) -> str | bytes:
    """The file to upload (its path), or for JSON and YAML its content with `portable` paths."""
    data = _run_file(d, name, for_hub=True) if name.endswith((".json", ".yaml")) else None
    if data is None:
        return str(d / name)
    text = json.dumps(data, indent=2) + "\n" if name.endswith(".json") else yaml.safe_dump(data, sort_keys=False)
    return text.encode()


def require_token(adapter_dir: str | Path) -> None:
    """Refuse early (before a run starts) when no Hugging Face token is configured."""
    from huggingface_hub import get_token

    if get_token() is None:
        raise ScuError(f"no Hugging Face token (run `hf auth login` or set HF_TOKEN); nothing was uploaded, {adapter_dir} stays local")

