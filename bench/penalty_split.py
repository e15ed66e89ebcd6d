"""Where each step's change of ParamBPT comes from: the decoupled penalty step against AdamW's data step.

    python -m bench.penalty_split RUN.json [--set KEY=VALUE ...] [--name NAME]

Retrains the run that a cached harness file (bench/results/<bench>/runs/<arm>/seed<K>.json) records, from the config it
stored, and around every `penalty_step: decoupled` step measures ParamBPT before the penalty step, after it, and after
AdamW's step; and the share of entries whose penalty step is at its bound c·lr (λ·|g_p|/c > √v̂). `--set` changes
`scu` settings first (e.g. penalty_step_bound=4). The penalty step is wrapped for the measurement (the loop calls it
by module attribute); nothing else changes, so the run repeats the cached one step for step (docs/method.md,
"penalty_step_bound at thirty epochs"). Writes bench/results/penalty_split/NAME.json (per step) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import scu.torch.loop as loop
from bench.harness.settings import scu_settings
from scu.config.schema import build_config
from scu.driver import Callback
from scu.report.records import atomic_write_json


class Split(Callback):
    """Wraps the loop's decoupled penalty step; one record per optimizer step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None
        self.run: Any = None

    def on_train_begin(self, run: Any) -> None:
        self.run = run

    def penalty_step(self, model, optimizer, penalty_grad, moments, lam, lr, bound=1.0) -> None:
        with torch.no_grad():
            before = float(self.run.penalty())
            wrapped(model, optimizer, penalty_grad, moments, lam, lr, bound)
            after = float(self.run.penalty())
            at_bound = total = 0
            for g, v in zip(penalty_grad, moments):
                if g is not None and v is not None:
                    at_bound += int(((lam * g.double() / bound) ** 2 > v).sum())
                    total += g.numel()
        self.pending = {"lambda": lam, "param_bpt": before, "penalty_step": after - before, "at_bound": at_bound / max(total, 1)}

    def on_step_end(self, run: Any, row: dict[str, Any]) -> None:
        if self.pending is not None:
            with torch.no_grad():
                after_all = float(run.penalty())
            p = self.pending
            self.rows.append({"step": row["step"], "data_bpt": row["data_bpt"], **p,
                              "data_step": after_all - p["param_bpt"] - p["penalty_step"]})
            self.pending = None


wrapped = loop.decoupled_penalty_step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a harness run file: bench/results/<bench>/runs/<arm>/seed<K>.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="scu settings changed before retraining")
    ap.add_argument("--name", help="the output's name (default: the run file's arm and seed)")
    ap.add_argument("--work", default="/tmp/scu_penalty_split", help="where the retrained run's files go")
    args = ap.parse_args(argv)
    source = json.loads(Path(args.run).read_text())
    cfg = source["config"]
    cfg["scu"].update(scu_settings(args.set))
    if cfg["scu"].get("penalty_step") != "decoupled":
        raise SystemExit(f"{args.run}: penalty_step is {cfg['scu'].get('penalty_step')!r}; this splits the decoupled step only")
    split = Split()
    loop.decoupled_penalty_step = split.penalty_step
    try:
        loop.train(build_config(cfg), args.work, progress=False, overwrite=True, callbacks=[split])
    finally:
        loop.decoupled_penalty_step = wrapped
    name = args.name or f"{source['arm']}_seed{source['seed']}"
    rows = split.rows
    late = [r for r in rows if r["step"] >= 100]
    summary = {"source": args.run, "set": args.set, "steps": len(rows),
               "lambda_range_from_100": [min(r["lambda"] for r in late), max(r["lambda"] for r in late)],
               "at_bound_max_from_100": max(r["at_bound"] for r in late),
               "first_step_at_lambda_max": next((r["step"] for r in rows if r["lambda"] >= cfg["scu"]["lambda_max"]), None),
               "penalty_removes_median_share": sorted(-r["penalty_step"] / r["param_bpt"] for r in late)[len(late) // 2],
               "param_bpt_final": rows[-1]["param_bpt"] + rows[-1]["penalty_step"] + rows[-1]["data_step"]}
    atomic_write_json(Path("bench/results/penalty_split") / f"{name}.json", {"summary": summary, "rows": rows})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
