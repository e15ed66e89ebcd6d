"""The background sampler: per-step energy from counters, the no-sensor path, and failing sensors."""

import time

import pytest

from scu.energy import Interval, Reading, Sampler, Sensor, open_sensor
from scu.energy.base import Unavailable


class CounterSensor(Sensor):
    """A constant-power counter with a temperature ramp, on a fake clock."""

    name = "fake-counter"

    def __init__(self, watts: float, clock):
        super().__init__(clock)
        self.watts = watts

    def read(self) -> Reading:
        t = self.clock()
        return Reading(time=t, energy_joules=self.watts * t, temperature_celsius=40.0 + t, throttle_reasons=("sw_thermal",) if t > 2 else ())


def test_step_energy_power_and_hottest_temperature_between_marks():
    now = [0.0]
    sampler = Sampler(CounterSensor(50.0, lambda: now[0]))
    m0 = sampler.mark()
    for t in (0.5, 1.0, 2.5):
        now[0] = t
        sampler.sample()
    now[0] = 1.5 + 1.5
    step = Interval.between(m0, sampler.mark())
    assert step.duration_s == 3.0 and step.energy_joules == pytest.approx(150.0) and step.power_watts == pytest.approx(50.0)
    assert step.temperature_celsius == 43.0  # hottest since the previous mark
    assert step.throttle_reasons == ("sw_thermal",)
    m1 = sampler.mark()  # the maxima restart at each mark
    assert m1.temperature_celsius == 43.0 and m1.throttle_reasons == ("sw_thermal",)


def test_background_thread_samples_at_its_period():
    sampler = Sampler(CounterSensor(10.0, time.monotonic), period_s=0.01)
    sampler.start()
    time.sleep(0.3)
    sampler.stop()
    assert sampler.samples >= 5  # generous: two shared cores
    n = sampler.samples
    time.sleep(0.05)
    assert sampler.samples == n  # stopped means stopped


def test_unavailable_sensor_gives_null_figures_and_never_fails():
    sensor = open_sensor("none")
    assert isinstance(sensor, Unavailable) and sensor.describe()["reason"].startswith("disabled")
    sampler = Sampler(sensor, period_s=0.01)
    m0 = sampler.start()
    assert sampler._thread is None  # nothing to sample: no thread
    time.sleep(0.05)
    step = Interval.between(m0, sampler.mark())
    sampler.stop()
    assert step.duration_s > 0
    assert (step.energy_joules, step.power_watts, step.temperature_celsius) == (None, None, None)


def test_a_sensor_that_raises_is_counted_and_skipped():
    class Flaky(Sensor):
        calls = 0

        def read(self) -> Reading:
            self.calls += 1
            if self.calls == 2:
                raise OSError("device vanished")
            return Reading(time=float(self.calls), energy_joules=float(self.calls))

    sampler = Sampler(Flaky())
    m0 = sampler.mark()  # t=1, E=1
    assert sampler.sample() is None  # the failing read
    m1 = sampler.mark()  # t=3, E=3: the counter covers the gap
    assert sampler.errors == 1 and "device vanished" in sampler.last_error
    assert Interval.between(m0, m1).energy_joules == 2.0
