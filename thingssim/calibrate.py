"""Measure a machine's ``cpu_factor``: its CPython speed relative to the reference machine.

The simulation scales Python work measured on the reference machine by a board's
``cpu_factor`` (:mod:`thingssim.sim.boards`). This module defines that factor
operationally: one fixed, deterministic pure-Python workload shaped like IoT programs,
timed here and on the board. The factor therefore includes the board's interpreter
(CPython version and build) as well as its CPU, which is what programs actually see.

Board-safe: the standard library and click only (no numpy, pandas or simpy).
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["EXPECTED_RESULT", "REFERENCE_OPS_PER_S", "calibrate", "calibrate_command",
           "workload"]

# Best of 6 runs of `calibrate(seconds=3.0)` on the reference machine, 2026-11-30:
# "AMD EPYC" (/proc/cpuinfo model name, 2.6 GHz; platform.processor() is empty), x86_64,
# 2 vCPUs, CPython 3.11.7 (GCC 12.2.0). Runs ranged from 2,540 to 2,704 ops/s. The
# interpreter counts too: on the same machine CPython 3.9 gave ~1,600 ops/s (factor ~0.6),
# 3.10 ~1,650, 3.12 ~2,300 and 3.13 ~2,350 (1 s runs).
REFERENCE_OPS_PER_S = 2700.0

_ROUNDS = 5
"""Rounds per calibration; the best round counts, like timeit, to shed noise from
other processes (the reference number was taken the same way)."""


class _Sensor:
    """A small stateful object with methods, like a program's sensor wrapper."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def update(self, value: float) -> None:
        # Welford's running mean and variance.
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    def variance(self) -> float:
        return self._m2 / (self.count - 1) if self.count > 1 else 0.0


def _integers(n: int) -> int:
    """Integer loop: hashing, bit twiddling, branches (counters, checksums, ids)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + (i ^ (i >> 3))) & 0xFFFFFFFF
        if acc % 3 == 0:
            acc += i
    return acc


def _floats(n: int) -> float:
    """Float math: a 1-D Kalman filter (RIoTBench's q=0.125, r=0.32, P0=30).

    Only IEEE-exact operations (+ - * / sqrt) so the result is bit-identical everywhere.
    """
    x, p, q, r = 0.0, 30.0, 0.125, 0.32
    energy = 0.0
    for i in range(n):
        z = 20.0 + ((i * 7919) % 97 - 48) * 0.05
        p += q
        k = p / (p + r)
        x += k * (z - x)
        p *= 1.0 - k
        energy += math.sqrt(abs(z - x))
    return x + energy


def _collections(n: int) -> int:
    """dict/list/str work: group readings by topic, sort, split and join strings."""
    readings: dict[str, int] = {}
    for i in range(n):
        readings[f"home/room{i % 8}/sensor{i}"] = (i * 37) % 101
    top = sorted(readings.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    joined = "|".join(key.upper() for key, _ in top)
    words: dict[str, int] = {}
    for key in readings:
        for part in key.split("/"):
            words[part] = words.get(part, 0) + 1
    odd = [v for v in readings.values() if v % 2]
    odd.reverse()
    return len(joined.split("|")) + len(words) + sum(odd[:20]) + joined.count("ROOM")


def _json(n: int) -> int:
    """JSON encode/decode of small MQTT-sized messages."""
    total = 0
    for i in range(n):
        message = {"topic": f"sensors/{i % 4}/temp", "seq": i,
                   "value": round(20.0 + i * 0.25, 2), "tags": ["a", "b", i % 3],
                   "ok": i % 2 == 0}
        text = json.dumps(message, separators=(",", ":"))
        total += json.loads(text)["seq"] + len(text)
    return total


def _objects(n: int) -> float:
    """Small objects and method calls."""
    sensors = [_Sensor(f"s{j}") for j in range(4)]
    for i in range(n):
        sensors[i & 3].update(((i * 2654435761) % 1000) / 10.0)
    return sum(s.variance() for s in sensors)


def workload() -> tuple[int, float, int, int, float]:
    """One unit of work ("op"): a fixed mix, about 0.35 ms on the reference machine.

    Roughly equal time in each part; the checksum-like result proves the work was done.
    """
    return (_integers(800), round(_floats(500), 9), _collections(120), _json(16),
            round(_objects(500), 6))


EXPECTED_RESULT = (558980506, 461.080815856, 1133, 1358, 3356.774194)
"""What :func:`workload` returns on any correct interpreter (checked by calibrate)."""


def _cpu_model() -> str:
    """A human name for the CPU or board, from /proc/cpuinfo when there is one."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and value.strip():
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # Raspberry Pis name the board in "Model"; x86 and most ARM kernels give "model name".
    parts = [fields[k] for k in ("Model", "model name", "Hardware") if k in fields]
    return ", ".join(parts) or platform.processor() or "unknown CPU"


def _memory_available_mb() -> int | None:
    """MemAvailable (what programs can still use), or None off Linux."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def calibrate(seconds: float = 2.0) -> dict[str, Any]:
    """Run the workload for about ``seconds`` and compare its rate with the reference.

    The time is split into rounds; the best round's rate counts. Raises ``RuntimeError``
    if the workload computes something else than :data:`EXPECTED_RESULT`, because then
    this interpreter did different work and the factor would mean nothing.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    result = workload()  # warm-up (imports, caches, specialisation) and correctness
    if result != EXPECTED_RESULT:
        raise RuntimeError(f"calibration workload returned {result!r}, expected "
                           f"{EXPECTED_RESULT!r}: this interpreter does not compute the "
                           "same work, so no factor can be given")
    round_time = seconds / _ROUNDS
    best = 0.0
    start = time.perf_counter()
    for _ in range(_ROUNDS):
        gc.collect()
        ops = 0
        t0 = time.perf_counter()
        elapsed = 0.0
        while elapsed < round_time or ops == 0:
            workload()
            ops += 1
            elapsed = time.perf_counter() - t0
        best = max(best, ops / elapsed)
    total = time.perf_counter() - start
    return {
        "workload_ops_per_s": best,
        "cpu_factor": best / REFERENCE_OPS_PER_S,
        "reference_ops_per_s": REFERENCE_OPS_PER_S,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "machine": f"{platform.machine()}, {_cpu_model()}",
        "cores": os.cpu_count() or 1,
        "memory_mb": _memory_available_mb(),
        "seconds": total,
    }


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a TOML basic string uses JSON's escapes


def profile_toml(name: str, report: dict[str, Any]) -> str:
    """A ``[[boards]]`` entry for a scenario file: board ``name`` with the measured
    ``cpu_factor``, ``cores`` and ``memory_mb`` over a base profile, whose link numbers
    (latency, bandwidth, jitter, loss) it keeps: ``name`` itself when it is a profile."""
    from .sim.boards import PROFILES  # standard library only, like this module

    base = name if name in PROFILES else "raspberry-pi-3"
    lines = ["[[boards]]",
             f"# thingssim calibrate, {time.strftime('%Y-%m-%d')}: {report['python']} "
             f"on {report['machine']}",
             f"# link numbers come from the profile; known: {', '.join(sorted(PROFILES))}",
             f"name = {_toml_string(name)}",
             f"profile = {_toml_string(base)}",
             f"cpu_factor = {report['cpu_factor']:.4g}",
             f"cores = {report['cores']}"]
    if report.get("memory_mb"):
        lines.append(f"memory_mb = {report['memory_mb']}")
    return "\n".join(lines) + "\n"


def _seconds(ctx: Any, param: Any, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number.", ctx, param)
    return value


def _board_name(ctx: Any, param: Any, value: str | None) -> str | None:
    """A scenario board name (it becomes an engine id, a topic level)."""
    if value is not None and (not value or any(c in value for c in "/+#\0")):
        raise click.BadParameter(f"{value!r}: a board name must be non-empty, without "
                                 "'/', '+', '#'", ctx, param)
    return value


@click.command("calibrate")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=2.0,
              callback=_seconds, show_default=True, help="How long to run the workload.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--profile-name", metavar="NAME", default=None, callback=_board_name,
              help="Print a scenario [[boards]] entry for board NAME with the measured "
                   "cpu_factor, cores and memory.")
@click.option("--from-lab", "from_lab", is_flag=True,
              help="Measure the emulated board lab (root, iproute2, Mosquitto) and fit the "
                   "simulator's costs, broker and will timing to it; writes --out.")
@click.option("--out", default="calibration.json", show_default=True,
              help="Where --from-lab writes the calibration (JSON).")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Repetitions of each --from-lab measurement.")
def calibrate_command(seconds: float, as_json: bool, profile_name: str | None,
                      from_lab: bool, out: str, reps: int) -> None:
    """Measure this machine's cpu_factor (CPython speed relative to the reference machine).

    Run it on a board to replace a profile's estimated cpu_factor with a measurement.
    With --from-lab, fit the simulator to the board lab instead (scenarios load the result
    with [cost] from = "calibration.json"; thingssim.labcalibrate says what is measured).
    """
    if from_lab:
        from .lab import LabError
        from .labcalibrate import calibrate_from_lab, lab_unavailable

        reason = lab_unavailable()
        if reason:
            raise click.ClickException(f"--from-lab: {reason}")
        try:
            path = calibrate_from_lab(out, reps=reps, log=click.echo)
        except (LabError, RuntimeError, TimeoutError) as exc:
            raise click.ClickException(f"--from-lab: {exc}") from None
        click.echo(f"wrote {path}: " + json.dumps({k: v for k, v in json.loads(
            Path(path).read_text()).items() if k in ("cost", "broker")}))
        return
    try:
        report = calibrate(seconds)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        if profile_name is not None:
            report = {**report, "toml": profile_toml(profile_name, report)}
        click.echo(json.dumps(report, indent=2))
    elif profile_name is not None:
        click.echo(profile_toml(profile_name, report), nl=False)
    else:
        click.echo(f"workload    {report['workload_ops_per_s']:,.0f} ops/s "
                   f"(reference machine: {report['reference_ops_per_s']:,.0f} ops/s)\n"
                   f"cpu_factor  {report['cpu_factor']:.4g}\n"
                   f"python      {report['python']}\n"
                   f"machine     {report['machine']}, {report['cores']} cores")
