"""T-SCU panels for `scu plot` (tscu.png): power, temperature, control factor, bits per joule.

`with_tscu` adds each step's T-SCU figures from tscu_training_metrics.json to the run's
metrics.jsonl rows, so the panels use the same per-run series as the other plots. Without a
sensor the series are empty and the panel says so instead of drawing a flat line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scu.energy.runtime import METRICS_FILE

TSCU_KEYS = ("power_watts", "temperature_celsius", "control_factor", "bits_per_joule", "bits_learned", "energy_joules")


def with_tscu(run_dir: str | Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the T-SCU figures of the same step added (unchanged for a run without T-SCU)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return rows
    by_step = {r["step"]: r for r in json.loads(path.read_text())["steps"]}
    return [{**r, **{k: by_step[r["step"]].get(k) for k in TSCU_KEYS}} if r["step"] in by_step else r for r in rows]


def has_tscu(run: Any) -> bool:
    return any("control_factor" in r for r in run.rows)


def _tscu_config(run: Any) -> dict[str, Any]:
    return run.meta.get("config", {}).get("tscu", {})


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} reading (sensor unavailable)", ha="center", va="center", transform=ax.transAxes)


def draw_power(ax: Any, runs: list[Any], colors: list[str]) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        steps, watts = run.series("power_watts")
        if len(steps):
            drawn = True
            ax.plot(steps, watts, color=c, linewidth=1.2, label=f"{run.name} power")
            budget = _tscu_config(run).get("power_budget_watts")
            if budget:
                ax.axhline(budget, color=c, linestyle="--", linewidth=1.0, label=f"{run.name} budget {budget:g} W")
    if not drawn:
        _no_data(ax, "power")
    ax.set_ylabel("average power over the step [W]")
    ax.set_title("Power")


def draw_temperature(ax: Any, runs: list[Any], colors: list[str]) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        steps, temp = run.series("temperature_celsius")
        if len(steps):
            drawn = True
            ax.plot(steps, temp, color=c, linewidth=1.2, label=f"{run.name} hottest reading")
            cfg = _tscu_config(run)
            for key, style in (("max_temperature_celsius", "--"), ("pause_temperature_celsius", "-."),
                               ("resume_temperature_celsius", ":")):  # fmt: skip
                if cfg.get(key) is not None:
                    ax.axhline(cfg[key], color=c, linestyle=style, linewidth=0.9, alpha=0.7, label=key.split("_")[0])
    if not drawn:
        _no_data(ax, "temperature")
    ax.set_ylabel("°C")
    ax.set_title("Temperature (dashed: max, dash-dot: pause, dotted: resume)")


def draw_factor(ax: Any, runs: list[Any], colors: list[str]) -> None:
    for run, c in zip(runs, colors):
        steps, factor = run.series("control_factor")
        if len(steps):
            ax.step(steps, factor, where="post", color=c, linewidth=1.5, label=f"{run.name} factor")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("control factor (1 = full speed)")
    ax.set_title("T-SCU control factor")


def draw_bits_per_joule(ax: Any, runs: list[Any], colors: list[str]) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        pts = [(r["step"], r["bits_learned"], r["energy_joules"]) for r in run.rows
               if r.get("bits_learned") is not None and r.get("energy_joules")]  # fmt: skip
        if not pts:
            continue
        drawn = True
        steps, bits, joules = (np.asarray(x, dtype=float) for x in zip(*pts))
        ax.plot(steps, bits / joules, color=c, alpha=0.25, linewidth=0.8)
        ax.plot(steps, np.cumsum(bits) / np.cumsum(joules), color=c, linewidth=1.8, label=f"{run.name} since the start")
    if not drawn:
        _no_data(ax, "energy")
    ax.set_ylabel("bits learned per joule (faint: per step)")
    ax.set_title("Learning efficiency")


TSCU_PANELS = {"power": draw_power, "temperature": draw_temperature, "control_factor": draw_factor,
               "bits_per_joule": draw_bits_per_joule}  # fmt: skip
