"""`scu plot` draws the curves (one run and an overlay), the model card says what the run was and how
to load it, and --push-to-hub keeps everything local when it cannot upload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from scu import ScuError
from scu.cli import main
from scu.report.card import push_to_hub, render_card
from scu.report.plots import draw_s, load_run

C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two cycle colors


def pixels_of(png: Path, rgb: tuple[int, int, int]) -> int:
    from matplotlib.image import imread

    img = (imread(png)[..., :3] * 255).round().astype(int)
    return int(np.all(np.abs(img - np.array(rgb)) <= 2, axis=-1).sum())


def second_run(good_run: Path, tmp_path: Path) -> Path:
    """A copy of the good run with every S and lambda doubled, so its curves sit elsewhere."""
    d = tmp_path / "other"
    shutil.copytree(good_run, d)
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["s_hat"] *= 2
        r["lambda"] *= 2
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_plot_writes_pngs_with_the_curves(good_run, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["plot", str(good_run), "--out", str(out)]) == 0
    names = {"s.png", "lambda.png", "bpt.png", "overview.png"}
    assert {p.name for p in out.iterdir()} == names
    assert set(capsys.readouterr().out.split()) == {str(out / n) for n in names}
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pixels_of(out / name, C0) > 500  # the run's curves are drawn in its color
        assert pixels_of(out / name, C1) == 0

    both = tmp_path / "two"
    assert main(["plot", str(good_run), str(second_run(good_run, tmp_path)), "--out", str(both)]) == 0
    for name in ("s.png", "lambda.png", "overview.png"):
        # overlaid, one color each: a 200-step curve across the axes is hundreds of pixels of its color, a missing one 0
        assert pixels_of(both / name, C0) > 300 and pixels_of(both / name, C1) > 300


def test_equilibrium_step_and_target_band_are_drawn(good_run):
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    run = load_run(good_run)
    run.meta["equilibrium_step"] = 123
    ax = Figure().add_subplot()
    draw_s(ax, [run], ["C0"])
    assert any(list(line.get_xdata()) == [123, 123] for line in ax.lines)
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(100 * 0.05 * 0.95) and ys.max() == pytest.approx(100 * 0.05 * 1.05)


def test_plot_refuses_a_directory_without_metrics(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_every_adapter_directory_gets_a_model_card(good_run):
    card = (good_run / "README.md").read_text()
    meta = json.loads((good_run / "metadata.json").read_text())
    assert card == render_card(good_run)  # written by the training loop, from the files next to it
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "scu" in front["tags"]
    assert f"`{meta['base_model']}`" in card
    assert "tracks S* = 5%" in card and "| Steps | 200 of 200 planned optimizer steps (completed) |" in card
    assert f"| Held-out BPT at the end of training | {meta['val_bpt']:.4f} |" in card
    assert "PeftModel.from_pretrained(base, " in card and "mlx_lm.generate" in card and "scu export" in card
    config = yaml.safe_load((good_run / "config.yaml").read_text())
    assert yaml.safe_load(card.split("```yaml\n")[1].split("```")[0]) == {k: v for k, v in config.items() if k not in ("sscu", "tscu")}
    assert "No `scu eval` run yet" in card


@pytest.fixture
def no_hub_login(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_push_without_a_token_or_offline_keeps_everything_local(good_run, no_hub_login, monkeypatch):
    import huggingface_hub.constants as constants

    before = snapshot(good_run)
    with pytest.raises(ScuError, match="no Hugging Face token.*stays local"):
        push_to_hub(good_run, "someone/adapter")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ScuError, match="HF_HUB_OFFLINE.*nothing was uploaded; the adapter is kept in"):
        push_to_hub(good_run, "someone/adapter")
    assert snapshot(good_run) == before


def test_push_with_no_network_says_so(good_run, no_hub_login, monkeypatch):
    from huggingface_hub import HfApi

    def unreachable(*a, **k):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    before = snapshot(good_run)
    with pytest.raises(ScuError, match="could not reach the Hugging Face Hub.*kept in"):
        push_to_hub(good_run, "someone/adapter")
    assert snapshot(good_run) == before


def test_train_with_push_to_hub_and_no_token_refuses_before_training(good_run, no_hub_login, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--config", str(good_run / "config.yaml"), "--output", str(out), "--push-to-hub", "me/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert not out.exists()
