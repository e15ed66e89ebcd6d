"""A user-registered model family overrides the defaults, from Python or a YAML file."""

from __future__ import annotations

import pytest

import scu.config
from scu import ScuError
from scu.cli import main
from scu.config import registry, suggest
from scu.config.schema import ScuSection, load_config


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No families from the user's home or from other tests."""
    monkeypatch.setattr(registry, "_SCALES", {})
    monkeypatch.setenv("SCU_SCALES", str(tmp_path / "absent.yaml"))


def test_registered_family_overrides_s_star_and_gains(real_model_dirs):
    olmo3 = str(real_model_dirs["OLMo-3-7B"])
    plain = suggest(olmo3, tokens=200e6, target="guide")
    scu.config.register_scale("olmo-3", s_target=0.025, kp=0.6, ki=0.05)
    s = suggest(olmo3, tokens=200e6)
    assert plain.config.scu.target_s == pytest.approx(0.03)
    assert (plain.config.scu.kp, plain.config.scu.ki) == (ScuSection().kp, ScuSection().ki)
    assert s.config.scu.target_s == pytest.approx(0.025)
    assert (s.config.scu.kp, s.config.scu.ki) == (0.6, 0.05)
    assert any("model family 'olmo-3' (registry) -> 2.5% instead of large's 3.0%" in r for r in s.reasons)


def test_adjustments_and_symptoms_apply_on_top_of_a_family(real_model_dirs):
    scu.config.register_scale("olmo-3", s_target=0.025, kp=0.8)
    s = suggest(str(real_model_dirs["OLMo-3-7B"]), tokens=5e6, task="code", symptoms=["lambda-oscillates"])
    assert s.config.scu.target_s == pytest.approx(0.025 - 0.005 + 0.005)
    assert s.config.scu.kp == pytest.approx(0.55)  # the guide's own 0.8 -> 0.55
    assert s.config.scu.ki == ScuSection().ki  # not given: the engine's default


def test_family_does_not_match_other_models(real_model_dirs):
    scu.config.register_scale("olmo-3", s_target=0.025)
    assert suggest(str(real_model_dirs["Mistral-7B"]), tokens=200e6, target="guide").config.scu.target_s == pytest.approx(0.04)


def test_match_globs_and_model_type(real_model_dirs):
    scu.config.register_scale("mine", s_target=0.02, match=["mistral"])  # model_type
    assert suggest(str(real_model_dirs["Mistral-7B"])).config.scu.target_s == pytest.approx(0.02)
    scu.config.register_scale("mine", s_target=0.015, match=["llama-3.2-*"])  # replaces; glob on the dir name
    assert suggest(str(real_model_dirs["Llama-3.2-1B"])).config.scu.target_s == pytest.approx(0.015)
    assert suggest(str(real_model_dirs["Mistral-7B"]), target="guide").config.scu.target_s == pytest.approx(0.04)


def test_yaml_file_and_explicit_family(tmp_path, capsys):
    scales = tmp_path / "scales.yaml"
    scales.write_text("my-model:\n  s_target: 0.035\n  kp: 0.8\n  ki: 0.15\n")
    out = tmp_path / "c.yaml"
    assert main(["suggest", "--params", "2B", "--family", "my-model", "--scales", str(scales), "--out", str(out)]) == 0
    cfg = load_config(out)
    assert (cfg.scu.target_s, cfg.scu.kp, cfg.scu.ki) == (pytest.approx(0.035), 0.8, 0.15)
    assert "model family 'my-model'" in capsys.readouterr().out


def test_default_file_from_environment(tmp_path, monkeypatch, real_model_dirs):
    scales = tmp_path / "home_scales.yaml"
    scales.write_text("llama-3.2:\n  s_target: 0.01\n")
    monkeypatch.setenv("SCU_SCALES", str(scales))
    assert suggest(str(real_model_dirs["Llama-3.2-3B"])).config.scu.target_s == pytest.approx(0.01)


def test_ambiguous_and_unknown_families_are_user_errors(real_model_dirs):
    scu.config.register_scale("llama", s_target=0.02)
    scu.config.register_scale("llama-3.2", s_target=0.01)
    with pytest.raises(ScuError, match="several model families"):
        suggest(str(real_model_dirs["Llama-3.2-1B"]))
    assert suggest(str(real_model_dirs["Llama-3.2-1B"]), family="llama-3.2").config.scu.target_s == pytest.approx(0.01)
    with pytest.raises(ScuError, match="unknown model family 'gemma'"):
        suggest(params=1e9, family="gemma")


@pytest.mark.parametrize(
    "text, message",
    [
        ("my-model: {s_target: 3}\n", "s_target"),
        ("my-model: {s_target: 0.03, kd: 1}\n", "kd"),
        ("- a\n- b\n", "must map family names"),
        ("my-model: [\n", "not valid YAML"),
    ],
)
def test_bad_scales_file(tmp_path, text, message):
    scales = tmp_path / "scales.yaml"
    scales.write_text(text)
    with pytest.raises(ScuError, match=message):
        suggest(params=1e9, scales_file=scales)


def test_register_scale_validates():
    with pytest.raises(ScuError, match="s_target"):
        scu.config.register_scale("x", s_target=0.0)
    with pytest.raises(ScuError, match="kp"):
        scu.config.register_scale("x", s_target=0.02, kp=-1)
