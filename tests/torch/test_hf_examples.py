"""Both integration examples run offline on the tiny test base and leave a complete SCU run behind."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["hf_trainer", "trl_sft"])
def test_example_runs_offline(name, tiny_base, tmp_path, capsys):
    out = tmp_path / name
    size = "--block-size" if name == "hf_trainer" else "--max-length"
    last = load(name).main(["--output", str(out), "--base-model", str(tiny_base), "--steps", "10",
                            "--batch-size", "4", size, "64", "--target-s", "0.02"])
    assert {"data_bpt", "param_bpt", "s", "lambda"} <= set(last) and last["param_bpt"] > 0
    assert "-> " + str(out) in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["steps"] == 10 and meta["base_model"] == str(tiny_base)
    assert meta["final_lambda"] == last["lambda"]
    assert (out / "adapter_model.safetensors").exists()
    for checkpoint in ("checkpoint-5", "checkpoint-10"):
        assert (out / checkpoint / "scu_state.json").exists() and (out / checkpoint / "metadata.json").exists()


def test_trainer_example_resumes_with_the_controller(tiny_base, tmp_path):
    example, out = load("hf_trainer"), tmp_path / "run"
    common = ["--output", str(out), "--base-model", str(tiny_base), "--batch-size", "4", "--block-size", "64"]
    example.main([*common, "--steps", "6"])
    example.main([*common, "--steps", "8", "--resume"])  # from checkpoint-6 (save_steps = steps // 2 = 3)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["steps"] == 8 and meta["controllers"]["pi"]["step"] == 8  # 6 restored + 2 new PI updates
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == list(range(1, 9))
