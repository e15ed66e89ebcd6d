"""Checkpoints that resume a run bit for bit: trainable weights, optimizer, RNG, loop and controller state.

One file, written to a temporary name and renamed, so an interruption leaves the previous
checkpoint intact. Only rank 0 writes; every rank reads.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

import torch

from scu import ScuError

if TYPE_CHECKING:
    from scu.torch.loop import Run

CHECKPOINT = "checkpoint.pt"
# Keys that may differ between the interrupted run and its resumption.
RESUMABLE_CHANGES = {("training", "steps"), ("training", "checkpoint_every"), ("training", "eval_every"), ("equilibrium", "auto_stop")}


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
    run.out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run.out, prefix=f".{CHECKPOINT}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, run.out / CHECKPOINT)
    except BaseException:
        os.unlink(tmp)
        raise


def _config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for section, values in current.items():
        for key, value in values.items():
            old = saved.get(section, {}).get(key)
            if old != value and (section, key) not in RESUMABLE_CHANGES:
                out.append(f"{section}.{key}: {old!r} -> {value!r}")
    return out


def load_checkpoint(run: "Run") -> None:
    from scu.driver import RunState

    path = run.out / CHECKPOINT
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        state = payload["state"]
    except Exception as e:
        raise ScuError(
            f"checkpoint {path} is unreadable ({type(e).__name__}); delete it and start a new run without --resume"
        ) from None
    changes = _config_changes(payload["config"], run.cfg.model_dump(mode="json"))
    if changes:
        raise ScuError(f"the config differs from the checkpoint's ({'; '.join(changes[:3])}); resume with the original config")
    run.state = RunState(**{f.name: state[f.name] for f in fields(RunState) if f.name in state})
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
