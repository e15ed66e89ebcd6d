"""RAPL parsing and wrap-around on a fake /sys/class/powercap tree."""

import os
from pathlib import Path

import pytest

from scu.energy.base import SensorUnavailable
from scu.energy.rapl import RaplSensor

MAX_RANGE = 262_143_328_850  # a real package zone's max_energy_range_uj


def zone(root: Path, name: str, label: str, energy_uj: int, max_range: int = MAX_RANGE) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def set_energy(d: Path, uj: int) -> None:
    (d / "energy_uj").write_text(f"{uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control-type directory has no energy_uj
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 500_000)
    zone(root, "intel-rapl:0:1", "dram", 2_000_000)
    zone(root, "intel-rapl:1", "package-1", 7_000_000)
    zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)
    return root


def test_sums_packages_and_dram_not_core_or_mmio(powercap: Path, tmp_path: Path):
    s = RaplSensor(root=powercap, hwmon_root=tmp_path / "none", clock=lambda: 0.0)
    assert sorted(z.path.name for z in s.zones) == ["intel-rapl:0", "intel-rapl:0:1", "intel-rapl:1"]
    assert s.read().energy_joules == 0.0  # energy counts from the moment the sensor was opened
    set_energy(powercap / "intel-rapl:0", 3_000_000)  # +2 J
    set_energy(powercap / "intel-rapl:0:0", 9_000_000)  # core: inside the package, not added
    set_energy(powercap / "intel-rapl:0:1", 2_500_000)  # +0.5 J
    set_energy(powercap / "intel-rapl:1", 8_000_000)  # +1 J
    set_energy(powercap / "intel-rapl-mmio:0", 99_000_000)  # mirror of package-0, not added
    r = s.read()
    assert r.energy_joules == pytest.approx(3.5)
    assert r.power_watts is None and r.temperature_celsius is None


def test_wrap_around_uses_max_energy_range(tmp_path: Path):
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", MAX_RANGE - 1_000_000)
    s = RaplSensor(root=root, hwmon_root=tmp_path / "none")
    set_energy(pkg, MAX_RANGE - 200_000)  # +0.8 J
    assert s.read().energy_joules == pytest.approx(0.8)
    set_energy(pkg, 300_000)  # wrapped: +0.2 J to the top, +0.3 J after zero
    assert s.read().energy_joules == pytest.approx(1.3)
    set_energy(pkg, 1_300_000)  # +1 J
    assert s.read().energy_joules == pytest.approx(2.3)


def test_psys_alone_when_present(tmp_path: Path):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    psys = zone(root, "intel-rapl:1", "psys", 0)
    s = RaplSensor(root=root, hwmon_root=tmp_path / "none")
    assert [z.name for z in s.zones] == ["psys"]
    set_energy(psys, 4_000_000)
    set_energy(root / "intel-rapl:0", 1_000_000)
    assert s.read().energy_joules == pytest.approx(4.0)


def test_cpu_temperature_from_hwmon(powercap: Path, tmp_path: Path):
    hwmon = tmp_path / "hwmon"
    for chip, name, temps in [("hwmon0", "acpitz", [99_000]), ("hwmon1", "coretemp", [61_000, 67_500])]:
        d = hwmon / chip
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        for i, t in enumerate(temps, start=1):
            (d / f"temp{i}_input").write_text(f"{t}\n")
    s = RaplSensor(root=powercap, hwmon_root=hwmon)
    assert s.read().temperature_celsius == 67.5  # the CPU driver's hottest input, not the ACPI zone


def test_missing_tree_and_no_zones_are_unavailable(tmp_path: Path):
    with pytest.raises(SensorUnavailable, match="does not exist"):
        RaplSensor(root=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SensorUnavailable, match="no intel-rapl zones"):
        RaplSensor(root=tmp_path / "empty")


def test_root_only_counter_says_how_to_fix(tmp_path: Path, monkeypatch):
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 0)
    real_open = os.open

    def deny(path, *a, **k):  # what non-root meets on kernels patched for CVE-2020-8694
        if Path(path).name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(SensorUnavailable, match="readable by root only"):
        RaplSensor(root=root)


def test_transient_read_failure_gives_none_then_recovers(tmp_path: Path):
    root = tmp_path / "powercap"
    pkg = zone(root, "intel-rapl:0", "package-0", 0)
    s = RaplSensor(root=root, hwmon_root=tmp_path / "none")
    (pkg / "energy_uj").write_text("garbage")
    assert s.read().energy_joules is None
    set_energy(pkg, 2_000_000)
    assert s.read().energy_joules == pytest.approx(2.0)
