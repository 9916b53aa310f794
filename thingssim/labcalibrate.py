"""``thingssim calibrate --from-lab``: measure the emulated board lab, fit the simulator to it.

The lab (:mod:`thingssim.lab`, CPUs emulated by :mod:`thingssim.labcpu`) runs the real
workers, Mosquitto and shaped links; the simulator runs the same engine on a cost model
whose numbers were never measured.  This module runs a fixed set of lab measurements and
fits them:

- **snapshot and restore**: migrations of a program holding 16, 128 and 512 KB from a
  BeagleBone Black to a Pi Zero (to a warm target: its first program process already
  started); a least-squares line of ``phase seconds x board cpu_factor`` (reference
  seconds) against the snapshot's bytes gives ``*_base_cost`` and ``*_cost_per_byte``;
- **child start-up**: the first restore on a fresh Pi Zero (a cold program process)
  minus a warm one of the same size, in reference seconds (``child_start_cost``);
- **program events and the engine's messages**: a relay program on a BeagleBone Black
  forwarding 60 messages sent 0.1 s apart, then a sink program taking 60 and answering
  once: the CPU seconds its cgroup's processes used per message (idle use subtracted)
  times this machine's factor, in reference seconds.  A relayed message is one in, one
  event and one out; a sunk one is one in and one event.  The difference is the cost of
  a message out (``message_cost``; a message in is taken to cost the same: the engine
  parses and pipes it, as it encodes and sends one), and the sink's cost less that is
  the event (``event_cost``).  The sink again with 16 KB messages: what the extra bytes
  cost, per byte (``message_cost_per_byte``; a worker parses and pipes every byte, and a
  migration's snapshot is one large message).  A calibration without sink measurements
  (older files) charges the whole relay to the event, as before.  The messages per second each kept
  up with are recorded too.  Why not the rate of a saturating burst: the program
  process then takes its deliveries in batches, and a message costs less than one that
  arrives alone, as in a pipeline;
- **broker service**: a burst of QoS 0 messages through Mosquitto from the host (no
  worker): seconds per message at the subscriber (an upper bound: paho's own cost is in
  it), ``service_time``;
- **wills**: raw MQTT clients that connect with a will and then say nothing (a frozen
  board); the delay from CONNACK to will on Mosquitto, for keepalives 1, 2, 4 and 7 s.
  Mosquitto 2.0 checks keepalives only every ~6 s (and in whole seconds), so the delays
  come in clusters, one per check: ``will_check_interval`` is their spacing, the deadline
  stays MQTT's 1.5 x keepalive (:func:`fit_wills`).

:class:`LabSession` (the lab, a dispatcher and a host client on one asyncio loop in a
thread) is shared with E6 (``experiments/validation.py``), which validates the fit on
scenarios not used here.  Needs root, iproute2 and Mosquitto (:func:`lab_unavailable`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sim.boards import get_profile

__all__ = ["BUFFER_SOURCE", "LabSession", "buffer_program", "calibrate_from_lab",
           "fit_calibration", "fit_wills", "lab_unavailable", "linear_fit", "relay_program",
           "sink_program"]

TICK = 0.1
#: JSON bytes a reading of the buffer program takes in a snapshot (E1's measurement)
BYTES_PER_READING = 11.1
BUFFER_SOURCE = """\
import random
random.seed(7)
readings = [random.random() for _ in range({n})]
count = 0

def tick():
    global count
    readings[count % len(readings)] = random.random()  # a live ring buffer
    count += 1

things.set_interval(tick, {tick})
"""
RELAY_SOURCE = """\
def forward(topic, message):
    things.publish({out!r}, message)

things.subscribe({inp!r}, forward)
"""
SINK_SOURCE = """\
count = 0

def take(topic, message):
    global count
    count += 1
    if count == {n}:
        things.publish({out!r}, count)

things.subscribe({inp!r}, take)
"""
WARM_SOURCE = "things.set_interval(lambda: None, 1.0)\n"
#: profiles of the calibration lab's workers: w1, w2, w3
CALIBRATION_PROFILES = ("beaglebone-black", "raspberry-pi-zero", "desktop-vm")
#: the longest wait for a worker after it took a program process: its warm pool starts
#: the next one meanwhile, which on an emulated Pi Zero (3% of a CPU) takes seconds
SETTLE_S = {"raspberry-pi-zero": 15.0, "beaglebone-black": 10.0, "pocketbeagle": 10.0}


def buffer_program(state_kb: float) -> str:
    """A program holding ``state_kb`` KB of readings in a live ring buffer (E1's)."""
    n = max(1, round(state_kb * 1024 / BYTES_PER_READING))
    return BUFFER_SOURCE.format(n=n, tick=TICK)


def relay_program(inp: str, out: str) -> str:
    """A pipeline stage: every message on ``inp`` published again on ``out``."""
    return RELAY_SOURCE.format(inp=inp, out=out)


def sink_program(inp: str, out: str, n: int) -> str:
    """A program taking ``n`` messages on ``inp`` and answering once, on ``out``."""
    return SINK_SOURCE.format(inp=inp, out=out, n=n)


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the board lab needs root (network namespaces, tc, cgroups)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the board lab needs iproute2 (ip, tc)"
    if (shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")) is None:
        return "the board lab needs Mosquitto (apt-get install mosquitto)"
    return None


# ------------------------------------------------------------------------ the lab session
class LabSession:
    """A lab of workers (profiles in order: w1, w2, ...), a Dispatcher and a host MQTT
    client on an asyncio loop in a background thread; :meth:`call` runs a coroutine on
    it from any thread.  Workers wait up to ``request_timeout`` for a migration step: an
    emulated Pi Zero needs more than the default 10 s to start a cold program process."""

    def __init__(self, profiles: Sequence[str], *, prefix: str | None = None,
                 machine_factor: float | None = None, request_timeout: float = 60.0) -> None:
        from .lab import lab_up

        self.profiles = list(profiles)
        self.prefix = prefix or "tv" + secrets.token_hex(3)
        subnet = f"10.76.{secrets.randbelow(250) + 1}.0/24"
        self.lab = lab_up(len(self.profiles), self.profiles, prefix=self.prefix, subnet=subnet,
                          machine_factor=machine_factor,
                          worker_config={"request_timeout": request_timeout,
                                         "lease_s": 4 * request_timeout})
        self.names = [w.name for w in self.lab.workers]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.warm: set[str] = set()
        try:
            self.call(self._connect(), timeout=120)
        except BaseException:
            self.close()
            raise

    def profile(self, worker: str) -> str:
        return self.profiles[self.names.index(worker)]

    def call(self, coro: Coroutine, timeout: float = 600.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> None:
        from runtime.clock import AsyncioClock
        from runtime.dispatcher import Dispatcher
        from runtime.mqtt import MqttTransport

        loop = asyncio.get_running_loop()
        url = self.lab.broker_url
        # a program's first process on an emulated Pi Zero starts in ~25 s (two Pythons at
        # 3% of a CPU: it and the warm pool's next), over the dispatcher's default 30 s
        self.dispatcher = Dispatcher(MqttTransport(url, client_id=f"{self.prefix}-d", loop=loop),
                                     AsyncioClock(loop), {"id": f"{self.prefix}-d",
                                                          "request_timeout": 4 * 30.0})
        self.dispatcher.start()
        self.host = MqttTransport(url, client_id=f"{self.prefix}-h", loop=loop)
        self.host.connect()
        deadline = loop.time() + 110
        while not set(self.names) <= {e for e, h in self.dispatcher.engines.items()
                                      if h.status != "dead"} or not self.host.connected:
            if loop.time() > deadline:
                raise TimeoutError("the lab's workers did not register within 110 s")
            await asyncio.sleep(0.1)

    def settle(self, worker: str, window: float = 0.5) -> None:
        """Wait until the worker's warm pool has started its next program process: until
        its cgroup uses under a fifth of its CPUs over ``window`` s (at most
        ``SETTLE_S``; a fixed wait where the lab does not emulate CPUs)."""
        group = self.lab.worker(worker).cgroup
        cpus = group.get("cpus")
        limit = SETTLE_S.get(self.profile(worker), 2.0)
        if not cpus or not group.get("usage_file"):
            time.sleep(limit)
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = self.cpu_seconds(worker)
            time.sleep(window)
            if (self.cpu_seconds(worker) - before) / window < 0.2 * min(cpus, 1.0):
                return

    def warm_up(self, worker: str) -> None:
        """Start (and kill) a program on ``worker`` so its next program process is warm,
        as in a simulated world whose board already ran a program."""
        if worker in self.warm:
            return
        self.call(self._run_and_kill(worker))
        self.warm.add(worker)
        self.settle(worker)

    async def _run(self, worker: str, name: str, code: str) -> str:
        """Dispatcher calls happen on the loop's thread (it is not thread-safe)."""
        return (await self.dispatcher.run_code(worker, name, code))["id"]

    async def _kill(self, iid: str) -> None:
        await self.dispatcher.kill_code(iid)

    async def _run_and_kill(self, worker: str) -> None:
        d = self.dispatcher
        iid = (await d.run_code(worker, "warm", WARM_SOURCE))["id"]
        await d.kill_code(iid)

    # ----------------------------------------------------------------- measurements
    def migrate(self, source: str, target: str, state_kb: float, run_s: float = 2.0,
                warm: bool = True) -> dict[str, Any]:
        """One migration of the buffer program: the engines' ``migration`` record."""
        for w in (source, target) if warm else (source,):
            self.warm_up(w)
        started = time.monotonic()
        iid = self.call(self._run(source, "buffer", buffer_program(state_kb)))
        self.settle(source)  # the source's pool refills: not during the snapshot
        time.sleep(max(0.0, started + run_s - time.monotonic()))
        result = self.call(self._move(source, target, iid))
        self.call(self._kill(iid))
        self.settle(target)  # likewise the target's: keep it out of the next trial
        return result

    async def _move(self, source: str, target: str, iid: str) -> dict:
        moved = await self.dispatcher.move_code(source, target, "buffer", iid)
        return dict(moved.get("migration") or {})

    def pipeline(self, first: str, second: str, messages: int = 20,
                 period: float = 0.25) -> list[float]:
        """End-to-end latency (s) of each message: host -> ``first`` -> ``second`` -> host,
        one relay program on each, ``messages`` sent every ``period`` s."""
        for w in (first, second):
            self.warm_up(w)
        tag = secrets.token_hex(3)
        topics = [f"e6/{tag}/{k}" for k in ("in", "mid", "out")]
        ids = [self.call(self._run(first, "stage1", relay_program(topics[0], topics[1]))),
               self.call(self._run(second, "stage2", relay_program(topics[1], topics[2])))]
        self.settle(first)
        self.settle(second)
        out = self.call(self._pipeline(topics, messages, period))
        for iid in ids:
            self.call(self._kill(iid))
        return out

    async def _pipeline(self, topics: list[str], messages: int,
                        period: float) -> list[float]:
        loop = asyncio.get_running_loop()
        sent: dict[int, float] = {}
        got: dict[int, float] = {}
        done = asyncio.Event()

        def on_out(message: Any) -> None:
            seq = json.loads(message.payload)["seq"]
            got[seq] = loop.time()
            if len(got) >= messages:
                done.set()

        self.host.subscribe(topics[2], on_out, qos=0)
        await asyncio.sleep(1.0)  # the host's subscription is in place
        for seq in range(messages):
            sent[seq] = loop.time()
            self.host.publish(topics[0], json.dumps({"seq": seq}).encode(), qos=0)
            await asyncio.sleep(period)
        try:
            await asyncio.wait_for(done.wait(), 30)
        except asyncio.TimeoutError:
            pass
        self.host.unsubscribe(topics[2])
        return [got[s] - sent[s] for s in sorted(got)]

    def cpu_seconds(self, worker: str) -> float:
        """CPU seconds (of this machine) the worker's cgroup has used so far: the worker
        and its program processes (the group's own counter, in ns)."""
        from .labcpu import cpu_usage

        used = cpu_usage(self.lab.worker(worker).cgroup)
        if used is None:
            raise RuntimeError(f"{worker} has no CPU counter: the lab does not emulate CPUs "
                               f"({self.lab.cpu_emulation.get('reason', '?')})")
        return used

    def relay_cost(self, worker: str, messages: int = 60, period: float = 0.1,
                   sink: bool = False, pad: int = 0) -> dict[str, float]:
        """A relay program on ``worker`` forwarding ``messages`` sent ``period`` s apart
        (or, with ``sink``, a program taking them and answering once; ``pad`` bytes more
        in each): its CPU seconds per message (this machine's, idle use subtracted), the
        payload's bytes and the rate it kept up with.
        Paced, not a burst: at saturation the program process takes its deliveries in
        batches and a message costs less than one arriving alone, as in a pipeline's."""
        self.warm_up(worker)
        tag = secrets.token_hex(3)
        inp, out = f"e6/{tag}/flood", f"e6/{tag}/back"
        code = sink_program(inp, out, messages) if sink else relay_program(inp, out)
        iid = self.call(self._run(worker, "sink" if sink else "relay", code))
        self.settle(worker)  # the next warm process has started: its CPU is not ours
        idle_s = 3.0
        c0, t0 = self.cpu_seconds(worker), time.monotonic()
        time.sleep(idle_s)
        idle_rate = (self.cpu_seconds(worker) - c0) / (time.monotonic() - t0)
        c1 = self.cpu_seconds(worker)
        seconds, nbytes = self.call(self._flood(inp, out, messages, period,
                                                1 if sink else messages, pad))
        used = self.cpu_seconds(worker) - c1 - idle_rate * seconds
        self.call(self._kill(iid))
        return {"cpu_s_per_message": max(used, 0.0) / messages, "bytes": nbytes,
                "per_s": messages / seconds, "idle_cpu": idle_rate}

    async def _flood(self, inp: str, out: str, messages: int, period: float,
                     answers: int, pad: int = 0) -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        count = 0
        done = asyncio.Event()

        def on_out(_message: Any) -> None:
            nonlocal count
            count += 1
            if count >= answers:
                done.set()

        self.host.subscribe(out, on_out, qos=0)
        await asyncio.sleep(1.0)
        start = loop.time()
        for seq in range(messages):
            payload = json.dumps({"seq": seq, "pad": "x" * pad}).encode()
            self.host.publish(inp, payload, qos=0)
            await asyncio.sleep(period)
        try:
            await asyncio.wait_for(done.wait(), 300)
        except asyncio.TimeoutError:
            pass
        self.host.unsubscribe(out)
        if count < answers:
            raise RuntimeError(f"the program answered {count} of {answers} times")
        return loop.time() - start, len(payload)

    def close(self) -> None:
        from .lab import lab_down

        try:
            if getattr(self, "dispatcher", None) is not None:
                self.call(self._disconnect(), timeout=10)
        except Exception:  # noqa: BLE001 - tearing down whatever is left
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        lab_down(self.prefix)

    async def _disconnect(self) -> None:
        self.dispatcher.kill()
        self.host.disconnect()

    def __enter__(self) -> LabSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ broker and wills
def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive: int, will_topic: str, will: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with a QoS 0 will, clean session."""
    body = (_mqtt_string("MQTT") + bytes([4, 0x04 | 0x02]) + struct.pack("!H", keepalive)
            + _mqtt_string(client_id) + _mqtt_string(will_topic)
            + struct.pack("!H", len(will)) + will)
    return bytes([0x10]) + _remaining(len(body)) + body


async def _will_delays(host: Any, address: tuple[str, int], keepalives: Sequence[int],
                       reps: int) -> list[tuple[int, float]]:
    """Silent clients (a socket that sends CONNECT and nothing more): CONNACK to will."""
    loop = asyncio.get_running_loop()
    tag = secrets.token_hex(3)
    arrived: dict[str, float] = {}
    host.subscribe(f"e6will/{tag}/+", lambda m: arrived.setdefault(m.topic, loop.time()),
                   qos=0)
    await asyncio.sleep(0.5)
    socks, started = [], {}
    for k in keepalives:
        for r in range(reps):
            topic = f"e6will/{tag}/k{k}r{r}"
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(connect_packet(f"silent-{tag}-{k}-{r}", k, topic, b"gone"))
            if sock.recv(4)[:1] != b"\x20":
                raise RuntimeError("no CONNACK from the broker")
            started[topic] = (k, loop.time())
            socks.append(sock)
    deadline = loop.time() + 3 * max(keepalives) + 15
    while len(arrived) < len(started) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for sock in socks:
        sock.close()
    return [(k, arrived[t] - t0) for t, (k, t0) in started.items() if t in arrived]


async def _broker_service(host: Any, messages: int = 5000) -> float:
    loop = asyncio.get_running_loop()
    topic = f"e6svc/{secrets.token_hex(3)}"
    times: list[float] = []
    host.subscribe(topic, lambda _m: times.append(loop.time()), qos=0)
    await asyncio.sleep(0.5)
    for seq in range(messages):
        host.publish(topic, b"%08d" % seq, qos=0)
        if seq % 500 == 499:
            await asyncio.sleep(0)
    deadline = loop.time() + 30
    while len(times) < messages and loop.time() < deadline:
        await asyncio.sleep(0.05)
    host.unsubscribe(topic)
    first = len(times) // 10
    return (times[-1] - times[first]) / (len(times) - 1 - first)


# ------------------------------------------------------------------------ fitting
def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` with ``a >= 0`` (a negative intercept is clamped,
    and the slope refitted through the origin): ``(a, b)``."""
    n = len(x)
    if n == 0:
        raise ValueError("nothing to fit")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    if n == 1 or sxx == 0:
        return 0.0, my / mx if mx else 0.0
    b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sxx
    a = my - b * mx
    if a < 0:
        return 0.0, sum(xi * yi for xi, yi in zip(x, y)) / sum(xi * xi for xi in x)
    return a, b


@dataclass
class LabMeasurements:
    """What :func:`measure_lab` collected, in seconds and bytes (JSON-friendly)."""

    snapshots: list[dict[str, Any]]  # {"profile", "bytes", "seconds"} (warm, per trial)
    restores: list[dict[str, Any]]
    cold_restores: list[dict[str, Any]]
    relay_rates: list[dict[str, Any]]  # {"profile", "cpu_s_per_message", "machine_factor"}
    broker_service_s: list[float]
    wills: list[dict[str, Any]]  # {"keepalive", "delay"}
    #: as relay_rates, for the sink program (absent from older calibration files), with
    #: small and with large messages ({..., "bytes"}: each message's payload)
    sink_rates: list[dict[str, Any]] = field(default_factory=list)
    sink_big_rates: list[dict[str, Any]] = field(default_factory=list)


def fit_calibration(m: LabMeasurements) -> dict[str, Any]:
    """The fitted cost and broker tables from the measurements (reference seconds are a
    board's seconds times its profile's cpu_factor)."""

    def ref(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        """Per state size (snapshots within 5% of each other), the median bytes and the
        median reference seconds: a lab repetition that waited for the machine (another
        job, a quota period) weighs nothing, as it would in a least-squares line."""
        groups: list[list[dict[str, Any]]] = []
        for r in sorted(rows, key=lambda r: r["bytes"]):
            if groups and r["bytes"] <= 1.05 * groups[-1][0]["bytes"]:
                groups[-1].append(r)
            else:
                groups.append([r])
        return ([statistics.median(float(r["bytes"]) for r in g) for g in groups],
                [statistics.median(r["seconds"] * get_profile(r["profile"]).cpu_factor
                                   for r in g) for g in groups])

    snap_a, snap_b = linear_fit(*ref(m.snapshots))
    rest_a, rest_b = linear_fit(*ref(m.restores))
    cold = []
    for r in m.cold_restores:
        warm = rest_a + rest_b * r["bytes"]
        cold.append(max(0.0, r["seconds"] * get_profile(r["profile"]).cpu_factor - warm))
    def per_message(rows: list[dict[str, Any]]) -> float:
        """The median reference CPU seconds per message of a relay or sink program."""
        return statistics.median(r["cpu_s_per_message"] * r["machine_factor"] for r in rows)

    relay = per_message(m.relay_rates)
    if m.sink_rates:  # relay = in + event + out, sink = in + event, in = out
        sink = per_message(m.sink_rates)
        message = max(relay - sink, 0.0)
        event = max(sink - message, 0.0)
    else:
        message, event = 0.0, relay
    per_byte = 0.0
    if m.sink_rates and m.sink_big_rates:  # the extra bytes of a large message, per byte
        big = per_message(m.sink_big_rates)
        extra = (statistics.median(r["bytes"] for r in m.sink_big_rates)
                 - statistics.median(r.get("bytes", 0) for r in m.sink_rates))
        per_byte = max(big - sink, 0.0) / extra if extra > 0 else 0.0
    will = fit_wills(m.wills)
    cost = {"event_cost": event, "message_cost": message, "message_cost_per_byte": per_byte,
            "snapshot_base_cost": snap_a, "snapshot_cost_per_byte": snap_b,
            "restore_base_cost": rest_a, "restore_cost_per_byte": rest_b,
            "child_start_cost": statistics.median(cold) if cold else 0.0}
    broker = {"service_time": statistics.median(m.broker_service_s), **will}
    return {"cost": cost, "broker": broker}


def fit_wills(wills: list[dict[str, Any]], resolution: float = 0.25) -> dict[str, float]:
    """The will timing: MQTT's 1.5 x keepalive deadline, met at the broker's next periodic
    keepalive check.  Clients that connected together and went silent see their wills
    at a few distinct delays, one per check; the check interval is the smallest gap
    between them (rounded to ``resolution``).  With a single cluster there is nothing to
    see a period in: a straight line through the delays instead."""
    clusters: list[list[float]] = []
    for d in sorted(w["delay"] for w in wills):
        if clusters and d - clusters[-1][-1] <= resolution:
            clusters[-1].append(d)
        else:
            clusters.append([d])
    means = [statistics.fmean(c) for c in clusters]
    gaps = [b - a for a, b in zip(means, means[1:])]
    if gaps:
        return {"will_factor": 1.5, "will_offset": 0.0,
                "will_check_interval": round(min(gaps), 3)}
    offset, factor = linear_fit([float(w["keepalive"]) for w in wills],
                                [w["delay"] for w in wills])
    return {"will_factor": factor, "will_offset": offset, "will_check_interval": 0.0}


#: the padding of the sink's large messages (bytes)
BIG_MESSAGE = 16 * 1024
#: the keepalives of the silent clients (s): deadlines 1.5-10.5 s span two checks or more
WILL_KEEPALIVES = (1, 2, 4, 7)
#: the fitting scenarios: (source, target) as indexes into CALIBRATION_PROFILES, sizes
FIT_PAIR = (0, 1)
FIT_SIZES_KB = (16.0, 128.0, 512.0)


def measure_lab(reps: int = 3, machine_factor: float | None = None,
                log: Any = print) -> tuple[LabMeasurements, dict[str, Any]]:
    """Run the calibration's measurements in a fresh lab (see the module docstring)."""
    snapshots, restores, cold, rates, sinks, bigs = [], [], [], [], [], []
    with LabSession(CALIBRATION_PROFILES, machine_factor=machine_factor) as s:
        src, dst = s.names[FIT_PAIR[0]], s.names[FIT_PAIR[1]]
        sp, dp = s.profile(src), s.profile(dst)
        log(f"lab {s.prefix}: {', '.join(f'{n}={p}' for n, p in zip(s.names, s.profiles))}")
        first = s.migrate(src, dst, FIT_SIZES_KB[1], warm=False)  # cold target
        cold.append({"profile": dp, "bytes": first["snapshot_bytes"],
                     "seconds": first["restore_s"]})
        log(f"  cold restore on {dp}: {first['restore_s']:.3f} s")
        s.warm.add(dst)
        for size in FIT_SIZES_KB:
            for _ in range(reps):
                t0 = time.monotonic()
                mig = s.migrate(src, dst, size)
                snapshots.append({"profile": sp, "bytes": mig["snapshot_bytes"],
                                  "seconds": mig["snapshot_s"]})
                restores.append({"profile": dp, "bytes": mig["snapshot_bytes"],
                                 "seconds": mig["restore_s"]})
                log(f"  {size:g} KB: snapshot {mig['snapshot_s']:.4f} s, "
                    f"restore {mig['restore_s']:.4f} s ({time.monotonic() - t0:.0f} s)")
        factor = s.lab.cpu_emulation.get("machine_factor") or 1.0
        for _ in range(reps):
            rates.append({"profile": sp, "machine_factor": factor, **s.relay_cost(src)})
            log(f"  relay on {sp}: {rates[-1]['cpu_s_per_message'] * 1e3:.3f} ms of CPU "
                f"per message, {rates[-1]['per_s']:.1f} msg/s")
            sinks.append({"profile": sp, "machine_factor": factor,
                          **s.relay_cost(src, sink=True)})
            bigs.append({"profile": sp, "machine_factor": factor,
                         **s.relay_cost(src, messages=20, period=0.3, sink=True,
                                        pad=BIG_MESSAGE)})
            log(f"  sink on {sp}: {sinks[-1]['cpu_s_per_message'] * 1e3:.3f} ms of CPU "
                f"per message, {bigs[-1]['cpu_s_per_message'] * 1e3:.3f} ms per "
                f"{bigs[-1]['bytes'] / 1024:.0f} KB message")
        address = (s.lab.broker_address, s.lab.broker_port)
        service = [s.call(_broker_service(s.host)) for _ in range(reps)]
        log(f"  broker: {min(service) * 1e6:.1f}-{max(service) * 1e6:.1f} us/message")
        wills = [{"keepalive": k, "delay": d}
                 for k, d in s.call(_will_delays(s.host, address, WILL_KEEPALIVES, reps),
                                    timeout=120)]
        log("  wills: " + ", ".join(f"k={w['keepalive']}: {w['delay']:.2f} s" for w in wills))
        machine = dict(s.lab.cpu_emulation)
        machine["groups"] = {w.profile: {k: w.cgroup.get(k) for k in ("cpus", "quota_us",
                                                                      "period_us")}
                             for w in s.lab.workers}
    return (LabMeasurements(snapshots, restores, cold, rates, service, wills, sinks, bigs),
            machine)


def refit(path: str | Path) -> Path:
    """Fit a calibration file's stored measurements again (after a change of the fit)."""
    from .sim.calibration import Calibration, load_calibration

    old = load_calibration(path)
    fitted = fit_calibration(LabMeasurements(**old.record["measurements"]))
    return Calibration(fitted["cost"], fitted["broker"], old.record).save(path)


def calibrate_from_lab(out: str | Path, reps: int = 3,
                       machine_factor: float | None = None, log: Any = print) -> Path:
    """Measure the lab, fit, write the calibration JSON to ``out``."""
    from dataclasses import asdict

    from .sim.calibration import Calibration

    started = time.time()
    measurements, machine = measure_lab(reps, machine_factor, log)
    fitted = fit_calibration(measurements)
    record = {"measurements": asdict(measurements), "machine": machine,
              "fit": {"pair": [CALIBRATION_PROFILES[i] for i in FIT_PAIR],
                      "sizes_kb": list(FIT_SIZES_KB), "reps": reps,
                      "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                    time.gmtime(started)),
                      "wall_s": round(time.time() - started, 1)}}
    return Calibration(fitted["cost"], fitted["broker"], record).save(out)

