"""--push-to-hub uploads the adapter and the run's records only, with no local absolute paths in them (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from scu.report.card import push_to_hub


def fake_run(d: Path, base: Path) -> Path:
    """A finished run directory (SCU off) whose records name local absolute paths, plus files that must stay local."""
    d.mkdir(parents=True)
    config = {"model": {"base_model": str(base)}, "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj"]},
              "data": {"train_data": str(d / "data" / "train.txt")}}
    meta = {"status": "completed", "base_model": str(base), "scu_enabled": False, "steps": 10, "steps_planned": 10,
            "tokens_seen": 1280, "config": config}
    (d / "metadata.json").write_text(json.dumps(meta))
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 4}))
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    (d / "plots").mkdir()
    (d / "plots" / "s.png").write_bytes(b"png")
    for stray in ("checkpoint.pt", "notes.txt", ".env", "plots/sketch.png"):
        (d / stray).write_text("private")
    return d


def test_only_the_adapter_and_records_are_uploaded_with_portable_paths(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    uploaded: dict[str, bytes] = {}

    class Info:
        commit_url = "https://huggingface.co/me/adapter/commit/1"

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            content = op.path_or_fileobj
            uploaded[op.path_in_repo] = content if isinstance(content, bytes) else Path(content).read_bytes()
        return Info()

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    base = tmp_path / "models" / "tiny-base"
    run = fake_run(tmp_path / "runs" / "lr0.5", base)

    assert push_to_hub(run, "me/adapter") == Info.commit_url
    assert set(uploaded) == {"adapter_config.json", "adapter_model.safetensors", "metadata.json", "metrics.jsonl",
                             "config.yaml", "plots/s.png", "README.md"}
    assert all(str(tmp_path) not in content.decode(errors="replace") for content in uploaded.values())
    meta = json.loads(uploaded["metadata.json"])
    assert meta["base_model"] == "tiny-base" and meta["config"]["data"]["train_data"] == "data/train.txt"
    assert yaml.safe_load(uploaded["config.yaml"]) == meta["config"]
    assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] == "tiny-base"
    assert json.loads((run / "metadata.json").read_text())["base_model"] == str(base)  # the local files are untouched
