"""Models through mlx-lm's own loading code: a quantized MLX directory (made with mlx_lm.convert), and
quantize-on-load of an HF-format checkpoint. LoRA wraps the quantized layers; the adapter reloads."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import scu.mlx.loop as loop
from scu import ScuError


def quantized_bases(run) -> list[str]:
    return [p for p, m in run.model.named_modules() if p.endswith(".linear") and isinstance(m, nn.QuantizedLinear)]


@pytest.fixture(scope="module")
def q4_dir(tiny_base, tmp_path_factory):
    """The tiny HF-format base converted and 4-bit quantized by mlx-lm itself (like mlx-community/*-4bit)."""
    from mlx_lm.convert import convert

    out = tmp_path_factory.mktemp("q4") / "model"
    convert(str(tiny_base), str(out), quantize=True, q_group_size=32, q_bits=4)
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    return out


def test_qlora_on_a_quantized_mlx_model_and_the_adapter_reloads(mlx_cfg, q4_dir, tmp_path):
    from mlx_lm import load

    cfg = mlx_cfg(model__base_model=str(q4_dir), training__steps=3, training__checkpoint_every=3)
    meta = loop.train(cfg, tmp_path / "run", progress=False)
    assert meta["steps"] == 3 and np.isfinite(meta["final_data_bpt"])
    run = loop.setup(cfg, tmp_path / "run", resume=True)
    assert quantized_bases(run)  # LoRA really wraps the 4-bit layers
    ids = mx.array(np.arange(30).reshape(2, 15))
    model, _ = load(str(q4_dir), adapter_path=str(tmp_path / "run"))
    trained = np.array(run.model(ids))
    assert np.abs(np.array(model(ids)) - trained).max() <= 1e-5 * np.abs(trained).max()


def test_load_in_4bit_quantizes_an_hf_checkpoint_on_load(mlx_cfg, tmp_path):
    cfg = mlx_cfg(model__load_in_4bit=True, training__steps=2)
    meta = loop.train(cfg, tmp_path / "run", progress=False)
    assert meta["steps"] == 2
    assert quantized_bases(loop.setup(cfg, tmp_path / "run", resume=True))


def test_bad_model_settings_are_refused_before_any_output(mlx_cfg, q4_dir, tmp_path):
    cases = [
        (mlx_cfg(model__base_model=str(tmp_path / "nowhere")), "could not load"),
        (mlx_cfg(model__base_model=str(q4_dir), model__load_in_4bit=True), "already quantized"),
        (mlx_cfg(lora__use_dora=True), "use_dora"),
        (mlx_cfg(lora__init="pissa"), "lora.init"),
        (mlx_cfg(lora__targets=["c_attn"]), "none of lora.targets"),
    ]
    for cfg, match in cases:
        with pytest.raises(ScuError, match=match):
            loop.train(cfg, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_a_transformers_5_checkpoint_keeps_its_rope_theta_in_mlx(mlx_cfg, tiny_base, tmp_path):
    """transformers 5 writes rope_theta inside rope_parameters, where mlx-lm does not look: the base must run at
    the checkpoint's theta (as SmolLM2's 100000), not mlx-lm's default 10000, or its logits are another model's."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from scu.mlx.model import load_base

    base = tmp_path / "theta"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": 100000.0, "rope_type": "default"}
    config.pop("rope_theta", None)
    (base / "config.json").write_text(json.dumps(config))
    ids = np.arange(64).reshape(2, 32) % config["vocab_size"]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(base).eval()(torch.from_numpy(ids)).logits.numpy()
    cfg = mlx_cfg()
    model, _, _ = load_base(cfg.model.model_copy(update={"base_model": str(base)}))
    got = np.array(model(mx.array(ids)))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
