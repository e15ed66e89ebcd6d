"""The model card's Hub metadata (base_model, library_name, tags, datasets, model-index), its config without
idle sections, and `scu eval` adding only its own table, and only to runs whose records back the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from scu import ScuError
from scu.eval.cli import update_cards
from scu.report.card import CARD, EVAL_RESULTS, hub_id, render_card

HUB_BASE = "HuggingFaceTB/SmolLM2-135M"


def front(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def config_block(card: str) -> dict:
    return yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])


def copy_run(good_run: Path, tmp_path: Path, name: str = "run", **meta_changes) -> Path:
    """A copy of the finished run, its metadata.json changed by `meta_changes` (None deletes a key)."""
    d = tmp_path / name
    shutil.copytree(good_run, d)
    meta = json.loads((d / "metadata.json").read_text())
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


def eval_results(adapter: str, data: str) -> dict:
    """What `scu eval` returns for the base and one adapter (numbers made up, shapes as written)."""
    row = {"bpt_ci": [1.0, 2.0], "delta_ci": None, "delta_bpt": None}
    return {
        "model": "base-dir", "data": data, "documents": 3, "tokens": 900, "block_size": 64, "stride": 64,
        "bootstrap": {"samples": 200, "seed": 0, "level": 0.95},
        "results": [{**row, "name": "base", "path": "base-dir", "bpt": 5.0, "perplexity": 32.0},
                    {**row, "name": adapter, "path": adapter, "bpt": 4.0, "perplexity": 16.0, "delta_bpt": -1.0,
                     "delta_ci": [-1.2, -0.8]}],
        "ranking": [adapter, "base"],
    }


def test_front_matter_has_the_hub_fields_and_no_local_path(good_run, tiny_base):
    card = render_card(good_run)
    head = front(card)
    meta = json.loads((good_run / "metadata.json").read_text())
    assert head["library_name"] == "peft" and {"peft", "lora", "scu"} <= set(head["tags"])
    assert "base_model" not in head  # the base is a local directory: a path means nothing on the Hub
    assert "datasets" not in head  # trained on a local text file
    assert str(tiny_base) not in card.split("---\n")[1] and "/" not in json.dumps(head.get("base_model", ""))
    (entry,) = head["model-index"]
    assert entry["name"] == good_run.name
    metrics = {m["type"]: m["value"] for r in entry["results"] for m in r["metrics"]}
    assert metrics["bpt"] == pytest.approx(meta["val_bpt"], abs=1e-6)
    assert metrics["perplexity"] == pytest.approx(2 ** meta["val_bpt"], rel=1e-4)
    assert entry["results"][0]["dataset"]["split"] == "validation"


def test_a_hub_base_model_and_hub_datasets_are_named(good_run, tmp_path):
    config = json.loads((good_run / "metadata.json").read_text())["config"]
    prepared = tmp_path / "wt103"  # a `scu data prepare` directory made from the Hub
    prepared.mkdir()
    (prepared / "prep.json").write_text(json.dumps({"source": {"kind": "hub", "hub_id": "Salesforce/wikitext"},
                                                    "val_source": None}))
    config["data"] = {**config["data"], "train_data": str(prepared), "val_data": "someone/heldout-set"}
    d = copy_run(good_run, tmp_path, base_model=HUB_BASE, config=config)
    head = front(render_card(d))
    assert head["base_model"] == HUB_BASE
    assert head["datasets"] == ["Salesforce/wikitext", "someone/heldout-set"]
    assert head["model-index"][0]["results"][0]["dataset"]["type"] == "someone/heldout-set"
    assert front(render_card(d, repo_id="me/adapter"))["base_model"] == HUB_BASE  # pushing keeps the id


@pytest.mark.parametrize(("spec", "expected"), [
    (HUB_BASE, HUB_BASE),
    ("gpt2", "gpt2"),
    ("/home/me/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/abc123", HUB_BASE),
    ("/home/me/models/SmolLM2-135M", None),
    ("models/smollm2.Q4_1.gguf", None),
    ("./tiny", None),
    ("~/tiny", None),
    ("not an id", None),
])
def test_hub_id_keeps_ids_and_drops_local_paths(spec, expected):
    assert hub_id(spec) == expected


def test_the_config_block_leaves_out_sections_that_did_nothing(good_run, tmp_path):
    block = config_block(render_card(good_run))
    assert {"model", "lora", "scu", "training", "data", "equilibrium"} <= set(block)
    assert "sscu" not in block and "tscu" not in block  # disabled
    off = copy_run(good_run, tmp_path, scu_enabled=False, target_s=None, controllers={})
    config = yaml.safe_load((off / "config.yaml").read_text())
    config["scu"]["enabled"] = False
    (off / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    block = config_block(render_card(off))
    assert "scu" not in block and "equilibrium" not in block and "Plain LoRA (SCU off)." in render_card(off)


def test_an_mlx_adapter_is_tagged_as_mlx(good_run, tmp_path):
    d = copy_run(good_run, tmp_path)
    (d / "adapter_model.safetensors").rename(d / "adapters.safetensors")
    head = front(render_card(d))
    assert head["library_name"] == "mlx" and "mlx" in head["tags"]


def test_scu_eval_adds_only_its_table_and_this_adapters_row(good_run, tmp_path, capsys):
    d = copy_run(good_run, tmp_path)
    before = render_card(d)  # the card training would have written here (the copied one points at good_run)
    update_cards([str(d)], eval_results(d.name, str(tmp_path / "heldout.txt")))
    after = (d / CARD).read_text()
    assert capsys.readouterr().err == ""
    assert json.loads((d / EVAL_RESULTS).read_text())["adapter"] == d.name

    def sections(card: str) -> dict[str, str]:
        body = card.split("---\n", 2)[2]
        return {part.split("\n", 1)[0]: part for part in body.split("\n## ")}

    changed = {k for k in sections(after) if sections(before).get(k) != sections(after)[k]}
    assert changed == {"Evaluation"}
    assert "| base | 5.0000 |" in after and f"| {d.name} | 4.0000 |" in after
    head_before, head_after = front(before), front(after)
    assert {k: v for k, v in head_after.items() if k != "model-index"} == {k: v for k, v in head_before.items() if k != "model-index"}
    results = head_after["model-index"][0]["results"]
    scu_eval = [r for r in results if r["dataset"]["name"] == "heldout.txt (scu eval)"]
    assert {m["type"]: m["value"] for r in scu_eval for m in r["metrics"]} == {"bpt": 4.0, "perplexity": 16.0}  # not the base's
    assert str(tmp_path) not in after.split("---\n")[1]


# What SCUTrainer's SCU.metadata writes: no config, no scu_enabled, no tokens_seen.
TRAINER_META = {"status": "completed", "base_model": "tiny", "steps": 4, "steps_planned": 4, "target_s": 0.1,
                "final_lambda": 0.5, "scu": {"target_s": 0.1}}


@pytest.mark.parametrize("meta", [TRAINER_META, None])
def test_scu_eval_leaves_cards_it_cannot_back_alone(good_run, tmp_path, capsys, meta):
    d = tmp_path / "trainer-run"
    d.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(good_run / name, d / name)
    if meta is not None:
        (d / "metadata.json").write_text(json.dumps(meta))
    (d / CARD).write_text("PEFT's own card\n")
    update_cards([str(d)], eval_results(d.name, "heldout.txt"))
    err = capsys.readouterr().err.strip()
    assert (d / CARD).read_text() == "PEFT's own card\n" and not (d / EVAL_RESULTS).exists()
    assert "\n" not in err and "its README.md is left alone" in err
    assert ("lacks scu_enabled, tokens_seen, config" if meta else "no metadata.json") in err


def test_render_card_refuses_metadata_without_the_facts_it_states(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps(TRAINER_META))
    with pytest.raises(ScuError, match=r"lacks scu_enabled, tokens_seen, config, config.lora.rank ... \(not written by `scu train`\)") as e:
        render_card(tmp_path)
    assert "\n" not in str(e.value)
