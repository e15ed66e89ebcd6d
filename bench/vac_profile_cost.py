"""CPU time of VAC's statistics passes on SmolLM2-135M: cached layer inputs against the previous per-layer profiling.

    python -m bench.vac_profile_cost [--calib-samples 16] [--out bench/results/vac_profile_cost.json]

New: the activation statistics of all decoder layers (one walk over cached layer inputs) and the
Fisher of all layers (one forward and backward pass per calibration sequence). Old: the previous
code's profiling of ONE layer (whole model forward; and forward + backward for the Fisher), kept as
the reference in tests/vac/test_profile.py; it ran once per layer (twice for vac: allocation, then
factorization), so multiply by the layer count. CPU time of this process, so that other jobs on a
shared machine do not count; wall time next to it.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from bench.vac_common import RESULTS, load_data, setup_threads
from scu.report.records import atomic_write_json
from scu.vac.profile import LayerInputs, decoder_layers, embed, fisher_statistics, layer_linears, layer_statistics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", default=str(RESULTS / "vac_profile_cost.json"))
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scu.models.gguf import dense_dir, smollm2_gguf
    from tests.vac.test_profile import reference_profile_layer  # the previous profiling, test-only

    setup_threads()
    base = dense_dir(smollm2_gguf())
    calib = load_data(AutoTokenizer.from_pretrained(base), args.seq_len, args.calib_samples)["calib"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    layers = decoder_layers(model)
    middle = len(layers) // 2
    out: dict = {"model": "SmolLM2-135M, dequantized Q4_1", "calib_blocks": len(calib), "seq_len": args.seq_len,
                 "layers": len(layers), "threads": torch.get_num_threads()}

    def timed(key: str, fn: Callable[[], object]) -> None:
        cpu, wall = time.process_time(), time.time()
        fn()
        out[key] = {"cpu_s": time.process_time() - cpu, "wall_s": time.time() - wall}
        atomic_write_json(args.out, out)
        print(key, out[key], flush=True)

    def walk() -> None:
        inputs = LayerInputs(layers, *embed(model, calib))
        for i in range(len(layers)):
            _, outputs = layer_statistics(layers[i], layer_linears(model, i), inputs.get(i), inputs.kwargs)
            inputs.put(i + 1, outputs)
            inputs.keep([i + 1])

    timed("new_activations_all_layers", walk)
    timed("old_activations_one_layer", lambda: reference_profile_layer(model, middle, calib, fisher=False))
    timed("new_fisher_all_layers", lambda: fisher_statistics(model, calib))
    timed("old_fisher_and_activations_one_layer", lambda: reference_profile_layer(model, middle, calib))


if __name__ == "__main__":
    main()
