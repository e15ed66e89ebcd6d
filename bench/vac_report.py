"""Markdown tables of the VAC benchmark results (for docs/vac.md).

    python -m bench.vac_report [--quality bench/results/vac_quality*.json] [--spread bench/results/vac_recovery_spread*.json]
                               [--artifacts bench/results/vac_artifacts.json] [--softening bench/results/vac_softening.json]
    python -m bench.vac_report --smollm2 bench/results/vac_smollm2 [--recovered bench/results/vac_smollm2_kd100]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.vac_common import RESULTS, load_results

LABELS = {"svd": "SVD", "fwsvd": "FWSVD", "asvd": "ASVD", "whiten": "whitening (SVD-LLM)", "vac": "VAC",
          "vac-search": "VAC + search"}


def kept(r: dict) -> str:
    sel, first = r["recover_selected"], r["recover_history_start"]
    if first is None:
        return f"{sel['step']} (last; no selection)"
    return f"{sel['step']} ({first:.5f} → {sel['heldout_kl']:.5f})"


def spread_table(rows: dict) -> list[str]:
    """PPL after recovery over recovery seeds (batch order), per ratio, method and selection rule."""
    groups: dict[tuple, list[float]] = {}
    for key, r in rows.items():
        if key != "dense" and r.get("recover") == "kd" and r["method"] != "vac-search":
            groups.setdefault((r["ratio"], r["method"], r.get("select", "heldout-kl")), []).append(r["ppl_after"])
    out = ["| ratio | method | recovery keeps | PPL after recovery, per seed | mean ± std |", "|---|---|---|---|---|"]
    for (ratio, method, select), ppls in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2] != "heldout-kl", statistics.fmean(kv[1]))):
        if len(ppls) > 1:
            out.append(f"| {ratio} | {LABELS.get(method, method)} | {'lowest held-out KL' if select == 'heldout-kl' else 'last state'} | "
                       f"{', '.join(f'{p:.2f}' for p in ppls)} | {statistics.fmean(ppls):.2f} ± {statistics.stdev(ppls):.2f} |")
    return out if len(out) > 2 else []


def quality_tables(q: dict) -> list[str]:
    rows = q["rows"]
    dense = rows["dense"]["ppl"]
    out = [f"Dense base: PPL {dense:.2f} on {rows['dense']['tokens']} WikiText-2 validation tokens.", ""]
    out += ["| ratio | method | recovery | achieved linear ratio (error) | whole-model ratio | PPL before recovery | PPL after recovery | recovery step kept (held-out KL before → kept) |",
            "|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        if key == "dense":
            continue
        out.append(
            f"| {r['ratio']} | {LABELS.get(r['method'], r['method'])} | {r['recover']} | {r['linear_ratio']:.4f} "
            f"({100 * r['ratio_error']:+.2f}%) | {r['model_ratio']:.3f} | {r['ppl_before']:.2f} | {r['ppl_after']:.2f} | {kept(r)} |"
        )
    searches = [(k, r) for k, r in rows.items() if r.get("search")]
    if searches:
        out += ["", "| ratio | candidate | order | Fisher exponent | achieved ratio | held-out calibration NLL |", "|---|---|---|---|---|---|"]
        for key, r in searches:
            for i, c in enumerate(r["search"], 1):
                out.append(f"| {r['ratio']} | {i} | {c['order']} | {c['fisher_exponent']:.2f} | {c['linear_ratio']:.4f} | {c['heldout_nll']:.4f} |")
    return out


def softening_tables(s: dict) -> list[str]:
    """The dense model at temperatures, then each model next to the dense one flattened to its WikiText-2 entropy."""
    out = ["| dense at temperature T | WikiText-2 PPL | WikiText-2 entropy (nats) | held-out calibration PPL |", "|---|---|---|---|"]
    out += [f"| {r['T']} | {r['wiki2_ppl']:.2f} | {r['wiki2_entropy']:.4f} | {r['heldout_calib_ppl']:.3f} |" for r in s["dense_temperature"]]
    out += ["", "| ratio | method | stage | WikiText-2 PPL | WikiText-2 entropy (nats) | dense at the same entropy: T, PPL | held-out calibration PPL |",
            "|---|---|---|---|---|---|---|"]
    for key, r in s.get("rows", {}).items():
        ratio, method = key.split("/")
        for stage in ("before", "after"):
            x = r[stage]
            out.append(f"| {ratio} | {LABELS.get(method, method)} | {stage} recovery | {x['wiki2_ppl']:.2f} | {x['wiki2_entropy']:.4f} | "
                       f"{x['dense_matched_T']:.4f}, {x['dense_ppl_at_matched_T']:.2f} | {x['heldout_calib_ppl']:.3f} |")
    return out


def artifact_tables(a: dict) -> list[str]:
    s = a["save_load"]
    out = [f"VAC at {a['ratio']}x (linear ratio {s['linear_ratio']:.4f}, whole model {s['model_ratio']:.3f}); dense PPL {s['dense_ppl']:.2f}, "
           f"dense directory {s['dense_disk_bytes']} bytes (fp32).", "",
           "| storage | weight files (bytes) | decoder linear-layer bytes | PPL | reload logits equal |", "|---|---|---|---|---|"]
    for name, v in s["variants"].items():
        out.append(f"| {name} | {v['disk_bytes']} | {v['linear_bytes']} | {v['ppl']:.3f} | {v.get('logits_equal', 'n/a (bf16 rest)')} |")
    for key, title in (("load_memory_base", "WikiText base"), ("load_memory_large", "110M random-weight Llama")):
        if key in a:
            out += ["", f"Load memory, {title}:", "", "| model | weight files (bytes) | RSS growth after from_pretrained (MiB) | peak RSS growth, load + first forward (MiB), median | rounds |",
                    "|---|---|---|---|---|"]
            for name, v in a[key].items():
                out.append(f"| {name} | {v['disk_bytes']} | {v['after_load_mib']:.1f} | {v['peak_growth_mib']:.1f} | "
                           f"{', '.join(f'{x:.1f}' for x in v['rounds'])} |")
    lg = a.get("large", {})
    if "int8_bf16_disk_bytes" in lg:
        out += ["", f"110M random-weight Llama, SVD at {lg['linear_ratio']:.4f}x, rest in bf16:", "",
                "| storage | weight files (bytes) | decoder linear-layer bytes |", "|---|---|---|",
                f"| bf16 | {lg['bf16_disk_bytes']} | {lg['bf16_linear_bytes']} |",
                f"| int8 factors | {lg['int8_bf16_disk_bytes']} | {lg['int8_bf16_linear_bytes']} |",
                f"| bf16 / int8 | {lg['bf16_disk_bytes'] / lg['int8_bf16_disk_bytes']:.2f}x | "
                f"{lg['bf16_linear_bytes'] / lg['int8_bf16_linear_bytes']:.2f}x |"]
    for key, title in (("speed_base", "WikiText base"), ("speed_large", "110M random-weight Llama")):
        if key in a:
            out += ["", f"Speed, {title} ({a['threads']} thread):", "",
                    "| model | params | prefill tok/s | decode tok/s | prefill speedup (median ratio) | predicted prefill FLOP ratio | decode speedup | param ratio |",
                    "|---|---|---|---|---|---|---|---|"]
            for name, v in a[key].items():
                extra = (f"{v['prefill_speedup']:.3f} | {v['predicted_prefill_flop_ratio']:.3f} | {v['decode_speedup']:.3f} | {v['param_ratio']:.3f}"
                         if "prefill_speedup" in v else "1 | 1 | 1 | 1")
                out.append(f"| {name} | {v['params']} | {v['prefill_tok_s']:.1f} | {v['decode_tok_s']:.1f} | {extra} |")
    return out


def ppl_text(ppl: float, best: float | None) -> str:
    """PPL to one decimal (thousands separated above 1,000), bold where it is the row group's lowest."""
    text = f"{ppl:,.0f}" if ppl >= 1000 else f"{ppl:.1f}"
    return f"**{text}**" if ppl == best else text


def cells(directory: Path) -> dict[tuple[float, str], dict]:
    """The (ratio, method) cells of one `vac_quality --model smollm2` directory, and its dense row under (1.0, 'dense')."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        doc = json.loads(path.read_text())
        row = doc["row"] | {"setup": doc["setup"]}
        out[(1.0, "dense") if path.stem == "dense" else (row["ratio"], row["method"])] = row
    return out


def search_kept_default(row: dict, vac_row: dict | None) -> bool:
    """A `vac-search` cell whose winner is `vac`'s own model, so recovering it would repeat `vac`'s recovery."""
    return (row["method"] == "vac-search" and vac_row is not None and row.get("ranks") == vac_row.get("ranks")
            and row["ppl_before"] == vac_row["ppl_before"])


def smollm2_tables(before_dir: Path, after_dir: Path | None) -> list[str]:
    """PPL of every method and ratio without recovery (and after KD where measured), with compression CPU time."""
    before = cells(before_dir)
    after = cells(after_dir) if after_dir is not None and after_dir.exists() else {}
    dense = before.pop((1.0, "dense"))
    setup = dense["setup"]
    after.pop((1.0, "dense"), None)
    steps = next(iter(after.values()))["setup"]["recover_steps"] if after else None
    out = [f"Dense: PPL {dense['ppl']:.2f} on {dense['tokens']:,} WikiText-2 validation tokens in {setup['eval_window']}-token "
           f"windows; calibration {setup['calib_blocks']} × {setup['seq_len']} WikiText-103 tokens. Lowest PPL per ratio in bold.", ""]
    head = "| ratio | method | linear ratio | PPL, no recovery | compression CPU s |"
    if after:
        head += f" PPL after KD ({steps} steps) | KD CPU s |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for ratio in sorted({r for r, _ in before}):
        row_keys = [k for k in before if k[0] == ratio]
        best_before = min(before[k]["ppl_before"] for k in row_keys)
        best_after = min((after[k]["ppl_after"] for k in row_keys if k in after), default=None)
        for key in sorted(row_keys, key=lambda k: before[k]["ppl_before"], reverse=True):
            r = before[key]
            line = (f"| {ratio} | {LABELS.get(r['method'], r['method'])} | {r['linear_ratio']:.4f} | "
                    f"{ppl_text(r['ppl_before'], best_before)} | {r['compress_cpu_s']:.0f} |")
            if after:
                a = after.get(key)
                cpu = f"{a['recover_cpu_s']:.0f}" if a and "recover_cpu_s" in a else f"{a['recover_s']:.0f} (wall)" if a else ""
                if a:
                    line += f" {ppl_text(a['ppl_after'], best_after)} | {cpu} |"
                elif search_kept_default(r, before.get((ratio, "vac"))) and (ratio, "vac") in after:
                    vac_after = after[(ratio, "vac")]["ppl_after"]
                    line += f" {ppl_text(vac_after, best_after)}, VAC's: the search kept VAC's model (same ranks and PPL) | |"
                else:
                    line += " not run | |"
            out.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quality", nargs="+", default=sorted(str(p) for p in RESULTS.glob("vac_quality*.json")))
    ap.add_argument("--spread", nargs="+", default=sorted(str(p) for p in RESULTS.glob("vac_recovery_spread*.json")),
                    help="vac_quality runs at other --recover-seed values (and --select final), for the seed spread")
    ap.add_argument("--artifacts", default=str(RESULTS / "vac_artifacts.json"))
    ap.add_argument("--softening", default=str(RESULTS / "vac_softening.json"))
    ap.add_argument("--smollm2", type=Path, help="a `vac_quality --model smollm2` directory: print its table only")
    ap.add_argument("--recovered", type=Path, help="with --smollm2: the directory of the same cells with KD recovery")
    args = ap.parse_args()
    if args.smollm2:
        print("\n".join(smollm2_tables(args.smollm2, args.recovered)))
        return

    q: dict = {"rows": {}}
    for path in args.quality:  # one file per ratio when they run in parallel
        q["rows"] |= load_results(Path(path)).get("rows", {})
    seeds = dict(q["rows"])
    for path in args.spread:
        seeds |= load_results(Path(path)).get("rows", {})
    a, soft = load_results(Path(args.artifacts)), load_results(Path(args.softening))
    lines = ((quality_tables(q) if q["rows"] else []) + [""] + spread_table(seeds) + [""] + (softening_tables(soft) if soft else [])
             + [""] + (artifact_tables(a) if a else []))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
