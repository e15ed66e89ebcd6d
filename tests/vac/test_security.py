"""A VAC directory's code runs only when it is exactly what scu writes; anything else is refused unrun,
unless the user passes --trust-remote-code (and is warned)."""

import json
import shutil

import pytest
import torch

from scu import ScuError
from scu.cli import main
from scu.vac.compress import CompressSpec, compress
from scu.vac.io import genuine_vac, load_model, save_compressed


@pytest.fixture(scope="module")
def saved(tiny_base, tokenizer, calib, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    compress(model, calib, CompressSpec(method="svd", ratio=1.8))
    return save_compressed(model, tokenizer, tmp_path_factory.mktemp("vac") / "m", {}, "base")


@pytest.fixture
def copy_of(saved, tmp_path):
    """A copy of the genuine directory, and the marker file tampered code would create on import."""
    d = tmp_path / "copy"
    shutil.copytree(saved, d)
    return d, tmp_path / "MARKER"


def plant(path, marker) -> None:
    """Make `path` (a .py file) create `marker` when it is imported."""
    text = path.read_text() if path.exists() else "from transformers import LlamaConfig, LlamaForCausalLM\n"
    path.write_text(text + f"\nopen({str(marker)!r}, 'w').close()\n")


def edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def evil_module(d, marker) -> None:
    plant(d / "evil.py", marker)
    (d / "evil.py").write_text((d / "evil.py").read_text() + "VacConfig, VacForCausalLM = LlamaConfig, LlamaForCausalLM\n")


def tamper_modeling(d, marker):
    plant(d / "modeling_vac.py", marker)  # auto_map unchanged


def tamper_auto_map(d, marker):
    evil_module(d, marker)
    edit_json(d / "config.json", auto_map={"AutoConfig": "evil.VacConfig", "AutoModelForCausalLM": "evil.VacForCausalLM"})


def tamper_tokenizer(d, marker):
    evil_module(d, marker)
    edit_json(d / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.VacConfig", None]})


def test_a_directory_saved_by_scu_is_genuine_and_loads(saved):
    assert genuine_vac(saved)
    assert load_model(str(saved)) is not None


@pytest.mark.parametrize("tamper", [tamper_modeling, tamper_auto_map, tamper_tokenizer])
def test_tampered_code_is_refused_and_never_runs(copy_of, tamper, capsys):
    d, marker = copy_of
    tamper(d, marker)
    assert not genuine_vac(d)
    with pytest.raises(ScuError, match="differs from what scu writes"):
        load_model(str(d))
    data = d.parent / "data.txt"
    data.write_text("Some text to score.\n\nAnd another document.")
    assert main(["eval-ppl", "--model", str(d), "--data", str(data), "--no-speed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-remote-code" in err[0]
    assert not marker.exists()


def test_trust_remote_code_runs_it_with_a_warning(copy_of, capsys):
    d, marker = copy_of
    tamper_modeling(d, marker)
    data = d.parent / "data.txt"
    data.write_text("Some text to score.\n\nAnd another document.")
    assert main(["eval-ppl", "--model", str(d), "--data", str(data), "--no-speed", "--seq-len", "8",
                 "--trust-remote-code"]) == 0
    assert marker.exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--trust-remote-code" in line]
    assert len(warnings) == 1 and "warning" in warnings[0]
