"""Can a prior scale read off the base model alone serve both harness scales? (issue 18, item 2)

    python -m bench.prior_scale [--blocks 16] [--out bench/results/prior_scale.json]

For the tiny harness base (1.2M-parameter WikiText Llama) and SmolLM2-135M (dequantized Q4_1), over the seven
projections LoRA adapts, on Shakespeare text (the fine-tuning domain, no validation data):

* `weight_rms`: what `prior_sigma: auto` uses today;
* `fisher_sigma`: the sigma at which a change drawn from the prior N(0, sigma^2) raises the base's loss by one nat
  per token, sigma^2 = 2 / tr(F), with tr(F) the per-token Fisher trace (labels sampled from the model; a
  token's weight gradient is outer(output grad, input), so its squared norm is |grad|^2 |input|^2, taken from
  one backward pass per batch: it counts the later tokens' share of each output gradient too, an overestimate
  of the same kind on both models);
* `plain_change_rms`: the RMS of plain LoRA's learned change at the end of the harness's budget (an empirical-Bayes
  scale read off the unregularized fit, mean over its seeds: final ||dW|| / sqrt(entries));
* `best_sigma`: the sigma the harness's fixed-lambda grid (sigma 0.01) picked on validation at the main size,
  as an equivalent lambda-1 prior: 0.01 / sqrt(lambda_best).

A rule serves both scales if rule / best_sigma is about the same on both.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from bench.scu_vs_baselines import SCALES
from scu.report.records import atomic_write_json

RESULTS = Path(__file__).parent / "results"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shakespeare" / "input.txt"


def scales_of(path: Path, blocks: int, block_size: int = 128, batch: int = 4) -> dict:
    """Weight RMS and per-token Fisher trace of the adapted projections of the model in `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(SHAKESPEARE.read_text()[:400_000], return_tensors="pt").input_ids[0]
    if len(ids) < blocks * block_size:
        raise SystemExit(f"{SHAKESPEARE} gave {len(ids)} tokens, fewer than {blocks} x {block_size}")
    inputs: dict[torch.nn.Module, torch.Tensor] = {}
    trace = [0.0]
    sq_sum, count, hooks = 0.0, 0, []

    def keep_input(module, args, output):
        inputs[module] = args[0].detach()

    def add_trace(module, grad_input, grad_output):
        x, g = inputs[module], grad_output[0].detach()
        trace[0] += float(((g ** 2).sum(-1) * (x ** 2).sum(-1)).sum())

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS:
            hooks += [module.register_forward_hook(keep_input), module.register_full_backward_hook(add_trace)]
            sq_sum += float(module.weight.detach().pow(2).sum())
            count += module.weight.numel()
    tokens = 0
    for start in range(0, blocks, batch):
        chunk = ids[start * block_size:(start + batch) * block_size].view(-1, block_size)
        logits = model(input_ids=chunk).logits[:, :-1]
        with torch.no_grad():
            labels = torch.distributions.Categorical(logits=logits).sample()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="sum")
        model.zero_grad(set_to_none=True)
        loss.backward()
        tokens += labels.numel()
    for h in hooks:
        h.remove()
    fisher_trace = trace[0] / tokens
    return {"entries": count, "weight_rms": math.sqrt(sq_sum / count), "fisher_trace_per_token": fisher_trace,
            "fisher_sigma": math.sqrt(2.0 / fisher_trace), "tokens": tokens}


def best_sigma_tiny() -> tuple[float, str]:
    results = json.loads((RESULTS / "scu_vs_baselines" / "results.json").read_text())
    lam = float(results["best_fixed_lambda"].split("=")[1])
    return 0.01 / math.sqrt(lam), f"fixed λ {lam:g} (σ 0.01), best on validation at 16k tokens"


def best_sigma_real() -> tuple[float, str]:
    arms = json.loads((RESULTS / "scu_vs_baselines_real" / "results.json").read_text())["arms"]
    grid = {k: v for k, v in arms.items() if k.startswith("fixed_lambda=") and v["size"] == "18000"}
    best = min(grid, key=lambda k: grid[k]["val"]["mean"])
    lam = float(best.split("=")[1])
    return 0.01 / math.sqrt(lam), f"fixed λ {lam:g} (σ 0.01), best on validation at 18k tokens"


def plain_change_rms(runs: Path, entries: int) -> float:
    """Mean over seeds of the unregularized run's final ||dW|| / sqrt(entries) (the harness's main size)."""
    norms = [json.loads(p.read_text())["final"]["dw_norm"] for p in sorted((runs / "unregularized").glob("seed*.json"))]
    if not norms:
        raise SystemExit(f"no unregularized runs under {runs}: run the harness first")
    return sum(norms) / len(norms) / math.sqrt(entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=16, help="Shakespeare blocks of 128 tokens (default: %(default)s)")
    ap.add_argument("--out", default=str(RESULTS / "prior_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from scu.models.gguf import dense_dir, smollm2_gguf
    from scu.models.tiny import cached_base

    rows = {}
    for name, path, best, runs in (
        ("tiny harness base", cached_base(SCALES["cpu"].base, progress=False), best_sigma_tiny(), RESULTS / "scu_vs_baselines" / "runs"),
        ("SmolLM2-135M, dequantized Q4_1", dense_dir(smollm2_gguf()), best_sigma_real(), RESULTS / "scu_vs_baselines_real" / "runs"),
    ):
        row = scales_of(Path(path), args.blocks)
        row["plain_change_rms"] = plain_change_rms(runs, row["entries"])
        row["plain_change_rms_over_best"] = row["plain_change_rms"] / best[0]
        row["best_sigma"], row["best_from"] = best
        row["weight_rms_over_best"] = row["weight_rms"] / row["best_sigma"]
        row["fisher_sigma_over_best"] = row["fisher_sigma"] / row["best_sigma"]
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    atomic_write_json(args.out, {"blocks": args.blocks, "block_size": 128, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
