"""The benchmarks' KEY=VALUE parser: numbers are numbers, scientific notation included, and a typo is one line."""

import pytest

from bench.harness.settings import LABEL_MAX, key_values, settings_label


def test_numbers_booleans_and_words_keep_their_type():
    got = key_values(["window=50", "lambda_tolerance=0.2", "loss_tolerance=1e-3", "average=false", "smoothing=ratio"])
    assert got == {"window": 50, "lambda_tolerance": 0.2, "loss_tolerance": 1e-3, "average": False, "smoothing": "ratio"}
    assert isinstance(got["window"], int) and isinstance(got["loss_tolerance"], float)


def test_an_item_without_equals_is_refused_and_labels_keep_the_order():
    with pytest.raises(SystemExit, match="expected KEY=VALUE, got 'window50'"):
        key_values(["window50"])
    assert settings_label(["lead_steps=3", "", "ki=0.2"]) == "_lead_steps=3_ki=0.2"


def test_a_long_settings_label_stays_a_valid_distinct_file_name(tmp_path):
    short = ["window=50", "lambda_tolerance=0.2"]
    assert settings_label(short) == "_window=50_lambda_tolerance=0.2"  # short labels (every cached file) unchanged
    long = [f"key_{i}=value_{i}" for i in range(30)]
    a, b = settings_label(long), settings_label(long[:-1] + ["key_29=other"])
    assert len(a) <= LABEL_MAX and len(b) <= LABEL_MAX and a != b
    assert a.startswith("_key_0=value_0_key_1=value_1")
    (tmp_path / f"balance_N=16000_S=0.5x_default_seed0_sm=data{a}.json").write_text("{}")  # the OS takes the name
