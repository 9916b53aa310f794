"""The GFS service on a real broker, in real time: what ``thingssim gfs`` runs.

    python -m runtime.gfs.server --broker mqtt://host:1883 --db /var/lib/thingssim/gfs.db
    thingssim gfs --broker mqtt://host:1883 --db gfs.db          # the same, full install

A board can run it with the runtime alone (standard library + paho-mqtt; psycopg only
for ``--postgres``).  Like the worker (:mod:`runtime.worker`): one asyncio loop runs the
sans-IO :class:`~runtime.gfs.service.GfsService`, paho's thread keeps the connection
alive while a large commit holds the loop, SIGINT/SIGTERM stop it cleanly, and a bad
option (a broker URL, a grant, TLS files, an unusable database) is one line with exit
code 1 (2 for options argparse/click refuse) before anything connects.

Liveness: ``<id>/state`` is retained, ``{"id", "status": "up", "storage"}`` once
connected and ``"stopped"`` on a clean exit; the last will says ``"dead"``.  Clients
(``thingssim fs``) read it to say "not running" at once instead of waiting for a timeout.

Time: the service stamps ``mtime`` with its clock's ``now()``.  The asyncio clock's
``now()`` is the loop's monotonic time (it restarts at each boot), so the server gives
the service :class:`WallClock`: the same loop, but ``now()`` in seconds since the epoch,
so modification times mean something to people and survive restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import protocol as p
from ..clock import AsyncioClock
from ..transport import Message
from .paths import Grant, Namespaces
from .service import DEFAULT_ID, GfsService
from .storage import Storage

log = logging.getLogger("thingssim.gfs")

#: the worker's ``tls`` keys as this command's options
_TLS_OPTIONS = {"ca_certs": "--ca-certs", "certfile": "--certfile", "keyfile": "--keyfile",
                "insecure": "--tls-insecure"}
#: how often abandoned uploads (staged, never committed) are looked for
SWEEP_S = 3600.0


class ConfigError(ValueError):
    """Options that cannot work, with the reason (one line)."""


def state_topic(service_id: str = DEFAULT_ID) -> str:
    """The retained ``{"id", "status", ...}`` of a service (its will says ``dead``)."""
    return f"{service_id}/state"


class WallClock(AsyncioClock):
    """The asyncio clock with ``now()`` in wall-clock seconds since the epoch (see the
    module docstring); timers still run on the loop's monotonic clock."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], Any]) -> Any:
        return self.loop.call_later(max(0.0, when - time.time()), callback)


@dataclass
class ServerConfig:
    broker: str
    db: Optional[str] = None  # an SQLite file (created if missing)
    postgres: Optional[str] = None  # or a PostgreSQL DSN
    id: str = DEFAULT_ID
    grants: list[str] = field(default_factory=list)  # PROGRAMS:TARGET[:MOUNT][:MODE]
    username: Optional[str] = None
    password: Optional[str] = None
    tls: Optional[dict] = None  # ca_certs, certfile, keyfile, insecure (as the worker's)
    keepalive: float = 10.0

    def check(self) -> list[Grant]:
        """The parsed grants, once every option is known to be usable; else ConfigError."""
        from ..mqtt import parse_broker_url
        from ..worker import ConfigError as WorkerConfigError
        from ..worker import _check_tls

        try:
            p.check_name("--id", self.id)
        except p.ProtocolError as exc:
            raise ConfigError(exc.message) from None
        try:
            parse_broker_url(self.broker)
        except ValueError as exc:
            raise ConfigError(f"--broker: {exc}") from None
        if (self.db is None) == (self.postgres is None):
            raise ConfigError("give --db PATH (SQLite) or --postgres DSN, one of them")
        if not self.keepalive > 0:
            raise ConfigError(f"--keepalive must be a positive number, not {self.keepalive}")
        grants = []
        for spec in self.grants:
            try:
                grants.append(Grant.parse(spec))
            except (ValueError, OSError) as exc:
                raise ConfigError(f"--grant {spec}: {exc}") from None
        if self.tls is not None:
            def fail(message: str) -> ConfigError:
                for key, option in _TLS_OPTIONS.items():
                    message = message.replace(f"tls.{key}", option)
                return ConfigError(message)
            try:
                _check_tls(fail, self.tls)
            except WorkerConfigError as exc:  # pragma: no cover - fail() makes ours
                raise ConfigError(str(exc)) from None
        return grants

    def describe_storage(self) -> str:
        if self.postgres is not None:
            return "postgres"  # never the DSN: it may hold a password
        return f"sqlite:{Path(str(self.db)).resolve()}"


def open_storage(config: ServerConfig) -> Storage:
    """The configured backend, opened (the SQLite file and its folder made if missing)."""
    if config.postgres is not None:
        from .postgres import PostgresStorage

        try:
            return PostgresStorage(config.postgres)
        except ImportError as exc:
            raise ConfigError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - psycopg's errors: one line for the user
            raise ConfigError(f"--postgres: cannot open the database "
                              f"({str(exc).strip().splitlines()[0] if str(exc) else exc})") \
                from None
    import sqlite3

    from .sqlite import SqliteStorage

    path = Path(str(config.db))
    try:
        if path.is_dir():
            raise ConfigError(f"--db {path}: is a directory, not a database file")
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStorage(path)
    except sqlite3.Error as exc:
        raise ConfigError(f"--db {path}: not a usable SQLite database ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"--db {path}: cannot use it ({exc.strerror or exc})") from None


async def serve(config: ServerConfig, stop: Optional[asyncio.Event] = None,
                storage: Optional[Storage] = None) -> int:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM); returns an exit code.  ConfigError
    for options that cannot work (checked before connecting)."""
    from ..mqtt import MqttTransport

    grants = config.check()
    storage = storage or open_storage(config)
    loop = asyncio.get_running_loop()
    clock = WallClock(loop)
    transport = MqttTransport(config.broker, client_id=config.id, loop=loop,
                              username=config.username, password=config.password,
                              tls=config.tls)
    service = GfsService(transport, clock, storage, service_id=config.id,
                         namespaces=Namespaces(grants))
    topic = state_topic(config.id)
    up = p.encode({"id": config.id, "status": "up", "storage": config.describe_storage(),
                   "pid": os.getpid()})

    flaps = [0, 0.0]  # connections lost within seconds of being made, when it was made

    def on_connection(connected: bool) -> None:
        if connected:
            flaps[1] = time.monotonic()
            transport.publish(topic, up, qos=1, retain=True)
            log.info("gfs %s serving %s on %s", config.id, config.describe_storage(),
                     transport.url)
            return
        log.warning("gfs %s lost the broker; reconnecting", config.id)
        flaps[0] = flaps[0] + 1 if time.monotonic() - flaps[1] < 2.0 else 0
        if flaps[0] == 3:  # the broker hands the client id to whoever connects last
            log.error("gfs %s keeps losing the broker right after connecting: is another "
                      "service with --id %s on this broker? (each takes the connection "
                      "from the other)", config.id, config.id)

    def sweep() -> None:
        dropped = storage.discard_uploads_before(clock.now() - service.upload_ttl)
        if dropped:
            log.info("gfs %s: discarded %d abandoned uploads", config.id, dropped)
        timers[0] = clock.call_later(SWEEP_S, sweep)

    from ..worker import stop_on_signals

    stop = stop_on_signals(loop, stop)
    try:
        service.start()  # the layout, old uploads dropped, the command topic subscribed
        timers = [clock.call_later(SWEEP_S, sweep)]
        transport.add_connection_listener(on_connection)
        transport.connect(will=Message(topic, p.encode({"id": config.id, "status": "dead"}),
                                       qos=1, retain=True), keepalive=config.keepalive)
        await stop.wait()
        log.info("gfs %s stopping (%d requests, %d errors, %d retries answered)", config.id,
                 service.requests, service.errors, service.duplicates)
        clock.cancel(timers[0])
        if transport.connected:
            transport.publish(topic, p.encode({"id": config.id, "status": "stopped"}),
                              qos=1, retain=True)
            await asyncio.sleep(0.2)  # let it leave
        transport.close()
    finally:
        storage.close()
    return 0


def tls_options(ca_certs: Optional[str], certfile: Optional[str], keyfile: Optional[str],
                insecure: bool) -> Optional[dict]:
    """The worker's ``tls`` entry from command-line options (None: no option given)."""
    tls = {k: v for k, v in (("ca_certs", ca_certs), ("certfile", certfile),
                             ("keyfile", keyfile)) if v}
    if insecure:
        tls["insecure"] = True
    return tls or None


def run(config: ServerConfig, verbose: bool = False) -> int:
    """Check, log, serve; print a user error in one line and return 1."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config.check()
        storage = open_storage(config)  # before connecting: a bad --db needs no broker
        return asyncio.run(serve(config, storage=storage))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.gfs.server",
                                     description="Run the thingssim global file system "
                                                 "service on an MQTT broker.")
    parser.add_argument("--broker", required=True, metavar="URL",
                        help="mqtt://host:1883 or mqtts://host:8883")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="SQLite file (created if missing)")
    where.add_argument("--postgres", metavar="DSN", help="a PostgreSQL database instead")
    parser.add_argument("--id", default=DEFAULT_ID, help="service id: its topic is <id>/cmd")
    parser.add_argument("--grant", action="append", default=[],
                        metavar="PROGRAMS:TARGET[:MOUNT][:MODE]",
                        help="give programs matching a glob a folder (repeatable)")
    parser.add_argument("-u", "--username")
    parser.add_argument("-p", "--password", default=os.environ.get("THINGSSIM_PASSWORD"),
                        help="broker password (or THINGSSIM_PASSWORD)")
    parser.add_argument("--ca-certs", metavar="PEM")
    parser.add_argument("--certfile", metavar="PEM")
    parser.add_argument("--keyfile", metavar="PEM")
    parser.add_argument("--tls-insecure", action="store_true",
                        help="do not check the broker's host name")
    parser.add_argument("--keepalive", type=float, default=10.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    config = ServerConfig(broker=args.broker if "://" in args.broker
                          else f"mqtt://{args.broker}", db=args.db, postgres=args.postgres,
                          id=args.id, grants=args.grant, username=args.username,
                          password=args.password, keepalive=args.keepalive,
                          tls=tls_options(args.ca_certs, args.certfile, args.keyfile,
                                          args.tls_insecure))
    return run(config, args.verbose)


def parse_state(payload: bytes) -> Optional[dict]:
    """A ``<id>/state`` message, or None if it is not one."""
    try:
        state = json.loads(payload)
    except ValueError:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("status"), str) else None


if __name__ == "__main__":
    sys.exit(main())
