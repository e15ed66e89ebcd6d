"""The command line: built without torch or transformers, every option documented with its default,
and `scu train --set` setting any config key (a key that a dedicated flag also sets is refused)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scu import ScuError
from scu.cli import build_parser
from scu.torch.train_cli import config_from_args


def test_building_the_parser_imports_neither_torch_nor_transformers():
    code = "import sys; from scu.cli import build_parser; build_parser(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_validate_reads_a_float32_adapter_without_torch(tmp_path):
    from safetensors.numpy import save_file

    save_file({"lora_A": np.ones((2, 4), np.float32), "lora_B": np.full((4, 2), np.nan, np.float32)},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "metadata.json").write_text(json.dumps({"status": "completed", "scu_enabled": False}))
    code = (f"import sys; from scu.cli import main; main(['validate', {str(tmp_path)!r}]); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "FAIL  adapter        1 of 2 tensors hold NaN/inf, e.g. lora_B" in out
    assert out.split()[-2:] == ["False", "False"]


def subcommands(parser: argparse.ArgumentParser, path: str = "scu"):
    """(command, parser) for every subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub
                yield from subcommands(sub, f"{path} {name}")


def test_every_option_has_help_that_states_its_default():
    checked = 0
    for command, parser in subcommands(build_parser()):
        parser.format_help()  # every %(default)s renders
        # one of a required choice (--model | --params) has no default; another spelling (--adapter-out) shares one
        one_of_required = {a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions}
        seen: set[str] = set()
        for action in parser._actions:
            if not action.option_strings or "-h" in action.option_strings:
                continue
            flag = f"{command} {action.option_strings[0]}"
            assert action.help, f"{flag} has no help"
            takes_value = action.nargs != 0  # a switch (store_true) is off unless given
            if takes_value and not action.required and action not in one_of_required and action.dest not in seen:
                assert "default" in action.help, f"{flag}: the help does not state its default"
            seen.add(action.dest)
            checked += 1
    assert checked > 80  # every subcommand was walked


@pytest.fixture
def train_args(tmp_path: Path):
    """`scu train --config cfg.yaml ARGS...` parsed; the YAML sets data.val_data and training.steps."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("training: {steps: 30}\ndata: {train_data: train.txt, val_data: val.txt}\n")
    return lambda *args: build_parser().parse_args(["train", "--config", str(cfg), *args])


def test_set_reads_values_as_yaml_and_accepts_the_ecosystems_names(train_args):
    cfg = config_from_args(train_args(
        "--set", "lora.rank=16", "--set", "scu.enabled=false", "--set", "lora.targets=[q_proj, v_proj]",
        "--set", "max_steps=7", "--set", "lora_alpha=32", "--set", "data.val_data=null", "--set", "output_dir=runs/x",
    ))
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets) == (16, 32.0, ["q_proj", "v_proj"])
    assert (cfg.scu.enabled, cfg.training.steps, cfg.data.val_data, cfg.output_dir) == (False, 7, None, "runs/x")


@pytest.mark.parametrize("args, message", [
    (["--set", "training.steps=5", "--steps", "6"], "--set training.steps and --steps both set training.steps"),
    (["--set", "max_steps=5", "--test-run"], "--set max_steps and --test-run both set training.steps"),
    (["--set", "output_dir=a", "--output", "b"], "--set output_dir and --output both set output_dir"),
    (["--set", "scu.enabled=true", "--controller", "simplified"], "--set scu.enabled and --controller both set"),
])
def test_set_and_a_flag_on_the_same_key_is_an_error(train_args, args, message):
    with pytest.raises(ScuError, match="keep one of them") as e:
        config_from_args(train_args(*args))
    assert message in str(e.value)


def test_a_flag_alone_still_overrides_the_yaml(train_args):
    assert config_from_args(train_args("--steps", "9", "--set", "lora.r=4")).training.steps == 9


def test_set_of_an_unknown_key_names_the_nearest(train_args):
    with pytest.raises(ScuError, match=r"scu\.target_S: unknown key; did you mean scu\.target_s\?"):
        config_from_args(train_args("--set", "scu.target_S=0.1"))


@pytest.mark.parametrize("setting", ["lora.rank", "=3", "lora.targets=[q_proj"])
def test_a_malformed_set_is_a_usage_error(train_args, setting, capsys):
    with pytest.raises(SystemExit) as e:
        train_args("--set", setting)
    assert e.value.code == 2 and "--set" in capsys.readouterr().err
