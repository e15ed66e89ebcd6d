"""One compiled optimizer step for mlx-lm LoRA training under the SCU penalty.

lambda, the learning rate and the clipping norm enter the compiled functions as ``mx.array``
values (the learning rate through the optimizer's state), so the controller can change
them every step without a retrace. Gradient accumulation runs the first k-1 micro-batches
through `accumulate` (cross-entropy only) and the last through `finish`, which adds the
penalty once per optimizer step and clips. After the step's single host sync, `update`
applies the gradient unless the loss or its norm is NaN/inf. The gradient applied is

    d/dtheta [ sum_tokens CE_nats / n_tokens + lam * ParamBPT * ln 2 ]

i.e. token-weighted over the whole step, the same objective as the PyTorch backend. For `law: balance` the step
also measures the gradient balance, and with `penalty_step: decoupled` the penalty leaves the loss and moves the
weights in its own step before AdamW's; both as scu.torch.loop does them (gradient_balance, decoupled_penalty_step).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from scu import ScuError
from scu.core.bits import LN2
from scu.session import StepResult
from scu.mlx.penalty import LoraPenalty


def document_mask(positions: mx.array) -> mx.array:
    """[B, 1, T, T] bool: causal attention within each packed document (a document starts where its position is 0)."""
    doc = mx.cumsum((positions == 0).astype(mx.int32), axis=1)
    causal = mx.tril(mx.ones((positions.shape[1], positions.shape[1]), dtype=mx.bool_))
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


@contextmanager
def attention_within_documents(model: nn.Module, positions: mx.array) -> Iterator[None]:
    """Make `model` attend within documents only. mlx-lm models take no position ids or mask; each builds its mask
    with its module's `create_attention_mask`, which this swaps for the documents' mask while the model runs
    (and the trace is taken). RoPE scores depend on relative positions only, so within a document they equal
    those of positions restarted at 0, as the PyTorch backend's position ids give."""
    module = sys.modules[type(model).__module__]
    original = getattr(module, "create_attention_mask", None)
    if original is None:
        raise ScuError(f"{module.__name__} builds its attention mask in its own way; packed training needs "
                       "an mlx-lm model that uses create_attention_mask (Llama, Qwen2, Mistral, ...)")
    mask = document_mask(positions)
    module.create_attention_mask = lambda *args, **kwargs: mask
    try:
        yield
    finally:
        module.create_attention_mask = original


def ce_sum(model: nn.Module, batch: mx.array, positions: mx.array, loss_mask: mx.array) -> mx.array:
    """Summed next-token cross-entropy (nats) of a [B, T] block batch (scu.data.text.Blocks: ids, per-document
    positions, loss targets) over the targets `loss_mask` marks, each document attending to itself only."""
    with attention_within_documents(model, positions[:, :-1]):
        logits = model(batch[:, :-1])
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), batch[:, 1:], reduction="none")
    return mx.sum(ce * loss_mask[:, 1:])


def objective(
    model: nn.Module, batch: mx.array, positions: mx.array, loss_mask: mx.array, inv_tokens: mx.array,
    lam: mx.array, penalty: LoraPenalty | None,
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """(loss to differentiate, (CE nats summed over the batch, ParamBPT)) for the last micro-batch."""
    ce = ce_sum(model, batch, positions, loss_mask)
    if penalty is None:
        return ce * inv_tokens, (ce, mx.array(0.0))
    reg, bpt = penalty.loss_term(lam)
    return ce * inv_tokens + reg, (ce, bpt)


def clip_by_global_norm(grads: dict, max_norm: mx.array) -> tuple[dict, mx.array]:
    """Scale the gradient tree so its global L2 norm is at most `max_norm` (an array, so it can change
    without a retrace; ``optim.clip_grad_norm`` needs a Python float). Returns (clipped, norm before)."""
    norm = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for _, g in tree_flatten(grads)))
    factor = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return tree_map(lambda g: (g * factor).astype(g.dtype), grads), norm


def adam_second_moments(optimizer: optim.Adam, like: dict) -> tuple[dict, mx.array]:
    """AdamW's bias-corrected v_hat for each array of `like` (a tree of the trainable parameters' shape) from the steps
    taken so far, and whether there were any: before the first there is none (PyTorch's AdamW has no state yet)."""
    step = optimizer.state["step"].astype(mx.float32)
    started = step > 0
    correction = mx.where(started, 1.0 - optimizer.betas[1] ** step, 1.0)
    return tree_map(lambda _, state: state["v"] / correction, like, optimizer.state), started


def gradient_balance(
    total: dict, penalty_grad: dict, v_hat: dict, started: mx.array, lam: mx.array, decoupled: bool, bound: float,
    eps: float,
) -> tuple[mx.array, mx.array, mx.array]:
    """(data pull, ||g_p||^2, sensitivity / (lr * clip)) as scu.torch.loop.gradient_balance: `total` is the step's
    gradient before clipping (g_d + lam * g_p, or g_d alone when `decoupled`), g_p the penalty's own at lambda 1."""
    grads = list(zip(*([leaf for _, leaf in tree_flatten(tree)] for tree in (total, penalty_grad, v_hat))))
    sq = sum(mx.sum(g * g) for _, g, _ in grads)
    dot = sum(mx.sum(t * g) for t, g, _ in grads)
    if decoupled:
        scaled = sum(mx.sum(g * g * v / ((v + (lam * g / bound) ** 2) ** 1.5 + eps ** 3)) for _, g, v in grads)
    else:
        scaled = sum(mx.sum(g * g / (mx.sqrt(v) + eps)) for _, g, v in grads)
    return (0.0 if decoupled else lam) * sq - dot, sq, mx.where(started, scaled, 0.0)


def decoupled_penalty_update(
    params: dict, penalty_grad: dict, v_hat: dict, started: mx.array, lam: mx.array, lr: mx.array, bound: float,
    eps: float,
) -> dict:
    """theta - lr * lam * g_p / sqrt(v_hat + (lam * g_p / c)^2), as scu.torch.loop.decoupled_penalty_step; no step
    before AdamW has a v_hat."""
    def moved(p: mx.array, g: mx.array, v: mx.array) -> mx.array:
        step = lr * lam * g / (mx.sqrt(v + (lam * g / bound) ** 2) + eps)
        return (p - mx.where(started, step, 0.0)).astype(p.dtype)

    return tree_map(moved, params, penalty_grad, v_hat)


class TrainStep:
    """Compiled micro-batch accumulation and update for a model with mlx-lm LoRA layers.

    `penalty=None` trains plain LoRA and measures no ParamBPT (`scu.enabled: false`). `balance` measures the gradient
    balance (`law: balance`); `decoupled` applies the penalty as its own step, at most `bound` * lr per entry.
    A step whose loss or gradient norm is NaN/inf is measured but not applied.
    `traces` counts how many times the Python bodies were traced by ``mx.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Adam,
        penalty: LoraPenalty | None,
        balance: bool = False,
        decoupled: bool = False,
        bound: float = 1.0,
    ) -> None:
        if (balance or decoupled) and penalty is None:
            raise ScuError("the gradient balance and the decoupled penalty step need the SCU penalty (scu.enabled)")
        self.measures = penalty is not None
        self.decoupled = decoupled
        self.traces = 0
        optimizer.init(model.trainable_parameters())  # a lazily created state would change shape: a retrace
        state = [model.state, optimizer.state, mx.random.state]
        ce_grad = nn.value_and_grad(model, ce_sum)
        obj_grad = nn.value_and_grad(model, partial(objective, penalty=penalty))
        # the decoupled step needs g_p, and measures the balance with it
        pen_grad = nn.value_and_grad(model, lambda: penalty.param_bpt() * LN2) if balance or decoupled else None

        def accumulate(batch, positions, loss_mask, acc):
            self.traces += 1
            ce, grads = ce_grad(model, batch, positions, loss_mask)
            if acc is not None:
                grads = tree_map(mx.add, grads, acc[1])
                ce = ce + acc[0]
            return ce, grads

        def finish(batch, positions, loss_mask, acc, inv_tokens, lam, max_norm):
            self.traces += 1
            in_loss = mx.zeros_like(lam) if decoupled else lam
            (_, (ce, bpt)), grads = obj_grad(model, batch, positions, loss_mask, inv_tokens, in_loss)
            if acc is not None:
                grads = tree_map(lambda g, a: g + a * inv_tokens, grads, acc[1])
                ce = ce + acc[0]
            if pen_grad is None:
                grads, norm = clip_by_global_norm(grads, max_norm)
                return mx.stack([ce, bpt, norm]), grads
            _, g_p = pen_grad()
            v_hat, started = adam_second_moments(optimizer, grads)
            pull, sq, scaled = gradient_balance(grads, g_p, v_hat, started, lam, decoupled, bound, optimizer.eps)
            grads, norm = clip_by_global_norm(grads, max_norm)
            # the penalty's share of a clipped step shrinks with it (decoupled: the penalty is not clipped)
            clip = 1.0 if decoupled else mx.minimum(max_norm / (norm + 1e-6), 1.0)
            measured = mx.stack([ce, bpt, norm, pull, sq, optimizer.learning_rate * clip * scaled])
            return (measured, grads, (g_p, v_hat, started)) if decoupled else (measured, grads)

        def update(grads, *decoupled_penalty):
            self.traces += 1
            if decoupled_penalty:  # with v_hat from before AdamW's step, as its sensitivity was read
                (g_p, v_hat, started), lam = decoupled_penalty
                model.update(decoupled_penalty_update(model.trainable_parameters(), g_p, v_hat, started, lam,
                                                      optimizer.learning_rate, bound, optimizer.eps))
            optimizer.update(model, grads)

        self._accumulate = mx.compile(accumulate, inputs=state, outputs=state)
        self._finish = mx.compile(finish, inputs=state, outputs=state)
        self._update = mx.compile(update, inputs=state, outputs=state)

    def __call__(
        self, micro_batches: list[tuple[mx.array, mx.array, mx.array]], n_tokens: int, lam: float, max_grad_norm: float
    ) -> StepResult:
        """One optimizer step over `micro_batches` ((ids, positions, loss_mask), [B, T] each, `n_tokens` loss targets
        in all) at this lambda and clip norm."""
        acc = None
        for ids, positions, mask in micro_batches[:-1]:
            acc = self._accumulate(ids, positions, mask, acc)
        inv = mx.array(1.0 / max(n_tokens, 1), dtype=mx.float32)
        ids, positions, mask = micro_batches[-1]
        lam_arr = mx.array(lam, dtype=mx.float32)
        measured, grads, *penalty_step = self._finish(
            ids, positions, mask, acc, inv, lam_arr, mx.array(max_grad_norm, dtype=mx.float32)
        )
        data_nats, bpt, norm, *balance = measured.tolist()  # the step's single host sync
        if math.isfinite(data_nats) and math.isfinite(norm):
            self._update(grads, *((penalty_step[0], lam_arr) if self.decoupled else ()))
        return StepResult(data_nats, bpt if self.measures else None, norm, n_tokens, *balance)
