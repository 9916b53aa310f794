"""The checkpoint stores (runtime/scheduler/checkpoints.py): SQLite and the global file
system, one future-based interface.  The GFS store on its own (round trip, a missing
checkpoint, a corrupt one) and in a simulated world whose scheduler keeps its
checkpoints in the GFS: files appear under /checkpoints/<token>/, and a crashed board's
programs are restored from them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sched_sim import app_doc, running_copies

from runtime.gfs.remote import GfsClient
from runtime.scheduler.checkpoints import GfsCheckpoints, SqliteCheckpoints, gfs_path, loaded
from runtime.scheduler.client import SchedulerClient
from runtime.scheduler.store import Checkpoint, SchedulerStore
from thingssim.sim.boards import get_profile
from thingssim.sim.world import World, link_profile

SNAP = {"format": "thingssim-snapshot", "version": 1, "program": {"instance_id": "c.t-0"}}


def _user(world: World, name: str = "user") -> Any:
    link = world.network.add_link(name, link_profile(get_profile("desktop-vm")))
    transport = world.network.client(name, link)
    transport.connect()
    return transport


def _gfs_world() -> tuple[World, GfsClient]:
    world = World(seed=3, keepalive=2.0)
    world.add_gfs("gfs")
    world.run(0.5)
    return world, GfsClient(_user(world), world.clock, "gfs", client_id="tester")


def test_sqlite_checkpoints_keep_the_last_per_instance() -> None:
    world = World(seed=1)
    cps = SqliteCheckpoints(SchedulerStore(":memory:"), world.clock)
    assert world.wait(cps.load("c.t-0", "t")) is None
    for epoch in (1, 2):
        world.wait(cps.save(Checkpoint("c.t-0", "t", epoch, "b0", float(epoch), SNAP)))
    got = world.wait(cps.load("c.t-0", "t"))
    assert (got.epoch, got.taken, got.snapshot) == (2, 2.0, SNAP)


def test_gfs_checkpoints_round_trip_as_one_file_each() -> None:
    world, client = _gfs_world()
    cps = GfsCheckpoints(client, world.clock)
    assert world.wait(cps.load("c.t-0", "t")) is None  # none yet: None, not an error
    world.wait(cps.save(Checkpoint("c.t-0", "t", 1, "b0", 1.5, SNAP)))
    world.wait(cps.save(Checkpoint("c.t-0", "t", 2, "b1", 2.5, SNAP)))  # replaced
    got = world.wait(cps.load("c.t-0", "t"))
    assert got == Checkpoint("c.t-0", "t", 2, "b1", 2.5, SNAP)
    assert world.wait(client.listdir("/checkpoints/t")) == ["c.t-0.snap"]
    doc = json.loads(world.wait(client.read_file(gfs_path("t", "c.t-0"))))
    assert doc["epoch"] == 2 and doc["snapshot"] == SNAP  # readable by anyone with fs


def test_a_corrupt_gfs_checkpoint_fails_and_counts_as_none() -> None:
    world, client = _gfs_world()
    world.wait(client.mkdir("/checkpoints/t", parents=True))
    world.wait(client.write_file(gfs_path("t", "c.t-0"), b"{not json"))
    cps = GfsCheckpoints(client, world.clock)
    with pytest.raises(ValueError, match="corrupt checkpoint /checkpoints/t/c.t-0.snap"):
        world.wait(cps.load("c.t-0", "t"))
    assert world.wait(loaded(world.clock, cps.load("c.t-0", "t"))) is None


def test_a_scheduler_on_the_gfs_restores_a_crashed_boards_programs_from_it() -> None:
    world = World(seed=2, keepalive=2.0)
    for i in range(3):
        world.add_board(f"b{i}", "desktop-vm")
    world.add_gfs("gfs")

    def on_gfs(node: Any, clock: Any, transport: Any) -> GfsCheckpoints:
        return GfsCheckpoints(GfsClient(transport, clock, "gfs", retries=2,
                                        client_id=f"{node.name}-gfs"), clock)

    node = world.add_scheduler(checkpoints=on_gfs, checkpoint_s=1.0)
    user = _user(world)
    client = SchedulerClient(user, world.clock, timeout=60.0, client_id="user")
    fs = GfsClient(user, world.clock, "gfs", client_id="user-fs")
    world.run(2.0)
    token = world.wait(client.submit(app_doc(count=3)))["token"]
    world.run(world.clock.now() + 3.0)
    status = world.wait(client.status(token))
    where = {v["id"]: v["engine"] for v in status["instances"].values()}
    assert sorted(world.wait(fs.listdir(f"/checkpoints/{token}"))) == \
        sorted(f"{iid}.snap" for iid in where)
    assert node.scheduler.checkpoints.name == "gfs"
    victim = sorted(set(where.values()))[0]
    moved = sorted(i for i, e in where.items() if e == victim)
    world.boards[victim].crash()
    world.run(world.clock.now() + 20.0)
    after = {v["id"]: v["engine"] for v in world.wait(client.status(token))[
        "instances"].values()}
    assert all(after[i] != victim for i in moved)
    recoveries = [e["data"] for e in node.scheduler.history if e["type"] == "action"
                  and e["data"].get("kind") == "recover"]
    assert sorted(r["instance"] for r in recoveries) == moved
    assert all(r["ok"] and r["checkpoint_epoch"] == 1 and r["bytes"] > 0
               for r in recoveries)
    assert all(n == 1 for n in running_copies(world).values())
