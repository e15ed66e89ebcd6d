"""Experiment trackers (TensorBoard, W&B, MLflow, Trackio, ...) for every way of training.

`scu train --report-to NAME` (config `training.report_to`) logs through Accelerate's tracker API:
`Accelerator(log_with=...)`, `init_trackers`, `log`. SCUTrainer hands the same keys to the Trainer's
own `report_to` integrations. Either way the keys are `scu_logs`': `scu/data_bpt`, `scu/param_bpt`,
`scu/s`, `scu/lambda`, `scu/lr`, `scu/tokens_per_s`, so dashboards of both kinds of run line up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scu.config.schema import Config
from scu.driver import Callback

PREFIX = "scu/"
PROJECT = "scu"  # the tracker project; TensorBoard writes its events under RUN_DIR/scu/


def scu_logs(rows: Sequence[dict[str, Any]], tokens_before: int) -> dict[str, float]:
    """The tracked values of the metrics rows since the last log: means of DataBPT, ParamBPT and S, the
    current λ and LR, and the throughput (`tokens_before`: the run's tokens before the first of them)."""
    out: dict[str, float] = {}
    for key in ("data_bpt", "param_bpt", "s"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[PREFIX + key] = sum(values) / len(values)
    out[PREFIX + "lambda"] = rows[-1]["lambda"]
    out[PREFIX + "lr"] = rows[-1]["lr"]
    seconds = sum(r["step_time"] for r in rows)
    if seconds > 0:
        out[PREFIX + "tokens_per_s"] = (rows[-1]["tokens"] - tokens_before) / seconds
    return out


def tracker_config(cfg: Config) -> dict[str, Any]:
    """The config as flat scalars (section.key), what every tracker's hyperparameter view accepts."""
    flat = {}
    for section, values in cfg.model_dump(mode="json").items():
        for key, value in (values or {}).items():
            flat[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class ReportTo(Callback):
    """Logs every recorded step of `scu train` to the trackers of `accelerator` (built with log_with=...)."""

    def __init__(self, accelerator: Any, cfg: Config, tokens_seen: int = 0) -> None:
        self.accelerator, self.tokens = accelerator, tokens_seen
        accelerator.init_trackers(PROJECT, config=tracker_config(cfg))

    def on_step_end(self, run: Any, row: dict[str, Any]) -> None:
        self.accelerator.log(scu_logs([row], self.tokens), step=row["step"])
        self.tokens = row["tokens"]

    def on_train_end(self, run: Any, status: str) -> None:
        self.accelerator.end_training()
