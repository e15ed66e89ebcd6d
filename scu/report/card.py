"""The model card (README.md) of an adapter directory, and uploading the directory to the Hugging Face Hub.

The card is rendered from what the run left behind: metadata.json (base model, controller,
outcome), config.yaml, and eval_results.json when `scu eval` was run on the adapter. It is
rewritten whenever one of them changes, so it never disagrees with the files next to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from scu import ScuError
from scu.energy.runtime import ANALYSIS_FILE, METRICS_FILE
from scu.report.plots import FILES as PLOT_FILES
from scu.report.plots import PLOT_DIR
from scu.report.records import atomic_write_text, first_line, read_json

CARD = "README.md"
EVAL_RESULTS = "eval_results.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MLX_WEIGHTS = "adapters.safetensors"
SSCU_FILES = ("scu_training_metrics.json", "scu_training_summary.json", "simple_training_config.json")
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


def _hub_id(base: str) -> bool:
    """A hub model id (owner/name), as opposed to a local directory: only those go into the card's metadata."""
    return not Path(base).exists() and base.count("/") == 1 and " " not in base


def front_matter(meta: dict[str, Any]) -> str:
    from huggingface_hub import ModelCardData

    base = meta.get("base_model") or ""
    data = ModelCardData(
        library_name="peft", base_model=base if _hub_id(base) else None, tags=["scu", "lora", "peft", "text-generation"],
        pipeline_tag="text-generation",
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def method_section(meta: dict[str, Any]) -> list[str]:
    cfg = meta.get("config", {})
    lora = cfg.get("lora", {})
    lines = [
        "## Method",
        "",
        f"LoRA (rank {lora.get('rank')}, alpha {lora.get('alpha')}, on {', '.join(lora.get('targets', []))}) "
        f"fine-tuned from `{meta.get('base_model')}`.",
    ]
    scu = cfg.get("scu", {})
    if not meta.get("scu_enabled"):
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
    steps = f"{meta.get('steps')} of {meta.get('steps_planned')} planned optimizer steps ({meta.get('status')})"
    rows = [("Steps", steps), ("Tokens seen", f"{meta.get('tokens_seen', 0):,}")]
    if meta.get("equilibrium_step") is not None:
        rows.append(("λ-equilibrium step", str(meta["equilibrium_step"])))
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


def render_card(adapter_dir: str | Path, repo_id: str | None = None) -> str:
    """The card's Markdown for `adapter_dir`; with `repo_id`, for that Hub repo (usage snippets point at it,
    local paths are made `portable`)."""
    d = Path(adapter_dir)
    for_hub = repo_id is not None
    meta = _run_file(d, "metadata.json", for_hub)
    if meta is None:
        raise ScuError(f"{d} has no metadata.json; a model card is written for `scu train` run directories")
    base = meta.get("base_model", "BASE_MODEL")
    config = yaml.safe_dump(_run_file(d, "config.yaml", for_hub) or meta.get("config", {}), sort_keys=False)
    lines = [
        front_matter(meta),
        f"# {repo_id or d.name}",
        "",
        f"A LoRA adapter for `{base}`, trained with `scu train`.",
        "",
        *method_section(meta),
        *outcome_section(meta),
        *eval_section(_run_file(d, EVAL_RESULTS, for_hub)),
        *usage_section(d, base, adapter_format(d), repo_id),
        "## Config",
        "",
        "```yaml",
        config.rstrip(),
        "```",
        "",
        "The run's step-by-step record is in `metrics.jsonl`, its outcome in `metadata.json`.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(adapter_dir: str | Path, repo_id: str | None = None) -> Path:
    path = Path(adapter_dir) / CARD
    atomic_write_text(path, render_card(adapter_dir, repo_id))
    return path


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

