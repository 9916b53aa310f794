"""A real worker: one CodeEngine on a real MQTT broker, in real time (asyncio).

    python -m runtime.worker CONFIG.json        # on a board (standard library + paho-mqtt)
    thingssim worker CONFIG.json                # the same, from the full install

The config is ThingsJS's (``pubsub_url``, ``id``, ``device``, ``memory_limit``) plus
``keepalive``, ``username``/``password``, ``tls`` (``ca_certs``, ``certfile``,
``keyfile``, ``insecure``), ``resource_period``, ``on_shutdown`` (``"stop"``, or
``"migrate"`` to move every program to another live engine before leaving), ``isolate``
(one process per program, default true), ``program_memory_limit_mb``, ``max_callback_s``,
``program_qos`` (0 or 1: the QoS of programs' messages unless a publish names its own),
``cores`` (what a scheduler may fill; default ``os.cpu_count()``),
``snapshot_key`` (a shared secret: sent snapshots are signed, received ones must be) and
``migrate_peers`` (the engine ids this worker accepts migrations from; absent: any engine
whose snapshots carry the fleet's signature, or, without a ``snapshot_key``, none at all).
Unknown keys, wrong types, impossible numbers and TLS files that are missing or do not
load are reported in one line naming the key (exit code 1), before anything connects.

Why asyncio: the core is single-threaded by design (it never runs two callbacks at
once); asyncio gives it a real-time clock (``AsyncioClock``) and one thread to run on,
and the paho transport hands every message over to that thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import ssl
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import protocol as p
from .clock import AsyncioClock
from .engine import CodeEngine
from .isolation import process_factory
from .journal import FileJournal, MemoryJournal
from .userinput import read_text, unknown_keys

log = logging.getLogger("thingssim.worker")


class ConfigError(ValueError):
    """A worker config that cannot work, with the reason."""


@dataclass
class WorkerConfig:
    pubsub_url: str
    id: str
    device: str | None = None
    #: named features of the board (``["camera"]``), reported for placement constraints
    capabilities: list[str] | None = None
    memory_limit: float = 1000
    keepalive: float = 10.0
    username: str | None = None
    password: str | None = None
    tls: dict | None = None
    resource_period: float | None = 1.0
    request_timeout: float = 10.0
    on_shutdown: str = "stop"
    isolate: bool = True  # one process per program
    program_memory_limit_mb: float | None = None  # RLIMIT_AS of each program process
    max_callback_s: float | None = 30.0  # longer callbacks are interrupted (crash)
    snapshot_key: str | None = None  # shared secret: only signed snapshots are restored
    migrate_peers: list[str] | None = None  # engines allowed to migrate here (see below)
    #: where the engine's journal lives (migration decisions, owned programs): with it, a
    #: restarted worker answers for migrations it committed and reports its lost programs
    state_dir: str | None = None
    fence_s: float = 10.0  # cut off this long: pause programs until ownership is confirmed
    lease_s: float = 30.0  # a prepared (migrating-in) copy not committed by then is dropped
    #: QoS of programs' publishes and subscriptions unless a publish names its own
    program_qos: int = 0
    #: CPU cores a scheduler may fill on this board (absent: os.cpu_count())
    cores: int | None = None

    @classmethod
    def load(cls, path: str | Path) -> WorkerConfig:
        path = Path(path)
        try:
            data = json.loads(read_text(path, "config file"))
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise ConfigError(f"{path}: not valid JSON ({exc})") from None
            raise ConfigError(str(exc)) from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> WorkerConfig:
        """A checked config: every key known, every value of the right type and range
        (files named in ``tls`` exist and load), else a one-line ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the config must be a JSON object")
        known = {f.name for f in fields(cls)}
        problem = unknown_keys(data, known)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        missing = [k for k in ("pubsub_url", "id") if not data.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)} (e.g. "
                              '{"pubsub_url": "mqtt://localhost:1883", "id": "bbb-1"})')
        config = cls(**data)
        config._check(where)
        return config

    def _check(self, where: str) -> None:
        def fail(message: str) -> ConfigError:
            return ConfigError(f"{where}: {message}")

        try:
            p.check_name("id", self.id)
        except p.ProtocolError as exc:
            raise fail(exc.message) from None
        if not isinstance(self.pubsub_url, str) or "://" not in self.pubsub_url:
            raise fail(f"pubsub_url must look like mqtt://host:1883, not {self.pubsub_url!r}")
        from .mqtt import parse_broker_url  # paho-mqtt: a worker needs it anyway

        try:
            parse_broker_url(self.pubsub_url)
        except ValueError as exc:
            raise fail(f"pubsub_url: {exc}") from None
        for name in ("device", "username", "password", "snapshot_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise fail(f"{name} must be a string, not {value!r}")
        if self.state_dir is not None and (not isinstance(self.state_dir, str)
                                           or not self.state_dir):
            raise fail(f"state_dir must be a directory name, not {self.state_dir!r}")
        for name in ("memory_limit", "keepalive", "request_timeout", "fence_s", "lease_s"):
            _positive(fail, name, getattr(self, name))
        for name in ("resource_period", "program_memory_limit_mb", "max_callback_s"):
            if getattr(self, name) is not None:
                _positive(fail, name, getattr(self, name), "or null")
        if self.cores is not None and (isinstance(self.cores, bool) or
                                       not isinstance(self.cores, int) or self.cores < 1):
            raise fail(f"cores must be a whole number >= 1, not {self.cores!r}")
        if self.program_qos not in (0, 1) or isinstance(self.program_qos, bool):
            raise fail(f"program_qos must be 0 or 1, not {self.program_qos!r}")
        if self.on_shutdown not in ("stop", "migrate"):
            raise fail(f"on_shutdown must be 'stop' or 'migrate', not {self.on_shutdown!r}")
        if not isinstance(self.isolate, bool):
            raise fail(f"isolate must be true or false, not {self.isolate!r}")
        if self.capabilities is not None and (
                not isinstance(self.capabilities, list) or
                not all(isinstance(c, str) and c for c in self.capabilities)):
            raise fail(f"capabilities must be a list of names, not {self.capabilities!r}")
        if self.migrate_peers is not None:
            if not isinstance(self.migrate_peers, list):
                raise fail("migrate_peers must be a list of engine ids, not "
                           f"{self.migrate_peers!r}")
            for peer in self.migrate_peers:
                try:
                    p.check_name("every engine id in migrate_peers", peer)
                except p.ProtocolError as exc:
                    raise fail(exc.message) from None
        if self.tls is not None:
            _check_tls(fail, self.tls)

    def accepted_migrate_peers(self) -> list[str] | None:
        """Whom this worker restores programs from: ``migrate_peers`` if given; else, with
        a ``snapshot_key``, anyone (the signature authenticates the snapshot); else no one,
        since an unsigned snapshot from any client that can publish is any code run here."""
        if self.migrate_peers is not None:
            return list(self.migrate_peers)
        return None if self.snapshot_key else []


def open_journal(config: WorkerConfig) -> MemoryJournal:
    """The engine's journal: a file in ``state_dir`` (kept across restarts), else memory."""
    if config.state_dir is None:
        return MemoryJournal()
    directory = Path(config.state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return FileJournal(directory / f"{config.id}.journal.json")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"state_dir {directory}: cannot use it ({exc.strerror or exc})") \
            from None


def _positive(fail: Any, name: str, value: Any, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise fail(f"{name} must be a positive number{' ' + alternative if alternative else ''}"
                   f", not {value!r}")


_TLS_KEYS = ("ca_certs", "certfile", "keyfile", "insecure")


def _check_tls(fail: Any, tls: Any) -> None:
    """``tls`` as paho will use it: an object of known keys whose files exist and load."""
    if not isinstance(tls, dict):
        raise fail(f"tls must be an object with some of {', '.join(_TLS_KEYS)} (e.g. "
                   f'{{"ca_certs": "/etc/ssl/certs/broker-ca.pem"}}), not {tls!r}')
    unknown = sorted(set(tls) - set(_TLS_KEYS))
    if unknown:
        raise fail(f"unknown tls key(s) {', '.join(unknown)}; known: {', '.join(_TLS_KEYS)}")
    if not isinstance(tls.get("insecure", False), bool):
        raise fail(f"tls.insecure must be true or false, not {tls['insecure']!r}")
    for key in ("ca_certs", "certfile", "keyfile"):
        path = tls.get(key)
        if path is None:
            continue
        if not isinstance(path, str) or not path:
            raise fail(f"tls.{key} must be a file name, not {path!r}")
        if not Path(path).is_file():
            raise fail(f"tls.{key}: no such file {path}")
    if tls.get("keyfile") and not tls.get("certfile"):
        raise fail("tls.keyfile needs tls.certfile (the certificate it belongs to)")
    context = ssl.create_default_context()
    if tls.get("ca_certs"):
        try:
            context.load_verify_locations(cafile=tls["ca_certs"])
        except (ssl.SSLError, OSError) as exc:
            raise fail(f"tls.ca_certs {tls['ca_certs']}: not a PEM certificate file "
                       f"({getattr(exc, 'reason', None) or exc})") from None
    if tls.get("certfile"):
        def encrypted() -> str:
            raise _EncryptedKey

        shown = f"tls.certfile {tls['certfile']}" + (
            f" with tls.keyfile {tls['keyfile']}" if tls.get("keyfile") else
            " (no tls.keyfile: the key must be in the same file)")
        try:
            context.load_cert_chain(tls["certfile"], tls.get("keyfile"), password=encrypted)
        except _EncryptedKey:
            raise fail(f"{shown}: the key is encrypted; give the worker an unencrypted key "
                       "that only its user can read") from None
        except (ssl.SSLError, OSError) as exc:
            raise fail(f"{shown}: not a PEM certificate and its private key "
                       f"({getattr(exc, 'reason', None) or exc})") from None


class _EncryptedKey(Exception):
    """A TLS key that wants a password (paho would prompt on the terminal)."""


def make_transport(config: WorkerConfig, loop: asyncio.AbstractEventLoop, client_id: str):
    from .mqtt import MqttTransport

    return MqttTransport(config.pubsub_url, client_id=client_id, loop=loop,
                         username=config.username, password=config.password,
                         tls=config.tls)



def stop_on_signals(loop: asyncio.AbstractEventLoop,
                    stop: asyncio.Event | None = None) -> asyncio.Event:
    """``stop`` (or a new event), set by SIGINT or SIGTERM where the loop can take signals
    (the main thread of a POSIX process): how a worker or a service is asked to end."""
    stop = stop or asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    return stop

def board_cores(config: WorkerConfig) -> int:
    """The cores this worker offers a scheduler: the config's ``cores``, else the
    machine's (a scheduler otherwise assumes one core per board)."""
    return config.cores if config.cores is not None else max(1, os.cpu_count() or 1)


async def serve(config: WorkerConfig, stop: asyncio.Event | None = None) -> int:
    """Run the engine until ``stop`` is set (or SIGINT/SIGTERM); returns an exit code."""

    loop = asyncio.get_running_loop()
    clock = AsyncioClock(loop)
    transport = make_transport(config, loop, config.id)
    engine = CodeEngine(transport, clock, engine_id=config.id, device=config.device,
                        capabilities=config.capabilities or (),
                        memory_limit=config.memory_limit, keepalive=config.keepalive,
                        resource_period=config.resource_period,
                        request_timeout=config.request_timeout, program_qos=config.program_qos,
                        program_factory=process_factory(config.program_memory_limit_mb,
                                                        config.max_callback_s)
                        if config.isolate else None,
                        snapshot_key=config.snapshot_key.encode("utf-8")
                        if config.snapshot_key else None,
                        migrate_peers=config.accepted_migrate_peers(),
                        journal=open_journal(config), fence_s=config.fence_s,
                        lease_s=config.lease_s, cores=board_cores(config))
    if not config.snapshot_key and not config.accepted_migrate_peers():
        log.warning("engine %s refuses every migration to it (error 'forbidden'): give the "
                    "workers a shared snapshot_key (provision.sh does), or list the engines "
                    "it may accept programs from in migrate_peers", config.id)
    stop = stop_on_signals(loop, stop)
    engine.start()
    log.info("engine %s started on %s", config.id, config.pubsub_url)
    await stop.wait()
    log.info("engine %s shutting down (%s)", config.id, config.on_shutdown)
    if config.on_shutdown == "migrate":
        await migrate_away(engine, clock)
    engine.stop()
    await asyncio.sleep(0.2)  # let the final reports leave
    close = getattr(transport, "close", None)
    if close is not None:
        close()
    return 0


async def migrate_away(engine: Any, clock: Any) -> None:
    """Move every running program to another live engine before leaving."""
    peers: dict[str, str] = {}

    def on_state(message: Any) -> None:
        try:
            report = p.decode(message.payload)
            peers[report["id"]] = report["status"]
        except (p.ProtocolError, KeyError, TypeError):
            pass

    engine.transport.subscribe(p.ENGINE_STATE_PREFIX + "+", on_state, qos=1)
    await asyncio.sleep(0.5)
    targets = sorted(e for e, s in peers.items() if s != "dead" and e != engine.id)
    for n, iid in enumerate(list(engine.programs)):
        if not targets:
            log.warning("no live engine to migrate %s to; stopping it", iid)
            break
        target = targets[n % len(targets)]
        future = engine._cmd_migrate_code({"instance_id": iid, "engine": target})
        try:
            result = await future
            log.info("migrated %s to %s", iid, result.get("engine"))
        except Exception as exc:  # noqa: BLE001 - keep going with the others
            log.warning("could not migrate %s to %s: %s", iid, target, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.worker",
                                     description="Run a thingssim worker (CodeEngine).")
    parser.add_argument("config", help="worker config JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = WorkerConfig.load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1  # a user error (argparse's usage errors exit 2)
    try:
        return asyncio.run(serve(config))
    except ConfigError as exc:  # found while starting (an unusable state_dir)
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
