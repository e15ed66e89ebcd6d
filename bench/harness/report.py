"""results.json, results.md and the plots of the harness."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scu.report.records import atomic_write_json, atomic_write_text

from bench.harness.summary import by_arm, value_of

MAIN_ORDER = ("unregularized", "early_stopping", "weight_decay=", "lora_dropout=", "fixed_lambda=", "scu_target=",
              "scu_auto_stop", "scu_auto", "scu_gains=", "scu_data_switch", "scu_init=")


def ms(x: dict[str, Any] | None, digits: int = 4) -> str:
    if not x:
        return "—"
    if x["n"] == 1:
        return f"{x['mean']:.{digits}f}"
    return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"


def main_arms(arms: dict[str, Any]) -> list[str]:
    def order(name: str) -> tuple[int, float, str]:
        for i, prefix in enumerate(MAIN_ORDER):
            if name == prefix or (prefix.endswith("=") and name.startswith(prefix)):
                head = name.split(",")[0]
                return i, value_of(head) if "=" in head else 0.0, name
        return len(MAIN_ORDER), 0.0, name

    return sorted((a for a in arms if "/" not in a and a != "overhead"), key=order)


def markdown(summary: dict[str, Any]) -> str:
    arms, sc = summary["arms"], summary["scale"]
    base, run = sc["base"], sc["run"]
    data = summary["data"]
    lines = [
        "# SCU against baselines: held-out results",
        "",
        f"{summary['date']} — scale `{sc['name']}`, {summary['note']}. Seeds: {summary['seeds']['arms']} per arm, "
        f"{summary['seeds']['headline']} for unregularized / early stopping / SCU 1x / auto-stop. "
        f"{summary['jobs']} jobs, {summary['cpu_s_total'] / 60:.0f} CPU-minutes in all (one thread per job; "
        f"about {summary['cpu_s_total'] / 120:.0f} minutes on 2 idle cores with `--jobs 2`, base pre-training not included).",
        "",
        f"Base: Llama, hidden {base['hidden_size']}, {base['layers']} layers, {base['vocab_size']}-token BPE, "
        f"pre-trained {base['steps']} steps on WikiText-103 ({base['max_chars']:,} chars max). "
        f"Fine-tune: LoRA r {run['rank']} (alpha {2 * run['rank']}) on all projections, AdamW lr {run['learning_rate']:g} "
        f"(constant after {run['warmup_steps']} warmup steps), batch {run['batch_size']} x {run['block_size']}, "
        f"{run['steps']} steps, prior `delta` σ 0.01.",
        "",
        "Data (tokens): training " + ", ".join(f"{k}: {v:,}" for k, v in data["train_tokens"].items())
        + "; " + ", ".join(f"{k} {v['predicted_tokens']:,}" for k, v in data["sets"].items() if k != "switch")
        + " (predicted tokens: val = Shakespeare validation slice for all selection, test = held-out Shakespeare, "
        "wiki = WikiText-2 validation, the forgetting set). Held-out documents also found in the training pool, dropped: "
        + ", ".join(f"{k} {v}" for k, v in data["dropped_as_in_pool"].items()) + ".",
        "",
        f"Best fixed λ on validation: `{summary['best_fixed_lambda']}`; middle S* = steady-state S of that arm = "
        f"**{summary['middle_target']}**. Best weight decay on validation: `{summary['best_weight_decay']}`.",
        "",
        "## Goals",
        "",
        "| goal | criterion | measured | met |",
        "|---|---|---|---|",
    ]
    for g in summary["goals"]:
        met = {True: "**yes**", False: "**no**", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['criterion']} | {g['measured']} | {met} |")
    lines += [
        "",
        f"## Arms at the main size ({summary['main_size']} training tokens)",
        "",
        "Held-out BPT: Shakespeare held-out set; best = lowest of the evaluations along the way. Forgetting: WikiText-2 BPT. "
        "Early stopping and auto-stop rows are the unregularized and SCU 1x runs stopped where the rule fired "
        "(early stopping returns the best-validation checkpoint).",
        "",
        "| arm | held-out BPT final | best along the way | WikiText BPT | val BPT | steps | train wall s | ‖ΔW‖ | S (2nd half) | λ (end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in main_arms(arms):
        a = arms[name]
        if a is None:
            continue
        if "per_seed" in a:  # a stopping rule
            lines.append(f"| {name} (fired {a['fired']}/{len(a['per_seed'])}) | {ms(a['test'])} | — | {ms(a['wiki'])} | — | "
                         f"{ms(a['stop_step'], 0)} | {ms(a['train_wall_s'], 1)} | — | — | — |")
            continue
        lines.append(
            f"| {name} | {ms(a['test_final'])} | {ms(a['test_best'])} | {ms(a['wiki_final'])} | {ms(a['val_final'])} | "
            f"{ms(a['steps'], 0)} | {ms(a['train_wall_s'], 1)} | {ms(a['dw_norm_final'], 3)} | {ms(a['mean_s_2nd_half'], 3)} | "
            f"{ms(a['final_lambda'], 4) if a.get('tracking') else '—'} |"
        )
    lines += ["", "## SCU tracking (main size)", "",
              "| arm | S* | error 2nd half | error of S/(1−S) | in band 2nd half | settling step | overshoot | log-λ p2p after settling | at bound | cycling seeds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name in main_arms(arms):
        a = arms[name]
        if a and a.get("tracking"):
            tr = a["tracking"]
            lines.append(f"| {name} | {a['target_s']:.3g} | {ms(tr['error'], 3)} | {ms(tr['odds_error'], 3)} | {ms(tr['in_band'], 3)} | "
                         f"{ms(tr['settling_step'], 0)} (never: {tr['never_settled']}) | {ms(tr['overshoot'], 3)} | "
                         f"{ms(tr['log_lambda_p2p'], 2)} | {ms(tr['at_bound'], 3)} | {a['limit_cycle']['runs_with_cycle']} |")
    for name in main_arms(arms):
        x = (arms[name] or {}).get("switch")
        if x:
            lines += ["", f"`{name}`: data switch at step {x['step']} (to WikiText-103 text): max |S_hat/S* − 1| after it "
                      f"{ms(x['max_deviation_after'], 3)}, steps to re-settle {ms(x['resettle_steps'], 0)} "
                      f"(never: {x['never_resettled']}), tracking error after {ms(x['error_after'], 3)}."]
    if summary.get("diagnostics"):
        lines += ["", "Diagnostics, in no goal: the same criteria on the SCU arms started at `lambda_init` = the best "
                  "fixed λ instead of the default 1.", "", "| check | criterion | measured | met |", "|---|---|---|---|"]
        for g in summary["diagnostics"]:
            met = {True: "yes", False: "no", None: "n/a"}[g["met"]]
            lines.append(f"| {g['goal']} | {g['criterion']} | {g['measured']} | {met} |")
    lines += ["", "## Stopping rules", "", "| rule | seed | stop step | steps saved | held-out BPT | best along the way (step) | penalty |",
              "|---|---|---|---|---|---|---|"]
    for name in ("scu_auto_stop", "scu_auto/auto-stop", "early_stopping"):
        a = arms.get(name)
        for x in (a or {}).get("per_seed", []):
            lines.append(f"| {name}{'' if x['fired'] else ' (did not fire)'} | {x['seed']} | {x['stop_step']} | "
                         f"{100 * x['steps_saved']:.1f}% | {x['test']:.4f} | {x['best_test_along_the_way']:.4f} ({x['best_step']}) | "
                         f"{100 * x['penalty_vs_best']:+.2f}% |")
    oh = arms.get("overhead")
    if oh:
        lines += ["", "## Overhead", "", f"SCU and unregularized stepped alternately in one process ({oh['torch_threads']} thread), "
                  f"{oh['pairs']} pairs: median step {1e3 * oh['median_step_s_scu']:.1f} ms vs {1e3 * oh['median_step_s_off']:.1f} ms; "
                  f"median per-pair ratio **{oh['median_pair_ratio']:.4f}**, ratio of medians {oh['ratio_of_medians']:.4f}."]
    lines += transfer_md(summary)
    lines += ["", "## Plots", "", "![S and λ of the SCU arms](scu_traces.png)", "", "![held-out BPT per arm](heldout_bpt.png)",
              "", "![held-out BPT along the way](heldout_curves.png)", "", "![λ grid](lambda_grid.png)", ""]
    return "\n".join(lines)


def transfer_md(summary: dict[str, Any]) -> list[str]:
    t = summary["transfer"]
    lines = ["", "## S* transfer across training-set sizes", "",
             "| size (tokens) | best fixed λ (val) | S at it | held-out BPT at it | "
             + " | ".join(f"SCU S* {m:g}x" for m in summary["scale"]["multipliers"]) + " | rule |",
             "|---|---|---|---|" + "---|" * len(summary["scale"]["multipliers"]) + "---|"]
    for size, e in t["sizes"].items():
        cells = []
        for m in summary["scale"]["multipliers"]:
            x = e["scu"].get(m) or e["scu"].get(str(m))
            if not x:
                cells.append("—")
                continue
            w = x["vs_best_lambda"]
            cells.append(f"S* {x['target']:.3g}: {ms(x['test'])}" + ("" if not w else f" ({100 * w['rel_diff']:+.2f}%{', ok' if w['within'] else ''})"))
        rule = e.get("rule")
        rule_cell = "—" if not rule else f"S* {rule['target']:.3g}: {ms(rule['test'])}" + (
            "" if not rule["vs_best_lambda"] else f" ({100 * rule['vs_best_lambda']['rel_diff']:+.2f}%{', ok' if rule['vs_best_lambda']['within'] else ''})")
        s_best = e["s_at_best_lambda"]
        lines.append(f"| {size} ({e['tokens']:,}) | {e['best_lambda']} | {'—' if s_best is None else f'{s_best:.3g}'} | "
                     f"{ms(e['test_at_best_lambda'])} | " + " | ".join(cells) + f" | {rule_cell} |")
    lines.append("")
    lines.append("`ok`: within max(0.5%, 2σ_seed) of the best fixed λ at that size (chosen on validation).")
    lines += ["", "## `target_s: auto` against the best tuned baseline and plain LoRA", "",
              "| size | auto held-out BPT | best tuned (val-picked) | vs it (within max(1%, 2σ)?) | forgetting: auto / plain LoRA (≤ half?) |",
              "|---|---|---|---|---|"]
    for size, e in t["sizes"].items():
        a = e.get("auto")
        if not a:
            continue
        bt, fg = a.get("best_tuned"), a.get("forgetting")
        tuned = "—" if not bt else f"{bt['arm']}: {ms(bt['test'])}"
        versus = "—" if not bt else f"{100 * bt['rel_diff']:+.2f}% ({'yes' if bt['within'] else 'no'})"
        forget = "—" if not fg else f"{fg['auto']:+.3f} / {fg['plain_lora']:+.3f} ({'yes' if fg['at_most_half'] else 'no'})"
        lines.append(f"| {size} | {ms(a['test'])} | {tuned} | {versus} | {forget} |")
    base = summary.get("base_bpt")
    if base:
        lines.append(f"\nForgetting = WikiText-2 BPT minus the base's ({base['wiki']:.4f}).")
    if t.get("complete"):
        lines.append(f"One S* within noise at every size: **{t['one_s_star_within_noise'] or 'none'}**.")
        lt = t["lambda_transfer"]
        lines.append(f"The λ chosen at the main size ({lt['lambda']:g}) at the other sizes: " + ", ".join(
            f"{s}: " + ("—" if w is None else f"{100 * w['rel_diff']:+.2f}% " + ("(ok)" if w["within"] else "(not within noise)"))
            for s, w in lt["per_size"].items()) + ".")
        if t.get("rule_fit"):
            f = t["rule_fit"]
            lines.append(f"Transfer rule fitted on validation at {', '.join(f['fit_sizes'])}: S*/(1 − S*) = {math.exp(f['a']):.3g} · N^{f['b']:.3f}, "
                         f"predicting S* = {f['target']:.3g} at {f['size']} (tested there only if no single S* passed).")
    else:
        lines.append("Transfer grid incomplete.")
    return lines


def plots(summary: dict[str, Any], results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = by_arm(results)
    arms = summary["arms"]
    # 1. S and λ traces of the SCU arms at the main size
    scu_names = [a for a in main_arms(arms) if arms[a] and arms[a].get("tracking")]
    fig, (ax_s, ax_l) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(scu_names):
        c = colors[i % len(colors)]
        for j, r in enumerate(grouped[name]):
            rows = [x for x in r.get("rows", []) if x["s"] is not None]
            steps = [x["step"] for x in rows]
            label = f"{name} (S* {arms[name]['target_s']:.3g})" if j == 0 else None
            ax_s.plot(steps, [x["s_hat"] for x in rows], color=c, lw=0.8, alpha=0.8, label=label)
            ax_l.plot(steps, [x["lambda"] for x in rows], color=c, lw=0.8, alpha=0.8)
        ax_s.axhline(arms[name]["target_s"], color=c, ls="--", lw=0.8)
        if arms[name].get("switch"):
            for ax in (ax_s, ax_l):
                ax.axvline(arms[name]["switch"]["step"], color=c, ls=":", lw=1)
    ax_s.set_ylabel("smoothed S")
    ax_s.legend(fontsize=7)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("λ")
    ax_l.set_xlabel("optimizer step")
    ax_s.set_title("SCU arms: S (dashed: S*; dotted: data switch) and λ, every seed")
    fig.tight_layout()
    fig.savefig(out / "scu_traces.png", dpi=110)
    plt.close(fig)
    # 2. held-out BPT per arm (final and best along the way) and forgetting
    names = [a for a in main_arms(arms) if arms[a] and "test_final" in arms[a]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.5), sharey=True)
    y = list(range(len(names)))
    ax1.errorbar([arms[a]["test_final"]["mean"] for a in names], y, xerr=[arms[a]["test_final"]["std"] for a in names],
                 fmt="o", color="tab:blue", capsize=3, label="final")
    ax1.plot([arms[a]["test_best"]["mean"] for a in names], y, "k|", ms=10, label="best along the way")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    ax1.set_yticks(y, names, fontsize=7)
    ax1.set_xlabel("held-out Shakespeare BPT (mean ± std over seeds)")
    ax1.legend(fontsize=7)
    ax2.errorbar([arms[a]["wiki_final"]["mean"] for a in names], y, xerr=[arms[a]["wiki_final"]["std"] for a in names],
                 fmt="o", color="tab:orange", capsize=3)
    ax2.set_xlabel("WikiText-2 BPT (forgetting)")
    fig.tight_layout()
    fig.savefig(out / "heldout_bpt.png", dpi=110)
    plt.close(fig)
    # 3. held-out BPT along the way for the main arms
    fig, ax = plt.subplots(figsize=(9, 5))
    picks = ["unregularized", summary["best_fixed_lambda"], summary["best_weight_decay"], "scu_target=1x", "fixed_lambda=1"]
    for name in dict.fromkeys(p for p in picks if p in grouped):
        pts: dict[int, list[float]] = {}
        for r in grouped[name]:
            for p in r["curve"]:
                if "test" in p:
                    pts.setdefault(p["step"], []).append(p["test"])
        steps = sorted(pts)
        ax.plot(steps, [sum(pts[s]) / len(pts[s]) for s in steps], marker="o", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out Shakespeare BPT (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "heldout_curves.png", dpi=110)
    plt.close(fig)
    # 4. the λ grid: held-out and validation BPT, and S, against λ, per training size
    t = summary["transfer"]["sizes"]
    fig, (ax_b, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (size, e) in enumerate(t.items()):
        c = colors[i % len(colors)]
        lams = sorted(float(k) for k in e["lambdas"] if float(k) > 0)
        get = lambda lam, key: (e["lambdas"].get(lam) or e["lambdas"].get(str(lam)) or {}).get(key)  # noqa: E731
        ax_b.errorbar(lams, [get(x, "test")["mean"] for x in lams], yerr=[get(x, "test")["std"] for x in lams], color=c,
                      marker="o", label=f"N={e['tokens']:,} held-out")
        ax_b.plot(lams, [get(x, "val")["mean"] for x in lams], color=c, ls=":", marker=".", label=f"N={e['tokens']:,} validation")
        for m, x in e["scu"].items():
            if x["final_lambda"]:
                ax_b.plot(x["final_lambda"]["mean"], x["test"]["mean"], marker="*", ms=11, color=c, ls="none")
        s_pts = [(x, get(x, "s")["mean"]) for x in lams if get(x, "s")]
        ax_s.plot([p[0] for p in s_pts], [p[1] for p in s_pts], color=c, marker="o", label=f"N={e['tokens']:,}")
    if "unregularized" in arms:
        ax_b.axhline(arms["unregularized"]["test_final"]["mean"], color="gray", ls="--", lw=0.8, label="unregularized (main size)")
    for ax in (ax_b, ax_s):
        ax.set_xscale("log")
        ax.set_xlabel("fixed λ (stars: SCU arms at their final mean λ)")
        ax.legend(fontsize=7)
    ax_b.set_ylabel("final BPT")
    ax_s.set_ylabel("steady-state S")
    ax_s.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "lambda_grid.png", dpi=110)
    plt.close(fig)


def write_report(summary: dict[str, Any], results: dict[str, dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", summary)
    atomic_write_text(out / "results.md", markdown(summary))
    if summary["arms"]:
        plots(summary, results, out)
