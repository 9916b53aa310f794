"""The scheduler on a real broker, in real time: what ``thingssim scheduler`` runs.

    python -m runtime.scheduler.server mqtt://host:1883 --db /var/lib/thingssim/sched.db
    thingssim scheduler mqtt://host:1883 --db sched.db --policy best-fit --standby

One asyncio loop runs the sans-IO :class:`~runtime.scheduler.service.Scheduler`; SIGINT
and SIGTERM stop it cleanly (the lease is released, so a standby takes over at once).  A
second process on the same ``--db`` is a standby: it acts only once it holds the lease
(``--standby`` just says so in the log; the lease decides).  Both must see the same file
(one host, or a disk whose locks work).  Checkpoints go to the same SQLite file, or with
``--gfs ID`` to the global file system's ``/checkpoints``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..clock import AsyncioClock
from .model import SchedulerError
from .service import DEFAULT_ID, Scheduler, SchedulerConfig
from .store import SchedulerStore

log = logging.getLogger("thingssim.scheduler")


class ConfigError(ValueError):
    """Options that cannot work (one line)."""


@dataclass
class ServerConfig:
    broker: str
    db: str
    id: str = DEFAULT_ID
    policy: str = "best-fit"
    rebalance_policy: Optional[str] = None
    checkpoint_s: float = 1.0
    fence_margin_s: float = 1.0
    period_s: float = 10.0
    lease_s: float = 6.0
    standby: bool = False
    gfs: Optional[str] = None  # checkpoints in this GFS service's /checkpoints
    username: Optional[str] = None
    password: Optional[str] = None
    keepalive: float = 10.0

    def scheduler_config(self) -> SchedulerConfig:
        config = SchedulerConfig(id=self.id, policy=self.policy,
                                 rebalance_policy=self.rebalance_policy,
                                 checkpoint_s=self.checkpoint_s or None,
                                 fence_margin_s=self.fence_margin_s, period_s=self.period_s,
                                 lease_s=self.lease_s, lease_margin_s=self.lease_s / 3,
                                 keepalive=self.keepalive)
        try:
            config.check()
            from .policies import get_policy

            get_policy(self.policy)
            if self.rebalance_policy:
                get_policy(self.rebalance_policy)
        except SchedulerError as exc:
            raise ConfigError(str(exc)) from None
        return config


def open_store(path: str) -> SchedulerStore:
    import sqlite3

    where = Path(path)
    if where.is_dir():
        raise ConfigError(f"--db {where}: is a directory, not a database file")
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        return SchedulerStore(where)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"--db {where}: not a usable SQLite database ({exc})") from None


async def serve(config: ServerConfig, stop: Optional[asyncio.Event] = None) -> int:
    from ..mqtt import MqttTransport
    from ..worker import stop_on_signals

    sched_config = config.scheduler_config()
    store = open_store(config.db)
    loop = asyncio.get_running_loop()
    clock = AsyncioClock(loop)
    holder = f"{config.id}-{os.uname().nodename.split('.')[0]}-{os.getpid()}"
    transport = MqttTransport(config.broker, client_id=holder, loop=loop,
                              username=config.username, password=config.password)
    checkpoints = None
    if config.gfs:
        from ..gfs.remote import GfsClient
        from .checkpoints import GfsCheckpoints

        checkpoints = GfsCheckpoints(GfsClient(transport, clock, config.gfs, retries=2,
                                               client_id=f"{holder}-gfs"), clock)
    scheduler = Scheduler(transport, clock, store, sched_config, holder=holder,
                          checkpoints=checkpoints)
    stop = stop_on_signals(loop, stop)
    try:
        scheduler.start()
        log.info("scheduler %s (%s) on %s, store %s: %s", config.id, holder, config.broker,
                 config.db, "active" if scheduler.role == "active" else
                 "standby (waiting for the lease)")
        await stop.wait()
        log.info("scheduler %s stopping", holder)
        scheduler.stop()
        await asyncio.sleep(0.2)
        transport.close()
    finally:
        store.close()
    return 0


def run(config: ServerConfig, verbose: bool = False) -> int:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config.scheduler_config()
        open_store(config.db).close()
        return asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.scheduler.server")
    parser.add_argument("broker", metavar="URL")
    parser.add_argument("--db", required=True)
    parser.add_argument("--id", default=DEFAULT_ID)
    parser.add_argument("--policy", default="best-fit")
    parser.add_argument("--rebalance-policy")
    parser.add_argument("--checkpoint-s", type=float, default=1.0)
    parser.add_argument("--fence-margin-s", type=float, default=1.0)
    parser.add_argument("--period-s", type=float, default=10.0)
    parser.add_argument("--lease-s", type=float, default=6.0)
    parser.add_argument("--standby", action="store_true")
    parser.add_argument("--gfs")
    parser.add_argument("-u", "--username")
    parser.add_argument("-p", "--password", default=os.environ.get("THINGSSIM_PASSWORD"))
    parser.add_argument("-v", "--verbose", action="store_true")
    a = parser.parse_args(argv)
    return run(ServerConfig(a.broker if "://" in a.broker else f"mqtt://{a.broker}", a.db,
                            a.id, a.policy, a.rebalance_policy, a.checkpoint_s,
                            a.fence_margin_s, a.period_s, a.lease_s, a.standby, a.gfs,
                            a.username, a.password), a.verbose)


if __name__ == "__main__":
    sys.exit(main())
