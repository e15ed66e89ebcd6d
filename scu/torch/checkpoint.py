"""Checkpoints that resume a run bit for bit: trainable weights, optimizer, RNG, loop and controller state.

One file, written to a temporary name, synced and renamed, so an interruption leaves the previous
checkpoint intact. It holds only tensors and plain data and is read with `weights_only=True`, so a
crafted file cannot run code on `--resume`. Only rank 0 writes; every rank reads.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from scu import ScuError
from scu.driver import restored_state
from scu.report.records import atomic_path

if TYPE_CHECKING:
    from scu.torch.loop import Run

CHECKPOINT = "checkpoint.pt"
START_OVER = "start over with --overwrite or choose another --output"


def _trainable(run: "Run") -> dict[str, torch.Tensor]:
    model = run.accelerator.unwrap_model(run.model)
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run: "Run") -> None:
    if not run.accelerator.is_main_process:
        return
    payload = {
        "state": asdict(run.state),
        "trainable": _trainable(run),
        "optimizer": run.optimizer.state_dict(),
        "controllers": {name: c.state_dict() for name, c in run.controllers.items()},
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "config": run.cfg.model_dump(mode="json"),
    }
    with atomic_path(run.out / CHECKPOINT) as tmp:
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


def load_checkpoint(run: "Run") -> None:
    payload = read_checkpoint(run.out / CHECKPOINT)
    run.state = restored_state(run, payload["state"], payload["config"])
    model = run.accelerator.unwrap_model(run.model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["trainable"].items():
            params[name].copy_(value)
    run.optimizer.load_state_dict(payload["optimizer"])
    for name, controller in run.controllers.items():
        controller.load_state_dict(payload["controllers"][name])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    if run.accelerator.is_main_process:
        run.metrics.truncate_after(run.state.step)
