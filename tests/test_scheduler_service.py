"""The scheduler service in simulation: its command topic, refusal of what does not fit,
recovery of a dead board's programs from their checkpoints (never two copies), a board
that comes back, rebalancing onto a new board, restart and standby takeover."""

from __future__ import annotations

import pytest
from sched_sim import COUNTER, Lab, app_doc, running_copies

from runtime import protocol as p
from runtime.rpc import RemoteError


def test_submit_pause_resume_kill_status_over_the_command_topic() -> None:
    lab = Lab()
    reply = lab.wait(lab.client.submit(app_doc(count=3)))
    token = reply["token"]
    assert reply["status"] == "Running" and not reply["failed"]
    assert len(reply["instances"]) == 3
    lab.run(1.0)
    assert sum(running_copies(lab.world).values()) == 3
    assert lab.wait(lab.client.pause(token))["status"] == "Paused"
    lab.run(0.5)
    assert sum(running_copies(lab.world).values()) == 0
    with pytest.raises(RemoteError, match="bad_state"):  # answered, not ignored
        lab.wait(lab.client.pause(token))
    assert lab.wait(lab.client.resume(token))["status"] == "Running"
    lab.run(0.5)
    assert sum(running_copies(lab.world).values()) == 3
    status = lab.wait(lab.client.status())
    assert status["role"] == "active" and status["apps"][token]["status"] == "Running"
    assert lab.wait(lab.client.report())["apps"][token]["name"] == "demo"
    # the same token again is the same application, not a second one
    again = lab.wait(lab.client.submit(app_doc(count=3), token=token))
    assert again["token"] == token
    lab.run(0.5)
    assert sum(running_copies(lab.world).values()) == 3
    assert lab.wait(lab.client.kill(token))["status"] == "Killed"
    lab.run(0.5)
    assert sum(running_copies(lab.world).values()) == 0
    with pytest.raises(RemoteError, match="not_found"):
        lab.wait(lab.client.kill("nosuch"))
    with pytest.raises(RemoteError, match="unknown_ctrl"):
        lab.wait(lab.client.request("fly"))
    with pytest.raises(RemoteError, match="bad_request"):
        lab.wait(lab.client.request("run_application", {"name": "x"}))
    with pytest.raises(RemoteError, match="bad_program"):
        lab.wait(lab.client.submit({"name": "bad", "components": [
            {"name": "x", "code": "def (:"}]}))
    events = [e["type"] for e in lab.scheduler.history]
    assert "scheduler-event" in events and "application" in events


def test_an_impossible_application_is_refused_whole_with_nothing_started() -> None:
    lab = Lab()
    # fits on no board (pinned to one that does not exist), the other component would
    doc = {"name": "big", "components": [
        {"name": "small", "code": COUNTER, "count": 2},
        {"name": "huge", "code": COUNTER, "count": 1, "capabilities": ["camera"]}]}
    with pytest.raises(RemoteError) as info:
        lab.wait(lab.client.submit(doc))
    assert info.value.code == "unplaceable" and "camera" in info.value.message
    lab.run(2.0)
    assert sum(running_copies(lab.world).values()) == 0
    assert not any(lab.world.boards[b].engine.programs for b in lab.world.boards)
    refused = [a for a in lab.wait(lab.client.status())["apps"].values()]
    assert refused[0]["status"] == "Refused" and "camera" in refused[0]["reason"]


def _recover_scenario(fault: str) -> tuple[Lab, str, dict]:
    lab = Lab(boards=3)
    token = lab.wait(lab.client.submit(app_doc(count=4)))["token"]
    lab.run(3.0)
    before = lab.where(token)
    victim = sorted(set(before.values()))[0]
    board = lab.world.boards[victim]
    if fault == "crash":
        board.crash()
    else:
        board.link.down()
    lab.run(30.0)
    return lab, victim, before


@pytest.mark.parametrize("fault", ["crash", "partition"])
def test_a_dead_boards_programs_run_elsewhere_from_checkpoints_never_twice(fault: str) -> None:
    lab, victim, before = _recover_scenario(fault)
    token = next(iter(lab.scheduler.apps))
    after = lab.where(token)
    moved = [iid for iid, e in before.items() if e == victim]
    assert moved and all(after[iid] != victim for iid in moved)
    copies = running_copies(lab.world)
    assert all(copies[iid] == 1 for iid in before), copies
    assert max(lab.max_copies.values()) == 1
    recoveries = [e["data"] for e in lab.scheduler.history
                  if e["type"] == "action" and e["data"].get("kind") == "recover"]
    assert len(recoveries) == len(moved) and all(r["ok"] for r in recoveries)
    assert all(r["checkpoint_epoch"] == 1 for r in recoveries)  # from a checkpoint
    if fault == "partition":  # the board comes back: its stale copies are dropped
        lab.world.boards[victim].link.up()
        lab.run(15.0)
        engine = lab.world.boards[victim].engine
        assert not any(iid in engine.programs for iid in moved)
        assert max(lab.max_copies.values()) == 1
        assert all(n == 1 for n in running_copies(lab.world).values())
    else:  # a crashed board reboots empty; nothing moves back, nothing doubles
        lab.world.boards[victim].reboot()
        lab.run(10.0)
        assert max(lab.max_copies.values()) == 1
        assert sorted(running_copies(lab.world)) == sorted(before)


def test_recovery_waits_the_fence_time_then_takes_under_a_second() -> None:
    lab, victim, before = _recover_scenario("crash")
    rows = [e for e in lab.scheduler.history if e["type"] == "action"
            and e["data"].get("kind") == "recover"]
    fence = lab.world.boards[victim].engine.fence_s
    for e in rows:
        d = e["data"]
        took = e["timestamp"] - d["died_at"]
        assert fence <= took < fence + 1.0, took


def test_a_new_board_joins_and_rebalancing_moves_work_to_it() -> None:
    lab = Lab(boards=1, rebalance_policy="rebalance", period_s=1000.0)
    # 3.6 cores: fits only because a desktop VM has 4 (its profile's cores, not 1)
    token = lab.wait(lab.client.submit(app_doc(count=6, memory_mb=100, cpu=0.6)))["token"]
    lab.run(2.0)
    assert set(lab.where(token).values()) == {"b0"}
    lab.world.add_board("b1", "desktop-vm")
    lab.run(10.0)
    where = lab.where(token)
    assert "b1" in set(where.values()), where
    moves = [e["data"] for e in lab.scheduler.history if e["type"] == "action"
             and e["data"].get("kind") == "migrate"]
    assert moves and all(m["ok"] for m in moves)
    assert max(lab.max_copies.values()) == 1


def test_a_restarted_scheduler_loses_and_duplicates_nothing() -> None:
    lab = Lab(boards=3)
    tokens = [lab.wait(lab.client.submit(app_doc(name=f"a{i}", count=2)))["token"]
              for i in range(3)]
    lab.wait(lab.client.pause(tokens[1]))
    lab.run(2.0)
    before = {t: lab.where(t) for t in tokens}
    lab.node.crash()
    lab.run(2.0)
    lab.world.boards["b0"].crash()  # while no scheduler runs
    lab.run(3.0)
    lab.node.reboot()  # a new process on the same store: takes the expired lease
    lab.run(25.0)
    status = lab.wait(lab.client.status())
    assert status["term"] == 2
    assert {t: a["status"] for t, a in status["apps"].items()} == \
        {tokens[0]: "Running", tokens[1]: "Paused", tokens[2]: "Running"}
    for t in tokens:
        assert set(lab.where(t)) == set(before[t])
    copies = running_copies(lab.world)
    assert sorted(copies) == sorted(iid for t in (tokens[0], tokens[2]) for iid in before[t])
    assert max(lab.max_copies.values()) == 1
    assert all(n == 1 for n in copies.values())


def test_a_standby_takes_over_and_two_are_never_active() -> None:
    lab = Lab(boards=3, lease_s=3.0, lease_margin_s=1.0)
    standby = lab.world.add_scheduler("scheduler-2", store=lab.node.store, **lab.config)
    actives: list[int] = []

    def watch() -> None:
        nodes = [lab.node, standby]
        actives.append(sum(1 for n in nodes if n.up and n.scheduler.active))
        lab.world.at(lab.world.clock.now() + 0.05, watch)

    watch()
    token = lab.wait(lab.client.submit(app_doc(count=3)))["token"]
    lab.run(3.0)
    assert not standby.scheduler.active
    before = lab.where(token)
    lab.node.crash()
    lab.run(8.0)
    assert standby.scheduler.active and standby.scheduler.term == 2
    assert lab.where(token) == before  # adopted as it was
    token2 = lab.wait(lab.client.submit(app_doc(name="second", count=2)))["token"]
    lab.run(2.0)
    assert len(lab.where(token2)) == 2
    lab.node.reboot()  # the old one comes back: standby now
    lab.run(5.0)
    assert not lab.node.scheduler.active and standby.scheduler.active
    assert max(actives) == 1
    assert max(lab.max_copies.values()) == 1
    assert sum(running_copies(lab.world).values()) == 5


def test_every_request_is_answered_even_malformed_ones() -> None:
    lab = Lab(boards=1)
    for ctrl, kwargs, code in [("pause_application", {}, p.BAD_REQUEST),
                               ("resume_application", {"token": "zz"}, p.NOT_FOUND),
                               ("status", {"token": "zz"}, p.NOT_FOUND),
                               ("run_application", {"name": "x", "components": []},
                                p.BAD_REQUEST)]:
        with pytest.raises(RemoteError) as info:
            lab.wait(lab.client.request(ctrl, kwargs))
        assert info.value.code == code


def test_a_scenario_with_a_scheduler_writes_scheduler_csv(tmp_path) -> None:
    from pathlib import Path

    from thingssim.sim.scenario import Scenario

    path = Path(__file__).parent.parent / "experiments" / "scenarios" / \
        "scheduler_recovery.toml"
    results = Scenario.from_toml(path).run()
    frame = results.scheduler
    recovered = frame[(frame.kind == "recover") & (frame.ok == True)]  # noqa: E712
    assert len(recovered) >= 1
    assert "scheduler.csv" in [p.name for p in results.save(tmp_path)]
    assert not any(status == "Lost" for status in results.programs.status)
