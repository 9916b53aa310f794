"""What the dashboard does to a live fleet, through the same APIs as the CLI.

:class:`Live` holds a started :class:`~runtime.dispatcher.Dispatcher` (any transport and
clock: Mosquitto in production, the in-memory broker in unit tests), the
:class:`~runtime.scheduler.client.SchedulerClient` and
:class:`~runtime.gfs.remote.GfsClient` on its transport, and a
:class:`~thingssim.dashboard.state.Fleet` that follows it.  Every action is recorded in
the fleet (pending, then its outcome), so every open page sees it end, and raises
:class:`ActionError` with an HTTP status for the HTTP layer: 400 for bad input, 404 for an
unknown engine, program or file, 502 with the engine's (or service's) own ``code`` and
``message`` when it refused, 504 when nobody answered.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any, Optional

from runtime import protocol as p
from runtime.dispatcher import Dispatcher, DispatcherError, UnknownEngine, UnknownProgram
from runtime.rpc import RemoteError, RequestTimeout

from .state import Fleet

#: how long an application's status may take before the page is told nobody answered
STATUS_TIMEOUT = 5.0


class ActionError(Exception):
    """An action refused or failed: ``status`` (HTTP), ``code`` and ``message`` (shown)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def _from_exception(exc: BaseException) -> ActionError:
    """The error as the page shows it; a remote error keeps the engine's code and text."""
    if isinstance(exc, ActionError):
        return exc
    if isinstance(exc, (UnknownEngine, UnknownProgram)):
        return ActionError(404, "not_found", str(exc))
    if isinstance(exc, RemoteError):
        return ActionError(502, exc.code, exc.message)
    if isinstance(exc, RequestTimeout):
        return ActionError(504, "timeout", str(exc))
    if isinstance(exc, FileNotFoundError):
        return ActionError(404, "not_found", _os_message(exc))
    if isinstance(exc, PermissionError):
        return ActionError(403, "forbidden", _os_message(exc))
    if isinstance(exc, OSError):
        return ActionError(400, "bad_request", _os_message(exc))
    if isinstance(exc, (DispatcherError, ValueError, TypeError)):
        return ActionError(400, "bad_request", str(exc))
    return ActionError(500, "internal", f"{type(exc).__name__}: {exc}")


def _os_message(exc: OSError) -> str:
    if exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror or exc}"
    return str(exc)


def check_name(kind: str, value: Any) -> str:
    """A code name, engine or instance id usable as a topic level, or a 400."""
    try:
        return p.check_name(kind, value)
    except p.ProtocolError as exc:
        raise ActionError(400, "bad_request", exc.message) from None


class Live:
    """A fleet's actions and views: ``dispatcher`` must be started (see :func:`connect`).

    ``scheduler_id`` / ``gfs_id``: the services the Applications and Files views talk to.
    """

    def __init__(self, dispatcher: Dispatcher, fleet: Optional[Fleet] = None, *,
                 scheduler_id: str = "things-scheduler", gfs_id: str = "gfs",
                 timeout: float = 30.0) -> None:
        from runtime.gfs.remote import GfsClient
        from runtime.scheduler.client import SchedulerClient

        self.d = dispatcher
        self.fleet = fleet or Fleet()
        self.scheduler_id = scheduler_id
        self.gfs_id = gfs_id
        transport, clock = dispatcher.transport, dispatcher.clock
        suffix = uuid.uuid4().hex[:8]
        self.scheduler = SchedulerClient(transport, clock, scheduler_id, timeout,
                                         client_id=f"{dispatcher.id}-sched-{suffix}")
        # one resend, as `thingssim fs` does: a request lost while the service (re)starts
        self.gfs = GfsClient(transport, clock, gfs_id, timeout,
                             client_id=f"{dispatcher.id}-gfs-{suffix}", retries=1)
        self.gfs_state: Optional[str] = None
        self.fleet.attach(dispatcher, scheduler_id)
        transport.subscribe(f"{gfs_id}/state", self._on_gfs_state, qos=1)

    def _on_gfs_state(self, message: Any) -> None:
        """The file service's retained state: requests fail at once while it is down."""
        from runtime.gfs.server import parse_state

        state = parse_state(message.payload)
        if state is None:
            return
        self.gfs_state = state["status"]
        self.gfs.set_unavailable(
            None if state["status"] == "up" else f"the GFS service {self.gfs_id!r} is not "
            f"running (its state on the broker: {state['status']})")

    def close(self) -> None:
        self.scheduler.close("dashboard stopped")
        self.gfs.close("dashboard stopped")
        self.d.kill()

    # ================================================================ program actions
    async def _act(self, kind: str, args: dict, start: Any) -> dict:
        """Record an action, send it (``start()`` returns the dispatcher's future), and
        record its outcome; the finished record is returned, or ActionError raised
        (checked before sending: nothing recorded; after: recorded as failed)."""
        try:
            future = start()
        except Exception as exc:  # noqa: BLE001 - becomes the page's error
            raise _from_exception(exc) from None
        record = self.fleet.action_started(kind, **args)
        try:
            result = await future
        except Exception as exc:  # noqa: BLE001
            error = _from_exception(exc)
            self.fleet.action_finished(record, error={"code": error.code,
                                                      "message": error.message,
                                                      "status": error.status})
            raise error from None
        return self.fleet.action_finished(record, result=_jsonable(result))

    async def run(self, engine: str, source: Optional[str] = None,
                  code_name: Optional[str] = None, gfs_path: Optional[str] = None) -> dict:
        """Start a program on ``engine``: its ``source``, or the file ``gfs_path``."""
        engine = check_name("engine", engine)
        self._engine(engine)
        if (source is None) == (gfs_path is None):
            raise ActionError(400, "bad_request", "give the program's source or a gfs_path")
        if gfs_path is not None:
            data = await self._gfs(self.gfs.read_file(str(gfs_path)))
            try:
                source = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ActionError(400, "bad_request",
                                  f"{gfs_path}: not UTF-8 text, not a program") from None
        if not isinstance(source, str) or not source.strip():
            raise ActionError(400, "bad_request", "the program is empty")
        name = code_name or (posixpath.basename(str(gfs_path)) if gfs_path else "program.py")
        name = check_name("code name", name)
        return await self._act("run", {"engine": engine, "code_name": name,
                                       **({"gfs_path": gfs_path} if gfs_path else {})},
                               lambda: self.d.run_code(engine, name, source))

    async def program_action(self, iid: str, op: str) -> dict:
        """``pause``, ``resume`` or ``kill`` a program."""
        if op not in ("pause", "resume", "kill"):
            raise ActionError(404, "not_found", f"unknown program action {op!r}")
        program = self._program(iid)
        return await self._act(op, {"program": iid, "engine": program.engine},
                               lambda: getattr(self.d, f"{op}_code")(iid))

    async def migrate(self, iid: str, target: str) -> dict:
        program = self._program(iid)
        target = check_name("target engine", target)
        self._engine(target)
        if program.engine is None:
            raise ActionError(400, "bad_request", f"{iid} is on no known engine")
        if program.engine == target:
            raise ActionError(400, "bad_request", f"{iid} already runs on {target}")
        source = program.engine
        return await self._act(
            "migrate", {"program": iid, "engine": source, "target": target},
            lambda: self.d.move_code(source, target, program.code_name, iid))

    async def spawn(self, iid: str, targets: Any) -> dict:
        program = self._program(iid)
        if not isinstance(targets, list) or not targets:
            raise ActionError(400, "bad_request", "targets must be a non-empty list of engines")
        targets = [check_name("target engine", t) for t in targets]
        for target in targets:
            self._engine(target)
        if program.engine is None:
            raise ActionError(400, "bad_request", f"{iid} is on no known engine")
        return await self._act(
            "spawn", {"program": iid, "engine": program.engine, "targets": targets},
            lambda: self.d.spawn_code(program.engine, targets, program.code_name, iid))

    def _engine(self, engine_id: str) -> Any:
        try:
            return self.d.engine(engine_id)
        except UnknownEngine as exc:
            raise ActionError(404, "not_found", str(exc)) from None

    def _program(self, iid: Any) -> Any:
        iid = check_name("instance id", iid)
        try:
            return self.d.program(iid)
        except UnknownProgram as exc:
            raise ActionError(404, "not_found", str(exc)) from None

    # ================================================================ applications
    async def apps_status(self) -> dict:
        try:
            return await self.scheduler.request("status", {}, STATUS_TIMEOUT)
        except RequestTimeout:
            raise ActionError(504, "timeout", f"no answer from the scheduler "
                              f"{self.scheduler_id!r} within {STATUS_TIMEOUT:g} s (is "
                              f"`thingssim scheduler` running on this broker?)") from None
        except Exception as exc:  # noqa: BLE001
            raise _from_exception(exc) from None

    async def submit(self, text: str, filename: str = "application.toml") -> dict:
        """Submit an application document (TOML, or JSON when it starts with ``{``);
        programs inline (``code``): the dashboard reads no files of its own host."""
        from runtime.scheduler.appfile import _toml_loads, application_from_dict
        from runtime.scheduler.model import SchedulerError

        as_json = filename.endswith(".json") or text.lstrip().startswith("{")
        try:
            doc = json.loads(text) if as_json else _toml_loads(text)
        except ValueError as exc:
            raise ActionError(400, "bad_request", f"{filename}: not valid "
                              f"{'JSON' if as_json else 'TOML'}: {exc}") from None
        except SchedulerError as exc:
            raise ActionError(400, "bad_request", str(exc)) from None
        try:
            app = application_from_dict(doc, base=None, origin=filename)
        except SchedulerError as exc:
            raise ActionError(400, "bad_request", str(exc)) from None
        return await self._act("submit", {"application": app.name},
                               lambda: self.scheduler.submit(app))

    async def app_action(self, token: str, op: str) -> dict:
        if op not in ("pause", "resume", "kill"):
            raise ActionError(404, "not_found", f"unknown application action {op!r}")
        token = check_name("token", token)
        return await self._act(f"{op} application", {"token": token},
                               lambda: getattr(self.scheduler, op)(token))

    # ================================================================ files
    async def _gfs(self, future: Any) -> Any:
        try:
            return await future
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, RequestTimeout):
                raise ActionError(504, "timeout", f"no answer from the GFS service "
                                  f"{self.gfs_id!r} (is `thingssim gfs` running on this "
                                  f"broker?)") from None
            if isinstance(exc, RemoteError) and exc.code == p.INTERNAL:
                raise ActionError(503, "unavailable", exc.message) from None
            raise _from_exception(exc) from None

    async def list_files(self, path: str) -> list[dict]:
        try:
            entries = await self._gfs(self.gfs.list_entries(path))
        except ActionError as exc:
            if exc.status == 400 and "Not a directory" in exc.message:
                entries = [await self._gfs(self.gfs.stat(path))]
            else:
                raise
        return sorted(({"path": e.path, "name": posixpath.basename(e.path) or "/",
                        "kind": e.kind, "size": e.size, "mtime": e.mtime,
                        "version": e.version} for e in entries),
                      key=lambda e: (e["kind"] != "dir", e["name"]))

    async def read_file(self, path: str, into: Any) -> None:
        await self._gfs(self.gfs.read_file(path, into))

    async def write_file(self, path: str, data: bytes) -> dict:
        if not path or path.endswith("/"):
            raise ActionError(400, "bad_request", f"{path!r}: give a file name")
        await self._gfs(self.gfs.write_file(path, data))
        return {"path": path, "size": len(data)}

    async def mkdir(self, path: str) -> dict:
        await self._gfs(self.gfs.mkdir(path, parents=True, exist_ok=True))
        return {"path": path}

    async def remove(self, path: str) -> dict:
        await self._gfs(self.gfs.remove_tree(path))
        return {"path": path}


def _jsonable(value: Any) -> Any:
    """A reply as JSON can carry it (tuples as lists, anything else as text)."""
    return json.loads(json.dumps(value, default=str))
