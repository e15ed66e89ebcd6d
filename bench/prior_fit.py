"""An empirical-Bayes prior scale from the plain fit (issue 18, item 2): does one rule serve both harness scales?

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.prior_fit --scale cpu|real [--seeds N] [--jobs 2]

The rule (`prior_sigma: fit`): sigma^2 = ||dW_plain||^2 / p, the plain LoRA fit's learned change spread over the
adapter's p trainable entries (its degrees of freedom; rank r on an out x in matrix has r * (in + out), not
in * out), then lambda = 1, the two-part code itself. It is the method-of-moments estimate of the prior variance
from the maximum-likelihood fit. Nothing is read from validation data and nothing is searched.

Each arm trains through `scu train`'s entry point (bench.harness.runner), with the harness's settings:
* `--scale real` (SmolLM2-135M, dequantized Q4_1): the plain runs are the harness's own cached jobs
  (bench/results/scu_vs_baselines_real); the `prior_fit` jobs are added to that cache. Comparators: the harness's
  fixed-lambda grid, LoRA dropout and validation early stopping at 18k tokens; plain LoRA and the defaults at 72k.
* `--scale cpu` (the tiny WikiText Llama): everything is rerun with today's code into bench/results/prior_fit/cpu
  (the harness's tiny baselines predate a data-path change, docs/benchmarks.md): plain LoRA (with early stopping),
  `prior_fit`, the fixed-lambda grid around the plain fit's scale, LoRA dropout 0.2 (the harness's best tuned arm at
  16k) and the weight-RMS prior at lambda 1 (`prior_sigma: auto`, what `target_s: auto` meant until 2026-12-05), at 16k, 100k and the whole pool.

Per size the verdict is issue 18's: held-out BPT within max(1%, 2 sd) of the best tuned arm (fixed lambda, dropout
or early stopping, each picked on validation) and forgetting (WikiText BPT minus the base's) at most half of plain
LoRA's. Results: <out>/prior_fit.json and prior_fit.md, rewritten after every job (resumable: per-job cache).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import real
from bench.harness.runner import Job
from bench.scu_vs_baselines import (DEFAULT_DATA, REAL_SCALES, SCALES, Runner, prepare_real, prepare_scale,
                                    run_or_load, size_label)
from scu.core.bits import fit_scale_sigma
from scu.report.records import atomic_write_json, atomic_write_text

FIT = "prior_fit"
PLAIN = "unregularized"
CPU_LAMBDAS = {"main": (3e-3, 1e-2, 3e-2), "other": (1e-3, 1e-2)}  # around the plain fit's scale on this base


def lora_dof(base_model: str, rank: int) -> int:
    """Trainable LoRA entries of the harness's adapter (all seven projections) on `base_model`."""
    from scu.config.schema import LoraSection, ModelSection
    from scu.torch.model import add_lora, load_model
    from scu.torch.regularizer import LoraPenalty

    model = add_lora(load_model(ModelSection(base_model=base_model)), LoraSection(rank=rank, alpha=2 * rank, dropout=0.0))
    return LoraPenalty(model, "delta", 0.01, 1).dof


def fit_scu(plain: dict[str, Any], dof: int) -> dict[str, Any]:
    """The scu section `target_s: auto` resolves to after the plain run `plain` (a harness result): lambda 1 under
    sigma^2 = ||dW_plain||^2 / dof, rounded as `scu train` writes it."""
    sigma = fit_scale_sigma(plain["final"]["dw_norm"] ** 2, dof)
    return {"enabled": True, "lambda_min": 1.0, "lambda_max": 1.0, "lambda_init": 1.0, "prior_sigma": float(f"{sigma:.6g}")}


def fit_job(plain: dict[str, Any], dof: int, size: str, main: str) -> Job:
    arm = FIT if size == main else f"N={size}/{FIT}"
    return Job(arm, plain["seed"], size, {"scu": fit_scu(plain, dof)}, evals="curve" if size == main else "final")


def at(size: str, main: str, arm: str) -> str:
    return arm if size == main else f"N={size}/{arm}"


def plain_jobs(sizes: list[str], main: str, seeds: range, real_scale: bool) -> list[Job]:
    if real_scale:  # exactly the harness's jobs, so that its cache answers
        return [Job(PLAIN, seed, main, {}, early_stop=True) for seed in seeds] + [
            Job(f"N={size}/{PLAIN}", seed, size, {}, evals="final") for size in sizes[1:] for seed in seeds]
    return [Job(at(size, main, PLAIN), seed, size, {}, early_stop=size == main, evals="curve" if size == main else "final")
            for size in sizes for seed in seeds]


def comparator_jobs(sizes: list[str], main: str, seeds: range) -> list[Job]:
    """Tiny scale only (the real scale's are the harness's cached arms)."""
    jobs = []
    for size in sizes:
        evals = "curve" if size == main else "final"
        for lam in CPU_LAMBDAS["main" if size == main else "other"]:
            cfg = {"scu": {"enabled": True, "lambda_min": lam, "lambda_max": lam, "lambda_init": lam}}
            jobs += [Job(at(size, main, f"fixed_lambda={lam:g}"), seed, size, cfg, evals=evals) for seed in seeds]
        jobs += [Job(at(size, main, "scu_auto"), seed, size, {"scu": {"enabled": True, "target_s": "auto", "prior_sigma": "auto"}},
                     evals=evals)
                 for seed in seeds]
    jobs += [Job("lora_dropout=0.2", seed, main, {"lora": {"dropout": 0.2}}) for seed in seeds]
    return jobs


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def arm_rows(results: dict[str, dict[str, Any]], base_wiki: float) -> dict[str, dict[str, Any]]:
    """Per arm: held-out, validation and forgetting over its seeds; early stopping as an arm of its own."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in results.values():
        runs.setdefault(r["arm"], []).append(r)
        if r.get("early_stop"):
            runs.setdefault(r["arm"].replace(PLAIN, "early_stopping"), []).append({**r, "final": r["early_stop"]})
    return {arm: {"size": rs[0]["size"], "seeds": sorted(r["seed"] for r in rs),
                  "test": stats([r["final"]["test"] for r in rs]), "val": stats([r["final"]["val"] for r in rs]),
                  "forgetting": stats([r["final"]["wiki"] - base_wiki for r in rs]),
                  "dw_norm": stats([r["final"]["dw_norm"] for r in rs if "dw_norm" in r["final"]]),
                  # as a lambda-1 prior: sigma / sqrt(lambda); the PI arms' lambda moves, so theirs is the final one
                  "prior_sigma": rs[0]["prior_sigma"] / math.sqrt(rs[0]["final_lambda"]) if rs[0].get("final_lambda") else None}
            for arm, rs in sorted(runs.items())}


def verdict(arms: dict[str, dict[str, Any]], size: str, main: str, candidate: str = FIT) -> dict[str, Any] | None:
    """Issue 18 item 2's test of the arm `candidate` at one size, against the best tuned arm and plain LoRA."""
    prefix = "" if size == main else f"N={size}/"
    mine = {k[len(prefix):]: v for k, v in arms.items() if v["size"] == size}
    fit, plain = mine.get(candidate), mine.get(PLAIN)
    if fit is None or plain is None:
        return None
    tuned = {}
    for family in ("fixed_lambda=", "lora_dropout="):  # the best of each family, picked on validation
        pool = {k: v for k, v in mine.items() if k.startswith(family)}
        if pool:
            best = min(pool, key=lambda k: pool[k]["val"]["mean"])
            tuned[best] = pool[best]
    if "early_stopping" in mine:
        tuned["early_stopping"] = mine["early_stopping"]
    if not tuned:  # the real scale's data-rich size has no tuned arm; its first run's early stopping picked the last step
        tuned[f"{PLAIN} (no tuned arm at this size)"] = plain
    name = min(tuned, key=lambda k: tuned[k]["test"]["mean"])
    ref = tuned[name]["test"]
    tol = max(0.01 * ref["mean"], 2 * max(fit["test"]["std"], ref["std"]))
    ratio = fit["forgetting"]["mean"] / plain["forgetting"]["mean"] if plain["forgetting"]["mean"] > 0 else None
    return {"best_tuned": name, "best_tuned_test": ref, "fit_test": fit["test"], "rel_diff": fit["test"]["mean"] / ref["mean"] - 1,
            "tolerance": tol, "held_out_met": fit["test"]["mean"] - ref["mean"] <= tol,
            "forgetting_fit": fit["forgetting"]["mean"], "forgetting_plain": plain["forgetting"]["mean"],
            "forgetting_ratio": ratio, "forgetting_met": ratio is not None and ratio <= 0.5}


def fmt(s: dict[str, float] | None, digits: int = 3) -> str:
    if s is None:
        return "—"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")


def markdown(summary: dict[str, Any], title: str = "", candidate: str = FIT) -> str:
    lines = [title or f"# prior_fit --scale {summary['scale']}", "", summary["note"], "",
             ("" if summary["dof"] is None else f"LoRA entries p = {summary['dof']:,}; ")
             + f"base WikiText BPT {summary['base_wiki']:.4f}.", ""]
    for size, entry in summary["sizes"].items():
        lines += [f"## {size} training tokens", "", "| arm | seeds | held-out BPT | validation BPT | forgetting | σ (λ 1 equivalent) |",
                  "|---|---|---|---|---|---|"]
        for arm, a in entry["arms"].items():
            sigma = "—" if a["prior_sigma"] is None else f"{a['prior_sigma']:.4g}"
            lines.append(f"| {arm} | {len(a['seeds'])} | {fmt(a['test'])} | {fmt(a['val'])} | {fmt(a['forgetting'])} | {sigma} |")
        v = entry["verdict"]
        if v:
            ratio = "—" if v["forgetting_ratio"] is None else f"{v['forgetting_ratio']:.0%}"
            lines += ["", f"{candidate} against the best tuned arm ({v['best_tuned']}): {v['rel_diff']:+.2%} "
                      f"(tolerance {v['tolerance']:.3f} bits): {'met' if v['held_out_met'] else 'not met'}; forgetting "
                      f"{v['forgetting_fit']:+.3f} against plain LoRA's {v['forgetting_plain']:+.3f} ({ratio}): "
                      f"{'met' if v['forgetting_met'] else 'not met'}."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("cpu", "real"), default="cpu")
    ap.add_argument("--seeds", type=int, default=None, help="default: 3 (tiny), 2 (real)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="write the report from cached jobs; run nothing")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    data_dir = DEFAULT_DATA.resolve()
    if args.scale == "real":
        scale = REAL_SCALES["real"]
        base_model, manifest, work = prepare_real(scale, data_dir)
        settings = replace(scale.run, base_model=base_model)
        sizes = [size_label(scale.main_tokens), size_label(scale.rich_tokens)]
        seeds = range(args.seeds or scale.seeds)
        out, results_dir = Path("bench/results/scu_vs_baselines_real"), Path("bench/results/prior_fit/real")
    else:
        scale = SCALES["cpu"]
        base, manifest, work = prepare_scale(scale, data_dir)
        base_model, settings = str(base), replace(scale.run, base_model=str(base))
        sizes = [size_label(scale.main_tokens)] + [size_label(t) for t in scale.transfer_tokens]
        seeds = range(args.seeds or 3)
        out = results_dir = Path("bench/results/prior_fit/cpu")
    main_size = sizes[0]
    from bench.harness import data as hdata

    base_wiki = real.base_bpt(settings.base_model, hdata.load_blocks(work), settings.eval_batch, work / "base_bpt.json")["wiki"]
    dof = lora_dof(base_model, settings.rank)
    runner = Runner(out, settings, manifest, work, args.jobs, args.threads)
    mine: dict[str, dict[str, Any]] = {}

    def report() -> None:
        arms = arm_rows(runner.results, base_wiki)  # on the real scale, with the harness's cached comparators
        summary = {"scale": args.scale, "dof": dof, "base_wiki": base_wiki,
                   "note": f"{len(mine)} jobs of this benchmark finished, {time.perf_counter() - t0:.0f} s wall in the last session.",
                   "sizes": {size: {"arms": {k: v for k, v in arms.items() if v["size"] == size},
                                    "verdict": verdict(arms, size, main_size)} for size in sizes}}
        atomic_write_json(results_dir / "prior_fit.json", summary)
        atomic_write_text(results_dir / "prior_fit.md", markdown(summary))

    def done() -> None:
        mine.update(runner.results)
        report()

    try:
        plain = plain_jobs(sizes, main_size, seeds, args.scale == "real")
        if args.scale == "real":
            load_cached_comparators(runner, out)
        run_or_load(runner, plain, "plain LoRA", args.report_only, on_result=done)
        fits = [fit_job(runner.results[j.key], dof, j.size, main_size) for j in plain if j.key in runner.results]
        run_or_load(runner, fits, "prior_fit", args.report_only, on_result=done)
        if args.scale == "cpu":
            run_or_load(runner, comparator_jobs(sizes, main_size, seeds), "comparators", args.report_only, on_result=done)
    finally:
        runner.close()
    done()
    print(f"wrote {results_dir / 'prior_fit.md'} and prior_fit.json", flush=True)
    return 0


CACHED_ARMS = ("fixed_lambda=", "lora_dropout=", "scu_defaults", "scu_auto", FIT)


def load_cached_comparators(runner: Runner, out: Path, arms: tuple[str, ...] = CACHED_ARMS) -> None:
    """A harness's arms whose names start with one of `arms` (by default its fixed-lambda, dropout, defaults and prior
    arms), read from its cache as they are."""
    import json

    for path in sorted((out / "runs").glob("*/seed*.json")):
        r = json.loads(path.read_text())
        if r.get("arm") and r["arm"].split("/")[-1].startswith(arms):
            runner.results[f"{r['arm']}/seed{r['seed']}"] = r


if __name__ == "__main__":
    raise SystemExit(main())
