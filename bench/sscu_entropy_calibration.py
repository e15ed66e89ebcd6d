"""Where S-SCU's entropy thresholds sit: wavelet entropy of reference noises over the default window.

    python -m bench.sscu_entropy_calibration [--trials 400] [--out bench/results/sscu_entropy_calibration.json]

White noise stands for plain minibatch noise around a trend, 1/f (pink) noise for fluctuations
spread over all time scales, a random walk (brown) for one slow wandering, a sinusoid for one scale.
Prints mean, std and the 5th/95th percentiles per signal for each (window, level) setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from scu.core.simplified import SimplifiedConfig, wavelet_entropy
from scu.report.records import atomic_write_json


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    f = np.fft.rfftfreq(n)
    spectrum = rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


SIGNALS = {
    "white": lambda rng, n: rng.standard_normal(n),
    "pink (1/f)": pink,
    "brown (random walk)": lambda rng, n: np.cumsum(rng.standard_normal(n)),
    "sinusoid (random period 8-32) + 10% noise": lambda rng, n: np.sin(2 * np.pi * np.arange(n) / rng.uniform(8, 32))
    + 0.1 * rng.standard_normal(n),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--out", default="bench/results/sscu_entropy_calibration.json")
    args = ap.parse_args()
    d = SimplifiedConfig()
    settings = [(d.entropy_window, d.dwt_max_level), (64, 3), (256, 4)]
    rng = np.random.default_rng(0)
    results = []
    for n, level in settings:
        for name, make in SIGNALS.items():
            h = np.array([wavelet_entropy(make(rng, n), d.wavelet, level)[0] for _ in range(args.trials)])
            row = {"window": n, "max_level": level, "signal": name, "mean": float(h.mean()), "std": float(h.std()),
                   "p5": float(np.percentile(h, 5)), "p95": float(np.percentile(h, 95))}
            results.append(row)
            print(f"window {n:4d} level<={level}  {name:44s} {row['mean']:.2f} +- {row['std']:.2f}  "
                  f"[p5 {row['p5']:.2f}, p95 {row['p95']:.2f}]")
    print(f"defaults: entropy_low {d.entropy_low}, entropy_high {d.entropy_high} "
          f"(window {d.entropy_window}, {d.wavelet}, dwt_max_level {d.dwt_max_level})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"trials": args.trials, "results": results})


if __name__ == "__main__":
    main()
