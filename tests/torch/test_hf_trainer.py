"""SCUTrainer / SCUSFTTrainer: the gradient is CE + lambda * dpenalty under every accumulation convention,
DataBPT is the token-weighted CE, the numbers reach Trainer.log, metadata.json on every save, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from hf_common import Capture, penalty_share, reference_gradients, tiny_peft, token_dataset, trainer_args
from transformers import TrainerCallback

from scu import ScuError
from scu.torch.hf import SCUTrainer, count_label_tokens

FIXED = {"lambda_init": 1.0, "lambda_min": 1.0, "lambda_max": 1.0}
TARGET_AUTO = 0.05


def _check_step(trainer, cap, rows, step, fresh=tiny_peft, **reference):
    """The captured gradients equal CE gradient + lambda * dpenalty; the logged DataBPT is the token-weighted CE."""
    ref_grads, data_bpt = reference_gradients(fresh(), cap.params[step], rows, cap.lam[step],
                                              trainer.scu.tokens_per_epoch, **reference)
    got = cap.grads[step]
    assert set(got) == set(ref_grads) and len(got) == 12
    for name, g in got.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=2e-4, atol=1e-7)
    # the penalty is a visible part of the gradient, so leaving it out (or scaling it wrongly) fails
    largest = max(g.abs().max().item() for g in got.values())
    assert penalty_share(fresh(), cap.params[step], cap.lam[step], trainer.scu.tokens_per_epoch) > 0.05 * largest
    logged = next(r for r in trainer.state.log_history if r.get("step") == step)
    assert logged["scu/data_bpt"] == pytest.approx(data_bpt, rel=1e-5)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_gradient_is_ce_gradient_plus_lambda_dpenalty(tmp_path, accumulation):
    ds = token_dataset()
    cap = Capture({2})
    trainer = SCUTrainer(
        model=tiny_peft(), train_dataset=ds, callbacks=[cap], scu=FIXED,
        args=trainer_args(tmp_path, per_device_train_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation),
    )
    cap.scu = trainer.scu
    assert trainer.model_accepts_loss_kwargs  # the num_items_in_batch convention (loss already scaled for GA)
    trainer.train()
    _check_step(trainer, cap, ds.select(range(4, 8)), 2)  # B moved off 0 in step 1: the penalty gradient is non-zero


def test_trainer_gradient_when_trainer_divides_the_loss_by_accumulation_steps(tmp_path):
    """A model that ignores num_items_in_batch: Trainer divides each micro-batch mean by the accumulation steps."""
    ds = token_dataset()
    cap = Capture({2})
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=ds, callbacks=[cap], scu=FIXED,
                         args=trainer_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2))
    cap.scu = trainer.scu
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    _check_step(trainer, cap, ds.select(range(4, 8)), 2, micro_batches=2, token_weighted=False)


def test_sft_trainer_gradient_and_data_bpt(tmp_path, tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from scu.torch.hf import SCUSFTTrainer

    def model():
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), lora)

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    ds = token_dataset(vocab=len(tokenizer))
    cap = Capture({2})
    common = trainer_args(tmp_path).to_dict()
    args = SFTConfig(**{**{k: common[k] for k in ("output_dir", "report_to", "use_cpu", "logging_steps", "save_strategy",
                                                   "disable_tqdm", "train_sampling_strategy", "lr_scheduler_type", "seed")},
                        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 2,
                        "learning_rate": 1e-2, "max_grad_norm": 0.0, "bf16": False})  # TRL defaults to bf16 autocast
    trainer = SCUSFTTrainer(model=model(), args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[cap],
                            scu=FIXED)
    cap.scu = trainer.scu
    trainer.train()
    _check_step(trainer, cap, ds.select(range(4, 8)), 2, fresh=model)
    logged = next(r for r in trainer.state.log_history if r.get("step") == 2)
    assert "mean_token_accuracy" in logged  # TRL's own metrics still flow through the same log


class Seen(TrainerCallback):
    """What a report_to integration receives: the logs passed to on_log."""

    def __init__(self) -> None:
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_logs_reach_report_to_and_metadata_is_written_on_every_save(tmp_path):
    seen = Seen()
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(), callbacks=[seen], scu={"target_s": 0.02},
                         args=trainer_args(tmp_path, max_steps=6, logging_steps=2, save_strategy="steps", save_steps=3))
    trainer.train()
    trainer.save_model()
    training_logs = [r for r in seen.logs if "loss" in r]
    assert len(training_logs) == 3
    for r in training_logs:
        assert {"scu/data_bpt", "scu/param_bpt", "scu/s", "scu/lambda", "scu/lr", "scu/tokens_per_s"} <= set(r)
        s, param, data = r["scu/s"], r["scu/param_bpt"], r["scu/data_bpt"]
        assert s == pytest.approx(param / (param + data), rel=0.5)  # means of 2 steps
    assert training_logs[-1]["scu/lambda"] == trainer.scu.lam
    for directory in (tmp_path / "checkpoint-3", tmp_path / "checkpoint-6", tmp_path):
        meta = json.loads((directory / "metadata.json").read_text())
        assert meta["target_s"] == 0.02 and meta["prior"]["type"] == "delta"
        assert (directory / "scu_state.json").exists()
    assert json.loads((tmp_path / "checkpoint-3" / "metadata.json").read_text())["steps"] == 3
    final = json.loads((tmp_path / "metadata.json").read_text())
    assert final["status"] == "completed" and final["final_lambda"] == trainer.scu.lam


@pytest.mark.parametrize("law", ["pi", "auto"])
def test_resume_from_checkpoint_reproduces_lambda_trajectory(tmp_path, law):
    def run(out, resume=None):
        args = trainer_args(out, max_steps=8, save_strategy="steps", save_steps=4, train_sampling_strategy="random",
                            learning_rate=3e-3)
        trainer = SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(), args=args,
                             scu={"target_s": 0.1, "law": law})
        trainer.train(resume_from_checkpoint=resume)
        return {r["step"]: r["scu/lambda"] for r in trainer.state.log_history if "scu/lambda" in r}

    full = run(tmp_path / "full")
    # pi moves lambda every step; auto holds it at its floor until S nears S* (a bumpless start), then moves it
    assert len(set(full.values())) == 8 if law == "pi" else len(set(full.values())) > 3
    import shutil

    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "cut" / "checkpoint-4")
    resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-4"))
    assert resumed == full  # steps 1-4 from the checkpoint's trainer_state.json, 5-8 trained after the resume


def test_resume_refuses_a_checkpoint_without_scu_state(tmp_path):
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(), args=trainer_args(tmp_path, max_steps=4))
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(ScuError, match="scu_state.json"):
        trainer.scu.load(tmp_path / "checkpoint-2")


def test_refuses_deepspeed_zero3_parameters(tmp_path):
    model = tiny_peft()
    next(model.parameters()).ds_numel = 0  # what ZeRO-3 partitioning attaches to every parameter
    with pytest.raises(ScuError, match="ZeRO-3"):
        SCUTrainer(model=model, train_dataset=token_dataset(), args=trainer_args(tmp_path))


def test_tokens_per_epoch_counts_loss_tokens_after_the_shift():
    ds = token_dataset().shuffle(seed=0).select(range(20))  # through an indices mapping, like a shuffled split
    expected = sum(sum(1 for t in row[1:] if t != -100) for row in ds["labels"])
    assert count_label_tokens(ds) == expected < 20 * 15
    assert count_label_tokens(ds.remove_columns("labels")) == 20 * 15
    with pytest.raises(ScuError, match="tokens_per_epoch"):
        count_label_tokens([{"input_ids": [1, 2]}])


@pytest.mark.parametrize("scu, message", [({"target_sx": 0.1}, "scu.target_sx: unknown key"),
                                          ({"target_s": 2.0}, "target_s must be in"),
                                          ({"enabled": False}, "plain Trainer")])
def test_bad_scu_settings_are_one_line_errors(tmp_path, scu, message):
    with pytest.raises(ScuError, match=message):
        SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(), args=trainer_args(tmp_path), scu=scu)


def test_auto_stop_leaves_the_weights_averaged_over_the_window_in_the_model(tmp_path):
    class WeightsAtStepEnd(TrainerCallback):  # runs before SCU's own callback (added last), so sees each step's weights
        states: list[dict[str, torch.Tensor]] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.states.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    rec = WeightsAtStepEnd()
    always = {"auto_stop": True, "window": 20, "lambda_tolerance": 1e9, "s_tolerance": 1e9, "loss_tolerance": 1e9,
              "min_epochs": 0}
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(), callbacks=[rec], scu={"target_s": 0.1},
                         equilibrium=always, args=trainer_args(tmp_path, max_steps=40, learning_rate=3e-3))
    trainer.train()
    assert trainer.state.global_step == 20 == len(rec.states)  # the detector fired once its window was full
    expected = {n: t.clone() for n, t in rec.states[0].items()}
    for state in rec.states[1:]:
        for n, t in state.items():
            expected[n] += (2 / 21) * (t - expected[n])
    now = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    for n, p in now.items():
        torch.testing.assert_close(p, expected[n], rtol=1e-5, atol=1e-7)
    assert max(float((rec.states[-1][n] - now[n]).abs().max()) for n in now) > 1e-4  # not the last step's weights
    trainer.save_model()
    assert json.loads((tmp_path / "metadata.json").read_text())["weights_averaged_over"] == 20


class Moments(Capture):
    """Capture, plus AdamW's bias-corrected v_hat before the step (None before the first)."""

    def __init__(self, steps, scu=None):
        super().__init__(steps, scu)
        self.v_hat = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        super().on_pre_optimizer_step(args, state, control, model=model, **kwargs)
        step = state.global_step + 1
        if step in self.steps:
            beta2, names = optimizer.param_groups[0]["betas"][1], dict(model.named_parameters())
            self.v_hat[step] = {n: optimizer.state[names[n]]["exp_avg_sq"] / (1 - beta2 ** float(optimizer.state[names[n]]["step"]))
                                for n in self.params[step]}


def test_decoupled_penalty_step_and_balance_follow_scu_train_formulas(tmp_path):
    """`penalty_step: decoupled` in the Trainer: the optimizer sees the data's gradient alone, and the penalty moves
    the weights by lr * lam * g_p / sqrt(v_hat + (lam g_p / c)^2) before AdamW's step, which a plain Trainer on the
    same data shows as the only difference after two steps; the recorded sensitivity is that step's derivative."""
    from transformers import Trainer

    lam, lr, bound = 0.8, 1e-2, 2.0
    ds = token_dataset()
    cap = Moments({2})
    scu = {"lambda_init": lam, "lambda_min": lam, "lambda_max": lam, "penalty_step": "decoupled",
           "penalty_step_bound": bound}
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=ds, callbacks=[cap], scu=scu, args=trainer_args(tmp_path / "scu"))
    cap.scu = trainer.scu
    assert trainer.scu.config.penalty_step == "decoupled"
    trainer.train()
    plain_model = tiny_peft()
    Trainer(model=plain_model, train_dataset=ds, args=trainer_args(tmp_path / "plain")).train()

    # step 2's gradients are the data's alone (the penalty is not in the loss), at the weights both runs share
    ref, _ = reference_gradients(tiny_peft(), cap.params[2], ds.select(range(4, 8)), 0.0, trainer.scu.tokens_per_epoch)
    for name, g in cap.grads[2].items():
        torch.testing.assert_close(g, ref[name], rtol=2e-4, atol=1e-7)
    with_penalty, _ = reference_gradients(tiny_peft(), cap.params[2], ds.select(range(4, 8)), 1.0,
                                          trainer.scu.tokens_per_epoch)
    g_p = {n: (with_penalty[n] - ref[n]).double() for n in ref}  # the penalty's own gradient at lambda 1 (nats)
    v = {n: t.double() for n, t in cap.v_hat[2].items()}
    step = {n: lr * lam * g_p[n] / ((v[n] + (lam * g_p[n] / bound) ** 2).sqrt() + 1e-8) for n in g_p}
    assert max(s.abs().max().item() for s in step.values()) > 1e-4  # large enough to be seen in the weights
    got, plain = dict(trainer.model.named_parameters()), dict(plain_model.named_parameters())
    for name in step:
        torch.testing.assert_close((plain[name] - got[name]).double(), step[name], rtol=1e-3, atol=1e-8)

    rows = [json.loads(line) for line in (tmp_path / "scu" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["penalty_sensitivity"] == 0.0  # no v_hat before AdamW's first step: no penalty step either
    sensitivity = lr * sum((g_p[n] ** 2 * v[n] / (v[n] + (lam * g_p[n] / bound) ** 2) ** 1.5).sum().item() for n in g_p)
    assert rows[1]["penalty_sensitivity"] == pytest.approx(sensitivity, rel=1e-3)


def test_the_default_law_auto_runs_the_balance_set_in_the_trainer_and_settles_at_a_reachable_target(tmp_path):
    """With torch's AdamW in one process, SCUTrainer runs `law: auto` as `scu train` does (the balance law and the
    decoupled penalty step), and the smoothed S holds the target over the second half of the run."""
    from scu.config.schema import AUTO_BALANCE

    target, steps = TARGET_AUTO, 150
    args = trainer_args(tmp_path, max_steps=steps, learning_rate=3e-3, train_sampling_strategy="random")
    trainer = SCUTrainer(model=tiny_peft(), train_dataset=token_dataset(rows=64), args=args, scu={"target_s": target},
                         tokens_per_epoch=4096)
    assert {k: getattr(trainer.scu.config, k) for k in AUTO_BALANCE} == AUTO_BALANCE
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["penalty_sensitivity"] > 0 for r in rows[1:])
    s_hat = [r["s_hat"] for r in rows[steps // 2:]]
    within = sum(abs(s - target) <= 0.1 * target for s in s_hat) / len(s_hat)
    assert within >= 0.9 and abs(sum(s_hat) / len(s_hat) - target) <= 0.05 * target, (within, s_hat[-5:])


def test_auto_runs_pi_where_the_trainer_cannot_read_adams_moments(tmp_path):
    """An optimizer that is not torch's Adam(W) has no v_hat to read: auto runs `pi` there, and `law: balance`
    asked for by name is a one-line error."""
    model = tiny_peft()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-2)
    kwargs = dict(model=model, train_dataset=token_dataset(), args=trainer_args(tmp_path), optimizers=(sgd, None))
    assert SCUTrainer(**kwargs, scu={"target_s": 0.1}).scu.config.law == "pi"
    with pytest.raises(ScuError, match="law: balance needs the gradient balance"):
        SCUTrainer(**kwargs, scu={"target_s": 0.1, "law": "balance"})
