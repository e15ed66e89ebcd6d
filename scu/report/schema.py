"""The run record's schema: one set of files and keys, whichever way a run was trained.

`scu train` (both backends), `SCUTrainer`/`SCUSFTTrainer` and the loop API all write their records
through `scu.session.ControlSession`, so `scu validate`, `scu plot`, `scu doctor` and `scu eval`
read every run the same way. The TypedDicts below are that contract; tests compare real records
against them.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.jsonl"
SSCU_FILES = ("scu_training_metrics.json", "scu_training_summary.json", "simple_training_config.json")
TSCU_METRICS_FILE = "tscu_training_metrics.json"
TSCU_ANALYSIS_FILE = "tscu_analysis.json"

Bound = Literal["min", "max"] | None


# One line of metrics.jsonl, one optimizer step: these keys are in every row (functional form: `lambda`
# is a Python keyword). `lambda` is λ for the next step, `lambda_used` the λ this step trained with.
StepRow = TypedDict("StepRow", {
    "step": int,
    "data_bpt": float,
    "param_bpt": float | None,  # None: no penalty in this run
    "s": float | None,
    "s_hat": float | None,  # the PI loop's smoothed S (None without a PI loop)
    "lambda": float,
    "lambda_used": float,
    "target_s": float | None,  # the S* in force (divided by S-SCU's reg_factor when S-SCU runs)
    "integral": float | None,
    "at_bound": Bound,
    "lr": float,
    "grad_norm": float | None,
    "grad_accum": int,
    "tokens": int,  # tokens seen so far (all ranks)
    "step_time": float,
    "wall_time": float,
})


class MetricsRow(StepRow, total=False):
    """A metrics.jsonl row: StepRow, plus keys only some steps have."""

    val_bpt: float  # evaluation steps
    reasons: list[str]  # a controller said why it acted
    stop: bool  # a controller stopped the run here
    lambda_balance: float  # law 'balance': the smoothed lambda at which the penalty's gradient cancels the data's
    lambda_growth: float  # law 'balance': the smoothed lambda at which the measured growth of ParamBPT would stop
    penalty_sensitivity: float  # law 'balance': how far one unit of lambda, held, moves ParamBPT's penalty per step


METRICS_KEYS = tuple(StepRow.__annotations__)
# The columns every rank computes from the same all-reduced numbers (bit-identical across processes).
CONTROL_KEYS = ("data_bpt", "param_bpt", "s", "s_hat", "lambda", "lambda_used", "target_s", "integral", "at_bound",
                "tokens")


class RunMetadata(TypedDict):
    """metadata.json: where the run ended and what it was configured with."""

    status: str  # completed | running | interrupted | terminated | stopped at equilibrium | stopped by a controller | failed: ...
    trainer: str  # what trained: "scu train", "scu train (mlx)", "SCUTrainer", "SCUSFTTrainer", "SCU loop API"
    backend: str  # torch | mlx
    base_model: str | None
    scu_enabled: bool
    target_s: float | None
    final_s: float | None
    final_s_hat: float | None
    final_lambda: float | None
    lambda_range: list[float | None]
    lambda_saturation: dict[str, float]
    final_data_bpt: float | None
    final_param_bpt: float | None
    val_bpt: float | None
    kp: float
    ki: float
    deadband: float
    law: str
    prior: dict[str, Any]
    tokens_per_epoch: int
    tokens_per_epoch_source: str
    train_docs: int | None
    val_docs: int | None
    val_split: str | None
    world_size: int
    steps: int
    steps_planned: int
    nan_skips: int
    equilibrium_step: int | None
    weights_averaged_over: int | None  # auto-stop saved the weights averaged over about this many steps (EMA span)
    tokens_seen: int
    wall_time_s: float
    seed: int
    timestamp: str
    versions: dict[str, str | None]
    controllers: dict[str, dict[str, Any]]  # each controller's state_dict()
    config: dict[str, Any]  # the Config's sections (model, lora, scu, training, data, sscu, tscu, equilibrium)


class SessionState(TypedDict, total=False):
    """What a checkpoint holds of the control session (ControlSession.state_dict())."""

    state: dict[str, Any]  # scu.session.RunState as a dict
    controllers: dict[str, dict[str, Any]]
    tscu: dict[str, Any]  # T-SCU's pause accounting (runs with T-SCU only)


class TscuRow(TypedDict):
    """One step of tscu_training_metrics.json."""

    step: int
    loss: float  # nats
    power_watts: float | None
    temperature_celsius: float | None
    memory_temperature_celsius: float | None
    energy_joules: float | None
    duration_s: float
    control_factor: float
    learning_rate: float
    bits_learned: float | None
    bits_per_joule: float | None
    landauer_efficiency: float | None
    paused_s: float
    hardware_throttle: list[str]
    reasons: list[str]
