"""How much step time T-SCU telemetry adds to training.

Arms, interleaved in a rotating order every round so that load from other processes hits
them alike:
  off          plain training steps
  unavailable  T-SCU (a control session running the thermal controller alone) with no sensor (this machine):
               thread + per-step bookkeeping
  rapl         T-SCU reading a fake powercap/hwmon tree (real file reads: 3 zones, 2 temps)
  replay       T-SCU replaying a CSV trace
  rapl-10ms    rapl with the background thread at 100 Hz instead of 10 Hz
Each round times `--steps` optimizer steps of a tiny Llama (forward, backward, AdamW) per arm,
each step including its ControlSession.step call; a round's ratio is the median step time of the arm
over that of `off` in the same round (medians shed bursts from other processes), and the
overhead is the median over rounds of that ratio, minus 1, for wall time and for the process's
CPU time (which includes the sampler thread and is less disturbed by other processes). It also
reports the cost of one ControlSession.step call alone (median of many) and the CPU the sampler
thread burns per second of training; these two bound the overhead on any step length.

    python bench/telemetry_overhead.py            # writes bench/results/telemetry_overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scu.config.schema import Config, ScuSection
from scu.core.bits import LN2
from scu.energy import Sampler
from scu.energy.base import Unavailable
from scu.energy.rapl import RaplSensor
from scu.energy.replay import ReplaySensor
from scu.energy.runtime import EnergyMeter, TscuConfig
from scu.models.tiny import BaseSpec, tiny_llama
from scu.report.records import atomic_write_json
from scu.session import ControlSession, StepResult

RESULTS = Path(__file__).parent / "results" / "telemetry_overhead.json"
NEVER_THROTTLE = dict(enabled=True, power_budget_watts=1e9, max_temperature_celsius=1000.0)


def fake_sysfs(root: Path) -> tuple[Path, Path]:
    powercap, hwmon = root / "powercap", root / "hwmon"
    for name, label in [("intel-rapl:0", "package-0"), ("intel-rapl:0:1", "dram"), ("intel-rapl:1", "package-1")]:
        d = powercap / name
        d.mkdir(parents=True)
        (d / "name").write_text(label + "\n")
        (d / "energy_uj").write_text("123456789\n")
        (d / "max_energy_range_uj").write_text("262143328850\n")
    chip = hwmon / "hwmon0"
    chip.mkdir(parents=True)
    (chip / "name").write_text("coretemp\n")
    for i in (1, 2):
        (chip / f"temp{i}_input").write_text("55000\n")
    return powercap, hwmon


def make_sensor(arm: str, tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    if arm.startswith("rapl"):
        powercap, hwmon = fake_sysfs(tmp / arm)
        return RaplSensor(root=powercap, hwmon_root=hwmon)
    if arm == "replay":
        trace = tmp / "trace.csv"
        trace.write_text("time,watts,celsius\n" + "".join(f"{t},{15 + t % 7},{50 + t % 5}\n" for t in range(3600)))
        return ReplaySensor(trace)
    return Unavailable("benchmark")


def tscu_session(config: TscuConfig, sensor, out: Path) -> ControlSession:
    """The thermal controller alone in a control session, as `scu train --controller thermal` runs it."""
    cfg = Config(scu=ScuSection(enabled=False), tscu=config)
    return ControlSession(cfg, 10_000, out, meter=EnergyMeter(config, sensor))


def telemetry_step(session: ControlSession, bits: float, wall: float) -> None:
    session.step(StepResult(bits * LN2 * 1024, None, None, 1024), 0.0, 1e-3, wall)


def run_arm(arm: str, steps: int, step_fn, tmp: Path) -> list[tuple[float, float]]:
    thermal = None
    if arm != "off":
        period = 0.01 if arm == "rapl-10ms" else 0.1
        thermal = tscu_session(TscuConfig(**NEVER_THROTTLE, sample_period_s=period), make_sensor(arm, tmp), tmp / f"out-{arm}")
        thermal.start()
    times = []
    for i in range(steps):
        s0, c0 = time.perf_counter(), time.process_time()
        loss = step_fn()
        if thermal is not None:
            telemetry_step(thermal, loss, time.perf_counter() - s0)
        times.append((time.perf_counter() - s0, time.process_time() - c0))
    if thermal is not None:
        thermal.close()
    return times


def call_cost_us(arm: str, tmp: Path, calls: int = 2000) -> float:
    """Median wall time of one ControlSession.step with T-SCU (sensor read at the mark, controller, row)."""
    thermal = tscu_session(TscuConfig(**NEVER_THROTTLE), make_sensor(arm, tmp / "calls"), tmp / f"calls-out-{arm}")
    thermal.start(background=False)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        telemetry_step(thermal, 3.0, 0.05)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def sampler_cpu_ms_per_s(arm: str, period: float, tmp: Path, seconds: float = 2.0, repeats: int = 3) -> float:
    """CPU milliseconds the background sampler costs per wall second (idle main thread), net of an
    interleaved idle baseline."""
    net = []
    for r in range(repeats):
        c0 = time.process_time()
        time.sleep(seconds)
        idle = time.process_time() - c0
        sampler = Sampler(make_sensor(arm, tmp / f"s{r}-{period}"), period)
        c0 = time.process_time()
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
        net.append((time.process_time() - c0 - idle) / seconds * 1e3)
    return statistics.median(net)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per arm per round")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    spec = BaseSpec()
    model = tiny_llama(spec, spec.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, spec.vocab_size, (args.batch, spec.block_size))

    def step_fn() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item() / 0.6931471805599453

    arms = ["off", "unavailable", "rapl", "replay", "rapl-10ms"]
    times: dict[str, list[list[tuple[float, float]]]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for _ in range(3):
            step_fn()  # warm-up
        for r in range(args.rounds):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for arm in order:
                times[arm].append(run_arm(arm, args.steps, step_fn, tmp / f"r{r}"))
        costs = {arm: call_cost_us(arm, tmp / f"c-{arm}") for arm in arms if arm not in ("off", "rapl-10ms")}
        thread = {
            f"{arm}@{round(1 / period)}Hz": sampler_cpu_ms_per_s(arm, period, tmp / "threads")
            for arm in ("unavailable", "rapl", "replay")
            for period in (0.1, 0.01)
        }

    step_ms = statistics.median(w for block in times["off"] for w, _ in block) * 1e3
    result = {
        "command": "python bench/telemetry_overhead.py "
        + f"--rounds {args.rounds} --steps {args.steps} --batch {args.batch} --threads {args.threads}",
        "machine": f"{args.threads} torch thread(s), CPU only, shared with other jobs",
        "median_step_ms_off": step_ms,
        "arms": {},
    }
    print(f"median step without telemetry: {step_ms:.1f} ms ({args.rounds} rounds x {args.steps} steps per arm, interleaved)")
    print(f"{'arm':<12} {'wall overhead (IQR)':>30} {'CPU overhead (IQR)':>30} {'session step':>16}")
    for arm in arms[1:]:
        entry = {"call_us": costs.get(arm)}
        text = []
        for k, kind in enumerate(("wall", "cpu")):
            ratios = [
                statistics.median(x[k] for x in a) / statistics.median(x[k] for x in b) - 1.0
                for a, b in zip(times[arm], times["off"])
            ]
            q1, med, q3 = statistics.quantiles(ratios, n=4)
            entry[kind] = {"median_overhead": statistics.median(ratios), "q1": q1, "q3": q3, "ratios": ratios}
            text.append(f"{100 * statistics.median(ratios):+.2f}% ({100 * q1:+.1f}..{100 * q3:+.1f})")
        result["arms"][arm] = entry
        cost = f"{costs[arm]:.0f} us" if arm in costs else "-"
        print(f"{arm:<12} {text[0]:>30} {text[1]:>30} {cost:>16}")
    result["sampler_thread_cpu_ms_per_s"] = thread
    print("sampler thread CPU, ms per second: " + ", ".join(f"{k} {v:.2f}" for k, v in thread.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
