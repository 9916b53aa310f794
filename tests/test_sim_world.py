"""The real Dispatcher and CodeEngines on the simulated network of virtual boards."""

from __future__ import annotations

import json

import pytest
from harness import consecutive, forever_counter

from runtime import protocol as p
from runtime.rpc import RemoteError
from thingssim.sim.world import World

COUNTER = forever_counter(0.1)


def make_world(n: int = 3, seed: int = 0, **board) -> tuple[World, object]:
    world = World(seed)
    for i in range(n):
        world.add_board(f"e{i}", board.pop("profile", "raspberry-pi-3"), **board)
    d = world.add_dispatcher()
    world.run(1.0)
    return world, d


def test_thingsjs_dispatcher_test_in_simulation():
    world, d = make_world(3)
    assert sorted(d.engines) == ["e0", "e1", "e2"]
    assert {e.status for e in d.engines.values()} == {"idle"}
    run = world.wait(d.run_code("e0", "counter", COUNTER))
    iid = run["id"]
    world.run(world.env.now + 1.0)
    assert d.engines["e0"].status == "busy"
    assert len(d.programs[iid].console) >= 5
    moved = world.wait(d.move_code("e0", "e1", "counter", iid))
    assert moved["id"] == iid and moved["engine"] == "e1"
    world.run(world.env.now + 1.0)
    assert d.engines["e0"].status == "idle" and d.engines["e1"].status == "busy"
    assert d.programs[iid].engine == "e1"
    numbers = consecutive(d.programs[iid].console, from_zero=False)
    assert numbers[0] == 0 and len(numbers) > 15  # strictly consecutive across the move
    assert world.wait(d.pause_code(iid)) == "Paused"
    world.run(world.env.now + 0.5)
    assert d.programs[iid].status == "Paused" and d.engines["e1"].status == "idle"
    assert world.wait(d.resume_code(iid)) == "Running"
    assert world.wait(d.kill_code(iid)) == "Exited"
    world.run(world.env.now + 0.5)
    assert d.programs[iid].status == "Exited"
    consecutive(d.programs[iid].console, from_zero=False)


def test_migration_timing_follows_the_link_model_and_phases_add_up():
    bandwidth, latency = 10e6, 0.005
    world, d = make_world(2, profile="desktop-vm", bandwidth=bandwidth, latency=latency,
                          jitter=0.0)
    big = "blob = [float(i) for i in range(125_000)]\n" + COUNTER  # about 1 MB of state
    iid = world.wait(d.run_code("e0", "big", big))["id"]
    world.run(world.env.now + 0.5)
    result = world.wait(d.move_code("e0", "e1", "big", iid))
    m = result["migration"]
    size = m["snapshot_bytes"]
    assert size > 1_000_000
    wire = size * 8 / bandwidth  # on the source's uplink, then on the target's downlink
    assert m["transfer_s"] >= 2 * wire + 2 * latency
    assert m["transfer_s"] < 2 * wire + 0.2
    total = m["snapshot_s"] + m["transfer_s"] + m["restore_s"] + m["commit_s"]
    assert total == pytest.approx(m["total_s"], abs=1e-9)
    assert m["commit_s"] >= 4 * latency  # a small round trip through the broker


def test_failed_restore_keeps_the_program_on_the_source():
    world, d = make_world(2)
    iid = world.wait(d.run_code("e0", "counter", COUNTER))["id"]
    def refuse(kwargs, source):
        raise p.ProtocolError(p.RESTORE_FAILED, "target refused")

    world.boards["e1"].engine._migrate_cmds["restore_code"] = refuse
    fut = d.move_code("e0", "e1", "counter", iid)
    with pytest.raises(RemoteError, match="target refused"):
        world.wait(fut)
    world.run(world.env.now + 1.0)
    assert list(world.boards["e0"].engine.programs) == [iid]
    assert world.boards["e1"].engine.programs == {}
    assert d.programs[iid].engine == "e0" and d.programs[iid].status == "Running"
    consecutive(d.programs[iid].console, from_zero=False)


def test_board_crash_is_seen_through_the_last_will_within_1_5_keepalive():
    world, d = make_world(2)
    iid = world.wait(d.run_code("e1", "counter", COUNTER))["id"]
    dead_at = []
    d.on("engine-dead", lambda engine: dead_at.append((engine.id, world.env.now)))
    crash_time = world.env.now
    world.boards["e1"].crash()
    world.run(crash_time + 1.5 * world.keepalive + 1.0)
    assert [engine for engine, _ in dead_at] == ["e1"]
    assert dead_at[0][1] - crash_time <= 1.5 * world.keepalive + 0.1
    assert d.programs[iid].status == "Unreachable"  # it may only be cut off: not yet gone
    world.run(dead_at[0][1] + d.config.lost_after + 0.1)
    assert d.programs[iid].status == "Lost"
    world.boards["e1"].reboot()
    world.run(world.env.now + 2.0)
    assert d.engines["e1"].status == "idle"


def test_broker_outage_clients_reconnect_and_nothing_is_lost_at_qos1():
    world, d = make_world(2)
    iid = world.wait(d.run_code("e0", "counter", COUNTER))["id"]
    world.run(world.env.now + 1.0)
    world.network.broker_down()
    world.run(world.env.now + 3.0)
    world.network.broker_up()
    world.run(world.env.now + 15.0)
    numbers = consecutive(d.programs[iid].console, from_zero=False)  # console is published at QoS 1
    assert len(numbers) > 150
    assert world.wait(d.pause_code(iid)) == "Paused"  # commands work again


def _traced(seed: int):
    world = World(seed)
    for i in range(2):
        world.add_board(f"e{i}", "raspberry-pi-zero")  # lossy, jittery Wi-Fi
    d = world.add_dispatcher()
    world.run(1.0)
    fut = d.run_code("e0", "counter", COUNTER)
    world.run(8.0)
    iid = fut.result()["id"]
    d.move_code("e0", "e1", "counter", iid)
    world.run(12.0)
    return world.network.messages_frame()


def test_same_seed_same_trace_and_another_seed_changes_it():
    a, b, c = _traced(3), _traced(3), _traced(4)
    assert a.to_csv(index=False) == b.to_csv(index=False)
    assert a.to_csv(index=False) != c.to_csv(index=False)


def test_malformed_payloads_on_the_simulated_network():
    world, d = make_world(1)
    iid = world.wait(d.run_code("e0", "counter", COUNTER))["id"]
    raw = d.transport
    for topic in ("e0/cmd", p.ENGINE_REGISTRY_BCAST, p.PROGRAM_MONITOR_BCAST,
                  f"counter/{iid}/cmd"):
        for junk in (b"\x00", b"{", b"[]", b'{"ctrl": null}',
                     json.dumps({"ctrl": "warp", "request_id": "x",
                                 "reply_to": "dispatcher/reply"}).encode()):
            raw.publish(topic, junk, qos=1)
    world.run(world.env.now + 2.0)
    assert world.boards["e0"].engine.running
    assert world.wait(d.pause_code(iid)) == "Paused"


def test_a_simpy_process_yields_dispatcher_futures():
    world, d = make_world(2)
    log = []

    def operator():
        started = yield d.run_code("e0", "counter", COUNTER)
        log.append(started["engine"])
        yield world.env.timeout(1.0)
        moved = yield d.move_code("e0", "e1", "counter", started["id"])
        log.append(moved["engine"])
        try:
            yield d.pause_code("nope")
        except Exception as exc:  # unknown program: raised before anything is sent
            log.append(type(exc).__name__)

    world.env.process(operator())
    world.run(world.env.now + 10)
    assert log == ["e0", "e1", "UnknownProgram"]


def test_real_time_code_awaits_the_same_futures():
    """The same Dispatcher and CodeEngine on asyncio (real time, in-process broker)."""
    import asyncio

    from runtime.clock import AsyncioClock
    from runtime.dispatcher import Dispatcher
    from runtime.engine import CodeEngine
    from runtime.memory import MemoryBroker

    async def main():
        clock = AsyncioClock(asyncio.get_running_loop())
        broker = MemoryBroker(clock)
        CodeEngine(broker.client("e0"), clock, engine_id="e0", resource_period=None).start()
        d = Dispatcher(broker.client("d"), clock).start()
        await asyncio.sleep(0.05)
        started = await d.run_code("e0", "counter", COUNTER)
        await asyncio.sleep(0.35)
        assert await d.pause_code(started["id"]) == "Paused"
        return list(d.programs[started["id"]].console)

    console = asyncio.run(main())
    assert console[:3] == ["0", "1", "2"]


def test_things_cpu_time_is_the_board_meters_charge_and_moves_with_the_program():
    """In "fixed" cost mode every event costs ``event_cost / cpu_factor`` of the board it
    ran on: the program reads exactly that sum, across a migration to a slower board."""
    world, d = make_world(1, profile="raspberry-pi-3")
    world.add_board("zero", "raspberry-pi-zero")
    world.run(world.env.now + 1.0)
    reader = "n = 0\ndef tick():\n    global n\n    n += 1\n    print(n, things.cpu_time())\n" \
             "things.set_interval(tick, 0.1)\n"
    iid = world.wait(d.run_code("e0", "reader", reader))["id"]
    world.run(world.env.now + 1.0)
    world.wait(d.move_code("e0", "zero", "reader", iid))
    world.run(world.env.now + 1.0)
    cost = world.cost.event_cost
    fast = world.boards["e0"].profile.cpu_factor
    slow = world.boards["zero"].profile.cpu_factor
    values = [float(line.split()[1]) for line in d.programs[iid].console]
    steps = [round(b - a, 12) for a, b in zip(values, values[1:])]
    fast_step, slow_step = round(cost / fast, 12), round(cost / slow, 12)
    assert values[0] == pytest.approx(cost / fast)  # the top level, before the first tick
    moved_at = steps.index(slow_step)
    assert 5 < moved_at < len(steps) - 5
    assert steps == [fast_step] * moved_at + [slow_step] * (len(steps) - moved_at)
    host = world.boards["zero"].engine.programs[iid]
    assert host.cpu_time == pytest.approx(values[-1] + cost / slow)
