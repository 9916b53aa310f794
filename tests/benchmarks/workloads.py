"""Workloads shared by the benchmarks: a plain-Python baseline loop and cloudpickle state.

``PlainLoop`` is the smallest event loop that runs a corpus program with the same
semantics as ProgramHost (ordering, JSON copies of messages, natural end), without any
of the bookkeeping that makes migration possible.  It is the "plain Python" side of the
steady-state overhead measurement.
"""

from __future__ import annotations

import builtins
import heapq
import io
import json
import pickle
import sys
import time
from pathlib import Path

import cloudpickle

from runtime import ProgramHost, VirtualClock
from runtime.bus import LocalBus
from runtime.program import compile_program
from runtime.topics import topic_matches

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


def corpus_names() -> list[str]:
    return sorted(p.stem for p in PROGRAMS.glob("*.py"))


def source_of(name: str) -> str:
    return (PROGRAMS / f"{name}.py").read_text()


class _Exit(BaseException):
    pass


class PlainLoop:
    """``things`` as a bare heap loop: the baseline the host is compared with."""

    def __init__(self) -> None:
        self.queue: list = []
        self.seq = 0
        self.time = 0.0
        self.timers: dict = {}
        self.subs: list = []
        self.next_id = 0
        self.out: list[str] = []
        self.code_name = self.instance_id = "plain"
        self.callback_seconds = 0.0  # measured exactly as ProgramHost measures cpu_time

    def _push(self, due, kind, ref):
        self.seq += 1
        heapq.heappush(self.queue, (due, self.seq, kind, ref))
        return self.seq

    def _timer(self, cb, delay, period, args):
        self.next_id += 1
        seq = self._push(self.time + delay, 0, self.next_id)
        self.timers[self.next_id] = [cb, args, period, seq]
        return self.next_id

    def set_timeout(self, cb, delay, *args):
        return self._timer(cb, delay, None, args)

    def set_interval(self, cb, period, *args):
        return self._timer(cb, period, period, args)

    def set_immediate(self, cb, *args):
        return self._timer(cb, 0.0, None, args)

    def clear_timer(self, timer_id):
        self.timers.pop(timer_id, None)

    def subscribe(self, topic, cb):
        self.subs.append((topic, cb))

    def unsubscribe(self, topic, cb=None):
        self.subs = [(t, c) for t, c in self.subs if not (t == topic and (cb is None or c == cb))]

    def publish(self, topic, payload):
        data = bytes(payload) if isinstance(payload, (bytes, bytearray)) else \
            json.dumps(payload, separators=(",", ":")).encode()
        if any(topic_matches(t, topic) for t, _ in self.subs):
            self._push(self.time, 1, (topic, data))

    def now(self):
        return self.time

    def exit(self, code=0):
        raise _Exit(code)

    def _print(self, *args, sep=" ", end="\n", **_):
        self.out.append(sep.join(map(str, args)) + end)

    def run(self, source: str) -> str:
        table = dict(builtins.__dict__, print=self._print, things=self)
        g = {"__builtins__": table, "__name__": "__plain__"}
        saved = sys.modules.get("things")
        sys.modules["things"] = self  # type: ignore[assignment]
        try:
            exec(compile_program(source, "<plain>")[0], g)  # compiled once, as the host does
            while self.queue and (self.timers or self.subs):
                due, seq, kind, ref = heapq.heappop(self.queue)
                self.time = due
                if kind == 0:
                    timer = self.timers.get(ref)
                    if timer is None or timer[3] != seq:
                        continue
                    if timer[2] is None:
                        del self.timers[ref]
                    else:
                        timer[3] = self._push(due + timer[2], 0, ref)
                    started = time.perf_counter()
                    timer[0](*timer[1])
                    self.callback_seconds += time.perf_counter() - started
                else:
                    topic, data = ref
                    try:
                        payload = json.loads(data.decode())
                    except (UnicodeDecodeError, ValueError):
                        payload = data
                    for t, cb in list(self.subs):
                        if topic_matches(t, topic):
                            started = time.perf_counter()
                            cb(topic, payload)
                            self.callback_seconds += time.perf_counter() - started
        except _Exit:
            pass
        finally:
            if saved is None:
                sys.modules.pop("things", None)
            else:
                sys.modules["things"] = saved
        return "".join(self.out)


def new_host(source: str, out: list[str] | None = None) -> tuple[ProgramHost, VirtualClock]:
    """A host on a virtual clock and an in-process bus (not started)."""
    clock = VirtualClock()
    bus = LocalBus()
    host = bus.attach(ProgramHost(source, clock=clock, code_name="bench", publish=bus.publish,
                                  console=(out.append if out is not None else _drop)))
    return host, clock


def _drop(_: str) -> None:
    return None


def run_host(source: str) -> str:
    return run_host_timed(source)[0]


def run_host_timed(source: str) -> tuple[str, float]:
    """Output and the seconds spent inside the program's callbacks (top level excluded)."""
    out: list[str] = []
    host, clock = new_host(source, out)
    host.start()
    top_level = host.cpu_time
    clock.run()
    return "".join(out), host.cpu_time - top_level


def run_plain_timed(source: str) -> tuple[str, float]:
    loop = PlainLoop()
    return loop.run(source), loop.callback_seconds


def host_at_midpoint(source: str) -> ProgramHost:
    """A host paused halfway through its program (by event count)."""
    host, clock = new_host(source)
    host.start()
    clock.run()
    total = host.events_run
    host, clock = new_host(source)
    host.start()
    while host.alive and host.events_run < total // 2:
        clock.step()
    return host


# ------------------------------------------------------------------ cloudpickle side
class _RuntimePickler(cloudpickle.Pickler):
    """cloudpickle, with the runtime's own objects (``things``, builtins) by reference,
    exactly as the thingssim snapshot treats them."""

    def __init__(self, file, host: ProgramHost) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ids = {id(host.api): "things", id(host.globals["__builtins__"]): "builtins"}

    def persistent_id(self, obj):
        return self._ids.get(id(obj))


def cloudpickle_state(host: ProgramHost) -> dict:
    """The same state a thingssim snapshot holds: globals, timers, subscriptions, queue."""
    return {
        "globals": {k: v for k, v in host.globals.items() if k != "__builtins__"},
        "timers": [(t.id, t.due, t.seq, t.period, t.callback, t.args)
                   for t in host._timers.values()],
        "subs": list(host._subs),
        "queue": [e for e in host._queue if e[2] == 1],
        "source": host.source,
    }


def cloudpickle_dumps(host: ProgramHost) -> bytes:
    """cloudpickle recurses per nesting level: deep linked structures need a higher limit."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))
    buffer = io.BytesIO()
    _RuntimePickler(buffer, host).dump(cloudpickle_state(host))
    return buffer.getvalue()


def cloudpickle_loads(data: bytes, host: ProgramHost) -> dict:
    objects = {"things": host.api, "builtins": host.globals["__builtins__"]}

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return objects[pid]

    return _Unpickler(io.BytesIO(data)).load()
