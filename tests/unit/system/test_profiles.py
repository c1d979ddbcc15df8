"""Tests for flexpl.system.profiles and the packaged profiles.yaml."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from flexpl.errors import UserError
from flexpl.system.profiles import (
    DeviceProfile,
    LinkProfile,
    device_profile,
    link_profile,
    load_profiles,
)

DEVICE_NAMES = {
    "rpi4",
    "rpi5",
    "jetson-nano",
    "jetson-orin-nano",
    "phone",
    "edge-server",
    "cloud-server",
    "cloud-gpu",
    "laptop-cpu",
}
LINK_NAMES = {"wifi", "lte", "5g", "ble", "ethernet", "fiber", "loopback"}

_NUMBER_LINE = re.compile(r"^\s+[\w.-]+:\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*(#.*)?$")


def _yaml_text() -> str:
    return resources.files("flexpl.system").joinpath("profiles.yaml").read_text(encoding="utf-8")


def test_all_builtins_present_and_valid() -> None:
    devices, links = load_profiles()
    assert set(devices) == DEVICE_NAMES
    assert set(links) == LINK_NAMES
    for d in devices.values():
        assert isinstance(d, DeviceProfile)
        assert d.flops_per_s > 0 and d.memory_bytes > 0
        assert d.active_power_w >= d.idle_power_w >= 0
        assert d.energy_per_flop() > 0
    for lk in links.values():
        assert isinstance(lk, LinkProfile)
        assert lk.bandwidth_up_bps > 0 and lk.bandwidth_down_bps > 0


def test_cloud_alias_identical() -> None:
    devices, _ = load_profiles()
    assert devices["cloud-gpu"] == devices["cloud-server"]
    assert devices["cloud-server"].flops_per_s == pytest.approx(1.0e13)


def test_suggested_defaults_spot_checks() -> None:
    devices, links = load_profiles()
    assert devices["rpi4"].flops_per_s == pytest.approx(1.0e10)
    assert devices["rpi4"].memory_bytes == pytest.approx(4e9)
    assert links["lte"].bandwidth_up_bps == pytest.approx(6e6)
    assert links["lte"].latency_s == pytest.approx(0.025)  # RTT/2 of 50 ms
    lb = links["loopback"]
    assert lb.latency_s == 0 and lb.tx_j_per_bit == 0 and lb.rx_j_per_bit == 0


def test_yaml_numbers_load_as_numbers() -> None:
    doc = yaml.safe_load(_yaml_text())
    for section in ("devices", "links"):
        for name, fields in doc[section].items():
            for key, value in fields.items():
                if key == "duplex":  # the one word-valued field
                    assert value in ("full", "half"), (section, name)
                    continue
                assert value is None or isinstance(value, (int, float)), (section, name, key)


def test_every_numeric_line_has_a_comment() -> None:
    in_section = False
    checked = 0
    for lineno, line in enumerate(_yaml_text().splitlines(), 1):
        if re.match(r"^(devices|links):", line):
            in_section = True
            continue
        if re.match(r"^\S", line) and not line.startswith("#"):
            in_section = False
        if in_section and _NUMBER_LINE.match(line):
            checked += 1
            assert "#" in line, f"profiles.yaml line {lineno} has no source comment: {line!r}"
    # 9 devices x 4 numeric fields (cloud-gpu is an alias) minus 1 + 7 links x 5
    assert checked >= 8 * 4 + 7 * 5


def test_load_profiles_returns_copies() -> None:
    devices, _ = load_profiles()
    devices["rpi4"].flops_per_s = 1.0
    devices.pop("rpi5")
    again, _ = load_profiles()
    assert again["rpi4"].flops_per_s == pytest.approx(1.0e10)
    assert "rpi5" in again


def test_energy_per_flop_derived_and_explicit() -> None:
    d = DeviceProfile(flops_per_s=1e10, active_power_w=5.0)
    assert d.energy_per_flop() == pytest.approx(5e-10)
    d2 = DeviceProfile(flops_per_s=1e10, active_power_w=5.0, joules_per_flop=1e-12)
    assert d2.energy_per_flop() == pytest.approx(1e-12)
    assert DeviceProfile(flops_per_s=1e9).energy_per_flop() == 0.0
    assert device_profile("rpi4").energy_per_flop() == pytest.approx(7.2 / 1.0e10)


def test_overrides_apply() -> None:
    d = device_profile("rpi4", {"flops_per_s": 2e10, "joules_per_flop": 3e-10})
    assert d.flops_per_s == pytest.approx(2e10)
    assert d.energy_per_flop() == pytest.approx(3e-10)
    assert d.idle_power_w == pytest.approx(1.6)  # untouched fields keep built-in values
    lk = link_profile("wifi", {"latency_s": 0.1, "bandwidth_down_bps": "2e8"})
    assert lk.latency_s == pytest.approx(0.1)
    assert lk.bandwidth_down_bps == pytest.approx(2e8)
    # the built-in itself is not modified
    assert device_profile("rpi4").flops_per_s == pytest.approx(1.0e10)
    assert link_profile("wifi").latency_s == pytest.approx(0.0025)


def test_unknown_name_names_field_and_lists_allowed() -> None:
    with pytest.raises(UserError) as ei:
        device_profile("rpi9", field="nodes[3].profile")
    msg = str(ei.value)
    assert "nodes[3].profile" in msg and "rpi9" in msg and "rpi4" in msg
    assert "\n" not in msg
    with pytest.raises(UserError) as ei:
        link_profile("carrier-pigeon", field="links[0].profile")
    assert "links[0].profile" in str(ei.value) and "wifi" in str(ei.value)


def test_zero_bandwidth_rejected() -> None:
    with pytest.raises(UserError) as ei:
        link_profile("wifi", {"bandwidth_up_bps": 0}, field="links[1].overrides")
    msg = str(ei.value)
    assert "links[1].overrides.bandwidth_up_bps" in msg and "> 0" in msg
    assert "\n" not in msg and "pydantic" not in msg
    with pytest.raises(UserError, match=r"nodes\[0\]\.overrides\.idle_power_w"):
        device_profile("rpi4", {"idle_power_w": -1}, field="nodes[0].overrides")


def test_unknown_override_field_rejected() -> None:
    with pytest.raises(UserError) as ei:
        device_profile("phone", {"flops": 1e9}, field="nodes[2].overrides")
    msg = str(ei.value)
    assert "nodes[2].overrides.flops" in msg and "flops_per_s" in msg
    assert "\n" not in msg


def test_file_profile(tmp_path: Path) -> None:
    f = tmp_path / "calib.yaml"
    f.write_text("flops_per_s: 1.5e+10\nactive_power_w: 6.0\nmemory_bytes: 2.0e+9\n")
    d = device_profile(str(f))
    assert d.flops_per_s == pytest.approx(1.5e10)
    assert d.energy_per_flop() == pytest.approx(6.0 / 1.5e10)
    d2 = device_profile(f, {"idle_power_w": 1.0})
    assert d2.idle_power_w == pytest.approx(1.0)
    d3 = device_profile("calib.yaml", base_dir=tmp_path)
    assert d3 == d


def test_file_profile_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(UserError, match="nope.yml") as ei:
        device_profile(str(missing), field="nodes[1].profile")
    assert "nodes[1].profile" in str(ei.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("flops_per_s: 0\n")
    with pytest.raises(UserError, match=r"bad\.yaml.*flops_per_s"):
        device_profile(str(bad))
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="list.yaml"):
        device_profile(str(notmap))


def test_load_profiles_from_custom_path(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(
        "devices:\n  tiny: {flops_per_s: 1.0e+6}\n"
        "links:\n  slow: {bandwidth_up_bps: 1.0e+3, bandwidth_down_bps: 2.0e+3}\n"
    )
    devices, links = load_profiles(f)
    assert devices["tiny"].memory_bytes == pytest.approx(4e9)
    assert links["slow"].bandwidth_down_bps == pytest.approx(2e3)
    f.write_text("devices:\n  tiny: {flops_per_s: -1}\n")
    with pytest.raises(UserError, match=r"mine\.yaml.*devices\.tiny\.flops_per_s"):
        load_profiles(f)
