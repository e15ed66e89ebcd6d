"""A `.gguf` file as a base model: loaded dense, cached, trained on, and its adapter reloaded onto it.

The GGUF files are written here with the `gguf` package (tests that need it skip without it): a tiny
Llama with a byte-level BPE vocabulary, laid out as llama.cpp writes one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scu import ScuError
from scu.config.schema import ModelSection, build_config
from scu.models import gguf as scu_gguf
from scu.models.tiny import BaseSpec, tiny_llama, train_tokenizer
from scu.torch.model import add_lora, load_model, load_tokenizer

SPEC = BaseSpec(hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2)


def to_llama_cpp_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows with each head's two rotary halves interleaved; transformers undoes this on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, tokenizer, arch: str = "llama") -> Path:
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    w.add_token_types([3 if i == tokenizer.eos_token_id else 1 for i in range(len(tokenizer))])  # 3: control
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    rope_heads = {"attn_q": c.num_attention_heads, "attn_k": c.num_key_value_heads}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: a GGUF without `output.weight` says so
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        array = tensor.numpy()
        kind = gguf_name.split(".")[-2]
        w.add_tensor(gguf_name, to_llama_cpp_rope(array, rope_heads[kind]) if kind in rope_heads else array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def gguf_cache(tmp_path: Path, monkeypatch) -> Path:
    pytest.importorskip("gguf")
    cache = tmp_path / "cache"
    monkeypatch.setattr(scu_gguf, "cache_root", lambda: cache)
    return cache


@pytest.fixture
def tiny_gguf(tmp_path: Path, gguf_cache: Path, pydoc_txt: Path):
    """(path of a tiny Llama GGUF, the model written into it, its tokenizer)."""
    tokenizer = train_tokenizer([pydoc_txt.read_text()], 300)
    model = tiny_llama(SPEC, len(tokenizer))
    with torch.no_grad():  # norms away from 1, so that a dropped or misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return write_gguf(tmp_path / "tiny.Q.gguf", model, tokenizer), model.eval(), tokenizer


def test_gguf_base_loads_as_the_llama_written_into_it(tiny_gguf):
    path, written, tokenizer = tiny_gguf
    cfg = ModelSection(base_model=str(path))
    model = load_model(cfg).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.name_or_path == model.config.name_or_path == str(path)
    loaded = model.state_dict()
    for name, tensor in written.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert load_tokenizer(cfg).get_vocab() == tokenizer.get_vocab()
    ids = torch.tensor([tokenizer.encode("def f(x):\n    return x")])
    assert torch.equal(model(ids).logits, written(ids).logits)


def test_second_load_reads_the_cache_not_the_gguf(tiny_gguf, gguf_cache, monkeypatch):
    import gguf

    path, _, _ = tiny_gguf
    cfg = ModelSection(base_model=str(path))
    load_model(cfg)
    (cached,) = (gguf_cache / "gguf").iterdir()
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()

    def parse(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(gguf, "GGUFReader", parse)
    monkeypatch.setattr(scu_gguf, "_dequantize", parse)
    load_tokenizer(cfg)
    load_model(cfg)


def test_adapter_records_the_gguf_and_reloads_onto_it_with_identical_logits(tiny_gguf, tmp_path):
    from peft import PeftModel

    path, _, tokenizer = tiny_gguf
    cfg = build_config({"model": {"base_model": str(path)}, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}})
    model = add_lora(load_model(cfg.model), cfg.lora).eval()
    with torch.no_grad():  # a non-zero update, as after training
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    ids = torch.tensor([tokenizer.encode("class A:\n    pass")])
    expected = model(ids).logits
    model.save_pretrained(tmp_path / "adapter")  # what scu train's write_outputs calls
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(path)
    reloaded = PeftModel.from_pretrained(load_model(cfg.model), tmp_path / "adapter").eval()
    assert torch.equal(reloaded(ids).logits, expected)


def test_scu_train_on_a_gguf_base(tiny_gguf, train_cli, tmp_path, pydoc_txt):
    from peft import PeftModel
    from safetensors.torch import load_file

    path, _, _ = tiny_gguf
    out = tmp_path / "run"
    code, err = train_cli(out, config={"model": {"base_model": str(path)}, "training": {"steps": 2}})
    assert code == 0, err
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(path)
    model = PeftModel.from_pretrained(load_model(ModelSection(base_model=str(path))), out)
    trained = load_file(out / "adapter_model.safetensors")
    loaded = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[n], loaded[n]) for n in trained)

    from scu.cli import main  # and `scu eval` scores the base and the adapter on the .gguf path

    assert main(["eval", "--model", str(path), "--adapter", str(out), "--data", str(pydoc_txt), "--block-size", "32",
                 "--json", str(tmp_path / "eval.json"), "--no-card"]) == 0
    base, adapted = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert base["path"] == str(path) and adapted["delta_bpt"] != 0  # the adapter was attached to the GGUF base


def minimal_gguf(path: Path, arch: str, tensor: np.ndarray) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# (architecture, tensor dtype, the refusal, one of the supported names it lists)
UNSUPPORTED = {
    "architecture": ("bert", np.float32, "GGUF architecture 'bert' is not supported; transformers reads", "llama"),
    "tensor type": ("llama", np.int32, "GGUF tensor type I32 cannot be dequantized; supported:", "Q4_1"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_gguf_refused_in_one_line_before_converting(case, gguf_cache, tmp_path):
    arch, dtype, expected, listed = UNSUPPORTED[case]
    path = minimal_gguf(tmp_path / "m.gguf", arch, np.zeros((8, 32), dtype))
    with pytest.raises(ScuError) as e:
        load_model(ModelSection(base_model=str(path)))
    assert expected in str(e.value) and listed in str(e.value) and "\n" not in str(e.value)
    assert not (gguf_cache / "gguf").exists()


def test_a_file_that_is_not_gguf_refused_in_one_line(gguf_cache, tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("not a model, only named like one\n" * 4)
    with pytest.raises(ScuError, match=r"notes\.gguf is not a readable GGUF file \(.*\)$"):
        load_model(ModelSection(base_model=str(path)))


def test_missing_gguf_package_is_one_line(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    monkeypatch.setattr(scu_gguf, "cache_root", lambda: tmp_path / "cache")
    with pytest.raises(ScuError, match=r'needs the gguf package: pip install -e "\.\[real\]"'):
        load_tokenizer(ModelSection(base_model=str(path)))


@pytest.mark.parametrize("base, expected", [
    ("your-model-id", "model.base_model is still the placeholder 'your-model-id'"),
    ("/nonexistent/model", "model path /nonexistent/model does not exist"),
    ("./nonexistent-model", "model path ./nonexistent-model does not exist"),
    ("~/nonexistent-model", "model path ~/nonexistent-model does not exist"),
    ("nonexistent.gguf", "model path nonexistent.gguf does not exist"),
])
def test_unloadable_base_refused_at_once(base, expected):
    for load in (load_tokenizer, load_model):
        with pytest.raises(ScuError) as e:
            load(ModelSection(base_model=base))
        assert expected in str(e.value) and "\n" not in str(e.value)
        assert "Repo id" not in str(e.value)


def test_scu_train_refuses_the_placeholder_base(train_cli, tmp_path):
    out = tmp_path / "out"
    code, err = train_cli(out, config={"model": {"base_model": "your-model-id"}})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "placeholder" in err and not out.exists()
