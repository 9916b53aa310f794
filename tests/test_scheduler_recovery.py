"""Recovery corner cases of the scheduler in simulation: a rebooted board must not write
over its programs' newer owner records, and a gracefully stopped worker's programs are
recovered (a user's kill still ends them for good)."""

from __future__ import annotations

from typing import Any

from sched_sim import Lab, app_doc, running_copies

from runtime import protocol as p


def retained_owners(lab: Lab, iids: list[str]) -> dict[str, Any]:
    """Each instance's retained ``program-owner`` record as a client connecting now
    reads it (None: no record)."""
    got: dict[str, Any] = {iid: None for iid in iids}

    def on_record(message: Any) -> None:
        iid = message.topic[len(p.OWNER_PREFIX):]
        got[iid] = p.decode(message.payload) if message.payload else None

    for iid in iids:
        lab.transport.subscribe(p.owner_topic(iid), on_record, qos=1)
    lab.run(1.0)
    for iid in iids:
        lab.transport.unsubscribe(p.owner_topic(iid), on_record)
    return got


def test_a_rebooted_board_leaves_the_new_owners_record_alone() -> None:
    lab = Lab(boards=3)
    token = lab.wait(lab.client.submit(app_doc(count=4)))["token"]
    lab.run(3.0)
    before = lab.where(token)
    victim = sorted(set(before.values()))[0]
    moved = sorted(iid for iid, e in before.items() if e == victim)
    lab.world.boards[victim].crash()
    lab.run(30.0)  # fence, then recovery elsewhere at epoch 2
    after = lab.where(token)
    assert all(after[iid] != victim for iid in moved)
    lab.world.boards[victim].reboot()
    lab.run(15.0)  # past the engine's owner-record read (request_timeout)
    records = retained_owners(lab, moved)
    for iid in moved:
        record = records[iid]
        assert record is not None and record["engine"] == after[iid], record
        assert record["epoch"] == 2 and record.get("status") != "Lost", record
    assert not lab.world.boards[victim].engine.journal.owned  # disowned all the same
    programs = lab.scheduler.dispatcher.programs
    assert all(programs[iid].status == "Running" for iid in moved)
    assert max(lab.max_copies.values()) == 1
    assert all(n == 1 for n in running_copies(lab.world).values())


def test_a_rebooted_board_still_reports_what_nobody_took_as_lost() -> None:
    """No scheduler recovered it: the record still names the board, which says Lost."""
    from harness import forever_counter

    from thingssim.sim.world import World

    world = World(seed=1, keepalive=2.0)
    for name in ("a", "b"):
        world.add_board(name, "desktop-vm")
    d = world.add_dispatcher()
    world.run(1.0)
    iid = world.wait(d.run_code("a", "counter", forever_counter(0.1),
                                instance_id="counter.q-0"))["id"]
    world.run(world.clock.now() + 1.0)
    world.boards["a"].crash()
    world.run(world.clock.now() + 1.0)
    world.boards["a"].reboot()
    world.run(world.clock.now() + 3.0)  # the record names "a": Lost at once, no timeout
    assert d.programs[iid].status == "Lost"
    assert not world.boards["a"].engine.journal.owned


def test_a_gracefully_stopped_engines_programs_are_recovered_at_once() -> None:
    """``on_shutdown = "stop"`` (SIGTERM): the engine ends its programs and says why;
    the scheduler re-places them from their checkpoints without waiting a fence time."""
    lab = Lab(boards=3)
    token = lab.wait(lab.client.submit(app_doc(count=4)))["token"]
    lab.run(3.0)
    before = lab.where(token)
    victim = sorted(set(before.values()))[0]
    moved = sorted(iid for iid, e in before.items() if e == victim)
    stopped_at = lab.world.clock.now()
    lab.world.boards[victim].engine.stop()
    lab.run(3.0)  # well inside the engines' fence time (10 s)
    after = lab.where(token)
    assert all(after[iid] != victim for iid in moved), after
    copies = running_copies(lab.world)
    assert sorted(copies) == sorted(before) and all(n == 1 for n in copies.values())
    recoveries = [e for e in lab.scheduler.history if e["type"] == "action"
                  and e["data"].get("kind") == "recover"]
    assert sorted(e["data"]["instance"] for e in recoveries) == moved
    assert all(e["data"]["ok"] and e["data"]["checkpoint_epoch"] == 1 for e in recoveries)
    assert all(e["timestamp"] - stopped_at < 1.0 for e in recoveries)
    status = lab.wait(lab.client.status(token))
    assert all(v["status"] == "running" for v in status["instances"].values())


def test_a_users_kill_of_one_instance_still_ends_it_for_good() -> None:
    """An explicit kill (not ``engine-stop``) ends the instance: it is neither recovered
    nor run again by later cycles."""
    lab = Lab(boards=2, period_s=2.0)
    token = lab.wait(lab.client.submit(app_doc(count=2)))["token"]
    lab.run(2.0)
    victim = sorted(lab.where(token))[0]
    mark = len(lab.scheduler.history)
    lab.wait(lab.scheduler.dispatcher.kill_code(victim))
    lab.run(15.0)  # several periodic cycles
    copies = running_copies(lab.world)
    assert victim not in copies and len(copies) == 1
    again = [e for e in list(lab.scheduler.history)[mark:] if e["type"] == "action"
             and e["data"].get("instance") == victim and e["data"].get("kind") != "checkpoint"]
    assert not again, again
    rows = lab.wait(lab.client.status(token))["instances"]
    assert [v["status"] for v in rows.values() if v["id"] == victim] == ["ended"]


def test_a_newer_owner_record_ends_an_engine_stop_for_the_dispatcher() -> None:
    """Seen on real workers: the recovered copy's owner record (epoch 2, w2) came before
    its report, and the program view kept "Exited by engine-stop" with engine w2, so the
    scheduler took w2 for a stopping engine too.  A newer owner means it runs again."""
    from runtime.clock import VirtualClock
    from runtime.dispatcher import Dispatcher
    from runtime.memory import MemoryBroker

    clock = VirtualClock()
    broker = MemoryBroker(clock)
    d = Dispatcher(broker.client("d"), clock, {"id": "d"}).start()
    pub = broker.client("w")
    pub.connect()
    clock.run(0.1)
    iid = "seq.t-0"
    pub.publish(p.PROGRAM_MONITOR, p.encode(
        {"code_name": "seq", "instance_id": iid, "status": "Exited", "engine": "w1",
         "eventName": p.STOPPED_BY_ENGINE, "epoch": 1}), qos=1)
    clock.run(0.2)
    assert (d.programs[iid].status, d.programs[iid].event) == ("Exited", "engine-stop")
    pub.publish(p.owner_topic(iid), p.encode({"engine": "w2", "epoch": 2,
                                              "code_name": "seq"}), qos=1, retain=True)
    clock.run(0.3)
    prog = d.programs[iid]
    assert (prog.engine, prog.epoch, prog.status, prog.event) == ("w2", 2, "Running", None)
