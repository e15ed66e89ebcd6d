"""Compression of a tiny pre-trained Llama: ratios, the ranks actually used, orders, sequential statistics."""

import pytest
import torch

from scu.vac.allocate import Matrix, uniform_ranks
from scu.vac.compress import CompressSpec, all_linears, compress, layer_order, unique_param_count
from scu.vac.modeling_vac import FactorizedLinear


def factored(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, FactorizedLinear)}


@pytest.mark.parametrize("ratio", [1.25, 1.8])
@pytest.mark.parametrize("method", ["svd", "fwsvd", "asvd", "whiten", "vac"])
def test_every_method_hits_the_ratio_with_the_planned_ranks(fresh, calib, method, ratio):
    model = fresh()
    dense_linear = sum(m.weight.numel() for m in all_linears(model).values())
    dense_total = unique_param_count(model)
    result = compress(model, calib, CompressSpec(method=method, ratio=ratio))
    modules = factored(model)
    # The ranks in the model are the planned ones, and the ratio counted from the model itself is on target.
    assert {n: m.rank for n, m in modules.items()} == {n: r for n, r in result.ranks.items() if r is not None}
    linear_now = sum(m.rank * (m.in_features + m.out_features) for m in modules.values())
    linear_now += sum(m.weight.numel() for m in all_linears(model).values())
    assert abs(dense_linear / linear_now / ratio - 1) <= 0.01
    assert result.linear_ratio == pytest.approx(dense_linear / linear_now)
    assert result.model_ratio == pytest.approx(dense_total / unique_param_count(model))
    assert 1 < result.model_ratio < result.linear_ratio  # embeddings and norms are not compressed
    logits = model(input_ids=calib[:2]).logits
    assert torch.isfinite(logits).all()


def test_vac_allocates_unevenly_and_beats_uniform_whitening_on_calibration(fresh, calib):
    vac, whiten = fresh(), fresh()
    rv = compress(vac, calib, CompressSpec(method="vac", ratio=1.8))
    compress(whiten, calib, CompressSpec(method="whiten", ratio=1.8))
    matrices = [Matrix(n, m.out_features, m.in_features) for n, m in all_linears(fresh()).items()]
    uniform = uniform_ranks(matrices, rv.linear_params)
    assert rv.ranks != uniform
    with torch.no_grad():
        loss = {k: m(input_ids=calib, labels=calib).loss.item() for k, m in (("vac", vac), ("whiten", whiten))}
    assert loss["vac"] < loss["whiten"]


def test_layer_orders():
    assert layer_order(5, "front") == [0, 1, 2, 3, 4]
    assert layer_order(5, "back") == [4, 3, 2, 1, 0]
    assert layer_order(5, "middle-out") == [2, 1, 3, 0, 4]
    assert layer_order(4, "middle-out") == [1, 2, 0, 3]


def test_statistics_are_recomputed_on_the_partly_compressed_model(fresh, calib):
    # Front order: layer 1 is whitened with the inputs the *compressed* layer 0 produces; back order
    # compresses layer 1 first, on dense inputs. Layer 0 sees the embeddings either way.
    front, back = fresh(), fresh()
    compress(front, calib, CompressSpec(method="whiten", ratio=1.8, order="front"))
    compress(back, calib, CompressSpec(method="whiten", ratio=1.8, order="back"))
    f, b = factored(front), factored(back)
    q0, q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    assert torch.allclose(f[q0].up.weight, b[q0].up.weight, atol=1e-5)
    assert not torch.allclose(f[q1].up.weight, b[q1].up.weight, atol=1e-3)


def test_shared_dense_statistics_give_the_compression_measured_afresh(fresh, calib):
    """The search measures the dense statistics once for all candidates: no candidate's result may change."""
    from scu.vac.compress import dense_statistics

    shared = dense_statistics(fresh(), calib)
    specs = [CompressSpec(method="vac", ratio=1.6),
             CompressSpec(method="vac", ratio=1.6, order="back", fisher_exponent=0.8, component_weights={"q_proj": 1.5})]
    for spec in specs:  # the second candidate reuses what the first one read
        afresh, reused = fresh(), fresh()
        a, b = compress(afresh, calib, spec), compress(reused, calib, spec, dense=shared)
        assert a.ranks == b.ranks and a.predicted_cost == pytest.approx(b.predicted_cost, rel=1e-9)
        for (name, p), q in zip(afresh.state_dict().items(), reused.state_dict().values()):
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name
    assert specs[0].fisher_exponent != specs[1].fisher_exponent and a.ranks != compress(fresh(), calib, specs[0]).ranks
