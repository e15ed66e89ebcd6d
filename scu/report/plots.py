"""`scu plot RUN_DIR [RUN_DIR ...]`: PNGs of what the controller did, one run or several overlaid.

    s.png        S(t) (per step, faint; smoothed, bold) with the target S* and the ±5% equilibrium band
    lambda.png   λ(t) on a log scale, with the bounds
    bpt.png      DataBPT(t) (per step, faint; 25-step mean, bold; held-out BPT as points) and ParamBPT(t)
    overview.png the four panels together
    tscu.png     power, temperature, T-SCU control factor, bits per joule (runs with T-SCU; docs/tscu.md)

The λ-equilibrium step (metadata.json) is a dotted vertical line in every panel. Rendering uses
matplotlib's Agg canvas directly, so no display is needed.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scu import ScuError
from scu.core.equilibrium import EquilibriumConfig
from scu.energy.figures import TSCU_PANELS, has_tscu, with_tscu
from scu.report.records import MetricsLog, atomic_path, read_json

SMOOTH = 25  # steps in the running mean of the per-step DataBPT
PLOT_DIR = "plots"  # where `scu plot RUN_DIR` puts the PNGs of one run


@dataclass
class RunRecord:
    name: str
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the rows where `key` has a finite value."""
        pts = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if not pts:
            return np.array([]), np.array([])
        steps, values = zip(*pts)
        return np.asarray(steps), np.asarray(values, dtype=float)

    @property
    def equilibrium_step(self) -> int | None:
        return self.meta.get("equilibrium_step")

    @property
    def controlled(self) -> bool:
        """λ was PI-controlled toward S* (not fixed, SCU on): only then is S* a target the run tracked."""
        scu = self.meta.get("config", {}).get("scu", {})
        return bool(scu.get("enabled", True)) and scu.get("lambda_min") != scu.get("lambda_max")

    @property
    def s_tolerance(self) -> float:
        section = self.meta.get("config", {}).get("equilibrium", {})
        return float(section.get("s_tolerance", EquilibriumConfig.s_tolerance))


def load_run(run_dir: str | Path, name: str | None = None) -> RunRecord:
    d = Path(run_dir)
    rows = MetricsLog(d / "metrics.jsonl").read()
    if not rows:
        raise ScuError(f"{d} has no metrics.jsonl rows; pass a `scu train` run directory")
    rows = with_tscu(d, rows)
    meta = read_json(d / "metadata.json") or {}
    return RunRecord(name or d.resolve().name, rows, meta)


def _mark_equilibrium(ax: Any, run: RunRecord, color: str) -> None:
    if run.equilibrium_step is not None:
        ax.axvline(run.equilibrium_step, color=color, linestyle=":", linewidth=1.5)


def _running_mean(values: np.ndarray, n: int) -> np.ndarray:
    if len(values) < n:
        return values
    kernel = np.ones(n) / n
    head = np.cumsum(values[: n - 1]) / np.arange(1, n)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def draw_s(ax: Any, runs: list[RunRecord], colors: list[str]) -> None:
    band_label = True
    for run, c in zip(runs, colors):
        steps, s = run.series("s")
        if not len(steps):
            continue
        ax.plot(steps, 100 * s, color=c, alpha=0.25, linewidth=0.8)
        hat_steps, s_hat = run.series("s_hat")
        ax.plot(hat_steps, 100 * s_hat, color=c, linewidth=1.8, label=f"{run.name} S (smoothed)")
        t_steps, target = run.series("target_s")
        if len(t_steps) and run.controlled:
            tol = run.s_tolerance
            ax.plot(t_steps, 100 * target, color=c, linestyle="--", linewidth=1.2, label=f"{run.name} S*")
            ax.fill_between(t_steps, 100 * target * (1 - tol), 100 * target * (1 + tol), color=c, alpha=0.12,
                            label=f"±{100 * tol:g}% of S* (equilibrium band)" if band_label else None)
            band_label = False
        _mark_equilibrium(ax, run, c)
    ax.set_ylabel("S = ParamBPT / (DataBPT + ParamBPT)  [%]")
    ax.set_title("Information ratio S")


def draw_lambda(ax: Any, runs: list[RunRecord], colors: list[str]) -> None:
    for run, c in zip(runs, colors):
        steps, lam = run.series("lambda")
        keep = lam > 0  # a log axis cannot show lambda = 0 (plain LoRA or a fixed lambda of 0)
        if not keep.any():
            continue
        ax.plot(steps[keep], lam[keep], color=c, linewidth=1.5, label=f"{run.name} λ")
        scu = run.meta.get("config", {}).get("scu", {})
        for bound in (scu.get("lambda_min"), scu.get("lambda_max")):
            if bound:
                ax.axhline(bound, color=c, linestyle="--", linewidth=0.8, alpha=0.5)
        _mark_equilibrium(ax, run, c)
    ax.set_yscale("log")
    ax.set_ylabel("λ (log scale; dashed: bounds)")
    ax.set_title("Regularization weight λ")


def draw_data_bpt(ax: Any, runs: list[RunRecord], colors: list[str]) -> None:
    for run, c in zip(runs, colors):
        steps, bpt = run.series("data_bpt")
        ax.plot(steps, bpt, color=c, alpha=0.2, linewidth=0.8)
        ax.plot(steps, _running_mean(bpt, SMOOTH), color=c, linewidth=1.8, label=f"{run.name} DataBPT ({SMOOTH}-step mean)")
        v_steps, val = run.series("val_bpt")
        if len(v_steps):
            ax.plot(v_steps, val, color=c, marker="o", markersize=3.5, linestyle="-", linewidth=1.0,
                    markerfacecolor="white", label=f"{run.name} held-out BPT")
        _mark_equilibrium(ax, run, c)
    ax.set_ylabel("bits per token")
    ax.set_title("DataBPT (training) and held-out BPT")


def draw_param_bpt(ax: Any, runs: list[RunRecord], colors: list[str]) -> None:
    for run, c in zip(runs, colors):
        steps, pbpt = run.series("param_bpt")
        if len(steps):
            ax.plot(steps, pbpt, color=c, linewidth=1.5, label=f"{run.name} ParamBPT")
        _mark_equilibrium(ax, run, c)
    ax.set_ylabel("bits per training token")
    ax.set_title("ParamBPT")


def _finish(ax: Any, runs: list[RunRecord]) -> None:
    ax.set_xlabel("optimizer step")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(r.equilibrium_step is not None for r in runs):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="gray", linestyle=":", linewidth=1.5))
        labels.append("λ-equilibrium step")
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")


PANELS = {"s": draw_s, "lambda": draw_lambda, "data_bpt": draw_data_bpt, "param_bpt": draw_param_bpt, **TSCU_PANELS}
FILES = {"s.png": ["s"], "lambda.png": ["lambda"], "bpt.png": ["data_bpt", "param_bpt"],
         "overview.png": ["s", "lambda", "data_bpt", "param_bpt"], "tscu.png": list(TSCU_PANELS)}


def plot_runs(runs: list[RunRecord], out_dir: str | Path) -> list[Path]:
    """Write the PNGs for `runs` (overlaid, one color each) into out_dir; return their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    title = runs[0].name if len(runs) == 1 else " vs ".join(r.name for r in runs)
    written = []
    for filename, panels in FILES.items():
        if filename == "tscu.png" and not any(has_tscu(r) for r in runs):
            continue
        rows, cols = (1, len(panels)) if len(panels) < 4 else (2, 2)
        fig = Figure(figsize=(6.5 * cols, 4.2 * rows), layout="constrained")
        FigureCanvasAgg(fig)
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(rows, cols, i + 1)
            PANELS[panel](ax, runs, colors)
            _finish(ax, runs)
        fig.suptitle(title)
        path = out / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        written.append(path)
    return written


def register(sub: Any) -> None:
    p = sub.add_parser("plot", help="PNGs of S, λ, DataBPT and ParamBPT over a run (several runs overlaid)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="`scu train` output directories")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: RUN_DIR/plots for one run, ./plots for several)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.run_dirs]
    names = [d.resolve().name for d in dirs]
    runs = [load_run(d, n if names.count(n) == 1 else str(d)) for d, n in zip(dirs, names)]
    out = Path(args.out) if args.out else (dirs[0] / PLOT_DIR if len(dirs) == 1 else Path(PLOT_DIR))
    for path in plot_runs(runs, out):
        print(path)
    return 0
