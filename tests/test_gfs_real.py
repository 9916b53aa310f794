"""``things.fs`` on real workers: programs in child processes of worker processes, the
file service on a real broker (Mosquitto when installed, else amqtt; skipped, saying
why, when neither can run), and the same program in the simulated world giving the same
console and the same files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import mqtt_fixtures
import test_real_workers
from test_real_workers import dispatcher
from waiting import until

from runtime.clock import AsyncioClock
from runtime.gfs.service import GfsService
from runtime.gfs.sqlite import SqliteStorage
from runtime.mqtt import MqttTransport

broker = mqtt_fixtures.broker
workers = test_real_workers.workers  # the fixture

LOGGER = """
n = 0
log = things.fs.open("app.log", "a", buffering=1)
def tick():
    global n
    log.write(f"line {n}\\n")
    n += 1
things.set_interval(tick, 0.05)
"""

#: a program whose console depends only on what the file system answers, not on timing
TOUR = """
steps = []
def show(what):
    def callback(err, value):
        print(what, type(err).__name__ if err else None, value)
    return callback
def begin():
    things.fs.mkdir("data/raw", show("mkdir"), parents=True)
    with things.fs.open("data/raw/a.txt", "w") as f:
        f.write("alpha\\nbeta\\n")
    things.fs.append_file("data/raw/a.txt", "gamma\\n", show("append"))
    things.fs.write_file("data/raw/b.bin", bytes(range(256)) * 1200, show("write 300 KB"))
    things.fs.listdir("data/raw", show("listdir"))
    things.fs.read_file("data/raw/a.txt", show("read"))
    things.fs.read_file("data/raw/b.bin", lambda err, data: print("bytes", len(data),
                        data == bytes(range(256)) * 1200), binary=True)
    things.fs.rename("data/raw/a.txt", "data/a.txt", show("rename"))
    things.fs.stat("data/a.txt", lambda err, s: print("stat", s.st_size, s.is_dir))
    things.fs.remove("data/raw/missing", show("remove missing"))
    things.fs.rmdir("data", show("rmdir non-empty"))
    things.fs.open("data/a.txt", "r", lines)
def lines(err, f):
    with f:
        print("lines", [line.rstrip() for line in f])
begin()
"""


class RealGfs:
    """A GfsService on the broker, in this process, on its own asyncio loop's clock."""

    def __init__(self, url: str, db: Path) -> None:
        self.url, self.db = url, db

    async def start(self) -> GfsService:
        loop = asyncio.get_running_loop()
        transport = MqttTransport(self.url, client_id=f"gfs-{os.getpid()}-{time.time_ns()}",
                                  loop=loop)
        self.storage = SqliteStorage(self.db)
        service = GfsService(transport, AsyncioClock(loop), self.storage).start()
        transport.connect()
        await until(lambda: transport.connected, what="the file service connected")
        return service


def test_a_log_stays_whole_across_migrations_between_worker_processes(broker, workers,
                                                                      tmp_path):
    workers.start("w1")
    workers.start("w2")

    async def main() -> str:
        service = await RealGfs(broker.url, tmp_path / "gfs.db").start()
        d = await dispatcher(broker.url, ["w1", "w2"])
        iid = (await d.run_code("w1", "logger", LOGGER))["id"]
        where = "w1"
        for _ in range(6):
            await asyncio.sleep(0.4)
            target = "w2" if where == "w1" else "w1"
            moved = await d.move_code(where, target, "logger", iid)
            assert moved["engine"] == target
            where = target
        await asyncio.sleep(0.5)
        assert await d.kill_code(iid) == "Exited"
        d.kill()
        data, _ = service.storage.read("/programs/logger/app.log")
        return data.decode()

    text = asyncio.run(main())
    lines = text.splitlines()
    assert len(lines) > 30
    assert lines == [f"line {i}" for i in range(len(lines))]  # no gap, no repeat


def tree(storage, path: str = "/programs") -> dict[str, object]:
    """Every entry under ``path``: folders as None, files as their bytes."""
    out: dict[str, object] = {}
    for name in storage.listdir(path):
        full = f"{path}/{name}"
        if storage.stat(full).is_dir:
            out[full] = None
            out.update(tree(storage, full))
        else:
            out[full] = storage.read(full)[0]
    return out


def test_the_same_program_gives_the_same_console_and_files_in_the_simulation(
        broker, workers, tmp_path):
    from thingssim.sim.world import World

    world = World(seed=1)
    world.add_board("pi", "raspberry-pi-3")
    sim_service = world.add_gfs()
    d = world.add_dispatcher()
    world.run(1.0)
    sim_iid = world.wait(d.run_code("pi", "tour", TOUR))["id"]
    world.run(60.0)
    sim_console = list(d.programs[sim_iid].console)
    assert d.programs[sim_iid].status == "Exited"

    workers.start("w1")

    async def main() -> list[str]:
        service = await RealGfs(broker.url, tmp_path / "gfs.db").start()
        real = await dispatcher(broker.url, ["w1"])
        iid = (await real.run_code("w1", "tour", TOUR))["id"]
        await until(lambda: real.programs[iid].status == "Exited", what="the tour to end",
                    timeout=30)
        await asyncio.sleep(0.2)  # the console's last lines
        console = list(real.programs[iid].console)
        real.kill()
        service.transport.disconnect()
        return console

    real_console = asyncio.run(main())
    assert len(sim_console) == 11, sim_console
    assert real_console == sim_console
    assert tree(SqliteStorage(tmp_path / "gfs.db")) == tree(sim_service.storage)


def test_files_work_under_the_shipped_acl(tmp_path):
    """The deploy ACL lets a worker's programs reach the service and the service answer
    them, with passwords on and anonymous clients refused (Mosquitto only)."""
    from test_real_workers import Workers

    from runtime.dispatcher import Dispatcher
    from thingssim.broker import BrokerError, make_password_file, start_broker

    mqtt_fixtures.require_mosquitto("the amqtt fallback has no password files or ACLs")
    acl = Path(__file__).resolve().parent.parent / "runtime/deploy/mosquitto-thingssim.acl"
    users = {"dispatcher": "d-secret", "w1": "w1-secret", "gfs": "g-secret"}
    try:
        handle = start_broker(config={"password_file": str(make_password_file(
            tmp_path / "passwd", users)), "acl_file": str(acl), "allow_anonymous": False})
    except BrokerError as exc:
        import pytest

        pytest.skip(str(exc))
    workers = Workers(handle.url, tmp_path)
    workers.start("w1", username="w1", password="w1-secret")

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        gfs = MqttTransport(handle.url, client_id="gfs", loop=loop, username="gfs",
                            password="g-secret")
        GfsService(gfs, AsyncioClock(loop), SqliteStorage(tmp_path / "gfs.db")).start()
        gfs.connect()
        d = Dispatcher(MqttTransport(handle.url, client_id="dispatcher", loop=loop,
                                     username="dispatcher", password="d-secret"),
                       AsyncioClock(loop), {"id": "tester"}).start()
        await until(lambda: "w1" in d.engines and d.engines["w1"].status != "dead",
                    what="w1 seen", timeout=20)
        iid = (await d.run_code("w1", "tour", TOUR))["id"]
        await until(lambda: d.programs[iid].status == "Exited", what="the tour to end",
                    timeout=30)
        await asyncio.sleep(0.2)
        console = list(d.programs[iid].console)
        d.kill()
        gfs.disconnect()
        return console

    try:
        console = asyncio.run(main())
    finally:
        workers.stop_all()
        handle.stop()
    assert console[-1] == "lines ['alpha', 'beta', 'gamma']"
    assert len(console) == 11
