"""MDL bits accounting shared by every backend.

DataBPT is the training cross-entropy in bits per token. ParamBPT is the description
length of the learned change under a Gaussian prior N(0, sigma^2), spread over the
tokens of one epoch. S = ParamBPT / (DataBPT + ParamBPT) is the controlled quantity.

The functions work on Python floats and on framework tensors alike (plain arithmetic).
"""

from __future__ import annotations

import math

from scu import ScuError

LN2 = math.log(2.0)


def nats_to_bits(nats):
    """Convert nats (per token) to bits (per token)."""
    return nats / LN2


def param_bits(sq_norm, sigma: float):
    """Bits to encode a change with squared norm `sq_norm` under N(0, sigma^2): ||d||^2 / (2 sigma^2 ln 2)."""
    return sq_norm / (2.0 * sigma * sigma * LN2)


def param_bpt(sq_norm, sigma: float, tokens_per_epoch: int):
    """ParamBits divided by the number of training tokens per epoch."""
    return param_bits(sq_norm, sigma) / tokens_per_epoch


def weight_scale_sigma(sq_sum: float, count: int) -> float:
    """The `prior_sigma: auto` scale: the RMS of the base weights the adapters change.

    A change as large as the weights themselves is a priori plausible and much larger is not; the
    scale follows the model (0.08 on the tiny harness base, 0.19 on SmolLM2-135M), so the same
    setting means the same thing on both (docs/method.md).
    """
    if count <= 0:
        raise ValueError("no base weights to take the prior scale from")
    return math.sqrt(sq_sum / count)


def fit_scale_sigma(sq_norm: float, dof: int) -> float:
    """The `prior_sigma: fit` scale: the plain fit's change ||dW||^2 spread over the adapter's `dof` trainable entries.

    Empirical Bayes by the method of moments: if each of the adapter's degrees of freedom were drawn from N(0, sigma^2),
    the unregularized fit's squared change would be about dof * sigma^2. A rank-r adapter of an out x in matrix has
    r * (in + out) of them, not in * out, which is what makes the scale transfer between models (docs/method.md).
    """
    if dof <= 0 or not sq_norm > 0:
        raise ValueError(f"need a non-zero plain change and dof > 0 (got ||dW||^2 = {sq_norm}, dof = {dof})")
    return math.sqrt(sq_norm / dof)


def prior_scale(sigma: float | str, weight_rms) -> float:
    """The numeric prior scale of a penalty: a number as given, `auto` from `weight_rms()` (called only then).

    `fit` and `linesearch` must have been resolved to a number by `scu train` (scu.torch.prior_fit, prior_linesearch)."""
    if sigma == "linesearch":
        raise ScuError("scu.prior_sigma: linesearch is measured by `scu train` (PyTorch) before its first step; set "
                       "scu.prior_sigma to the number such a run writes to its config.yaml")
    if sigma == "fit":
        raise ScuError("scu.prior_sigma: fit (what target_s: auto uses) needs a plain fit first, which only `scu train` "
                       "(PyTorch) runs; set scu.prior_sigma to the number such a run writes to its config.yaml, or to auto "
                       "(the base weights' RMS)")
    return weight_rms() if sigma == "auto" else float(sigma)


def info_ratio(data_bpt: float, param_bpt_value: float) -> float:
    """S = ParamBPT / (DataBPT + ParamBPT); 0 when both are 0."""
    total = data_bpt + param_bpt_value
    return param_bpt_value / total if total > 0 else 0.0
