"""The penalty measures "the learned change" for PEFT's variants: rsLoRA, PiSSA/OLoRA, DoRA, modules_to_save.

The reference for the LoRA part is PEFT's own `get_delta_weight` (scaling included), materialized."""

from __future__ import annotations

import pytest
import torch
from hf_common import lora_modules, tiny_peft

from scu.torch.regularizer import LoraPenalty

SIGMA, N = 0.01, 1000


def delta_weights(model) -> list[torch.Tensor]:
    return [m.get_delta_weight("default").detach().clone() for _, m in lora_modules(model)]


def perturb_lora(model, seed=3, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            for w in (m.lora_A["default"].weight, m.lora_B["default"].weight):
                w.add_(torch.randn(w.shape, generator=g) * scale)


def materialized_change(model, before) -> float:
    return sum((now - was).pow(2).sum().item() for now, was in zip(delta_weights(model), before))


def test_rslora_scaling_is_peft_alpha_over_sqrt_r():
    model = tiny_peft(use_rslora=True, r=4, lora_alpha=8)
    penalty = LoraPenalty(model, "delta", SIGMA, N)
    assert {p.scale for p in penalty.pairs} == {8 / 4**0.5}  # not alpha / r = 2
    before = delta_weights(model)
    perturb_lora(model)
    assert penalty.sq_norm().item() == pytest.approx(materialized_change(model, before), rel=1e-4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_nonzero_inits_measure_change_from_the_initial_delta(init):
    model = tiny_peft(init_lora_weights=init)
    assert all(m.lora_B["default"].weight.abs().max() > 0 for _, m in lora_modules(model))  # B0 A0 != 0
    delta, factors = LoraPenalty(model, "delta", SIGMA, N), LoraPenalty(model, "factors", SIGMA, N)
    assert delta.sq_norm().item() == pytest.approx(0.0, abs=1e-10)
    assert factors.sq_norm().item() == 0.0
    before = delta_weights(model)
    factors0 = [(m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
                for _, m in lora_modules(model)]
    perturb_lora(model)
    assert delta.sq_norm().item() == pytest.approx(materialized_change(model, before), rel=1e-4)
    expected = sum((m.lora_A["default"].weight - A0).pow(2).sum().item() + (m.lora_B["default"].weight - B0).pow(2).sum().item()
                   for (_, m), (A0, B0) in zip(lora_modules(model), factors0))
    assert factors.sq_norm().item() == pytest.approx(expected, rel=1e-5)


def test_dora_magnitude_is_penalized_relative_to_its_initial_row_norms():
    model = tiny_peft(use_dora=True)
    penalty = LoraPenalty(model, "delta", SIGMA, N)
    mags = [m.lora_magnitude_vector["default"].weight for _, m in lora_modules(model)]
    base_rows = [m.get_base_layer().weight.norm(dim=1) for _, m in lora_modules(model)]
    for m, rows in zip(mags, base_rows):  # PEFT starts the magnitude at the weight-row norms, far from 0
        torch.testing.assert_close(m.detach(), rows.detach())
    assert penalty.sq_norm().item() == 0.0  # a prior toward 0 would give sum(m^2) here
    g = torch.Generator().manual_seed(4)
    shifts = [torch.randn(m.shape, generator=g) * 0.01 for m in mags]
    with torch.no_grad():
        for m, d in zip(mags, shifts):
            m.add_(d)
    sq = penalty.sq_norm()
    assert sq.item() == pytest.approx(sum(d.pow(2).sum().item() for d in shifts), rel=1e-4)
    sq.backward()
    for m, d in zip(mags, shifts):  # the gradient pulls m back toward m0, not toward 0
        torch.testing.assert_close(m.grad, 2 * d, rtol=1e-4, atol=1e-8)


def test_dora_magnitude_adds_to_the_lora_delta():
    model = tiny_peft(use_dora=True)
    penalty = LoraPenalty(model, "delta", SIGMA, N)
    before = delta_weights(model)
    perturb_lora(model)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_magnitude_vector["default"].weight.add_(0.01)
    rows = sum(m.lora_magnitude_vector["default"].weight.numel() for _, m in lora_modules(model))
    assert penalty.sq_norm().item() == pytest.approx(materialized_change(model, before) + rows * 1e-4, rel=1e-4)


def test_modules_to_save_are_penalized_relative_to_the_frozen_original():
    model = tiny_peft(modules_to_save=["lm_head"])
    penalty = LoraPenalty(model, "delta", SIGMA, N)
    wrapper = model.base_model.model.lm_head
    trained, original = wrapper.modules_to_save["default"].weight, wrapper.original_module.weight
    assert trained.requires_grad and not original.requires_grad
    assert penalty.sq_norm().item() == 0.0
    g = torch.Generator().manual_seed(5)
    d = torch.randn(trained.shape, generator=g) * 0.01
    with torch.no_grad():
        trained.add_(d)
    sq = penalty.sq_norm()
    assert sq.item() == pytest.approx(d.pow(2).sum().item(), rel=1e-4)
    sq.backward()
    torch.testing.assert_close(trained.grad, 2 * d, rtol=1e-4, atol=1e-8)


def test_saved_initial_values_survive_a_rebuild_on_trained_weights():
    """Resume builds the penalty on an already-trained model; the saved initial values must win."""
    model = tiny_peft(init_lora_weights="pissa", use_dora=True)
    penalty = LoraPenalty(model, "delta", SIGMA, N)
    saved = penalty.init_state()
    perturb_lora(model)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_magnitude_vector["default"].weight.add_(0.01)
    trained_value = penalty.sq_norm().item()
    rebuilt = LoraPenalty(model, "delta", SIGMA, N)
    assert rebuilt.sq_norm().item() == pytest.approx(0.0, abs=1e-10)  # snapshots of trained weights: wrong
    rebuilt.load_init_state(saved)
    assert rebuilt.sq_norm().item() == pytest.approx(trained_value, rel=1e-6)
