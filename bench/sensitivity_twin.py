"""Does one unit of λ slow the penalty's growth as much as the controller's growth model says? Twin runs.

    python -m bench.sensitivity_twin [--scale cpu|real] [--size 18000] [--seed 0] [--forks 8 15 30 60]

The growth model behind `feedforward: growth` and `approach: horizon` (scu/core/pi.py) says each step changes
ParamBPT by sensitivity / ln2 * (centre - avg), avg the AdamW-momentum average of the λs applied. A passive run cannot
test the sensitivity: the controller ties λ to past readings (bench.growth_readings). Here a controlled run is forked
at a few steps: from the same weights, optimizer state and data order, K steps are run holding λ at the controller's
λ times 1/r, 1 and r, and the run then goes on from the fork as if nothing happened. The twins see the same
batches, so the data's pull is the same in each and the difference of their ParamBPT is λ's doing alone. The model
predicts that difference as -sum_j sensitivity_j * (avg_j^b - avg_j^a) / ln2, avg's difference after j held steps
being dλ * (1 - b^j) / (1 - b^(t+j)) (Adam's bias-corrected momentum, t its steps at the fork). The ratio
measured / predicted, after each of the K steps, is 1 where the sensitivity is right; below 1, it overstates λ's
effect by 1/ratio.

Each run's result is one JSON file under --out (a finished run is not run again).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.pi_startup import Job, job_config, prepare, scu_settings
from bench.scu_vs_baselines import scaled_target
from scu.driver import Callback
from scu.report.records import atomic_write_json

# set C of docs/method.md (issue 18, item 1): the opt-in horizon approach with the deficit memory
SET_C = ["feedforward=growth", "growth_alpha=0.5", "approach=horizon", "horizon_memory=deficit", "kp=1", "ki=0",
         "start_band=0.2"]
LN2 = math.log(2.0)


def momentum_gap(held: int, adam_steps: int, b: float) -> float:
    """How much Adam's bias-corrected momentum of λ moves after `held` steps of λ raised by 1, from `adam_steps`."""
    return (1.0 - b ** held) / (1.0 - b ** (adam_steps + held))


class Twins(Callback):
    """At each fork step: K steps at each λ of the arms from one snapshot, then the snapshot restored."""

    def __init__(self, forks: list[int], horizon: int, ratio: float) -> None:
        self.forks, self.horizon, self.ratio = set(forks), horizon, ratio
        self.results: list[dict[str, Any]] = []

    def on_step_end(self, run: Any, row: dict[str, Any]) -> None:
        if row["step"] in self.forks:
            self.results.append(self.fork(run, row["step"]))

    def fork(self, run: Any, step: int) -> dict[str, Any]:
        import torch

        from scu.torch.loop import train_step, trainable

        params = trainable(run.model)
        weights = [p.detach().clone() for p in params]
        optimizer = copy.deepcopy(run.optimizer.state_dict())
        cursor, rng = run.state.cursor, torch.get_rng_state()
        adam_steps = int(next(iter(run.optimizer.state.values()))["step"])
        lam = run.session.lam
        lr = run.lr_at(run.state.step + 1) * run.state.lr_factor
        arms = {}
        for name, value in (("low", lam / self.ratio), ("mid", lam), ("high", lam * self.ratio)):
            with torch.no_grad():
                for p, w in zip(params, weights):
                    p.copy_(w)
            run.optimizer.load_state_dict(copy.deepcopy(optimizer))
            run.state.cursor = cursor
            torch.set_rng_state(rng)
            param_bpt, sensitivity, grad_norm = [], [], []
            for _ in range(self.horizon):
                res = train_step(run, value, lr)
                param_bpt.append(res.param_bpt)
                sensitivity.append(res.penalty_sensitivity)
                grad_norm.append(res.grad_norm)
            with torch.no_grad():
                param_bpt.append(float(run.penalty()))
            arms[name] = {"lambda": value, "param_bpt": param_bpt, "sensitivity": sensitivity, "grad_norm": grad_norm}
        with torch.no_grad():  # the run goes on from the fork as if it had not happened
            for p, w in zip(params, weights):
                p.copy_(w)
        run.optimizer.load_state_dict(optimizer)
        run.state.cursor = cursor
        torch.set_rng_state(rng)
        betas = run.optimizer.param_groups[0]["betas"]
        if run.cfg.scu.penalty_step == "decoupled":  # lambda reaches the weights without AdamW's momentum
            betas = (0.0, betas[1])
        kappa = signal_share(run, params)
        return {"step": step, "lambda": lam, "adam_steps": adam_steps, "signal_share": kappa, "arms": arms,
                "ratios": {pair: response(arms[lo], arms[hi], adam_steps, betas, kappa)
                           for pair, (lo, hi) in {"low-mid": ("low", "mid"), "mid-high": ("mid", "high")}.items()}}


def signal_share(run: Any, params: list) -> float:
    """kappa = <g_p, D rho g_p> / <g_p, D g_p>, rho = m_hat^2 / v_hat per entry: the share of the sensitivity in
    entries whose gradient is mostly its mean. There Adam's second moment follows lambda too, and a lambda held j
    steps takes back kappa * w_v(j) of its effect, w_v(j) the weight of those j steps in v_hat."""
    import torch

    from scu.torch.loop import adam_second_moments

    group = run.optimizer.param_groups[0]
    b1, eps = group["betas"][0], group["eps"]
    grads = torch.autograd.grad(run.penalty() * LN2, params, allow_unused=True)
    scaled = signal = 0.0
    for p, g, v in zip(params, grads, adam_second_moments(run.optimizer, params)):
        if g is None or v is None:
            continue
        m = run.optimizer.state[p]["exp_avg"].double() / (1.0 - b1 ** float(run.optimizer.state[p]["step"]))
        weight = g.double() ** 2 / (v.sqrt() + eps)
        scaled += float(weight.sum())
        signal += float((weight * (m * m / v.clamp_min(1e-30)).clamp(max=1.0)).sum())
    return signal / scaled if scaled else 0.0


def response(a: dict[str, Any], b_arm: dict[str, Any], adam_steps: int, betas: tuple[float, float],
             kappa: float = 0.0) -> dict[str, list[float]]:
    """After each held step j: ParamBPT's measured difference between the twins, the growth model's, their ratio,
    and the ratio the model would give if Adam's second moment followed lambda in kappa of the sensitivity."""
    d_lam = b_arm["lambda"] - a["lambda"]
    measured, predicted, adapted, total, total_adapted = [], [], [], 0.0, 0.0
    for j in range(1, len(a["sensitivity"]) + 1):
        sensitivity = 0.5 * (a["sensitivity"][j - 1] + b_arm["sensitivity"][j - 1])
        gap = momentum_gap(j, adam_steps, betas[0])
        total -= sensitivity * d_lam * gap / LN2
        total_adapted -= sensitivity * d_lam * (gap - kappa * momentum_gap(j, adam_steps, betas[1])) / LN2
        measured.append(b_arm["param_bpt"][j] - a["param_bpt"][j])
        predicted.append(total)
        adapted.append(total_adapted / total if total else float("nan"))
    return {"measured": measured, "predicted": predicted,
            "ratio": [m / p if p else float("nan") for m, p in zip(measured, predicted)], "ratio_if_v_follows": adapted}


def restoring_rate(a: dict[str, Any], b_arm: dict[str, Any], adam_steps: int, b: float) -> float:
    """The a that best fits d(P_b - P_a)_j = -sensitivity_j * d(avg)_j / ln2 - a * (P_b - P_a)_{j-1} over the held
    steps (least squares): how fast a difference of ParamBPT between the twins decays by itself."""
    d_lam = b_arm["lambda"] - a["lambda"]
    gap = [b_arm["param_bpt"][j] - a["param_bpt"][j] for j in range(len(a["param_bpt"]))]
    xy = xx = 0.0
    for j in range(len(a["sensitivity"])):
        sensitivity = 0.5 * (a["sensitivity"][j] + b_arm["sensitivity"][j])
        unexplained = gap[j + 1] - gap[j] + sensitivity * d_lam * momentum_gap(j + 1, adam_steps, b) / LN2
        xy, xx = xy - gap[j] * unexplained, xx + gap[j] ** 2
    return xy / xx if xx else float("nan")


def markdown(paths: list[Path]) -> str:
    """One row per fork of each result file: the ratio after 1, 5 and the last held step, for both pairs of arms, and
    the fitted restoring rate a with its exponent gamma = a / (lambda * sensitivity / (ln2 * ParamBPT))."""
    lines = ["| run | step | λ | ParamBPT | low–mid: 1 / 5 / K steps | mid–high: 1 / 5 / K steps | a per step (γ) |",
             "|---|---|---|---|---|---|---|"]
    brakes, fitted_rates = [], []
    for path in paths:
        r = json.loads(path.read_text())
        job = r["job"]
        for f in r["forks"]:
            cells = [" / ".join(f"{x[i]:.2f}" for i in (0, 4, -1)) for x in (f["ratios"][p]["ratio"] for p in ("low-mid", "mid-high"))]
            arms, mid = f["arms"], f["arms"]["mid"]
            scale = f["lambda"] * mid["sensitivity"][0] / (LN2 * mid["param_bpt"][0])
            rates = [restoring_rate(arms[lo], arms[hi], f["adam_steps"], 0.9) for lo, hi in (("low", "mid"), ("mid", "high"))]
            fitted = ", ".join(f"{x:.3f} ({x / scale:.2f})" for x in rates)
            if f["lambda"] > scu_settings(Job(**job))["lambda_min"]:  # a fork at lambda_min measures float noise
                brakes += [scale, scale]
                fitted_rates += rates
            lines.append(f"| {job['size']} S* {job['multiplier']:g}× seed {job['seed']} | {f['step']} | {f['lambda']:.3g} | "
                         f"{mid['param_bpt'][0]:.3g} | {cells[0]} | {cells[1]} | {fitted} |")
    if len(brakes) > 2:  # a = a0 + g * brake rate, least squares over every fork above lambda_min
        x = np.vstack([np.ones(len(brakes)), brakes]).T
        coef = np.linalg.lstsq(x, np.array(fitted_rates), rcond=None)[0]
        worst = float(np.abs(np.array(fitted_rates) - x @ coef).max())
        lines.append(f"\nOver these forks (λ above λ_min): a = {coef[0]:.3f} + {coef[1]:.3f} × λ·sensitivity/(ln 2·P), "
                     f"largest residual {worst:.3f} a step.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", nargs="+", type=Path, metavar="RESULT", help="print the markdown table of these results and exit")
    ap.add_argument("--scale", default="cpu", help="cpu (the tiny harness) or real (SmolLM2-135M)")
    ap.add_argument("--size", help="training-set size label (default: the scale's main size)")
    ap.add_argument("--multiplier", type=float, default=1.0, help="S* multiplier (tiny scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forks", type=int, nargs="+", default=[8, 15, 30, 60])
    ap.add_argument("--horizon", type=int, default=10, help="steps each twin holds its λ")
    ap.add_argument("--ratio", type=float, default=1.5, help="the arms hold λ/r, λ and λ·r")
    ap.add_argument("--set", nargs="*", default=SET_C, metavar="KEY=VALUE", help="the controlled run's scu settings")
    ap.add_argument("--out", default="bench/results/sensitivity_twin")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(args.table))
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from scu.torch.loop import train

    torch.set_num_threads(1)
    scale, manifest, sizes, _, middle = prepare(args.scale)
    size = args.size or sizes[0]
    target = scaled_target(middle, args.multiplier)
    job = Job("balance", size, args.multiplier, "default", args.seed, 1.0, "data", ",".join(args.set))
    path = Path(args.out) / scale.name / f"{job.name}_forks={'-'.join(map(str, args.forks))}_K={args.horizon}_r={args.ratio}.json"
    if path.exists():
        print(f"{path} exists: delete it to run again")
        return 0
    twins = Twins(args.forks, args.horizon, args.ratio)
    with tempfile.TemporaryDirectory() as tmp:
        train(job_config(job, scale, manifest["train"][size]["path"], target), Path(tmp) / "run", progress=False,
              callbacks=[twins])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"job": job.__dict__, "target_s": target, "horizon": args.horizon, "ratio": args.ratio,
                             "forks": twins.results})
    for f in twins.results:
        parts = ", ".join(f"{pair}: after 1 step {r['ratio'][0]:.2f}, after {args.horizon} {r['ratio'][-1]:.2f}"
                          for pair, r in f["ratios"].items())
        print(f"step {f['step']} (λ {f['lambda']:.3g}): measured / predicted {parts}")
    every = [r["ratio"][-1] for f in twins.results for r in f["ratios"].values()]
    print(f"median ratio after {args.horizon} steps: {statistics.median(every):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
