"""Peak memory of SmolLM2's perplexity evaluation in 2048-token windows: 8 windows a pass (the old default)
against the default token budget (2,048 tokens a pass). Each arm runs in a fresh process.

    PYTHONPATH=. python -m bench.vac_eval_memory [--eval-tokens 16384]

Writes bench/results/vac_eval_memory.json: per arm, VmHWM after loading the model and after the evaluation,
the PPL (must agree) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.vac_artifacts import peak_rss_kib
from bench.vac_common import RESULTS
from scu.report.records import atomic_write_json

WINDOW = 2048


def child(batch_size: int | None, eval_tokens: int) -> None:
    from bench.vac_common import open_bench
    from scu.vac.evaluate import perplexity

    bench = open_bench("smollm2")
    model = bench.fresh()
    loaded = peak_rss_kib()
    start = time.time()
    row = perplexity(model, bench.data["eval_ids"][:eval_tokens], WINDOW, batch_size)
    print(json.dumps({"batch_size": batch_size, "hwm_after_load_mib": loaded / 1024, "hwm_after_eval_mib": peak_rss_kib() / 1024,
                      "eval_s": time.time() - start, "ppl": row["ppl"], "tokens": row["tokens"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(int(args.child) or None, args.eval_tokens)
        return
    arms = {}
    for name, batch in (("8 windows a pass (old default)", 8), ("2,048 tokens a pass (default)", 0)):
        out = subprocess.run([sys.executable, "-m", "bench.vac_eval_memory", "--child", str(batch), "--eval-tokens",
                              str(args.eval_tokens)], capture_output=True, text=True, check=True).stdout
        arms[name] = json.loads(out.strip().splitlines()[-1])
        print(name, arms[name], flush=True)
    atomic_write_json(RESULTS / "vac_eval_memory.json", {
        "model": "SmolLM2-135M, dequantized Q4_1", "window": WINDOW, "eval_tokens": args.eval_tokens, "arms": arms})


if __name__ == "__main__":
    main()
