"""The loop API's inputs (`SCU.step`): a summed CE and its token count, by keyword; a mean loss is refused."""

from __future__ import annotations

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
