"""The limit for RIoTBench on real workers: the same programs on raw paho-mqtt, no runtime.

thingssim runs each stage of a dataflow as an isolated program on a worker (paho thread
-> asyncio -> engine -> pipe -> child process -> program -> back).  To tell what that
costs, this module runs the very same program sources (:mod:`thingssim.riot.programs`:
the same task functions of :mod:`runtime.riot.tasks`, the same envelope, sequence
numbers, stamps, reports, topics) with nothing in between: one process per program, its
``things`` a thin shim straight onto one paho-mqtt 2.x client
(``CallbackAPIVersion.VERSION2``), messages handed to the program's callback inside
paho's ``on_message``, timers on a heap checked between paho's ``loop()`` calls, all on
one thread.  Only the runtime differs, so the ratio of the two peak rates is the price
of the platform (isolation, migratability, the engine) on the same broker and machine.

What the shim leaves out, on purpose: snapshots, migration, pause, the watchdog, the
memory limit, the engine's outbox, resource reports.  Files (``things.fs``) are local
files under a root folder laid out as the global file system's tree (the RIoTBench grant
``/shared/riot`` seen as ``/riot``), read and written synchronously, the callback run
as the next event: the file service is not part of the limit.

Run one program::

    python -m thingssim.riot.rawpipe PROGRAM.py --broker mqtt://127.0.0.1:1883 \\
        --root DIR --name riot-etl-parse

:class:`RawFleet` starts such processes and looks enough like a
:class:`~runtime.dispatcher.Dispatcher` for :class:`thingssim.riot.run.Deployment`, so a
raw run is set up, started, measured and judged exactly like a thingssim run
(:func:`run_raw`).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from runtime.mqtt import parse_broker_url

__all__ = ["LocalFiles", "RawFleet", "Things", "main", "run_raw"]

#: the RIoTBench grant (thingssim.riot.dataflows.GRANT): program path prefix -> global
_MOUNT = ("/riot", "/shared/riot")


def _encode(value: Any) -> bytes:
    """Payload bytes as the runtime sends them: bytes raw, anything else compact JSON."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _decode(data: bytes) -> Any:
    """What a program receives: the JSON value when the bytes are UTF-8 JSON, else bytes."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return data


class LocalFiles:
    """``things.fs`` on local files (only the calls the RIoTBench programs make)."""

    def __init__(self, things: Things, root: Path, code_name: str) -> None:
        self._things, self._root, self._code_name = things, root, code_name

    def path(self, path: str) -> Path:
        """A program's path in the global tree, under ``root``."""
        path = "/" + path.lstrip("/")
        head, mounted = _MOUNT
        if path == head or path.startswith(head + "/"):
            return self._root / (mounted + path[len(head):]).lstrip("/")
        return self._root / "programs" / self._code_name / path.lstrip("/")

    def _later(self, callback: Optional[Callable], fn: Callable[[], Any]) -> None:
        try:
            result, error = fn(), None
        except OSError as exc:
            result, error = None, exc
        if callback is not None:
            self._things.set_immediate(callback, error, result)

    def read_file(self, path: str, callback: Callable, binary: bool = False,
                  encoding: str = "utf-8") -> None:
        local = self.path(path)
        self._later(callback, local.read_bytes if binary
                    else lambda: local.read_text(encoding=encoding))

    def write_file(self, path: str, data: Any, callback: Optional[Callable] = None) -> None:
        local = self.path(path)
        body = data.encode("utf-8") if isinstance(data, str) else bytes(data)

        def write() -> None:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(body)

        self._later(callback, write)

    def mkdir(self, path: str, callback: Optional[Callable] = None, parents: bool = False,
              exist_ok: bool = False) -> None:
        local = self.path(path)
        self._later(callback, lambda: local.mkdir(parents=parents, exist_ok=exist_ok))


class Things:
    """The ``things`` a program sees, straight onto one paho client on one thread."""

    def __init__(self, client: mqtt.Client, root: Path, code_name: str) -> None:
        self._client = client
        self._timers: list[tuple[float, int, int]] = []  # (due, seq, timer id)
        self._callbacks: dict[int, tuple[Callable, tuple, Optional[float]]] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._start = time.monotonic()
        self._now = 0.0
        self._subs: dict[str, list[Callable]] = {}
        self.code_name = self.instance_id = code_name
        self.exit_code: Optional[int] = None
        self.fs = LocalFiles(self, root, code_name)

    # -- the program's calls
    def subscribe(self, topic_filter: str, callback: Callable) -> None:
        if topic_filter not in self._subs:
            self._subs[topic_filter] = []
            self._client.message_callback_add(topic_filter, self._handler(topic_filter))
            self._client.subscribe(topic_filter, qos=0)
        self._subs[topic_filter].append(callback)

    def publish(self, topic: str, payload: Any) -> None:
        self._client.publish(topic, _encode(payload), qos=0)

    def set_timeout(self, callback: Callable, delay: float, *args: Any) -> int:
        return self._add(callback, args, max(0.0, float(delay)), None)

    def set_interval(self, callback: Callable, period: float, *args: Any) -> int:
        return self._add(callback, args, float(period), float(period))

    def set_immediate(self, callback: Callable, *args: Any) -> int:
        return self._add(callback, args, 0.0, None)

    def clear_timer(self, timer_id: int) -> None:
        self._callbacks.pop(timer_id, None)

    def now(self) -> float:
        """As the runtime's: the due time of the timer being run (program seconds)."""
        return self._now

    def time(self) -> float:
        return time.time()

    def cpu_time(self) -> float:
        """This process's CPU seconds: one process per task, so the task's (the runtime's
        ``things.cpu_time()`` counts only its callbacks)."""
        return time.process_time()

    def exit(self, code: int = 0) -> None:
        self.exit_code = code

    # -- the loop
    def _add(self, callback: Callable, args: tuple, delay: float,
             period: Optional[float]) -> int:
        timer_id = next(self._ids)
        self._callbacks[timer_id] = (callback, args, period)
        heapq.heappush(self._timers, (self._now + delay, next(self._seq), timer_id))
        return timer_id

    def _handler(self, topic_filter: str) -> Callable:
        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self._now = time.monotonic() - self._start
            value = _decode(msg.payload)
            for callback in list(self._subs.get(topic_filter, ())):
                callback(msg.topic, value)

        return on_message

    def run_due(self) -> Optional[float]:
        """Run every timer that is due; seconds until the next one (None: no timer)."""
        while self._timers:
            due, _, timer_id = self._timers[0]
            if due > time.monotonic() - self._start:
                return due - (time.monotonic() - self._start)
            heapq.heappop(self._timers)
            entry = self._callbacks.get(timer_id)
            if entry is None:
                continue
            callback, args, period = entry
            self._now = due
            if period is None:
                del self._callbacks[timer_id]
            else:
                heapq.heappush(self._timers, (due + period, next(self._seq), timer_id))
            callback(*args)
        return None


def serve(source: str, url: str, root: Path, code_name: str) -> int:
    """Run one program on a raw paho client until SIGTERM (or ``things.exit``).

    The socket gets TCP_NODELAY, as the worker's transport sets it (paho does not): with
    Nagle's algorithm a small publish waits for the broker's delayed ACK (about 40 ms a
    hop on Linux), which would make the limit slower than the thing it bounds."""
    host, port, *_ = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{code_name}-{os.getpid()}")
    client.max_queued_messages_set(0)  # unbounded, as in the worker's transport
    client.on_socket_open = _nodelay
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    client.connect(host, port, keepalive=30)
    while not client.is_connected():  # CONNACK before subscribing
        client.loop(0.1)
    things = Things(client, root, code_name)
    # the runtime's things is also importable; RIoTBench's programs only use the global
    glob = {"__name__": "__program__", "things": things}
    exec(compile(source, code_name, "exec"), glob)  # noqa: S102 - our own program text
    while not stop and things.exit_code is None:
        wait = things.run_due()
        rc = client.loop(0.05 if wait is None else min(0.05, max(0.0, wait)))
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            print(f"{code_name}: paho loop: {mqtt.error_string(rc)}", file=sys.stderr)
            return 1
    client.disconnect()
    return things.exit_code or 0


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program", type=Path)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--root", type=Path, required=True,
                        help="local folder standing for the global file system's tree")
    parser.add_argument("--name", required=True, help="the program's code name")
    args = parser.parse_args(argv)
    return serve(args.program.read_text(encoding="utf-8"), args.broker, args.root, args.name)


# ------------------------------------------------------------------------- the fleet
class _RawProgram:
    """What Deployment reads of a program (``status``, ``console``, ``error``)."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log
        self.killed = False

    @property
    def status(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "Running"
        return "Exited" if code == 0 or self.killed else "Crashed"

    @property
    def console(self) -> list[str]:
        return []

    @property
    def error(self) -> Optional[str]:
        if self.status != "Crashed":
            return None
        return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]


class RawFleet:
    """Starts each program of a run as ``python -m thingssim.riot.rawpipe``: the part of a
    :class:`~runtime.dispatcher.Dispatcher` that :class:`~thingssim.riot.run.Deployment`
    uses (``transport``, ``run_code``, ``kill_code``, ``programs``).  Engine names are
    ignored: every program is a process of this machine."""

    ENGINE = "raw"

    def __init__(self, transport: Any, clock: Any, url: str, root: Path) -> None:
        self.transport, self.clock, self.url, self.root = transport, clock, url, Path(root)
        self.programs: dict[str, _RawProgram] = {}
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])]
            + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}

    def put_files(self, files: dict[str, bytes]) -> None:
        """The files the run needs, at their global paths under ``root``."""
        for path, data in files.items():
            local = self.root / path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)

    def run_code(self, engine: str, code_name: str, source: str) -> Any:
        iid = f"{code_name}.{uuid.uuid4().hex[:8]}"
        folder = self.root / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        program, log = folder / f"{iid}.py", folder / f"{iid}.log"
        program.write_text(source, encoding="utf-8")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "thingssim.riot.rawpipe", str(program), "--broker",
                 self.url, "--root", str(self.root), "--name", code_name],
                stdout=out, stderr=subprocess.STDOUT, env=self._env)
        self.programs[iid] = _RawProgram(proc, log)
        fut = self.clock.create_future()
        fut.set_result({"id": iid, "code_name": code_name, "engine": self.ENGINE,
                        "status": "Running"})
        return fut

    def kill_code(self, iid: str) -> Any:
        """SIGTERM; the future is done once the process has exited (SIGKILL after 5 s)."""
        prog = self.programs[iid]
        prog.killed = True
        if prog.proc.poll() is None:
            prog.proc.send_signal(signal.SIGTERM)
        fut = self.clock.create_future()
        deadline = time.monotonic() + 5.0

        def check() -> None:
            if prog.proc.poll() is None and time.monotonic() > deadline:
                prog.proc.kill()
            if prog.proc.poll() is None:
                self.clock.call_later(0.02, check)
            elif not fut.done():
                fut.set_result("killed")

        check()
        return fut

    def move_code(self, *args: Any) -> Any:
        raise NotImplementedError("raw paho programs do not migrate")

    def close(self) -> None:
        """Kill whatever still runs (a run that failed half way)."""
        for prog in self.programs.values():
            if prog.proc.poll() is None:
                prog.proc.kill()
                prog.proc.wait()


async def run_raw_async(spec: Any, transport: Any, clock: Any, url: str,
                        root: Optional[Path] = None, progress: bool = False,
                        on_tick: Optional[Callable[[Any], None]] = None) -> Any:
    """Run ``spec`` (:class:`~thingssim.riot.run.RunSpec`) on raw paho processes, with
    ``transport`` (connected, on ``clock``'s loop) for the runner; a ``RunResult``.
    ``on_tick(deployment)`` is called every 0.1 s while it runs (for measurements)."""
    import asyncio

    from .dataflows import build
    from .run import Deployment, _Progress

    started = time.perf_counter()
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="riot-raw-")) if root is None else Path(root)
    fleet = RawFleet(transport, clock, url, root)
    flow = build(spec.flow, spec.dataset)
    dep = Deployment(spec, flow, fleet, clock, [RawFleet.ENGINE], fleet.put_files)
    bar = _Progress(len(dep.lines), progress, f"{flow.name} (raw paho)")
    loop = asyncio.get_running_loop()
    limit = loop.time() + spec.ready_s + spec.duration + spec.drain_s + 60.0
    try:
        dep.start()
        while not dep.finished and loop.time() < limit:
            await asyncio.sleep(0.1)
            bar.update(dep.collector)
            if on_tick is not None:
                on_tick(dep)
        if not dep.finished:
            dep.error = dep.error or "did not finish in time"
        return dep.result("raw", [], time.perf_counter() - started)
    finally:
        bar.close()
        detach(dep.collector, transport)
        fleet.close()
        if own:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def detach(collector: Any, transport: Any) -> None:
    """Unsubscribe a run's :class:`~thingssim.riot.measure.Collector` from a transport
    that serves many runs (its handlers would otherwise stay, one set per run)."""
    base = f"riot/{collector.run}"
    for topic_filter, handler in ((f"{base}/ready", collector._on_ready),
                                  (f"{base}/report", collector._on_report),
                                  (f"{base}/stats/+", collector._on_stats),
                                  ("+/+/resource", collector._on_resource),
                                  (f"{base}/+", collector._on_tuple)):
        transport.unsubscribe(topic_filter, handler)


def run_raw(spec: Any, url: str, progress: bool = False) -> Any:
    """Run ``spec`` on raw paho processes against broker ``url`` (a ``RunResult``)."""
    import asyncio

    from runtime.clock import AsyncioClock
    from runtime.mqtt import MqttTransport

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        transport = MqttTransport(url, client_id=f"raw-runner-{uuid.uuid4().hex[:6]}",
                                  loop=loop, io="asyncio")
        transport.connect()
        try:
            await transport.wait_connected(10.0)
            return await run_raw_async(spec, transport, AsyncioClock(loop), url,
                                       progress=progress)
        finally:
            transport.disconnect()

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
