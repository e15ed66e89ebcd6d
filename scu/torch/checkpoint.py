"""Checkpoints that resume a run bit for bit: trainable weights, optimizer, RNG, and the control session's state.

One file, written to a temporary name, synced and renamed, so an interruption leaves the previous
checkpoint intact. It holds only tensors and plain data and is read with `weights_only=True`, so a
crafted file cannot run code on `--resume`. Only rank 0 writes; every rank reads.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from scu import ScuError
from scu.report.records import atomic_path
from scu.report.schema import SessionState

CHECKPOINT = "checkpoint.pt"
START_OVER = "start over with --overwrite or choose another --output"


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, session: SessionState,
                    config: dict[str, Any]) -> None:
    """`model` unwrapped (its trainable parameters are saved); `session` is ControlSession.state_dict()."""
    payload = {
        **session,
        "trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "config": config,
    }
    with atomic_path(out / CHECKPOINT) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: os.PathLike) -> dict:
    """The checkpoint's payload, refusing anything but tensors and plain data, in one line."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # a pickle that names a callable; anything else is just damaged
            raise ScuError(f"checkpoint {path} is unreadable (not a torch checkpoint); {START_OVER}") from None
        raise ScuError(
            f"checkpoint {path} holds objects other than tensors and plain data (loading it could run code), "
            f"so it was not loaded; {START_OVER}"
        ) from None
    except Exception as e:
        raise ScuError(f"checkpoint {path} is unreadable ({type(e).__name__}); {START_OVER}") from None
    keys = ("state", "trainable", "optimizer", "controllers", "rng", "config")
    missing = [k for k in keys if k not in payload] if isinstance(payload, dict) else list(keys)
    if missing:
        raise ScuError(f"checkpoint {path} is incomplete (no {', '.join(missing)}); {START_OVER}")
    return payload


def load_tensors(payload: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The payload's trainable weights, optimizer state and RNG into `model` (unwrapped) and `optimizer`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
