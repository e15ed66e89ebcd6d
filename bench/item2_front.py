"""Issue 18 item 2 as a picture: held-out BPT against forgetting for every arm, per scale and size, with the region
where both parts of the goal hold and the arm under test marked.

    python -m bench.item2_front RESULT.json [RESULT.json ...] [--series RESULT.json ...] [--out FILE.png]

Each RESULT.json is a bench.setting_heldout result (any scale); its arm `name` is the one judged. One panel per
training size. `--series` results (e.g. one per S*) add their judged arms to the panels of the same scale and size,
joined by a line in the order of their S*, so a setting's own front shows beside the arms. The shaded corner is the goal: forgetting at most half of plain LoRA's, and held-out BPT within the
tolerance of the best tuned arm (both read from the result's own verdict). Nothing is rerun.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SCALE_NAMES = {"real": "SmolLM2-135M (dequantized Q4_1)", "cpu": "tiny WikiText Llama"}
MARKERS = {"unregularized": ("plain LoRA", "s", "black"), "early_stopping": ("plain + early stopping", "v", "dimgray"),
           "scu_defaults": ("pi at S* 5% (the harness's old-default arm)", "D", "tab:blue"), "scu_auto": ("weight-RMS prior", "x", "tab:purple"),
           "prior_fit": ("target_s: auto (plain fit)", "P", "tab:green")}


def panels(results: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], str, str]]:
    """(scale, size, that size's entry, the judged arm's name, its label) for every size of every result that has a
    verdict. An arm whose settings are `law: auto` written out is labelled as the default."""
    from scu.config.schema import AUTO_BALANCE

    def label(r: dict[str, Any]) -> str:
        return "the default: law auto, S* 5%" if r["scu"] == AUTO_BALANCE else r["name"]

    return [(r["scale"], size, entry, r["name"], label(r)) for r in results for size, entry in r["sizes"].items()
            if entry.get("verdict")]


def plain_name(arm: str) -> str:
    return re.sub(r"^N=[^/]+/", "", arm)


def series_points(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[float, dict[str, Any]]]]:
    """The judged arm of each result, by (scale, size), as (its S*, its stats), in the order of S*."""
    points: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = {}
    for r in results:
        for size, entry in r["sizes"].items():
            arm = next((v for k, v in entry["arms"].items() if plain_name(k) == r["name"]), None)
            if arm is not None:
                points.setdefault((r["scale"], size), []).append((float(r["scu"].get("target_s", 0.05)), arm))
    return {key: sorted(found, key=lambda p: p[0]) for key, found in points.items()}


def draw(ax: Any, scale: str, size: str, entry: dict[str, Any], judged: str, label: str,
         series: list[tuple[float, dict[str, Any]]] = ()) -> None:
    arms = {plain_name(k): v for k, v in entry["arms"].items()}
    v = entry["verdict"]
    x_goal = 0.5 * v["forgetting_plain"]
    y_goal = v["best_tuned_test"]["mean"] + v["tolerance"]
    grid = sorted((float(k.split("=")[1]), a) for k, a in arms.items() if k.startswith("fixed_lambda="))
    if grid:
        ax.plot([a["forgetting"]["mean"] for _, a in grid], [a["test"]["mean"] for _, a in grid], "o-", color="tab:orange",
                label="fixed λ grid")
        for lam, a in grid:
            ax.annotate(f"λ {lam:g}", (a["forgetting"]["mean"], a["test"]["mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for key, (name, marker, color) in MARKERS.items():
        if key in arms:
            a = arms[key]
            ax.errorbar(a["forgetting"]["mean"], a["test"]["mean"], xerr=a["forgetting"]["std"], yerr=a["test"]["std"],
                        fmt=marker, color=color, label=name)
    for key, a in arms.items():
        if key.startswith("lora_dropout="):
            ax.errorbar(a["forgetting"]["mean"], a["test"]["mean"], xerr=a["forgetting"]["std"], yerr=a["test"]["std"],
                        fmt="^", color="tab:brown", label=f"LoRA dropout {key.split('=')[1]}")
    if series:
        ax.plot([a["forgetting"]["mean"] for _, a in series], [a["test"]["mean"] for _, a in series], "s--",
                color="tab:pink", markersize=4, label="law auto, other S*")
        for target, a in series:
            ax.annotate(f"S* {target:g}", (a["forgetting"]["mean"], a["test"]["mean"]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    a = arms[judged]
    ax.errorbar(a["forgetting"]["mean"], a["test"]["mean"], xerr=a["forgetting"]["std"], yerr=a["test"]["std"], fmt="*",
                markersize=14, color="tab:red", label=label)
    x_lo, x_hi = ax.get_xlim()
    y_lo, y_hi = ax.get_ylim()
    ax.fill_between([x_lo, x_goal], y_lo, y_goal, color="tab:green", alpha=0.12, label="goal: both parts")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    met = "met" if v["held_out_met"] and v["forgetting_met"] else "not met"
    ax.set_title(f"{SCALE_NAMES.get(scale, scale)}, {size} tokens: {met}", fontsize=9)
    ax.set_xlabel("forgetting: WikiText BPT − base's")
    ax.set_ylabel("held-out in-domain BPT")
    ax.legend(fontsize=6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--series", nargs="*", type=Path, default=[], help="results whose judged arms form one line")
    ap.add_argument("--out", type=Path, default=Path("bench/results/setting_heldout/item2_front.png"))
    args = ap.parse_args(argv)
    missing = [str(p) for p in [*args.results, *args.series] if not p.is_file()]
    if missing:
        raise SystemExit(f"no such result: {missing[0]}; run bench.setting_heldout first")
    todo = panels([json.loads(p.read_text()) for p in args.results])
    series = series_points([json.loads(p.read_text()) for p in args.series])
    if not todo:
        raise SystemExit("these results have no verdict yet (no job of the judged arm finished)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scu.report.records import atomic_path

    cols = min(3, len(todo))
    rows = -(-len(todo) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, todo):
        draw(ax, *panel, series=series.get(panel[:2], []))
    for ax in list(axes.flat)[len(todo):]:
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
