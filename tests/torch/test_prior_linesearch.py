"""`prior_sigma: linesearch`: the first step's change along the data's mean gradient, found by a line search and
spread over the adapter's entries; the model is left as it was; `scu train` records the number and a resume keeps it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scu import ScuError
from scu.data.text import Blocks
from scu.torch.loop import train
from scu.torch.prior_linesearch import LINESEARCH_SCALE, line_search_sigma
from scu.torch.regularizer import LoraPenalty
from tests.torch.hf_common import tiny_peft, token_dataset


def blocks_of(rows: int = 24) -> Blocks:
    ids = np.array(token_dataset(rows=rows)["input_ids"], dtype=np.int64)
    return Blocks.of_ids(ids)


def mean_ce(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))


def test_the_scale_is_the_line_minimum_of_the_first_step_spread_over_the_adapter():
    model = tiny_peft()
    blocks = blocks_of()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sigma, found = line_search_sigma(model, blocks, batch_size=8, draws=0)  # one search, the model's own A
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # left as it was
    params = [p for p in model.parameters() if p.requires_grad]
    assert found["dof"] == sum(p.numel() for p in params)
    assert sigma == pytest.approx(LINESEARCH_SCALE * found["dw_norm"] / math.sqrt(found["dof"]))

    # the step it found is a minimum of the mean CE along -g, to the search's resolution, by an independent evaluation
    ids = torch.from_numpy(blocks.ids)
    model.zero_grad()
    logits = model(input_ids=ids).logits
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    grads = [p.grad.detach().clone() for p in params]
    start = [p.detach().clone() for p in params]
    change = LoraPenalty(model, "delta", 1.0, 1)  # built at B = 0: its sq_norm() is ||dW||^2 from here

    def ce_at(t: float) -> float:
        with torch.no_grad():
            for p, p0, g in zip(params, start, grads):
                p.copy_(p0 - t * g)
        return mean_ce(model, ids)

    t = found["searches"][0]["t_star"]
    at_star, shorter, longer = ce_at(t), ce_at(t / 2), ce_at(2 * t)
    assert at_star < shorter and at_star < longer and at_star < ce_at(0.0)
    ce_at(t)
    with torch.no_grad():
        assert math.sqrt(float(change.sq_norm())) == pytest.approx(found["dw_norm"], rel=1e-5)


def redraw_a(model, seed: int) -> None:
    """Another LoRA seed's A, the same base and zero B."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.uniform_(-1.0, 1.0, generator=g).mul_(p.shape[1] ** -0.5)


def test_the_draws_make_the_scale_independent_of_the_runs_own_a():
    blocks = blocks_of()
    one, other = tiny_peft(), tiny_peft()
    redraw_a(other, seed=7)
    own = [line_search_sigma(m, blocks, batch_size=8, draws=0)[0] for m in (one, other)]
    assert own[0] != pytest.approx(own[1], rel=1e-3)  # the single search follows the run's A
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    (s1, f1), (s2, f2) = (line_search_sigma(m, blocks, batch_size=8, draws=3) for m in (one, other))
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters())  # its own A put back
    assert s1 == pytest.approx(s2, rel=1e-6)
    assert [s["blocks"] for s in f1["searches"]] == [8, 8, 8]  # 24 blocks, each draw on its interleaved third
    norms = [s["dw_norm"] for s in f1["searches"]]
    assert len(set(norms)) == 3  # three different draws
    assert f1["dw_norm"] == pytest.approx(math.prod(norms) ** (1 / 3))
    assert s1 == pytest.approx(LINESEARCH_SCALE * f1["dw_norm"] / math.sqrt(f1["dof"]))
    _, few = line_search_sigma(one, blocks, batch_size=8, max_blocks=2, draws=4)
    assert few["draws"] == len(few["searches"]) == 2  # no more draws than blocks, and the record says how many ran


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_the_draws_come_from_loras_own_init_distribution(init):
    from peft.tuners.lora import LoraLayer

    from scu.torch.prior_linesearch import draw_a, lora_init

    model = tiny_peft(init_lora_weights=init, r=8)
    assert lora_init(model) == init
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    shape = (8, 4096)
    peft_a = torch.nn.Linear(4096, 8, bias=False)
    layer.lora_A["default"] = peft_a
    layer.reset_lora_parameters("default", init)  # PEFT's own draw, at a size where moments are sharp
    ours = draw_a(torch.Size(shape), init, torch.Generator().manual_seed(3))
    theirs = peft_a.weight.detach()
    assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.02)
    assert ours.abs().max().item() == pytest.approx(theirs.abs().max().item(), rel=0.2 if init == "gaussian" else 0.01)


def test_a_trained_adapter_is_refused_with_the_fix_named():
    model = tiny_peft()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    with pytest.raises(ScuError, match="zero start.*set scu.prior_sigma to a number") as e:
        line_search_sigma(model, blocks_of(), batch_size=8)
    assert "\n" not in str(e.value)


def test_scu_train_records_the_number_and_a_resume_keeps_it(make_cfg, tmp_path, capsys):
    from scu.driver import Callback

    class StopAt(Callback):
        def on_step_end(self, run, row):
            return run.state.step >= 2

    cfg = make_cfg(scu__target_s="auto", scu__prior_sigma="linesearch", training__steps=4,
                   training__checkpoint_every=1)
    out = tmp_path / "run"
    first = train(cfg, out, progress=False, callbacks=[StopAt()])
    assert "prior_sigma linesearch: sigma" in capsys.readouterr().out
    sigma = first["prior"]["sigma"]
    assert isinstance(sigma, float) and sigma > 0
    meta = train(cfg, out, resume=True, progress=False)
    assert "prior_sigma linesearch" not in capsys.readouterr().out  # read from the checkpoint, not searched again
    assert meta["status"] == "completed" and meta["prior"]["sigma"] == sigma
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["scu"]["prior_sigma"] == sigma


def test_backends_that_do_not_search_refuse_it():
    with pytest.raises(ScuError, match="linesearch is measured by `scu train`"):
        LoraPenalty(tiny_peft(), "delta", "linesearch", 1000)
