"""The loop API's inputs (`SCU.step`): a summed CE and its token count, by keyword; a mean loss is refused."""

from __future__ import annotations

import math

import pytest
import torch

from scu import ScuError
from scu.config.schema import build_config
from scu.session import ControlSession, StepResult
from scu.torch.hf import SCU
from scu.torch.regularizer import LoraPenalty
from tests.torch.hf_common import tiny_peft

SCU_KEYS = {"target_s": 0.1}
TOKENS_PER_EPOCH = 10_000


def move_b(model) -> None:
    """Move the B factors off their initial values, as training does, so ParamBPT (and S) are not 0."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))


def test_summed_ce_gives_the_s_and_lambda_scu_train_records():
    model = tiny_peft()
    cfg = build_config({"scu": SCU_KEYS})
    scu = SCU(model, TOKENS_PER_EPOCH, SCU_KEYS)
    penalty = LoraPenalty(model, cfg.scu.prior, cfg.scu.prior_sigma, TOKENS_PER_EPOCH)  # what scu train builds
    move_b(model)
    session = ControlSession(cfg, TOKENS_PER_EPOCH)  # what scu train's loop steps
    param_bpt = float(penalty().detach())
    for ce_sum, tokens in ((4100.0, 1000), (3900.0, 1000), (2000.0, 600)):
        scu.penalty()
        logs = scu.step(ce_sum=torch.tensor(ce_sum), tokens=torch.tensor(tokens))
        row = session.step(StepResult(ce_sum, param_bpt, 1.0, tokens), session.lam, 1e-3, 0.1)
        assert logs["data_bpt"] == pytest.approx(row["data_bpt"], rel=1e-12)
        assert logs["param_bpt"] == pytest.approx(row["param_bpt"], rel=1e-6)
        assert logs["s"] == pytest.approx(row["s"], rel=1e-6) and 0.01 < logs["s"] < 0.99
        assert logs["lambda"] == pytest.approx(row["lambda"], rel=1e-6)


def test_mean_loss_is_refused_with_the_fix_named():
    scu = SCU(tiny_peft(), TOKENS_PER_EPOCH, SCU_KEYS)
    scu.penalty()
    with pytest.raises(ScuError, match=r"mean loss; pass ce_sum=loss \* n_tokens") as e:
        scu.step(ce_sum=torch.tensor(4.1), tokens=torch.tensor(1000))  # the mean CE of 1000 tokens
    assert "\n" not in str(e.value)
    assert scu.session.state.step == 0  # nothing reached the controllers


def test_positional_numbers_are_refused_naming_the_keywords():
    scu = SCU(tiny_peft(), TOKENS_PER_EPOCH, SCU_KEYS)
    scu.penalty()
    with pytest.raises(ScuError, match=r"keywords only: scu.step\(ce_sum=") as e:
        scu.step(4100.0, 1000)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("ce_sum", "tokens", "message"), [
    (float("nan"), 1000, "the loss diverged; lower the learning rate"),
    (-5.0, 1000, r"not a cross-entropy \(>= 0 nats\)"),
    (10.0, 0, "no tokens in the loss"),
])
def test_impossible_step_numbers_are_one_line_errors(ce_sum, tokens, message):
    scu = SCU(tiny_peft(), TOKENS_PER_EPOCH, SCU_KEYS)
    scu.penalty()
    with pytest.raises(ScuError, match=message) as e:
        scu.step(ce_sum=ce_sum, tokens=tokens)
    assert "\n" not in str(e.value)


def test_a_low_loss_after_the_first_step_is_accepted():
    """A long run may legitimately drive its training CE below the first-step floor."""
    scu = SCU(tiny_peft(), TOKENS_PER_EPOCH, SCU_KEYS)
    scu.penalty()
    scu.step(ce_sum=4100.0, tokens=1000)
    scu.penalty()
    assert scu.step(ce_sum=10.0, tokens=1000)["data_bpt"] == pytest.approx(0.01 / 0.6931471805599453)


def loop_run(model, scu, optimizer, steps: int, rows: int = 4, clip: float = 0.0) -> list[dict]:
    """The documented loop: the penalty in the first micro-batch's loss, optimizer.step(), then scu.step()."""
    import torch.nn.functional as F

    from tests.torch.hf_common import token_dataset

    data = token_dataset(rows=64)
    ids, labels = torch.tensor(data["input_ids"]), torch.tensor(data["labels"])
    out = []
    for step in range(steps):
        lo = (step * rows) % len(ids)
        batch, target = ids[lo : lo + rows], labels[lo : lo + rows]
        logits = model(input_ids=batch).logits
        ce_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1), target[:, 1:].flatten(), ignore_index=-100, reduction="sum")
        n = int((target[:, 1:] != -100).sum())
        loss = ce_sum / n + (scu.penalty() if scu is not None else 0.0)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scu is not None:
            out.append(scu.step(ce_sum=ce_sum.detach(), tokens=n))
    return out


def adamw(model, lr: float = 1e-2):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def test_with_adamw_given_the_default_runs_the_balance_set_and_the_decoupled_step_in_the_optimizers_hook():
    """Given torch's AdamW, `law: auto` resolves to the balance set; the penalty leaves the loss (penalty() is 0)
    and instead moves the weights right before AdamW's step by lr * lam * g_p / sqrt(v_hat + (lam g_p / c)^2):
    after two steps the weights differ from a plain loop's on the same data by exactly that step."""
    from scu.config.schema import AUTO_BALANCE

    model = tiny_peft()
    opt = adamw(model)
    scu = SCU(model, TOKENS_PER_EPOCH, SCU_KEYS, optimizer=opt)
    assert {k: getattr(scu.config, k) for k in AUTO_BALANCE} == AUTO_BALANCE
    assert SCU(tiny_peft(), TOKENS_PER_EPOCH, SCU_KEYS).config.law == "pi"  # no optimizer: no moments to read

    lam, lr, bound = 0.8, 1e-2, 2.0
    fixed = {"lambda_init": lam, "lambda_min": lam, "lambda_max": lam, "penalty_step": "decoupled",
             "penalty_step_bound": bound}
    model, plain = tiny_peft(), tiny_peft()
    opt, plain_opt = adamw(model, lr), adamw(plain, lr)
    scu = SCU(model, TOKENS_PER_EPOCH, fixed, optimizer=opt)
    penalty = LoraPenalty(model, "delta", 0.01, TOKENS_PER_EPOCH)  # a second penalty, to take g_p by autograd
    loop_run(model, scu, opt, 1)
    loop_run(plain, None, plain_opt, 1)
    named = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items() if p.requires_grad}
    beta2 = opt.param_groups[0]["betas"][1]
    v = {n: (opt.state[named[n]]["exp_avg_sq"] / (1 - beta2)).double() for n in before}  # after one AdamW step
    g_p = dict(zip(before, torch.autograd.grad(penalty() * math.log(2), [named[n] for n in before])))
    step = {n: lr * lam * g_p[n].double() / ((v[n] + (lam * g_p[n].double() / bound) ** 2).sqrt() + 1e-8) for n in before}
    assert scu.penalty().item() == 0.0 and scu.penalty_grad is not None
    scu._parts = None  # that call only showed the value; the loop below takes its own
    loop_run(model, scu, opt, 1)
    loop_run(plain, None, plain_opt, 1)
    assert max(s.abs().max().item() for s in step.values()) > 1e-4
    for name, p in plain.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close((p - named[name]).double(), step[name], rtol=1e-3, atol=1e-8)


def test_with_adamw_given_the_default_settles_at_a_reachable_target():
    target, steps = 0.05, 150
    model = tiny_peft()
    opt = adamw(model, 3e-3)
    scu = SCU(model, 4096, {"target_s": target}, optimizer=opt)
    rows = loop_run(model, scu, opt, steps, clip=1.0)
    assert all(r["lambda"] > 0 for r in rows)
    s_hat = [r["s_hat"] for r in rows[steps // 2:]]
    within = sum(abs(s - target) <= 0.1 * target for s in s_hat) / len(s_hat)
    assert within >= 0.9 and abs(sum(s_hat) / len(s_hat) - target) <= 0.05 * target, (within, s_hat[-5:])


def test_an_optimizer_other_than_adam_leaves_auto_at_pi():
    model = tiny_peft()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-2)
    assert SCU(model, TOKENS_PER_EPOCH, SCU_KEYS, optimizer=sgd).config.law == "pi"
    with pytest.raises(ScuError, match="law: balance needs the gradient balance"):
        SCU(model, TOKENS_PER_EPOCH, {**SCU_KEYS, "law": "balance"}, optimizer=sgd)
