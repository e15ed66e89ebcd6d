"""Perplexity: the same number whatever the windows per pass, and the default pass stays within its token budget."""

from __future__ import annotations

import pytest
import torch

from scu.cli import main
from scu.data.builtin import pydoc_topics
from scu.vac import evaluate
from scu.vac.evaluate import perplexity, token_stream


@pytest.fixture
def ids(tokenizer) -> torch.Tensor:
    return token_stream(pydoc_topics()[:6], tokenizer)[:1000]  # 15 windows of 64 tokens and a 40-token tail


def test_perplexity_does_not_depend_on_windows_per_pass(fresh, ids):
    model = fresh()
    one = perplexity(model, ids, 64, batch_size=1)
    assert one["tokens"] == 15 * 63 + 39
    for batch_size in (3, 16, None):
        assert perplexity(model, ids, 64, batch_size)["nll"] == pytest.approx(one["nll"], rel=1e-5)


def test_default_pass_holds_at_most_the_token_budget(fresh, ids, monkeypatch):
    model, shapes = fresh(), []
    model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    monkeypatch.setattr(evaluate, "EVAL_TOKENS_PER_PASS", 256)
    perplexity(model, ids, 64)
    # 256 // 64 = 4 windows a pass; the last group's 40-token tail window goes through alone, first
    assert shapes == [(4, 64)] * 3 + [(1, 40), (3, 64)]


def test_eval_ppl_refuses_a_batch_size_below_one(tiny_base, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("Some text to score.\n\nAnd another document.")
    assert main(["eval-ppl", "--model", str(tiny_base), "--data", str(data), "--no-speed", "--batch-size", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--batch-size must be at least 1 window (leave it out for the default)")
