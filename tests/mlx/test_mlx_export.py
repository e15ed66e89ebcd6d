"""`scu export`: PEFT <-> mlx-lm adapters, exact round trip, same logits in both frameworks, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from safetensors.torch import load_file

from scu import ScuError
from scu.mlx.convert import export_adapter

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_adapter(base: Path, out: Path, **lora_kwargs) -> Path:
    """A PEFT LoRA adapter on the tiny base with B ~ N(0, 0.05^2), so it changes the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**{"r": 4, "lora_alpha": 8, **lora_kwargs}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(out)
    return out


def torch_logits(base: Path, adapter: Path, ids: np.ndarray) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy()


def mlx_logits(base: Path, adapter: Path, ids: np.ndarray) -> np.ndarray:
    from mlx_lm import load

    model, _ = load(str(base), adapter_path=str(adapter))
    return np.array(model(mx.array(ids)).astype(mx.float32))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, size=(2, 24))


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": ALL},
        {"target_modules": ["q_proj", "v_proj", "down_proj"], "use_rslora": True, "layers_to_transform": [1], "r": 8, "lora_alpha": 4},
    ],
    ids=["all-projections", "rslora-one-layer"],
)
def test_peft_to_mlx_gives_the_same_logits_and_round_trips_exactly(tiny_base, tmp_path, ids, lora):
    peft_dir = peft_adapter(tiny_base, tmp_path / "peft", **lora)
    mlx_dir = export_adapter(peft_dir, "mlx", tmp_path / "mlx")
    back = export_adapter(mlx_dir, "peft", tmp_path / "back")

    ref = torch_logits(tiny_base, peft_dir, ids)
    base_only = mlx_logits(tiny_base, _empty_mlx_adapter(mlx_dir, tmp_path / "zero"), ids)
    assert rel_err(base_only, ref) > 1e-3  # the adapter really changes the logits
    assert rel_err(mlx_logits(tiny_base, mlx_dir, ids), ref) < 1e-4

    a, b = load_file(str(peft_dir / "adapter_model.safetensors")), load_file(str(back / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert json.loads((back / "adapter_config.json").read_text()) == json.loads((peft_dir / "adapter_config.json").read_text())


def _empty_mlx_adapter(mlx_dir: Path, out: Path) -> Path:
    """The same mlx-lm adapter with B = 0: the base model's logits through the same loading path."""
    from safetensors.torch import save_file

    out.mkdir()
    (out / "adapter_config.json").write_text((mlx_dir / "adapter_config.json").read_text())
    w = load_file(str(mlx_dir / "adapters.safetensors"))
    save_file({k: torch.zeros_like(v) if k.endswith("lora_b") else v for k, v in w.items()}, str(out / "adapters.safetensors"))
    return out


def test_mlx_lm_adapter_converts_to_peft_with_the_same_logits(tiny_base, tmp_path, ids):
    """An adapter written by mlx-lm itself (LoRA on the last block only), with no PEFT provenance."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    model, _ = load(str(tiny_base))
    model.freeze()
    params = {"rank": 4, "scale": 3.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"]}
    linear_to_lora_layers(model, 1, params)
    mx.random.seed(2)
    model.update(_tree({k: mx.random.normal(v.shape) * 0.05 for k, v in tree_flatten(model.trainable_parameters())}))
    mlx_dir = tmp_path / "mlx"
    mlx_dir.mkdir()
    mx.save_safetensors(str(mlx_dir / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    save_config({"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": params, "model": str(tiny_base)},
                mlx_dir / "adapter_config.json")

    peft_dir = export_adapter(mlx_dir, "peft", tmp_path / "peft")
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1] and sorted(cfg["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    assert rel_err(torch_logits(tiny_base, peft_dir, ids), mlx_logits(tiny_base, mlx_dir, ids)) < 1e-4
    # and back: the mlx-lm tensors are reproduced exactly
    again = export_adapter(peft_dir, "mlx", tmp_path / "again")
    x, y = load_file(str(mlx_dir / "adapters.safetensors")), load_file(str(again / "adapters.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _tree(flat: dict):
    from mlx.utils import tree_unflatten

    return tree_unflatten(list(flat.items()))


@pytest.mark.parametrize(
    ("lora", "match"),
    [
        ({"target_modules": ["q_proj"], "use_dora": True}, "DoRA"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 2}}, "one rank"),
        ({"target_modules": ["q_proj"], "bias": "lora_only"}, "biases"),
        ({"target_modules": ["embed_tokens"]}, "embedding"),
    ],
)
def test_what_mlx_lm_cannot_express_is_refused_and_leaves_nothing(tiny_base, tmp_path, lora, match):
    peft_dir = peft_adapter(tiny_base, tmp_path / "peft", **lora)
    with pytest.raises(ScuError, match=match):
        export_adapter(peft_dir, "mlx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exports_and_refuses_in_one_line(tiny_base, tmp_path, capsys):
    from scu.cli import main

    peft_dir = peft_adapter(tiny_base, tmp_path / "peft", target_modules=["q_proj"])
    (peft_dir / "metadata.json").write_text('{"final_lambda": 0.3}')
    assert main(["export", str(peft_dir), "--to", "mlx", "--out", str(tmp_path / "mlx")]) == 0
    assert (tmp_path / "mlx" / "adapters.safetensors").exists()
    assert json.loads((tmp_path / "mlx" / "metadata.json").read_text()) == {"final_lambda": 0.3}
    capsys.readouterr()  # the export's own output (transformers may draw a loading bar on stderr)
    assert main(["export", str(peft_dir), "--to", "mlx", "--out", str(tmp_path / "mlx")]) == 2
    assert main(["export", str(peft_dir), "--to", "peft", "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not empty" in err[0] and "already a peft adapter" in err[1]
