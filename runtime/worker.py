"""A real worker: one CodeEngine on a real MQTT broker, in real time (asyncio).

    python -m runtime.worker CONFIG.json        # on a board (standard library + paho-mqtt)
    thingssim worker CONFIG.json                # the same, from the full install

The config is ThingsJS's (``pubsub_url``, ``id``, ``device``, ``memory_limit``) plus
``keepalive``, ``username``/``password``, ``tls`` (``ca_certs``, ``certfile``,
``keyfile``), ``resource_period``, ``on_shutdown`` (``"stop"``, or ``"migrate"`` to
move every program to another live engine before leaving), ``isolate`` (one process per
program, default true), ``program_memory_limit_mb``, ``max_callback_s`` and
``snapshot_key`` (a shared secret: sent snapshots are signed, received ones must be).

Why asyncio: the core is single-threaded by design (it never runs two callbacks at
once); asyncio gives it a real-time clock (``AsyncioClock``) and one thread to run on,
and the paho transport hands every message over to that thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import protocol as p
from .clock import AsyncioClock
from .engine import CodeEngine
from .isolation import process_factory

log = logging.getLogger("thingssim.worker")


class ConfigError(ValueError):
    """A worker config that cannot work, with the reason."""


@dataclass
class WorkerConfig:
    pubsub_url: str
    id: str
    device: str | None = None
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
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> WorkerConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> WorkerConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the config must be a JSON object")
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("pubsub_url", "id") if not data.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)} (e.g. "
                              '{"pubsub_url": "mqtt://localhost:1883", "id": "bbb-1"})')
        config = cls(**{k: v for k, v in data.items() if k in known},
                     extra={k: v for k, v in data.items() if k not in known})
        try:
            p.check_name("id", config.id)
        except p.ProtocolError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        if not isinstance(config.pubsub_url, str) or "://" not in config.pubsub_url:
            raise ConfigError(f"{where}: pubsub_url must look like mqtt://host:1883")
        for name in ("memory_limit", "keepalive", "request_timeout"):
            value = getattr(config, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}: {name} must be a positive number, not {value!r}")
        if config.on_shutdown not in ("stop", "migrate"):
            raise ConfigError(f"{where}: on_shutdown must be 'stop' or 'migrate'")
        return config


def make_transport(config: WorkerConfig, loop: asyncio.AbstractEventLoop, client_id: str):
    from .mqtt import MqttTransport

    return MqttTransport(config.pubsub_url, client_id=client_id, loop=loop,
                         username=config.username, password=config.password,
                         tls=config.tls)


async def serve(config: WorkerConfig, stop: asyncio.Event | None = None) -> int:
    """Run the engine until ``stop`` is set (or SIGINT/SIGTERM); returns an exit code."""

    loop = asyncio.get_running_loop()
    clock = AsyncioClock(loop)
    transport = make_transport(config, loop, config.id)
    engine = CodeEngine(transport, clock, engine_id=config.id, device=config.device,
                        memory_limit=config.memory_limit, keepalive=config.keepalive,
                        resource_period=config.resource_period,
                        request_timeout=config.request_timeout,
                        program_factory=process_factory(config.program_memory_limit_mb,
                                                        config.max_callback_s)
                        if config.isolate else None,
                        snapshot_key=config.snapshot_key.encode("utf-8")
                        if config.snapshot_key else None)
    stop = stop or asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
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
        return 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
