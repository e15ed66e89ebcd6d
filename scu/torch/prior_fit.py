"""`scu.prior_sigma: fit`: the prior scale from a plain fit of the same run (empirical Bayes, docs/method.md).

`scu train` first trains the run as configured with SCU off into <output>/plain_fit (a complete run of its own:
resumable, with its adapter and records), then sets sigma^2 = ||dW||^2 / p from that adapter (p: its trainable
LoRA entries; scu.core.bits.fit_scale_sigma) and trains the SCU run with that number. It costs a second fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from scu import ScuError
from scu.config.schema import Config
from scu.core.bits import fit_scale_sigma
from scu.driver import STOPPED_BY_SIGNAL
from scu.rundir import PLAIN_FIT, check_output
from scu.torch.checkpoint import CHECKPOINT
from scu.torch.regularizer import product_sq_norm

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def change_scale(adapter_dir: Path) -> tuple[float, int]:
    """(||dW||^2 summed over the adapted matrices, trainable LoRA entries) of a saved PEFT LoRA adapter with B0 = 0."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ScuError(f"{adapter_dir}: per-module ranks or alphas are not supported by prior_sigma: fit; set a number")
    r = config["r"]
    scale = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    sq_norm, dof = 0.0, 0
    for key, A in tensors.items():
        if ".lora_A." not in key:
            continue
        A, B = A.double(), tensors[key.replace(".lora_A.", ".lora_B.")].double()
        sq_norm += scale**2 * float(product_sq_norm(A, B))
        dof += A.numel() + B.numel()
    if dof == 0:
        raise ScuError(f"{adapter_dir / ADAPTER_WEIGHTS} has no LoRA factors")
    return sq_norm, dof


def plain_status(plain_dir: Path) -> str | None:
    meta = plain_dir / "metadata.json"
    return json.loads(meta.read_text()).get("status") if meta.exists() else None


def resolve_fit_prior(
    cfg: Config, out: Path, resume: bool, overwrite: bool, train_plain: Callable[[Config, Path, bool, bool], Any],
) -> tuple[Config, bool]:
    """Run (or resume, or reuse under --resume) the plain fit; return the config with the numeric sigma and whether
    the SCU run itself resumes. `train_plain(cfg, out, resume, overwrite)` is `scu train`'s own loop."""
    if cfg.lora.init not in (True, "gaussian") or cfg.lora.use_dora:
        raise ScuError("prior_sigma: fit measures the change from a zero start (lora.init true or gaussian, no DoRA); "
                       "set scu.prior_sigma to a number")
    plain_dir = out / PLAIN_FIT
    status = plain_status(plain_dir)
    if not resume and not overwrite:
        check_output(out, CHECKPOINT, False, False)
        if plain_dir.exists():
            raise ScuError(f"{plain_dir} holds a plain fit from an earlier run; pass --resume to use it or --overwrite to redo it")
    if overwrite or status is None or status in STOPPED_BY_SIGNAL:
        plain = cfg.model_copy(update={"scu": cfg.scu.model_copy(update={"enabled": False})})
        print(f"SCU: prior_sigma fit: training the plain fit first (SCU off, same settings) into {plain_dir}", flush=True)
        train_plain(plain, plain_dir, resume and not overwrite and (plain_dir / CHECKPOINT).exists(), overwrite)
        status = plain_status(plain_dir)
    if status is None or status in STOPPED_BY_SIGNAL or status.startswith("failed"):
        raise ScuError(f"the plain fit in {plain_dir} ended '{status}'; rerun with --resume to finish it")
    sq_norm, dof = change_scale(plain_dir)
    sigma = fit_scale_sigma(sq_norm, dof)
    print(f"SCU: prior_sigma fit: sigma {sigma:.4g} (||dW|| {sq_norm ** 0.5:.4g} of the plain fit over {dof:,} LoRA entries)", flush=True)
    scu = cfg.scu.model_copy(update={"prior_sigma": float(f"{sigma:.6g}")})
    return cfg.model_copy(update={"scu": scu}), resume and (out / CHECKPOINT).exists()

