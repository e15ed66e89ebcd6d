"""Does `scu suggest`'s memory formula match the measured peak of a real CPU training run?

    python -m bench.smart_memory [--repeats 3] [--steps 4] [--out bench/results/smart_memory.json]

For two tiny Llama sizes, `suggest` writes the config (batch set to 8 x 256 tokens so that
activations dominate), and `scu train`'s loop runs it in a fresh process. Measured: peak RSS
(ru_maxrss) minus the RSS after imports, i.e. what the run itself allocated (model, data,
adapter, optimizer, activations). The estimate is `estimate_memory(..., device="cpu")`.
The run is also split at the end of setup: "setup" is what loading the model, tokenizer and
data left resident; "steps" is what the training steps add on top, compared with the
estimate less the weights (adapter state + activations + logits).

Each run is measured under two allocator settings, interleaved:
* glibc default: freed activation buffers stay in the heap (dynamic mmap threshold), so RSS
  keeps memory that is no longer in use;
* MALLOC_MMAP_THRESHOLD_=65536: large buffers are mmapped and returned on free, so RSS follows
  live tensors, which is what a GPU caching allocator must hold (the quantity estimated).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scu.models.tiny import BaseSpec
from scu.report.records import atomic_write_json

SIZES = {
    "h128-L4": BaseSpec(corpus="stdlib", max_chars=200_000, steps=20, hidden_size=128, intermediate_size=344, layers=4),
    "h256-L8": BaseSpec(corpus="stdlib", max_chars=200_000, steps=20, hidden_size=256, intermediate_size=688, layers=8,
                        heads=4, kv_heads=2),
}
BATCH, BLOCK = 8, 256
ALLOCATORS = {"glibc default": {}, "mmap threshold 64k": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def child(config: str, out: str) -> None:
    """Run in a fresh process: RSS after imports, then the whole training run, then the peak."""
    import gc
    import resource

    import accelerate  # noqa: F401  -- the libraries train() imports lazily, so their code is not counted
    import peft  # noqa: F401
    import psutil
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from scu.config.schema import load_config
    from scu.torch import loop

    cfg = load_config(config)
    x = torch.randn(64, 64, requires_grad=True)  # first matmul/backward: thread pools and kernels
    (x @ x).sum().backward()
    gc.collect()
    proc = psutil.Process()
    rss = {"before": proc.memory_info().rss}
    setup = loop.setup

    def timed_setup(*a, **k):  # RSS once the model, data and optimizer are in place
        run = setup(*a, **k)
        rss["after_setup"] = proc.memory_info().rss
        return run

    loop.setup = timed_setup
    loop.train(cfg, out, progress=False)
    rss["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(rss))


def measure(config: Path, work: Path, env: dict[str, str], tag: str) -> dict[str, float]:
    out = work / f"run-{tag}"
    cmd = [sys.executable, "-m", "bench.smart_memory", "--child", str(config), str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1", **env}, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"run": (r["peak"] - r["before"]) / 1e6, "setup": (r["after_setup"] - r["before"]) / 1e6,
            "steps": (r["peak"] - r["after_setup"]) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="bench/results/smart_memory.json")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    from scu.config.schema import build_config, dump_config
    from scu.config.smart import estimate_memory, suggest
    from scu.models.tiny import cached_base

    from scu.data.builtin import pydoc_topics

    work = Path(tempfile.mkdtemp(prefix="smart_memory-"))
    data_path = work / "pydoc.txt"  # small data (~0.5M tokens), so tokenizing it adds little to the peak
    data_path.write_text("\n\n".join(pydoc_topics()))
    runs = {}
    for name, spec in SIZES.items():
        s = suggest(str(cached_base(spec, progress=False)), data=str(data_path), block_size=BLOCK)
        data = s.config.model_dump(mode="json")
        data["training"].update(batch_size=BATCH, gradient_accumulation=1, steps=args.steps, checkpoint_every=10**6)
        cfg = build_config(data)
        path = work / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        est = estimate_memory(s.model, cfg.lora.rank, BATCH, BLOCK, cfg.model.dtype, lora_dropout=cfg.lora.dropout,
                              device="cpu")
        runs[name] = {"config": path, "params": s.model.params, "estimate_mb": est.total / 1e6,
                      "estimate_parts_mb": {k: v / 1e6 for k, v in vars(est).items()},
                      "measured_mb": {a: [] for a in ALLOCATORS}}
    for i in range(args.repeats):  # interleaved: every size and allocator once per round
        for name, r in runs.items():
            for alloc, env in ALLOCATORS.items():
                r["measured_mb"][alloc].append(measure(r["config"], work, env, f"{name}-{len(env)}-{i}"))

    rows = []
    print(f"batch {BATCH} x {BLOCK} tokens, fp32, CPU; median of {args.repeats} runs; MB")
    print(f"{'model':8} {'params':>9} {'allocator':>19} | {'estimate':>8} {'measured':>8} {'error':>6} | "
          f"{'setup':>6} {'steps est':>9} {'steps meas':>10} {'error':>6}")
    for name, r in runs.items():
        parts = r["estimate_parts_mb"]
        steps_est = r["estimate_mb"] - parts["weights"]  # what the steps add on top of the loaded model
        for alloc in ALLOCATORS:
            med = {k: statistics.median(m[k] for m in r["measured_mb"][alloc]) for k in ("run", "setup", "steps")}
            err, steps_err = r["estimate_mb"] / med["run"] - 1, steps_est / med["steps"] - 1
            rows.append({"model": name, "params": r["params"], "allocator": alloc, "estimate_mb": r["estimate_mb"],
                         "estimate_parts_mb": parts, "measured_mb": r["measured_mb"][alloc], "median_mb": med,
                         "error": err, "steps_estimate_mb": steps_est, "steps_error": steps_err})
            print(f"{name:8} {r['params']:>9,} {alloc:>19} | {r['estimate_mb']:>8.1f} {med['run']:>8.1f} {err:>+6.0%} | "
                  f"{med['setup']:>6.1f} {steps_est:>9.1f} {med['steps']:>10.1f} {steps_err:>+6.0%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"batch": BATCH, "block": BLOCK, "steps": args.steps, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
