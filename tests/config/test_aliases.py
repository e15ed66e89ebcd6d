"""The ecosystem's key names (transformers, PEFT, TRL) load as ours, and an unknown key names the nearest valid one."""

from __future__ import annotations

import pytest
import yaml

from scu import ScuError
from scu.config.schema import ALIASES, build_config, dump_config, load_config

VALUES = {
    "max_steps": 7, "learning_rate": 1e-3, "gradient_accumulation_steps": 4, "lr_scheduler_type": "linear",
    "max_seq_length": 256, "r": 16, "lora_alpha": 32.0, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
}


def value_at(cfg, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("alias", list(ALIASES))
def test_an_alias_sets_our_key_at_the_top_level_and_in_its_section(alias):
    target = ALIASES[alias]
    section = target.split(".")[0]
    assert value_at(build_config({alias: VALUES[alias]}), target) == VALUES[alias]
    assert value_at(build_config({section: {alias: VALUES[alias]}}), target) == VALUES[alias]


def test_a_peft_and_trainer_style_yaml_loads(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": "runs/mine", "max_steps": 50, "learning_rate": 5e-4, "gradient_accumulation_steps": 2,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, "scu": {"target_s": 0.1},
    }))
    cfg = load_config(path, {"max_steps": 60, "lora.lora_dropout": 0.0})  # overrides may use the names too
    assert (cfg.training.steps, cfg.training.learning_rate, cfg.training.gradient_accumulation) == (60, 5e-4, 2)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, cfg.lora.dropout) == (4, 8.0, ["q_proj"], 0.0)
    assert cfg.output_dir == "runs/mine"


def test_output_dir_stays_out_of_the_run_record():
    cfg = build_config({"output_dir": "runs/mine"})
    assert "output_dir" not in cfg.model_dump() and "output_dir" not in dump_config(cfg)


@pytest.mark.parametrize("data", [{"max_steps": 5, "training": {"steps": 6}}, {"lora": {"r": 4, "rank": 8}}])
def test_an_alias_next_to_its_key_is_refused(data):
    with pytest.raises(ScuError, match="is another name for .* keep one of them"):
        build_config(data)


@pytest.mark.parametrize("data, message", [
    ({"scu": {"target_S": 0.1}}, "invalid config: scu.target_S: unknown key; did you mean scu.target_s?"),
    ({"training": {"learning_rte": 0.1}}, "invalid config: training.learning_rte: unknown key; did you mean training.learning_rate?"),
    ({"lora": {"lora_alhpa": 8}}, "invalid config: lora.lora_alhpa: unknown key; did you mean lora.lora_alpha?"),
    ({"max_step": 5}, "invalid config: max_step: unknown key; did you mean max_steps?"),
    ({"tscu": {"power_budget": 20}}, "invalid config: tscu.power_budget: unknown key; did you mean tscu.power_budget_watts?"),
    ({"zzz": 1}, "invalid config: zzz: unknown key; remove it or check its spelling"),
])
def test_an_unknown_key_names_the_nearest_valid_one(data, message):
    with pytest.raises(ScuError) as e:
        build_config(data)
    assert str(e.value) == message
