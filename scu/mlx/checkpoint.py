"""MLX checkpoints that resume a run exactly: LoRA weights, optimizer state, the `factors` prior's
A0, and (as JSON in the file's metadata) the loop state, the controllers and the config.

One safetensors file, written to a temporary name, synced and renamed, so an interruption leaves the
previous checkpoint intact. Random numbers (LoRA dropout) are re-seeded from (seed, step)
every step, so no generator state needs saving.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from scu import ScuError
from scu.driver import restored_state
from scu.report.records import atomic_path

if TYPE_CHECKING:
    from scu.mlx.loop import MlxRun

CHECKPOINT = "checkpoint.mlx.safetensors"
GROUPS = ("trainable", "optimizer", "a0")


def save_checkpoint(run: "MlxRun") -> None:
    arrays = {f"trainable/{k}": v for k, v in tree_flatten(run.model.trainable_parameters())}
    arrays |= {f"optimizer/{k}": v for k, v in tree_flatten(run.optimizer.state)}
    if run.penalty is not None:
        arrays |= {f"a0/{k}": v for k, v in run.penalty.initial_factors().items()}
    record = {
        "state": asdict(run.state),
        "controllers": {name: c.state_dict() for name, c in run.controllers.items()},
        "config": run.cfg.model_dump(mode="json"),
    }
    with atomic_path(run.out / CHECKPOINT, suffix=".safetensors") as tmp:  # mlx names it .safetensors
        mx.save_safetensors(str(tmp), arrays, metadata={"scu": json.dumps(record)})


def load_checkpoint(run: "MlxRun") -> None:
    """Restore everything saved; call before the compiled step is built (it captures the optimizer state)."""
    path = run.out / CHECKPOINT
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        record = json.loads(meta["scu"])
    except Exception as e:
        raise ScuError(
            f"checkpoint {path} is unreadable ({type(e).__name__}); start over with --overwrite or choose another --output"
        ) from None
    missing = [k for k in ("state", "controllers", "config") if k not in record]
    if missing:
        raise ScuError(f"checkpoint {path} is incomplete (no {', '.join(missing)}); start over with --overwrite or choose another --output")
    groups: dict[str, list] = {g: [] for g in GROUPS}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        groups[group].append((name, value))
    run.state = restored_state(run, record["state"], record["config"])
    run.model.load_weights(groups["trainable"], strict=False)
    run.optimizer.state = tree_unflatten(groups["optimizer"])
    if run.penalty is not None:
        run.penalty.load_initial_factors(dict(groups["a0"]))
    for name, controller in run.controllers.items():
        controller.load_state_dict(record["controllers"][name])
    mx.eval(run.model.parameters(), run.optimizer.state)
    run.metrics.truncate_after(run.state.step)
