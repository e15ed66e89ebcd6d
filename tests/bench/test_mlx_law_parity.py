"""bench.mlx_law_parity's reading of a run: the second half's band, the first step in band, the last λ."""

from bench.mlx_law_parity import tracking


def test_tracking_reads_the_second_half_and_the_first_step_in_band():
    s_hat = [0.0, 0.01, 0.019, 0.025, 0.0205, 0.02, 0.0195, 0.03]
    rows = [{"step": i + 1, "s_hat": s, "lambda": i / 8, "penalty_sensitivity": i / 1000} for i, s in enumerate(s_hat)]
    t = tracking(rows, 0.02)
    assert t["first_step_in_band"] == 3
    assert t["in_band_2nd_half"] == 0.75  # 0.0205, 0.02, 0.0195 in; 0.03 out
    assert t["final_lambda"] == 7 / 8 and t["lambda_steps_1_to_5"] == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert t["penalty_sensitivity_step_2"] == 0.001
    assert tracking([{**r, "s_hat": 0.0} for r in rows], 0.02)["first_step_in_band"] is None
