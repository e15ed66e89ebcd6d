"""`scu train`: LoRA fine-tuning under SCU control from a YAML config, with flag overrides."""

from __future__ import annotations

import argparse
from typing import Any

from scu import ScuError
from scu.config.schema import load_config
from scu.driver import STOPPED_BY_SIGNAL
from scu.energy.runtime import tscu_summary

# flag -> dotted config key
OVERRIDES = {
    "steps": "training.steps",
    "target_s": "scu.target_s",
    "lambda_init": "scu.lambda_init",
    "lambda_min": "scu.lambda_min",
    "lambda_max": "scu.lambda_max",
    "kp": "scu.kp",
    "ki": "scu.ki",
    "base_model": "model.base_model",
    "train_data": "data.train_data",
    "val_data": "data.val_data",
    "seed": "training.seed",
    "backend": "model.backend",
    "power_budget": "tscu.power_budget_watts",
    "max_temp": "tscu.max_temperature_celsius",
    "power_trace": "tscu.power_trace",
    "auto_stop": "equilibrium.auto_stop",
}
THERMAL_FLAGS = ("power_budget", "max_temp", "power_trace")
# --controller: the controllers that run, comma-separated; the others are switched off. scu (or pi): the PI
# lambda loop; simplified: S-SCU (docs/sscu.md); thermal: T-SCU (docs/tscu.md); both = scu,simplified
CONTROLLERS = {"scu": "scu.enabled", "pi": "scu.enabled", "simplified": "sscu.enabled", "thermal": "tscu.enabled"}
CONTROLLER_ALIASES = {"both": ("scu", "simplified")}
TEST_RUN_STEPS = 100


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="fine-tune a causal LM with LoRA under SCU control")
    p.add_argument("--config", required=True, help="YAML with sections model/lora/scu/training/data")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--output", help="run directory (adapter, metadata.json, metrics.jsonl, checkpoint)")
    where.add_argument("--adapter-out", dest="output", help="same as --output")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int)
    length.add_argument("--test-run", action="store_true", help=f"train {TEST_RUN_STEPS} steps on the configured data")
    p.add_argument(
        "--controller", type=controller_switches, metavar="NAME[,NAME]",
        help="controllers to run, e.g. scu,thermal: scu|pi (PI lambda loop), simplified (S-SCU, no lambda penalty "
        "alone), thermal (T-SCU power/temperature), both (= scu,simplified); default: as the config says",
    )
    p.add_argument("--power-budget", type=float, metavar="W", help="T-SCU power budget in watts")
    p.add_argument("--max-temp", type=float, metavar="C", help="T-SCU temperature limit in degrees Celsius")
    p.add_argument("--power-trace", metavar="CSV", help="T-SCU: replay this time,watts,celsius trace instead of a sensor")
    p.add_argument("--target-s", type=float)
    p.add_argument("--lambda-init", type=float)
    p.add_argument("--lambda-min", type=float)
    p.add_argument("--lambda-max", type=float)
    p.add_argument("--kp", type=float)
    p.add_argument("--ki", type=float)
    p.add_argument("--base-model")
    p.add_argument("--train-data")
    p.add_argument("--val-data")
    p.add_argument("--seed", type=int)
    p.add_argument("--backend", choices=["torch", "mlx"], help="training backend (default: model.backend, torch)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    p.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an --output that is not empty, replacing the run or files there (default: refuse)",
    )
    p.add_argument(
        "--auto-stop", action="store_true", default=None,
        help="end training at the λ-equilibrium step and save the adapter there (equilibrium.auto_stop)",
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished adapter directory to this Hugging Face repo")
    p.set_defaults(func=run)


def controller_switches(text: str) -> dict[str, bool]:
    """--controller scu,thermal -> {"scu.enabled": True, "sscu.enabled": False, "tscu.enabled": True}."""
    names = [m for n in text.split(",") if n.strip() for m in CONTROLLER_ALIASES.get(n.strip(), (n.strip(),))]
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown or not names:
        choices = ", ".join([*CONTROLLERS, *CONTROLLER_ALIASES])
        raise argparse.ArgumentTypeError(f"unknown controller {(unknown or [text])[0]!r}; use a comma-separated list of {choices}")
    on = {CONTROLLERS[n] for n in names}
    return {key: key in on for key in CONTROLLERS.values()}


def config_from_args(args: argparse.Namespace):
    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items()}
    overrides.update(args.controller or {})
    if args.test_run:
        overrides["training.steps"] = TEST_RUN_STEPS
    cfg = load_config(args.config, overrides)
    given = [f"--{flag.replace('_', '-')}" for flag in THERMAL_FLAGS if getattr(args, flag) is not None]
    if given and not cfg.tscu.enabled:
        raise ScuError(f"{given[0]} sets the thermal controller, which is off; add --controller thermal (or scu,thermal)")
    if cfg.tscu.enabled and cfg.model.backend == "mlx":
        raise ScuError("the thermal controller runs with the torch backend only; use --backend torch or drop thermal")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.model.backend == "mlx":
        from scu.mlx.loop import train
    else:
        from scu.torch.loop import train
    out = args.output or "runs/latest"
    if args.push_to_hub:
        from scu.report.card import push_to_hub, require_token

        require_token(out)
    meta = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    print(summary(meta, out))
    if cfg.tscu.enabled:
        print(tscu_summary(out))
    if args.push_to_hub and meta["status"] not in STOPPED_BY_SIGNAL:
        print(f"pushed to {push_to_hub(out, args.push_to_hub)}")
    return STOPPED_BY_SIGNAL.get(meta["status"], 0)


def summary(meta: dict, out: str) -> str:
    lines = [f"{meta['status']}: {meta['steps']}/{meta['steps_planned']} steps -> {out}"]
    if meta["scu_enabled"] and meta["final_s"] is not None:
        sat = meta["lambda_saturation"]
        lines.append(
            f"  S = {100 * meta['final_s']:.2f}% (smoothed {100 * meta['final_s_hat']:.2f}%, target {100 * meta['target_s']:g}%), "
            f"lambda = {meta['final_lambda']:.4g}, range [{meta['lambda_range'][0]:.3g}, {meta['lambda_range'][1]:.3g}]"
        )
        if sat["at_min"] + sat["at_max"] > 0.2:
            lines.append(
                f"  warning: lambda sat at a bound for {100 * (sat['at_min'] + sat['at_max']):.0f}% of steps "
                "(target unreachable within [lambda_min, lambda_max]; widen the bounds or change target_s)"
            )
    sscu = meta["controllers"].get("sscu")
    if sscu is not None:
        lines.append(f"  S-SCU: {len(sscu['decisions'])} actions; reasons in {out}/scu_training_metrics.json")
    if meta.get("equilibrium_step") is not None:
        lines.append(f"  λ-equilibrium at step {meta['equilibrium_step']} (docs/evaluation.md)")
    if meta.get("val_bpt") is not None:
        lines.append(f"  held-out BPT = {meta['val_bpt']:.4f}")
    if meta["nan_skips"]:
        lines.append(f"  skipped {meta['nan_skips']} steps with a NaN/inf loss")
    if meta["status"] in STOPPED_BY_SIGNAL:
        lines.append(f"  checkpoint saved; continue with: scu train --config {out}/config.yaml --output {out} --resume")
    return "\n".join(lines)
