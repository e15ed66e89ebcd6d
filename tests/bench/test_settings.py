"""The benchmarks' KEY=VALUE parser: numbers are numbers, scientific notation included, and a typo is one line."""

import pytest

from bench.harness.settings import key_values, settings_label


def test_numbers_booleans_and_words_keep_their_type():
    got = key_values(["window=50", "lambda_tolerance=0.2", "loss_tolerance=1e-3", "average=false", "smoothing=ratio"])
    assert got == {"window": 50, "lambda_tolerance": 0.2, "loss_tolerance": 1e-3, "average": False, "smoothing": "ratio"}
    assert isinstance(got["window"], int) and isinstance(got["loss_tolerance"], float)


def test_an_item_without_equals_is_refused_and_labels_keep_the_order():
    with pytest.raises(SystemExit, match="expected KEY=VALUE, got 'window50'"):
        key_values(["window50"])
    assert settings_label(["lead_steps=3", "", "ki=0.2"]) == "_lead_steps=3_ki=0.2"
