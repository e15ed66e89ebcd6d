"""bench.sensitivity_twin: the twins leave the run untouched, and the ratio reads 1 where the growth model holds."""

import json
import math

from bench.sensitivity_twin import SET_C, Twins, momentum_gap, response, restoring_rate
from bench.harness.settings import key_values
from scu.config.schema import build_config
from scu.torch.loop import train


def config(base, data, steps: int):
    return build_config({
        "model": {"base_model": str(base)},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        # lambda_min 0.1: at the forks the arms hold lambdas that move ParamBPT visibly (at 1e-7 they would not)
        "scu": {"target_s": 0.05, "law": "balance", "lambda_min": 0.1, "lambda_max": 1e4, "smoothing": "data",
                **key_values(SET_C)},
        "training": {"learning_rate": 5e-3, "batch_size": 4, "block_size": 64, "steps": steps, "warmup_steps": 0,
                     "lr_schedule": "constant", "checkpoint_every": 10**9},
        "data": {"train_data": str(data)},
    })


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_twins_goes_on_exactly_as_without_them(tiny_base, pydoc_txt, tmp_path):
    cfg = config(tiny_base, pydoc_txt, steps=16)
    train(cfg, tmp_path / "plain", progress=False)
    twins = Twins(forks=[6, 12], horizon=3, ratio=1.5)
    train(cfg, tmp_path / "forked", progress=False, callbacks=[twins])
    plain, forked = rows(tmp_path / "plain"), rows(tmp_path / "forked")
    for key in ("lambda", "data_bpt", "param_bpt", "s"):
        assert [r.get(key) for r in forked] == [r.get(key) for r in plain], key
    assert [f["step"] for f in twins.results] == [6, 12]
    fork = twins.results[-1]
    arms = fork["arms"]
    assert [arms[a]["lambda"] for a in ("low", "mid", "high")] == [fork["lambda"] / 1.5, fork["lambda"], fork["lambda"] * 1.5]
    # the twins start from one state: their first ParamBPT is the same, and a larger lambda ends lower
    assert arms["low"]["param_bpt"][0] == arms["high"]["param_bpt"][0]
    assert fork["lambda"] >= 0.1 and arms["high"]["param_bpt"][-1] < arms["low"]["param_bpt"][-1]


def linear_arm(lam: float, centre: float, sensitivity: float, steps: int, adam_steps: int, b: float) -> dict:
    """ParamBPT of a twin that holds lam from the fork, on the growth model with lambda's momentum average at centre."""
    param, avg_gap = [10.0], 0.0
    for j in range(1, steps + 1):
        avg_gap = (lam - centre) * momentum_gap(j, adam_steps, b)
        param.append(param[-1] + sensitivity * (centre - (centre + avg_gap)) / math.log(2.0))
    return {"lambda": lam, "param_bpt": param, "sensitivity": [sensitivity] * steps}


def test_the_ratio_is_one_on_the_growth_model_and_reads_a_halved_effect():
    a, b = (linear_arm(lam, 0.7, 3.0, 10, 20, 0.9) for lam in (0.5, 0.8))
    exact = response(a, b, adam_steps=20, betas=(0.9, 0.999))
    assert all(abs(r - 1.0) < 1e-9 for r in exact["ratio"])
    weak = {**b, "param_bpt": [p + 0.5 * (q - p) for p, q in zip(a["param_bpt"], b["param_bpt"])]}
    assert all(abs(r - 0.5) < 1e-9 for r in response(a, weak, adam_steps=20, betas=(0.9, 0.999))["ratio"])


def test_the_momentum_gap_rises_to_one():
    assert momentum_gap(1, 0, 0.9) == 1.0  # Adam's first step: the bias correction makes the average the value itself
    assert abs(momentum_gap(1, 100, 0.9) - 0.1) < 1e-4
    assert abs(momentum_gap(200, 100, 0.9) - 1.0) < 1e-8


def test_the_restoring_rate_is_recovered_from_twins_whose_difference_decays_by_itself():
    # the twins' ParamBPT difference built from the growth model plus a decay of 0.3 of itself each step
    a = linear_arm(0.5, 0.7, 3.0, 10, 20, 0.9)
    b = {**a, "lambda": 0.6, "param_bpt": [a["param_bpt"][0]]}
    for j in range(10):
        gap = b["param_bpt"][j] - a["param_bpt"][j]
        pushed = -3.0 * 0.1 * momentum_gap(j + 1, 20, 0.9) / math.log(2.0)
        b["param_bpt"].append(a["param_bpt"][j + 1] + gap + pushed - 0.3 * gap)
    assert abs(restoring_rate(a, b, 20, 0.9) - 0.3) < 1e-9
    assert response(a, b, 20, (0.9, 0.999))["ratio"][-1] < 0.8  # what decays back is missing from the held effect
