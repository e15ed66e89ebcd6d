"""ParamBPT is correct, and the penalty really changes the gradient, by exactly lambda * dpenalty."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from scu.core.bits import LN2, param_bpt
from scu.torch.loop import accumulate_gradients, gradient_balance, setup, trainable
from scu.torch.regularizer import LoraPenalty

SIGMA, N = 0.01, 10_000


def tiny_peft(init=True, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=init)
    return get_peft_model(LlamaForCausalLM(cfg), lora)


def lora_modules(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("prior", ["delta", "factors"])
def test_param_bpt_is_exactly_zero_at_step_zero(prior):
    assert LoraPenalty(tiny_peft(), prior, SIGMA, N)().item() == 0.0


def test_raw_prior_is_dominated_by_random_init_of_A():
    model = tiny_peft()
    expected = sum(m.lora_A["default"].weight.pow(2).sum().item() for m in lora_modules(model))
    got = LoraPenalty(model, "raw", SIGMA, N)().item()
    assert got == pytest.approx(expected / (2 * SIGMA**2 * LN2) / N, rel=1e-5)
    assert got > 0


@pytest.mark.parametrize("prior", ["delta", "factors", "raw"])
def test_param_bpt_matches_closed_form_on_hand_made_tensors(prior):
    """For `delta` this checks the batched Gram identity against the materialized ||s B A||^2."""
    model = tiny_peft()
    penalty = LoraPenalty(model, prior, SIGMA, N)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in lora_modules(model):
            m.lora_A["default"].weight.add_(torch.randn(m.lora_A["default"].weight.shape, generator=g) * 0.01)
            m.lora_B["default"].weight.copy_(torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.01)
    sq = 0.0
    for m, pair in zip(lora_modules(model), penalty.pairs):
        A, B, s = m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"]
        if prior == "delta":
            sq += (s * B @ A).pow(2).sum().item()
        elif prior == "factors":
            sq += (A - pair.A0).pow(2).sum().item() + B.pow(2).sum().item()
        else:
            sq += A.pow(2).sum().item() + B.pow(2).sum().item()
    assert penalty().item() == pytest.approx(sq / (2 * SIGMA**2 * math.log(2)) / N, rel=1e-5)


def test_delta_from_nonzero_init_measures_the_change():
    model = tiny_peft(init=False)  # A and B both random: the initial dW is not zero
    penalty = LoraPenalty(model, "delta", SIGMA, N)
    assert penalty().item() == pytest.approx(0.0, abs=1e-6)
    m = lora_modules(model)[0]
    before = (m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight).detach().clone()
    with torch.no_grad():
        m.lora_B["default"].weight.mul_(1.5)
    after = m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight
    expected = param_bpt((after - before).pow(2).sum().item(), SIGMA, N)
    assert penalty().item() == pytest.approx(expected, rel=1e-4)


def _lora_grads(run, lam):
    run.state.cursor = 0
    run.optimizer.zero_grad(set_to_none=True)
    accumulate_gradients(run, lam)
    return {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}


def test_penalty_gradient_is_lambda_times_analytic_derivative(make_cfg, tmp_path):
    run = setup(make_cfg(training__gradient_accumulation=2, scu__law="pi"), tmp_path / "run")  # the penalty in the loss
    with torch.no_grad():  # move off the B = 0 start so every term of the derivative is non-zero
        for p in run.penalty.pairs:
            p.B.normal_(std=0.02)
    lam = 3.0
    g0, g1 = _lora_grads(run, 0.0), _lora_grads(run, lam)
    N_ = run.tokens_per_epoch
    changed = 0
    for name, module in run.model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        A, B, s = module.lora_A["default"].weight, module.lora_B["default"].weight, module.scaling["default"]
        dW = s * B @ A
        # d/dB [lam * ln2 * s^2 ||BA||^2 / (2 sigma^2 ln2 N)] = lam * s * dW A^T / (sigma^2 N); same for A.
        dB = lam * s * dW @ A.t() / (SIGMA**2 * N_)
        dA = lam * s * B.t() @ dW / (SIGMA**2 * N_)
        for suffix, expected in (("lora_B.default.weight", dB), ("lora_A.default.weight", dA)):
            key = next(k for k in g0 if k.endswith(f"{name}.{suffix}"))
            torch.testing.assert_close(g1[key] - g0[key], expected.detach(), rtol=1e-4, atol=1e-9)
            assert expected.abs().max() > 1e-3 * g0[key].abs().max()
            changed += 1
    assert changed >= 4


def test_gradient_balance_separates_the_data_gradient_from_the_penalty(make_cfg, tmp_path):
    """law: balance reads -<g_d, g_p> and ||g_p||^2 off one backward at the step's lambda; both must equal what
    separate backwards of the data loss alone and of the penalty alone give."""
    run = setup(make_cfg(training__gradient_accumulation=2, scu__law="balance"), tmp_path / "run")
    with torch.no_grad():
        for p in run.penalty.pairs:
            p.B.normal_(std=0.02)
    data = _lora_grads(run, 0.0)
    penalty = {k: g - data[k] for k, g in _lora_grads(run, 1.0).items()}  # d(ln2 * ParamBPT)/dtheta
    run.state.cursor = 0
    run.optimizer.zero_grad(set_to_none=True)
    *_, penalty_grad = accumulate_gradients(run, 3.0)
    pull, grad_sq, scaled = gradient_balance(run.model, run.optimizer, penalty_grad, 3.0).tolist()
    assert scaled == 0.0  # no AdamW state before the first step
    expected_pull = -sum((data[k].double() * penalty[k].double()).sum().item() for k in data)
    expected_sq = sum(penalty[k].double().pow(2).sum().item() for k in data)
    assert expected_sq > 0 and expected_pull != 0
    assert grad_sq == pytest.approx(expected_sq, rel=1e-4)
    assert pull == pytest.approx(expected_pull, rel=1e-3)
    # after a step, <g_p, D g_p> with D = 1 / (sqrt(v_hat) + eps) from AdamW's own state
    run.optimizer.step()
    state = [run.optimizer.state[p] for p in trainable(run.model)]
    _, _, scaled = gradient_balance(run.model, run.optimizer, penalty_grad, 3.0).tolist()
    beta2, eps = run.optimizer.param_groups[0]["betas"][1], run.optimizer.param_groups[0]["eps"]
    expected_scaled = sum((g.double() ** 2 / ((st["exp_avg_sq"].double() / (1 - beta2)).sqrt() + eps)).sum().item()
                          for g, st in zip(penalty_grad, state) if g is not None)
    assert expected_scaled > 0
    assert scaled == pytest.approx(expected_scaled, rel=1e-4)
    # other laws pay nothing for it
    plain = setup(make_cfg(scu__law="pi"), tmp_path / "plain")
    assert accumulate_gradients(plain, 3.0)[3] is None


def test_auto_sigma_is_the_rms_of_the_adapted_base_weights_and_scales_the_gradient():
    """prior_sigma: auto measures the frozen weights under the LoRA layers; the penalty's gradient is then
    exactly (SIGMA / rms)^2 times the one at prior_sigma SIGMA."""
    model = tiny_peft()
    bases = [m.get_base_layer().weight for m in lora_modules(model)]
    rms = math.sqrt(sum(w.pow(2).sum().item() for w in bases) / sum(w.numel() for w in bases))
    auto, fixed = LoraPenalty(model, "delta", "auto", N), LoraPenalty(model, "delta", SIGMA, N)
    assert auto.sigma == pytest.approx(rms, rel=1e-6) and 0.001 < rms < 1
    B = lora_modules(model)[0].lora_B["default"].weight
    with torch.no_grad():
        B.copy_(torch.randn(B.shape, generator=torch.Generator().manual_seed(3)) * 0.01)  # a non-zero change
    grads = []
    for penalty in (auto, fixed):
        B.grad = None
        penalty().backward()
        grads.append(B.grad.clone())
    assert torch.allclose(grads[0], grads[1] * (SIGMA / rms) ** 2, rtol=1e-5, atol=0)
    assert grads[1].abs().max() > 0


def _two_steps(make_cfg, out, penalty_step: str, lam: float, bound: float = 1.0,
               settled_bound: float | None = None, settled: bool = False) -> dict[str, torch.Tensor]:
    """The trainable weights after a step at lambda 0 and a second at `lam`, from one seed and one data order.
    `settled_bound`: scu.penalty_step_bound_settled, with the run's state `settled` as the law last reported it."""
    from scu.torch.loop import train_step

    extra = {"scu__penalty_step_bound": bound} if bound != 1.0 else {}
    if settled_bound is not None:
        extra |= {"scu__penalty_step_bound_settled": settled_bound, "scu__law": "balance"}
    run = setup(make_cfg(scu__penalty_step=penalty_step, **extra), out)
    run.state.settled = settled
    with torch.no_grad():
        for p in run.penalty.pairs:
            p.B.normal_(std=0.02, generator=torch.Generator().manual_seed(5))  # a change the penalty pulls on
    train_step(run, 0.0, 1e-3)
    scales = None
    if penalty_step == "decoupled":  # the second step's penalty gradient and AdamW's v_hat before that step
        pbpt = run.penalty()
        grads = torch.autograd.grad(pbpt * LN2, trainable(run.model), allow_unused=True)
        beta2 = run.optimizer.param_groups[0]["betas"][1]
        states = [run.optimizer.state.get(p, {}) for p in trainable(run.model)]
        scales = [(g, s["exp_avg_sq"].double() / (1 - beta2 ** float(s["step"])) if "exp_avg_sq" in s else None)
                  for g, s in zip(grads, states)]
    train_step(run, lam, 1e-3)
    weights = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    return weights, scales


@pytest.mark.parametrize("bound, settled_bound, settled", [(1.0, None, False), (2.0, None, False), (1.0, 2.0, True),
                                                            (2.0, 1.0, False)])
def test_a_decoupled_penalty_step_moves_each_weight_by_its_own_bounded_step(make_cfg, tmp_path, bound, settled_bound,
                                                                           settled):
    """penalty_step: decoupled leaves AdamW's step to the data alone (the same as lambda 0), then moves every weight
    by exactly -lr * lam * g_p / sqrt(v_hat + (lam g_p / c)^2), v_hat AdamW's before the step, c the bound: no momentum
    between them, and never more than c * lr where the penalty dominates. With penalty_step_bound_settled, c is that
    bound once the law has settled, and penalty_step_bound before."""
    plain, _ = _two_steps(make_cfg, tmp_path / "plain", "loss", 0.0)
    decoupled, scales = _two_steps(make_cfg, tmp_path / "decoupled", "decoupled", 2.0, bound, settled_bound, settled)
    bound = settled_bound if settled else bound
    moved = 0
    for (name, w), (g, v) in zip(decoupled.items(), scales):
        step = 0.0 if g is None or v is None else 2.0 * g.double() / ((v + (2.0 * g.double() / bound) ** 2).sqrt() + 1e-8)
        expected = plain[name].double() - 1e-3 * step
        assert (w.double() - plain[name].double()).abs().max() <= bound * 1e-3 * (1 + 1e-4)  # bounded by c * lr
        torch.testing.assert_close(w.double(), expected, rtol=1e-5, atol=1e-8)  # float32 weights
        moved += int((expected - plain[name].double()).abs().max().item() > 1e-5)  # far above the tolerance
    assert moved >= 4


class _Entry(torch.nn.Module):
    """One weight, as one LoRA entry seen by the penalty: penalty theta^2 / 2, so g_p = theta."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor([0.05]))


def _pushed_entry(bound: float, lam: float, steps: int = 200, lr: float = 1e-3) -> float:
    """|theta| after AdamW steps on a data gradient that always pushes it up, each followed by the decoupled step."""
    from scu.torch.loop import adam_second_moments, decoupled_penalty_step

    model = _Entry()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        moments = adam_second_moments(opt, trainable(model))  # before the step, as train_step reads them
        model.theta.grad = torch.tensor([-1.0])  # the data's push: AdamW's step is lr, every step
        decoupled_penalty_step(model, opt, [model.theta.detach().clone()], moments, lam, lr, bound)
        opt.step()
    return abs(model.theta.item())


def test_above_bound_one_a_large_lambda_shrinks_an_entry_the_data_keeps_pushing():
    """A data gradient that never changes sign gets AdamW's full step, lr. At bound 1 the penalty step is below lr
    however large lambda is, so the entry still grows; at bound 2 the same lambda pulls it to zero."""
    start = 0.05
    assert _pushed_entry(1.0, lam=1e6) > start  # the data's step wins: lambda has lost control
    assert _pushed_entry(2.0, lam=1e6) < 3e-3  # within one step (c * lr + lr) of zero: the penalty won
    assert _pushed_entry(2.0, lam=0.0) == pytest.approx(start + 200 * 1e-3, rel=1e-3)  # lambda 0: the data's steps only


@pytest.mark.parametrize("bound", [1.0, 3.0])
def test_the_decoupled_sensitivity_is_the_derivative_of_the_penalty_step(bound):
    """gradient_balance(decoupled=True)'s third entry, times lr, is d/d lambda of <g_p, the step's move>: the rate the
    controller's plan divides by (central difference, on weights and moments of mixed sizes)."""
    from scu.torch.loop import decoupled_penalty_step

    model = _Entry()
    model.theta = torch.nn.Parameter(torch.tensor([0.05, -0.3, 2.0, 1e-4], dtype=torch.float64))
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    g = [torch.tensor([0.5, -2.0, 3.0, 1e-3], dtype=torch.float64)]
    v = [torch.tensor([1.0, 0.5, 1e-4, 4.0], dtype=torch.float64)]
    model.theta.grad = torch.zeros(4, dtype=torch.float64)
    lam, h = 0.8, 1e-6

    def moved(at: float) -> float:
        before = model.theta.detach().clone()
        decoupled_penalty_step(model, opt, g, v, at, 1.0, bound)
        after = model.theta.detach().clone()
        with torch.no_grad():
            model.theta.copy_(before)
        return -(g[0] * (after - before)).sum().item()

    numeric = (moved(lam + h) - moved(lam - h)) / (2 * h)
    scaled = gradient_balance(model, opt, g, lam, decoupled=True, moments=v, bound=bound)[2].item()
    assert numeric > 0
    assert scaled == pytest.approx(numeric, rel=1e-6)


def test_the_settled_bound_is_refused_where_no_law_settles_or_the_penalty_is_in_the_loss():
    from scu import ScuError
    from scu.config.schema import build_config

    with pytest.raises(ScuError, match="penalty_step_bound_settled needs scu.law: auto, or balance with"):
        build_config({"scu": {"penalty_step_bound_settled": 4.0, "law": "balance"}})
    with pytest.raises(ScuError, match="penalty_step_bound_settled needs"):
        build_config({"scu": {"penalty_step_bound_settled": 4.0, "penalty_step": "decoupled", "law": "pi"}})
    cfg = build_config({"scu": {"penalty_step_bound_settled": 4.0, "penalty_step": "decoupled", "law": "balance",
                                "penalty_step_bound": 2.0}})
    assert cfg.scu.step_bound(False) == 2.0 and cfg.scu.step_bound(True) == 4.0
    assert build_config({}).scu.step_bound(True) == build_config({}).scu.penalty_step_bound  # unset: one bound throughout


def test_the_bound_is_refused_where_the_penalty_is_in_the_loss():
    from scu.config.schema import build_config
    from scu import ScuError

    with pytest.raises(ScuError, match="penalty_step_bound bounds the decoupled penalty step only"):
        build_config({"scu": {"penalty_step_bound": 2.0}})
    assert build_config({"scu": {"penalty_step": "decoupled", "penalty_step_bound": 2.0}}).scu.penalty_step_bound == 2.0


def test_decoupled_penalty_step_is_refused_where_it_is_not_applied():
    from scu.config.schema import build_config
    from scu import ScuError
    from scu.session import ControlSession

    with pytest.raises(ScuError, match="penalty_step: decoupled is applied by `scu train`"):
        ControlSession(build_config({"scu": {"penalty_step": "decoupled"}}), 1000)


def test_the_run_switches_to_the_settled_bound_on_the_step_after_the_law_settles(make_cfg, tmp_path):
    """The session keeps the law's `settled` (run.state.settled), which train_step reads for the next step's bound."""
    from scu.driver import Callback
    from scu.torch.loop import train

    class Watch(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[bool, bool]] = []

        def on_step_end(self, run, row):
            self.seen.append((run.state.settled, run.session.controllers["pi"].settled))

    watch = Watch()
    cfg = make_cfg(training__steps=60, scu__target_s=0.02, scu__law="auto", scu__penalty_step_bound_settled=4.0)
    train(cfg, tmp_path / "run", progress=False, callbacks=[watch])
    assert all(state == law for state, law in watch.seen)
    assert watch.seen[0] == (False, False) and watch.seen[-1] == (True, True)  # it settled within the run
