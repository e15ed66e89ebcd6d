"""`scu doctor` and `scu plot` on a corrupt metadata.json say so in one line; a failed plot write leaves no partial PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scu.cli import main
from scu.report.plots import load_run, plot_runs


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory with a few metrics rows and a metadata.json cut off mid-write."""
    d = tmp_path / "run"
    d.mkdir()
    rows = [{"step": i, "s": 0.05, "s_hat": 0.05, "lambda": 1.0, "data_bpt": 3.0, "param_bpt": 0.1} for i in range(1, 31)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "metadata.json").write_text('{"status": "completed", "base_mod')
    return d


@pytest.mark.parametrize("command", ["doctor", "plot"])
def test_corrupt_metadata_is_one_line_naming_the_file(run_dir, capsys, command):
    assert main([command, str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run_dir / 'metadata.json'} is not valid JSON" in err[0]


def test_a_failed_plot_write_leaves_no_partial_file(run_dir, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    (run_dir / "metadata.json").unlink()
    run = load_run(run_dir)

    def half_written(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG\r\n")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_written)
    out = tmp_path / "plots"
    with pytest.raises(OSError, match="No space left"):
        plot_runs([run], out)
    assert list(out.iterdir()) == []
