"""The cost model's ``message_cost``: each message a board's engine sends or receives
takes its thread (core 0) for ``message_cost / cpu_factor`` seconds.  At 0 (the
default) messages cost nothing, which the golden trace checks."""

from __future__ import annotations

import json

import pytest
from harness import consecutive, forever_counter

from thingssim.sim.network import LinkProfile
from thingssim.sim.world import CostModel, World

SINK = """
def got(topic, message):
    print(message["n"])
things.subscribe("feed", got)
"""


def world_with(cost: float, seed: int = 3, reports: float | None = 1.0
               ) -> tuple[World, object]:
    world = World(seed, cost=CostModel(message_cost=cost))
    world.add_board("src", "beaglebone-black", resource_period=reports)
    world.add_board("dst", "raspberry-pi-zero", resource_period=reports)
    d = world.add_dispatcher()
    world.run(1.0)
    while len(d.engines) < 2 and world.env.now < 120:  # costly messages: a slower boot
        world.run(world.env.now + 1.0)
    return world, d


def migrate(cost: float) -> tuple[dict, object]:
    world, d = world_with(cost)
    iid = world.wait(d.run_code("src", "counter", forever_counter(0.1)))["id"]
    world.run(world.env.now + 2.0)
    world.wait(d.move_code("src", "dst", "counter", iid))
    world.run(world.env.now + 2.0)
    (record,) = world.boards["src"].engine.migrations
    assert record["ok"]
    return record, d.programs[iid].console


def settle(world: World) -> None:
    """Run until no engine thread has a backlog (of the boot's and run_code's messages)."""
    deadline = world.env.now + 300
    while any(b.cores[0] > world.env.now for b in world.boards.values()):
        assert world.env.now < deadline, "the engines never caught up"
        world.run(max(b.cores[0] for b in world.boards.values()) + 0.01)


def feeder(world: World):
    link = world.network.add_link("feeder", LinkProfile(latency=1e-3, bandwidth=1e8))
    client = world.network.client("feeder", link)
    client.connect()
    world.run(world.env.now + 0.5)
    return client


def test_a_message_cost_slows_the_message_bound_phases_and_loses_no_count():
    free, _ = migrate(0.0)
    costly, console = migrate(2e-3)
    for phase in ("transfer_s", "commit_s", "total_s"):
        assert costly[phase] > free[phase], phase
    # the snapshot is work of its own kind (per byte), not messages: about the same (the
    # counter's state differs by a digit or so)
    assert costly["snapshot_s"] == pytest.approx(free["snapshot_s"], rel=0.01)
    consecutive(console, from_zero=True)  # no count lost or repeated across the move


def test_the_same_seed_gives_the_same_costly_migration():
    assert migrate(2e-3)[0] == migrate(2e-3)[0]


def test_the_engine_thread_is_charged_per_message_on_the_boards_cpu():
    free, _ = world_with(0.0)
    costly, _ = world_with(1e-3)
    for name, board in costly.boards.items():
        # the boot's messages (connect, subscriptions, reports) took CPU; with no cost none
        assert free.boards[name].cpu_seconds == 0.0
        assert board.cpu_seconds > 0.0
    board = costly.boards["dst"]
    before = board.cpu_seconds
    costly.run(costly.env.now + 10.0)  # ten 1 s resource reports and nothing else
    per_message = 1e-3 / board.profile.cpu_factor
    assert board.cpu_seconds - before == pytest.approx(10 * per_message)


def test_a_burst_queues_for_the_engine_thread_in_order_and_none_is_lost():
    world, d = world_with(5e-3)
    iid = world.wait(d.run_code("dst", "sink", SINK))["id"]
    pub = feeder(world)
    settle(world)
    start = world.env.now
    for n in range(40):  # 40 messages within 40 ms
        world.at(start + 0.001 * n, lambda n=n: pub.publish("feed", json.dumps(
            {"n": n}).encode()))
    per_message = 5e-3 / world.boards["dst"].profile.cpu_factor  # ~0.2 s on a Pi Zero
    cpu = world.boards["dst"].cpu_seconds
    world.run(start + 30 * per_message)
    # one thread, first come first served: it is still parsing the burst, so no
    # program's console line (a message out, queued behind them) has left yet
    assert not d.programs[iid].console
    world.run(start + 200 * per_message)
    assert [int(x) for x in d.programs[iid].console] == list(range(40))
    # 40 in, 40 console lines out, and a few 1 s resource reports
    assert world.boards["dst"].cpu_seconds - cpu >= 80 * per_message


def test_a_crash_drops_the_messages_still_waiting_for_the_engine_thread():
    # about 2 s per message on a Pi Zero: more than its 1 s resource reports allow
    world, d = world_with(50e-3, reports=None)
    iid = world.wait(d.run_code("dst", "sink", SINK))["id"]
    pub = feeder(world)
    settle(world)
    start = world.env.now
    for n in range(10):
        world.at(start + 0.001 * n, lambda n=n: pub.publish("feed", json.dumps(
            {"n": n}).encode()))
    world.at(start + 26.0, world.boards["dst"].crash)  # 10 in by ~21 s, then lines out
    world.run(start + 60.0)
    lines = [int(x) for x in d.programs[iid].console]
    assert lines == list(range(len(lines)))
    assert 0 < len(lines) < 10  # those still queued for the thread died with the board


def test_a_message_costs_per_payload_byte_too():
    world = World(5, cost=CostModel(message_cost_per_byte=1e-6))
    board = world.add_board("zero", "raspberry-pi-zero", resource_period=None)
    world.run(1.0)
    pub = feeder(world)
    board.transport.subscribe("big", lambda message: None)
    world.run(world.env.now + 1.0)
    before = board.cpu_seconds
    pub.publish("big", b"x" * 10_000)
    world.run(world.env.now + 5.0)
    assert board.cpu_seconds - before == pytest.approx(
        10_000 * 1e-6 / board.profile.cpu_factor)


def test_message_cost_is_validated():
    for name in ("message_cost", "message_cost_per_byte"):
        for bad in (-1.0, float("nan"), "x", True):
            with pytest.raises(ValueError, match=f"{name} must be a number >= 0"):
                CostModel(**{name: bad})


def test_a_freeze_holds_the_messages_waiting_for_the_engine_thread_and_loses_none():
    world, d = world_with(5e-3)
    iid = world.wait(d.run_code("dst", "sink", SINK))["id"]
    pub = feeder(world)
    settle(world)
    start = world.env.now
    for n in range(10):
        world.at(start + 0.001 * n, lambda n=n: pub.publish("feed", json.dumps(
            {"n": n}).encode()))
    board = world.boards["dst"]
    world.at(start + 0.5, board.freeze)  # while the thread still has the burst queued
    world.run(start + 3.0)
    frozen = [int(x) for x in d.programs[iid].console]
    world.at(world.env.now, board.thaw)
    world.run(world.env.now + 30.0)
    lines = [int(x) for x in d.programs[iid].console]
    assert len(frozen) < 10  # the freeze caught some still waiting
    assert lines == list(range(10))  # then every one, once, in order
