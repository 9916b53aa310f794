"""A private, throwaway PostgreSQL server for tests (``pg_server``), one per test session.

``initdb`` into a temporary directory, then ``pg_ctl start`` listening on a Unix socket in
that directory only (no TCP), with fsync off (nothing in it must survive).  PostgreSQL
refuses to run as root, so as root the server runs as ``postgres`` (or ``nobody``), and
owns the directory.  ``pg_server.new_schema()`` names a fresh schema for each storage, so
tests never see each other's trees.  Without the binaries or psycopg, tests using the
fixture skip with one line saying what to install.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

__all__ = ["PgServer", "find_pg_bindir", "pg_server", "postgres_reason"]

NEEDS = "needs PostgreSQL (apt-get install postgresql) and psycopg"


def find_pg_bindir() -> Optional[Path]:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, else Debian's newest
    ``/usr/lib/postgresql/<major>/bin`` (Debian keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


def postgres_reason() -> Optional[str]:
    """Why the PostgreSQL tests cannot run here, or None."""
    missing = []
    if find_pg_bindir() is None:
        missing.append("no initdb on PATH or in /usr/lib/postgresql/*/bin")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append("no psycopg (pip install 'psycopg[binary]')")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        missing.append("running as root without runuser to start the server as another user")
    return f"{NEEDS}: {'; '.join(missing)}" if missing else None


def _free_port() -> int:
    """A port nobody listens on (it also names the socket file and keys shared memory)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server: ``dsn`` reaches its ``postgres`` database as superuser ``gfs``."""

    dsn: str
    _names: Iterator[int] = field(default_factory=itertools.count)

    def new_schema(self) -> str:
        return f"t{next(self._names)}"


def _start(base: Path, bindir: Path, as_user: list[str]) -> PgServer:
    data, port = base / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = base / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}"
                               f"{done.stderr}{tail}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "gfs", "-A", "trust", "-E", "UTF8",
        "--no-locale", "--no-sync")
    options = (f"-k {base} -c listen_addresses='' -p {port} -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
        "-t", "60", "-o", options, "start")
    return PgServer(f"host={base} port={port} user=gfs dbname=postgres")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (started on first use, stopped at the end)."""
    reason = postgres_reason()
    if reason:
        pytest.skip(reason)
    bindir = find_pg_bindir()
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="gfs-pg-"))  # short: a socket path has ~100 bytes
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        shutil.chown(base, user)
        as_user = ["runuser", "-u", user, "--"]
    try:
        server = _start(base, bindir, as_user)
        yield server
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m",
                        "immediate", "stop"], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=60)
        shutil.rmtree(base, ignore_errors=True)
