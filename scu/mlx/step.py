"""One compiled optimizer step for mlx-lm LoRA training under the SCU penalty.

lambda, the learning rate and the clipping norm enter the compiled functions as ``mx.array``
values (the learning rate through the optimizer's state), so the controller can change
them every step without a retrace. Gradient accumulation runs the first k-1 micro-batches
through `accumulate` (cross-entropy only) and the last through `finish`, which adds the
penalty once per optimizer step and clips. After the step's single host sync, `update`
applies the gradient unless the loss or its norm is NaN/inf. The gradient applied is

    d/dtheta [ sum_tokens CE_nats / n_tokens + lam * ParamBPT * ln 2 ]

i.e. token-weighted over the whole step, the same objective as the PyTorch backend.
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


class TrainStep:
    """Compiled micro-batch accumulation and update for a model with mlx-lm LoRA layers.

    `penalty=None` trains plain LoRA and measures no ParamBPT (`scu.enabled: false`).
    A step whose loss or gradient norm is NaN/inf is measured but not applied.
    `traces` counts how many times the Python bodies were traced by ``mx.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        penalty: LoraPenalty | None,
    ) -> None:
        self.measures = penalty is not None
        self.traces = 0
        optimizer.init(model.trainable_parameters())  # a lazily created state would change shape: a retrace
        state = [model.state, optimizer.state, mx.random.state]
        ce_grad = nn.value_and_grad(model, ce_sum)
        obj_grad = nn.value_and_grad(model, partial(objective, penalty=penalty))

        def accumulate(batch, positions, loss_mask, acc):
            self.traces += 1
            ce, grads = ce_grad(model, batch, positions, loss_mask)
            if acc is not None:
                grads = tree_map(mx.add, grads, acc[1])
                ce = ce + acc[0]
            return ce, grads

        def finish(batch, positions, loss_mask, acc, inv_tokens, lam, max_norm):
            self.traces += 1
            (_, (ce, bpt)), grads = obj_grad(model, batch, positions, loss_mask, inv_tokens, lam)
            if acc is not None:
                grads = tree_map(lambda g, a: g + a * inv_tokens, grads, acc[1])
                ce = ce + acc[0]
            grads, norm = clip_by_global_norm(grads, max_norm)
            return mx.stack([ce, bpt, norm]), grads

        def update(grads):
            self.traces += 1
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
        measured, grads = self._finish(
            ids, positions, mask, acc, inv, mx.array(lam, dtype=mx.float32), mx.array(max_grad_norm, dtype=mx.float32)
        )
        data_nats, bpt, norm = measured.tolist()  # the step's single host sync
        if math.isfinite(data_nats) and math.isfinite(norm):
            self._update(grads)
        return StepResult(data_nats, bpt if self.measures else None, norm, n_tokens)
