"""`scu train`: LoRA fine-tuning under SCU control from a YAML config, with flag overrides."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from scu import ScuError
from scu.config.schema import canonical_key, load_config
from scu.driver import STOPPED_BY_SIGNAL
from scu.energy.runtime import tscu_summary

# flag -> dotted config key
OVERRIDES = {
    "output": "output_dir",
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
    "report_to": "training.report_to",
}
THERMAL_FLAGS = ("power_budget", "max_temp", "power_trace")
# --controller: the controllers that run, comma-separated; the others are switched off. scu (or pi): the PI
# lambda loop; simplified: S-SCU (docs/sscu.md); thermal: T-SCU (docs/tscu.md); both = scu,simplified
CONTROLLERS = {"scu": "scu.enabled", "pi": "scu.enabled", "simplified": "sscu.enabled", "thermal": "tscu.enabled"}
CONTROLLER_ALIASES = {"both": ("scu", "simplified")}
TEST_RUN_STEPS = 100
DEFAULT_OUTPUT = "runs/latest"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="fine-tune a causal LM with LoRA under SCU control",
        description="Fine-tune from a YAML config. Flags and --set override its keys; "
        "--set on a key that a flag also sets is an error (docs/cli.md).",
    )
    p.add_argument("--config", required=True, help="YAML with sections model/lora/scu/training/data")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--output", help="run directory (adapter, metadata.json, metrics.jsonl, checkpoint) "
        f"(default: the config's output_dir, else {DEFAULT_OUTPUT})",
    )
    where.add_argument("--adapter-out", dest="output", help="same as --output")
    p.add_argument(
        "--set", action="append", type=config_setting, default=[], metavar="KEY=VALUE",
        help="set any config key, e.g. lora.rank=16, training.lr_schedule=linear or max_steps=500; the value is read "
        "as YAML (numbers, true/false, [lists], null); repeatable (default: none)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"optimizer steps {config_default('steps')}")
    length.add_argument("--test-run", action="store_true", help=f"train {TEST_RUN_STEPS} steps on the configured data")
    p.add_argument(
        "--controller", type=controller_switches, metavar="NAME[,NAME]",
        help="controllers to run, e.g. scu,thermal: scu|pi (PI lambda loop), simplified (S-SCU, no lambda penalty "
        "alone), thermal (T-SCU power/temperature), both (= scu,simplified) (default: as the config says)",
    )
    p.add_argument("--power-budget", type=float, metavar="W",
                   help=f"T-SCU power budget in watts {config_default('power_budget')}")
    p.add_argument("--max-temp", type=float, metavar="C",
                   help=f"T-SCU temperature limit in degrees Celsius {config_default('max_temp')}")
    p.add_argument("--power-trace", metavar="CSV",
                   help=f"T-SCU: replay this time,watts,celsius trace instead of a sensor {config_default('power_trace')}")
    p.add_argument("--target-s", type=float, help=f"target information ratio S* {config_default('target_s')}")
    p.add_argument("--lambda-init", type=float, help=f"starting λ {config_default('lambda_init')}")
    p.add_argument("--lambda-min", type=float, help=f"lower bound of λ {config_default('lambda_min')}")
    p.add_argument("--lambda-max", type=float, help=f"upper bound of λ {config_default('lambda_max')}")
    p.add_argument("--kp", type=float, help=f"proportional gain of the PI law; with no scu.law named, the run uses law pi "
                   f"{config_default('kp')}")
    p.add_argument("--ki", type=float, help=f"integral gain of the PI law; with no scu.law named, the run uses law pi "
                   f"{config_default('ki')}")
    p.add_argument("--base-model", help=f"hub id, local directory or .gguf file {config_default('base_model')}")
    p.add_argument("--train-data", help=f"training data {config_default('train_data')}")
    p.add_argument("--val-data", help=f"validation data {config_default('val_data')}")
    p.add_argument("--seed", type=int, help=f"seed of the split, the LoRA init and the batches {config_default('seed')}")
    p.add_argument("--backend", choices=["torch", "mlx"], help=f"training backend {config_default('backend')}")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    p.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an --output that is not empty, replacing the run or files there (default: refuse)",
    )
    p.add_argument(
        "--auto-stop", action="store_true", default=None,
        help=f"end training at the λ-equilibrium step and save the adapter there {config_default('auto_stop')}",
    )
    p.add_argument(
        "--report-to", type=tracker_names, metavar="NAME[,NAME]",
        help="experiment trackers through Accelerate (tensorboard, wandb, mlflow, trackio, ...); logs scu/data_bpt, "
        f"scu/param_bpt, scu/s, scu/lambda, scu/lr, scu/tokens_per_s every step {config_default('report_to')}",
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished adapter directory to this Hugging Face repo (default: no upload)")
    p.set_defaults(func=run)


def config_default(flag: str) -> str:
    return f"(default: the config's {OVERRIDES[flag]})"


def controller_switches(text: str) -> dict[str, bool]:
    """--controller scu,thermal -> {"scu.enabled": True, "sscu.enabled": False, "tscu.enabled": True}."""
    names = [m for n in text.split(",") if n.strip() for m in CONTROLLER_ALIASES.get(n.strip(), (n.strip(),))]
    unknown = [n for n in names if n not in CONTROLLERS]
    if unknown or not names:
        choices = ", ".join([*CONTROLLERS, *CONTROLLER_ALIASES])
        raise argparse.ArgumentTypeError(f"unknown controller {(unknown or [text])[0]!r}; use a comma-separated list of {choices}")
    on = {CONTROLLERS[n] for n in names}
    return {key: key in on for key in CONTROLLERS.values()}


def tracker_names(text: str) -> list[str]:
    """--report-to tensorboard,wandb -> ["tensorboard", "wandb"]; "none" -> [] (as transformers' report_to)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return [] if names == ["none"] else names


def config_setting(text: str) -> tuple[str, Any]:
    """--set section.key=value -> ("section.key", value), the value read as YAML so numbers, booleans and lists work."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. lora.rank=16 (got {text!r})")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a YAML value; quote it, e.g. {key}='\"{value}\"'") from None


def option(flag: str) -> str:
    return f"--{flag.replace('_', '-')}"


def flag_overrides(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """Dotted config key -> (the dedicated flag that sets it, value), for the flags given."""
    given = {key: (option(flag), getattr(args, flag)) for flag, key in OVERRIDES.items() if getattr(args, flag) is not None}
    given |= {key: ("--controller", on) for key, on in (args.controller or {}).items()}
    if args.test_run:
        given["training.steps"] = ("--test-run", TEST_RUN_STEPS)
    return given


def config_from_args(args: argparse.Namespace):
    """The config file, then --set, then the dedicated flags; --set and a flag on the same key is an error, not a race."""
    flags = flag_overrides(args)
    for key, _ in args.set:
        clash = flags.get(canonical_key(key))
        if clash:
            raise ScuError(f"--set {key} and {clash[0]} both set {canonical_key(key)}; keep one of them")
    overrides = dict(args.set) | {key: value for key, (_, value) in flags.items()}
    cfg = load_config(args.config, overrides)
    given = [option(flag) for flag in THERMAL_FLAGS if getattr(args, flag) is not None]
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
    out = cfg.output_dir or DEFAULT_OUTPUT
    if args.push_to_hub:
        from scu.report.card import push_to_hub, require_token

        require_token(out)
    meta = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    print(summary(meta, out, fixed=cfg.scu.lambda_min == cfg.scu.lambda_max))
    if cfg.tscu.enabled:
        print(tscu_summary(out))
    if args.push_to_hub and meta["status"] not in STOPPED_BY_SIGNAL:
        print(f"pushed to {push_to_hub(out, args.push_to_hub)}")
    return STOPPED_BY_SIGNAL.get(meta["status"], 0)


def summary(meta: dict, out: str, fixed: bool = False) -> str:
    """The lines `scu train` prints at the end; `fixed`: lambda was not controlled (no target to report against)."""
    lines = [f"{meta['status']}: {meta['steps']}/{meta['steps_planned']} steps -> {out}"]
    if meta["scu_enabled"] and meta["final_s"] is not None:
        sat, (low, high) = meta["lambda_saturation"], meta["lambda_range"]
        if fixed:  # target_s: auto among them
            sigma = meta["prior"]["sigma"]
            sigma = f"{sigma:.4g}" if isinstance(sigma, (int, float)) else sigma
            lines.append(f"  S = {100 * meta['final_s']:.2f}% at lambda fixed at {low:.4g} (prior sigma {sigma})")
        else:
            lines.append(
                f"  S = {100 * meta['final_s']:.2f}% (smoothed {100 * meta['final_s_hat']:.2f}%, target {100 * meta['target_s']:g}%), "
                f"lambda = {meta['final_lambda']:.4g}, range [{low:.3g}, {high:.3g}]"
            )
        if not fixed and sat["at_min"] + sat["at_max"] > 0.2:
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
