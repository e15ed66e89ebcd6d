"""From cached job results to per-arm statistics, the S* transfer analysis and the goal verdicts.

Every selection (best fixed λ, best weight decay, the middle S*, a transfer rule) uses the validation
slice; the held-out sets are only reported. "Within noise" means: mean held-out BPT no worse than the
reference's mean by more than max(0.5% of it, 2 sigma_seed), sigma_seed the larger of the two arms'
standard deviations over seeds.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone
from typing import Any

Results = dict[str, dict[str, Any]]

TRACKING_KEYS = ("error", "in_band", "settling_step", "overshoot", "log_lambda_p2p", "at_bound")
LIMIT_CYCLE_P2P = 0.5  # log-λ peak-to-peak (a factor 1.65) that, with repeated crossings of S*, counts as a cycle


def stats(values: list[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "missing": len(values) - len(vals)}


def by_arm(results: Results) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in results.values():
        arms.setdefault(r["arm"], []).append(r)
    for runs in arms.values():
        runs.sort(key=lambda r: r["seed"])
    return arms


def best_test(r: dict[str, Any]) -> tuple[float, int]:
    """Lowest held-out Shakespeare BPT among the evaluations along the way (the final one included)."""
    points = [(p["test"], p["step"]) for p in r["curve"] if "test" in p] + [(r["final"]["test"], r["final"]["step"])]
    return min(points)


def detrended_p2p(values: list[float]) -> float:
    """Peak-to-peak of the values' residuals from their least-squares line: the swing left once a drift is removed."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, statistics.fmean(values)
    slope = sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))
    residuals = [v - my - slope * (i - mx) for i, v in enumerate(values)]
    return max(residuals) - min(residuals)


def limit_cycle(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Second half: log-λ peak-to-peak and how often S_hat crossed S*; both large means an oscillation.

    `cycle` reads the raw peak-to-peak, which also counts a λ* that drifts (the data's pull grows as the adapter
    learns, and λ must follow it to hold S). `cycle_detrended` reads it after removing the half's linear trend: a
    cycle is a swing about the trend, and a line absorbs no oscillation of a period under the half's length."""
    half = [r for r in rows if r["s"] is not None]
    half = half[len(half) // 2 :]
    if not half:
        return {"p2p_2nd_half": None, "p2p_detrended_2nd_half": None, "crossings_2nd_half": None, "cycle": None,
                "cycle_detrended": None}
    logs = [math.log(r["lambda"]) for r in half if r["lambda"] > 0]
    side = [r["s_hat"] >= target for r in half]
    crossings = sum(a != b for a, b in zip(side, side[1:]))
    p2p = max(logs) - min(logs) if logs else 0.0
    swing = detrended_p2p(logs)
    return {"p2p_2nd_half": p2p, "p2p_detrended_2nd_half": swing, "crossings_2nd_half": crossings,
            "cycle": p2p >= LIMIT_CYCLE_P2P and crossings >= 2,
            "cycle_detrended": swing >= LIMIT_CYCLE_P2P and crossings >= 2}


def arm_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if runs[0].get("kind") == "overhead":
        r = runs[0]
        return {"kind": "overhead", **{k: r[k] for k in ("pairs", "median_step_s_scu", "median_step_s_off",
                                                         "median_pair_ratio", "ratio_of_medians", "torch_threads")}}
    out: dict[str, Any] = {
        "seeds": [r["seed"] for r in runs],
        "size": runs[0]["size"],
        "tokens_per_epoch": runs[0]["tokens_per_epoch"],
        "test_final": stats([r["final"]["test"] for r in runs]),
        "test_best": stats([best_test(r)[0] for r in runs]),
        "test_best_step": stats([best_test(r)[1] for r in runs]),
        "wiki_final": stats([r["final"]["wiki"] for r in runs]),
        "val_final": stats([r["final"]["val"] for r in runs]),
        "dw_norm_final": stats([r["final"]["dw_norm"] for r in runs]),
        "steps": stats([r["steps"] for r in runs]),
        "train_wall_s": stats([r["train_wall_s"] for r in runs]),
        "wall_s": stats([r["wall_s"] for r in runs]),
        "median_step_s": stats([r["median_step_s"] for r in runs]),
        "mean_s_2nd_half": stats([r.get("mean_s_2nd_half") for r in runs]),
        "mean_lambda_2nd_half": stats([r.get("mean_lambda_2nd_half") for r in runs]),
        "final_lambda": stats([r.get("final_lambda") for r in runs]),
    }
    if "tracking" in runs[0]:
        target = runs[0]["config"]["scu"]["target_s"]
        out["target_s"] = target
        out["tracking"] = {k: stats([r["tracking"][k] for r in runs]) for k in TRACKING_KEYS}
        out["tracking"]["at_bound_2nd_half"] = stats([r["at_bound_2nd_half"] for r in runs])
        out["tracking"]["odds_error"] = stats([r["odds_error"] for r in runs])
        out["tracking"]["never_settled"] = sum(r["tracking"]["settling_step"] is None for r in runs)
        cycles = [limit_cycle(r.get("rows", []), target) for r in runs]
        out["limit_cycle"] = {
            "p2p_2nd_half": stats([c["p2p_2nd_half"] for c in cycles]),
            "crossings_2nd_half": stats([c["crossings_2nd_half"] for c in cycles]),
            "runs_with_cycle": sum(bool(c["cycle"]) for c in cycles),
        }
    if runs[0].get("switch"):
        sw = [r["switch"] for r in runs]
        out["switch"] = {
            "step": sw[0]["step"],
            "max_deviation_after": stats([x.get("max_deviation_after") for x in sw]),
            "resettle_steps": stats([x.get("resettle_steps") for x in sw]),
            "never_resettled": sum(x.get("resettle_steps") is None for x in sw),
            "error_after": stats([x["tracking_after"]["error"] for x in sw if "tracking_after" in x]),
        }
    return out


def stop_stats(runs: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Early stopping / auto-stop against the same run's best held-out checkpoint along the way."""
    rows = []
    for r in runs:
        budget = r["config"]["training"]["steps"]
        best, best_step = best_test(r)
        stop = r.get(key)  # early stopping always has one: the best-validation checkpoint at the budget if never triggered
        fired = stop is not None and stop.get("triggered", True)
        step = stop["step" if key == "auto_stop" else "stop_step"] if stop else budget
        test = stop["test"] if stop else r["final"]["test"]
        rows.append({
            "seed": r["seed"], "fired": fired, "stop_step": step, "budget": budget,
            "steps_saved": 1 - step / budget, "test": test, "wiki": stop["wiki"] if stop else r["final"]["wiki"],
            "best_test_along_the_way": best, "best_step": best_step, "penalty_vs_best": test / best - 1,
            "budget_at_least_2x_best_step": budget >= 2 * best_step,
            "train_wall_s": stop["train_wall_s"] if stop else r["train_wall_s"],
        })
    if not rows:
        return None
    return {
        "per_seed": rows,
        "fired": sum(x["fired"] for x in rows),
        **{k: stats([x[k] for x in rows]) for k in ("stop_step", "steps_saved", "test", "wiki", "penalty_vs_best",
                                                   "best_step", "train_wall_s")},
        "regime_holds": all(x["budget_at_least_2x_best_step"] for x in rows),
    }


def within_noise(arm: dict[str, Any] | None, ref: dict[str, Any] | None, key: str = "test_final") -> dict[str, Any] | None:
    if not arm or not ref or not arm.get(key) or not ref.get(key):
        return None
    a, b = arm[key], ref[key]
    tol = max(0.005 * b["mean"], 2 * max(a["std"], b["std"]))
    return {"arm": a["mean"], "ref": b["mean"], "diff": a["mean"] - b["mean"], "rel_diff": a["mean"] / b["mean"] - 1,
            "tolerance": tol, "within": a["mean"] - b["mean"] <= tol, "better": a["mean"] < b["mean"]}


def pick_by_val(arms: dict[str, dict[str, Any]], prefix: str, complete: int | None = None) -> str | None:
    """The arm among `prefix*` with the lowest mean validation BPT (λ = 0 and incomplete arms excluded)."""
    cands = {k: v for k, v in arms.items() if k.startswith(prefix) and not k.endswith("=0") and v.get("val_final")}
    if complete is not None:
        cands = {k: v for k, v in cands.items() if v["val_final"]["n"] >= complete}
    return min(cands, key=lambda k: cands[k]["val_final"]["mean"]) if cands else None


def value_of(arm: str) -> float:
    return float(arm.rsplit("=", 1)[1].rstrip("x"))


def summarize(results: Results, plan: Any, scale: Any, manifest: dict[str, Any], elapsed: float, note: str,
              base_bpt: dict[str, float] | None = None) -> dict[str, Any]:
    grouped = by_arm(results)
    arms = {name: arm_stats(runs) for name, runs in grouped.items()}
    main = plan.main
    n_lambda = len([x for x in scale.lambdas if x > 0])
    grid = [a for a in arms if a.startswith("fixed_lambda=") and not a.endswith("=0")]
    grid_done = len(grid) == n_lambda and all(arms[a]["val_final"]["n"] >= len(plan.seeds) for a in grid)
    best_lambda = pick_by_val(arms, "fixed_lambda=") if grid_done else None
    middle = None
    if best_lambda is not None and arms[best_lambda]["mean_s_2nd_half"]:
        middle = float(f"{arms[best_lambda]['mean_s_2nd_half']['mean']:.3g}")
    if "unregularized" in grouped:
        arms["early_stopping"] = stop_stats(grouped["unregularized"], "early_stop")
    headline = "scu_target=1x"
    if headline in grouped:
        arms["scu_auto_stop"] = stop_stats(grouped[headline], "auto_stop")
    if "scu_auto" in grouped:  # target_s: auto, with its fixed-λ equilibrium (docs/method.md)
        arms["scu_auto/auto-stop"] = stop_stats(grouped["scu_auto"], "auto_stop")
    summary: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": note,
        "elapsed_s": elapsed,
        "jobs": len(results),
        "cpu_s_total": sum(r.get("cpu_s") or 0.0 for r in results.values()),
        "scale": scale_dict(scale),
        "seeds": {"arms": len(plan.seeds), "headline": len(plan.headline)},
        "data": {"train_tokens": {k: v["tokens"] for k, v in manifest["train"].items()}, "sets": manifest["sets"],
                 "dropped_as_in_pool": manifest["dropped_as_in_pool"], "shakespeare_chars": manifest["shakespeare_chars"]},
        "main_size": main,
        "best_fixed_lambda": best_lambda,
        "best_weight_decay": pick_by_val(arms, "weight_decay="),
        "best_dropout": pick_by_val(arms, "lora_dropout="),
        "middle_target": middle,
        "arms": arms,
    }
    summary["base_bpt"] = base_bpt
    summary["transfer"] = transfer(arms, plan, scale, manifest, middle, None if base_bpt is None else base_bpt["wiki"])
    summary["goals"] = goals(summary, scale)
    summary["diagnostics"] = diagnostics(summary, scale)
    return summary


def scale_dict(scale: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(scale)


def auto_verdict(arms: dict[str, Any], prefix: str, base_wiki: float | None) -> dict[str, Any] | None:
    """Issue 18's test of `target_s: auto` at one size: held-out BPT within max(1%, 2σ) of the best tuned
    baseline (the best of the fixed-λ grid, the dropout grid and early stopping, each picked on validation)
    and forgetting (WikiText BPT minus the base's) at most half of plain LoRA's."""
    auto, plain = arms.get(prefix + "scu_auto"), arms.get(prefix + "unregularized")
    if not auto or not auto.get("test_final"):
        return None
    tuned = {}
    for family in ("fixed_lambda=", "lora_dropout="):
        pool = {k: v for k, v in arms.items() if (prefix or "/" not in k) and k.startswith(prefix + family)}
        best = pick_by_val(pool, prefix + family)
        if best is not None:
            tuned[best] = arms[best]["test_final"]
    early = arms.get("early_stopping") if not prefix else None
    if early and early.get("test"):
        tuned["early_stopping"] = early["test"]
    out: dict[str, Any] = {"test": auto["test_final"], "wiki": auto["wiki_final"]}
    if tuned:
        name = min(tuned, key=lambda k: tuned[k]["mean"])
        ref = tuned[name]
        tol = max(0.01 * ref["mean"], 2 * max(auto["test_final"]["std"], ref["std"]))
        out["best_tuned"] = {"arm": name, "test": ref, "rel_diff": auto["test_final"]["mean"] / ref["mean"] - 1,
                             "within": auto["test_final"]["mean"] - ref["mean"] <= tol, "tolerance": tol}
    if base_wiki is not None and plain and plain.get("wiki_final"):
        forget_auto, forget_plain = auto["wiki_final"]["mean"] - base_wiki, plain["wiki_final"]["mean"] - base_wiki
        out["forgetting"] = {"auto": forget_auto, "plain_lora": forget_plain,
                             "at_most_half": forget_auto <= 0.5 * forget_plain}
    return out


def transfer(arms: dict[str, Any], plan: Any, scale: Any, manifest: dict[str, Any], middle: float | None,
             base_wiki: float | None = None) -> dict[str, Any]:
    """Per training size: S at the best fixed λ, SCU at each S*, and whether one S* (or one λ) is within noise everywhere."""
    sizes: dict[str, Any] = {}
    for size in plan.sizes:
        prefix = "" if size == plan.main else f"N={size}/"
        lam_arms = {k: v for k, v in arms.items() if k.startswith(prefix + "fixed_lambda=") and (prefix or "/" not in k)}
        best = pick_by_val(lam_arms, prefix + "fixed_lambda=")
        entry: dict[str, Any] = {
            "tokens": manifest["train"][size]["tokens"],
            "lambdas": {value_of(k): {"test": v["test_final"], "val": v["val_final"], "s": v["mean_s_2nd_half"],
                                     "dw_norm": v["dw_norm_final"]} for k, v in lam_arms.items()},
            "best_lambda": None if best is None else value_of(best),
            "s_at_best_lambda": None if best is None or not arms[best]["mean_s_2nd_half"] else arms[best]["mean_s_2nd_half"]["mean"],
            "test_at_best_lambda": None if best is None else arms[best]["test_final"],
            "scu": {},
        }
        for m in scale.multipliers:
            arm = arms.get(f"{prefix}scu_target={m:g}x")
            if arm:
                entry["scu"][m] = {"target": arm["target_s"], "test": arm["test_final"], "val": arm["val_final"],
                                   "final_lambda": arm["final_lambda"], "tracking_error": arm["tracking"]["error"],
                                   "vs_best_lambda": within_noise(arm, None if best is None else arms[best])}
        entry["auto"] = auto_verdict(arms, prefix, base_wiki)
        rule = arms.get(f"{prefix}scu_rule")
        if rule:
            entry["rule"] = {"target": rule["target_s"], "test": rule["test_final"], "final_lambda": rule["final_lambda"],
                             "vs_best_lambda": within_noise(rule, None if best is None else arms[best])}
        sizes[size] = entry
    out: dict[str, Any] = {"middle_target": middle, "sizes": sizes}
    complete = all(sizes[s]["best_lambda"] is not None and len(sizes[s]["scu"]) == len(scale.multipliers) for s in plan.sizes)
    out["complete"] = complete
    if complete:
        passing = [m for m in scale.multipliers if all((sizes[s]["scu"][m]["vs_best_lambda"] or {}).get("within") for s in plan.sizes)]
        out["one_s_star_within_noise"] = passing
        out["s_range_at_best_lambda"] = [sizes[s]["s_at_best_lambda"] for s in plan.sizes]
        lam0 = sizes[plan.main]["best_lambda"]
        out["lambda_transfer"] = {
            "lambda": lam0,
            "per_size": {s: within_noise(arms.get(("" if s == plan.main else f"N={s}/") + f"fixed_lambda={lam0:g}"),
                                         arms.get(("" if s == plan.main else f"N={s}/") + f"fixed_lambda={sizes[s]['best_lambda']:g}"))
                         for s in plan.sizes},
        }
        out["rule_fit"] = fit_rule(sizes, plan)
    return out


def odds(s: float) -> float:
    return s / (1 - s)


def fit_rule(sizes: dict[str, Any], plan: Any) -> dict[str, Any] | None:
    """ParamBPT/DataBPT = S*/(1 - S*) = a * N^b through the validation-chosen S at the smaller sizes; predicts S*
    at the largest size. (At a fixed learned change ParamBPT is proportional to 1/N, so b = -1 would mean "keep
    the learned change's size fixed"; the fit lets the data say.)"""
    fit_sizes, test_size = plan.sizes[:-1], plan.sizes[-1]
    pts = [(math.log(sizes[s]["tokens"]), math.log(odds(sizes[s]["s_at_best_lambda"]))) for s in fit_sizes
           if sizes[s]["s_at_best_lambda"]]
    if len(pts) < 2:
        return None
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    a = my - b * mx
    r = math.exp(a + b * math.log(sizes[test_size]["tokens"]))
    return {"rule": "S*/(1 - S*) = exp(a) * N^b, least squares on the log at the best-validation λ of the smaller sizes",
            "fit_sizes": fit_sizes, "a": a, "b": b, "size": test_size, "target": float(f"{r / (1 + r):.3g}")}


def transfer_rule(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The rule to test in phase 4, or None when one S* already transfers (or the transfer grid is incomplete)."""
    t = summary["transfer"]
    if not t.get("complete") or t.get("one_s_star_within_noise"):
        return None
    return t.get("rule_fit")


def goal(name: str, criterion: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"goal": name, "criterion": criterion, "measured": measured, "met": met}


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def tracking_goals(arm: dict[str, Any], label: str, steps: int) -> list[dict[str, Any]]:
    tr, lc = arm["tracking"], arm["limit_cycle"]
    settle = tr["settling_step"]
    settled = tr["never_settled"] == 0 and settle is not None and settle["mean"] <= 0.2 * steps
    return [
        goal(f"tracking ({label}): error", "|mean S − S*|/S* over the 2nd half <= 5%",
             pct(tr["error"]["mean"]), tr["error"]["mean"] <= 0.05),
        goal(f"tracking ({label}): in band", "smoothed S within ±10% for >= 90% of the 2nd half",
             pct(tr["in_band"]["mean"]), tr["in_band"]["mean"] >= 0.9),
        goal(f"tracking ({label}): settling", f"settling step <= 20% of {steps} steps, every seed",
             f"mean {settle['mean']:.0f}, never settled in {tr['never_settled']} seed(s)" if settle
             else f"never settled in {tr['never_settled']} seed(s)", settled),
        goal(f"tracking ({label}): overshoot", "overshoot <= 20%", pct(tr["overshoot"]["mean"]), tr["overshoot"]["mean"] <= 0.2),
        goal(f"tracking ({label}): no limit cycle",
             f"no seed with log-λ peak-to-peak >= {LIMIT_CYCLE_P2P} and >= 2 crossings of S* in the 2nd half",
             f"{lc['runs_with_cycle']} seed(s) cycling; log-λ p2p {lc['p2p_2nd_half']['mean']:.2f}, "
             f"crossings {lc['crossings_2nd_half']['mean']:.1f}", lc["runs_with_cycle"] == 0),
    ]


def gains_goal(arm: dict[str, Any], label: str) -> dict[str, Any]:
    tr = arm["tracking"]
    return goal(f"robustness: {label}", "settles (S_hat stays within ±10% from some step on), every seed",
                f"never settled in {tr['never_settled']} of {tr['error']['n']} seed(s); error {pct(tr['error']['mean'])}",
                tr["never_settled"] == 0)


def switch_goal(arm: dict[str, Any], steps: int) -> dict[str, Any]:
    x = arm["switch"]
    r = x["resettle_steps"]
    ok = x["never_resettled"] == 0 and r is not None and r["mean"] <= 0.15 * steps
    return goal("robustness: mid-run data switch", f"re-settles within 15% of {steps} steps, every seed",
                f"max deviation after the switch {pct(x['max_deviation_after']['mean'])}; "
                + (f"re-settled after {r['mean']:.0f} steps (mean); " if r else "")
                + f"never re-settled in {x['never_resettled']} seed(s)", ok)


def diagnostics(summary: dict[str, Any], scale: Any) -> list[dict[str, Any]]:
    """The tracking and robustness criteria on the arms started at the best fixed λ (no goal verdict)."""
    arms, out = summary["arms"], []
    steps = scale.run.steps
    for name in sorted(a for a in arms if a.startswith("scu_init=")):
        arm = arms[name]
        if "," not in name:
            out += tracking_goals(arm, f"{name}, S* {arm['target_s']:.3g}", steps)
        elif "switch" in arm:
            out.append({**switch_goal(arm, steps), "goal": f"{name}: re-settles after the data switch"})
        else:
            out.append({**gains_goal(arm, name), "goal": f"{name}: settles"})
    return out


def goals(summary: dict[str, Any], scale: Any) -> list[dict[str, Any]]:
    arms, out = summary["arms"], []
    steps = scale.run.steps
    # validity
    grid = sorted((value_of(k), k) for k in arms if k.startswith("fixed_lambda=") and not k.endswith("=0"))
    if len(grid) >= 2:
        lo, hi = arms[grid[0][1]], arms[grid[-1][1]]
        sig = [within_noise(hi, lo, key) for key in ("dw_norm_final", "test_final")]
        differ = all(w is not None and abs(w["diff"]) > max(2 * max(hi[k]["std"], lo[k]["std"]), 0.01 * abs(lo[k]["mean"]))
                     for w, k in zip(sig, ("dw_norm_final", "test_final")))
        out.append(goal("validity: grid ends differ", f"λ={grid[0][0]:g} vs λ={grid[-1][0]:g}: ‖ΔW‖ and held-out BPT differ by > 2σ and > 1%",
                        f"‖ΔW‖ {lo['dw_norm_final']['mean']:.4g} vs {hi['dw_norm_final']['mean']:.4g}; "
                        f"BPT {lo['test_final']['mean']:.4f} vs {hi['test_final']['mean']:.4f}", differ))
        s_vals = [arms[k]["mean_s_2nd_half"]["mean"] for _, k in grid if arms[k]["mean_s_2nd_half"]]
        ratio = max(s_vals) / min(s_vals) if s_vals and min(s_vals) > 0 else None
        out.append(goal("validity: S varies across the λ grid", "max/min steady-state S >= 2",
                        "n/a" if ratio is None else f"{ratio:.1f}x ({min(s_vals):.3g} .. {max(s_vals):.3g})",
                        None if ratio is None else ratio >= 2))
    zero, unreg = arms.get("fixed_lambda=0"), arms.get("unregularized")
    if zero and unreg:
        a, b = zero["test_final"], unreg["test_final"]
        rel = abs(a["mean"] / b["mean"] - 1)
        out.append(goal("validity: λ = 0 reproduces unregularized", "mean held-out BPT within 0.1%",
                        f"{a['mean']:.5f} vs {b['mean']:.5f} ({100 * rel:.3f}%)", rel <= 1e-3))
    # tracking
    for m in scale.multipliers:
        arm = arms.get(f"scu_target={m:g}x")
        if arm:
            out += tracking_goals(arm, f"S* {m:g}x = {arm['target_s']:.3g}", steps)
    # robustness
    for g in scale.gain_factors:
        arm = arms.get(f"scu_gains={g:g}x")
        if arm:
            out.append(gains_goal(arm, f"Kp, Ki x{g:g}"))
    sw = arms.get("scu_data_switch")
    if sw and "switch" in sw:
        out.append(switch_goal(sw, steps))
    # quality
    scu = arms.get("scu_target=1x")
    for ref_key, label in ((summary["best_fixed_lambda"], "best fixed λ"), (summary["best_weight_decay"], "best weight decay")):
        w = within_noise(scu, arms.get(ref_key) if ref_key else None)
        if w:
            out.append(goal(f"quality: SCU vs {label} ({ref_key}, chosen on validation)",
                            "SCU mean held-out BPT <= reference + max(0.5%, 2σ_seed); stretch: lower",
                            f"{w['arm']:.4f} vs {w['ref']:.4f} ({100 * w['rel_diff']:+.2f}%, tolerance {w['tolerance']:.4f})"
                            + ("; stretch met" if w["better"] else ""), w["within"]))
    auto = arms.get("scu_auto_stop")
    if auto:
        saved, pen = auto["steps_saved"]["mean"], auto["penalty_vs_best"]["mean"]
        met = saved >= 0.3 and pen <= 0.01
        es = arms.get("early_stopping")
        es_text = "" if not es else (f"; validation early stopping: {pct(es['steps_saved']['mean'])} saved at "
                                     f"{pct(es['penalty_vs_best']['mean'])}")
        out.append(goal("auto-stop", ">= 30% of steps saved at <= 1% BPT penalty vs the best checkpoint, when budget >= 2x best step",
                        f"fired in {auto['fired']} of {len(auto['per_seed'])} seeds; {pct(saved)} saved at {pct(pen)} penalty; "
                        f"budget >= 2x best step: {auto['regime_holds']}" + es_text,
                        met if auto["regime_holds"] else None))
    oh = arms.get("overhead")
    if oh:
        out.append(goal("overhead", "SCU step time / unregularized step time - 1 <= 2% (median of interleaved pairs)",
                        f"{100 * (oh['median_pair_ratio'] - 1):+.2f}% over {oh['pairs']} pairs", oh["median_pair_ratio"] - 1 <= 0.02))
    t = summary["transfer"]
    if t.get("complete"):
        one = t["one_s_star_within_noise"]
        out.append(goal("transfer: one S* for all sizes", "some S* of the grid within noise of the best fixed λ at every size",
                        f"S at the best fixed λ per size: {', '.join(f'{x:.3g}' for x in t['s_range_at_best_lambda'] if x)}; "
                        f"passing multipliers: {one or 'none'}", bool(one)))
    return out
