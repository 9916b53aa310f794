"""Board profiles (thingssim.sim.boards) and CPU calibration (thingssim.calibrate)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from thingssim.calibrate import (
    EXPECTED_RESULT,
    REFERENCE_OPS_PER_S,
    calibrate,
    calibrate_command,
    workload,
)
from thingssim.sim.boards import PROFILES, BoardProfile, get_profile

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = {
    "beaglebone-black": "AM3358",
    "pocketbeagle": "AM3358",
    "raspberry-pi-3": "BCM2837",
    "raspberry-pi-zero": "BCM2835",
    "desktop-vm": "EPYC",
}


# --- profiles -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_is_valid_and_documented(name: str) -> None:
    p = PROFILES[name]
    assert p.name == name and p.description
    assert 0 < p.cpu_factor <= 2 and p.cores >= 1
    assert 64 <= p.memory_mb <= 64 * 1024
    assert 0 <= p.latency < 0.1 and 1e5 <= p.bandwidth <= 1e11
    assert 0 <= p.jitter < 0.1 and 0 <= p.loss < 0.05
    assert len(p.sources) > 200  # cites SoC/CPU, benchmark basis, memory and link
    if name in REQUIRED:
        assert REQUIRED[name] in p.sources
    assert "cpu_factor" in p.sources and "Mbit/s" in p.sources


def test_required_profiles_exist() -> None:
    assert set(REQUIRED) <= set(PROFILES)


def test_relative_ordering() -> None:
    f = {name: p.cpu_factor for name, p in PROFILES.items()}
    assert f["desktop-vm"] == max(f.values()) == pytest.approx(1.0)
    assert f["raspberry-pi-zero"] <= min(f.values()) * 1.2  # slowest, or nearly
    assert f["raspberry-pi-3"] > f["beaglebone-black"] > f["raspberry-pi-zero"]
    assert f["pocketbeagle"] == f["beaglebone-black"]  # same SoC and clock
    # A 1 GHz Cortex-A8 runs CPython ~15-40x slower than the reference x86 core.
    assert 1 / 40 <= f["beaglebone-black"] <= 1 / 15
    assert PROFILES["raspberry-pi-3"].cores == 4 and PROFILES["beaglebone-black"].cores == 1
    # Wired links beat the Zero W's 2.4 GHz Wi-Fi; gigabit beats 10/100.
    zero = PROFILES["raspberry-pi-zero"]
    for name in ("beaglebone-black", "raspberry-pi-3"):
        assert PROFILES[name].latency < zero.latency
        assert PROFILES[name].bandwidth > zero.bandwidth
    assert PROFILES["desktop-vm"].bandwidth > 5 * PROFILES["raspberry-pi-3"].bandwidth


def test_memory_never_exceeds_installed_ram() -> None:
    installed = {"beaglebone-black": 512, "pocketbeagle": 512, "raspberry-pi-3": 1024,
                 "raspberry-pi-zero": 512}
    for name, ram in installed.items():
        assert 0.5 * ram < PROFILES[name].memory_mb <= ram


def test_helpers() -> None:
    bbb = get_profile("beaglebone-black")
    assert bbb.compute_time(0.01) == pytest.approx(0.01 / bbb.cpu_factor)
    assert bbb.transfer_time(1000) == pytest.approx(bbb.latency + 8000 / bbb.bandwidth)


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["desktop-vm"].cpu_factor = 2.0  # type: ignore[misc]


def test_get_profile_error_lists_known_names() -> None:
    assert get_profile("raspberry-pi-3") is PROFILES["raspberry-pi-3"]
    with pytest.raises(KeyError) as info:
        get_profile("arduino-uno")
    message = str(info.value)
    assert "arduino-uno" in message
    for name in PROFILES:
        assert name in message


# --- with_overrides -------------------------------------------------------------------

def test_with_overrides_returns_a_modified_copy() -> None:
    pi = get_profile("raspberry-pi-3")
    slow = pi.with_overrides(latency=0.05, loss=0.1, cores=2)
    assert (slow.latency, slow.loss, slow.cores) == (0.05, 0.1, 2)
    assert slow.cpu_factor == pi.cpu_factor and slow.sources == pi.sources
    assert pi.latency == 0.0003 and pi.loss == 0.0  # the original is untouched
    assert pi.with_overrides() == pi
    assert pi.with_overrides(bandwidth=math.inf).transfer_time(10**9) == pi.latency


@pytest.mark.parametrize(("field", "value", "words"), [
    ("cpu_factor", 0, "cpu_factor must be > 0"),
    ("cpu_factor", -1.0, "cpu_factor must be > 0"),
    ("cpu_factor", math.inf, "cpu_factor must be finite"),
    ("cpu_factor", "fast", "cpu_factor must be a number"),
    ("cores", 0, "cores must be an integer >= 1"),
    ("cores", 2.5, "cores must be an integer >= 1"),
    ("cores", True, "cores must be an integer >= 1"),
    ("memory_mb", 0, "memory_mb must be > 0"),
    ("latency", -0.001, "latency must be >= 0"),
    ("latency", math.nan, "latency must be finite"),
    ("bandwidth", 0, "bandwidth must be > 0"),
    ("jitter", -1e-3, "jitter must be >= 0"),
    ("loss", 1.0, "loss must be in [0, 1)"),
    ("loss", -0.1, "loss must be >= 0"),
    ("name", "  ", "name must be a non-empty string"),
])
def test_with_overrides_validates(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        get_profile("beaglebone-black").with_overrides(**{field: value})


def test_with_overrides_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown BoardProfile field.*cpu_speed"):
        get_profile("desktop-vm").with_overrides(cpu_speed=2.0)


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="loss"):
        BoardProfile(name="x", description="", cpu_factor=1.0, cores=1, memory_mb=1,
                     latency=0.0, bandwidth=1e6, loss=2.0)


# --- calibration ----------------------------------------------------------------------

def test_workload_is_deterministic() -> None:
    assert workload() == workload() == EXPECTED_RESULT


def test_calibrate_report() -> None:
    """What the report says; how fast this machine is depends on its load, so bounds on
    cpu_factor and duration are in tests/benchmarks/test_calibrate_bench.py."""
    report = calibrate(0.3)
    assert {"workload_ops_per_s", "cpu_factor", "python", "machine",
            "reference_ops_per_s"} <= set(report)
    assert report["reference_ops_per_s"] == REFERENCE_OPS_PER_S
    assert report["workload_ops_per_s"] > 0
    assert report["cpu_factor"] == pytest.approx(report["workload_ops_per_s"]
                                                 / REFERENCE_OPS_PER_S)
    assert report["python"].endswith(".".join(map(str, sys.version_info[:2])) + "."
                                     + str(sys.version_info[2]))
    assert report["seconds"] >= 0.3 * (1 - 1e-9)  # its rounds last at least that long
    json.dumps(report)  # machine-readable as is


def test_calibrate_rejects_nonpositive_duration() -> None:
    with pytest.raises(ValueError):
        calibrate(0)


def test_calibrate_module_needs_only_stdlib_and_click() -> None:
    """Boards have no numpy/pandas/simpy: importing the module must not pull them in."""
    code = ("import sys, thingssim.calibrate, thingssim.sim.boards; "
            "heavy = {'numpy', 'pandas', 'simpy', 'matplotlib'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_command_json() -> None:
    result = CliRunner().invoke(calibrate_command, ["--seconds", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cpu_factor"] > 0
    assert report["cpu_factor"] == pytest.approx(report["workload_ops_per_s"]
                                                 / REFERENCE_OPS_PER_S)
    assert report["reference_ops_per_s"] == REFERENCE_OPS_PER_S
    assert "toml" not in report


def test_command_profile_name_prints_toml() -> None:
    result = CliRunner().invoke(calibrate_command, ["--seconds", "0.3",
                                                    "--profile-name", "my-pi"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "[[boards]]"
    values = dict(line.split(" = ") for line in lines if " = " in line)
    assert values["name"] == '"my-pi"' and values["profile"] == '"raspberry-pi-3"'
    assert float(values["cpu_factor"]) > 0
    assert int(values["cores"]) >= 1
    if sys.version_info >= (3, 11):
        import tomllib

        parsed = tomllib.loads(result.stdout)["boards"][0]
        assert parsed["cpu_factor"] == float(values["cpu_factor"])
        quoted = CliRunner().invoke(calibrate_command, ["--seconds", "0.05",
                                                        "--profile-name", 'lab "a" 1'])
        assert tomllib.loads(quoted.stdout)["boards"][0]["name"] == 'lab "a" 1'


@pytest.mark.parametrize("name", ["bbb-lab", "beaglebone-black"])
def test_profile_snippet_is_accepted_by_a_scenario(name: str, tmp_path: Path) -> None:
    """The printed entry, pasted into a scenario file, loads and runs (issue 8)."""
    from thingssim.cli import main
    from thingssim.sim.scenario import Scenario

    snippet = CliRunner().invoke(calibrate_command, ["--seconds", "0.05",
                                                     "--profile-name", name]).stdout
    path = tmp_path / "calibrated.toml"
    path.write_text("duration = 1.0\n\n" + snippet)
    board = Scenario.from_toml(path).boards[0]
    assert board.name == name
    assert board.profile == (name if name in PROFILES else "raspberry-pi-3")
    assert {"cpu_factor", "cores"} <= set(board.overrides)
    run = CliRunner().invoke(main, ["sim", str(path), "--no-progress"])
    assert run.exit_code == 0, run.output
    assert name in run.stdout


def test_command_rejects_bad_values() -> None:
    for args in (["--seconds", "nan"], ["--seconds", "inf"], ["--profile-name", "a/b"]):
        bad = CliRunner().invoke(calibrate_command, args)
        assert bad.exit_code == 2 and "Traceback" not in bad.output, args
        assert bad.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for")


def test_command_json_with_profile_name_and_plain_text() -> None:
    both = CliRunner().invoke(calibrate_command, ["--seconds", "0.05", "--json",
                                                  "--profile-name", "bbb2"])
    assert both.exit_code == 0, both.output
    assert json.loads(both.stdout)["toml"].startswith("[[boards]]\n")
    plain = CliRunner().invoke(calibrate_command, ["--seconds", "0.05"])
    assert plain.exit_code == 0 and "cpu_factor" in plain.stdout
    bad = CliRunner().invoke(calibrate_command, ["--seconds", "0"])
    assert bad.exit_code == 2
