"""The KD loss: per-token means, so the NLL term keeps its weight whatever the sequence length."""

import pytest
import torch

from scu.vac.recover import kd_loss


def logits_and_ids(batch=2, seq=12, vocab=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, vocab, generator=g), torch.randint(0, vocab, (batch, seq), generator=g)


def test_identical_teacher_leaves_exactly_the_weighted_nll():
    s, ids = logits_and_ids()
    loss, parts = kd_loss(s, s.clone(), ids, nll_weight=0.7)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert parts["nll"] > 1.0
    assert loss.item() == pytest.approx(0.7 * parts["nll"], rel=1e-5)


def test_nll_term_moves_the_gradient():
    s, ids = logits_and_ids()
    t, _ = logits_and_ids(seed=1)
    grads = {}
    for w in (0.0, 1.0):
        x = s.clone().requires_grad_(True)
        kd_loss(x, t, ids, nll_weight=w)[0].backward()
        grads[w] = x.grad
    delta = (grads[1.0] - grads[0.0]).norm() / grads[0.0].norm()
    assert delta > 0.3  # the NLL gradient is of the same order as the KL gradient, not a rounding error


def test_loss_is_a_mean_over_tokens_not_a_sum():
    s, ids = logits_and_ids()
    t, _ = logits_and_ids(seed=1)
    short = kd_loss(s, t, ids)[1]
    longer = kd_loss(s.repeat(1, 4, 1), t.repeat(1, 4, 1), ids.repeat(1, 4))[1]  # same token statistics, 4x the tokens
    assert longer["kl"] == pytest.approx(short["kl"], rel=0.1)
    assert longer["nll"] == pytest.approx(short["nll"], rel=0.1)
    assert short["kl"] / short["nll"] < 5  # a KL summed over tokens would dwarf the NLL
