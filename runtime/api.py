"""The ``things`` object: the whole API a program sees.

It is a thin facade over the program's :class:`~runtime.program.ProgramHost`; programs
reach it as the global ``things`` or with ``import things``.  ``print`` and
``__import__`` in the program's private builtins are methods of this object too, so the
snapshot encoder can name all of them by import path.
"""

from __future__ import annotations

import builtins
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .gfs.client import FsClient
    from .program import ProgramHost


class ProgramExit(BaseException):
    """Raised by ``things.exit()``; a BaseException so ``except Exception`` won't swallow it."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        self.code = code


class Things:
    """Timers, pub/sub, the program clock and identity (times in seconds)."""

    __slots__ = ("_host",)

    def __init__(self, host: ProgramHost) -> None:
        self._host = host

    @property
    def code_name(self) -> str:
        return self._host.code_name

    @property
    def instance_id(self) -> str:
        return self._host.instance_id

    @property
    def fs(self) -> FsClient:
        """Files in the global file system (:mod:`runtime.gfs.client`)."""
        return self._host.fs

    def set_timeout(self, callback: Callable[..., Any], delay: float, *args: Any) -> int:
        """Call ``callback(*args)`` once, ``delay`` seconds from now."""
        return self._host.add_timer(callback, delay, None, args)

    def set_interval(self, callback: Callable[..., Any], period: float, *args: Any) -> int:
        """Call ``callback(*args)`` every ``period`` seconds (first call after one period)."""
        return self._host.add_timer(callback, period, period, args)

    def set_immediate(self, callback: Callable[..., Any], *args: Any) -> int:
        """Call ``callback(*args)`` on the next loop turn."""
        return self._host.add_timer(callback, 0.0, None, args)

    def clear_timer(self, timer_id: int) -> None:
        """Cancel a timer; unknown or already fired ids are ignored."""
        self._host.clear_timer(timer_id)

    def subscribe(self, topic: str, callback: Callable[[str, Any], Any]) -> None:
        """Call ``callback(topic, payload)`` for every message matching ``topic`` (+ and #)."""
        self._host.subscribe(topic, callback)

    def unsubscribe(self, topic: str, callback: Callable[[str, Any], Any] | None = None) -> None:
        """Remove one callback from ``topic``, or all of them when ``callback`` is None."""
        self._host.unsubscribe(topic, callback)

    def publish(self, topic: str, payload: Any, qos: int | None = None) -> None:
        """Publish a JSON-serialisable value or bytes.

        ``qos`` 1 asks the broker to acknowledge, and survives a dropped connection (a
        lossy link only delays messages of either QoS: TCP retransmits); None uses the
        engine's ``program_qos`` (default 0).  As
        in MQTT, a subscriber receives at the lower of this and its own subscription's
        QoS, which is its engine's ``program_qos``: for no loss end to end, set
        ``program_qos = 1`` on the receiving boards."""
        self._host.publish(topic, payload, qos)

    def now(self) -> float:
        """The program clock: the due time of the event being handled."""
        host = self._host
        return host._time if host._in_callback else host.program_time()

    def time(self) -> float:
        """Wall-clock time (seconds since the epoch) of the machine the program runs on
        now; the world's time in a simulation.  Unlike ``now()``, it does not stop while
        the program is paused or moving, and programs on different boards can compare it:
        what a source stamps and a sink subtracts to measure latency."""
        return self._host._clock.wall()

    def cpu_time(self) -> float:
        """CPU seconds this program's completed events cost, across migrations: measured
        on a real board, what the board's cost model charged in a simulation (so a
        simulated run repeats).  The running callback counts once it returns."""
        return self._host.cpu_time

    def exit(self, code: int = 0) -> None:
        """End the program after this callback."""
        raise ProgramExit(code)

    # -- hooks installed in the program's builtins ---------------------------------
    def _print(self, *args: Any, sep: str | None = " ", end: str | None = "\n",
               file: Any = None, flush: bool = False) -> None:
        if file is not None and file is not sys.stdout and file is not sys.stderr:
            builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
            return
        if sep is None:
            sep = " "
        self._host._console_hook(sep.join(map(str, args)) + ("\n" if end is None else end))

    def _import(self, name: str, globals: Any = None, locals: Any = None,
                fromlist: Any = (), level: int = 0) -> Any:
        if level == 0:
            if name == "things":
                return self
            own = self._host.modules.get(name)  # e.g. its own `random`
            if own is not None:
                return own
        return builtins.__import__(name, globals, locals, fromlist, level)

    def make_builtins(self) -> dict[str, Any]:
        """The program's private builtins: the real ones plus print, import and ``things``."""
        table = dict(builtins.__dict__)
        table["print"] = self._print
        table["__import__"] = self._import
        table["things"] = self
        return table
