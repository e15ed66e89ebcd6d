"""Does λ-equilibrium auto-stop fire, and what does stopping there cost? Side by side with validation early stopping.

    python -m bench.autostop [--scale cpu|real|quick] [--seeds 3] [--first-seed 0] [--rich-seeds 1] [--first-rich-seed 0]
        [--budget 3] [--target S | --auto]
        [--set KEY=VALUE ... --name NAME] [--equilibrium KEY=VALUE ...] [--jobs 2]

The harness's base, data and protocol (bench/scu_vs_baselines.py, same scale), with the step budget multiplied
by `--budget`, so that a run has time to reach its regularized optimum. Arms: the scale's headline SCU arm at
the main size (overfits within the budget; every seed) and at the data-rich size (one seed). Each run goes
through `scu.torch.loop.train` with the product's detector (scu.core.equilibrium, default tolerances and
window); the harness only observes where it fires (held-out BPT measured there) and carries on to the budget,
with held-out BPT at 24 (SmolLM2: 12) evenly spaced steps and validation early stopping (patience 3) tracked on the way.
`--rich-seeds N` runs the data-rich size on seeds 0 … N−1 (from `--first-rich-seed` on, if given).
Writes results.json, results.md and autostop.png (held-out BPT and λ along every run, with both stopping points).

Per run: the step where auto-stop fires, the steps it saves, and its held-out BPT against the best held-out
checkpoint of the same run (the issue's goal: fires in every seed, ≥ 30% saved at ≤ 1% cost; in a data-rich
run, silent while held-out BPT still falls by more than 0.5% per 100 steps, read as the least-squares slope of the
held-out evaluations within 50 steps of the stop; the difference between the two evaluations around it is reported
beside it). Every job is cached under
--out/runs, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness.runner import Job, Settings
from bench.harness.settings import key_values, scu_settings
from bench.scu_vs_baselines import (
    DEFAULT_DATA,
    QUICK,
    REAL_SCALES,
    SCALES,
    Runner,
    prepare_real,
    prepare_scale,
    size_label,
)
from scu.report.records import atomic_path, atomic_write_json, atomic_write_text

HEADLINE_TARGET = {"cpu": 0.875, "quick": 0.5}  # the tiny harness's phase-1 S* (docs/benchmarks.md); real: the product default
EVALS = {"quick": 8, "cpu": 24, "real": 12}  # held-out (and validation) evaluations per run: a SmolLM2 one costs ~1 min
SAVE_GOAL, COST_GOAL, RICH_SLOPE = 0.30, 0.01, 0.005
SLOPE_HALF_WINDOW = 50  # steps either side of the stop whose held-out evaluations the fitted slope reads


def plan(scale_name: str, main: str, rich: str, seeds: range, target: float | None,
         setting: tuple[str, dict[str, Any]] | None = None, rich_seeds: range = range(1)) -> list[Job]:
    """The headline SCU arm (or S* = `target`) at the main size for every seed in `seeds`, and at the data-rich size
    for every seed in `rich_seeds`.

    `setting` (name, scu settings): the arm trains with those settings on top and is named after them."""
    scu: dict[str, Any] = {"enabled": True}
    if target is not None or scale_name in HEADLINE_TARGET:
        scu["target_s"] = target or HEADLINE_TARGET[scale_name]
    arm = "scu_headline" if target is None else f"scu_target={target:g}"
    if setting is not None:
        arm = f"{arm}_{setting[0]}"
        scu.update(setting[1])
    jobs = [Job(arm, seed, main, {"scu": scu}, early_stop=True) for seed in seeds]
    return jobs + [Job(f"N={rich}/{arm}", seed, rich, {"scu": scu}, early_stop=True) for seed in rich_seeds]


def auto_jobs(runner: Runner, jobs: list[Job], base: str, rank: int) -> list[Job]:
    """`target_s: auto` in place of each job: its plain fit (same seed, size and budget) is run first, then the job
    trains at lambda 1 under sigma^2 = ||dW_plain||^2 / p, as `scu train` does in its two passes."""
    from bench.prior_fit import fit_scu, lora_dof

    def renamed(j: Job, arm: str) -> str:  # keeps the size prefix (N=.../)
        return j.arm.replace(j.arm.split("/")[-1], arm)

    plain = {j.key: Job(renamed(j, "plain_fit"), j.seed, j.size, {"scu": {"enabled": False}}, evals="final") for j in jobs}
    runner.run(list(plain.values()), "plain fits")
    dof = lora_dof(base, rank)
    return [replace(j, arm=renamed(j, "scu_auto_fit"), config={**j.config, "scu": fit_scu(runner.results[plain[j.key].key], dof)})
            for j in jobs]


def slope_per_100(curve: list[dict[str, Any]], step: int) -> float | None:
    """Relative change of held-out BPT per 100 steps (a fraction; negative: falling) between the two evaluations
    around `step`. Reported beside fitted_slope_per_100; alone it reads one evaluation's noise as a trend."""
    pts = [(c["step"], c["test"]) for c in curve if "test" in c]
    after = [p for p in pts if p[0] >= step]
    before = [p for p in pts if p[0] < step]
    if not after or not before:
        return None
    (s0, b0), (s1, b1) = before[-1], after[0]
    return (b1 / b0 - 1.0) * 100 / (s1 - s0)


def fitted_slope_per_100(curve: list[dict[str, Any]], step: int,
                         half_window: int = SLOPE_HALF_WINDOW) -> tuple[float, float] | None:
    """Least-squares slope of held-out BPT against step over the evaluations within `half_window` steps of `step`,
    per 100 steps and relative to the fit's value at `step` (a fraction; negative: falling), and its standard error
    (None with fewer than 3 evaluations there). The 100 steps around a stop, as the goal's rate is per 100 steps."""
    pts = [(c["step"], c["test"]) for c in curve if "test" in c and abs(c["step"] - step) <= half_window]
    if len(pts) < 3:
        return None
    (slope, intercept), cov = np.polyfit(*zip(*pts), 1, cov=True)  # cov scaled by the residuals, n - 2 dof
    level = slope * step + intercept
    return float(100 * slope / level), float(100 * math.sqrt(cov[0, 0]) / level)


def judge(r: dict[str, Any], budget: int) -> dict[str, Any]:
    """One run against the issue's goals."""
    curve = [c for c in r["curve"] if "test" in c]
    best = min(curve, key=lambda c: c["test"])
    out: dict[str, Any] = {"arm": r["arm"], "seed": r["seed"], "size": r["size"], "budget": budget,
                           "tokens_per_epoch": r["tokens_per_epoch"], "best_step": best["step"], "best_test": best["test"],
                           "final_test": r["final"]["test"], "curve": [(c["step"], c["test"]) for c in curve]}
    auto = r.get("auto_stop")
    if auto is None:
        out["auto"] = None
    else:
        # what auto-stop saves: the weights averaged as the run's equilibrium.average_from says, where the run
        # measured them; runs from before the average was measured have the last step's weights only
        start = r.get("config", {}).get("equilibrium", {}).get("average_from", "start")
        saved = auto.get("averaged" if start == "start" else f"averaged_{start}", auto)
        judged = auto.get("averaged_judged")
        out["auto"] = {"step": auto["step"], "saved": 1 - auto["step"] / budget, "averaged": saved is not auto,
                       "average_from": start, "test": saved["test"], "cost": saved["test"] / best["test"] - 1,
                       "last_step_test": auto["test"], "last_step_cost": auto["test"] / best["test"] - 1,
                       "start_average_cost": auto["averaged"]["test"] / best["test"] - 1 if "averaged" in auto else None,
                       "judged_average_cost": None if judged is None else judged["test"] / best["test"] - 1,
                       "heldout_slope_per_100": slope_per_100(r["curve"], auto["step"]),
                       "heldout_fitted_slope_per_100": fitted_slope_per_100(r["curve"], auto["step"])}
    early = r.get("early_stop")
    if early is not None:
        stop = early["stop_step"] if early["triggered"] else budget
        out["early_stop"] = {"stop_step": stop, "best_val_step": early["best_val_step"], "test": early["test"],
                             "saved": 1 - stop / budget, "cost": early["test"] / best["test"] - 1, "triggered": early["triggered"]}
    return out


def markdown(rows: list[dict[str, Any]], note: str) -> str:
    lines = [f"# Auto-stop against validation early stopping ({note})", "",
             "| run | budget | epochs in budget | auto-stop step | saved | held-out cost vs best (saved adapter) | last step's weights "
             "| average over the judged steps | held-out slope there, fitted ± s.e. (%/100 steps) "
             "| between the evaluations around it | early stop step | saved | cost | best held-out (step) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, e = r["auto"], r.get("early_stop") or {}
        epochs = r["budget"] * r["tokens_per_step"] / r["tokens_per_epoch"] if r.get("tokens_per_step") else float("nan")
        fitted = None if a is None else a.get("heldout_fitted_slope_per_100")
        judged = None if a is None else a.get("judged_average_cost")
        auto = ("did not fire | — | — | — | — | — | —" if a is None else
                f"{a['step']} | {100 * a['saved']:.0f}% | {100 * a['cost']:+.2f}%{'' if a['averaged'] else ' (last step)'} | "
                f"{100 * a['last_step_cost']:+.2f}% | " + ("—" if judged is None else f"{100 * judged:+.2f}%") + " | "
                + ("—" if fitted is None else f"{100 * fitted[0]:+.2f} ± {100 * fitted[1]:.2f}") + " | "
                + ("—" if a["heldout_slope_per_100"] is None else f"{100 * a['heldout_slope_per_100']:+.2f}"))
        early = "— | — | —" if not e else f"{e['stop_step']} | {100 * e['saved']:.0f}% | {100 * e['cost']:+.2f}%"
        lines.append(f"| {r['size']}/seed{r['seed']} | {r['budget']} | {epochs:.1f} | {auto} | {early} | "
                     f"{r['best_test']:.4f} ({r['best_step']}) |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], judged: list[dict[str, Any]], path: Path, title: str) -> None:
    """Per run (one color): held-out BPT at its evaluations (top) and λ per step (bottom), with where auto-stop fired
    (filled marker: the saved adapter's held-out BPT) and where validation early stopping stopped (open marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2))
    settled: list[float] = []  # λ after the first tenth of each run: the start-up transient would flatten the drift
    for i, (r, j) in enumerate(zip(results, judged)):
        color, label = f"C{i % 10}", f"{r['size']} seed {r['seed']}"
        steps, bpt = zip(*j["curve"])
        top.plot(steps, bpt, "-", color=color, label=label, lw=1.2)
        if j["auto"] is not None:
            top.plot(j["auto"]["step"], j["auto"]["test"], "o", color=color, ms=8)
        if j.get("early_stop"):
            top.plot(j["early_stop"]["stop_step"], j["early_stop"]["test"], "s", mfc="none", color=color, ms=8)
        lam = [(row["step"], row["lambda"]) for row in r["rows"] if row.get("lambda") is not None]
        if lam:
            bottom.plot(*zip(*lam), "-", color=color, lw=1)
            settled += [v for step, v in lam if step > len(r["rows"]) / 10]
        if j["auto"] is not None:
            bottom.axvline(j["auto"]["step"], color=color, ls=":", lw=1)
    top.plot([], [], "ko", label="auto-stop fired (saved adapter)")
    top.plot([], [], "ks", mfc="none", label="validation early stopping")
    top.set_ylabel("held-out BPT")
    top.set_title(title)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_yscale("log")
    if settled:
        bottom.set_ylim(min(settled) / 1.5, max(settled) * 1.5)
    bottom.set_ylabel("λ")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main_size_stops(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where auto-stop fired in the main size's runs (the data-rich arms are named N=...)."""
    return [r["auto"] for r in rows if not r["arm"].startswith("N=") and r["auto"] is not None]


def goals_of(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's four goals over judged runs: the main size's seeds, and the data-rich runs (arms named N=...); None
    where no run of that kind was judged."""
    main_rows = [r for r in rows if not r["arm"].startswith("N=")]
    rich_rows = [r for r in rows if r["arm"].startswith("N=")]
    fired = main_size_stops(rows)
    main = bool(main_rows)  # without main-size runs (--seeds 0) their three goals are not judged
    return {
        "fires_every_seed": len(fired) == len(main_rows) if main else None,
        "saves_30pct": bool(fired) and min(a["saved"] for a in fired) >= SAVE_GOAL if main else None,
        "cost_1pct": bool(fired) and max(a["cost"] for a in fired) <= COST_GOAL if main else None,
        "rich_silent_while_falling": all(r["auto"] is None or (r["auto"]["heldout_fitted_slope_per_100"] or (0.0,))[0]
                                         >= -RICH_SLOPE for r in rich_rows) if rich_rows else None,
    }


def write_report(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], results: list[dict[str, Any]],
                 count: str) -> None:
    """results.json (`summary` plus the judged runs and goals), results.md and autostop.png."""
    goals = goals_of(rows)
    fired = main_size_stops(rows)
    summary = {**summary, "runs": rows, "goals": goals,
               "median_saved": statistics.median(a["saved"] for a in fired) if fired else None,
               "median_cost": statistics.median(a["cost"] for a in fired) if fired else None}
    atomic_write_json(out / "results.json", summary)
    steps, scale = summary["budget_steps"], summary["scale"]
    atomic_write_text(out / "results.md", markdown(rows, f"{scale}, {count}, budget {steps} steps, goals {goals}"))
    if rows:
        plot(results, rows, out / "autostop.png", f"auto-stop and early stopping ({scale}, budget {steps} steps, "
             f"detector {summary.get('equilibrium') or 'defaults'})")


def reread(out: Path) -> None:
    """Judge a finished results folder again with today's judge (its runs/ keep every curve): no training."""
    if not (out / "results.json").is_file():
        raise SystemExit(f"{out}: no results.json to re-read; name a folder bench.autostop wrote (bench/results/autostop/...)")
    summary = json.loads((out / "results.json").read_text())
    loaded = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/seed*.json"))]
    runs = {(r["arm"], r["seed"]): r for r in loaded}
    missing = [(row["arm"], row["seed"]) for row in summary["runs"] if (row["arm"], row["seed"]) not in runs]
    if missing:
        raise SystemExit(f"{out}: no run file for {missing[0]}; rerun its benchmark instead of --reread")
    results = [runs[(row["arm"], row["seed"])] for row in summary["runs"]]
    rows = [judge(r, summary["budget_steps"]) | {"tokens_per_step": row.get("tokens_per_step")}
            for r, row in zip(results, summary["runs"])]
    write_report(out, {k: v for k, v in summary.items() if k not in ("runs", "goals", "median_saved", "median_cost")},
                 rows, results, f"{len(rows)} runs, re-read")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=["quick", "cpu", "real"], default="cpu")
    ap.add_argument("--seeds", type=int, default=3, help="seeds at the main size")
    ap.add_argument("--rich-seeds", type=int, default=1,
                    help="seeds at the data-rich size: first-rich-seed … first-rich-seed+N−1")
    ap.add_argument("--first-rich-seed", type=int, default=0, help="the data-rich size's first seed")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="the main size runs seeds first-seed … first-seed+seeds−1 (new seeds for a setting chosen on others)")
    ap.add_argument("--budget", type=float, default=3.0, help="multiple of the harness's step budget")
    ap.add_argument("--target", type=float, help="S* of the SCU arm (default: the scale's headline S*)")
    ap.add_argument("--auto", action="store_true",
                    help="the arm is `target_s: auto` as `scu train` runs it: a plain fit of the same budget first, then "
                    "lambda 1 under its prior scale (bench.prior_fit)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="scu settings of the arm on top of its S*, e.g. penalty_step=decoupled (needs --name)")
    ap.add_argument("--name", help="the --set arm's name: its runs and results go under it")
    ap.add_argument("--no-rich", action="store_true", help="skip the data-rich run")
    ap.add_argument("--equilibrium", nargs="*", default=[], metavar="KEY=VALUE",
                    help="detector settings other than the product's defaults, e.g. window=50 lambda_tolerance=0.1")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--out", help="default bench/results/autostop/SCALE")
    ap.add_argument("--reread", nargs="+", metavar="DIR",
                    help="judge finished results folders again from their runs (no training), then stop")
    args = ap.parse_args(argv)
    if args.reread:
        for folder in args.reread:
            reread(Path(folder))
            print(f"re-read {folder}: {json.loads((Path(folder) / 'results.json').read_text())['goals']}", flush=True)
        return 0
    if bool(args.set) != bool(args.name) or (args.name and not args.name.replace("_", "").isalnum()):
        raise SystemExit("--set and --name go together, and --name is letters, digits and _ (it names a folder)")
    if args.set and args.auto:
        raise SystemExit("--auto fixes lambda from a plain fit; drop --set, or drop --auto to run the settings")
    setting = (args.name, scu_settings(args.set)) if args.set else None
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    data_dir = Path(args.data_dir).resolve()
    if args.scale == "real":
        scale = REAL_SCALES["real"]
        base, manifest, work = prepare_real(scale, data_dir)
        main_label, rich_label = size_label(scale.main_tokens), size_label(scale.rich_tokens)
    else:
        scale = QUICK if args.scale == "quick" else SCALES[args.scale]
        base, manifest, work = prepare_scale(scale, data_dir)
        main_label, rich_label = size_label(scale.main_tokens), size_label(scale.transfer_tokens[-1])
    steps = round(scale.run.steps * args.budget)
    s: Settings = replace(scale.run, base_model=str(base), steps=steps, val_evals=EVALS[args.scale], test_evals=EVALS[args.scale])
    jobs = plan(args.scale, main_label, rich_label, range(args.first_seed, args.first_seed + args.seeds), args.target,
                setting, range(args.first_rich_seed, args.first_rich_seed + args.rich_seeds))
    if args.no_rich:
        jobs = [j for j in jobs if j.size == main_label]
    detector = key_values(args.equilibrium)
    if detector:
        jobs = [replace(j, config={**j.config, "equilibrium": detector}) for j in jobs]
    suffix = ("_auto" if args.auto else "" if args.target is None else f"_target={args.target:g}") + (
        f"_{args.name}" if args.name else "")
    out = Path(args.out or f"bench/results/autostop/{args.scale}{suffix}")
    runner = Runner(out, s, manifest, work, args.jobs, args.threads)
    if args.auto:
        jobs = auto_jobs(runner, jobs, str(base), s.rank)

    def report() -> None:
        done = [runner.results[j.key] for j in jobs if j.key in runner.results]
        rows = [judge(r, steps) | {"tokens_per_step": s.batch_size * s.block_size} for r in done]
        summary = {"scale": args.scale, "budget_steps": steps, "equilibrium": detector,
                   "scu": setting[1] if setting else None, "settings": s.__dict__}
        write_report(out, summary, rows, done, f"{len(rows)}/{len(jobs)} runs")

    try:
        runner.run(jobs, "autostop", on_result=report)
    finally:
        runner.close()
    report()
    print(f"wrote {out / 'results.md'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print((out / "results.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
