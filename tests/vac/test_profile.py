"""Profiling from cached layer inputs gives the statistics that profiling the whole model per layer gave.

`reference_profile_layer` is the previous implementation (one full forward, and for the Fisher one full
backward pass, through the model per decoder layer), kept here only as the reference.
"""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import scu.vac.compress as compress_mod
from scu import ScuError
from scu.vac.compress import CompressSpec, compress, factorize_layer, layer_order
from scu.vac.factorize import LinearStats
from scu.vac.profile import (
    LayerInputs, decoder_layers, embed, fisher_statistics, layer_linears, layer_statistics,
)


def reference_profile_layer(model, index, batches, activations=True, fisher=True):
    """The old per-layer profiling: the whole model runs (forward, and backward for the Fisher) for one layer."""
    linears = layer_linears(model, index)
    stats = {name: LinearStats() for name in linears}
    hooks = []
    if activations:
        for name, lin in linears.items():
            hooks.append(lin.register_forward_pre_hook(
                lambda m, args, s=stats[name]: s.add(args[0].detach().reshape(-1, args[0].shape[-1]).double())))
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        if fisher:
            weights = [lin.weight for lin in linears.values()]
            for w in weights:
                w.requires_grad_(True)
            full = [torch.zeros(w.shape, dtype=torch.float64) for w in weights]
            tokens = 0
            for seq in batches:
                ids = seq[None]
                logits = model(input_ids=ids).logits[0, :-1].float()
                loss = nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                for f, g in zip(full, torch.autograd.grad(loss, weights)):
                    f += g.double() ** 2
                tokens += ids.shape[1] - 1
            for s, f in zip(stats.values(), full):
                s.fisher_rows, s.fisher_cols = f.sum(1) / tokens, f.sum(0) / tokens
        elif activations:
            with torch.no_grad():
                for seq in batches:
                    model(input_ids=seq[None])
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return stats


def reference_factorize(model, batches, ranks, spec):
    """The old sequential factorization: every layer profiled on the whole partly compressed model."""
    seen = {}
    for i in layer_order(len(decoder_layers(model)), spec.order):
        stats = reference_profile_layer(model, i, batches, activations=spec.method in compress_mod.NEEDS_ACTIVATIONS,
                                        fisher=spec.method in compress_mod.NEEDS_FISHER)
        seen.update(stats)
        factorize_layer(model, i, ranks, stats, spec)
    return seen


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=5, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def batches():
    return torch.randint(0, 96, (11, 24), generator=torch.Generator().manual_seed(1))  # 11: batches of 8 and 3


def assert_same(new: LinearStats, ref: LinearStats, fields=("xtx", "abs_sum", "fisher_rows", "fisher_cols")):
    assert new.tokens == ref.tokens
    for f in fields:
        a, b = getattr(new, f), getattr(ref, f)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max()), f


def test_cached_inputs_are_the_models_hidden_states(batches):
    model = tiny_llama()
    inputs = LayerInputs(decoder_layers(model), *embed(model, batches))
    with torch.no_grad():
        hidden = model(input_ids=batches, output_hidden_states=True).hidden_states
    for i in (4, 2, 0, 3):
        assert torch.allclose(torch.cat(inputs.get(i)), hidden[i], atol=1e-5)


def test_dense_statistics_match_per_layer_profiling(batches):
    model = tiny_llama()
    fisher = fisher_statistics(model, batches)
    layers = decoder_layers(model)
    inputs = LayerInputs(layers, *embed(model, batches))
    for i in range(len(layers)):
        stats, _ = layer_statistics(layers[i], layer_linears(model, i), inputs.get(i), inputs.kwargs)
        ref = reference_profile_layer(model, i, batches)
        assert set(stats) == set(ref)
        for name in ref:
            stats[name].fisher_rows, stats[name].fisher_cols = fisher[name].fisher_rows, fisher[name].fisher_cols
            assert_same(stats[name], ref[name])
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_vac_plans_with_the_statistics_of_per_layer_profiling(batches, monkeypatch):
    seen = []
    costs = compress_mod.truncation_costs

    def spy(decomp, stats, ranks):
        seen.append(stats)
        return costs(decomp, stats, ranks)

    monkeypatch.setattr(compress_mod, "truncation_costs", spy)
    model = tiny_llama()
    ref = {}
    for i in range(len(decoder_layers(model))):
        ref.update(reference_profile_layer(model, i, batches))
    compress_mod.plan_ranks(model, batches, CompressSpec("vac", 1.8))
    # plan_ranks visits the layers and their linears in model order, as the reference does
    assert len(seen) == len(ref)
    for r, s in zip(ref.values(), seen):
        assert_same(s, r)


@pytest.mark.parametrize("order", ["front", "back", "middle-out"])
@pytest.mark.parametrize("method", ["whiten", "asvd"])
def test_sequential_factorization_sees_the_per_layer_statistics(batches, monkeypatch, order, method):
    seen = {}
    real = compress_mod.factorize_layer

    def spy(model, index, ranks, stats, spec):
        seen.update(stats)
        return real(model, index, ranks, stats, spec)

    monkeypatch.setattr(compress_mod, "factorize_layer", spy)
    new, old = tiny_llama(), tiny_llama()
    spec = CompressSpec(method, 1.8, order=order, refit=False)  # the old path had no refit
    result = compress(new, batches, spec)
    ref = reference_factorize(old, batches, result.ranks, spec)
    assert set(seen) == set(ref)
    for name in ref:
        assert_same(seen[name], ref[name], ("xtx", "abs_sum"))
    with torch.no_grad():
        assert torch.allclose(new(input_ids=batches).logits, old(input_ids=batches).logits, atol=1e-4)


@pytest.mark.parametrize("order", ["front", "back", "middle-out"])
def test_refit_sees_the_dense_models_inputs_in_every_order(batches, monkeypatch, order):
    # The dense stream carried along for whiten's refit holds the dense model's hidden states,
    # although the layers below have been compressed by then.
    with torch.no_grad():
        dense_hidden = tiny_llama()(input_ids=batches, output_hidden_states=True).hidden_states
    real = compress_mod.layer_statistics
    checked = []

    def spy(layer, linears, inputs, kwargs, dense_inputs=None):
        index = next(i for i, l in enumerate(decoder_layers(model)) if l is layer)
        assert torch.allclose(torch.cat(dense_inputs), dense_hidden[index], atol=1e-5)
        stats, outputs = real(layer, linears, inputs, kwargs, dense_inputs)
        if checked == []:  # the first layer compressed has the dense model's inputs on both sides
            assert all(torch.allclose(s.cross, s.xtx, rtol=1e-6) for s in stats.values())
        checked.append(index)
        return stats, outputs

    monkeypatch.setattr(compress_mod, "layer_statistics", spy)
    model = tiny_llama()
    compress(model, batches, CompressSpec("whiten", 1.8, order=order, refit=True))
    assert checked == layer_order(5, order)


@pytest.mark.parametrize("method", ["fwsvd", "vac"])
def test_dense_fisher_in_place_of_the_sequential_one_changes_little(fresh, calib, method):
    # The Fisher is now measured once on the dense model instead of per layer on the partly compressed
    # model. On the pre-trained tiny base at 1.8x the calibration NLL of the result moves by well under 1%.
    new, old = fresh(), fresh()
    spec = CompressSpec(method, 1.8)
    result = compress(new, calib, spec)
    ref = reference_factorize(old, calib, result.ranks, spec)
    q0 = "model.layers.0.self_attn.q_proj"  # the first layer sees the dense model either way
    f0 = compress_mod.fisher_statistics(fresh(), calib)[q0]
    assert torch.allclose(f0.fisher_rows, ref[q0].fisher_rows, rtol=1e-4)
    with torch.no_grad():
        nll = {k: m(input_ids=calib, labels=calib).loss.item() for k, m in (("dense", fresh()), ("new", new), ("old", old))}
    print(method, nll)
    assert abs(nll["new"] - nll["old"]) < 0.01 * nll["old"]
    assert abs(nll["new"] - nll["old"]) < 0.5 * abs(nll["old"] - nll["dense"]) + 1e-3


def test_layers_with_different_masks_are_refused(batches):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ScuError, match="layer types"):
        embed(Qwen2ForCausalLM(config).eval(), batches)
