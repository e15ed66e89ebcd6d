"""Bad input: a one-line error that names the fix, exit code 2, and no output directory left behind."""

from __future__ import annotations

import pytest
import yaml

from scu.cli import main


def write_cfg(tmp_path, tiny_base, data_path, **sections):
    cfg = {
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 4, "alpha": 8},
        "scu": {"target_s": 0.05},
        "training": {"batch_size": 2, "block_size": 64, "steps": 2, "warmup_steps": 1},
        "data": {"train_data": str(data_path)},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


CASES = {
    "missing data file": ({"data": {"train_data": "/nonexistent/train.txt"}}, "not found"),
    "empty dataset": ({"data": {"train_data": "EMPTY"}}, "empty"),
    "block longer than data": ({"data": {"train_data": "TINY"}, "training": {"block_size": 4096}}, "lower training.block_size"),
    "weight decay under SCU": ({"training": {"weight_decay": 0.1}}, "weight_decay"),
    "unknown key": ({"scu": {"target_S": 0.1}}, "unknown key"),
    "target outside (0,1)": ({"scu": {"target_s": 1.5}}, "target_s must be in (0, 1)"),
    "lambda bounds out of order": ({"scu": {"lambda_min": 1.0, "lambda_max": 0.1}}, "lambda_min <= scu.lambda_max"),
    "overlapping validation": ({"data": {"val_data": "SAME"}}, "also occur in the training data"),
    "missing model": ({"model": {"base_model": "/nonexistent/model"}}, "could not load model"),
    "targets not in model": ({"lora": {"targets": ["c_attn"]}}, "none of lora.targets"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_error_and_no_output(case, tmp_path, tiny_base, pydoc_txt, capsys):
    sections, expected = CASES[case]
    data = sections.get("data", {})
    for key, value in list(data.items()):
        if value == "EMPTY":
            (tmp_path / "empty.txt").write_text("\n\n  \n")
            data[key] = str(tmp_path / "empty.txt")
        elif value == "TINY":
            (tmp_path / "tiny.txt").write_text("a few words only")
            data[key] = str(tmp_path / "tiny.txt")
        elif value == "SAME":
            data[key] = str(pydoc_txt)
    cfg = write_cfg(tmp_path, tiny_base, pydoc_txt, **sections)
    out = tmp_path / "out"
    code = main(["train", "--config", str(cfg), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_guide_template_loads_unchanged(tmp_path):
    from scu.config.schema import load_config

    template = """\
model: {base_model: "your-model-id", architecture: "transformer"}
lora: {rank: 16, alpha: 32, dropout: 0.05, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
scu: {target_s: 0.03, kp: 0.8, ki: 0.15, deadband: 0.003, lambda_init: 1.0, lambda_min: 0.0001, lambda_max: 2.0, prior_sigma: 0.01}
training: {learning_rate: 2e-5, batch_size: 1, gradient_accumulation: 16, block_size: 2048, steps: 1500, warmup_steps: 150, weight_decay: 0.0}
data: {train_data: "path/to/train.jsonl", val_data: "path/to/val.jsonl", tokens_per_epoch: 98304000}
"""
    (tmp_path / "t.yaml").write_text(template)
    cfg = load_config(tmp_path / "t.yaml")
    assert (cfg.scu.kp, cfg.scu.ki, cfg.scu.lambda_max, cfg.training.learning_rate) == (0.8, 0.15, 2.0, 2e-5)
    assert cfg.data.tokens_per_epoch == 98304000 and cfg.lora.rank == 16


# Values refused when the config loads: one line naming the key, exit 2, nothing written (flags or YAML).
BAD_VALUES = {
    "kp nan": (["--kp", "nan"], {}, "scu.kp: Input should be a finite number"),
    "lambda_init nan": (["--lambda-init", "nan"], {}, "scu.lambda_init: Input should be a finite number"),
    "lambda_max inf": (["--lambda-max", "inf"], {}, "scu.lambda_max: Input should be a finite number"),
    "ki negative": (["--ki", "-0.1"], {}, "scu.ki: Input should be greater than or equal to 0"),
    "kp negative": (["--kp", "-1"], {}, "scu.kp: Input should be greater than or equal to 0"),
    "learning rate nan": ([], {"training": {"learning_rate": float("nan")}}, "training.learning_rate: Input should be a finite"),
    "learning rate zero": ([], {"training": {"learning_rate": 0}}, "training.learning_rate: must be in (0, 10]"),
    "negative warmup": ([], {"training": {"warmup_steps": -1}}, "training.warmup_steps: Input should be greater than or equal to 0"),
    "dropout 1": ([], {"lora": {"dropout": 1.0}}, "lora.dropout: Input should be less than 1"),
    "val_fraction 1": ([], {"data": {"val_fraction": 1.0}}, "data.val_fraction: Input should be less than 1"),
    "checkpoint_every 0": ([], {"training": {"checkpoint_every": 0}}, "training.checkpoint_every: must be >= 1"),
    "null section plus a flag": (["--steps", "5"], {"training": None}, "training: is empty"),
    "null section": ([], {"training": None}, "training: is empty"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_refused_at_load(case, train_cli, tmp_path):
    flags, config, expected = BAD_VALUES[case]
    out = tmp_path / "out"
    code, err = train_cli(out, *flags, config=config)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not out.exists()


def test_block_size_above_the_models_context(train_cli, tmp_path, tiny_base):
    import json

    context = json.loads((tiny_base / "config.json").read_text())["max_position_embeddings"]
    big = tmp_path / "big.txt"  # enough distinct text that packing into long blocks succeeds
    big.write_text("\n\n".join(f"document {i}: " + " ".join(f"w{i}x{j}" for j in range(300)) for i in range(200)))
    out = tmp_path / "out"
    code, err = train_cli(out, config={"training": {"block_size": 2 * context}, "data": {"train_data": str(big)}})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"exceeds the model's context of {context} tokens" in err
    assert not out.exists()


BAD_DATA = {
    "null text": ('{"text": "fine"}\n{"text": null}\n', ".jsonl", ":2: `text` is null, not a string"),
    "number text": ('{"text": 12}\n', ".jsonl", ":1: `text` is int, not a string"),
    "not an object": ('["a list"]\n', ".jsonl", ":1 is a JSON list, not an object"),
    "latin-1 txt": ("caf\xe9 au lait\n\nmore text", ".txt", "is not UTF-8 text (it holds byte 0xe9)"),
    "latin-1 jsonl": ('{"text": "caf\xe9"}\n', ".jsonl", "is not UTF-8 text (it holds byte 0xe9)"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_names_the_line_or_the_encoding(case, train_cli, tmp_path):
    text, suffix, expected = BAD_DATA[case]
    path = tmp_path / f"data{suffix}"
    path.write_bytes(text.encode("latin-1"))
    out = tmp_path / "out"
    code, err = train_cli(out, config={"data": {"train_data": str(path)}})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not out.exists()


def test_truncated_base_weights_are_one_line(train_cli, tmp_path, tiny_base):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    weights = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # an interrupted copy
    out = tmp_path / "out"
    code, err = train_cli(out, config={"model": {"base_model": str(base)}})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "model.safetensors is truncated or corrupt" in err
    assert not out.exists()
