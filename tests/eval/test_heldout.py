"""Held-out BPT: hand-made models whose every number can be worked out by hand, agreement with the
training loop's block BPT, independence from batching/padding, and the bootstrap."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from scu.data.text import tokenize_documents
from scu.eval.bpt import block_bpt
from scu.eval.heldout import DocumentScores, bootstrap_bpt, interval, score_documents


class Bigram(nn.Module):
    """Next-token probabilities depend only on the current token: rows of `probs`."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        self.logp = nn.Parameter(torch.tensor(probs, dtype=torch.float64).log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logp[input_ids])


class MoreContextHelps(nn.Module):
    """Predicts token 0 with logit j at window position j (the others 0): the loss says where each prediction sat."""

    vocab = 8

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        logits[:, :, 0] = torch.arange(t, dtype=torch.float32)
        return SimpleNamespace(logits=logits)

    @classmethod
    def nats(cls, j: int) -> float:
        """CE of target 0 predicted from window position j."""
        return -math.log(math.exp(j) / (math.exp(j) + cls.vocab - 1))


# bits of each transition prev -> next under BIGRAM: 1 for staying, 2 for moving
BIGRAM = Bigram([[1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 4, 1 / 2]])
DOCS = [[0, 0, 1, 1, 2, 2, 0], [2, 1, 0], [1]]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_block_chunked_bpt_equals_the_hand_computation(batch_size):
    s = score_documents(BIGRAM, DOCS, block_size=3, batch_size=batch_size)
    # doc 0 in blocks [0 0 1] [1 2 2] [0]: scored 0->0 (1 bit), 0->1 (2), 1->2 (2), 2->2 (1); the lone 0 starts a block
    # doc 1 [2 1 0]: 2->1 (2), 1->0 (2); doc 2 has a single token: nothing to predict
    assert s.tokens.tolist() == [4, 2, 0]
    assert (s.nats / math.log(2)).tolist() == pytest.approx([6.0, 4.0, 0.0], rel=1e-6)
    assert s.bpt == pytest.approx(10 / 6, rel=1e-6)
    assert s.perplexity == pytest.approx(2 ** (10 / 6), rel=1e-6)


def test_sliding_window_scores_every_token_but_the_first():
    s = score_documents(BIGRAM, DOCS, block_size=3, stride=1)
    # every transition of doc 0: 1+2+1+2+1+2 = 9 bits over 6 tokens; doc 1: 4 bits over 2 tokens
    assert s.tokens.tolist() == [6, 2, 0]
    assert s.bpt == pytest.approx(13 / 8, rel=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_each_token_is_scored_once_with_the_context_its_window_gives(batch_size):
    model, n = MoreContextHelps(), MoreContextHelps.nats
    doc = [[0] * 10]
    # block 4, stride 2: windows start at 0, 2, 4, 6; the first scores positions 1-3 (from window positions 0-2),
    # each later one the two new positions 4-5, 6-7, 8-9 (from window positions 1-2)
    sliding = score_documents(model, doc, block_size=4, stride=2, batch_size=batch_size)
    assert sliding.tokens.tolist() == [9]
    assert sliding.nats[0] == pytest.approx(n(0) + n(1) + n(2) + 3 * (n(1) + n(2)), rel=1e-6)
    # block 4 chunked: [0..4) [4..8) [8..10): positions 0-2, 0-2 and 0 predict
    chunked = score_documents(model, doc, block_size=4, batch_size=batch_size)
    assert chunked.tokens.tolist() == [7]
    assert chunked.nats[0] == pytest.approx(2 * (n(0) + n(1) + n(2)) + n(0), rel=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scu.data.builtin import pydoc_topics

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    docs = tokenize_documents(pydoc_topics()[50:53], tokenizer)
    return model, docs


def test_block_chunked_bpt_matches_the_training_loops_block_bpt(tiny):
    model, docs = tiny
    block = 32
    doc = docs[0][: (len(docs[0]) // block) * block]
    mine = score_documents(model, [doc], block_size=block)
    lead = block_bpt(model, np.asarray(doc, dtype=np.int64).reshape(-1, block))
    assert mine.bpt == pytest.approx(lead, rel=1e-6)


@pytest.mark.parametrize("stride", [None, 16])
def test_batching_and_padding_do_not_change_the_result(tiny, stride):
    model, docs = tiny
    ragged = [docs[0][:5], docs[1][:37], docs[2][:64], docs[0][:130], docs[1][:2]]
    one = score_documents(model, ragged, block_size=48, stride=stride, batch_size=1)
    many = score_documents(model, ragged, block_size=48, stride=stride, batch_size=16)
    assert one.tokens.tolist() == many.tokens.tolist()
    assert many.nats == pytest.approx(one.nats, rel=1e-5)


def test_bootstrap_intervals_are_paired_and_cover_the_estimate():
    rng = np.random.default_rng(0)
    tokens = rng.integers(50, 500, size=40)
    a = DocumentScores(rng.uniform(2.0, 4.0, 40) * tokens, tokens)
    b = DocumentScores(a.nats * 0.9, tokens)  # every document 10% better
    boot = bootstrap_bpt({"a": a, "b": b, "a_again": a}, samples=500, seed=1)
    lo, hi = interval(boot["a"])
    assert lo < a.bpt < hi
    assert interval(boot["a_again"] - boot["a"]) == (0.0, 0.0)  # the same resamples for every model
    d_lo, d_hi = interval(boot["b"] - boot["a"])
    assert d_hi < 0 and d_lo == pytest.approx(d_hi, rel=0.3)  # paired: the difference is tight
    same = DocumentScores(np.full(10, 30.0), np.full(10, 10))
    assert interval(bootstrap_bpt({"x": same}, samples=100)["x"]) == pytest.approx((30 / 10 / math.log(2),) * 2)
