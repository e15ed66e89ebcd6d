"""NvmlSensor against pynvml patched at the library boundary (no GPU on this machine).

The fake replaces only pynvml's functions; constants, the ctypes field-value struct and the
NVMLError classes are the library's own, so the sensor meets exactly what a driver returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pynvml
import pytest

from scu import ScuError
from scu.energy import Sampler, open_sensor
from scu.energy.base import SensorUnavailable, Unavailable
from scu.energy.nvml import NvmlSensor

NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED


@dataclass
class FakeGpu:
    uuid: str
    energy_mj: int | None = 1_000_000  # None: NOT_SUPPORTED
    power_mw: int | None = 100_000
    temp_c: int = 50
    mem_temp_c: int | None = 60
    reasons: int = 0
    fail: set[str] = field(default_factory=set)  # functions that raise a transient error now


class FakeNvml:
    """The pynvml functions NvmlSensor calls, over a list of FakeGpu."""

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None, event_reasons: bool = True):
        self.gpus = gpus
        self.init_error = init_error
        self.event_reasons = event_reasons
        self.shutdowns = 0

    def _gpu(self, handle, fn: str) -> FakeGpu:
        g = self.gpus[handle]
        if fn in g.fail:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return g

    def install(self, monkeypatch) -> None:
        def init():
            if self.init_error is not None:
                raise pynvml.NVMLError(self.init_error)

        def shutdown():
            self.shutdowns += 1

        def energy(h):
            g = self._gpu(h, "energy")
            if g.energy_mj is None:
                raise pynvml.NVMLError(NOT_SUPPORTED)
            return g.energy_mj

        def power(h):
            g = self._gpu(h, "power")
            if g.power_mw is None:
                raise pynvml.NVMLError(NOT_SUPPORTED)
            return g.power_mw

        def temperature(h, sensor):
            assert sensor == pynvml.NVML_TEMPERATURE_GPU
            return self._gpu(h, "temperature").temp_c

        def field_values(h, ids):
            assert ids == [pynvml.NVML_FI_DEV_MEMORY_TEMP]
            g = self._gpu(h, "fields")
            values = (pynvml.c_nvmlFieldValue_t * 1)()
            values[0].fieldId = ids[0]
            if g.mem_temp_c is None:
                values[0].nvmlReturn = NOT_SUPPORTED
            else:
                values[0].nvmlReturn = pynvml.NVML_SUCCESS
                values[0].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                values[0].value.uiVal = g.mem_temp_c
            return values

        def event_reasons(h):
            if not self.event_reasons:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            return self._gpu(h, "reasons").reasons

        def throttle_reasons(h):
            return self._gpu(h, "reasons").reasons

        def by_uuid(uuid):
            return next(i for i, g in enumerate(self.gpus) if g.uuid == uuid)

        patches = {
            "nvmlInit": init,
            "nvmlShutdown": shutdown,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetHandleByUUID": by_uuid,
            "nvmlDeviceGetIndex": lambda h: h,
            "nvmlDeviceGetName": lambda h: "NVIDIA Fake H100",
            "nvmlDeviceGetTotalEnergyConsumption": energy,
            "nvmlDeviceGetPowerUsage": power,
            "nvmlDeviceGetTemperature": temperature,
            "nvmlDeviceGetFieldValues": field_values,
            "nvmlDeviceGetCurrentClocksEventReasons": event_reasons,
            "nvmlDeviceGetCurrentClocksThrottleReasons": throttle_reasons,
        }
        for name, fn in patches.items():
            monkeypatch.setattr(pynvml, name, fn)


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_two_gpus_sum_energy_and_power_take_hottest(monkeypatch):
    gpus = [FakeGpu("GPU-a", temp_c=55, mem_temp_c=70), FakeGpu("GPU-b", energy_mj=5_000_000, temp_c=63, mem_temp_c=66)]
    FakeNvml(gpus).install(monkeypatch)
    s = NvmlSensor(clock=lambda: 0.0)
    r = s.read()
    assert r.energy_joules == 0.0  # counters count from the moment the sensor was opened
    gpus[0].energy_mj += 250_000  # +250 J
    gpus[1].energy_mj += 1_500  # +1.5 J
    gpus[0].power_mw, gpus[1].power_mw = 310_500, 120_250
    r = s.read()
    assert r.energy_joules == pytest.approx(251.5)
    assert r.power_watts == pytest.approx(430.75)
    assert r.temperature_celsius == 63.0
    assert r.memory_temperature_celsius == 70.0
    assert s.describe()["energy"] == "counter"


def test_throttle_reasons_by_name_per_gpu(monkeypatch):
    gpus = [
        FakeGpu("GPU-a", reasons=pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown),
        FakeGpu("GPU-b", reasons=0),
    ]
    FakeNvml(gpus).install(monkeypatch)
    assert NvmlSensor().read().throttle_reasons == ("gpu0:sw_power_cap", "gpu0:hw_thermal")


def test_old_driver_falls_back_to_throttle_reasons_query(monkeypatch):
    FakeNvml([FakeGpu("GPU-a", reasons=pynvml.nvmlClocksThrottleReasonSwThermalSlowdown)], event_reasons=False).install(
        monkeypatch
    )
    assert NvmlSensor().read().throttle_reasons == ("sw_thermal",)


def test_no_energy_counter_means_power_samples_integrated_by_the_sampler(monkeypatch):
    gpu = FakeGpu("GPU-a", energy_mj=None, power_mw=200_000, mem_temp_c=None)
    FakeNvml([gpu]).install(monkeypatch)
    now = [0.0]
    s = NvmlSensor(clock=lambda: now[0])
    assert s.describe()["energy"] == "power samples"
    assert s.read().energy_joules is None and s.read().memory_temperature_celsius is None
    sampler = Sampler(s, period_s=1.0)
    m0 = sampler.mark()
    now[0] = 1.0
    sampler.sample()
    gpu.power_mw = 100_000
    now[0] = 3.0
    m1 = sampler.mark()
    # trapezoids: 1 s at 200 W, then 2 s from 200 W to 100 W = 200 + 300 J
    assert m1.energy_joules - m0.energy_joules == pytest.approx(500.0)


def test_cuda_visible_devices_selects_gpus_by_index_and_uuid(monkeypatch):
    gpus = [FakeGpu("GPU-a", temp_c=90), FakeGpu("GPU-b", temp_c=40), FakeGpu("GPU-c", temp_c=45)]
    FakeNvml(gpus).install(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,GPU-c")
    s = NvmlSensor()
    assert [d["index"] for d in s.describe()["devices"]] == [1, 2]
    assert s.read().temperature_celsius == 45.0  # the hidden 90 C GPU is not ours
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234")
    with pytest.raises(SensorUnavailable, match="MIG"):
        NvmlSensor()


def test_transient_errors_give_none_not_a_crash(monkeypatch):
    gpu = FakeGpu("GPU-a")
    FakeNvml([gpu]).install(monkeypatch)
    s = NvmlSensor()
    gpu.fail = {"energy", "power", "temperature", "fields", "reasons"}
    r = s.read()
    assert (r.energy_joules, r.power_watts, r.temperature_celsius, r.memory_temperature_celsius) == (None,) * 4
    gpu.fail = set()
    gpu.energy_mj += 3_000
    assert s.read().energy_joules == pytest.approx(3.0)


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_driver_is_unavailable_with_reason(monkeypatch, code):
    FakeNvml([], init_error=code).install(monkeypatch)
    with pytest.raises(SensorUnavailable, match="NVML: cannot initialize"):
        NvmlSensor()
    with pytest.raises(ScuError, match="NVML"):
        open_sensor("nvml")  # asked for by name: a user error
    monkeypatch.setattr("scu.energy.auto_order", lambda: ["nvml"])
    auto = open_sensor("auto")
    assert isinstance(auto, Unavailable) and "NVML: cannot initialize" in auto.reason


def test_zero_gpus_is_unavailable_and_shuts_nvml_down(monkeypatch):
    fake = FakeNvml([])
    fake.install(monkeypatch)
    with pytest.raises(SensorUnavailable, match="no NVIDIA GPU"):
        NvmlSensor()
    assert fake.shutdowns == 1
