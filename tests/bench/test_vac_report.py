"""The SmolLM2 table is built from the per-cell JSONs: lowest PPL per ratio in bold, missing recoveries said."""

from __future__ import annotations

import json
from pathlib import Path

from bench.vac_report import smollm2_tables

SETUP = {"eval_window": 2048, "calib_blocks": 16, "seq_len": 256, "recover_steps": 100}


def write_cell(directory: Path, name: str, row: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps({"setup": SETUP, "row": row}))


def cell(method: str, ppl: float, **extra) -> dict:
    return {"ratio": 1.25, "method": method, "linear_ratio": 1.2508, "ppl_before": ppl, "compress_cpu_s": 60.0, **extra}


def test_table_marks_the_lowest_ppl_and_says_which_recoveries_did_not_run(tmp_path):
    before, after = tmp_path / "none", tmp_path / "kd"
    for d in (before, after):
        write_cell(d, "dense", {"ppl": 14.08, "tokens": 16376})
    write_cell(before, "1.25_svd_none", cell("svd", 48_685_989.3))
    write_cell(before, "1.25_whiten_none", cell("whiten", 61.2))
    write_cell(before, "1.25_vac_none", cell("vac", 25.0))
    write_cell(after, "1.25_vac_kd", cell("vac", 25.0, ppl_after=20.2, recover_cpu_s=1500.0))
    lines = smollm2_tables(before, after)
    rows = {line.split("|")[2].strip(): line for line in lines if line.startswith("| 1.25")}
    assert "**25.0**" in rows["VAC"] and "**20.2**" in rows["VAC"] and "| 1500 |" in rows["VAC"]
    assert "**" not in rows["whitening (SVD-LLM)"] and "not run" in rows["whitening (SVD-LLM)"]
    assert "48,685,989" in rows["SVD"]
    assert lines[0].startswith("Dense: PPL 14.08 on 16,376") and "KD (100 steps)" in lines[2]


def test_search_cell_shows_vacs_recovery_only_when_the_search_kept_vacs_model(tmp_path):
    before, after = tmp_path / "none", tmp_path / "kd"
    for d in (before, after):
        write_cell(d, "dense", {"ppl": 14.08, "tokens": 16376})
    write_cell(before, "1.25_vac_none", cell("vac", 25.0, ranks={"q": 17, "v": None}))
    write_cell(after, "1.25_vac_kd", cell("vac", 25.0, ppl_after=20.2, recover_cpu_s=1500.0))
    write_cell(before, "1.25_vac-search_none", cell("vac-search", 25.0, ranks={"q": 17, "v": None}))
    rows = {line.split("|")[2].strip(): line for line in smollm2_tables(before, after) if line.startswith("| 1.25")}
    assert "**20.2**, VAC's" in rows["VAC + search"]

    write_cell(before, "1.25_vac-search_none", cell("vac-search", 24.0, ranks={"q": 16, "v": None}))
    rows = {line.split("|")[2].strip(): line for line in smollm2_tables(before, after) if line.startswith("| 1.25")}
    assert "not run" in rows["VAC + search"] and "20.2" not in rows["VAC + search"]
