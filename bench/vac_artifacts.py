"""What a saved VAC model costs and gives back: reload exactness, load memory, int8 size and PPL, speed.

    python -m bench.vac_artifacts [--ratio 1.8] [--rounds 5] [--out bench/results/vac_artifacts.json]
    python -m bench.vac_artifacts --model smollm2 [--ratio 1.8] [--calib-samples 16] [--eval-tokens 16384]
                                  [--eval-window 2048] [--out bench/results/vac_artifacts_smollm2.json]

1. Save/load. The WikiText base compressed with `vac` is saved (fp32, bf16, int8 factors with fp32
   rest, int8 factors with bf16 rest), reloaded with AutoModelForCausalLM(trust_remote_code=True), and
   its logits compared with the in-memory model's (torch.equal). Held-out PPL of each file.
2. Load memory. Peak RSS growth while loading and running a first forward pass (transformers maps
   the weight files lazily; they become resident on first use), in a fresh subprocess per load, dense
   vs compressed, interleaved, median over rounds. Also on a 110M-parameter random-weight Llama (plain SVD at the same
   ratio; weights do not matter for memory or speed), where the model, not the interpreter, dominates;
   its bf16 and int8 files show the disk saving where the linear layers dominate the file.
3. Speed. Prefill (one 512-token prompt) and batch-1 decode tokens/s, compressed vs dense, measured
   interleaved in one process; the median of per-round ratios next to the predicted FLOP ratio.

With `--model smollm2`: SmolLM2-135M (dequantized Q4_1) compressed with `vac` on `--calib-samples` blocks of 256
WikiText-103 tokens; 1 (fp32 and int8 factors, PPL on the first `--eval-tokens` of WikiText-2 validation in
`--eval-window` windows), 2 for dense against compressed only, and 3 against dense.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.vac_common import RESULTS, SEQ_LEN, open_bench, setup_threads
from scu.report.records import atomic_write_json
from scu.vac.compress import CompressSpec, compress, unique_param_count
from scu.vac.evaluate import disk_bytes, measure_speed, median_ratio, perplexity, predicted_prefill_flop_ratio
from scu.vac.io import load_model, quantize_int8, save_compressed

LARGE = dict(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=16, tie_word_embeddings=True, max_position_embeddings=2048)


def peak_rss_kib() -> int:
    """High-water RSS of this process's own address space (VmHWM, KiB).

    Not ru_maxrss: Linux carries the parent's RSS at fork into a child's ru_maxrss across exec, so every
    child reported the benchmark process's own size (about 1.3 GB with the 110M models held), not its load.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def child_load(path: str) -> None:
    """Subprocess body: load `path`, run one short forward pass; print RSS before, after loading, and the peak (KiB).

    transformers maps safetensors files lazily, so the weights become resident only when first used:
    the peak after one forward pass is what holding the loaded model costs.
    """
    import psutil

    setup_threads()
    proc = psutil.Process()
    before = proc.memory_info().rss // 1024
    model = load_model(path, dtype=torch.float32)
    loaded = proc.memory_info().rss // 1024
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    peak = peak_rss_kib()
    print(json.dumps({"rss_before_kib": before, "rss_loaded_kib": loaded, "peak_kib": peak,
                      "params": unique_param_count(model)}))


def load_memory(paths: dict[str, Path], rounds: int) -> dict:
    """Median peak-RSS growth (MiB) of load + first forward, each in a fresh process, arms interleaved."""
    runs: dict[str, list[float]] = {k: [] for k in paths}
    lazy: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            out = subprocess.run([sys.executable, "-m", "bench.vac_artifacts", "--child-load", str(path)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append((row["peak_kib"] - row["rss_before_kib"]) / 1024)
            lazy[name].append((row["rss_loaded_kib"] - row["rss_before_kib"]) / 1024)
    return {name: {"peak_growth_mib": statistics.median(v), "rounds": v, "after_load_mib": statistics.median(lazy[name]),
                   "disk_bytes": disk_bytes(paths[name])} for name, v in runs.items()}


def linear_bytes(path: Path) -> int:
    """Bytes of the decoder's linear layers in a saved directory: factors, layers kept dense, int8 scales."""
    from safetensors import safe_open

    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                if ".layers." in k and "norm" not in k:
                    t = st.get_tensor(k)
                    total += t.numel() * t.element_size()
    return total


def speed(arms: dict, vocab: int, rounds: int, dense_key: str) -> dict:
    timings = measure_speed(arms, vocab, prefill_len=512, decode_tokens=32, rounds=rounds)
    out = {}
    for name, model in arms.items():
        row = {"prefill_tok_s": timings[name]["prefill"], "decode_tok_s": timings[name]["decode"],
               "params": unique_param_count(model)}
        if name != dense_key:
            d = timings[dense_key]
            row["prefill_speedup"] = median_ratio(timings[name]["prefill_rounds"], d["prefill_rounds"])
            row["decode_speedup"] = median_ratio(timings[name]["decode_rounds"], d["decode_rounds"])
            row["predicted_prefill_flop_ratio"] = predicted_prefill_flop_ratio(arms[dense_key], model, 512)
            row["param_ratio"] = unique_param_count(arms[dense_key]) / unique_param_count(model)
        out[name] = row
    return out


def save_load(model: torch.nn.Module, tokenizer, base: Path, work: Path, names: tuple[str, ...], probe: torch.Tensor,
              ppl) -> dict:
    """Save each variant, reload it with AutoModelForCausalLM(trust_remote_code=True), and measure file size and PPL."""
    variants = {}
    for name in names:
        m = copy.deepcopy(model)
        if name.startswith("int8"):
            quantize_int8(m)
        dtype = torch.bfloat16 if name.endswith("bf16") else None
        path = save_compressed(m, tokenizer, work / name, {}, str(base), dtype=dtype)
        loaded = load_model(str(path), dtype=torch.float32).eval()
        row = {"disk_bytes": disk_bytes(path), "linear_bytes": linear_bytes(path), "ppl": ppl(loaded)}
        if dtype is None:  # the in-memory model computes in float32 too: logits must match bit for bit
            with torch.no_grad():
                row["logits_equal"] = bool(torch.equal(loaded(input_ids=probe).logits, m(input_ids=probe).logits))
        variants[name] = row
        print(name, row, flush=True)
    return variants


def run_smollm2(args: argparse.Namespace) -> None:
    """Save/load, int8, load memory and speed of SmolLM2-135M compressed with `vac` at --ratio."""
    out = args.out or str(RESULTS / "vac_artifacts_smollm2.json")
    bench = open_bench("smollm2", 256, args.calib_samples)
    base, tokenizer, data = bench.base, bench.tokenizer, bench.data
    eval_ids = data["eval_ids"][: args.eval_tokens]
    work = Path(tempfile.mkdtemp(prefix="vac_artifacts_smollm2-"))
    results: dict = {"model": "SmolLM2-135M, dequantized Q4_1", "ratio": args.ratio, "calib_blocks": len(data["calib"]),
                     "eval_tokens": int(len(eval_ids)), "eval_window": args.eval_window, "threads": torch.get_num_threads()}

    def ppl(m) -> float:
        return perplexity(m, eval_ids, args.eval_window)["ppl"]

    model = bench.fresh()
    start, cpu = time.time(), time.process_time()
    result = compress(model, data["calib"], CompressSpec("vac", args.ratio))
    results["compress_s"], results["compress_cpu_s"] = time.time() - start, time.process_time() - cpu
    dense_model = bench.fresh()
    results["save_load"] = {"linear_ratio": result.linear_ratio, "model_ratio": result.model_ratio, "dense_ppl": ppl(dense_model),
                            "dense_disk_bytes": disk_bytes(base),
                            "variants": save_load(model, tokenizer, base, work, ("fp32", "int8"), data["calib"][:2], ppl)}
    atomic_write_json(out, results)
    results["load_memory"] = load_memory({"dense": base, "vac": work / "fp32"}, args.rounds)
    print("load memory", results["load_memory"], flush=True)
    atomic_write_json(out, results)
    results["speed"] = speed({"dense": dense_model, f"vac-{args.ratio}": model}, len(tokenizer), args.rounds, "dense")
    print("speed", results["speed"], flush=True)
    atomic_write_json(out, results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=1.8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child-load", help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=["wikitext", "smollm2"], default="wikitext")
    ap.add_argument("--calib-samples", type=int, default=16, help="smollm2: calibration blocks of 256 tokens (default: %(default)s)")
    ap.add_argument("--eval-tokens", type=int, default=16384, help="smollm2: first N tokens of WikiText-2 validation (default: %(default)s)")
    ap.add_argument("--eval-window", type=int, default=2048, help="smollm2: evaluation window (default: %(default)s)")
    ap.add_argument("--out", default=None, help="default: bench/results/vac_artifacts.json, or vac_artifacts_smollm2.json")
    args = ap.parse_args()
    if args.child_load:
        return child_load(args.child_load)
    if args.model == "smollm2":
        return run_smollm2(args)
    args.out = args.out or str(RESULTS / "vac_artifacts.json")
    bench = open_bench()
    base, tokenizer, data, fresh = bench.base, bench.tokenizer, bench.data, bench.fresh
    work = Path(tempfile.mkdtemp(prefix="vac_artifacts-"))
    results: dict = {"ratio": args.ratio, "threads": torch.get_num_threads(), "work_dir": str(work)}

    # 1. Save / load / int8
    model = fresh()
    result = compress(model, data["calib"], CompressSpec("vac", args.ratio))
    probe = data["calib"][:4]
    variants = save_load(model, tokenizer, base, work, ("fp32", "bf16", "int8", "int8_bf16"), probe,
                         lambda m: perplexity(m, data["eval_ids"], SEQ_LEN)["ppl"])
    dense_ppl = perplexity(fresh(), data["eval_ids"], SEQ_LEN)["ppl"]
    results["save_load"] = {"linear_ratio": result.linear_ratio, "model_ratio": result.model_ratio,
                            "dense_ppl": dense_ppl, "dense_disk_bytes": disk_bytes(base), "variants": variants}
    atomic_write_json(args.out, results)

    # 2. Load memory: trained base, and a larger random-weight model
    results["load_memory_base"] = load_memory({"dense": base, "vac": work / "fp32"}, args.rounds)
    print("load memory (base)", results["load_memory_base"], flush=True)
    torch.manual_seed(0)
    large = LlamaForCausalLM(LlamaConfig(**LARGE)).eval()
    large.save_pretrained(work / "large-dense")
    tokenizer.save_pretrained(work / "large-dense")
    large_c = copy.deepcopy(large)
    start = time.time()
    large_result = compress(large_c, data["calib"][:1], CompressSpec("svd", args.ratio))
    save_compressed(large_c, tokenizer, work / "large-svd", {}, str(work / "large-dense"))
    results["large"] = {"config": LARGE, "linear_ratio": large_result.linear_ratio, "model_ratio": large_result.model_ratio,
                        "compress_s": time.time() - start}
    # int8 against bf16 on disk where the linear layers dominate the file (random weights: sizes only, no PPL)
    large_q = copy.deepcopy(large_c)
    quantize_int8(large_q)
    for name, m in (("bf16", large_c), ("int8_bf16", large_q)):
        path = save_compressed(m, tokenizer, work / f"large-svd-{name}", {}, str(work / "large-dense"), dtype=torch.bfloat16)
        results["large"][f"{name}_disk_bytes"], results["large"][f"{name}_linear_bytes"] = disk_bytes(path), linear_bytes(path)
    results["load_memory_large"] = load_memory({"dense": work / "large-dense", "svd": work / "large-svd"}, args.rounds)
    print("load memory (large)", results["load_memory_large"], flush=True)
    atomic_write_json(args.out, results)

    # 3. Speed
    vac125 = fresh()
    compress(vac125, data["calib"], CompressSpec("vac", 1.25))
    results["speed_base"] = speed({"dense": fresh(), "vac-1.25": vac125, f"vac-{args.ratio}": model}, len(tokenizer),
                                  args.rounds, "dense")
    print("speed (base)", results["speed_base"], flush=True)
    results["speed_large"] = speed({"dense": large, f"svd-{args.ratio}": large_c}, LARGE["vocab_size"], args.rounds, "dense")
    print("speed (large)", results["speed_large"], flush=True)
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
