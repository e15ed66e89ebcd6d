"""`scu export` refuses an --out that is a file in one line, and a failed weight write leaves no partial file."""

from __future__ import annotations

from pathlib import Path

import pytest

from scu.cli import main


@pytest.fixture
def peft_dir(tiny_base, tmp_path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "peft"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(out)
    return out


def test_out_that_is_a_file_is_refused_in_one_line(peft_dir, tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("keep me")
    capsys.readouterr()
    assert main(["export", str(peft_dir), "--to", "mlx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]
    assert out.read_text() == "keep me"


def test_a_failed_weight_write_leaves_no_partial_file(peft_dir, tmp_path, monkeypatch):
    import scu.mlx.convert as convert

    def half_written(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 8)
        raise OSError("No space left on device")

    monkeypatch.setattr(convert, "save_file", half_written)
    with pytest.raises(OSError, match="No space left"):
        convert.export_adapter(peft_dir, "mlx", tmp_path / "mlx")
    assert list((tmp_path / "mlx").iterdir()) == []
