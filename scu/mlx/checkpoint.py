"""MLX checkpoints that resume a run exactly: LoRA weights, optimizer state, the `factors` prior's
A0, and (as JSON in the file's metadata) the control session's state and the config.

One safetensors file, written to a temporary name, synced and renamed, so an interruption leaves the
previous checkpoint intact. Random numbers (LoRA dropout) are re-seeded from (seed, step)
every step, so no generator state needs saving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from scu import ScuError
from scu.report.records import atomic_path
from scu.report.schema import SessionState

CHECKPOINT = "checkpoint.mlx.safetensors"
GROUPS = ("trainable", "optimizer", "a0")
START_OVER = "start over with --overwrite or choose another --output"


def save_checkpoint(out: Path, trainable: Any, optimizer_state: Any, a0: dict[str, mx.array], session: SessionState,
                    config: dict[str, Any]) -> None:
    """`trainable` and `optimizer_state` are MLX parameter trees; `session` is ControlSession.state_dict()."""
    arrays = {f"trainable/{k}": v for k, v in tree_flatten(trainable)}
    arrays |= {f"optimizer/{k}": v for k, v in tree_flatten(optimizer_state)}
    arrays |= {f"a0/{k}": v for k, v in a0.items()}
    record = {**session, "config": config}
    with atomic_path(out / CHECKPOINT, suffix=".safetensors") as tmp:  # mlx names it .safetensors
        mx.save_safetensors(str(tmp), arrays, metadata={"scu": json.dumps(record)})


def read_checkpoint(path: Path) -> tuple[dict[str, list[tuple[str, mx.array]]], dict[str, Any]]:
    """The arrays by group (trainable, optimizer, a0) and the JSON record, or a one-line error."""
    try:
        arrays, meta = mx.load(str(path), return_metadata=True)
        record = json.loads(meta["scu"])
    except Exception as e:
        raise ScuError(f"checkpoint {path} is unreadable ({type(e).__name__}); {START_OVER}") from None
    missing = [k for k in ("state", "controllers", "config") if k not in record]
    if missing:
        raise ScuError(f"checkpoint {path} is incomplete (no {', '.join(missing)}); {START_OVER}")
    groups: dict[str, list[tuple[str, mx.array]]] = {g: [] for g in GROUPS}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        groups[group].append((name, value))
    return groups, record
