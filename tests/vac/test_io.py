"""A saved compressed model reloads through transformers at its compressed shapes, exactly; int8 too."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from scu import ScuError
from scu.vac.compress import CompressSpec, compress
from scu.vac.evaluate import disk_bytes
from scu.vac.io import load_model, quantize_int8, save_compressed
from scu.vac.profile import is_factorized


@pytest.fixture
def compressed(fresh, calib):
    model = fresh()
    compress(model, calib, CompressSpec(method="whiten", ratio=1.8))
    return model


def save(model, tokenizer, path, **kw):
    return save_compressed(model, tokenizer, path, {"test": True}, "base", **kw)


def test_reload_reproduces_logits_exactly_from_shards(compressed, tokenizer, calib, tmp_path):
    out = save(compressed, tokenizer, tmp_path / "m", max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_vac.VacForCausalLM"
    assert (out / "modeling_vac.py").exists()

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=calib[:2]).logits, compressed(input_ids=calib[:2]).logits)
    ranks = {n: m.rank for n, m in loaded.named_modules() if is_factorized(m)}
    assert ranks == config["vac_ranks"] and ranks


def test_loading_never_allocates_a_dense_projection(compressed, tokenizer, tmp_path, monkeypatch):
    out = save(compressed, tokenizer, tmp_path / "m")
    ranks = json.loads((out / "config.json").read_text())["vac_ranks"]
    dense_shapes = {(m.in_features, m.out_features) for m in compressed.modules() if is_factorized(m)}
    created = []
    original = nn.Linear.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(((self.in_features, self.out_features), self.weight.device.type))

    monkeypatch.setattr(nn.Linear, "__init__", spy)
    load_model(str(out))
    real = [shape for shape, device in created if device != "meta"]
    assert not any(shape in dense_shapes for shape in real)
    assert len([s for s, _ in created if s not in dense_shapes]) >= 2 * len(ranks)  # the factors were built


def test_direct_construction_from_config_is_usable(compressed, tokenizer, tmp_path):
    out = save(compressed, tokenizer, tmp_path / "m")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_int8_roundtrip_halves_the_factor_bytes(compressed, tokenizer, calib, tmp_path):
    bf16 = save(copy.deepcopy(compressed).to(torch.bfloat16), tokenizer, tmp_path / "bf16")
    with torch.no_grad():
        before = compressed(input_ids=calib[:2]).logits
    quantize_int8(compressed)
    with torch.no_grad():
        quantized = compressed(input_ids=calib[:2]).logits
    assert 0 < (quantized - before).abs().max() < 0.05 * before.abs().max()  # close, but really quantized
    out = save(compressed, tokenizer, tmp_path / "int8")
    loaded = load_model(str(out), dtype=torch.float32).eval()
    assert all(type(m.up).__name__ == "Int8Linear" for m in loaded.modules() if is_factorized(m))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=calib[:2]).logits, quantized)

    def factor_bytes(path):
        total = 0
        for f in path.glob("*.safetensors"):
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    if ".up." in k or ".down." in k:
                        t = st.get_tensor(k)
                        total += t.numel() * t.element_size()
                        if k.endswith(".weight") and path.name == "int8":
                            assert t.dtype == torch.int8
        return total

    ratio = factor_bytes(out) / factor_bytes(bf16)
    assert 0.5 <= ratio < 0.6  # one byte per weight plus one 4-byte scale per output channel
    # Next to bf16 embeddings and norms, the whole directory shrinks by what the factors save.
    int8_bf16 = save(compressed, tokenizer, tmp_path / "int8-bf16", dtype=torch.bfloat16)
    saved = disk_bytes(bf16) - disk_bytes(int8_bf16)
    assert saved == pytest.approx(factor_bytes(bf16) - factor_bytes(int8_bf16), rel=0.1)  # less the scales' header entries


def test_saving_in_another_dtype_leaves_the_model_as_it_was(compressed, tokenizer, calib, tmp_path):
    with torch.no_grad():
        before = compressed(input_ids=calib[:2]).logits
    out = save(compressed, tokenizer, tmp_path / "bf16", dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in compressed.parameters())
    with torch.no_grad():
        assert torch.equal(compressed(input_ids=calib[:2]).logits, before)
    loaded = load_model(str(out))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_refuses_a_non_empty_output_directory(compressed, tokenizer, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(ScuError):
        save(compressed, tokenizer, tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["keep.txt"]


def test_int8_covers_layers_kept_dense(fresh, calib, tokenizer, tmp_path):
    from scu.vac.compress import factorize_layer
    from scu.vac.profile import layer_linears

    model = fresh()
    names = list(layer_linears(model, 0))
    kept = "model.layers.0.mlp.down_proj"
    factorize_layer(model, 0, {n: (None if n == kept else 8) for n in names}, {}, CompressSpec(method="svd"))
    quantize_int8(model)
    assert type(model.get_submodule(kept)).__name__ == "Int8Linear"
    with torch.no_grad():
        expected = model(input_ids=calib[:2]).logits
    out = save(model, tokenizer, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert kept in config["vac_int8_linears"] and "model.layers.1.mlp.down_proj" in config["vac_int8_linears"]
    assert set(config["vac_ranks"]) == set(names) - {kept}
    loaded = load_model(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=calib[:2]).logits, expected)
