"""``thingssim fs``: the global file system from a shell (the click commands are in cli.py).

Each command opens a :class:`~runtime.gfs.remote.GfsClient` on its own MQTT connection,
does one thing and prints it, for people (aligned columns, human sizes, local times) or,
with ``--json``, for programs.  Errors are one line, ``thingssim fs: /x: No such file or
directory``, and exit code 1.  The service's retained ``<id>/state`` is watched while a
command waits, so a stopped or dead service is reported at once, not after the timeout.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from runtime import protocol as p
from runtime.gfs.paths import normalize
from runtime.gfs.remote import GfsClient, connect
from runtime.gfs.server import parse_state, state_topic
from runtime.gfs.storage import Entry
from runtime.rpc import RemoteError, RequestTimeout
from runtime.transport import Message

#: what a command reports as one line (never a traceback)
USER_ERRORS = (OSError, RemoteError, RequestTimeout, ValueError, TypeError)


@dataclass
class Outcome:
    """What a command did: ``value`` for ``--json``, ``text`` for people (None: nothing
    to print, e.g. ``cat`` wrote the bytes itself)."""

    value: Any
    text: Optional[str]


@dataclass
class Options:
    url: str
    service: str = "gfs"
    as_program: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    tls: Optional[dict] = None
    timeout: float = 30.0
    retries: int = 1


# ---------------------------------------------------------------- running a command
async def open_client(options: Options) -> GfsClient:
    """A connected client that fails its pending requests once the service's retained
    state says it is not running."""
    client = await connect(options.url, service_id=options.service,
                           as_program=options.as_program, username=options.username,
                           password=options.password, tls=options.tls,
                           timeout=options.timeout, retries=options.retries)

    def on_state(message: Message) -> None:
        state = parse_state(message.payload)
        if state is None:
            return
        client.set_unavailable(
            None if state["status"] == "up" else f"the GFS service {options.service!r} is "
            f"not running (its state on the broker: {state['status']})")

    client.transport.subscribe(state_topic(options.service), on_state, qos=1)
    return client


def run(options: Options, action: Callable[[GfsClient], Awaitable[Outcome]]) -> Outcome:
    """Connect, run ``action``, disconnect (errors propagate: see :func:`describe`)."""
    async def go() -> Outcome:
        client = await open_client(options)
        try:
            return await action(client)
        finally:
            client.close()

    return asyncio.run(go())


def describe(exc: BaseException, options: Options) -> str:
    """One line for a user error."""
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror or exc}"
    if isinstance(exc, RequestTimeout):
        return (f"no answer from the GFS service {options.service!r} within "
                f"{exc.timeout:g} s (is `thingssim gfs --id {options.service}` running on "
                f"this broker?)")
    if isinstance(exc, RemoteError):
        return exc.message if exc.code == p.INTERNAL else f"{exc.code}: {exc.message}"
    return str(exc)


# ---------------------------------------------------------------- rendering
def human_size(size: int) -> str:
    """``532 B``, ``1.5 KiB``, ``20.0 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def local_time(mtime: float) -> str:
    """Local date and time for wall-clock mtimes; a simulated service's (seconds since
    its start) stay seconds."""
    if mtime < 1e8:
        return f"t={mtime:g} s"
    return datetime.datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M:%S")


def entry_name(entry: Entry) -> str:
    name = entry.path.rstrip("/").rpartition("/")[2] or "/"
    return name + "/" if entry.is_dir and name != "/" else name


def long_listing(entries: list[Entry]) -> str:
    """``ls -l``: kind, size, mtime, name, in aligned columns."""
    if not entries:
        return ""
    rows = [("dir" if e.is_dir else "file", "-" if e.is_dir else human_size(e.size),
             local_time(e.mtime), entry_name(e)) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{kind:<{widths[0]}}  {size:>{widths[1]}}  {when:<{widths[2]}}  {name}"
                     for kind, size, when, name in rows)


def stat_text(entry: Entry) -> str:
    size = f"{entry.size:,} bytes" + (f" ({human_size(entry.size)})"
                                      if entry.size >= 1024 else "")
    rows = [("path", entry.path), ("kind", "directory" if entry.is_dir else "file"),
            ("size", size), ("mtime", f"{local_time(entry.mtime)} ({entry.mtime})"),
            ("version", str(entry.version))]
    return "\n".join(f"{key + ':':<9}{value}" for key, value in rows)


# ---------------------------------------------------------------- the commands
async def ls(client: GfsClient, path: str, long: bool) -> Outcome:
    try:
        if long:
            entries = await client.list_entries(path)
            return Outcome([e.to_dict() for e in entries], long_listing(entries))
        names = await client.listdir(path)
        return Outcome(names, "\n".join(names))
    except NotADirectoryError:  # ls FILE shows the file
        entry = await client.stat(path)
        if long:
            return Outcome([entry.to_dict()], long_listing([entry]))
        return Outcome([entry_name(entry)], entry_name(entry))


async def stat(client: GfsClient, path: str) -> Outcome:
    entry = await client.stat(path)
    return Outcome(entry.to_dict(), stat_text(entry))


async def cat(client: GfsClient, path: str, as_json: bool) -> Outcome:
    """The file's bytes on stdout (``--json``: ``{path, size, content | content_b64}``)."""
    with tempfile.TemporaryFile() as spool:
        size = await client.read_file(path, into=spool)
        spool.seek(0)
        if as_json:
            import base64

            data = spool.read()
            try:
                body = {"content": data.decode("utf-8")}
            except UnicodeDecodeError:
                body = {"content_b64": base64.b64encode(data).decode("ascii")}
            return Outcome({"path": normalize(path), "size": size, **body}, None)
        out = sys.stdout.buffer
        shutil.copyfileobj(spool, out)
        out.flush()
    return Outcome(None, None)


async def get(client: GfsClient, remote: str, local: str) -> Outcome:
    """Copy a GFS file to a local file (``-``: stdout; a folder: the same name in it).
    The local file appears whole: it is written beside and renamed."""
    if local == "-":
        return await cat(client, remote, False)  # stdout holds the bytes, nothing else
    target = Path(local)
    if target.is_dir():
        target = target / (normalize(remote).rpartition("/")[2] or "root")
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w+b") as out:
            size = await client.read_file(remote, into=out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Outcome({"path": normalize(remote), "local": str(target), "size": size},
                   f"{normalize(remote)} -> {target} ({size:,} bytes)")


async def put(client: GfsClient, local: str, remote: str, mode: str) -> Outcome:
    """Copy a local file (``-``: stdin) to the GFS, read and sent piece by piece, as one
    atomic write (or append); a remote folder (or a path ending in ``/``) gets the same
    name in it."""
    view = normalize(remote)
    if local != "-":
        name = Path(local).name
        if remote.endswith("/"):
            view = f"{view.rstrip('/')}/{name}"
        else:
            try:
                if (await client.stat(view)).is_dir:
                    view = f"{view.rstrip('/')}/{name}"
            except FileNotFoundError:
                pass
    if local == "-":
        entry = await client.write_file(view, sys.stdin.buffer, mode)
    else:
        with open(local, "rb") as source:
            entry = await client.write_file(view, source, mode)
    verb = "appended to" if mode == "a" else "->"
    return Outcome(entry.to_dict(), f"{local} {verb} {entry.path} ({entry.size:,} bytes)")


async def rm(client: GfsClient, paths: tuple[str, ...], recursive: bool,
             errors: list[BaseException]) -> Outcome:
    """Remove files (directories too with ``recursive``); each error is kept in
    ``errors`` and the others are still removed, as rm does."""
    removed = []
    for path in paths:
        try:
            if recursive:
                await client.remove_tree(path)
            else:
                await client.remove(path)
            removed.append(normalize(path))
        except USER_ERRORS as exc:
            errors.append(exc)
    return Outcome({"removed": removed}, None)


async def mkdir(client: GfsClient, paths: tuple[str, ...], parents: bool,
                errors: list[BaseException]) -> Outcome:
    made = []
    for path in paths:
        try:
            made.append((await client.mkdir(path, parents=parents, exist_ok=parents))
                        .to_dict())
        except USER_ERRORS as exc:
            errors.append(exc)
    return Outcome(made, None)


async def mv(client: GfsClient, src: str, dst: str) -> Outcome:
    """``os.rename``: DST is the new name (a file replaces a file, a folder only an
    empty folder); nothing is moved *into* an existing folder."""
    views = normalize(src), normalize(dst)
    try:
        entry = await client.rename(*views)
    except OSError as exc:  # name both: the service's error names only the source
        raise OSError(exc.errno, exc.strerror, views[0], None, views[1]) from None
    return Outcome(entry.to_dict(), None)
