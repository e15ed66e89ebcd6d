"""Tiny mlx-lm models built from ModelArgs (no files), for the MLX backend tests."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.tuner.utils import linear_to_lora_layers

VOCAB = 97


def _tiny_lora_model(rank: int = 4, scale: float = 2.0, keys: list[str] | None = None, seed: int = 0, b_std: float = 0.0):
    """A 2-block Llama with LoRA on `keys` (default: every linear layer); B ~ N(0, b_std^2) if b_std > 0."""
    mx.random.seed(seed)
    args = ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=48,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB,
    )
    model = Model(args)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": rank, "scale": scale, "dropout": 0.0, "keys": keys})
    if b_std > 0:
        b = [(k, mx.random.normal(v.shape) * b_std) for k, v in tree_flatten(model.trainable_parameters()) if k.endswith("lora_b")]
        model.update(tree_unflatten(b))
    mx.eval(model.parameters())
    return model


@pytest.fixture
def tiny_lora_model():
    """Factory for a 2-block Llama built from ModelArgs with mlx-lm LoRA layers (see `_tiny_lora_model`)."""
    return _tiny_lora_model


@pytest.fixture
def batch() -> mx.array:
    mx.random.seed(1)
    return mx.random.randint(0, VOCAB, (2, 17))


@pytest.fixture
def mlx_cfg(tiny_base, pydoc_txt):
    """A small valid MLX training config on the tiny HF-format base; dotted overrides, e.g. scu__target_s=0.1."""
    from scu.config.schema import build_config

    def make(**overrides):
        data = {
            "model": {"base_model": str(tiny_base), "backend": "mlx"},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "scu": {"target_s": 0.05},
            "training": {"learning_rate": 2e-3, "batch_size": 2, "block_size": 32, "steps": 20,
                         "warmup_steps": 2, "checkpoint_every": 1000},
            "data": {"train_data": str(pydoc_txt)},
        }
        for key, value in overrides.items():
            section, name = key.split("__")
            data[section][name] = value
        return build_config(data)

    return make
