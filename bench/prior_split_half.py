"""An exploration, not a product mode: a split-half prior scale on the tiny harness (docs/method.md, "target_s: auto").

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m bench.prior_split_half [--steps 200 600] [--seeds 3]

sigma^2 = <dW_A, dW_B> / p from two plain fits (the harness's settings, 16k tokens) on the even and on the odd
documents: noise one half memorises does not correlate with the other half, so only the change both agree on counts.
Then lambda 1 under that sigma on the whole 16k slice, through the harness's runner (held-out, validation and
WikiText BPT; with early stopping and 24 evaluations at 600 steps, the auto-stop protocol's three-times budget).
Per-seed results in bench/results/prior_split_half/ (halves/res_STEPS_SEED.json, fit_STEPS/runs/); cached, resumable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.harness.runner import Job, make_config
from bench.scu_vs_baselines import DEFAULT_DATA, SCALES, Runner, prepare_scale

OUT = Path("bench/results/prior_split_half")
SIZE = "16000"


def adapter_factors(adapter_dir: Path) -> dict[str, tuple]:
    """{module: (A, B, scale)} of a saved PEFT LoRA adapter, in float64."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    t = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {k: (t[k].double(), t[k.replace(".lora_A.", ".lora_B.")].double(), scale) for k in t if ".lora_A." in k}


def split_half_scale(a: Path, b: Path) -> dict[str, float]:
    """<dW_A, dW_B> / p (from r x r products) and what each half's own ||dW||^2 / p would give."""
    from scu.torch.regularizer import product_sq_norm

    fa, fb = adapter_factors(a), adapter_factors(b)
    inner = sum(sa * sb * float(((Bb.T @ Ba) * (Ab @ Aa.T)).sum())
                for k, (Aa, Ba, sa) in fa.items() for (Ab, Bb, sb) in [fb[k]])
    sq_a = sum(sa**2 * float(product_sq_norm(Aa, Ba)) for Aa, Ba, sa in fa.values())
    p = sum(Aa.numel() + Ba.numel() for Aa, Ba, _ in fa.values())
    return {"inner": inner, "sq_a": sq_a, "p": p, "corr": inner / sq_a,
            "sigma_split": math.sqrt(max(inner, 0.0) / p), "sigma_half_plain": math.sqrt(sq_a / p)}


def halves(train_txt: Path, work: Path) -> dict[str, Path]:
    docs = [d for d in train_txt.read_text().split("\n\n") if d.strip()]
    out = {}
    for name, part in (("A", docs[0::2]), ("B", docs[1::2])):
        out[name] = work / f"half_{name}.txt"
        out[name].write_text("\n\n".join(part))
    return out


def main(argv: list[str] | None = None) -> int:
    from scu.config.schema import build_config
    from scu.torch.loop import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 600])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    scale = SCALES["cpu"]
    base, manifest, work = prepare_scale(scale, DEFAULT_DATA.resolve())
    (OUT / "halves").mkdir(parents=True, exist_ok=True)
    for steps in args.steps:
        s = replace(scale.run, base_model=str(base), steps=steps)
        jobs = []
        for seed in range(args.seeds):
            res_path = OUT / "halves" / f"res_{steps}_{seed}.json"
            if not res_path.exists():
                with tempfile.TemporaryDirectory() as tmp:
                    dirs = {}
                    for name, path in halves(Path(manifest["train"][SIZE]["path"]), Path(tmp)).items():
                        dirs[name] = Path(tmp) / f"plain_{name}"
                        train(build_config(make_config(Job("plain", seed, SIZE, {}), s, str(path))), dirs[name], progress=False)
                    res_path.write_text(json.dumps({"steps": steps, "seed": seed, **split_half_scale(dirs["A"], dirs["B"])}))
            sigma = json.loads(res_path.read_text())["sigma_split"]
            cfg = {"scu": {"enabled": True, "lambda_min": 1.0, "lambda_max": 1.0, "lambda_init": 1.0,
                           "prior_sigma": float(f"{sigma:.6g}")}}
            jobs.append(Job("split_fit", seed, SIZE, cfg, early_stop=steps > scale.run.steps))
        evals = {} if steps <= scale.run.steps else {"val_evals": 24, "test_evals": 24}
        runner = Runner(OUT / f"fit_{steps}", replace(s, **evals), manifest, work, 2, 1)
        try:
            runner.run(jobs, f"split-half sigma, {steps} steps")
        finally:
            runner.close()
        for j in jobs:
            r = runner.results[j.key]
            curve = [c for c in r["curve"] if "test" in c]
            best = min((c["test"], c["step"]) for c in curve) if curve else None
            print(f"{steps} steps, seed {j.seed}: sigma {r['prior_sigma']:.4g}, held-out {r['final']['test']:.4f}, "
                  f"WikiText {r['final']['wiki']:.4f}, best held-out along the way {best}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
