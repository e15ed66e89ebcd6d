"""The MLX training step: the penalty really enters the gradient, and lambda never retraces the compiled step."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from scu.core.bits import LN2
from scu.mlx.penalty import LoraPenalty
from scu.mlx.step import TrainStep, attention_within_documents, objective


def every_target(batch: mx.array) -> mx.array:
    """The loss mask of plain packed text: every token a target (the first of a row never counts)."""
    return mx.ones(batch.shape, dtype=mx.bool_)


def one_document(batch: mx.array) -> mx.array:
    """The positions of blocks that each hold one document."""
    return mx.broadcast_to(mx.arange(batch.shape[1]), batch.shape)


def step_on(step: TrainStep, micro_batches: list[mx.array], lam: float, max_grad_norm: float):
    n_tokens = sum(b.shape[0] * (b.shape[1] - 1) for b in micro_batches)
    return step([(b, one_document(b), every_target(b)) for b in micro_batches], n_tokens, lam, max_grad_norm)


def lora_grads(model, pen, batch, lam: float, mask: mx.array | None = None) -> dict[str, np.ndarray]:
    """Uncompiled gradient of CE_mean + lam * ParamBPT * ln 2 over the LoRA parameters."""
    mask = every_target(batch) if mask is None else mask
    inv = mx.array(1.0 / float(mask[:, 1:].sum().item()))
    f = nn.value_and_grad(model, partial(objective, penalty=pen))
    _, g = f(model, batch, one_document(batch), mask, inv, mx.array(lam))
    return {k: np.array(v) for k, v in tree_flatten(g)}


def params(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


@pytest.mark.parametrize("prior", ["delta", "factors", "raw"])
def test_gradient_with_lambda_is_ce_gradient_plus_lambda_times_penalty_gradient(tiny_lora_model, prior, batch):
    model = tiny_lora_model(b_std=0.05)
    pen = LoraPenalty(model, prior, sigma=0.01, tokens_per_epoch=5000)
    lam = 0.7
    g0 = lora_grads(model, pen, batch, 0.0)
    gl = lora_grads(model, pen, batch, lam)
    _, gp = nn.value_and_grad(model, lambda m: pen.param_bpt() * LN2)(model)
    gp = {k: np.array(v) for k, v in tree_flatten(gp)}
    assert sum(float(np.abs(v).sum()) for v in gp.values()) > 0
    for k in g0:
        np.testing.assert_allclose(gl[k], g0[k] + lam * gp[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # and the penalty is not negligible next to the data gradient at this lambda, so the check has teeth
    assert max(np.abs(lam * gp[k]).max() / (np.abs(g0[k]).max() + 1e-12) for k in g0) > 0.1


@pytest.mark.parametrize("micro", [1, 2])
def test_compiled_step_applies_the_reference_gradient_and_lambda_lr_never_retrace(tiny_lora_model, micro, batch):
    model = tiny_lora_model(b_std=0.05)
    pen = LoraPenalty(model, "delta", sigma=0.01, tokens_per_epoch=5000)
    opt = optim.SGD(learning_rate=1.0)
    step = TrainStep(model, opt, pen)
    micro_batches = [batch[:1], batch[1:]] if micro == 2 else [batch]
    for lam, lr in [(0.0, 1.0), (0.5, 1.0), (3.0, 0.5), (0.01, 2.0)]:
        opt.learning_rate = lr
        before, g = params(model), lora_grads(model, pen, batch, lam)
        out = step_on(step, micro_batches, lam, max_grad_norm=1e9)
        after = params(model)
        for k in before:
            np.testing.assert_allclose(before[k] - after[k], lr * g[k], rtol=1e-3, atol=1e-7, err_msg=k)
        norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))
        assert out.grad_norm == pytest.approx(norm, rel=1e-4)
    # one trace each of `finish` and `update`, plus one of `accumulate` with two micro-batches
    assert step.traces == 1 + micro


@pytest.mark.parametrize("decoupled, micro", [(False, 1), (True, 1), (True, 2)])
def test_the_gradient_balance_and_the_decoupled_penalty_step_follow_the_pytorch_formulas(tiny_lora_model, batch,
                                                                                         decoupled, micro):
    """Two identical models take two AdamW steps, one at lambda 0.8 and one at lambda 0: the balance it reports is
    -<g_d, g_p>, ||g_p||^2 and the sensitivity of scu.torch.loop.gradient_balance, and with the decoupled step the
    two models differ by exactly -lr * lam * g_p / sqrt(v_hat + (lam * g_p / c)^2), v_hat from before the step; none
    is taken at the first step, which has no v_hat (PyTorch's AdamW has no state yet). With two micro-batches the
    accumulated gradient is the whole batch's, so the same references hold."""
    lam, lr, bound = 0.8, 0.01, 2.0
    models = [tiny_lora_model(b_std=0.05) for _ in range(2)]
    pens = [LoraPenalty(m, "delta", sigma=0.01, tokens_per_epoch=5000) for m in models]
    opts = [optim.AdamW(learning_rate=lr, weight_decay=0.0, bias_correction=True) for _ in models]
    steps = [TrainStep(m, o, p, balance=True, decoupled=decoupled, bound=bound) for m, o, p in zip(models, opts, pens)]
    micro_batches = [batch[:1], batch[1:]] if micro == 2 else [batch]
    first = [step_on(st, micro_batches, lam_i, max_grad_norm=1e9) for st, lam_i in zip(steps, (lam, 0.0))]
    assert first[0].penalty_sensitivity == 0.0
    if decoupled:  # no penalty step before AdamW's first: both models took the same step
        for k, v in params(models[0]).items():
            np.testing.assert_array_equal(v, params(models[1])[k], err_msg=k)

    model, pen, opt = models[0], pens[0], opts[0]
    before = [params(m) for m in models]
    g_total = lora_grads(model, pen, batch, 0.0 if decoupled else lam)
    g_data = lora_grads(model, pen, batch, 0.0)
    _, gp = nn.value_and_grad(model, lambda m: pen.param_bpt() * LN2)(model)
    gp = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(gp)}
    v_hat = {k.removesuffix(".v"): np.array(v, dtype=np.float64) / (1 - opt.betas[1])  # one step taken: 1 - b2^1
             for k, v in tree_flatten(opt.state) if k.endswith(".v")}
    assert set(v_hat) == set(gp)
    out = step_on(steps[0], micro_batches, lam, max_grad_norm=1e9)
    step_on(steps[1], micro_batches, 0.0, max_grad_norm=1e9)

    eps = opt.eps
    assert out.data_pull == pytest.approx(sum(-(g_data[k] * gp[k]).sum() for k in gp), rel=1e-3)
    assert out.data_pull == pytest.approx(
        (0.0 if decoupled else lam) * sum((gp[k] ** 2).sum() for k in gp) - sum((g_total[k] * gp[k]).sum() for k in gp),
        rel=1e-3)
    assert out.penalty_grad_sq == pytest.approx(sum((gp[k] ** 2).sum() for k in gp), rel=1e-4)
    if decoupled:
        scaled = sum((gp[k] ** 2 * v_hat[k] / (v_hat[k] + (lam * gp[k] / bound) ** 2) ** 1.5).sum() for k in gp)
    else:
        scaled = sum((gp[k] ** 2 / (np.sqrt(v_hat[k]) + eps)).sum() for k in gp)
    assert out.penalty_sensitivity == pytest.approx(lr * scaled, rel=1e-3)
    after = [params(m) for m in models]
    moved = {k: (after[0][k] - before[0][k]) - (after[1][k] - before[1][k]) for k in gp}
    if decoupled:
        for k in gp:
            expected = -lr * lam * gp[k] / (np.sqrt(v_hat[k] + (lam * gp[k] / bound) ** 2) + eps)
            np.testing.assert_allclose(moved[k], expected, rtol=2e-3, atol=1e-9, err_msg=k)
        assert max(np.abs(m).max() for m in moved.values()) > 1e-4  # the penalty step is not negligible
    else:  # through the loss the penalty passes AdamW's normalisation: the models differ, but not by that step
        assert max(np.abs(m).max() for m in moved.values()) > 1e-6


def test_clipping_limits_the_update_to_max_grad_norm(tiny_lora_model, batch):
    model = tiny_lora_model(b_std=0.05)
    pen = LoraPenalty(model, "delta", sigma=0.01, tokens_per_epoch=5000)
    step = TrainStep(model, optim.SGD(learning_rate=1.0), pen)
    for clip in (1e-3, 2e-3):
        before = params(model)
        out = step_on(step, [batch], 0.2, max_grad_norm=clip)
        after = params(model)
        moved = np.sqrt(sum(float(((before[k] - after[k]).astype(np.float64) ** 2).sum()) for k in before))
        assert out.grad_norm > clip
        assert moved == pytest.approx(clip, rel=1e-3)
    assert step.traces == 2


def test_a_python_float_lambda_would_be_frozen_into_the_graph(tiny_lora_model, batch):
    """Why lambda is an mx.array: a compiled function that closes over a Python float keeps its
    first value, so the controller's changes would silently do nothing."""
    model = tiny_lora_model(b_std=0.05)
    pen = LoraPenalty(model, "delta", sigma=0.01, tokens_per_epoch=5000)
    box = {"lam": 0.0}
    frozen = mx.compile(lambda: pen.loss_term(mx.array(box["lam"]))[0], inputs=[model.state])
    assert frozen().item() == 0.0
    box["lam"] = 1.0
    assert frozen().item() == 0.0  # stale: the float was baked in at trace time
    live = mx.compile(lambda lam: pen.loss_term(lam)[0], inputs=[model.state])
    assert live(mx.array(0.0)).item() == 0.0
    assert live(mx.array(1.0)).item() > 0.0


def test_a_nan_step_is_measured_but_not_applied(tiny_lora_model, batch):
    model = tiny_lora_model(b_std=0.05)
    pen = LoraPenalty(model, "delta", sigma=0.01, tokens_per_epoch=5000)
    step = TrainStep(model, optim.AdamW(learning_rate=1e-2, weight_decay=0.0), pen)
    before = params(model)
    out = step_on(step, [batch], float("nan"), max_grad_norm=1.0)
    assert not np.isfinite(out.grad_norm)
    after = params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    out = step_on(step, [batch], 0.1, max_grad_norm=1.0)  # the next finite step trains
    assert np.isfinite(out.grad_norm)
    assert any(not np.array_equal(before[k], v) for k, v in params(model).items())


def test_the_step_trains_only_on_the_targets_of_its_loss_mask(tiny_lora_model, batch):
    """Prompt tokens (mask False) leave the loss: the step's gradient is the reference gradient over the marked
    targets alone, and the CE it reports sums those targets only."""
    model = tiny_lora_model(b_std=0.05)
    pen = LoraPenalty(model, "delta", sigma=0.01, tokens_per_epoch=5000)
    mask_np = np.ones(batch.shape, dtype=bool)
    mask_np[:, : batch.shape[1] // 2] = False  # the first half of every row is "prompt"
    mask = mx.array(mask_np)
    n_targets = int(mask_np[:, 1:].sum())
    g_masked, g_all = lora_grads(model, pen, batch, 0.3, mask), lora_grads(model, pen, batch, 0.3)
    assert max(np.abs(g_masked[k] - g_all[k]).max() for k in g_all) > 1e-4  # the mask changes the gradient
    per_token = nn.losses.cross_entropy(model(batch[:, :-1]).astype(mx.float32), batch[:, 1:], reduction="none")
    marked_nats = float(mx.sum(per_token * mask[:, 1:]).item())
    step = TrainStep(model, optim.SGD(learning_rate=1.0), pen)
    before = params(model)
    out = step([(batch, one_document(batch), mask)], n_targets, 0.3, max_grad_norm=1e9)
    after = params(model)
    for k in before:
        np.testing.assert_allclose(before[k] - after[k], g_masked[k], rtol=1e-3, atol=1e-7, err_msg=k)
    assert out.data_nats == pytest.approx(marked_nats, rel=1e-5)
    assert out.tokens == n_targets


def test_a_packed_document_attends_to_itself_only(tiny_lora_model, batch):
    """With a document starting mid-block, its logits do not depend on the document before it; without the mask
    they would (the check has teeth)."""
    model = tiny_lora_model(b_std=0.05)
    ids = batch[:1]
    half = ids.shape[1] // 2
    positions = mx.array(np.concatenate([np.arange(half), np.arange(ids.shape[1] - half)])[None])
    other = mx.array(np.concatenate([(np.array(ids[0, :half]) + 1) % 97, np.array(ids[0, half:])])[None])

    def second_document(x, packed: bool):
        if not packed:
            return np.array(model(x)[0, half:])
        with attention_within_documents(model, positions):
            return np.array(model(x)[0, half:])

    np.testing.assert_allclose(second_document(ids, True), second_document(other, True), atol=1e-5)
    assert np.abs(second_document(ids, False) - second_document(other, False)).max() > 1e-3
    # and the document alone, at positions 0.., gives the same logits (RoPE depends on relative positions only)
    alone = np.array(model(ids[:, half:])[0])
    np.testing.assert_allclose(second_document(ids, True), alone, atol=1e-4)
