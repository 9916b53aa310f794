"""CPU and memory emulation for the board lab: each worker (and its program processes) in a cgroup.

The lab's links are shaped like the boards', but without this its workers compute at the
speed of the machine they run on: a "Pi Zero" would snapshot 40x faster than one. Here
each worker gets a cgroup with

- a **CPU quota** from its profile: ``cores x (profile cpu_factor / this machine's
  factor)`` CPUs of this machine, where this machine's factor is what ``thingssim
  calibrate`` measures (its speed relative to the reference machine that defines
  ``cpu_factor = 1``). Capped at this machine's CPU count (a "desktop VM" cannot be
  emulated faster than the host). The kernel needs a quota of at least 1 ms per period,
  so slow boards get a longer period (``1 ms / share``): a short period spreads the
  board's CPU evenly, which matters for millisecond-scale migration phases;
- a **memory limit**: the profile's ``memory_mb``.

cgroup v2 (``cpu.max``, ``memory.max``) is used where a unified hierarchy has both
controllers; else cgroup v1 (``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and
``memory.limit_in_bytes``). A process joins its groups before it execs (``preexec``), so
the worker and every program child it forks are inside from their first instruction.

What a quota cannot do: it limits a board's *aggregate* CPU, not one core's speed. A
single-threaded program on a 4-core "Pi 3" may use all four cores' quota, so it runs up
to 4x faster than on one real Pi 3 core. Single-core profiles (BeagleBone, Pi Zero) are
emulated faithfully; say so when quoting multi-core ones.

Where cgroups are not available (no root, no controllers), :func:`detect` says why and
the lab runs un-throttled, recording that in its state.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .sim.boards import BoardProfile

__all__ = ["CgroupSupport", "CpuLimit", "WorkerGroup", "cpu_limit", "cpu_usage", "create_group",
           "detect", "join_function", "remove_group"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIN_QUOTA_US = 1000
"""The kernel's smallest CFS quota (1 ms)."""
MAX_PERIOD_US = 1_000_000
"""The kernel's longest CFS period (1 s)."""
BASE_PERIOD_US = 10_000
"""The period when the quota allows it: 10 ms, so a board's CPU is not handed out in
100 ms lumps (the kernel default) that would dominate a 5 ms snapshot."""


@dataclass(frozen=True)
class CgroupSupport:
    """What this machine offers: ``version`` "v2", "v1" or "none" (then ``reason``)."""

    version: str
    cpu_root: str = ""
    memory_root: str = ""
    reason: str = ""
    #: v1: the cpuacct hierarchy when it is mounted apart from cpu (its groups count
    #: CPU time in ns; v2's cpu.stat does that in the group itself)
    cpuacct_root: str = ""

    @property
    def available(self) -> bool:
        return self.version in ("v1", "v2")


@dataclass(frozen=True)
class CpuLimit:
    """One board's share of this machine: ``cpus`` (quota / period) and the memory cap."""

    cpus: float
    quota_us: int
    period_us: int
    memory_bytes: int
    capped: bool

    @property
    def speed(self) -> float:
        """The speed of one thread, as a fraction of one of this machine's CPUs."""
        return min(1.0, self.cpus)


def cpu_limit(profile: BoardProfile, machine_factor: float, machine_cpus: int) -> CpuLimit:
    """The quota that makes this machine compute like ``profile`` (see the module
    docstring): ``cores x cpu_factor / machine_factor`` CPUs, capped at ``machine_cpus``."""
    if not machine_factor > 0:
        raise ValueError(f"machine factor must be > 0, got {machine_factor!r}")
    wanted = profile.cores * profile.cpu_factor / machine_factor
    cpus = min(wanted, float(machine_cpus))
    period = BASE_PERIOD_US
    if cpus * period < MIN_QUOTA_US:
        period = min(MAX_PERIOD_US, math.ceil(MIN_QUOTA_US / cpus))
    quota = max(MIN_QUOTA_US, round(cpus * period))
    return CpuLimit(cpus=quota / period, quota_us=quota, period_us=period,
                    memory_bytes=int(profile.memory_mb * 2**20), capped=wanted > cpus)


def _v2_root() -> Path | None:
    """A cgroup2 mount whose controllers include cpu and memory, if any."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers = root / "cgroup.controllers"
        try:
            have = set(controllers.read_text().split())
        except OSError:
            continue
        if {"cpu", "memory"} <= have:
            return root
    return None


def detect() -> CgroupSupport:
    """Which cgroup interface the lab can use here, or why none."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return CgroupSupport("none", reason="cgroups need root")
    root = _v2_root()
    if root is not None:
        return CgroupSupport("v2", str(root), str(root))
    cpu, memory = CGROUP_ROOT / "cpu", CGROUP_ROOT / "memory"
    if (cpu / "cpu.cfs_quota_us").exists() and (memory / "memory.limit_in_bytes").exists():
        acct = CGROUP_ROOT / "cpuacct"
        separate = (acct / "cpuacct.usage").exists() and not (cpu / "cpuacct.usage").exists()
        return CgroupSupport("v1", str(cpu), str(memory), cpuacct_root=str(acct) if separate
                             else "")
    return CgroupSupport("none", reason="no cgroup v2 with the cpu and memory controllers "
                                        "and no cgroup v1 cpu and memory hierarchies under "
                                        f"{CGROUP_ROOT}")


@dataclass
class WorkerGroup:
    """One worker's cgroup(s), as recorded in the lab's state."""

    version: str
    paths: list[str]
    cpus: float
    quota_us: int
    period_us: int
    memory_bytes: int
    capped: bool
    procs_files: list[str] = field(default_factory=list)
    #: where the group's CPU time is counted: ``cpuacct.usage`` (ns) or ``cpu.stat``
    usage_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def create_group(support: CgroupSupport, lab: str, worker: str, limit: CpuLimit) -> WorkerGroup:
    """Make ``thingssim-<lab>/<worker>`` with ``limit``; OSError if the kernel refuses."""
    rel = Path(f"thingssim-{lab}") / worker
    if support.version == "v2":
        root = Path(support.cpu_root)
        group = root / rel
        (root / rel.parent).mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            _write(root / "cgroup.subtree_control", "+cpu +memory")
        with contextlib.suppress(OSError):
            _write(root / rel.parent / "cgroup.subtree_control", "+cpu +memory")
        group.mkdir(exist_ok=True)
        _write(group / "cpu.max", f"{limit.quota_us} {limit.period_us}")
        _write(group / "memory.max", str(limit.memory_bytes))
        paths = [str(group)]
        usage = str(group / "cpu.stat")
    elif support.version == "v1":
        cpu = Path(support.cpu_root) / rel
        memory = Path(support.memory_root) / rel
        for g in (cpu, memory):
            g.parent.mkdir(exist_ok=True)
            g.mkdir(exist_ok=True)
        # the period first: a quota must fit the period in force when it is written
        _write(cpu / "cpu.cfs_period_us", str(limit.period_us))
        _write(cpu / "cpu.cfs_quota_us", str(limit.quota_us))
        _write(memory / "memory.limit_in_bytes", str(limit.memory_bytes))
        paths = [str(cpu), str(memory)]
        acct = Path(support.cpuacct_root) / rel if support.cpuacct_root else cpu
        if support.cpuacct_root:
            acct.parent.mkdir(exist_ok=True)
            acct.mkdir(exist_ok=True)
            paths.append(str(acct))
        usage = str(acct / "cpuacct.usage")
    else:
        raise OSError(f"no cgroups: {support.reason}")
    return WorkerGroup(support.version, paths, limit.cpus, limit.quota_us, limit.period_us,
                       limit.memory_bytes, limit.capped,
                       [str(Path(p) / "cgroup.procs") for p in paths], usage)


def cpu_usage(group: dict[str, Any]) -> float | None:
    """CPU seconds the group's processes have used (None: no group or no counter)."""
    path = group.get("usage_file")
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if path.endswith("cpu.stat"):  # v2: "usage_usec N" among others
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return None
    return int(text.split()[0]) / 1e9


def join_function(procs_files: list[str]) -> Callable[[], None] | None:
    """A ``preexec_fn`` putting the child into the groups before it execs (so everything
    it forks is inside too)."""
    if not procs_files:
        return None

    def join() -> None:
        pid = str(os.getpid())
        for path in procs_files:
            with open(path, "w") as f:
                f.write(pid)

    return join


def _tasks(group: Path) -> list[int]:
    try:
        return [int(x) for x in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_group(paths: list[str], timeout: float = 3.0) -> list[str]:
    """Remove the groups (and their lab parent when empty); what could not be removed.
    Processes still inside (there should be none: the lab stops them first) are moved to
    the parent so the directory can go."""
    left = []
    for p in paths:
        group = Path(p)
        if not group.exists():
            continue
        deadline = time.monotonic() + timeout
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                for pid in _tasks(group):
                    with contextlib.suppress(OSError):
                        _write(group.parent.parent / "cgroup.procs", str(pid))
                if time.monotonic() > deadline:
                    left.append(str(group))
                    break
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            group.parent.rmdir()  # thingssim-<lab>: only once its last worker is gone
    return left
