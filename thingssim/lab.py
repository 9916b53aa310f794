"""The emulated board lab: N workers on one machine, each behind a link shaped like its board.

Topology (everything but one veth end lives in network namespaces this module creates)::

    root ns: <prefix>-h  (host address, /32, one /32 route to the broker)
                 |
    <prefix>-hub: bridge br0 --- b  ----- eth0 in <prefix>-broker  (Mosquitto)
                      |   |---- w1 ----- eth0 in <prefix>-w1       (relay + worker)
                      |   `---- wN ----- eth0 in <prefix>-wN
                      `-------- h  ----- <prefix>-h in the root namespace

Addresses come from ``subnet`` (default 10.77.0.0/24): the broker is the first host
address, the workers the next ones, the root namespace the last one. The root namespace gets
only a /32 address and a /32 route to the broker, so a dispatcher on the host can reach the
broker and nothing else of the host's routing changes.

Shaping, per worker link, from the board profile (:func:`thingssim.sim.boards.get_profile`):

- ``"netem"`` when the kernel has it (detected by trying it in the hub namespace): one
  ``netem delay L+J/2 J/2 loss P rate B`` on each end of the worker's veth, i.e. both
  directions. The worker connects to the broker directly.
- ``"tbf+relay"`` otherwise: ``tc tbf`` at the profile's bandwidth on each end of the veth,
  and a user-space TCP relay in the worker's namespace (``127.0.0.1:<port>`` -> broker) that
  delays each chunk, in each direction, by ``latency + uniform[0, jitter)`` without ever
  reordering (like the simulator, :mod:`thingssim.sim.network`), and emulates TCP-level
  loss: a chunk of ``k`` segments is held back with probability ``1 - (1 - loss)**k`` (TCP
  never drops bytes, it delays them; later bytes wait behind it), by one RTO (0.2 s) for a
  lone segment, by one more round trip (a fast retransmit) within a burst (``_Shaper``).
  The tbf rate is the profile's goodput scaled by 1514/1448 (frame/payload bytes).
  The relay uses threads and ``time.sleep`` rather than asyncio: epoll's timeout has a
  1 ms granularity, too coarse for the 0.25-0.6 ms one-way latencies of wired boards.
- ``"tbf"`` (bandwidth only) or ``"none"`` when the profile has nothing else to emulate.

Each worker gets a config file ``<state_dir>/<name>.json`` (``pubsub_url``, ``id``,
``device``, ``memory_limit``, ``keepalive``) and runs ``thingssim worker CONFIG``, or a
``worker_command`` override (see :func:`lab_up`). Logs go to ``<state_dir>/*.log``; the
lab's state (pids, addresses, shaping) is in ``<state_dir>/lab.json``.
:func:`lab_down` stops every process of the lab and removes every namespace, link and file.

CPUs and memory: each worker and its program processes run in a cgroup whose CPU quota
and memory limit come from the board profile (:mod:`thingssim.labcpu`), so a lab "Pi
Zero" computes like one; where cgroups are missing the lab runs un-throttled and says so
(``lab.cpu_emulation``, ``thingssim lab status``).

Needs root and iproute2 (``ip``, ``tc``) and Mosquitto; otherwise :class:`LabError`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click

from . import labcpu
from .sim.boards import BoardProfile, get_profile
from .sim.link import MSS, RTO  # the simulator's TCP-like loss follows the same rule

__all__ = ["Lab", "LabConfig", "LabError", "LabWorker", "lab_down", "lab_group", "lab_status",
           "lab_up", "load_lab"]

DEFAULT_PREFIX = "tslab"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_PROFILE = "raspberry-pi-3"
STATE_FILE = "lab.json"
SHAPING_METHODS = ("auto", "netem", "tbf+relay", "none")
CPU_METHODS = ("auto", "none")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,12}$")  # "<prefix>-h" must fit IFNAMSIZ (15)
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)


class LabError(RuntimeError):
    """The lab cannot be set up or torn down (no root, no iproute2, a clash, a failed step)."""


# --------------------------------------------------------------------------------------
# Configuration and state
# --------------------------------------------------------------------------------------

@dataclass
class LabConfig:
    """What :func:`lab_up` builds. ``profiles`` are cycled over the workers."""

    n: int
    profiles: list[str] | None = None
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    worker_command: list[str] | None = None
    broker_port: int = 1883
    state_dir: str | None = None
    shaping: str = "auto"
    keepalive: int = 10
    cpu: str = "auto"
    """``"auto"``: emulate the boards' CPU and memory with cgroups where the machine has
    them (:mod:`thingssim.labcpu`), un-throttled (and saying so) where not; ``"none"``."""
    worker_config: dict[str, Any] | None = None
    """More worker config keys (``request_timeout``...), merged into each worker's file."""
    machine_factor: float | None = None
    """This machine's ``cpu_factor`` (``thingssim calibrate``); measured at ``lab up``
    when not given."""

    def validate(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise LabError(f"the number of workers must be an integer >= 1, got {self.n!r}")
        if not _PREFIX_RE.match(self.prefix or ""):
            raise LabError(f"lab prefix {self.prefix!r} must match {_PREFIX_RE.pattern} "
                           "(at most 13 characters: interface names are limited to 15)")
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as exc:
            raise LabError(f"bad subnet {self.subnet!r}: {exc}") from None
        if net.version != 4 or not net.is_private:
            raise LabError(f"subnet {self.subnet} must be a private IPv4 range")
        if net.num_addresses - 2 < self.n + 2:
            raise LabError(f"subnet {self.subnet} is too small for {self.n} workers")
        if not 1 <= int(self.broker_port) <= 65535:
            raise LabError(f"bad broker port {self.broker_port!r}")
        if self.shaping not in SHAPING_METHODS:
            raise LabError(f"shaping must be one of {', '.join(SHAPING_METHODS)}")
        if self.cpu not in CPU_METHODS:
            raise LabError(f"cpu must be one of {', '.join(CPU_METHODS)}")
        if self.machine_factor is not None and not self.machine_factor > 0:
            raise LabError(f"machine factor must be > 0, got {self.machine_factor!r}")
        for name in self.profile_names():
            try:
                get_profile(name)
            except KeyError as exc:
                raise LabError(exc.args[0]) from None

    def profile_names(self) -> list[str]:
        names = list(self.profiles or [DEFAULT_PROFILE])
        if not names:
            names = [DEFAULT_PROFILE]
        return [names[i % len(names)] for i in range(self.n)]

    def directory(self) -> Path:
        return Path(self.state_dir) if self.state_dir else _default_state_dir(self.prefix)


@dataclass
class LabWorker:
    """One emulated board: its namespace, address, link shaping and processes."""

    name: str
    namespace: str
    address: str
    profile: str
    shaping: str
    pid: int | None = None
    pid_start: int | None = None
    relay_pid: int | None = None
    relay_start: int | None = None
    pubsub_url: str = ""
    config_file: str = ""
    log_file: str = ""
    link: dict[str, Any] = field(default_factory=dict)
    cgroup: dict[str, Any] = field(default_factory=dict)
    """Its CPU and memory limits (:class:`thingssim.labcpu.WorkerGroup`); empty when the
    lab does not emulate CPUs."""

    @property
    def alive(self) -> bool:
        return _pid_alive(self.pid, self.pid_start)


@dataclass
class Lab:
    """A running lab (see the module docstring). ``down()`` or ``with lab:`` tears it down."""

    prefix: str
    subnet: str
    state_dir: str
    broker_namespace: str
    broker_address: str
    broker_port: int
    host_address: str
    host_interface: str
    shaping: str
    workers: list[LabWorker] = field(default_factory=list)
    broker_pid: int | None = None
    broker_start: int | None = None
    hub_namespace: str = ""
    created: float = 0.0
    cpu_emulation: dict[str, Any] = field(default_factory=dict)
    """``method`` ("cgroup v1", "cgroup v2" or "none"), ``machine_factor``,
    ``machine_cpus``, and ``reason`` when it is "none"."""

    @property
    def broker_url(self) -> str:
        """The broker on the lab network: what a worker reaches directly (and the host too)."""
        return f"mqtt://{self.broker_address}:{self.broker_port}"

    @property
    def host_broker_url(self) -> str:
        """The broker as seen from the host's root namespace (a dispatcher connects here)."""
        return self.broker_url

    @property
    def state_file(self) -> str:
        return str(Path(self.state_dir) / STATE_FILE)

    @property
    def namespaces(self) -> list[str]:
        return [self.hub_namespace, self.broker_namespace] + [w.namespace for w in self.workers]

    def worker(self, name: str) -> LabWorker:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(name)

    def broker_alive(self) -> bool:
        return _pid_alive(self.broker_pid, self.broker_start)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["broker_url"] = self.broker_url
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lab:
        data = dict(data)
        data.pop("broker_url", None)
        workers = [LabWorker(**w) for w in data.pop("workers", [])]
        return cls(workers=workers, **data)

    def save(self) -> None:
        tmp = Path(self.state_file + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(self.state_file)

    def down(self) -> None:
        lab_down(self.prefix, state_dir=self.state_dir)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _default_state_dir(prefix: str) -> Path:
    return Path("/tmp") / prefix


def load_lab(prefix: str = DEFAULT_PREFIX, state_dir: str | None = None) -> Lab | None:
    """The lab recorded in the state file, or ``None`` if there is none."""
    path = Path(state_dir or _default_state_dir(prefix)) / STATE_FILE
    try:
        return Lab.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise LabError(f"corrupt lab state file {path}: {exc}") from None


# --------------------------------------------------------------------------------------
# System helpers
# --------------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen] = {}
"""Processes this interpreter started, so lab_down can reap them (no zombies)."""


def _require_system() -> None:
    if shutil.which("ip") is None:
        raise LabError("the board lab needs iproute2 (`ip` and `tc`), and `ip` is not on PATH")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise LabError("the board lab needs root (network namespaces, veth links, tc); "
                       "run it as root, e.g. with sudo")


def _run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ip", *args, check=check)


def _tc(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ip", "netns", "exec", ns, "tc", *args, check=check)


def _netns_list() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _lab_namespaces(prefix: str) -> list[str]:
    """The namespaces of the lab ``prefix`` (and of no other lab), hub last."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(broker|w\d+|hub)$")
    names = [ns for ns in _netns_list() if pattern.match(ns)]
    return sorted(names, key=lambda ns: (ns.endswith("-hub"), ns))


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _pid_alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    now = _proc_start(pid)
    return now is not None and (start is None or now == start)


def _spawn(ns: str, argv: Sequence[str], log: Path, *, cwd: Path,
           env: dict[str, str] | None = None,
           cgroups: list[str] | None = None) -> tuple[int, int | None]:
    """Start ``argv`` in namespace ``ns``, detached, output to ``log``; (pid, start time).
    ``cgroups``: ``cgroup.procs`` files it joins before exec (so its children are in)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    full_env.update(env or {})
    with open(log, "ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, cwd=str(cwd),
                                env=full_env, start_new_session=True,
                                preexec_fn=labcpu.join_function(cgroups or []))
    _CHILDREN[proc.pid] = proc
    return proc.pid, _proc_start(proc.pid)


def _stop_pids(pids: list[tuple[int, int | None]], grace: float = 3.0) -> None:
    """SIGTERM each (pid, start) that is still that process, then SIGKILL after ``grace``."""
    live = [(pid, start) for pid, start in pids if _pid_alive(pid, start)]
    for pid, _ in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        _reap()
        live = [(pid, start) for pid, start in live if _pid_alive(pid, start)]
        if live:
            time.sleep(0.02)
    for pid, _ in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while live and time.monotonic() < deadline:
        _reap()
        live = [(pid, start) for pid, start in live if _pid_alive(pid, start)]
        if live:
            time.sleep(0.02)
    _reap()


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _netns_pids(ns: str) -> list[int]:
    proc = _ip("netns", "pids", ns, check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def _wait_tcp(host: str, port: int, timeout: float, *, what: str,
              alive: tuple[int, int | None] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            err = exc
        if alive is not None and not _pid_alive(*alive):
            raise LabError(f"{what} exited at start" + _log_tail(log))
        if time.monotonic() > deadline:
            raise LabError(f"{what} not reachable at {host}:{port} after {timeout:g} s: {err}"
                           + _log_tail(log))
        time.sleep(0.05)


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return ("; log " + str(log) + ":\n" + "\n".join(text)) if text else ""


def _check_subnet_free(net: ipaddress.IPv4Network) -> None:
    """Refuse a subnet that overlaps a route or address of the root namespace."""
    taken: list[str] = []
    for args in (("-4", "route", "show", "table", "all"), ("-4", "-o", "addr", "show")):
        proc = _ip(*args, check=False)
        for line in proc.stdout.splitlines():
            for tok in line.split():
                if re.match(r"^\d+\.\d+\.\d+\.\d+(/\d+)?$", tok):
                    taken.append(tok)
    for tok in taken:
        other = ipaddress.ip_network(tok, strict=False)
        if other.prefixlen == 0 or other.is_loopback:
            continue
        if other.overlaps(net) and not other.is_multicast:
            raise LabError(f"subnet {net} overlaps {other}, already used in the root network "
                           "namespace (another lab?); choose another subnet")


# --------------------------------------------------------------------------------------
# Shaping
# --------------------------------------------------------------------------------------

def _netem_available(ns: str) -> bool:
    """Try a netem qdisc on the namespace's loopback (this also loads the module if any)."""
    proc = _tc(ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
    if proc.returncode != 0:
        return False
    _tc(ns, "qdisc", "del", "dev", "lo", "root", check=False)
    return True


def _us(seconds: float) -> str:
    return f"{max(0, round(seconds * 1e6))}us"


FRAME = 1514
"""Bytes on the veth for one full TCP segment of MSS payload (Ethernet, IP, TCP+timestamps)."""


def _line_rate(goodput: float) -> int:
    """The qdisc rate (which counts frames) that gives the profile's TCP goodput."""
    return int(goodput * FRAME / MSS)


def _tbf_args(bandwidth: float) -> list[str]:
    rate = _line_rate(bandwidth)
    burst = max(rate // 8 // 500, 10 * FRAME)  # 2 ms at line rate, at least 10 frames
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst), "latency", "50ms"]


def _netem_args(p: BoardProfile) -> list[str]:
    args = ["netem", "limit", "100000"]
    if p.latency or p.jitter:
        # the simulator's delay is latency + uniform[0, jitter); netem's is uniform +-J
        args += ["delay", _us(p.latency + p.jitter / 2)]
        if p.jitter:
            args += [_us(p.jitter / 2)]
    if p.loss:
        args += ["loss", f"{p.loss * 100:.6g}%"]
    if math.isfinite(p.bandwidth):
        args += ["rate", f"{_line_rate(p.bandwidth)}bit"]
    return args


def _shaping_for(p: BoardProfile, netem: bool, wanted: str) -> str:
    needs_delay = bool(p.latency or p.jitter or p.loss)
    needs_rate = math.isfinite(p.bandwidth)
    if wanted == "none" or not (needs_delay or needs_rate):
        return "none"
    if netem and wanted in ("auto", "netem"):
        return "netem"
    return "tbf+relay" if needs_delay else "tbf"


def _shape_link(method: str, p: BoardProfile, ends: list[tuple[str, str]]) -> dict[str, Any]:
    """Apply ``method`` to each (namespace, device) egress; what was set, for the state."""
    if method == "netem":
        args = _netem_args(p)
    elif method in ("tbf+relay", "tbf"):
        args = _tbf_args(p.bandwidth) if math.isfinite(p.bandwidth) else []
    else:
        args = []
    for ns, dev in ends:
        if args:
            _tc(ns, "qdisc", "replace", "dev", dev, "root", *args)
    return {"qdisc": " ".join(args), "latency": p.latency, "jitter": p.jitter,
            "loss": p.loss, "bandwidth": p.bandwidth}


# --------------------------------------------------------------------------------------
# Up and down
# --------------------------------------------------------------------------------------

def lab_up(n: int, profiles: list[str] | None = None, *, prefix: str = DEFAULT_PREFIX,
           subnet: str = DEFAULT_SUBNET, worker_command: list[str] | None = None,
           broker_port: int = 1883, state_dir: str | None = None, shaping: str = "auto",
           keepalive: int = 10, ready_timeout: float = 10.0, cpu: str = "auto",
           machine_factor: float | None = None,
           worker_config: dict[str, Any] | None = None) -> Lab:
    """Start a lab of ``n`` workers (profiles cycled, default raspberry-pi-3) and a broker.

    ``worker_command`` overrides ``[sys.executable, "-m", "thingssim.cli", "worker",
    "{config}"]``. In each argument these placeholders are replaced: ``{config}`` (the
    worker's config file), ``{id}``, ``{profile}``, ``{pubsub_url}`` (the URL the worker
    should use: the relay, or the broker under netem), ``{broker_url}`` (the broker itself,
    bypassing the emulated latency), ``{state_dir}``. Without a ``{config}`` placeholder, the
    config file is appended as the last argument. Workers run with the repository on
    ``PYTHONPATH`` and the state directory as working directory.

    ``shaping``: ``"auto"`` (netem if the kernel has it, else tbf+relay), ``"netem"`` (the
    same: falls back when netem is missing), ``"tbf+relay"`` or ``"none"``.

    ``cpu``: ``"auto"`` puts each worker and its program processes in a cgroup whose CPU
    quota and memory limit make it compute like its board (:mod:`thingssim.labcpu`;
    ``machine_factor`` is this machine's ``thingssim calibrate`` factor, measured here
    when not given); where cgroups are missing the lab runs un-throttled and records why
    in ``lab.cpu_emulation``. ``"none"``: never throttle.

    On failure everything created so far is removed and :class:`LabError` is raised.
    """
    cfg = LabConfig(n=n, profiles=list(profiles) if profiles else None, prefix=prefix,
                    subnet=subnet, worker_command=list(worker_command) if worker_command
                    else None, broker_port=broker_port, state_dir=state_dir,
                    shaping=shaping, keepalive=keepalive, cpu=cpu,
                    machine_factor=machine_factor, worker_config=worker_config)
    return start_lab(cfg, ready_timeout=ready_timeout)


def start_lab(cfg: LabConfig, *, ready_timeout: float = 10.0) -> Lab:
    """:func:`lab_up` from a :class:`LabConfig`."""
    _require_system()
    cfg.validate()
    if shutil.which("tc") is None:
        raise LabError("the board lab needs iproute2's `tc`, and it is not on PATH")
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        raise LabError("the board lab needs Mosquitto (`mosquitto` not found)")
    prefix = cfg.prefix
    existing = _lab_namespaces(prefix)
    if existing or _link_exists(f"{prefix}-h"):
        raise LabError(f"a lab with prefix {prefix!r} is already up ({', '.join(existing)}); "
                       f"run `thingssim lab down --prefix {prefix}` first")
    state_dir = cfg.directory()
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / STATE_FILE).exists():
        raise LabError(f"state directory {state_dir} exists and is not a lab's; "
                       "choose another prefix or state_dir")
    net = ipaddress.ip_network(cfg.subnet)
    _check_subnet_free(net)
    hosts = list(net.hosts())
    plen = net.prefixlen
    state_dir.mkdir(parents=True, exist_ok=True)
    lab = Lab(prefix=prefix, subnet=str(net), state_dir=str(state_dir),
              broker_namespace=f"{prefix}-broker", broker_address=str(hosts[0]),
              broker_port=int(cfg.broker_port), host_address=str(hosts[-1]),
              host_interface=f"{prefix}-h", shaping=cfg.shaping,
              hub_namespace=f"{prefix}-hub", created=time.time())
    lab.save()  # from here on lab_down can clean up whatever exists
    try:
        _build(lab, cfg, hosts, plen, mosquitto, ready_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            lab_down(prefix, state_dir=str(state_dir))
        raise
    return lab


def _build(lab: Lab, cfg: LabConfig, hosts: list, plen: int, mosquitto: str,
           ready_timeout: float) -> None:
    hub, broker = lab.hub_namespace, lab.broker_namespace
    state_dir = Path(lab.state_dir)
    names = [f"w{i + 1}" for i in range(cfg.n)]
    for ns in [hub, broker] + [f"{lab.prefix}-{name}" for name in names]:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "dev", "lo", "up")
    _ip("-n", hub, "link", "add", "name", "br0", "type", "bridge")
    _ip("-n", hub, "link", "set", "dev", "br0", "up")

    def attach(port: str, ns: str, address: str) -> None:
        _ip("-n", hub, "link", "add", "name", port, "type", "veth",
            "peer", "name", "eth0", "netns", ns)
        _ip("-n", hub, "link", "set", "dev", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/{plen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "dev", "eth0", "up")

    attach("b", broker, lab.broker_address)
    # the host's way in: one veth end in the root namespace, a /32 and a /32 route
    _ip("link", "add", "name", lab.host_interface, "type", "veth",
        "peer", "name", "h", "netns", hub)
    _ip("-n", hub, "link", "set", "dev", "h", "master", "br0", "up")
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{lab.host_interface}/disable_ipv6").write_text("1")
    _ip("addr", "add", f"{lab.host_address}/32", "dev", lab.host_interface)
    _ip("link", "set", "dev", lab.host_interface, "up")
    _ip("route", "add", f"{lab.broker_address}/32", "dev", lab.host_interface,
        "src", lab.host_address)

    netem = cfg.shaping in ("auto", "netem") and _netem_available(hub)
    profiles = cfg.profile_names()
    for i, name in enumerate(names):
        ns = f"{lab.prefix}-{name}"
        address = str(hosts[1 + i])
        attach(name, ns, address)
        p = get_profile(profiles[i])
        method = _shaping_for(p, netem, cfg.shaping)
        link = _shape_link(method, p, [(ns, "eth0"), (hub, name)])
        lab.workers.append(LabWorker(
            name=name, namespace=ns, address=address, profile=p.name, shaping=method,
            config_file=str(state_dir / f"{name}.json"), log_file=str(state_dir / f"{name}.log"),
            link=link))
    lab.save()

    # the broker
    conf = state_dir / "mosquitto.conf"
    conf.write_text(f"listener {lab.broker_port} 0.0.0.0\nallow_anonymous true\n"
                    "set_tcp_nodelay true\npersistence false\nlog_dest stdout\n"
                    "log_type error\nlog_type warning\nlog_type notice\n")
    blog = state_dir / "broker.log"
    lab.broker_pid, lab.broker_start = _spawn(broker, [mosquitto, "-c", str(conf)], blog,
                                              cwd=state_dir)
    lab.save()
    _wait_tcp(lab.broker_address, lab.broker_port, ready_timeout, what="the broker (Mosquitto)",
              alive=(lab.broker_pid, lab.broker_start), log=blog)

    # the relays, then the workers
    relays = []
    for w in lab.workers:
        if w.shaping == "tbf+relay":
            p = get_profile(w.profile)
            ready = state_dir / f"relay-{w.name}.ready"
            rlog = state_dir / f"relay-{w.name}.log"
            argv = [sys.executable, "-m", "thingssim.lab", "relay",
                    "--listen", f"127.0.0.1:{lab.broker_port}",
                    "--target", f"{lab.broker_address}:{lab.broker_port}",
                    "--latency", repr(p.latency), "--jitter", repr(p.jitter),
                    "--loss", repr(p.loss), "--ready-file", str(ready)]
            w.relay_pid, w.relay_start = _spawn(w.namespace, argv, rlog, cwd=state_dir)
            w.pubsub_url = f"mqtt://127.0.0.1:{lab.broker_port}"
            relays.append((w, ready, rlog))
        else:
            w.pubsub_url = lab.broker_url
    lab.save()
    deadline = time.monotonic() + ready_timeout
    for w, ready, rlog in relays:
        while not ready.exists():
            if not _pid_alive(w.relay_pid, w.relay_start):
                raise LabError(f"the relay of {w.name} exited at start" + _log_tail(rlog))
            if time.monotonic() > deadline:
                raise LabError(f"the relay of {w.name} did not start" + _log_tail(rlog))
            time.sleep(0.02)

    _emulate_cpus(lab, cfg)
    lab.save()
    template = cfg.worker_command or [sys.executable, "-m", "thingssim.cli", "worker",
                                      "{config}"]
    if not any("{config}" in arg for arg in template):
        template = [*template, "{config}"]
    # one shared snapshot_key per lab: the workers sign the snapshots they send and restore
    # only signed ones (a worker without a key refuses every migration)
    fleet_key = secrets.token_hex(32)
    for w in lab.workers:
        p = get_profile(w.profile)
        text = json.dumps({
            "pubsub_url": w.pubsub_url, "id": w.name, "device": p.name,
            "memory_limit": p.memory_mb, "keepalive": cfg.keepalive,
            "snapshot_key": fleet_key, **(cfg.worker_config or {})}, indent=2) + "\n"
        fd = os.open(w.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also if an older file was there
        with os.fdopen(fd, "w") as config_file:  # the key: readable by its owner only
            config_file.write(text)
        values = {"{config}": w.config_file, "{id}": w.name, "{profile}": p.name,
                  "{pubsub_url}": w.pubsub_url, "{broker_url}": lab.broker_url,
                  "{state_dir}": lab.state_dir}
        argv = []
        for arg in template:
            for key, value in values.items():
                arg = arg.replace(key, value)
            argv.append(arg)
        w.pid, w.pid_start = _spawn(w.namespace, argv, Path(w.log_file), cwd=state_dir,
                                    env={"THINGSSIM_LAB": lab.prefix,
                                         "THINGSSIM_LAB_WORKER": w.name},
                                    cgroups=w.cgroup.get("procs_files"))
    lab.save()


def _emulate_cpus(lab: Lab, cfg: LabConfig) -> None:
    """Give each worker its cgroup (CPU quota, memory limit) or record why not."""
    if cfg.cpu == "none":
        lab.cpu_emulation = {"method": "none", "reason": "turned off (cpu='none')"}
        return
    support = labcpu.detect()
    if not support.available:
        lab.cpu_emulation = {"method": "none", "reason": support.reason}
        return
    factor = cfg.machine_factor
    if factor is None:
        from .calibrate import calibrate

        factor = calibrate(1.0)["cpu_factor"]
    cpus = os.cpu_count() or 1
    lab.cpu_emulation = {"method": f"cgroup {support.version}", "machine_factor": factor,
                         "machine_cpus": cpus}
    try:
        for w in lab.workers:
            limit = labcpu.cpu_limit(get_profile(w.profile), factor, cpus)
            w.cgroup = labcpu.create_group(support, lab.prefix, w.name, limit).to_dict()
            lab.save()  # lab_down removes what exists so far
    except OSError as exc:
        for w in lab.workers:
            labcpu.remove_group(w.cgroup.get("paths", []))
            w.cgroup = {}
        lab.cpu_emulation = {"method": "none", "reason": f"the kernel refused a cgroup: {exc}"}


def cpu_note(lab: Lab) -> str:
    """One line on how (or whether) the lab emulates the boards' CPUs."""
    emu = lab.cpu_emulation or {}
    if emu.get("method", "none") == "none":
        return ("cpu: NOT emulated (" + emu.get("reason", "an older lab") + "): the workers "
                "compute at this machine's speed, only their links are shaped")
    return (f"cpu: {emu['method']} quotas against this machine's cpu_factor "
            f"{emu['machine_factor']:.3g} ({emu['machine_cpus']} CPUs); memory limits from "
            "the profiles")


def lab_down(prefix: str = DEFAULT_PREFIX, *, state_dir: str | None = None) -> list[str]:
    """Stop and remove everything of the lab ``prefix``; idempotent. What it removed.

    Processes recorded in the state file are stopped by pid (only if the pid is still the
    same process), then any process left in the lab's namespaces; then the namespaces (and
    with them the bridge and veths), the root namespace's veth end and the state directory.
    Raises :class:`LabError` if something could not be removed.
    """
    _require_system()
    if not _PREFIX_RE.match(prefix or ""):
        raise LabError(f"bad lab prefix {prefix!r}")
    removed: list[str] = []
    directory = Path(state_dir) if state_dir else _default_state_dir(prefix)
    lab = None
    with contextlib.suppress(LabError):
        lab = load_lab(prefix, str(directory))
    pids: list[tuple[int, int | None]] = []
    if lab is not None:
        for w in lab.workers:
            pids += [(w.pid, w.pid_start), (w.relay_pid, w.relay_start)]
        pids.append((lab.broker_pid, lab.broker_start))
    pids = [(pid, start) for pid, start in pids if pid]
    if pids:
        _stop_pids(pids)
        removed.append(f"{len(pids)} processes")
    namespaces = _lab_namespaces(prefix)
    for ns in namespaces:  # whatever still runs in the lab's namespaces is the lab's
        stray = [(pid, _proc_start(pid)) for pid in _netns_pids(ns)]
        if stray:
            _stop_pids(stray, grace=1.0)
            removed.append(f"{len(stray)} processes in {ns}")
    for ns in namespaces:
        _ip("netns", "delete", ns, check=False)
        removed.append(f"netns {ns}")
    groups = _lab_cgroups(prefix, lab)
    if groups:
        stuck = labcpu.remove_group(groups)
        removed.append(f"{len(groups) - len(stuck)} cgroups")
    host_if = f"{prefix}-h"
    deadline = time.monotonic() + 3.0
    while _link_exists(host_if) and time.monotonic() < deadline:
        _ip("link", "delete", host_if, check=False)  # its peer went with the hub namespace
        time.sleep(0.02)
    if directory.exists() and ((directory / STATE_FILE).exists() or not any(directory.iterdir())):
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"dir {directory}")
    _reap()
    left = _lab_namespaces(prefix) + ([host_if] if _link_exists(host_if) else [])
    left += [g for g in _lab_cgroups(prefix, None) if Path(g).exists()]
    if left:
        raise LabError(f"lab {prefix!r}: could not remove {', '.join(left)}")
    return removed


def _lab_cgroups(prefix: str, lab: Lab | None) -> list[str]:
    """The worker cgroups of lab ``prefix``: those its state records, and any
    ``thingssim-<prefix>/*`` left in the hierarchies (a lab whose state file is gone)."""
    paths = [p for w in (lab.workers if lab else []) for p in w.cgroup.get("paths", [])]
    for root in (labcpu.CGROUP_ROOT, labcpu.CGROUP_ROOT / "unified",
                 labcpu.CGROUP_ROOT / "cpu", labcpu.CGROUP_ROOT / "memory",
                 labcpu.CGROUP_ROOT / "cpuacct"):
        parent = root / f"thingssim-{prefix}"
        with contextlib.suppress(OSError):
            paths += [str(g) for g in sorted(parent.iterdir()) if g.is_dir()]
    return list(dict.fromkeys(paths))


def lab_status(prefix: str = DEFAULT_PREFIX, state_dir: str | None = None) -> list[dict]:
    """One row per worker (and the broker first): what ``thingssim lab status`` prints."""
    lab = load_lab(prefix, state_dir)
    if lab is None:
        return []
    rows = [{"worker": "(broker)", "namespace": lab.broker_namespace,
             "address": f"{lab.broker_address}:{lab.broker_port}", "profile": "-",
             "shaping": "-", "cpus": "-", "memory": "-", "alive": lab.broker_alive()}]
    for w in lab.workers:
        group = w.cgroup or {}
        rows.append({"worker": w.name, "namespace": w.namespace, "address": w.address,
                     "profile": w.profile, "shaping": w.shaping,
                     "cpus": f"{group['cpus']:.4g}" if group else "-",
                     "memory": f"{group['memory_bytes'] >> 20}M" if group else "-",
                     "alive": w.alive and (w.relay_pid is None
                                           or _pid_alive(w.relay_pid, w.relay_start))})
    return rows


# --------------------------------------------------------------------------------------
# The relay: latency, jitter and TCP-level loss in user space
# --------------------------------------------------------------------------------------

class _Shaper:
    """Due times for one direction: latency + uniform[0, jitter) (+ a recovery if lost), FIFO.

    TCP never loses bytes, it delays them. A chunk of ``k`` segments (of :data:`MSS` bytes)
    contains a lost segment with probability ``1 - (1 - loss)**k``. A lone segment (a small
    message with nothing behind it) waits for the retransmission timer: ``rto`` (Linux's
    200 ms minimum; its tail-loss probe with one packet in flight is 2 SRTT + 200 ms too).
    In a longer burst the later segments' duplicate ACKs trigger a fast retransmit, which
    costs about one more round trip, ``2 * latency + jitter``.
    """

    def __init__(self, latency: float, jitter: float, loss: float, rto: float,
                 rng: random.Random) -> None:
        self.latency, self.jitter, self.loss, self.rto = latency, jitter, loss, rto
        self.rng = rng
        self.last = 0.0
        self.timeouts = 0
        self.fast_retransmits = 0

    def due(self, now: float, nbytes: int) -> float:
        delay = self.latency
        if self.jitter:
            delay += self.rng.random() * self.jitter
        if self.loss:
            segments = max(1, math.ceil(nbytes / MSS))
            if self.rng.random() < 1.0 - (1.0 - self.loss) ** segments:
                if segments == 1:
                    delay += self.rto
                    self.timeouts += 1
                else:
                    delay += 2 * self.latency + self.jitter
                    self.fast_retransmits += 1
        self.last = max(self.last, now + delay)  # never reorder
        return self.last


class _Direction:
    """Bytes from ``src`` to ``dst``, each chunk released at its due time, in order."""

    LIMIT = 4 << 20  # bytes buffered before the reader stops reading (back pressure)

    def __init__(self, src: socket.socket, dst: socket.socket, shaper: _Shaper,
                 on_abort: Any) -> None:
        self.src, self.dst, self.shaper, self.on_abort = src, dst, shaper, on_abort
        self.queue: deque = deque()
        self.buffered = 0
        self.closed = False
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._write, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _push(self, item: tuple[float, bytes | None]) -> None:
        with self.cond:
            self.queue.append(item)
            self.buffered += len(item[1] or b"")
            self.cond.notify_all()

    def _read(self) -> None:
        try:
            while True:
                data = self.src.recv(65536)
                now = time.monotonic()
                if not data:
                    break
                self._push((self.shaper.due(now, len(data)), data))
                with self.cond:
                    while self.buffered > self.LIMIT and not self.closed:
                        self.cond.wait()
                    if self.closed:
                        return
        except OSError:
            pass
        self._push((self.shaper.last, None))  # EOF after everything before it

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if self.closed:
                        return
                    due, data = self.queue.popleft()
                    self.buffered -= len(data or b"")
                    self.cond.notify_all()
                _sleep_until(due)
                if data is None:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
        except OSError:
            self.on_abort()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def join(self) -> None:
        for t in self.threads:
            t.join()


SPIN = 50e-6
"""The relay sleeps until this long before a due time, then yields in a loop until it."""


def _sleep_until(due: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``due``, within a few microseconds.

    ``time.sleep`` overshoots by ~25 us even with a 1 us timer slack (more under load);
    the last :data:`SPIN` seconds are spent in ``time.sleep(0)``, which releases the GIL.
    """
    while True:
        wait = due - time.monotonic()
        if wait <= 0:
            return
        time.sleep(wait - SPIN if wait > 1.5 * SPIN else 0)


def _set_timer_slack() -> None:
    """Ask for 1 us timer slack (default 50 us) so sub-millisecond sleeps are accurate."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _relay_connection(client: socket.socket, target: tuple[str, int], args: Any,
                      seed: int) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError as exc:
        print(f"relay: cannot reach {target[0]}:{target[1]}: {exc}", flush=True)
        client.close()
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rng = random.Random(seed)
    directions: list[_Direction] = []

    def abort() -> None:
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for d in directions:
            d.close()

    for src, dst in ((client, upstream), (upstream, client)):
        shaper = _Shaper(args.latency, args.jitter, args.loss, args.rto,
                         random.Random(rng.getrandbits(64)))
        directions.append(_Direction(src, dst, shaper, abort))
    for d in directions:
        d.start()
    for d in directions:
        d.join()
    timeouts = sum(d.shaper.timeouts for d in directions)
    fast = sum(d.shaper.fast_retransmits for d in directions)
    print(f"relay: connection closed; emulated losses: {timeouts} timeouts, "
          f"{fast} fast retransmits", flush=True)
    for s in (client, upstream):
        s.close()


def _relay_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m thingssim.lab relay",
                                     description="TCP relay adding latency, jitter and "
                                                 "TCP-level loss (an RTO) to each direction.")
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--latency", type=float, default=0.0, help="one-way seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform[0, J) s")
    parser.add_argument("--loss", type=float, default=0.0, help="per-segment probability")
    parser.add_argument("--rto", type=float, default=RTO, help="delay of a lost segment, s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)
    lhost, lport = args.listen.rsplit(":", 1)
    thost, tport = args.target.rsplit(":", 1)
    _set_timer_slack()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((lhost, int(lport)))
    server.listen(64)
    print(f"relay {args.listen} -> {args.target}: latency {args.latency} s, jitter "
          f"{args.jitter} s, loss {args.loss}, rto {args.rto} s", flush=True)
    if args.ready_file:
        Path(args.ready_file).write_text(str(os.getpid()))
    seeds = random.Random(args.seed)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_relay_connection, daemon=True,
                         args=(client, (thost, int(tport)), args,
                               seeds.getrandbits(64))).start()


# --------------------------------------------------------------------------------------
# Command line: `thingssim lab up|down|status`
# --------------------------------------------------------------------------------------

_PREFIX_OPT = click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                           help="Name prefix of the lab's namespaces and links.")
_DIR_OPT = click.option("--state-dir", default=None,
                        help="State directory (default /tmp/PREFIX).")


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("lab", context_settings={"help_option_names": ["-h", "--help"]})
def lab_group() -> None:
    """The emulated board lab: workers in network namespaces behind shaped links (root)."""


@lab_group.command("up")
@click.argument("n", type=click.IntRange(min=1))
@click.option("--profile", "profiles", multiple=True,
              help="Board profile, repeatable, cycled over the workers "
                   f"(default {DEFAULT_PROFILE}).")
@_PREFIX_OPT
@click.option("--subnet", default=DEFAULT_SUBNET, show_default=True,
              help="Private IPv4 range used inside the lab.")
@click.option("--port", "broker_port", default=1883, show_default=True, type=int,
              help="Broker port.")
@click.option("--shaping", type=click.Choice(SHAPING_METHODS), default="auto",
              show_default=True)
@click.option("--worker-command", default=None,
              help="Override the worker command (a shell-style string; placeholders "
                   "{config} {id} {profile} {pubsub_url} {broker_url} {state_dir}).")
@click.option("--cpu", type=click.Choice(CPU_METHODS), default="auto", show_default=True,
              help="Emulate the boards' CPUs and memory with cgroups (auto) or not (none).")
@click.option("--machine-factor", type=click.FloatRange(min=0, min_open=True), default=None,
              help="This machine's cpu_factor (thingssim calibrate); measured if not given.")
@_DIR_OPT
def _up(n: int, profiles: tuple[str, ...], prefix: str, subnet: str, broker_port: int,
        shaping: str, worker_command: str | None, cpu: str, machine_factor: float | None,
        state_dir: str | None) -> None:
    """Start a broker and N workers, each in its own network namespace."""
    import shlex

    try:
        lab = lab_up(n, list(profiles) or None, prefix=prefix, subnet=subnet,
                     broker_port=broker_port, shaping=shaping, state_dir=state_dir,
                     worker_command=shlex.split(worker_command) if worker_command else None,
                     cpu=cpu, machine_factor=machine_factor)
    except (LabError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(f"lab {lab.prefix}: broker {lab.broker_url} (from the host too), "
               f"state {lab.state_file}")
    _print_status(lab.prefix, lab.state_dir)


@lab_group.command("down")
@_PREFIX_OPT
@_DIR_OPT
def _down(prefix: str, state_dir: str | None) -> None:
    """Stop every process of the lab and remove its namespaces, links and state."""
    try:
        removed = lab_down(prefix, state_dir=state_dir)
    except LabError as exc:
        raise _fail(exc) from None
    click.echo(f"lab {prefix}: " + (", ".join(removed) if removed else "nothing to remove"))


@lab_group.command("status")
@_PREFIX_OPT
@_DIR_OPT
def _status(prefix: str, state_dir: str | None) -> None:
    """Print the lab's workers: namespace, address, profile, shaping method, alive."""
    if load_lab(prefix, state_dir) is None:
        raise click.ClickException(f"no lab {prefix!r} is up (no state file)")
    _print_status(prefix, state_dir)


def _print_status(prefix: str, state_dir: str | None) -> None:
    rows = lab_status(prefix, state_dir)
    header = ["worker", "namespace", "address", "profile", "shaping", "cpus", "memory",
              "alive"]
    table = [header] + [[str(r[h]) if h != "alive" else ("yes" if r[h] else "NO")
                         for h in header] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lab = load_lab(prefix, state_dir)
    if lab is not None:
        click.echo(cpu_note(lab))


if __name__ == "__main__":  # `python -m thingssim.lab relay ...` runs the relay
    if sys.argv[1:2] == ["relay"]:
        sys.exit(_relay_main(sys.argv[2:]))
    lab_group(prog_name="python -m thingssim.lab")
