"""What `scu train` promises about files and runs (docs/security.md): a checkpoint cannot run code, two runs
never share a directory, nobody's files are clobbered, a resume continues only the run it belongs to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scu.rundir import LOCK_FILE, RunLock, publish
from scu.torch import loop
from scu.torch.checkpoint import CHECKPOINT


class CreatesFile:
    """A pickle that, when loaded without weights_only, creates `path` (what a crafted checkpoint would do)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def one_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert expected in err, err


def test_crafted_checkpoint_is_refused_and_runs_nothing(train_cli, tmp_path):
    out = tmp_path / "run"
    assert train_cli(out)[0] == 0
    real = torch.load(out / CHECKPOINT, weights_only=True)
    marker = tmp_path / "pwned"
    real["state"] = {"step": CreatesFile(marker)}
    torch.save(real, out / CHECKPOINT)

    code, err = train_cli(out, "--resume", "--steps", "5")
    one_line(code, err, "could run code")
    assert not marker.exists()
    torch.load(out / CHECKPOINT, weights_only=False)  # the file is live: the unsafe load does create it
    assert marker.exists()


def test_checkpoint_without_config_and_corrupt_one_give_advice_that_works(train_cli, tmp_path):
    out = tmp_path / "run"
    assert train_cli(out)[0] == 0
    payload = torch.load(out / CHECKPOINT, weights_only=True)
    del payload["config"]
    torch.save(payload, out / CHECKPOINT)
    one_line(*train_cli(out, "--resume"), "incomplete (no config)")
    (out / CHECKPOINT).write_bytes(b"\x80\x02garbage")
    code, err = train_cli(out, "--resume")
    one_line(code, err, "--overwrite")
    # the advice leads out of the loop: a new run in place of the broken one
    assert train_cli(out, "--overwrite")[0] == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_second_run_on_a_locked_directory_names_the_holder(train_cli, tmp_path):
    out = tmp_path / "run"
    holder = RunLock(out)
    try:
        one_line(*train_cli(out), f"in use by another scu run (pid {os.getpid()})")
    finally:
        holder.release()
    assert not (out / "metrics.jsonl").exists()
    assert train_cli(out)[0] == 0  # released: the directory holds only the lock file, which counts as empty


def train_process(tmp_path: Path, tiny_base: Path, data: Path, steps: int, out: Path) -> subprocess.Popen:
    """`scu train` in a process of its own, as a user or a scheduler starts it."""
    import yaml

    cfg = tmp_path / f"cfg-{steps}.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"base_model": str(tiny_base)}, "lora": {"rank": 4, "alpha": 8},
        "training": {"batch_size": 2, "block_size": 64, "steps": steps, "warmup_steps": 1},
        "data": {"train_data": str(data)},
    }))
    return subprocess.Popen(
        [sys.executable, "-m", "scu.cli", "train", "--config", str(cfg), "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
    )


def wait_for_rows(proc: subprocess.Popen, metrics: Path, rows: int) -> None:
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= rows):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)


def test_second_cli_run_on_a_running_directory_is_refused(tmp_path, tiny_base, pydoc_txt):
    """Two real processes on one --output: while the first trains, the second exits 2 naming its pid."""
    out = tmp_path / "run"
    first = train_process(tmp_path, tiny_base, pydoc_txt, 100_000, out)
    wait_for_rows(first, out / "metrics.jsonl", 1)
    second = train_process(tmp_path, tiny_base, pydoc_txt, 40, out)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and f"in use by another scu run (pid {first.pid})" in err, err
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 143
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # one run's rows, in order


def test_someone_elses_directory_is_not_overwritten(train_cli, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "adapter_config.json").write_text("{}")
    one_line(*train_cli(out), "is not empty (README.md, adapter_config.json")
    assert (out / "README.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json"]
    assert train_cli(out, "--overwrite")[0] == 0  # asked for explicitly
    assert (out / "adapter_model.safetensors").exists()


def test_fresh_run_never_appends_to_a_killed_runs_metrics(train_cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "data_bpt": 9.0}) + "\n" for i in range(1, 28)))
    one_line(*train_cli(out), "is not empty (metrics.jsonl)")
    assert train_cli(out, "--overwrite")[0] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_finished_run_needs_resume_or_overwrite(train_cli, tmp_path):
    out = tmp_path / "run"
    assert train_cli(out)[0] == 0
    one_line(*train_cli(out), "already holds a run; pass --resume")
    one_line(*train_cli(out, "--resume", "--overwrite"), "pass one of them")


def test_resume_refuses_changed_training_data(train_cli, tmp_path, pydoc_txt):
    out = tmp_path / "run"
    assert train_cli(out)[0] == 0
    pydoc_txt.write_text(pydoc_txt.read_text().replace("the", "a"))  # same path, new content
    one_line(*train_cli(out, "--resume", "--steps", "5"), "training data changed since the checkpoint")
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_refuses_fewer_steps_than_done(train_cli, tmp_path):
    out = tmp_path / "run"
    assert train_cli(out)[0] == 0
    one_line(*train_cli(out, "--resume", "--steps", "2"), "past training.steps 2; resume with --steps above 3")


@pytest.mark.parametrize("where", ["file", "read-only"])
def test_unusable_output_is_refused_before_the_model_loads(train_cli, tmp_path, monkeypatch, where):
    monkeypatch.setattr(loop, "load_model", lambda *a: pytest.fail("the model was loaded before --output was checked"))
    if where == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
        one_line(*train_cli(out), "is a file; pass a directory path")
    else:  # /proc refuses new files even to root, unlike a chmod-ed directory
        one_line(*train_cli(Path("/proc/scu-run")), "cannot write to /proc")


def test_sigterm_checkpoints_and_exits_143(tmp_path, tiny_base, pydoc_txt):
    out = tmp_path / "run"
    proc = train_process(tmp_path, tiny_base, pydoc_txt, 100_000, out)
    wait_for_rows(proc, out / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    meta = json.loads((out / "metadata.json").read_text())
    steps = len((out / "metrics.jsonl").read_text().splitlines())
    assert meta["status"] == "terminated" and meta["steps"] == steps >= 2
    assert torch.load(out / CHECKPOINT, weights_only=True)["state"]["step"] == steps
    assert "--resume" in stdout


def test_publish_is_all_or_nothing(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_text("previous")

    def dies_midway(d: Path) -> None:
        (d / "adapter_model.safetensors").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        publish(tmp_path, dies_midway)
    assert (tmp_path / "adapter_model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_model.safetensors"]
    publish(tmp_path, lambda d: (d / "adapter_model.safetensors").write_text("new"))
    assert (tmp_path / "adapter_model.safetensors").read_text() == "new"
    assert LOCK_FILE not in os.listdir(tmp_path)
