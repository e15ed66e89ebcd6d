"""What two changes of the profiling (issue 20) do to quality, before recovery, on the WikiText base.

    python -m bench.vac_refit [--ratios 1.25 1.8 2.5] [--out bench/results/vac_refit.json]

- `whiten` with and without the closed-form refit of its up factors (CompressSpec.refit).
- `fwsvd` and `vac` with the Fisher measured once on the dense model (the current code) against the
  Fisher re-measured per layer on the partly compressed model (the previous code, whose profiling is
  kept as the reference in tests/vac/test_profile.py). Both arms use the same ranks.

Base, calibration and evaluation as in bench/vac_quality.py (WikiText-2 validation, 128-token
windows). Rows already in --out are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.vac_common import RESULTS, SEQ_LEN, load_results, open_bench
from scu.report.records import atomic_write_json
from scu.vac.compress import CompressSpec, compress, plan_ranks
from scu.vac.evaluate import perplexity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.25, 1.8, 2.5])
    ap.add_argument("--out", default=str(RESULTS / "vac_refit.json"))
    args = ap.parse_args()
    from tests.vac.test_profile import reference_factorize  # the previous per-layer profiling, test-only

    bench = open_bench()
    calib, ids = bench.data["calib"], bench.data["eval_ids"]
    out = Path(args.out)
    results = load_results(out)
    rows = results.setdefault("rows", {})
    results["setup"] = {"base": str(bench.base), "seq_len": SEQ_LEN, "calib_blocks": len(calib), "eval_tokens": int(len(ids))}

    def record(key: str, compress_fn) -> None:
        if key in rows:
            return
        model = bench.fresh()
        start = time.time()
        compress_fn(model)
        rows[key] = {"compress_s": time.time() - start, **perplexity(model, ids, SEQ_LEN)}
        atomic_write_json(out, results)
        print(key, round(rows[key]["ppl"], 3), f"compress {rows[key]['compress_s']:.1f} s", flush=True)

    def sequential_fisher(spec: CompressSpec):
        def run(model) -> None:
            ranks, _ = plan_ranks(model, calib, spec)  # its statistics equal the previous code's (tested)
            reference_factorize(model, calib, ranks, spec)
        return run

    if "dense" not in rows:
        rows["dense"] = perplexity(bench.fresh(), ids, SEQ_LEN)
        atomic_write_json(out, results)
    for ratio in args.ratios:
        for refit in (False, True):
            record(f"{ratio}/whiten/refit={refit}", lambda m: compress(m, calib, CompressSpec("whiten", ratio, refit=refit)))
        for method in ("fwsvd", "vac"):
            spec = CompressSpec(method, ratio)
            record(f"{ratio}/{method}/dense-fisher", lambda m: compress(m, calib, spec))
            record(f"{ratio}/{method}/sequential-fisher", sequential_fisher(spec))


if __name__ == "__main__":
    main()
