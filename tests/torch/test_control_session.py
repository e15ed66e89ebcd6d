"""One control session for every way of training (issue 19): `scu train` and SCUTrainer leave the same record,
which scu validate / plot / doctor / eval all accept; auto-stop, S-SCU and T-SCU in the Trainer; a controller that
only returns Actions steers the loop; trackers; the transformers LR schedule; no import cycles."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

import scu.core.simplified as simplified
import scu.session as session_module
import scu.torch.loop as loop
from scu.cli import main
from scu.config.schema import ALL_PROJECTIONS, build_config
from scu.core.simplified import Rule
from scu.core.telemetry import Action, StepTelemetry
from scu.data.builtin import pydoc_topics
from scu.data.text import pack, tokenize_documents
from scu.driver import lr_schedule
from scu.report.doctor import diagnose
from scu.report.plots import load_run, plot_runs
from scu.report.records import MetricsLog
from scu.report.schema import METRICS_KEYS, RunMetadata
from scu.report.validate import validate
from scu.torch.hf import SCUTrainer

STEPS, BLOCK, BATCH, LR = 24, 64, 4, 2e-3
FIXED = {"lambda_init": 0.5, "lambda_min": 0.5, "lambda_max": 0.5}  # S not controlled: validate's final_s is skipped


def config(pydoc_txt, tiny_base, **sections):
    data = {
        "model": {"base_model": str(tiny_base)},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "scu": dict(FIXED),
        "training": {"learning_rate": LR, "batch_size": BATCH, "block_size": BLOCK, "steps": STEPS, "warmup_steps": 0,
                     "lr_schedule": "constant", "checkpoint_every": 1000},
        "data": {"train_data": str(pydoc_txt), "val_fraction": 0.0},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return build_config(data)


def trainer(tiny_base, out: Path, steps: int = STEPS, report_to: list[str] | None = None, **control) -> SCUTrainer:
    """The same fine-tune as `config` through SCUTrainer: same base, LoRA, LR, batch, packed pydoc blocks."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    blocks = pack(tokenize_documents(pydoc_topics()[:40], tokenizer), BLOCK, tokenizer.eos_token_id)
    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_PROJECTIONS, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), lora)
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
                             lr_scheduler_type="constant", report_to=report_to or [], use_cpu=True, logging_steps=4,
                             save_strategy="no", disable_tqdm=True, seed=0, max_grad_norm=1.0)
    return SCUTrainer(model=model, args=args, train_dataset=ds, scu=control.pop("scu", FIXED), **control)


def rows(out: Path) -> list[dict]:
    return MetricsLog(out / "metrics.jsonl").read()


def test_trainer_and_scu_train_leave_one_record_that_every_tool_accepts(tiny_base, pydoc_txt, tmp_path, capsys):
    loop.train(config(pydoc_txt, tiny_base), tmp_path / "train", progress=False)
    t = trainer(tiny_base, tmp_path / "trainer")
    t.train()
    t.save_model()
    metas = {}
    for name in ("train", "trainer"):
        d = tmp_path / name
        meta = json.loads((d / "metadata.json").read_text())
        metas[name] = meta
        assert set(meta) == set(RunMetadata.__annotations__)  # one schema, whichever way it trained
        r = rows(d)
        assert [x["step"] for x in r] == list(range(1, STEPS + 1)) and all(set(METRICS_KEYS) <= set(x) for x in r)
        checks = validate(d)
        assert [c.name for c in checks if c.outcome == "fail"] == [], checks
        assert diagnose(r, meta) == []  # scu doctor reads it: no troubleshooting case
    assert metas["trainer"]["trainer"] == "SCUTrainer" and metas["train"]["trainer"] == "scu train"
    assert metas["trainer"]["status"] == metas["train"]["status"] == "completed"
    assert metas["trainer"]["config"]["lora"] == {**metas["train"]["config"]["lora"], "targets": sorted(ALL_PROJECTIONS)}
    assert metas["trainer"]["final_lambda"] == metas["train"]["final_lambda"] == 0.5
    written = plot_runs([load_run(tmp_path / "train"), load_run(tmp_path / "trainer")], tmp_path / "plots")  # scu plot
    assert {p.name for p in written} >= {"s.png", "lambda.png", "bpt.png", "overview.png"}
    for command in (["doctor"], ["validate"]):
        assert main([*command, str(tmp_path / "trainer")]) == 0
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n\n".join(pydoc_topics()[40:46]))
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_base), "--adapter", str(tmp_path / "train"), "--adapter",
                 str(tmp_path / "trainer"), "--data", str(heldout), "--block-size", "64", "--bootstrap", "10"]) == 0
    assert "note" not in capsys.readouterr().err  # both are runs whose cards scu eval updates
    for name in ("train", "trainer"):
        assert (tmp_path / name / "eval_results.json").exists() and (tmp_path / name / "README.md").exists()


def test_auto_stop_ends_a_trainer_run(tiny_base, tmp_path):
    loose = {"auto_stop": True, "window": 20, "lambda_tolerance": 10.0, "s_tolerance": 10.0, "loss_tolerance": 10.0,
             "min_epochs": 0}
    t = trainer(tiny_base, tmp_path / "run", steps=60, equilibrium=loose)
    t.train()
    t.save_model()
    assert t.state.global_step == 20  # the first full window: every condition holds at these tolerances
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["status"] == "stopped at equilibrium" and meta["equilibrium_step"] == 20 and meta["steps"] == 20
    assert rows(tmp_path / "run")[-1]["stop"] is True
    assert [c.outcome for c in validate(tmp_path / "run") if c.name == "finished"] == ["pass"]


def test_trainer_applies_sscu_lr_and_regularization_and_tscu_pacing(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(simplified, "RULES", (Rule("always", "Test", "test", lambda s, c: True,
                                                   {"lr": "lr_increase", "reg": "reg_increase"}),))
    trace = tmp_path / "trace.csv"
    trace.write_text("time,watts,celsius\n0,40,60\n600,40,60\n")
    sscu = {"enabled": True, "control_frequency": 4, "window": 4, "entropy_window": 8, "lr_increase": 1.5,
            "reg_increase": 2.0}
    tscu = {"enabled": True, "power_trace": str(trace), "power_budget_watts": 15.0, "control_frequency": 50.0}
    t = trainer(tiny_base, tmp_path / "run", steps=12, scu={"target_s": 0.05}, sscu=sscu, tscu=tscu)
    t.train()
    t.save_model()
    r = rows(tmp_path / "run")
    assert [x["lr"] / LR for x in r] == pytest.approx([1.0] * 4 + [1.5] * 4 + [2.25] * 4)  # the LR factor, applied
    assert [x["target_s"] for x in r[::4]] == pytest.approx([0.05, 0.025, 0.0125])  # regularization: S*/reg_factor
    assert r[0]["grad_norm"] > 0  # the Trainer's norm reached S-SCU
    actions = json.loads((tmp_path / "run" / "scu_training_metrics.json").read_text())["actions"]
    assert [a["step"] for a in actions] == [4, 8, 12]
    tscu_rows = json.loads((tmp_path / "run" / "tscu_training_metrics.json").read_text())["steps"]
    assert len(tscu_rows) == 12 and tscu_rows[-1]["control_factor"] < 1.0  # 40 W against a 15 W budget: paced
    analysis = json.loads((tmp_path / "run" / "tscu_analysis.json").read_text())
    assert analysis["sensor"] == "replay" and analysis["throttle_events"] == 1


class Scripted:
    """A controller that only returns Actions: λ 3 and S* 0.2 after step 4, LR halved from step 4 on, stop at 6."""

    def __init__(self) -> None:
        self.seen: list[StepTelemetry] = []

    def step(self, telemetry: StepTelemetry) -> Action:
        self.seen.append(telemetry)
        s = telemetry.step
        return Action(lam=3.0 if s == 4 else None, target_s=0.2 if s == 4 else None, lr_factor=0.5 if s >= 4 else 1.0,
                      stop=s == 6, reasons=["scripted stop"] if s == 6 else [])

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_a_controller_that_only_returns_actions_steers_the_loop(tiny_base, pydoc_txt, tmp_path, monkeypatch):
    scripted = Scripted()
    real = session_module.build_controllers
    monkeypatch.setattr(session_module, "build_controllers", lambda cfg, n=None: {**real(cfg, n), "scripted": scripted})
    cfg = config(pydoc_txt, tiny_base, scu={"lambda_min": 1e-4, "lambda_max": 10.0, "lambda_init": 1.0, "target_s": 0.05})
    meta = loop.train(cfg, tmp_path / "run", progress=False)
    r = {x["step"]: x for x in rows(tmp_path / "run")}
    assert r[4]["lambda"] == 3.0 and r[5]["lambda_used"] == 3.0  # λ: the Action's, applied by the loop
    assert r[4]["target_s"] == 0.05 and r[5]["target_s"] == 0.2 and scripted.seen[4].target_s == 0.2  # the PI target
    assert [r[s]["lr"] for s in range(1, 7)] == pytest.approx([LR] * 4 + [LR / 2] * 2)  # from the step after step 4
    assert meta["status"] == "stopped by a controller" and meta["steps"] == 6 and r[6]["reasons"] == ["scripted stop"]
    assert all(t.power_watts is None for t in scripted.seen)  # no T-SCU: no energy meter filled them


def test_tracker_writes_tensorboard_events_for_scu_train_and_the_trainer(tiny_base, pydoc_txt, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(directory: Path) -> dict[str, list[float]]:
        events = sorted(directory.rglob("events.out.tfevents.*"))
        assert events, f"no event file under {directory}"
        out: dict[str, list[float]] = {}
        for path in events:
            acc = EventAccumulator(str(path))
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
        return out

    cfg = config(pydoc_txt, tiny_base, training={"steps": 6, "report_to": ["tensorboard"]})
    loop.train(cfg, tmp_path / "train", progress=False)
    logged = scalars(tmp_path / "train" / "scu")
    keys = {"scu/data_bpt", "scu/param_bpt", "scu/s", "scu/lambda", "scu/lr", "scu/tokens_per_s"}
    assert keys <= set(logged) and len(logged["scu/data_bpt"]) == 6
    assert logged["scu/data_bpt"] == pytest.approx([x["data_bpt"] for x in rows(tmp_path / "train")], rel=1e-6)
    t = trainer(tiny_base, tmp_path / "trainer", steps=8, report_to=["tensorboard"])
    t.train()
    assert {f"train/{k}" for k in keys} <= set(scalars(tmp_path / "trainer"))  # the Trainer's tensorboard, same keys


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_is_the_hand_written_one_to_rounding(schedule):
    """transformers' schedules (cosine, constant) give the LR the loop always had: warmup from 0, decay to 10%."""
    t = build_config({"training": {"learning_rate": 3e-4, "steps": 300, "warmup_steps": 20, "lr_schedule": schedule}}).training

    def before(step: int) -> float:  # scu.driver.scheduled_lr before issue 19
        if step <= t.warmup_steps:
            return t.learning_rate * step / max(1, t.warmup_steps)
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        if t.lr_schedule == "constant":
            return t.learning_rate
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if t.lr_schedule == "cosine" else 1 - progress
        return t.learning_rate * (0.1 + 0.9 * decay)

    now = lr_schedule(t)
    assert [now(s) for s in range(1, 301)] == pytest.approx([before(s) for s in range(1, 301)], rel=1e-12, abs=0)
    assert now(300) == pytest.approx(0.1 * t.learning_rate if schedule != "constant" else t.learning_rate)


def import_cycles(root: Path) -> list[set[str]]:
    """Cycles in the graph of every import statement between scu modules (module level, in functions, TYPE_CHECKING)."""
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                    edges.add(target)
        graph[name] = edges

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in graph}
    cycles = {frozenset({m, *(o for o in reachable[m] if m in reachable[o])}) for m in graph if m in reachable[m]}
    return [set(c) for c in cycles]


def test_no_import_cycles_in_the_package():
    assert import_cycles(Path(session_module.__file__).parent) == []
