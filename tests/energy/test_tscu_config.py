"""The `tscu:` YAML section."""

from pathlib import Path

import pytest

from scu import ScuError
from scu.config.schema import dump_config, load_config
from scu.energy.runtime import TscuConfig


def test_yaml_keys_reach_the_controller_config(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("tscu:\n  enabled: true\n  power_budget_watts: 250\n  max_temperature_celsius: 80\n  actuator: lr\n  sensor: none\n")
    cfg = load_config(p)
    t = cfg.tscu
    assert isinstance(t, TscuConfig) and t.enabled and t.actuator == "lr" and t.sensor == "none"
    assert (t.power_budget_watts, t.max_temperature_celsius, t.pause_temperature_celsius, t.resume_temperature_celsius) == (
        250.0, 80.0, 90.0, 75.0,
    )  # fmt: skip
    assert load_config(None, {"tscu.power_budget_watts": 30.0}).tscu.power_budget_watts == 30.0
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))  # a run's config.yaml reloads to the same section
    assert load_config(again).tscu == t


@pytest.mark.parametrize(
    "yaml_text,match",
    [
        ("tscu:\n  power_budget: 20\n", "tscu.power_budget: unknown key"),
        ("tscu:\n  sensor: gpu\n", "tscu.sensor"),
        ("tscu:\n  resume_temperature_celsius: 80\n", "resume_temperature < max_temperature"),
        ("tscu:\n  sample_period_s: 0\n", "sample_period_s must be > 0"),
    ],
)
def test_bad_tscu_keys_are_one_line_errors(tmp_path: Path, yaml_text: str, match: str):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ScuError, match=match):
        load_config(p)
