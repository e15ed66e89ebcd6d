"""bench.balance_inward_pull runs the balance law on its case and records what the docs quote."""

from __future__ import annotations

import json

from bench.balance_inward_pull import main


def test_records_tracking_peak_and_inward_pull_steps_per_law(tmp_path):
    out = tmp_path / "inward.json"
    assert main(["--steps", "12", "--laws", "balance", "pi", "--set", "tracking_alpha=0.5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"] == ["tracking_alpha=0.5"] and set(result["results"]) == {"balance", "pi"}
    balance = result["results"]["balance"]
    assert len(balance["trace"]["s_hat"]) == 12
    assert balance["max_s_hat"] == max(balance["trace"]["s_hat"])
    measured = [x for x in balance["trace"]["lambda_balance"] if x is not None]
    assert balance["inward_pull_steps"] == sum(x <= 0.0 for x in measured)
    assert "cycle_detrended" in balance["limit_cycle"]
    assert result["results"]["pi"]["inward_pull_steps"] == 0  # only the balance law measures the pull
