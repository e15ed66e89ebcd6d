"""`scu eval` end to end: adapters ranked correctly where the order is known, the probes report,
the adapters' model cards, and bad input refused before a model loads."""

from __future__ import annotations

import json

import pytest
import torch

from scu.cli import main
from scu.config.schema import build_config
from scu.data.builtin import pydoc_topics


@pytest.fixture(scope="module")
def case(tiny_base, tmp_path_factory):
    """Held-out text and three adapters whose order is known:

    trained  plain LoRA trained on the held-out text itself (must be best),
    zero     a fresh LoRA (B = 0): exactly the base model,
    noise    LoRA factors drawn at random: a perturbed, worse model.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from scu.torch.loop import train

    root = tmp_path_factory.mktemp("eval")
    text = root / "heldout.txt"
    text.write_text("\n\n".join(pydoc_topics()[60:62]))
    cfg = build_config({
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "scu": {"enabled": False},
        "training": {"learning_rate": 1e-2, "batch_size": 4, "block_size": 64, "steps": 40, "warmup_steps": 2,
                     "checkpoint_every": 1000},
        "data": {"train_data": str(text), "val_fraction": 0.0},
    })
    train(cfg, root / "trained", progress=False)
    for name, init in (("zero", True), ("noise", False)):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_base)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=init)
        model = get_peft_model(base, lora)
        if not init:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_" in n:
                        p.normal_(0, 0.3)
        model.save_pretrained(root / name)
    return root, str(tiny_base), text


def test_adapters_ranked_in_the_known_order_with_paired_intervals(case, capsys):
    root, base, text = case
    out = root / "results.json"
    probes = root / "probes.md"
    adapters = [str(root / n) for n in ("noise", "trained", "zero")]
    argv = ["eval", "--model", base, "--data", str(text), "--block-size", "64", "--bootstrap", "200", "--json", str(out)]
    argv += [a for d in adapters for a in ("--adapter", d)]
    assert main(argv + ["--probes", "--probes-out", str(probes), "--max-new-tokens", "4"]) == 0
    r = json.loads(out.read_text())
    by = {row["name"]: row for row in r["results"]}
    assert r["ranking"][0] == "trained" and r["ranking"][-1] == "noise"
    assert by["zero"]["bpt"] == pytest.approx(by["base"]["bpt"], abs=1e-9) and by["zero"]["delta_ci"] == pytest.approx([0, 0], abs=1e-9)
    assert by["trained"]["delta_ci"][1] < 0 < by["noise"]["delta_ci"][0]  # both differences are outside the noise
    for row in r["results"]:
        lo, hi = row["bpt_ci"]
        assert lo <= row["bpt"] <= hi and row["perplexity"] == pytest.approx(2 ** row["bpt"])
    printed = capsys.readouterr().out
    assert "best first: trained <" in printed

    # the probes report: every default probe, every model
    report = probes.read_text()
    for category in ("math", "logic riddle", "SQL code", "knowledge", "creative writing"):
        assert f". {category}" in report
    assert report.count("**base**") == report.count("**trained**") == report.count("**noise**") == 5

    # the trained adapter is a scu run: its card now carries the table; the other two are left alone
    card = (root / "trained" / "README.md").read_text()
    assert "## Evaluation" in card and "| trained |" in card and "| base |" in card
    assert json.loads((root / "trained" / "eval_results.json").read_text())["ranking"] == r["ranking"]
    assert not (root / "noise" / "eval_results.json").exists()


def test_sliding_window_scores_more_tokens_with_more_context(case):
    root, base, text = case
    results = {}
    for stride in ("64", "16"):
        out = root / f"s{stride}.json"
        assert main(["eval", "--model", base, "--data", str(text), "--block-size", "64", "--stride", stride,
                     "--bootstrap", "20", "--json", str(out)]) == 0
        results[stride] = json.loads(out.read_text())
    chunked, sliding = results["64"], results["16"]
    assert sliding["documents"] == chunked["documents"]
    assert sliding["tokens"] > chunked["tokens"]  # the first token of every block is scored too
    assert sliding["results"][0]["bpt"] < chunked["results"][0]["bpt"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--adapter", "/no/such/dir"], "adapter directory not found"),
        (["--stride", "100"], "--stride must be between 1 and --block-size"),
        (["--block-size", "1"], "--block-size must be at least 2"),
    ],
)
def test_bad_input_is_refused_before_a_model_loads(case, capsys, extra, message, monkeypatch):
    root, base, text = case
    import scu.torch.model as model_module

    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: pytest.fail("model loaded before the input was checked"))
    assert main(["eval", "--model", base, "--data", str(text), "--block-size", "64", *extra]) == 2
    assert message in capsys.readouterr().err


def test_mlx_adapter_is_pointed_to_scu_export(case, capsys, tmp_path):
    root, base, text = case
    (tmp_path / "adapters.safetensors").write_bytes(b"")
    assert main(["eval", "--model", base, "--data", str(text), "--adapter", str(tmp_path)]) == 2
    assert "scu export" in capsys.readouterr().err
