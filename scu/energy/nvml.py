"""NVIDIA GPUs through NVML (the `nvidia-ml-py` distribution, imported as `pynvml`).

Energy comes from each GPU's total-energy counter (mJ since the driver loaded, Volta and
newer), which is exact between two reads. When any monitored GPU lacks the counter the
reading carries power only (mW samples, integrated by the sampler). Temperatures are the
GPU die and, where NVML exposes it (HBM parts), the memory. Throttle reasons are the
clock-event bits NVML reports, by name.

Which GPUs: those named in CUDA_VISIBLE_DEVICES (indices or GPU-UUIDs), else all of them;
energy and power are summed, temperatures are the hottest device's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from scu.energy.base import Clock, Reading, Sensor, SensorUnavailable

# NVML clock-event (formerly "throttle") reason bits, by the names we report.
REASON_CONSTANTS = {
    "gpu_idle": "GpuIdle",
    "applications_clocks": "ApplicationsClocksSetting",
    "sw_power_cap": "SwPowerCap",
    "hw_slowdown": "HwSlowdown",
    "sync_boost": "SyncBoost",
    "sw_thermal": "SwThermalSlowdown",
    "hw_thermal": "HwThermalSlowdown",
    "hw_power_brake": "HwPowerBrakeSlowdown",
    "display_clocks": "DisplayClockSetting",
}


@dataclass
class Gpu:
    index: int
    handle: Any
    name: str
    energy_start_mj: int | None  # None: no energy counter on this GPU
    has_power: bool
    has_memory_temperature: bool
    reasons_fn: Any  # the clock-reasons query this driver supports, or None
    reason_bits: dict[str, int] = field(default_factory=dict)


def _import_pynvml():
    try:
        import pynvml
    except ImportError:
        raise SensorUnavailable("NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    return pynvml


def _visible_handles(nvml) -> list[tuple[int, Any]]:
    count = nvml.nvmlDeviceGetCount()
    if count == 0:
        raise SensorUnavailable("NVML: no NVIDIA GPU found")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    out = []
    for token in (t.strip() for t in visible.split(",")):
        if token.isdigit():
            out.append((int(token), nvml.nvmlDeviceGetHandleByIndex(int(token))))
        elif token.startswith("GPU-"):
            handle = nvml.nvmlDeviceGetHandleByUUID(token)
            out.append((nvml.nvmlDeviceGetIndex(handle), handle))
        else:
            raise SensorUnavailable(f"NVML: cannot map CUDA_VISIBLE_DEVICES entry {token!r} to a GPU (MIG slices have no own energy)")
    if not out:
        raise SensorUnavailable("NVML: CUDA_VISIBLE_DEVICES hides every GPU")
    return out


class NvmlSensor(Sensor):
    name = "nvml"

    def __init__(self, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        nvml = _import_pynvml()
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise SensorUnavailable(f"NVML: cannot initialize ({e})") from None
        try:
            self.gpus = [self._probe(i, h) for i, h in _visible_handles(nvml)]
        except nvml.NVMLError as e:
            nvml.nvmlShutdown()
            raise SensorUnavailable(f"NVML: cannot enumerate GPUs ({e})") from None
        except SensorUnavailable:
            nvml.nvmlShutdown()
            raise
        self.has_energy = all(g.energy_start_mj is not None for g in self.gpus)
        self.has_power = all(g.has_power for g in self.gpus)

    def _supported(self, fn, *args) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def _probe(self, index: int, handle: Any) -> Gpu:
        nvml = self.nvml
        name = self._supported(nvml.nvmlDeviceGetName, handle) or f"GPU {index}"
        reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if reasons_fn is None or self._supported(reasons_fn, handle) is None:
            reasons_fn = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
            if self._supported(reasons_fn, handle) is None:
                reasons_fn = None
        bits = {}
        for label, suffix in REASON_CONSTANTS.items():
            for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
                if hasattr(nvml, prefix + suffix):
                    bits[label] = getattr(nvml, prefix + suffix)
                    break
        return Gpu(
            index=index,
            handle=handle,
            name=name.decode() if isinstance(name, bytes) else str(name),
            energy_start_mj=self._supported(nvml.nvmlDeviceGetTotalEnergyConsumption, handle),
            has_power=self._supported(nvml.nvmlDeviceGetPowerUsage, handle) is not None,
            has_memory_temperature=self._memory_temperature(handle) is not None,
            reasons_fn=reasons_fn,
            reason_bits=bits,
        )

    def _memory_temperature(self, handle: Any) -> float | None:
        nvml = self.nvml
        values = self._supported(nvml.nvmlDeviceGetFieldValues, handle, [nvml.NVML_FI_DEV_MEMORY_TEMP])
        if values is None or values[0].nvmlReturn != nvml.NVML_SUCCESS:
            return None
        return float(values[0].value.uiVal)

    def read(self) -> Reading:
        nvml = self.nvml
        t = self.clock()
        energy: float | None = 0.0 if self.has_energy else None
        power: float | None = 0.0 if self.has_power else None
        temps: list[float] = []
        mem_temps: list[float] = []
        reasons: list[str] = []
        prefix = len(self.gpus) > 1
        for g in self.gpus:
            if energy is not None:
                counter = self._supported(nvml.nvmlDeviceGetTotalEnergyConsumption, g.handle)
                energy = None if counter is None else energy + (counter - g.energy_start_mj) / 1000.0
            if power is not None:
                mw = self._supported(nvml.nvmlDeviceGetPowerUsage, g.handle)
                power = None if mw is None else power + mw / 1000.0
            temp = self._supported(nvml.nvmlDeviceGetTemperature, g.handle, nvml.NVML_TEMPERATURE_GPU)
            if temp is not None:
                temps.append(float(temp))
            if g.has_memory_temperature:
                mem = self._memory_temperature(g.handle)
                if mem is not None:
                    mem_temps.append(mem)
            if g.reasons_fn is not None:
                mask = self._supported(g.reasons_fn, g.handle) or 0
                reasons.extend(
                    f"gpu{g.index}:{label}" if prefix else label for label, bit in g.reason_bits.items() if mask & bit
                )
        return Reading(
            time=t,
            energy_joules=energy,
            power_watts=power,
            temperature_celsius=max(temps) if temps else None,
            memory_temperature_celsius=max(mem_temps) if mem_temps else None,
            throttle_reasons=tuple(reasons),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "energy": "counter" if self.has_energy else "power samples" if self.has_power else "none",
            "devices": [
                {
                    "index": g.index,
                    "name": g.name,
                    "energy_counter": g.energy_start_mj is not None,
                    "power": g.has_power,
                    "memory_temperature": g.has_memory_temperature,
                    "throttle_reasons": g.reasons_fn is not None,
                }
                for g in self.gpus
            ],
        }

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
