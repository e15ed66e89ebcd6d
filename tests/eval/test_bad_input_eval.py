"""`scu eval` and `scu eval-ppl` on broken or odd inputs: one line on stderr and exit code 2, or it just works."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scu.cli import main


def lora_adapter(base, out: Path) -> Path:
    """A fresh LoRA adapter (B = 0) on `base` (a directory or an in-memory model), saved to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base) if isinstance(base, Path) else base
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])).save_pretrained(out)
    return out


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.txt"
    path.write_text("def f(x):\n    return x + 1\n\nclass A:\n    pass\n")
    return path


def refused(capsys, argv: list[str]) -> str:
    """Run `scu ARGV`, which must exit with code 2 and one line on stderr; return that line."""
    capsys.readouterr()  # drop what building the fixtures printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", ["eval", "eval-ppl"])
def test_truncated_model_weights(tiny_base, text, tmp_path, capsys, command):
    model = tmp_path / "model"
    shutil.copytree(tiny_base, model)
    truncate(model / "model.safetensors")
    argv = [command, "--model", str(model), "--data", str(text)]
    assert "model.safetensors is truncated or corrupt" in refused(capsys, argv)


def test_truncated_adapter_weights(tiny_base, text, tmp_path, capsys):
    adapter = lora_adapter(tiny_base, tmp_path / "adapter")
    truncate(adapter / "adapter_model.safetensors")
    argv = ["eval", "--model", str(tiny_base), "--data", str(text), "--adapter", str(adapter)]
    assert "adapter_model.safetensors is truncated or corrupt" in refused(capsys, argv)


def test_adapter_of_a_differently_shaped_base(tiny_base, text, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_base)
    config.hidden_size, config.intermediate_size = config.hidden_size // 2, config.intermediate_size // 2
    adapter = lora_adapter(AutoModelForCausalLM.from_config(config), tmp_path / "adapter")
    argv = ["eval", "--model", str(tiny_base), "--data", str(text), "--block-size", "16", "--adapter", str(adapter)]
    assert "does not fit this base model" in refused(capsys, argv)


def test_eval_ppl_on_a_directory_without_a_model(text, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["eval-ppl", "--model", str(tmp_path / "empty"), "--data", str(text)]
    assert "holds no model (no config.json)" in refused(capsys, argv)


def test_any_run_directory_name_works_as_an_adapter(tiny_base, text, tmp_path):
    adapters = [lora_adapter(tiny_base, tmp_path / "runs" / name) for name in ("lr0.5", "lr1.0")]
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(tiny_base), "--data", str(text), "--block-size", "16", "--bootstrap", "10",
            "--json", str(out), "--probes", "--probes-out", str(tmp_path / "probes.md"), "--max-new-tokens", "2"]
    assert main(argv + [a for d in adapters for a in ("--adapter", str(d))]) == 0
    assert [r["name"] for r in json.loads(out.read_text())["results"]] == ["base", "lr0.5", "lr1.0"]
    assert "**lr0.5**" in (tmp_path / "probes.md").read_text()
