"""The MLX penalty: exact zero at step 0, the Gram identity against mlx-lm's own fused ΔW, the priors."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.switch_layers import SwitchLinear
from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from scu import ScuError
from scu.mlx.penalty import LoraPenalty


class ThreeKinds(nn.Module):
    """One LoRA module of each kind mlx-lm has, with non-zero B."""

    def __init__(self) -> None:
        super().__init__()
        mx.random.seed(3)
        self.lin = LoRALinear.from_base(nn.Linear(12, 7), r=3, scale=1.5)
        self.sw = LoRASwitchLinear.from_base(SwitchLinear(12, 7, 4), r=3, scale=0.7)
        self.emb = LoRAEmbedding.from_base(nn.Embedding(11, 6), r=3, scale=2.5)
        self.freeze()
        self.unfreeze(keys=["lora_a", "lora_b"])
        b = [(k, mx.random.normal(v.shape)) for k, v in tree_flatten(self.trainable_parameters()) if k.endswith("lora_b")]
        self.update(tree_unflatten(b))


def fused_delta_sq(module) -> float:
    """||ΔW||^2 from mlx-lm's own fuse(): fused weight minus base weight, in float64."""
    base = module.embedding if isinstance(module, LoRAEmbedding) else module.linear
    delta = np.array(module.fuse().weight, dtype=np.float64) - np.array(base.weight, dtype=np.float64)
    return float((delta**2).sum())


def test_delta_gram_identity_matches_fused_weights_for_every_lora_kind():
    m = ThreeKinds()
    for name in ("lin", "sw", "emb"):
        expected = fused_delta_sq(getattr(m, name))
        assert expected > 0
    pen = LoraPenalty(m, "delta", sigma=0.01, tokens_per_epoch=1000)
    expected = sum(fused_delta_sq(getattr(m, n)) for n in ("lin", "sw", "emb"))
    assert pen.sq_norm().item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("prior", ["delta", "factors"])
def test_zero_at_step_zero(tiny_lora_model, prior):
    pen = LoraPenalty(tiny_lora_model(), prior, sigma=0.01, tokens_per_epoch=1000)
    assert pen.sq_norm().item() == 0.0
    assert pen.param_bpt().item() == 0.0


def test_raw_counts_the_random_init_of_a(tiny_lora_model):
    model = tiny_lora_model()
    a = [np.array(v) for k, v in tree_flatten(model.trainable_parameters()) if k.endswith("lora_a")]
    pen = LoraPenalty(model, "raw", sigma=0.01, tokens_per_epoch=1000)
    assert pen.sq_norm().item() == pytest.approx(sum(float((x.astype(np.float64) ** 2).sum()) for x in a), rel=1e-5)


def test_factors_measures_the_change_of_a_and_b(tiny_lora_model):
    model = tiny_lora_model()
    pen = LoraPenalty(model, "factors", sigma=0.01, tokens_per_epoch=1000)
    mx.random.seed(5)
    params = dict(tree_flatten(model.trainable_parameters()))
    moved = {k: v + mx.random.normal(v.shape) * 0.1 for k, v in params.items()}
    model.update(tree_unflatten(list(moved.items())))
    expected = sum(
        float(((np.array(moved[k], np.float64) - (np.array(params[k], np.float64) if k.endswith("lora_a") else 0)) ** 2).sum())
        for k in moved
    )
    assert pen.sq_norm().item() == pytest.approx(expected, rel=1e-5)


def test_param_bpt_is_the_mdl_formula(tiny_lora_model):
    model = tiny_lora_model(b_std=0.1)
    pen = LoraPenalty(model, "delta", sigma=0.02, tokens_per_epoch=12345)
    sq = pen.sq_norm().item()
    assert pen.param_bpt().item() == pytest.approx(sq / (2 * 0.02**2 * math.log(2) * 12345), rel=1e-6)
    lam = mx.array(0.3)
    reg, bpt = pen.loss_term(lam)
    assert reg.item() == pytest.approx(0.3 * bpt.item() * math.log(2), rel=1e-6)


def test_dora_and_missing_lora_are_refused():
    from mlx_lm.models.llama import Model, ModelArgs

    args = ModelArgs(model_type="llama", hidden_size=32, num_hidden_layers=1, intermediate_size=48,
                     num_attention_heads=4, rms_norm_eps=1e-5, vocab_size=50)
    with pytest.raises(ScuError, match="no mlx-lm LoRA layers"):
        LoraPenalty(Model(args), "delta", 0.01, 100)
    dora = Model(args)
    linear_to_lora_layers(dora, 1, {"rank": 2, "scale": 1.0, "dropout": 0.0}, use_dora=True)
    with pytest.raises(ScuError, match="DoRA"):
        LoraPenalty(dora, "delta", 0.01, 100)
