"""`scu suggest` plans steps from a token budget: at most 3 epochs unless `--epochs` asks otherwise."""

from __future__ import annotations

import math
import re

import pytest

from scu import ScuError
from scu.cli import main
from scu.config import suggest
from scu.config.schema import Config, load_config
from scu.config.smart import count_tokens

# "500 steps × 32,768 tokens = 16.4M tokens ≈ 2.93 epochs of 5.6M"
PLAN = re.compile(r"(\d+) steps × ([\d,]+) tokens = \S+ tokens ≈ ([\d.]+) epochs of ")


def trained_tokens(config: Config) -> int:
    t = config.training
    return t.steps * t.batch_size * t.gradient_accumulation * t.block_size


def printed_epochs(lines: list[str]) -> tuple[int, int, float]:
    """(steps, tokens per step, epochs) from the one line that states the plan."""
    (m,) = [m for line in lines if (m := PLAN.search(line))]
    return int(m.group(1)), int(m.group(2).replace(",", "")), float(m.group(3))


@pytest.mark.parametrize("vram", [None, 16, 24, 80])
def test_default_plan_never_exceeds_three_epochs(vram):
    for tokens in (2_000, 20_000, 72_000, 500_000, 1e6, 5.6e6, 12e6, 50e6, 1e9):
        s = suggest(params=1.2e9, tokens=tokens, vram_gb=vram)
        assert 1 <= trained_tokens(s.config) <= 3 * tokens, (tokens, s.config.training)


def test_small_dataset_stays_within_three_epochs_and_is_warned(tiny_base, pydoc_txt, tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert main(["suggest", "--model", str(tiny_base), "--data", str(pydoc_txt), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    tokens, cfg = count_tokens(str(pydoc_txt), str(tiny_base)), load_config(out)
    assert trained_tokens(cfg) <= 3 * tokens
    # ~92k tokens cannot fill 500 steps of 32k: one sequence per step keeps the most steps.
    assert (cfg.training.batch_size, cfg.training.gradient_accumulation) == (1, 1)
    assert cfg.training.steps == 3 * tokens // cfg.training.block_size
    (warning,) = [line for line in printed.err.splitlines() if "validated" in line]
    assert warning.startswith("warning: ") and f"{cfg.training.steps} steps" in warning
    steps, per_step, epochs = printed_epochs(printed.out.splitlines())
    assert (steps, per_step) == (cfg.training.steps, cfg.training.block_size)
    assert epochs == pytest.approx(trained_tokens(cfg) / tokens, abs=0.01)


def test_epochs_flag_allows_more(tiny_base, pydoc_txt, tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert main(["suggest", "--model", str(tiny_base), "--data", str(pydoc_txt), "--epochs", "10",
                 "--out", str(out)]) == 0
    tokens, cfg = count_tokens(str(pydoc_txt), str(tiny_base)), load_config(out)
    assert 3 * tokens < trained_tokens(cfg) <= 10 * tokens
    assert printed_epochs(capsys.readouterr().out.splitlines())[2] == pytest.approx(trained_tokens(cfg) / tokens, abs=0.01)


@pytest.mark.parametrize(
    "tokens, vram, epochs",
    [(72_000, None, 3.0), (500_000, 24, 3.0), (12e6, 24, 3.0), (5.6e6, None, 3.0), (1e9, 80, 3.0), (12e6, 24, 0.5)],
)
def test_printed_epochs_match_the_plan(tokens, vram, epochs):
    s = suggest(params=1.2e9, tokens=tokens, vram_gb=vram, epochs=epochs)
    t = s.config.training
    steps, per_step, printed = printed_epochs(s.reasons)
    assert (steps, per_step) == (t.steps, t.batch_size * t.gradient_accumulation * t.block_size)
    assert printed == pytest.approx(trained_tokens(s.config) / tokens, rel=0.01)
    assert trained_tokens(s.config) <= epochs * tokens


@pytest.mark.parametrize("epochs", [0, -1, math.nan, math.inf])
def test_bad_epochs_is_a_one_line_user_error(epochs, capsys):
    with pytest.raises(ScuError, match="--epochs must be"):
        suggest(params=1.2e9, tokens=1e6, epochs=epochs)
    assert main(["suggest", "--params", "1.2B", "--tokens", "1M", "--epochs", str(epochs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs must be" in err[0]


@pytest.mark.parametrize("minutes", [5.0, 30.0])
def test_cpu_plan_fits_its_time_budget_and_says_so(minutes):
    """Without --vram the plan is for a CPU: its estimated time fits --cpu-minutes, law auto's step cost included."""
    from scu.config.smart import AUTO_LAW_STEP_COST, cpu_step_seconds, model_from_params

    s = suggest(params=135e6, tokens=340_000, cpu_minutes=minutes)
    t = s.config.training
    assert s.config.scu.law == "auto"
    step_s = cpu_step_seconds(model_from_params(135_000_000), t.batch_size * t.gradient_accumulation, t.block_size)
    est_min = step_s * AUTO_LAW_STEP_COST * t.steps / 60
    assert minutes * 0.9 <= est_min <= minutes
    pi = suggest(params=135e6, tokens=340_000, cpu_minutes=minutes, symptoms=["s-overshoots"]).config.training
    assert pi.steps == int(minutes * 60 // step_s) > t.steps  # a pi plan pays no extra step cost
    twice = suggest(params=135e6, tokens=340_000, cpu_minutes=minutes, target="auto").config.training
    assert abs(2 * twice.steps - pi.steps) <= 1  # target auto trains twice under pi (plain fit, then SCU): half the steps
    assert any("--cpu-minutes" in w for w in s.warnings)
    uncut = suggest(params=135e6, tokens=340_000)  # without --cpu-minutes the estimate is only printed
    assert uncut.config.training.steps > t.steps and not any("--cpu-minutes" in w for w in uncut.warnings)
    assert any(r.startswith("time: about") for r in uncut.reasons)
    with pytest.raises(ScuError, match="--cpu-minutes"):
        suggest(params=135e6, tokens=340_000, cpu_minutes=0)


def test_cpu_step_estimate_charges_long_blocks_for_attention():
    """Same tokens a step, longer block: dearer per token (measured on SmolLM2-135M: 1.45x from 128 to 2048)."""
    from dataclasses import replace

    from scu.config.smart import cpu_step_seconds, model_from_params

    info = replace(model_from_params(134_515_008), layers=30, hidden=576)  # SmolLM2-135M's shape
    short, long = cpu_step_seconds(info, 16, 128), cpu_step_seconds(info, 1, 2048)
    assert 1.3 < long / short < 1.7
    assert cpu_step_seconds(info, 4, 128) == pytest.approx(5.9, rel=0.1)  # measured on one idle thread
    assert cpu_step_seconds(info, 1, 2048) == pytest.approx(34.3, rel=0.1)
