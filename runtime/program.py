"""ProgramHost: one program instance on an event loop driven by an injected clock.

The host is a state machine in the style of h11: it never sleeps, spawns nothing and
touches no socket.  It keeps the program's event queue in *program time* (a clock that
advances only while the program runs) and asks the injected clock to wake it when the
next event is due.  Between two events -- a loop boundary -- it can be paused, snapshotted
and restored elsewhere; the program itself is plain, uninstrumented Python.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import linecache
import math
import time
import traceback
import uuid
from enum import Enum
from types import CodeType
from typing import Any, Callable, Optional

from .api import ProgramExit, Things
from .clock import Clock
from .gfs.client import FsClient
from .snapshot import document
from .snapshot.decoder import GraphDecoder
from .snapshot.encoder import PROGRAM_MODULE, GraphEncoder
from .snapshot.errors import RestoreError, SnapshotError
from .snapshot.modules import ProgramModules
from .snapshot.sites import SiteIndex
from .topics import topic_matches, validate_filter, validate_topic
from .wirejson import to_json

_TIMER, _MESSAGE = 0, 1
#: events due within this much of a horizon still run (absorbs float rounding of splits)
HORIZON_EPSILON = 1e-9


_SEEN_TOPICS = 1024  # topics whose last payload is remembered (oldest forgotten)

class ProgramStatus(str, Enum):
    RUNNING = "Running"
    PAUSED = "Paused"
    EXITED = "Exited"
    CRASHED = "Crashed"


class _Timer:
    __slots__ = ("id", "callback", "args", "period", "due", "seq")

    def __init__(self, timer_id: int, callback: Callable[..., Any], args: tuple,
                 period: Optional[float], due: float, seq: int) -> None:
        self.id = timer_id
        self.callback = callback
        self.args = args
        self.period = period
        self.due = due
        self.seq = seq




def encode_payload(payload: Any) -> bytes:
    """What travels on the wire: bytes as they are, anything else as compact JSON."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    try:
        return to_json(payload).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload must be bytes or JSON-serialisable: {exc}") from None


def decode_payload(data: bytes) -> Any:
    """What a subscriber receives: the JSON value if the bytes are UTF-8 JSON, else bytes."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return data


@functools.lru_cache(maxsize=64)
def compile_program(source: str, filename: str) -> tuple[CodeType, SiteIndex]:
    """Compile once per (source, filename) per process: restoring a program this board
    has compiled before (ping-pong migration, many instances) skips the compiler."""
    code = compile(source, filename, "exec", dont_inherit=True)
    # tracebacks of a program that has no file on this board still show its lines
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return code, SiteIndex(code)


def _noop(*_: Any) -> None:
    return None


@functools.lru_cache(maxsize=64)
def _names_cpu_time(code: CodeType) -> bool:
    """Does any function of the program name ``cpu_time``?  Only then does its snapshot
    carry the CPU count (``loop.cpu_time``): every other snapshot keeps its bytes."""
    stack = [code]
    while stack:
        c = stack.pop()
        if "cpu_time" in c.co_names:
            return True
        stack.extend(k for k in c.co_consts if isinstance(k, CodeType))
    return False


class ProgramHost:
    """Runs one program instance; see the module docstring."""

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("status", "_in_callback", "_holds", "_queue", "_timers", "_wake",
                 "_wake_due", "_horizon", "_clock", "_clock_base", "_prog_base", "_time",
                 "_seq", "_event_hook", "_publish_hook", "fs", "api", "cpu_time",
                 "events_run", "_keeps_cpu", "_subs", "_queued_messages", "instance_id",
                 "code_name", "_console_hook", "_status_hook", "_subscriptions_hook",
                 "source", "filename", "modules", "_builtins", "globals", "exit_code",
                 "error", "_last_seen", "_next_timer_id", "_code", "_sites", "__dict__")

    def __init__(
        self,
        source: str,
        *,
        clock: Clock,
        code_name: str = "program",
        instance_id: str | None = None,
        filename: str | None = None,
        publish: Callable[[str, bytes], None] = _noop,
        console: Callable[[str], None] = _noop,
        on_status: Callable[[ProgramHost], None] = _noop,
        on_subscriptions: Callable[[ProgramHost], None] = _noop,
        on_event: Callable[[ProgramHost, float], float | None] = _noop,
        start_time: float = 0.0,
        random_seed: int | None = None,
    ) -> None:
        self.source = source
        self.code_name = code_name
        self.instance_id = instance_id or f"{code_name}.{uuid.uuid4().hex[:12]}"
        self.filename = filename or f"<things:{code_name}>"
        self._code, self._sites = compile_program(source, self.filename)
        self._clock = clock
        self._publish_hook = publish
        self._console_hook = console
        self._status_hook = on_status
        self._subscriptions_hook = on_subscriptions
        #: (host, measured seconds of the event) -> seconds charged (None: as measured)
        self._event_hook = on_event

        self.api = Things(self)
        self.fs = FsClient(self)  # things.fs: files in the global file system
        self._holds = 0  # > 0: events wait and the clock stands still (files reloading)
        # its own `random`: isolated, and it migrates.  Seeded from ``random_seed``, else
        # from an instance id given by the caller (the simulator's ids are seeded, so its
        # runs repeat), else from os.urandom
        if random_seed is None and instance_id is not None:
            random_seed = int.from_bytes(hashlib.sha256(instance_id.encode()).digest(), "big")
        self.modules = ProgramModules(random_seed)
        self._builtins = self.api.make_builtins()
        self.globals: dict[str, Any] = {"__builtins__": self._builtins,
                                        "__name__": PROGRAM_MODULE, "__doc__": None}
        self.status: ProgramStatus | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.events_run = 0
        self.cpu_time = 0.0  # charged CPU of its events: things.cpu_time()
        self._keeps_cpu = _names_cpu_time(self._code)

        self._queue: list[tuple] = []  # (due, seq, kind, ref): timers and messages
        self._timers: dict[int, _Timer] = {}
        self._subs: list[tuple[str, Callable[..., Any]]] = []
        self._queued_messages = 0
        self._seq = 0
        #: topic -> digest of the last payload delivered there, so a retained message the
        #: program already saw is not handed to it again (after a migration, a reconnect
        #: or a re-subscription, MQTT replays retained messages)
        self._last_seen: dict[str, str] = {}
        self._next_timer_id = 1
        self._time = float(start_time)  # program time of the current / last event
        self._prog_base = self._time  # program time at _clock_base
        self._clock_base = clock.now()
        self._in_callback = False
        self._wake: Any = None
        self._wake_due: float | None = None
        self._horizon: float | None = None

    # ================================================================= lifecycle
    def start(self) -> ProgramHost:
        """Run the program's top level once, then let its callbacks run."""
        if self.status is not None:
            raise RuntimeError("program already started")
        self._set_status(ProgramStatus.RUNNING)
        self._call(exec, (self._code, self.globals))
        self._after_event()
        return self

    def pause(self, at: float | None = None) -> None:
        """Stop timers and message delivery (messages queue up); the program clock stops.

        ``at`` fixes the program time at which it stops (used to stop exactly at a horizon).
        """
        if self.status is not ProgramStatus.RUNNING:
            return
        self._time = self.program_time() if at is None else max(self._time, float(at))
        self._cancel_wake()
        self._set_status(ProgramStatus.PAUSED)

    def resume(self) -> None:
        """Continue with the remaining times of every timer and the queued messages."""
        if self.status is not ProgramStatus.PAUSED:
            return
        self._prog_base, self._clock_base = self._time, self._clock.now()
        self._set_status(ProgramStatus.RUNNING)
        self.fs.kick()
        self._after_event()

    def kill(self) -> None:
        """Stop the program for good (status Exited, no exit code)."""
        if self.status in (ProgramStatus.EXITED, ProgramStatus.CRASHED):
            return
        self._finish(ProgramStatus.EXITED, None)

    def set_horizon(self, program_time: float | None) -> None:
        """Run no event due after ``program_time`` (None: no limit)."""
        self._horizon = program_time
        self._cancel_wake()
        self._arm()

    def hold(self) -> None:
        """Run no event, and stop the program clock, until as many ``release()`` calls:
        the state a restored program waits in while its open files reload."""
        if self._holds == 0:
            self._time = self.program_time()
            self._cancel_wake()
        self._holds += 1

    def release(self) -> None:
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds == 0:
            self._prog_base, self._clock_base = self._time, self._clock.now()
            self._arm()

    def _fs_idle(self) -> None:
        """``things.fs`` finished its last operation: the program may have ended."""
        if not self._in_callback and self.status is ProgramStatus.RUNNING:
            self._after_event()

    @property
    def alive(self) -> bool:
        return self.status in (ProgramStatus.RUNNING, ProgramStatus.PAUSED)

    @property
    def filters(self) -> list[str]:
        """Topic filters the program is subscribed to, in subscription order, no repeats
        (plus its ``things.fs`` reply topic once it used files)."""
        filters = list(dict.fromkeys(f for f, _ in self._subs))
        if self.fs.active and self.alive:
            filters.append(self.fs.reply_topic)
        return filters

    @property
    def pending_events(self) -> int:
        return len(self._timers) + self._queued_messages

    def next_due(self) -> float | None:
        head = self._peek()
        return None if head is None else head[0]

    def program_time(self) -> float:
        if self._in_callback or self.status is not ProgramStatus.RUNNING or self._holds:
            return self._time
        estimate = self._prog_base + (self._clock.now() - self._clock_base)
        return max(self._time, estimate)

    # ================================================================= API backends
    def add_timer(self, callback: Callable[..., Any], delay: float,
                  period: Optional[float], args: tuple) -> int:
        if not callable(callback):
            raise TypeError(f"timer callback must be callable, got {type(callback).__name__}")
        delay = float(delay)
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"timer delay must be a finite number >= 0, got {delay!r}")
        if period is not None and not period > 0:
            raise ValueError(f"interval period must be > 0, got {period!r}")
        timer_id = self._next_timer_id
        self._next_timer_id += 1
        self._seq += 1
        due = (self._time if self._in_callback else self.program_time()) + delay
        self._timers[timer_id] = _Timer(timer_id, callback, args, None if period is None
                                        else float(period), due, self._seq)
        heapq.heappush(self._queue, (due, self._seq, _TIMER, timer_id))
        if not self._in_callback:
            self._arm()
        return timer_id

    def clear_timer(self, timer_id: int) -> None:
        self._timers.pop(timer_id, None)

    def subscribe(self, topic_filter: str, callback: Callable[..., Any]) -> None:
        validate_filter(topic_filter)
        if not callable(callback):
            raise TypeError("subscription callback must be callable")
        known = topic_filter in self.filters
        self._subs.append((topic_filter, callback))
        if not known:
            self._subscriptions_hook(self)

    def unsubscribe(self, topic_filter: str, callback: Callable[..., Any] | None = None) -> None:
        before = self.filters
        self._subs = [(f, cb) for f, cb in self._subs
                      if not (f == topic_filter and (callback is None or cb == callback))]
        if self.filters != before:
            self._subscriptions_hook(self)

    def publish(self, topic: str, payload: Any, qos: int | None = None) -> None:
        if type(topic) is not str or not topic or "+" in topic or "#" in topic:
            validate_topic(topic)  # raises the precise error
        if topic.endswith("/cmd") and topic == self.fs.command_topic:  # else a program
            # could speak for no program (endswith first: no string built per publish)
            raise PermissionError(f"programs reach the file service through things.fs, "
                                  f"not by publishing on {topic!r}")
        if qos is None:
            self._publish_hook(topic, encode_payload(payload))
        elif qos == 0 or qos == 1:
            self._publish_hook(topic, encode_payload(payload), qos)
        else:
            raise ValueError(f"qos must be 0, 1 or None (the engine's default), not {qos!r}")

    def write_console(self, text: str) -> None:
        self._console_hook(text)

    # ================================================================= inputs
    def deliver(self, topic: str, data: bytes, via: str | None = None,
                retained: bool = False) -> bool:
        """A message from the transport; queued as an event if the program subscribes to it.

        ``via``: the subscription filter the transport delivered it for; then only that
        filter's callbacks run (MQTT sends one copy per matching subscription).
        ``retained``: a broker's replay of a retained message; dropped if it is the last
        payload the program already got on that topic.
        """
        if self.status is not ProgramStatus.RUNNING and self.status is not ProgramStatus.PAUSED:
            return False
        if topic == self.fs.reply_topic and self.fs.active:
            self.fs.on_reply(data)  # not an event of the program: it may be waiting for it
            return True
        for topic_filter, _ in self._subs:
            if topic_filter == via if via is not None else topic_matches(topic_filter, topic):
                break
        else:
            return False
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        seen = self._last_seen
        if retained and seen.get(topic) == digest:
            return False
        if topic in seen:
            del seen[topic]
        elif len(seen) >= _SEEN_TOPICS:
            del seen[next(iter(seen))]
        seen[topic] = digest
        self._seq += 1
        heapq.heappush(self._queue, (self.program_time(), self._seq, _MESSAGE,
                                     (topic, data if type(data) is bytes else bytes(data), via)))
        self._queued_messages += 1
        if not self._in_callback:
            self._arm()
        return True

    # ================================================================= event loop
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _peek(self) -> tuple | None:
        queue = self._queue
        while queue:
            head = queue[0]
            if head[2] == _TIMER:
                timer = self._timers.get(head[3])
                if timer is None or timer.seq != head[1]:
                    heapq.heappop(queue)  # cleared, or an interval since rescheduled
                    continue
            return head
        return None

    def _arm(self) -> None:
        if self.status is not ProgramStatus.RUNNING or self._in_callback or self._holds:
            return
        head = self._peek()
        if head is None or (self._horizon is not None and
                            head[0] > self._horizon + HORIZON_EPSILON):
            self._cancel_wake()
            return
        due = head[0]
        if self._wake is not None and self._wake_due == due:
            return
        self._cancel_wake()
        self._wake_due = due
        self._wake = self._clock.call_at(self._clock_base + (due - self._prog_base),
                                         self._on_wake)

    def _cancel_wake(self) -> None:
        if self._wake is not None:
            self._clock.cancel(self._wake)
            self._wake = None
            self._wake_due = None

    def _on_wake(self) -> None:
        self._wake = None
        self._wake_due = None
        if self.status is not ProgramStatus.RUNNING:
            return
        head = self._peek()
        if head is not None and (self._horizon is None or
                                 head[0] <= self._horizon + HORIZON_EPSILON):
            heapq.heappop(self._queue)
            self._run_event(head)
        self._after_event()

    def run_next(self) -> bool:
        """Run the next due event now, whatever the clock says (for step-by-step drivers)."""
        head = self._peek() if self.status is ProgramStatus.RUNNING else None
        if head is None:
            return False
        self._cancel_wake()
        heapq.heappop(self._queue)
        self._run_event(head)
        self._after_event()
        return True

    def _run_event(self, event: tuple) -> None:
        due, _, kind, ref = event
        self._time = due
        if kind == _TIMER:
            timer = self._timers[ref]
            if timer.period is None:
                del self._timers[ref]
            else:
                timer.due = due + timer.period
                timer.seq = self._next_seq()
                heapq.heappush(self._queue, (timer.due, timer.seq, _TIMER, timer.id))
            self._call(timer.callback, timer.args)
            return
        self._queued_messages -= 1
        topic, data, via = ref
        payload = decode_payload(data)
        for topic_filter, callback in list(self._subs):
            if self.status is not ProgramStatus.RUNNING and self.status is not \
                    ProgramStatus.PAUSED:
                break
            if topic_filter == via if via is not None else topic_matches(topic_filter, topic):
                self._call(callback, (topic, payload))

    def _call(self, fn: Callable[..., Any], args: tuple) -> None:
        self._in_callback = True
        started = time.perf_counter()
        try:
            fn(*args)
        except ProgramExit as exc:
            self._finish(ProgramStatus.EXITED, exc.code)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
            self._finish(ProgramStatus.EXITED, code or 0)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the program's crash, not the host's
            self.error = "".join(traceback.format_exception(
                type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None))
            self._finish(ProgramStatus.CRASHED, 1)
        finally:
            self._in_callback = False
            spent = time.perf_counter() - started
            self.events_run += 1
            charged = self._event_hook(self, spent)
            self.cpu_time += spent if charged is None else charged

    def _after_event(self) -> None:
        if self.status is ProgramStatus.RUNNING and not self._timers \
                and not self._subs and not self._queued_messages and not self.fs.busy:
            self._finish(ProgramStatus.EXITED, 0)  # nothing can ever happen again
            return
        self._arm()

    def _finish(self, status: ProgramStatus, code: int | None) -> None:
        self._cancel_wake()
        self.exit_code = code
        had_subs = bool(self._subs) or self.fs.active
        self.fs.stop()
        self._timers.clear()
        self._queue.clear()
        self._queued_messages = 0
        self._subs.clear()
        self._set_status(status)
        if had_subs:
            self._subscriptions_hook(self)

    def _set_status(self, status: ProgramStatus) -> None:
        if status is not self.status:
            self.status = status
            self._status_hook(self)

    # ================================================================= snapshot
    def snapshot(self) -> dict:
        """Capture the whole program at this loop boundary (raises CaptureError if it can't).

        The program is not disturbed, whether the capture succeeds or fails.
        """
        if self._in_callback:
            raise SnapshotError("a snapshot can only be taken between two callbacks")
        if not self.alive:
            raise SnapshotError(f"program {self.instance_id} has ended ({self.status.value})")
        encoder = GraphEncoder(self._sites, self.globals,
                               {id(self.api): "things", id(self._builtins): "builtins",
                                id(self.fs): "things.fs", **self.modules.runtime_refs()})
        globals_ref = encoder.encode_root(self.globals, "globals")
        timers = []
        for timer in sorted(self._timers.values(), key=lambda t: t.seq):
            timers.append({
                "id": timer.id, "due": timer.due, "seq": timer.seq, "period": timer.period,
                "callback": encoder.encode_root(timer.callback, f"timers[{timer.id}].callback"),
                "args": encoder.encode_root(timer.args, f"timers[{timer.id}].args"),
            })
        subscriptions = [{"filter": f, "callback": encoder.encode_root(
            cb, f"subscriptions[{n}] ({f!r}).callback")} for n, (f, cb) in enumerate(self._subs)]
        messages = []
        for due, seq, kind, ref in sorted(self._queue):
            if kind == _MESSAGE:
                messages.append({"due": due, "seq": seq, "topic": ref[0], "via": ref[2],
                                 **_bytes_field(ref[1])})
        fs = self.fs.capture(encoder.encode_root)
        modules = self.modules.capture(encoder)
        return {
            "format": document.FORMAT, "version": document.VERSION,
            "created_by": document.producer(),
            "program": {"code_name": self.code_name, "instance_id": self.instance_id,
                        "filename": self.filename, "source": self.source,
                        "source_sha256": document.source_hash(self.source)},
            "status": self.status.value, "time": self.program_time(),
            "loop": {"next_seq": self._seq, "next_timer_id": self._next_timer_id,
                     "events_run": self.events_run,
                     **({"cpu_time": self.cpu_time} if self._keeps_cpu else {})},
            "globals": globals_ref, "timers": timers, "subscriptions": subscriptions,
            "messages": messages, "seen": dict(self._last_seen),
            "shapes": encoder.shapes, "objects": encoder.objects,
            **({"modules": modules} if modules else {}),
            **({"fs": fs} if fs is not None else {}),
        }

    @classmethod
    def restore(cls, snapshot: dict | bytes | str, *, clock: Clock, paused: bool = False,
                **hooks: Any) -> ProgramHost:
        """Recreate a program from a snapshot; it continues as if never interrupted.

        Raises RestoreError (and runs nothing) for a corrupt, truncated, tampered or
        unknown-version snapshot.
        """
        doc = document.loads(snapshot) if isinstance(snapshot, (bytes, str)) else snapshot
        if isinstance(snapshot, dict):
            document.validate(doc)
        program = doc["program"]
        try:
            host = cls(program["source"], clock=clock, code_name=program["code_name"],
                       instance_id=program["instance_id"], filename=program.get("filename"),
                       start_time=float(doc["time"]), **hooks)
        except SyntaxError as exc:
            raise RestoreError(f"the snapshot's source does not compile here: {exc}") from exc
        try:
            host._load_state(doc)
        except RestoreError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise RestoreError(f"corrupt snapshot: {type(exc).__name__}: {exc}") from exc
        host._set_status(ProgramStatus.PAUSED)
        if not paused:
            host.resume()
        return host

    def _load_state(self, doc: dict) -> None:
        globals_index = doc["globals"].get("@")
        objects = doc["objects"]
        if type(globals_index) is not int or not 0 <= globals_index < len(objects) \
                or objects[globals_index].get("t") != "dict":
            raise RestoreError("corrupt snapshot: 'globals' does not refer to a dict")
        modules = doc.get("modules", {})
        self.modules.prepare(modules)
        decoder = GraphDecoder(objects, self._sites, self.globals,
                               {"things": self.api, "builtins": self._builtins,
                                "things.fs": self.fs, **self.modules.runtime_objects()},
                               presets={globals_index: self.globals}, shapes=doc["shapes"],
                               own_module=self.modules.get)
        decoder.decode()
        value = decoder.value
        self.modules.load(modules, value)
        self.fs.load(doc.get("fs"), value)
        for item in doc["timers"]:
            period = item["period"]
            timer = _Timer(int(item["id"]), value(item["callback"]), tuple(value(item["args"])),
                           None if period is None else float(period), float(item["due"]),
                           int(item["seq"]))
            self._timers[timer.id] = timer
            self._queue.append((timer.due, timer.seq, _TIMER, timer.id))
        for item in doc["subscriptions"]:
            self._subs.append((validate_filter(item["filter"]), value(item["callback"])))
        for item in doc["messages"]:
            via = item.get("via")
            self._queue.append((float(item["due"]), int(item["seq"]), _MESSAGE,
                                (validate_topic(item["topic"]), _bytes_value(item),
                                 None if via is None else validate_filter(via))))
            self._queued_messages += 1
        heapq.heapify(self._queue)
        seen = doc.get("seen") or {}
        if not isinstance(seen, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in seen.items()):
            raise RestoreError("corrupt snapshot: 'seen' must map topics to digests")
        self._last_seen = dict(seen)
        loop = doc["loop"]
        self._seq = int(loop["next_seq"])
        self._next_timer_id = int(loop["next_timer_id"])
        self.events_run = int(loop.get("events_run", 0))
        self.cpu_time = float(loop.get("cpu_time", 0.0))


def _bytes_field(data: bytes) -> dict:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {"b64": base64.b64encode(data).decode("ascii")}


def _bytes_value(item: dict) -> bytes:
    if "text" in item:
        return item["text"].encode("utf-8")
    import base64

    return base64.b64decode(item["b64"].encode("ascii"), validate=True)
