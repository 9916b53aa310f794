"""Talking to real workers: one-shot ``thingssim dispatch`` commands and ``thingssim shell``.

Both run a :class:`~runtime.dispatcher.Dispatcher` on the paho transport and an asyncio
loop; the shell keeps that loop in a background thread and hands each command to it.
"""

from __future__ import annotations

import asyncio
import cmd
import json
import os
import shlex
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from tabulate import tabulate

from runtime.dispatcher import Dispatcher, DispatcherError
from runtime.rpc import RemoteError, RequestTimeout
from runtime.userinput import read_text

#: errors a user can cause (shown as a message, never a traceback)
USER_ERRORS = (DispatcherError, RemoteError, RequestTimeout, ValueError, OSError)


async def connect(url: str, *, username: str | None = None, password: str | None = None,
                  tls: dict | None = None, discover: float = 0.7,
                  timeout: float = 30.0) -> Dispatcher:
    """A started Dispatcher that has had ``discover`` seconds to hear the engines."""
    from runtime.clock import AsyncioClock
    from runtime.mqtt import MqttTransport

    loop = asyncio.get_running_loop()
    client_id = f"dispatch-{uuid.uuid4().hex[:8]}"
    # a dispatcher never blocks its loop, so paho can run on it directly (no thread hop);
    # workers keep paho's thread, which answers pings even while a program is slow
    transport = MqttTransport(url, client_id=client_id, loop=loop, username=username,
                              password=password, tls=tls, io="asyncio")
    d = Dispatcher(transport, AsyncioClock(loop), {"id": client_id,
                                                   "request_timeout": timeout})
    d.start()
    await asyncio.sleep(discover)
    if not transport.connected:
        error = getattr(transport, "connect_error", None) or "no answer"
        d.kill()
        raise OSError(f"cannot connect to {url}: {error}")
    return d


def status_rows(d: Dispatcher) -> dict:
    return {
        "engines": [{"id": e.id, "status": e.status, "device": e.meta.get("device"),
                     "programs": len(e.programs)} for e in sorted(d.engines.values(),
                                                                  key=lambda e: e.id)],
        "programs": [{"id": p.instance_id, "code_name": p.code_name, "engine": p.engine,
                      "status": p.status} for p in sorted(d.programs.values(),
                                                          key=lambda p: p.instance_id)],
    }


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return tabulate([[row.get(c, "") for c in columns] for row in rows], headers=columns,
                    missingval="-")


class UsageError(ValueError):
    """A dispatch action with the wrong number of arguments (or an unknown action)."""


#: action -> (fewest arguments, most arguments or None, usage)
USAGE = {
    "run": (2, 3, "ENGINE FILE [CODE_NAME]"),
    "pause": (1, 1, "INSTANCE_ID"),
    "resume": (1, 1, "INSTANCE_ID"),
    "kill": (1, 1, "INSTANCE_ID"),
    "migrate": (2, 2, "INSTANCE_ID TARGET_ENGINE"),
    "spawn": (2, None, "INSTANCE_ID TARGET_ENGINE..."),
    "status": (0, 0, ""),
}


def check_args(action: str, args: list[str]) -> None:
    """Raise UsageError unless ``action`` is known and has as many arguments as it takes."""
    if action not in USAGE:
        raise UsageError(f"unknown action {action!r}: {', '.join(USAGE)}")
    fewest, most, usage = USAGE[action]
    if len(args) < fewest or (most is not None and len(args) > most):
        got = f"{len(args)} argument{'' if len(args) == 1 else 's'}" + \
            (f": {' '.join(args)}" if args else "")
        raise UsageError(f"usage: {action} {usage}".rstrip() + f" (got {got})")


def read_program(path: str | Path) -> str:
    """A program file's source; a ValueError naming the file if it cannot be read."""
    return read_text(path, "program file")


async def run_action(d: Dispatcher, action: str, args: list[str],
                     source: str | None = None) -> Any:
    """One dispatch action; returns its result (what :func:`render` prints).

    ``source``: the program for ``run`` when the caller has read it already.
    """
    check_args(action, args)
    if action == "status":
        return status_rows(d)
    if action == "run":
        path = Path(args[1])
        source = read_program(path) if source is None else source
        return await d.run_code(args[0], args[2] if len(args) > 2 else path.name, source)
    if action in ("pause", "resume", "kill"):
        return await getattr(d, f"{action}_code")(args[0])
    if action == "migrate":
        program = d.program(args[0])
        if program.engine is None:
            raise ValueError(f"{args[0]} is on no known engine")
        return await d.move_code(program.engine, args[1], program.code_name, args[0])
    program = d.program(args[0])  # spawn
    return await d.spawn_code(program.engine, args[1:], program.code_name, args[0])


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.4f} s"


def render(result: Any, action: str | None = None, args: list[str] | tuple = ()) -> str:
    """What a person reads for an action's result (``--json`` prints it as JSON)."""
    if isinstance(result, dict) and set(result) == {"engines", "programs"}:
        return f"engines:\n{format_table(result['engines'])}\n\nprograms:\n" \
               f"{format_table(result['programs'])}"
    if isinstance(result, dict) and isinstance(result.get("migration"), dict):
        m = result["migration"]
        size = m.get("snapshot_bytes")
        return (f"{result.get('id')} moved from {m.get('source')} to {result.get('engine')} "
                f"({result.get('status')}) in {_seconds(m.get('total_s'))}: snapshot "
                f"{_seconds(m.get('snapshot_s'))}"
                + (f" ({size:,} bytes)" if isinstance(size, int) else "")
                + f", transfer {_seconds(m.get('transfer_s'))}, restore "
                  f"{_seconds(m.get('restore_s'))}, commit {_seconds(m.get('commit_s'))}")
    if action == "run" and isinstance(result, dict) and "id" in result:
        return f"{result['id']} ({result.get('code_name')}) is {result.get('status')} on " \
               f"{result.get('engine')}"
    if isinstance(result, str) and action in ("pause", "resume", "kill") and args:
        return f"{args[0]}: {result}"
    if isinstance(result, list) and all(isinstance(row, dict) for row in result):
        return format_table(result)
    if isinstance(result, dict):
        return "\n".join(f"{k}: {v}" for k, v in result.items())
    return str(result)


class Shell(cmd.Cmd):
    """An interactive console over a Dispatcher (history and tab completion)."""

    intro = "thingssim shell: 'help' lists commands, Ctrl-D quits."
    prompt = "things> "

    def __init__(self, url: str, **connect_kwargs: Any) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.d: Dispatcher = self._wait(connect(url, **connect_kwargs))
        self.history = Path(os.path.expanduser("~/.thingssim_history"))

    # -- plumbing
    def _wait(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()
        return self._wait(call())

    def _do(self, action: str, line: str) -> None:
        try:
            args = shlex.split(line)
            print(render(self._wait(run_action(self.d, action, args)), action, args))
        except USER_ERRORS as exc:
            print(f"error: {exc}")

    def preloop(self) -> None:
        try:
            import readline

            if self.history.exists():
                readline.read_history_file(self.history)
        except (ImportError, OSError):
            pass

    def postloop(self) -> None:
        try:
            import readline

            readline.write_history_file(self.history)
        except (ImportError, OSError):
            pass
        self._in_loop(self.d.kill)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _ids(self, text: str) -> list[str]:
        names = self._in_loop(lambda: list(self.d.engines) + list(self.d.programs))
        return [n for n in names if n.startswith(text)]

    completedefault = lambda self, text, *_: self._ids(text)  # noqa: E731

    # -- commands
    def do_engines(self, line: str) -> None:
        """engines: list the engines and their status"""
        print(format_table(self._in_loop(lambda: status_rows(self.d))["engines"]))

    def do_programs(self, line: str) -> None:
        """programs: list the programs and where they run"""
        print(format_table(self._in_loop(lambda: status_rows(self.d))["programs"]))

    def do_run(self, line: str) -> None:
        """run ENGINE FILE [CODE_NAME]: start a program file on an engine"""
        self._do("run", line)

    def do_migrate(self, line: str) -> None:
        """migrate INSTANCE_ID TARGET_ENGINE: move a running program"""
        self._do("migrate", line)

    def do_spawn(self, line: str) -> None:
        """spawn INSTANCE_ID TARGET_ENGINE...: copy a program to other engines"""
        self._do("spawn", line)

    def do_pause(self, line: str) -> None:
        """pause INSTANCE_ID"""
        self._do("pause", line)

    def do_resume(self, line: str) -> None:
        """resume INSTANCE_ID"""
        self._do("resume", line)

    def do_kill(self, line: str) -> None:
        """kill INSTANCE_ID"""
        self._do("kill", line)

    def do_tail(self, line: str) -> None:
        """tail INSTANCE_ID [N]: the last N console lines of a program (default 20), of
        those printed since this shell connected (engines keep no console history)"""
        parts = shlex.split(line)
        if not parts:
            print("usage: tail INSTANCE_ID [N]")
            return
        count = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 20
        try:
            lines = self._in_loop(lambda: list(self.d.program(parts[0]).console)[-count:])
        except DispatcherError as exc:
            print(f"error: {exc}")
            return
        print("\n".join(lines) if lines else "(no console output yet)")

    def do_status(self, line: str) -> None:
        """status: engines and programs"""
        print(render(self._in_loop(lambda: status_rows(self.d))))

    def do_json(self, line: str) -> None:
        """json: engines and programs as JSON"""
        print(json.dumps(self._in_loop(lambda: status_rows(self.d)), indent=2))

    def do_quit(self, line: str) -> bool:
        """quit: leave the shell"""
        return True

    do_EOF = do_quit

    def emptyline(self) -> None:
        return None
