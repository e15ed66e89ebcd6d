"""Low-rank factorizations of one weight matrix, and the predicted loss of truncating them.

Every method returns a `Decomposition` (A, B) with W ~= A[:, :r] @ B[:r] the method's best rank-r
approximation for every r at once, so one SVD serves every candidate rank. The methods differ
only in the metric the truncation is optimal in:

- svd:    ||W - W_r||_F (plain weights).
- fwsvd:  ||diag(a) (W - W_r) diag(b)||_F, with a, b the row/column sums of the diagonal Fisher
          raised to an exponent (FWSVD; default 1/3, the cube root).
- asvd:   ||(W - W_r) diag(s)||_F, with s the mean |activation| of each input channel to the power 0.5 (ASVD).
- whiten: ||(W - W_r) X||_F over the calibration activations X, via the Cholesky factor of X^T X
          (SVD-LLM). Computed in float64 with jitter. compress.py then updates the up factor in closed form
          (`refit_up`: least squares toward the dense model's outputs) with `--refit`.
- vac:    whitening with the output rows weighted by their Fisher mass to the exponent:
          ||diag(g)^exponent (W - W_r) X||_F, g the mean squared output gradient of each row.

The singular values are split evenly between A and B (sqrt on each side), which keeps both
factors at a similar scale for int8 storage and for recovery training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scu import ScuError
from scu.vac.choices import METHODS

ASVD_ALPHA = 0.5
JITTER = 1e-6  # relative to the mean diagonal of X^T X / N; raised tenfold until Cholesky succeeds


@dataclass
class LinearStats:
    """Calibration statistics of one linear layer (sums over `tokens` calibration tokens)."""

    tokens: int = 0
    xtx: torch.Tensor | None = None  # in x in, float64: sum of x x^T
    abs_sum: torch.Tensor | None = None  # in, float64: sum of |x|
    cross: torch.Tensor | None = None  # in x in, float64: sum of x_dense x^T, x_dense the dense model's input for the same token
    fisher_rows: torch.Tensor | None = None  # out, float64: row sums of the diagonal Fisher (mean squared per-token gradient)
    fisher_cols: torch.Tensor | None = None  # in, float64: its column sums

    def add(self, x: torch.Tensor, dense_x: torch.Tensor | None = None) -> None:
        """Accumulate a [tokens, in] float64 block of inputs (and the dense model's inputs for the same tokens)."""
        if self.xtx is None:
            self.xtx = x.new_zeros(x.shape[1], x.shape[1])
            self.abs_sum = x.new_zeros(x.shape[1])
        self.xtx += x.T @ x
        self.abs_sum += x.abs().sum(0)
        self.tokens += x.shape[0]
        if dense_x is not None:
            self.cross = dense_x.T @ x if self.cross is None else self.cross + dense_x.T @ x

    def second_moment(self) -> torch.Tensor:
        return self.xtx / max(self.tokens, 1)

    def output_fisher(self) -> torch.Tensor:
        """Mean squared gradient of each output channel: diagonal Fisher row sums over E[x_j^2]."""
        return self.fisher_rows / self.second_moment().diagonal().sum().clamp_min(1e-30)


@dataclass
class Decomposition:
    """W ~= A[:, :r] @ B[:r] for any r <= A.shape[1] (float64)."""

    A: torch.Tensor
    B: torch.Tensor

    def factors(self, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A[:, :rank].to(dtype).contiguous(), self.B[:rank].to(dtype).contiguous()


def cholesky_factor(second_moment: torch.Tensor) -> torch.Tensor:
    """Lower-triangular L with L L^T = C + jitter * I, for a positive semi-definite C (float64)."""
    c = second_moment.double()
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    base = c.diagonal().mean().clamp_min(1e-30)
    jitter = JITTER
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(c + jitter * base * eye)
        if int(info) == 0:
            return L
        jitter *= 10
    raise ScuError("activation second moments are not positive definite even with jitter; use more calibration data")


def _scaled_svd(M: torch.Tensor, left: torch.Tensor | None, right_inv) -> Decomposition:
    """SVD of the scaled matrix M = diag(left) W R, mapped back: A = diag(1/left) U sqrt(S), B = sqrt(S) V^T R^-1."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    root = S.sqrt()
    A = U * root
    B = root[:, None] * Vh
    if left is not None:
        A = A / left[:, None]
    return Decomposition(A, right_inv(B))


def _normalized(weights: torch.Tensor, exponent: float) -> torch.Tensor:
    w = weights.clamp_min(0) ** exponent
    w = w / w.mean().clamp_min(1e-30)
    return w.clamp_min(1e-6)


def decompose(W: torch.Tensor, method: str, stats: LinearStats | None = None, fisher_exponent: float = 1 / 3) -> Decomposition:
    """The full (rank min(out, in)) decomposition of W under `method` (see the module docstring)."""
    W = W.detach().double()
    if method == "svd":
        return _scaled_svd(W, None, lambda B: B)
    if stats is None:
        raise ValueError(f"method {method!r} needs calibration statistics")
    if method == "fwsvd":
        a = _normalized(stats.fisher_rows, fisher_exponent)
        b = _normalized(stats.fisher_cols, fisher_exponent)
        return _scaled_svd(a[:, None] * W * b, a, lambda B: B / b)
    if method == "asvd":
        s = _normalized(stats.abs_sum / max(stats.tokens, 1), ASVD_ALPHA)
        return _scaled_svd(W * s, None, lambda B: B / s)
    if method in ("whiten", "vac"):
        L = cholesky_factor(stats.second_moment())
        left = _normalized(stats.output_fisher(), fisher_exponent) if method == "vac" else None
        M = (left[:, None] * W if left is not None else W) @ L
        # B L^-1 = solve(L^T, B^T)^T; L is lower triangular
        return _scaled_svd(M, left, lambda B: torch.linalg.solve_triangular(L, B, upper=False, left=False))
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def refit_up(W: torch.Tensor, down: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    """The `up` factor minimizing ||W X_dense - up down X||_F over the calibration tokens, `down` fixed (float64).

    The closed-form least-squares update after a whitened truncation. X are the layer's inputs in the
    model as it is, X_dense the dense model's inputs for the same tokens (`stats.cross`), so `up` also
    absorbs the error the layers compressed before it left in X; without `cross`, X_dense = X and the
    update only gives back what the Cholesky jitter cost. Normal equations, an r x r system:
    up (down C down^T) = W cross down^T, C = X^T X.
    """
    W, B = W.detach().double(), down.double()
    cross = stats.xtx if stats.cross is None else stats.cross
    n = max(stats.tokens, 1)
    L = cholesky_factor(B @ stats.xtx @ B.T / n)
    return torch.cholesky_solve((W @ cross @ B.T / n).T, L).T


def truncation_costs(decomp: Decomposition, stats: LinearStats, ranks: list[int]) -> list[float]:
    """Predicted loss increase of keeping each rank in `ranks`, from the layer's Fisher information.

    The Fisher of the weights is approximated by diag(g) (x) E[x x^T] (g: mean squared output gradient
    of each row, from the diagonal Fisher; E[x x^T]: the activation second moment), the Kronecker
    form whose diagonal is the independence approximation of the diagonal Fisher. The second-order
    loss increase of an error E is then 0.5 * tr(diag(g) E C E^T). With E = A_t B_t (the truncated
    tail of the decomposition), that is 0.5 * sum((A_t^T G A_t) * (B_t C B_t^T)), so every candidate
    rank is a suffix sum of one k x k matrix.
    """
    g = stats.output_fisher()
    C = stats.second_moment()
    H = ((decomp.A.T * g) @ decomp.A) * (decomp.B @ C @ decomp.B.T)
    tail = H.flip(0).flip(1).cumsum(0).cumsum(1).flip(0).flip(1).diagonal()  # tail[r] = H[r:, r:].sum()
    tail = torch.cat([tail, tail.new_zeros(1)])
    return [0.5 * float(tail[min(r, len(tail) - 1)]) for r in ranks]
