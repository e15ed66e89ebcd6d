"""Issue 18 item 2's test for an scu setting: held-out BPT and forgetting against a harness's arms, on either scale.

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.setting_heldout --name NAME --set KEY=VALUE ... [--seeds 2] [--jobs 2]
        [--scale real|cpu]

A start-up benchmark (bench.pi_startup) judges how a controller setting tracks S*; this one judges what the adapter it
trains is worth. The setting's arm (`scu.enabled: true` plus --set, S* the default) trains through `scu train`'s entry
point with the harness's settings, at the main size (held-out along the way, --seeds) and each larger size (final
evaluations only, --rich-seeds). Its jobs are added to the harness's cache, so a rerun resumes; the comparators are
that harness's cached arms: plain LoRA with validation early stopping, the fixed-λ grid and LoRA dropout.
* `--scale real` (SmolLM2-135M, dequantized Q4_1): the real harness (bench/scu_vs_baselines.py --scale real,
  cache bench/results/scu_vs_baselines_real/runs/NAME/), 18k and 72k tokens.
* `--scale cpu` (the tiny WikiText Llama): bench.prior_fit's tiny-scale runs (bench/results/prior_fit/cpu), which
  rebuilt the tiny harness's baselines with today's data path: 16k, 100k tokens and the whole pool.
With more larger-size seeds than the harness made (--rich-seeds), plain LoRA's missing ones are run too, so that the
forgetting ratio compares the same seeds. The verdict is the issue's, per size (bench.prior_fit.verdict). Results:
bench/results/setting_heldout/NAME.json and .md (`--scale cpu`: under cpu/).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import data as hdata
from bench.harness import real
from bench.harness.runner import Job
from bench.harness.settings import scu_settings
from bench.prior_fit import (FIT, PLAIN, arm_rows, comparator_jobs, load_cached_comparators, markdown, plain_jobs,
                             verdict)
from bench.scu_vs_baselines import (DEFAULT_DATA, REAL_SCALES, SCALES, Runner, prepare_real, prepare_scale, run_or_load,
                                    size_label)
from scu.report.records import atomic_write_json, atomic_write_text

HARNESS = Path("bench/results/scu_vs_baselines_real")
CPU_HARNESS = Path("bench/results/prior_fit/cpu")


def setting_jobs(name: str, scu: dict[str, Any], sizes: list[str], seeds: range, rich_seeds: range) -> list[Job]:
    """The setting's arm: every seed at the main size (held-out along the way), then each larger size's seeds."""
    main, *larger = sizes
    cfg = {"scu": {"enabled": True, **scu}}
    return ([Job(name, seed, main, cfg) for seed in seeds]
            + [Job(f"N={size}/{name}", seed, size, cfg, evals="final") for size in larger for seed in rich_seeds])


def missing_plain_jobs(sizes: list[str], plain_seeds: int, rich_seeds: int) -> list[Job]:
    """Plain LoRA at the larger sizes for the seeds the harness did not run: forgetting is read as a ratio to plain
    LoRA's, so both sides of it share their seeds."""
    return [Job(f"N={size}/{PLAIN}", seed, size, {}, evals="final")
            for size in sizes[1:] for seed in range(plain_seeds, rich_seeds)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the arm's name (a folder of the harness's cache)")
    ap.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE", help="the scu settings of the arm")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rich-seeds", type=int, default=1, help="seeds at the data-rich size (final evaluations only)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="write the report from cached jobs; run nothing")
    ap.add_argument("--scale", choices=("real", "cpu"), default="real")
    args = ap.parse_args(argv)
    if "/" in args.name or args.name.startswith(("fixed_lambda=", "lora_dropout=", "scu_", "unregularized", "prior_fit")):
        raise SystemExit(f"--name {args.name!r} would mix with the harness's own arms; pick a plain new name")
    scu = scu_settings(args.set)  # a bad setting fails here, not in the first worker
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    if args.scale == "real":
        scale = REAL_SCALES["real"]
        base_model, manifest, work = prepare_real(scale, DEFAULT_DATA.resolve())
        sizes = [size_label(scale.main_tokens), size_label(scale.rich_tokens)]
        harness, plain_seeds, out = HARNESS, scale.seeds, Path("bench/results/setting_heldout")
    else:
        scale = SCALES["cpu"]
        base, manifest, work = prepare_scale(scale, DEFAULT_DATA.resolve())
        base_model = str(base)
        sizes = [size_label(scale.main_tokens)] + [size_label(t) for t in scale.transfer_tokens]
        harness, plain_seeds, out = CPU_HARNESS, 3, Path("bench/results/setting_heldout/cpu")
    settings = replace(scale.run, base_model=base_model)
    seeds = range(args.seeds)
    base_wiki = real.base_bpt(base_model, hdata.load_blocks(work), settings.eval_batch, work / "base_bpt.json")["wiki"]
    runner = Runner(harness, settings, manifest, work, args.jobs, args.threads)
    out.mkdir(parents=True, exist_ok=True)
    mine = setting_jobs(args.name, scu, sizes, seeds, range(args.rich_seeds))

    def report() -> None:
        arms = arm_rows(runner.results, base_wiki)
        done = sum(job.key in runner.results for job in mine)
        summary = {"scale": args.scale, "name": args.name, "scu": scu, "dof": None, "base_wiki": base_wiki,
                   "note": f"{done}/{len(mine)} jobs of the arm finished, " + (
                       "this report rewritten from the cache" if args.report_only
                       else f"{time.perf_counter() - t0:.0f} s wall in the last session") + f". Arm `{args.name}`: scu {scu}.",
                   "sizes": {size: {"arms": {k: v for k, v in arms.items() if v["size"] == size},
                                    "verdict": verdict(arms, size, sizes[0], args.name)} for size in sizes}}
        atomic_write_json(out / f"{args.name}.json", summary)
        atomic_write_text(out / f"{args.name}.md", markdown(summary, f"# setting_heldout {args.name}", args.name))

    try:
        # the harness's own arms, every seed it made, read from its cache (report-only: nothing is run)
        if args.scale == "real":
            load_cached_comparators(runner, harness)
        else:  # checked against today's settings by their hashes; the plain-fit prior's runs are read as they are
            run_or_load(runner, comparator_jobs(sizes, sizes[0], range(plain_seeds)), "comparators", True)
            load_cached_comparators(runner, harness, (FIT,))
        run_or_load(runner, plain_jobs(sizes, sizes[0], range(plain_seeds), args.scale == "real"), "plain LoRA", True,
                    on_result=report)
        more_plain = missing_plain_jobs(sizes, plain_seeds, args.rich_seeds)
        run_or_load(runner, more_plain + mine, args.name, args.report_only, on_result=report)
    finally:
        runner.close()
    report()
    print(f"wrote {out / args.name}.md and .json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
