"""Does the λ controller settle from any start? Start-up from the default λ_init and from λ*·1000 and λ*/1000.

    python -m bench.pi_startup [--scale cpu|quick|real] [--laws pi bumpless balance] [--seeds 1] [--jobs 2]

The harness's data and base (bench/scu_vs_baselines.py, same scale): LoRA on the Shakespeare slices,
every training-set size × S* multiplier. Each run goes through `scu.torch.loop.train`, the code path of
`scu train`. λ* of a (size, S*) cell is the median λ of the second half of the run from the
default start that tracked best (the start-up runs are placed a factor 1000 either side of it). The issue's criterion, per run:
smoothed S within ±10% of S* for ≥ 90% of the second half, settled within 20% of the steps, overshoot ≤ 20%,
no limit cycle. `--scale real`: SmolLM2-135M (dequantized Q4_1) on the real harness's two Shakespeare slices (18k
tokens, which overfits in the budget, and 72k), at the product's S* only. Every run is cached as one JSON file under --out, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.harness.runner import refuse_truncated
from bench.harness.settings import key_values, settings_label
from bench.harness.summary import limit_cycle
from bench.scu_vs_baselines import (
    DEFAULT_DATA,
    QUICK,
    REAL_SCALES,
    RealScale,
    SCALES,
    Scale,
    exit_with_parent,
    fmt,
    prepare_real,
    prepare_scale,
    scaled_target,
    size_label,
)
from scu.config.schema import Config, build_config
from scu.core.pi import PIConfig
from scu.core.tracking import tracking_from_rows
from scu.report.records import MetricsLog, atomic_write_json

FACTOR = 1000.0
UNREGULARIZED = "unregularized"


@dataclass(frozen=True)
class Job:
    law: str
    size: str
    multiplier: float
    start: str  # "default", "high" (λ*·FACTOR) or "low" (λ*/FACTOR)
    seed: int
    lambda_init: float
    # scu.smoothing; "ratio" (the runs cached before the setting existed) is left out of the name
    smoothing: str = "ratio"
    overrides: str = ""  # other scu settings of the controlled runs, "key=value,key=value" (--set)

    @property
    def name(self) -> str:
        return f"{self.law}_N={self.size}_S={fmt(self.multiplier)}x_{self.start}_seed{self.seed}{self.label}"

    @property
    def label(self) -> str:
        return run_label(self.smoothing, self.overrides.split(","))


def run_label(smoothing: str, overrides: list[str]) -> str:
    """The file-name suffix of a run's settings, shared by its result and the summary it is in."""
    return ("" if smoothing == "ratio" else f"_sm={smoothing}") + settings_label(overrides)


def reference_s_hat(s: list[float], alpha: float = PIConfig.ema_alpha) -> list[float]:
    """An EMA of the raw S at the default rate: the same ruler for every run, whatever its controller smooths."""
    out: list[float] = []
    for x in s:
        out.append(x if not out else (1.0 - alpha) * out[-1] + alpha * x)
    return out


def judge(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The issue's four-part start-up criterion on rows whose s_hat is the smoothed S to judge."""
    tr = tracking_from_rows(rows, target).as_dict()
    cycle = limit_cycle(rows, target)
    meets = {
        "in_band_90": tr["in_band"] >= 0.9,
        "settled_20pct": tr["settling_step"] is not None and tr["settling_step"] <= 0.2 * len(rows),
        "overshoot_20pct": tr["overshoot"] <= 0.2,
        "no_limit_cycle": not cycle["cycle"],
    }
    # the same four parts with the cycle read about λ's trend (bench.harness.summary.limit_cycle): both are reported
    detrended = {**meets, "no_limit_cycle": not cycle["cycle_detrended"]}
    return {"tracking": tr, "limit_cycle": cycle,
            "meets": {**meets, "all": all(meets.values()), "all_detrended": all(detrended.values())}}


def meets_against_rise(r: dict[str, Any], cycle: bool) -> bool:
    """The criterion with settling judged by max(20% of the steps, the step λ = 0 itself brings S to 0.9 S*)."""
    m = r["meets"]
    return m["in_band_90"] and m["overshoot_20pct"] and m["settled_by_max(20%, rise)"] and not cycle


def rejudge(r: dict[str, Any]) -> dict[str, Any]:
    """A cached run judged again from its trace with today's criterion code (older results lack the detrended flag).

    The mean-S error and the bound fraction are kept as cached (the oldest traces hold no raw S and no bounds); the
    four parts read only S_hat and λ. A reference judgement needs the raw S, so it is dropped where there is none."""
    t = r["trace"]
    raw = t.get("s")
    rows = [{"s": s, "s_hat": h, "lambda": lam} for s, h, lam in zip(raw or t["s_hat"], t["s_hat"], t["lambda"])]
    own = judge(rows, r["target_s"])
    own["tracking"].update({k: r["tracking"][k] for k in ("error", "at_bound")})
    out = {k: v for k, v in r.items() if k != "reference"} | own
    if raw is not None:
        measured = [x for x in rows if x["s"] is not None]
        out["reference"] = judge([{**x, "s_hat": h} for x, h in zip(measured, reference_s_hat([x["s"] for x in measured]))],
                                 r["target_s"])
    return out


def scu_settings(job: Job) -> dict[str, Any]:
    """The job's scu section, less the target."""
    if job.law == UNREGULARIZED:  # λ fixed at 0: how fast S rises on its own, and how high it gets
        # its rise is read on an EMA of S (the reference ruler), as when the cached reference runs were made
        return {"lambda_init": 0.0, "lambda_min": 0.0, "lambda_max": 0.0, "smoothing": "ratio"}
    return {"law": job.law, "lambda_init": job.lambda_init, "lambda_min": 1e-7, "lambda_max": 1e4, "smoothing": job.smoothing,
            **key_values(job.overrides.split(","))}


def controller(job: Job) -> dict[str, Any]:
    """Every controller setting the job runs with, defaults included, less the target: what a cached result must match."""
    names = {f.name for f in fields(PIConfig)}
    settings = {k: v for k, v in scu_settings(job).items() if k in names}
    return {k: v for k, v in asdict(PIConfig(**settings)).items() if k != "target_s"}


def job_config(job: Job, scale: Scale | RealScale, train_path: str, target: float) -> Config:
    """The `scu train` config of a job: the harness's LoRA, data and budget, the job's controller and target."""
    s = scale.run
    scu = {"target_s": target, **scu_settings(job)}
    return build_config({
        "model": {"base_model": s.base_model},
        "lora": {"rank": s.rank, "alpha": 2 * s.rank, "dropout": 0.0},
        "scu": scu,
        "training": {"learning_rate": s.learning_rate, "batch_size": s.batch_size, "block_size": s.block_size,
                     "steps": s.steps, "warmup_steps": s.warmup_steps, "lr_schedule": "constant", "seed": job.seed,
                     "checkpoint_every": 10**9},
        "data": {"train_data": train_path, "val_fraction": 0.0},
    })


def run_job(job: Job, scale: Scale | RealScale, train_path: str, target: float, out: Path) -> dict[str, Any]:
    import torch

    from scu.torch.loop import train

    torch.set_num_threads(1)
    cfg = job_config(job, scale, train_path, target)
    with tempfile.TemporaryDirectory() as tmp:
        refuse_truncated(train(cfg, Path(tmp) / "run", progress=False)["status"], job.name)
        rows = MetricsLog(Path(tmp) / "run" / "metrics.jsonl").read()
    measured = [r for r in rows if r.get("s") is not None]
    reference = [{**r, "s_hat": x} for r, x in zip(measured, reference_s_hat([r["s"] for r in measured]))]
    half = [r["lambda"] for r in rows[len(rows) // 2 :]]
    result = {
        "job": job.__dict__, "controller": controller(job), "target_s": target, "steps": len(rows), **judge(rows, target),
        "reference": judge(reference, target),  # judged on reference_s_hat, whatever the controller smoothed
        "lambda_2nd_half_median": statistics.median(half),
        "trace": {k: [r.get(k) for r in rows] for k in ("s", "s_hat", "lambda", "lambda_balance", "lambda_growth",
                                                           "data_bpt", "param_bpt", "penalty_sensitivity")},
    }
    atomic_write_json(out / f"{job.name}.json", result)
    return result


def cached(out: Path, job: Job) -> dict[str, Any] | None:
    """The run's result, if it was run with exactly this job (a λ* measured anew moves the starts) and controller.

    A result that does not record its controller settings predates that record, and a default may have changed since:
    it is run again, except the λ = 0 reference runs."""
    path = out / f"{job.name}.json"
    r = json.loads(path.read_text()) if path.exists() else None
    if r is None or {"smoothing": "ratio", "overrides": "", **r["job"]} != job.__dict__:
        return None
    return r if job.law == UNREGULARIZED or r.get("controller") == controller(job) else None


def run_all(jobs: list[Job], scale: Scale | RealScale, manifest: dict, targets: dict, out: Path, workers: int) -> list[dict]:
    todo = [j for j in jobs if cached(out, j) is None]
    if todo:
        print(f"{len(todo)} runs to do ({len(jobs) - len(todo)} cached)", flush=True)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:  # spawn: no CUDA state inherited on a GPU
            futures = [pool.submit(run_job, j, scale, manifest["train"][j.size]["path"], targets[j.multiplier], out)
                       for j in todo]
            for f in futures:
                r = f.result()
                print(f"  {Job(**r['job']).name}: {summary(r)}", flush=True)
    return [rejudge(cached(out, j)) for j in jobs]


def summary(r: dict[str, Any]) -> str:
    def part(j: dict[str, Any]) -> str:
        tr = j["tracking"]
        return (f"in-band {100 * tr['in_band']:.0f}%, settled {tr['settling_step']}, overshoot {100 * tr['overshoot']:.0f}%, "
                f"cycle {j['limit_cycle']['cycle']} (about its trend {j['limit_cycle']['cycle_detrended']}) -> "
                f"{'MEETS' if j['meets']['all'] else 'fails'}{' (detrended: MEETS)' if j['meets']['all_detrended'] and not j['meets']['all'] else ''}")

    ref = f" | reference EMA: {part(r['reference'])}" if "reference" in r else ""
    return f"{part(r)}, λ½ {r['lambda_2nd_half_median']:.3g}{ref}"


def prepare(name: str) -> tuple[Scale | RealScale, dict, list[str], tuple[float, ...], float]:
    """The scale with its base model in place: (scale, data manifest, size labels, S* multipliers, middle S*)."""
    if name in REAL_SCALES:  # SmolLM2-135M: the slice that overfits and the data-rich one, S* 1x only
        real = REAL_SCALES[name]
        gguf, manifest, _ = prepare_real(real, DEFAULT_DATA)
        sizes = [size_label(real.main_tokens), size_label(real.rich_tokens)]
        return replace(real, run=replace(real.run, base_model=gguf)), manifest, sizes, (1.0,), PIConfig.target_s
    scale = QUICK if name == "quick" else SCALES[name]
    base, manifest, _ = prepare_scale(scale, DEFAULT_DATA)
    sizes = [size_label(t) for t in (scale.main_tokens, *scale.transfer_tokens)]
    return replace(scale, run=replace(scale.run, base_model=str(base))), manifest, sizes, scale.multipliers, 0.875


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["quick", *sorted(SCALES), *sorted(REAL_SCALES)], default="cpu")
    ap.add_argument("--laws", nargs="+", default=["pi", "bumpless"])
    ap.add_argument("--smoothing", choices=["data", "ratio"], default=PIConfig.smoothing,
                    help="scu.smoothing of every controlled run (the criterion is also judged on a reference EMA of raw S)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--target", type=float, help="the middle S* (default: 0.875, the harness's phase-1 choice at cpu "
                    "scale; on SmolLM2 (--scale real) the product's default S*)")
    ap.add_argument("--sizes", nargs="*", help="training-set sizes to run (labels, e.g. 16000 pool); default: all")
    ap.add_argument("--multipliers", nargs="*", type=float, help="S* multipliers to run; default: the scale's")
    ap.add_argument("--lambda-star", type=float, help="place the starts around this λ* in every cell (default: measured)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="other scu settings of every controlled run, e.g. lead_steps=0 (part of each run's name)")
    ap.add_argument("--default-starts-only", action="store_true",
                    help="skip the starts 1000x either side of λ* (a law that ignores λ_init repeats its default start)")
    ap.add_argument("--out", default=None, help="default bench/results/pi_startup/SCALE")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    scale, manifest, sizes, scale_multipliers, middle = prepare(args.scale)
    out = Path(args.out or f"bench/results/pi_startup/{scale.name}")
    out.mkdir(parents=True, exist_ok=True)
    middle = middle if args.target is None else args.target
    multipliers = args.multipliers or scale_multipliers
    targets = {m: scaled_target(middle, m) for m in multipliers}
    cells = [(size, m) for size in (args.sizes or sizes) for m in multipliers]
    seeds = range(args.seeds)
    default = PIConfig.lambda_init
    overrides = ",".join(args.set)
    # phase 0: S with λ = 0 per size; a target S never reaches on its own cannot be settled at
    refs = run_all([Job(UNREGULARIZED, size, 1.0, "ref", 0, 0.0) for size in {c[0]: 0 for c in cells}],
                   scale, manifest, targets | {1.0: scaled_target(middle, 1.0)}, out, args.jobs)
    reach = {}
    for size, m in cells:
        s_hat = next(r for r in refs if r["job"]["size"] == size)["trace"]["s_hat"]
        rise = next((i + 1 for i, x in enumerate(s_hat) if x >= 0.9 * targets[m]), None)
        reach[(size, m)] = {"unregularized_max_s_hat": max(s_hat), "rise_step": rise, "reachable": rise is not None}
    # phase 1: every law from the default start; the bumpless law's run defines λ* of the cell
    first = run_all([Job(law, size, m, "default", seed, default, args.smoothing, overrides)
                     for law in args.laws for size, m in cells for seed in seeds],
                    scale, manifest, targets, out, args.jobs)
    lam_star = {}
    for size, m in cells:
        if args.lambda_star is not None:
            lam_star[(size, m)] = args.lambda_star
            continue
        # the run of the cell that tracked best defines λ* (the bumpless law's when tied)
        ref = [r for r in first if r["job"]["size"] == size and r["job"]["multiplier"] == m]
        best = max(ref, key=lambda r: (r["tracking"]["in_band"], r["job"]["law"] == "bumpless"))
        lam_star[(size, m)] = best["lambda_2nd_half_median"]
    # phase 2: a factor FACTOR either side of λ*, where S* is reachable
    jobs = [Job(law, size, m, start, seed, lam_star[(size, m)] * (FACTOR if start == "high" else 1 / FACTOR), args.smoothing,
                overrides)
            for law in args.laws for size, m in cells if reach[(size, m)]["reachable"]
            for start in ("high", "low") for seed in seeds]
    second = [] if args.default_starts_only else run_all(jobs, scale, manifest, targets, out, args.jobs)
    results = first + second
    for r in results:  # the criterion where the target is reachable, with settling judged against λ = 0's rise
        cell = reach[(r["job"]["size"], r["job"]["multiplier"])]
        settle, rise = r["tracking"]["settling_step"], cell["rise_step"]
        r["meets"]["settled_by_max(20%, rise)"] = settle is not None and settle <= max(0.2 * r["steps"], rise or 0)
        r["reachable"] = cell["reachable"]
    table = {}
    for law in args.laws:
        mine = [r for r in results if r["job"]["law"] == law]
        ok = [r for r in mine if r["reachable"]]
        table[law] = {
            "runs": len(mine), "meet_all": sum(r["meets"]["all"] for r in mine), "reachable_runs": len(ok),
            "reachable_meet_all_but_20pct": sum(meets_against_rise(r, r["limit_cycle"]["cycle"]) for r in ok),
            "meet_all_on_reference_ema": sum(r["reference"]["meets"]["all"] for r in mine if "reference" in r),
            "meet_all_detrended": sum(r["meets"]["all_detrended"] for r in mine),
            "reachable_meet_all_but_20pct_detrended": sum(
                meets_against_rise(r, r["limit_cycle"]["cycle_detrended"]) for r in ok),
        }
    # a run of some sizes, or of the default starts only, must not overwrite a fuller run's summary
    sized = (f"_N={'-'.join(args.sizes)}" if args.sizes else "") + ("_default_starts" if args.default_starts_only else "")
    atomic_write_json(out / f"summary_{'-'.join(args.laws)}{run_label(args.smoothing, args.set)}{sized}.json", {
        "scale": scale.name, "steps": scale.run.steps, "targets": {fmt(m): t for m, t in targets.items()},
        "lambda_star": {f"N={s}, S={fmt(m)}x": v for (s, m), v in lam_star.items()},
        "reach": {f"N={s}, S={fmt(m)}x": v for (s, m), v in reach.items()}, "laws": table,
        "runs": {Job(**r["job"]).name: {k: r.get(k) for k in ("tracking", "meets", "reachable", "limit_cycle",
                                                             "lambda_2nd_half_median", "reference")} for r in results},
    })
    for law, t in table.items():
        print(f"{law}: {t['meet_all']}/{t['runs']} runs meet every start-up criterion ({t['meet_all_detrended']} with the "
              f"cycle read about λ's trend); where S* is reachable, "
              f"{t['reachable_meet_all_but_20pct']}/{t['reachable_runs']} meet all with settling judged against λ = 0's rise "
              f"({t['reachable_meet_all_but_20pct_detrended']} about the trend)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
