"""Factorization methods: each is optimal in its own metric, and the predicted costs are what they claim."""

import pytest
import torch

from scu.vac.factorize import LinearStats, decompose, refit_up, truncation_costs


def correlated_stats(out_f=48, in_f=32, tokens=4000, seed=0):
    """A weight matrix and calibration inputs whose channels are strongly correlated and unevenly scaled."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    mix = torch.randn(in_f, in_f, generator=g, dtype=torch.float64) * torch.logspace(0, -3, in_f, dtype=torch.float64)
    X = torch.randn(tokens, in_f, generator=g, dtype=torch.float64) @ mix.T
    grads = torch.randn(out_f, generator=g, dtype=torch.float64).abs() + 0.1  # per-row output gradient scale
    fisher = (grads[:, None] ** 2) * (X**2).mean(0)[None, :]
    stats = LinearStats(tokens=tokens, xtx=X.T @ X, abs_sum=X.abs().sum(0), fisher_rows=fisher.sum(1), fisher_cols=fisher.sum(0))
    return W, X, stats


def output_error(W, decomp, X, rank):
    up, down = decomp.factors(rank, torch.float64)
    return torch.linalg.norm((W - up @ down) @ X.T).item()


@pytest.mark.parametrize("method", ["svd", "fwsvd", "asvd", "whiten", "vac"])
def test_full_rank_reconstructs_the_weights(method):
    W, _, stats = correlated_stats()
    d = decompose(W, method, stats)
    up, down = d.factors(min(W.shape), torch.float64)
    assert torch.allclose(up @ down, W, atol=1e-6)


@pytest.mark.parametrize("rank", [4, 8, 16])
def test_whitening_beats_plain_svd_on_correlated_activations(rank):
    W, X, stats = correlated_stats()
    svd = output_error(W, decompose(W, "svd"), X, rank)
    asvd = output_error(W, decompose(W, "asvd", stats), X, rank)
    whiten = output_error(W, decompose(W, "whiten", stats), X, rank)
    assert whiten < 0.5 * svd
    assert whiten <= asvd + 1e-9  # whitening is the optimum of this very error


def test_whitened_truncation_is_optimal_for_the_output_error():
    # No rank-r matrix does better on ||(W - W_r) X||: compare with random rank-r perturbations of the optimum.
    W, X, stats = correlated_stats(seed=1)
    d = decompose(W, "whiten", stats)
    up, down = d.factors(6, torch.float64)
    best = torch.linalg.norm((W - up @ down) @ X.T)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        u2 = up + 0.01 * torch.randn(up.shape, generator=g, dtype=torch.float64)
        d2 = down + 0.01 * torch.randn(down.shape, generator=g, dtype=torch.float64)
        assert torch.linalg.norm((W - u2 @ d2) @ X.T) >= best


@pytest.mark.parametrize("method", ["svd", "whiten", "vac"])
def test_truncation_costs_equal_the_second_order_formula(method):
    W, X, stats = correlated_stats()
    d = decompose(W, method, stats)
    ranks = [1, 5, 17, 32]
    costs = truncation_costs(d, stats, ranks)
    g = stats.output_fisher()
    C = stats.second_moment()
    for r, c in zip(ranks, costs):
        up, down = d.factors(r, torch.float64)
        E = W - up @ down
        direct = 0.5 * torch.trace((E.T * g) @ E @ C).item()
        assert c == pytest.approx(direct, rel=1e-6, abs=1e-9)
    assert costs == sorted(costs, reverse=True) and costs[-1] == pytest.approx(0.0, abs=1e-9)


def test_vac_row_weights_follow_the_fisher():
    # With one output row carrying most of the gradient, vac keeps that row better than plain whitening.
    W, X, stats = correlated_stats()
    stats.fisher_rows[0] *= 1e4
    rank = 4
    for method, exponent in (("whiten", 0.0), ("vac", 0.5)):
        up, down = decompose(W, method, stats, exponent).factors(rank, torch.float64)
        err = torch.linalg.norm(((W - up @ down) @ X.T)[0]).item()
        if method == "whiten":
            whiten_err = err
        else:
            assert err < 0.5 * whiten_err


@pytest.mark.parametrize("rank", [3, 8, 20])
def test_refit_never_raises_the_calibration_reconstruction_loss(rank):
    # Same inputs on both sides: the whitened truncation is already (nearly) optimal and the update keeps it.
    W, X, stats = correlated_stats()
    up, down = decompose(W, "whiten", stats).factors(rank, torch.float64)
    new_up = refit_up(W, down, stats)
    before = torch.linalg.norm((W - up @ down) @ X.T)
    after = torch.linalg.norm((W - new_up @ down) @ X.T)
    assert after <= before * (1 + 1e-9)


def test_refit_absorbs_the_error_in_its_inputs():
    # The layer now sees X_hat (earlier layers compressed); the update targets the dense outputs W X.
    W, X, _ = correlated_stats(seed=3)
    g = torch.Generator().manual_seed(4)
    X_hat = X + 0.3 * X @ torch.randn(X.shape[1], X.shape[1], generator=g, dtype=torch.float64) / X.shape[1] ** 0.5
    stats = LinearStats(tokens=len(X), xtx=X_hat.T @ X_hat, cross=X.T @ X_hat)
    up, down = decompose(W, "whiten", stats).factors(8, torch.float64)
    new_up = refit_up(W, down, stats)
    loss = lambda u: torch.linalg.norm(X @ W.T - X_hat @ (u @ down).T)  # noqa: E731
    assert loss(new_up) < 0.9 * loss(up)
    for _ in range(5):  # and it is the least-squares optimum for this `down`
        assert loss(new_up + 1e-3 * torch.randn(up.shape, generator=g, dtype=torch.float64)) >= loss(new_up)
