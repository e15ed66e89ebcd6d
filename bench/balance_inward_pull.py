"""The balance law where the data's measured pull turns inward: does S still hold S*?

    python -m bench.balance_inward_pull [--steps 300] [--laws pi balance] [--set KEY=VALUE ...]

The case that kept `law: balance` opt-in (docs/method.md): the test suite's tiny base, 100 pydoc documents,
lr 5e-3, 8 x 128 tokens, S* 5%. There -<g_d, g_p> turns negative after ~15 steps while Adam still grows the
change, so lambda_bal = -<g_d, g_p> / ||g_p||^2 reads <= 0. Reports, per law, the issue's tracking numbers, the
highest smoothed S, and how many steps measured an inward pull. Results: bench/results/balance_inward_pull/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.harness.settings import key_values, settings_label
from bench.harness.summary import limit_cycle
from scu.config.schema import build_config
from scu.core.tracking import tracking_from_rows
from scu.data.builtin import pydoc_topics
from scu.models.tiny import TEST_BASE, cached_base
from scu.report.records import MetricsLog, atomic_write_json
from scu.torch.loop import train


def run(law: str, overrides: dict, steps: int, target: float, base: Path, data: Path, work: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    cfg = build_config({
        "model": {"base_model": str(base)},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "scu": {"target_s": target, "law": law, **overrides},
        "training": {"learning_rate": 5e-3, "batch_size": 8, "block_size": 128, "steps": steps, "warmup_steps": 10,
                     "lr_schedule": "constant", "checkpoint_every": 10**9, "seed": 0},
        "data": {"train_data": str(data)},
    })
    out = work / law
    train(cfg, out, progress=False)
    rows = MetricsLog(out / "metrics.jsonl").read()
    measured = [r for r in rows if r.get("s") is not None]
    inward = [r["step"] for r in measured if r.get("lambda_balance") is not None and r["lambda_balance"] <= 0.0]
    return {
        **tracking_from_rows(rows, target).as_dict(), "limit_cycle": limit_cycle(measured, target),
        "max_s_hat": max(r["s_hat"] for r in measured),
        "inward_pull_steps": len(inward), "first_inward_step": inward[0] if inward else None,
        "trace": {k: [r.get(k) for r in measured] for k in ("s", "s_hat", "lambda", "lambda_balance", "lambda_growth")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--laws", nargs="+", default=["pi", "balance"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other scu settings of every run")
    ap.add_argument("--out", default=None, help="default bench/results/balance_inward_pull/results[_SETTINGS].json")
    args = ap.parse_args(argv)
    base = cached_base(TEST_BASE, progress=False)
    results = {}
    with tempfile.TemporaryDirectory(prefix="inward_pull-") as tmp:
        work = Path(tmp)
        data = work / "pydoc100.txt"
        data.write_text("\n\n".join(pydoc_topics()[:100]))
        for law in args.laws:
            r = run(law, key_values(args.set), args.steps, args.target, base, data, work)
            results[law] = r
            print(f"{law:8s} in-band {100 * r['in_band']:5.1f}%  settled {r['settling_step']}  overshoot "
                  f"{100 * r['overshoot']:5.1f}%  max S_hat {100 * r['max_s_hat']:.1f}%  cycle {r['limit_cycle']['cycle']}  "
                  f"inward pull on {r['inward_pull_steps']} steps (first {r['first_inward_step']})", flush=True)
    out = Path(args.out or f"bench/results/balance_inward_pull/results{settings_label(args.set)}.json")
    atomic_write_json(out, {"steps": args.steps, "target_s": args.target, "settings": args.set, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
