"""``thingssim sim SCENARIO --dashboard``: the Fleet view of a simulation while it runs.

The simulation runs on the caller's thread (the CLI's main thread); the dashboard's
uvicorn server on a thread of its own (:class:`ServerThread`).  Nothing is added to the
simulated network: :class:`SimFeed` listens, in process, to the events of the World's own
Dispatcher (engines, programs, and the console lines and resource reports it already
receives: ``program-console`` and ``resource-report``), and reads the scenario's action
rows and faults after each progress step.  So the run's CSVs are the same bytes with and
without the dashboard.

The hand-over between the threads is one lock around the pure :class:`~.state.Fleet`:
the simulation's thread changes it under the lock, the server reads its deltas under
the same lock, and a change wakes the page's event streams through
``loop.call_soon_threadsafe`` (at most one wake-up pending at a time).  Samples, actions
and the page's clock are in simulated seconds.

The page is read-only: a deterministic simulation takes no actions from outside (they
go in the scenario's ``[[actions]]``); every action route answers 409 ``read_only``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from runtime import protocol as p
from runtime.transport import Message

from .live import ActionError
from .state import Fleet

log = logging.getLogger(__name__)

READ_ONLY = ("this dashboard follows a running simulation and is read-only: a "
             "deterministic simulation takes no actions from outside (put them in the "
             "scenario's [[actions]])")

#: the Live methods the HTTP layer calls for actions, files and applications
_ACTIONS = ("run", "migrate", "spawn", "program_action", "submit", "apps_status",
            "app_action", "list_files", "read_file", "write_file", "remove", "mkdir")

#: simulated seconds between two looks at the world (a progress step)
STEP_S = 0.1


def steps_for(duration: float) -> int:
    """Progress steps for a run of ``duration`` simulated seconds (one per ``STEP_S``)."""
    return max(100, min(200_000, math.ceil(duration / STEP_S)))


class SimFeed:
    """Feeds a :class:`Fleet` from a running World, under :attr:`lock`.

    ``attach(world)`` is the scenario's ``on_world`` hook; ``step(now)`` its
    ``on_progress``; ``finish()`` marks the end.  A failure in here is logged once and the
    feed stops: it never reaches the simulation.
    """

    def __init__(self, name: str, duration: float, *, seed: int,
                 out: Optional[Path] = None, realtime: Optional[float] = None) -> None:
        self.lock = threading.Lock()
        self.world: Any = None
        self.fleet = Fleet(now=self._now)
        self.name, self.duration, self.seed, self.out = name, duration, seed, out
        self.realtime = realtime
        self.broken: Optional[str] = None
        self._started: Optional[float] = None
        self._actions_seen = 0
        self._faults_seen = 0
        self._pending: list[tuple[dict, dict]] = []  # (scenario action row, record)
        self.info: dict = {"name": name, "seed": seed, "t": 0.0, "duration": duration,
                           "wall_s": 0.0, "speed": None, "done": False, "error": None,
                           "out": None if out is None else str(out), "results": False,
                           "realtime": realtime}
        self.fleet.set_sim(self.info)

    def _now(self) -> float:
        return self.world.clock.now() if self.world is not None else 0.0

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def callback(*args: Any, **kwargs: Any) -> None:
            if self.broken is not None:
                return
            try:
                with self.lock:
                    fn(*args, **kwargs)
            except Exception:  # the dashboard's bug must not change the simulation
                self.broken = traceback.format_exc()
                log.error("the dashboard stopped following the simulation:\n%s",
                          self.broken)
        return callback

    # ---------------------------------------------------------------- hooks
    def attach(self, world: Any) -> None:
        """Follow ``world``'s dispatcher (``Scenario.run(on_world=...)``)."""
        self.world = world
        self._started = time.perf_counter()
        d, fleet = world.dispatcher, self.fleet
        for event in ("engine-join", "engine-registry-update", "engine-dead"):
            d.on(event, self._guard(fleet.engine_changed))
        for event in ("program-join", "program-monitor-update"):
            d.on(event, self._guard(fleet.program_changed))
        d.on("program-console", self._guard(lambda _handle, m: fleet.on_console(m)))
        d.on("resource-report", self._guard(lambda _handle, m: fleet.on_resource(m)))
        self._guard(self._poll)()

    def step(self, now: float) -> None:
        """After each progress step: the scenario's actions and faults, the clock; then
        let the server's thread run (and, with ``realtime``, wait for the wall clock)."""
        self._guard(self._poll)()
        if self.realtime and self._started is not None:
            ahead = self._started + now / self.realtime - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        time.sleep(0)  # give the server's thread the interpreter

    def finish(self, *, error: Optional[str] = None, results: bool = False) -> None:
        self._guard(self._poll)()
        self._guard(self._set_info)(done=True, error=error, results=results)

    # ---------------------------------------------------------------- reading the world
    def _set_info(self, **changes: Any) -> None:
        self.info.update(changes)
        self.fleet.set_sim(self.info)

    def _poll(self) -> None:
        w, fleet = self.world, self.fleet
        if w is None:
            return
        for row in w.actions[self._actions_seen:]:
            record = fleet.action_started(row["action"], program=row["program"],
                                          target=row["target"])
            record["started"] = row["time"]
            self._pending.append((row, record))
        self._actions_seen = len(w.actions)
        still = []
        for row, record in self._pending:
            if row["done"] is None:
                still.append((row, record))
                continue
            if row["ok"]:
                fleet.action_finished(record, self._result(row))
            else:
                fleet.action_finished(record, error={"code": "failed",
                                                     "message": str(row["result"])})
            record["ended"] = row["done"]
        self._pending = still
        for fault in w.faults[self._faults_seen:]:
            target = fault["target"]
            fleet.on_engine_console(Message(f"{target}/console", p.encode(
                [f"fault at t = {fault['time']:g} s: {fault['fault']} {target}"]), 0, False))
            fleet.logs.last()["t"] = round(fault["time"], 3)  # when it happened
        self._faults_seen = len(w.faults)
        wall = time.perf_counter() - (self._started or time.perf_counter())
        t = w.clock.now()
        self._set_info(t=round(t, 3), wall_s=round(wall, 3),
                       speed=round(t / wall, 2) if wall > 0 else None)

    def _result(self, row: dict) -> Any:
        """A finished action's result as the page shows it: a migration with its phases
        (from the engines' own records, as in migrations.csv)."""
        if row["action"] != "migrate":
            return row["result"]
        w, found = self.world, None
        for engine in [b.engine for b in w.boards.values()] + list(w.retired_engines):
            for m in engine.migrations:
                if (m.get("code_name") == row["program"] and m.get("target") == row["target"]
                        and m.get("started", -1) >= row["time"] - 1e-9
                        and (found is None or m["started"] < found["started"])):
                    found = m
        if found is None:
            return row["result"]
        keys = ("source", "snapshot_s", "snapshot_bytes", "transfer_s", "restore_s",
                "commit_s", "total_s")
        return {"engine": row["result"], "migration": {k: found.get(k) for k in keys}}


class SimLive:
    """What the HTTP layer holds instead of a :class:`~.live.Live`: the fleet, its lock,
    and actions that all answer 409 ``read_only``."""

    read_only = True
    scheduler_id = None
    gfs_id = None

    def __init__(self, feed: SimFeed) -> None:
        self.feed = feed
        self.fleet = feed.fleet
        self.lock = feed.lock
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._notify: Optional[Callable[[], None]] = None
        self._waking = False

    def bind(self, notify: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        """Wake the streams (``notify``, on ``loop``) after a change on any thread."""
        self._notify, self._loop = notify, loop
        self.fleet.on_change = self._changed

    def _changed(self) -> None:
        if self._waking or self._loop is None:
            return
        self._waking = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the server has stopped
            pass

    def _wake(self) -> None:
        self._waking = False
        if self._notify is not None:
            self._notify()

    def session(self) -> dict:
        with self.lock:
            return dict(self.feed.info)

    def close(self) -> None:
        self._loop = None

    def __getattr__(self, name: str) -> Any:
        if name in _ACTIONS:
            async def refused(*args: Any, **kwargs: Any) -> Any:
                raise ActionError(409, "read_only", READ_ONLY)
            return refused
        raise AttributeError(name)


class ServerThread:
    """The dashboard's uvicorn server on a thread of its own, on a socket bound here (so
    a port in use is an error before the simulation starts, and port 0 works)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8080) -> None:
        import uvicorn

        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=1, proxy_headers=False,
                                server_header=False)
        self.server = uvicorn.Server(config)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="thingssim-dashboard",
                                       daemon=True)

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    def start(self, timeout: float = 10.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start: {self.error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        hub = getattr(getattr(self.app, "state", None), "hub", None)
        loop = self.loop
        if loop is not None and hub is not None:
            try:
                loop.call_soon_threadsafe(hub.close)
            except RuntimeError:
                pass
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()


def start(name: str, duration: float, *, seed: int, out: Optional[Path] = None,
          host: str = "127.0.0.1", port: int = 8080,
          realtime: Optional[float] = None) -> tuple[SimFeed, ServerThread]:
    """A feed for one run and the dashboard serving it (and ``out``'s results once the
    run has written them), started."""
    from .app import create_app
    from .auth import Auth

    feed = SimFeed(name, duration, seed=seed, out=out, realtime=realtime)
    live = SimLive(feed)

    async def factory() -> SimLive:
        return live

    app = create_app(factory, results=out, auth=Auth(), title=f"{name} (simulation)")
    server = ServerThread(app, host, port)
    return feed, server.start()


__all__ = ["READ_ONLY", "ServerThread", "SimFeed", "SimLive", "start", "steps_for"]
