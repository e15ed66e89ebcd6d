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
