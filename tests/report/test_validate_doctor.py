"""`scu validate` passes a good run and fails doctored ones with the reason; `scu doctor` names the
troubleshooting case that constructed metrics show, and nothing on a healthy run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from scu.cli import main
from scu.report.doctor import diagnose

LO, HI, TARGET = 1e-4, 10.0, 0.05


def outcomes(capsys) -> dict[str, str]:
    lines = capsys.readouterr().out.splitlines()
    return {parts[1]: parts[0] for parts in (line.split(maxsplit=2) for line in lines[:-1])}


def test_validate_passes_a_good_run(good_run, capsys):
    assert main(["validate", str(good_run)]) == 0
    got = outcomes(capsys)
    assert got == {n: "PASS" for n in ("adapter", "finished", "no_nan_steps", "final_lambda", "lambda_range", "final_s")}


def doctored(good_run: Path, tmp_path: Path, **changes) -> Path:
    d = tmp_path / "doctored"
    shutil.copytree(good_run, d)
    meta = json.loads((d / "metadata.json").read_text())
    meta.update(changes)
    (d / "metadata.json").write_text(json.dumps(meta))  # NaN is written as the NaN literal, as a broken writer would
    return d


@pytest.mark.parametrize(
    "changes, failed, reason",
    [
        ({"lambda_range": [0.0, 0.0], "final_lambda": 0.0}, {"lambda_range", "final_lambda"}, "[0, 0]"),
        ({"final_lambda": math.nan}, {"final_lambda", "no_nan_steps"}, "final_lambda"),
        ({"final_data_bpt": math.nan, "nan_skips": 0}, {"no_nan_steps"}, "final_data_bpt"),
        ({"nan_skips": 3}, {"no_nan_steps"}, "3 optimizer steps"),
        ({"lambda_saturation": {"at_min": 0.0, "at_max": 0.8}}, {"lambda_range"}, "upper bound for 80%"),
        ({"final_s_hat": 0.12}, {"final_s"}, "12.00% vs target 5%"),
        ({"status": "interrupted"}, {"finished"}, "did not finish"),
    ],
)
def test_validate_fails_doctored_metadata_with_the_reason(good_run, tmp_path, capsys, changes, failed, reason):
    d = doctored(good_run, tmp_path, **changes)
    assert main(["validate", str(d)]) == 1
    out = capsys.readouterr().out
    got = {line.split()[1] for line in out.splitlines() if line.startswith("FAIL")}
    assert got == failed
    assert reason in out


@pytest.mark.parametrize("status", ["stopped at equilibrium", "stopped by a controller"])
def test_validate_counts_a_deliberate_stop_as_finished(good_run, tmp_path, capsys, status):
    d = doctored(good_run, tmp_path, status=status, steps=7)
    assert main(["validate", str(d)]) == 0
    assert outcomes(capsys)["finished"] == "PASS"


def test_validate_fails_non_finite_adapter_weights(good_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = doctored(good_run, tmp_path)
    weights = load_file(d / "adapter_model.safetensors")
    key = sorted(weights)[0]
    weights[key][0, 0] = float("nan")
    save_file(weights, d / "adapter_model.safetensors")
    assert main(["validate", str(d)]) == 1
    assert "FAIL  adapter" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [False, True])
def test_validate_reads_bfloat16_adapter_weights(tmp_path, capsys, bad):
    """NumPy has no bfloat16; such a file is read through torch, and a NaN in it is still found."""
    import torch
    from safetensors.torch import save_file

    weights = torch.ones(4, 2, dtype=torch.bfloat16)
    weights[0, 0] = float("nan") if bad else 2.0
    save_file({"lora_B": weights}, tmp_path / "adapter_model.safetensors")
    (tmp_path / "metadata.json").write_text(json.dumps({"status": "completed", "scu_enabled": False}))
    main(["validate", str(tmp_path)])
    assert outcomes(capsys)["adapter"] == ("FAIL" if bad else "PASS")


def test_validate_without_metadata_is_a_usage_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "no metadata.json" in capsys.readouterr().err


# --- doctor on constructed metrics ---------------------------------------------------------------

def write_run(d: Path, lam, s, data_bpt=None, val=None, **meta) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    n = len(lam)
    data_bpt = np.full(n, 3.0) if data_bpt is None else data_bpt
    rows = []
    for i in range(n):
        row = {
            "step": i + 1, "data_bpt": float(data_bpt[i]), "param_bpt": float(s[i] * data_bpt[i] / (1 - s[i])),
            "s": float(s[i]), "s_hat": float(s[i]), "lambda": float(lam[i]), "lambda_used": float(lam[i - 1] if i else lam[0]),
            "target_s": TARGET, "at_bound": "min" if lam[i] <= LO else "max" if lam[i] >= HI else None,
        }
        if val and i + 1 in val:
            row["val_bpt"] = val[i + 1]
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metadata = {"scu_enabled": True, "target_s": TARGET, "equilibrium_step": None,
                "config": {"scu": {"enabled": True, "lambda_min": LO, "lambda_max": HI, "target_s": TARGET}}}
    metadata.update(meta)
    (d / "metadata.json").write_text(json.dumps(metadata))
    return d


N = 300
STEPS = np.arange(N)
RNG = np.random.default_rng(0)
ON_TARGET = TARGET * (1 + 0.02 * RNG.standard_normal(N))
STEADY = 0.15 * (1 + 0.005 * RNG.standard_normal(N))


def cases(tmp_path):
    return {
        "λ saturates immediately": write_run(
            tmp_path / "saturates", lam=np.r_[[1.0, 4.0], np.full(N - 2, HI)], s=np.full(N, 0.09)),
        "λ stuck at 0 or at a bound": write_run(
            tmp_path / "stuck", lam=np.r_[np.geomspace(1.0, 1e-3, N // 2), np.full(N - N // 2, LO)], s=np.full(N, 0.03)),
        "S stuck at 0%": write_run(
            tmp_path / "s_zero", lam=np.r_[np.geomspace(1.0, LO, 10), np.full(N - 10, LO)], s=np.full(N, 1e-7)),
        "λ oscillates": write_run(
            tmp_path / "oscillates", lam=0.1 * np.exp(1.2 * np.sin(2 * np.pi * STEPS / 40)), s=ON_TARGET),
        "loss increases after equilibrium": write_run(
            tmp_path / "rises", lam=STEADY, s=ON_TARGET, val={k: 3.0 + 0.0004 * max(0, k - 120) for k in range(25, N + 1, 25)}),
    }


def test_doctor_names_the_right_case(tmp_path, capsys):
    for case, d in cases(tmp_path).items():
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        found = [f.case for f in diagnose(rows, json.loads((d / "metadata.json").read_text()))]
        assert found == [case], (d.name, found)
        assert main(["doctor", str(d)]) == 1
        out = capsys.readouterr().out
        assert f"CASE: {case}" in out and "fix:" in out


def test_doctor_fixes_name_the_guides_remedies(tmp_path):
    fixes = {}
    for case, d in cases(tmp_path).items():
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        fixes[case] = diagnose(rows, json.loads((d / "metadata.json").read_text()))[0].fix
    assert "raise scu.target_s" in fixes["λ saturates immediately"]
    assert "widen the bounds or change S*" in fixes["λ stuck at 0 or at a bound"]
    assert "tokens_per_epoch" in fixes["S stuck at 0%"]
    assert "lower scu.kp" in fixes["λ oscillates"]
    assert "--auto-stop" in fixes["loss increases after equilibrium"]


def test_doctor_uses_the_recorded_equilibrium_step_when_there_is_one(tmp_path):
    val = {k: 3.0 + 0.0004 * max(0, k - 120) for k in range(25, N + 1, 25)}
    late = write_run(tmp_path / "late", lam=STEADY, s=ON_TARGET, val=val, equilibrium_step=275)
    rows = [json.loads(line) for line in (late / "metrics.jsonl").read_text().splitlines()]
    assert diagnose(rows, json.loads((late / "metadata.json").read_text())) == []  # too few evaluations after 275


def test_doctor_finds_nothing_on_a_healthy_run(good_run, capsys):
    assert main(["doctor", str(good_run)]) == 0
    assert "no troubleshooting case" in capsys.readouterr().out
