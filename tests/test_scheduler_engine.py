"""The engine's side of recovery: ``recover_code`` and checkpoints (``snapshot`` with
``checkpoint: true``), and the fencing that makes a recovered program's old copy drop out
when its board comes back (simulated network: cut links and crashes)."""

from __future__ import annotations

import pytest
from harness import forever_counter

from runtime.rpc import RemoteError
from thingssim.sim.world import World

COUNTER = forever_counter(0.1)


def running_copies(world: World, iid: str) -> list[str]:
    return [name for name, b in world.boards.items() if b.up and iid in b.engine.programs
            and b.engine.programs[iid].status is not None
            and b.engine.programs[iid].status.value == "Running"
            and iid not in b.engine._prepared]


@pytest.fixture
def world() -> World:
    w = World(seed=1, keepalive=2.0)
    for name in ("a", "b", "c"):
        w.add_board(name, "desktop-vm", capabilities=["camera"] if name == "c" else ())
    w.add_dispatcher()
    w.run(1.0)
    return w


def test_capabilities_and_fence_time_are_in_the_engine_report(world: World) -> None:
    d = world.dispatcher
    assert d.engines["c"].meta["capabilities"] == ["camera"]
    assert "capabilities" not in d.engines["a"].meta  # only when it has some
    assert "fence_s" not in d.engines["a"].meta  # the default (10 s): not repeated


def test_checkpoint_then_recover_elsewhere_at_a_higher_epoch(world: World) -> None:
    d = world.dispatcher
    iid = world.wait(d.run_code("a", "counter", COUNTER, instance_id="counter.x-0"))["id"]
    assert iid == "counter.x-0"
    world.run(world.clock.now() + 1.0)
    cp = world.wait(d.checkpoint_code(iid))
    assert cp["epoch"] == 1 and cp["engine"] == "a" and cp["bytes"] > 0
    assert "snapshot" in cp and cp["status"] == "Running"
    world.run(world.clock.now() + 0.55)  # 5 more numbers, lost with the board
    world.boards["a"].crash()
    result = world.wait(d.recover_code("b", iid, "counter", 2, snapshot=cp["snapshot"]))
    assert result["engine"] == "b" and result["epoch"] == 2 and result["status"] == "Running"
    # a repeat at the same epoch answers the running copy; an older epoch is refused
    again = world.wait(d.recover_code("b", iid, "counter", 2, snapshot=cp["snapshot"]))
    assert again.get("duplicate") is True
    with pytest.raises(RemoteError, match="stale_epoch"):
        world.wait(d.recover_code("b", iid, "counter", 1, snapshot=cp["snapshot"]))
    world.run(world.clock.now() + 1.0)
    console = list(d.programs[iid].console)
    numbers = [int(x) for x in console]
    # restarted from the checkpoint: the numbers after it are printed again (re-emitted)
    assert numbers[0] == 0 and len(set(numbers)) < len(numbers)
    assert running_copies(world, iid) == ["b"]


def test_recover_from_source_and_bad_requests(world: World) -> None:
    d = world.dispatcher
    out = world.wait(d.recover_code("c", "counter.y-0", "counter", 3, source=COUNTER))
    assert out["status"] == "Running" and out["epoch"] == 3
    paused = world.wait(d.recover_code("a", "counter.z-0", "counter", 2, source=COUNTER,
                                       resume=False))
    assert paused["status"] == "Paused"
    with pytest.raises(RemoteError, match="bad_request"):
        world.wait(d._engine_request("a", "recover_code", {"instance_id": "q", "code_name":
                                                           "q", "epoch": 2}))


def test_a_cut_off_board_drops_its_stale_copy_when_it_comes_back(world: World) -> None:
    """The old owner was only cut off: it fenced itself (paused), and on reconnect it reads
    the owner record naming the new owner at a higher epoch, and drops its copy."""
    d = world.dispatcher
    iid = world.wait(d.run_code("a", "counter", COUNTER, instance_id="counter.w-0"))["id"]
    world.run(world.clock.now() + 0.5)
    cp = world.wait(d.checkpoint_code(iid))
    board = world.boards["a"]
    board.link.down()
    fence = board.engine.fence_s
    samples: list[list[str]] = []
    t0 = world.clock.now()
    for k in range(1, int((fence + 10) * 10)):
        world.at(t0 + k * 0.1, lambda: samples.append(running_copies(world, iid)))
    # the will comes 1.5 x keepalive after a is last heard of; the fence keepalive + fence_s
    world.run(t0 + 1.5 * world.keepalive + fence + 0.5)
    assert board.engine.fenced
    world.wait(d.recover_code("b", iid, "counter", cp["epoch"] + 1, snapshot=cp["snapshot"]))
    world.run(world.clock.now() + 1.0)
    board.link.up()
    world.run(t0 + fence + 12)
    assert iid not in board.engine.programs  # dropped, not resumed
    assert running_copies(world, iid) == ["b"]
    assert all(len(s) <= 1 for s in samples), samples
