"""Issue 18 item 2's test for an opt-in scu setting on SmolLM2: held-out BPT and forgetting against the harness's arms.

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.setting_heldout --name NAME --set KEY=VALUE ... [--seeds 2] [--jobs 2]

A start-up benchmark (bench.pi_startup) judges how a controller setting tracks S*; this one judges what the adapter it
trains is worth. The setting's arm (`scu.enabled: true` plus --set, S* the default) trains through `scu train`'s entry
point with the real harness's settings (bench/scu_vs_baselines.py --scale real), on the 18k-token slice (held-out along
the way) and the 72k-token slice (final evaluations only, as the harness's own arms there). Its jobs are added to the
harness's cache (bench/results/scu_vs_baselines_real/runs/NAME/), so a rerun resumes; the comparators are the
harness's cached arms: plain LoRA with validation early stopping, the fixed-λ grid, LoRA dropout and the defaults.
The verdict is the issue's, per size (bench.prior_fit.verdict). Results: bench/results/setting_heldout/NAME.json and .md.
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
from bench.prior_fit import PLAIN, arm_rows, load_cached_comparators, markdown, plain_jobs, verdict
from bench.scu_vs_baselines import DEFAULT_DATA, REAL_SCALES, Runner, prepare_real, run_or_load, size_label
from scu.report.records import atomic_write_json, atomic_write_text

HARNESS = Path("bench/results/scu_vs_baselines_real")


def setting_jobs(name: str, scu: dict[str, Any], sizes: list[str], seeds: range, rich_seeds: range) -> list[Job]:
    """The setting's arm: every seed at the main size (held-out along the way), then the data-rich size's seeds."""
    main, rich = sizes
    cfg = {"scu": {"enabled": True, **scu}}
    return ([Job(name, seed, main, cfg) for seed in seeds]
            + [Job(f"N={rich}/{name}", seed, rich, cfg, evals="final") for seed in rich_seeds])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the arm's name (a folder of the harness's cache)")
    ap.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE", help="the scu settings of the arm")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rich-seeds", type=int, default=1, help="seeds at the data-rich size (final evaluations only)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="write the report from cached jobs; run nothing")
    args = ap.parse_args(argv)
    if "/" in args.name or args.name.startswith(("fixed_lambda=", "lora_dropout=", "scu_", "unregularized")):
        raise SystemExit(f"--name {args.name!r} would mix with the harness's own arms; pick a plain new name")
    scu = scu_settings(args.set)  # a bad setting fails here, not in the first worker
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    scale = REAL_SCALES["real"]
    base_model, manifest, work = prepare_real(scale, DEFAULT_DATA.resolve())
    settings = replace(scale.run, base_model=base_model)
    sizes = [size_label(scale.main_tokens), size_label(scale.rich_tokens)]
    seeds = range(args.seeds)
    base_wiki = real.base_bpt(base_model, hdata.load_blocks(work), settings.eval_batch, work / "base_bpt.json")["wiki"]
    runner = Runner(HARNESS, settings, manifest, work, args.jobs, args.threads)
    out = Path("bench/results/setting_heldout")
    out.mkdir(parents=True, exist_ok=True)
    mine = setting_jobs(args.name, scu, sizes, seeds, range(args.rich_seeds))

    def report() -> None:
        arms = arm_rows(runner.results, base_wiki)
        done = sum(job.key in runner.results for job in mine)
        summary = {"scale": "real", "name": args.name, "scu": scu, "dof": None, "base_wiki": base_wiki,
                   "note": f"{done}/{len(mine)} jobs of the arm finished, {time.perf_counter() - t0:.0f} s wall in the last "
                           f"session. Arm `{args.name}`: scu {scu}.",
                   "sizes": {size: {"arms": {k: v for k, v in arms.items() if v["size"] == size},
                                    "verdict": verdict(arms, size, sizes[0], args.name)} for size in sizes}}
        atomic_write_json(out / f"{args.name}.json", summary)
        atomic_write_text(out / f"{args.name}.md", markdown(summary, f"# setting_heldout {args.name}", args.name))

    try:
        load_cached_comparators(runner, HARNESS)
        # the harness's own plain LoRA runs, every seed it made, read from its cache (report-only: nothing is run)
        run_or_load(runner, plain_jobs(sizes, sizes[0], range(scale.seeds), True), "plain LoRA", True, on_result=report)
        # forgetting is a ratio to plain LoRA's: the data-rich seeds the harness lacks are run, so both sides share seeds
        more_plain = [Job(f"N={sizes[1]}/{PLAIN}", seed, sizes[1], {}, evals="final")
                      for seed in range(scale.seeds, args.rich_seeds)]
        run_or_load(runner, more_plain + mine, args.name, args.report_only, on_result=report)
    finally:
        runner.close()
    report()
    print(f"wrote {out / args.name}.md and .json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
