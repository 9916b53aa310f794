"""Issue 7's list of ways a migration used to go wrong, each as a test on the simulated
network (real engines and dispatcher, SimPy links and broker).

Every test checks the same promise: at no instant do two copies of the program run, its
console is 0, 1, 2, ... with no repeat and no gap, and once faults heal the program runs
on exactly one engine (or is reported Lost when the only copy died with its board).
"""

from __future__ import annotations

import json

import pytest
from harness import consecutive, forever_counter

from runtime import protocol as p
from runtime.program import ProgramStatus
from runtime.rpc import RemoteError
from thingssim.sim.world import World

COUNTER = forever_counter(0.1)


class Checked:
    """A world whose every simulation step is checked for two running copies."""

    def __init__(self, n: int = 2, seed: int = 0, **dispatcher: object) -> None:
        self.world = World(seed)
        for i in range(n):
            self.world.add_board(f"e{i}", "raspberry-pi-3")
        self.d = self.world.add_dispatcher(**dispatcher)
        net = self.world.network
        self.observer = net.client("observer", net.add_link("observer"))
        self.lines: list[str] = []
        self.observer.subscribe("counter/+/console", lambda msg: self.lines.extend(
            json.loads(msg.payload)), qos=1)
        self.observer.connect()
        self.world.run(1.0)
        self.iid = self.world.wait(self.d.run_code("e0", "counter", COUNTER))["id"]
        self.max_running = 0

    def running(self) -> list[str]:
        return [b.name for b in self.world.boards.values() if b.up and
                (h := b.engine.programs.get(self.iid)) is not None and
                h.status is ProgramStatus.RUNNING]

    def copies(self) -> list[str]:
        return [b.name for b in self.world.boards.values() if b.up and
                self.iid in b.engine.programs]

    def run(self, until: float) -> None:
        env = self.world.env
        while env.peek() <= until:
            env.step()
            running = self.running()
            self.max_running = max(self.max_running, len(running))
            assert len(running) <= 1, f"two running copies at {env.now}: {running}"
        if until > env.now:
            env.run(until=until)

    def after(self, seconds: float) -> None:
        self.run(self.world.env.now + seconds)

    def migrate(self, source: str = "e0", target: str = "e1", timeout: float = 600):
        return self.d.move_code(source, target, "counter", self.iid, timeout=timeout)

    def until_prepared(self, target: str = "e1", limit: float = 5.0) -> None:
        engine = self.world.boards[target].engine
        deadline = self.world.env.now + limit
        while self.iid not in engine._prepared:
            assert self.world.env.now < deadline, "the target never prepared"
            self.world.env.step()

    def until_committed(self, target: str = "e1", limit: float = 5.0) -> None:
        """Step until the target has committed (its reply is on the wire, not arrived)."""
        self.until_prepared(target, limit)
        engine = self.world.boards[target].engine
        while self.iid in engine._prepared:
            self.world.env.step()

    def console(self) -> list[int]:
        """Every console line, as an observer on a perfect link saw it."""
        return consecutive(self.lines)


def test_a_commit_reply_delayed_past_the_timeout_never_rolls_back():
    """Was: abort after commit removed the running target copy; 100 values twice."""
    lab = Checked()
    lab.after(1.0)
    fut = lab.migrate()
    lab.until_committed()
    lab.world.boards["e1"].link.down()  # its reply to the commit is lost; cut for 15 s
    lab.after(15.0)
    lab.world.boards["e1"].link.up()
    lab.after(60.0)
    assert fut.done()
    assert len(lab.copies()) == 1 and lab.running() == lab.copies()
    numbers = lab.console()
    assert len(numbers) > 500  # ran before, and after the heal; never repeated


@pytest.mark.parametrize("victim", ["e0", "e1"])
@pytest.mark.parametrize("delay", [0.001, 0.005, 0.02, 0.05])
def test_a_15_s_link_down_of_either_side_a_few_ms_into_a_migration(victim, delay):
    """Was: 150 outputs published twice (the documented scenario)."""
    lab = Checked()
    lab.after(1.0)
    fut = lab.migrate()
    lab.after(delay)
    lab.world.boards[victim].link.down()
    lab.after(15.0)
    lab.world.boards[victim].link.up()
    lab.after(90.0)
    assert fut.done()
    assert len(lab.copies()) == 1 and lab.running() == lab.copies()
    numbers = lab.console()
    assert numbers[-1] >= 900  # it kept running; consecutive() checked no repeat or gap


def test_the_prepared_copy_is_invisible_and_unaddressable():
    """Was: commands to the target acted on the prepared copy: two running copies."""
    lab = Checked(3)
    lab.after(1.0)
    target = lab.world.boards["e1"].engine
    real_commit = target._migrate_cmds["commit_migration"]
    held: list = []
    target._migrate_cmds["commit_migration"] = lambda kw, src: held.append((kw, src)) or \
        (_ for _ in ()).throw(p.ProtocolError(p.INTERNAL, "held for the test"))
    fut = lab.migrate()
    lab.until_prepared()
    assert lab.iid not in target.status_report()["procs"]
    rpc = lab.d._requester
    answers = [rpc.request("e1/cmd", ctrl, {"instance_id": lab.iid, **extra}, 5.0)
               for ctrl, extra in [("resume_code", {}), ("kill_code", {}),
                                   ("migrate_code", {"engine": "e2"}), ("pause_code", {})]]
    lab.after(1.0)
    for answer in answers:
        assert isinstance(answer.exception(), RemoteError)
        assert answer.exception().code == p.MIGRATING
    target._migrate_cmds["commit_migration"] = real_commit
    lab.after(120.0)
    assert fut.done() and fut.exception() is None  # in doubt, asked again, committed
    assert lab.copies() == ["e1"] and lab.running() == ["e1"]
    lab.console()


def test_a_paused_program_arrives_paused():
    lab = Checked()
    lab.after(1.0)
    lab.world.wait(lab.d.pause_code(lab.iid))
    result = lab.world.wait(lab.migrate())
    assert result["status"] == "Paused" and result["engine"] == "e1"
    lab.after(2.0)
    host = lab.world.boards["e1"].engine.programs[lab.iid]
    assert host.status is ProgramStatus.PAUSED
    assert lab.d.programs[lab.iid].status == "Paused"


def test_a_partitioned_target_is_not_taken_for_dead():
    """Was: the will made the source resume while the target ran: split brain."""
    lab = Checked()
    lab.after(1.0)
    fut = lab.migrate()
    lab.until_committed()  # the target runs the program; cut it off before it answers
    lab.world.boards["e1"].link.down()
    lab.after(60.0)  # the will is out long ago; the source must still not resume
    assert lab.d.engines["e1"].status == "dead"
    assert lab.world.boards["e0"].engine.programs.get(lab.iid) is None or \
        lab.world.boards["e0"].engine.programs[lab.iid].status is not ProgramStatus.RUNNING
    lab.world.boards["e1"].link.up()
    lab.after(60.0)
    assert fut.done()
    assert len(lab.copies()) == 1 and lab.running() == lab.copies()
    lab.console()


def test_a_cut_off_engine_fences_itself_and_holds_its_outputs():
    lab = Checked()
    lab.after(1.0)
    engine = lab.world.boards["e0"].engine
    lab.world.boards["e0"].link.down()
    lab.after(engine.keepalive + engine.fence_s + 1.0)
    assert engine.fenced and engine.programs[lab.iid].status is ProgramStatus.PAUSED
    before = len(lab.d.programs[lab.iid].console)
    lab.world.boards["e0"].link.up()
    lab.after(10.0)
    assert not engine.fenced and engine.programs[lab.iid].status is ProgramStatus.RUNNING
    numbers = lab.console()  # held outputs were flushed in order: no gap
    assert len(numbers) > before + 50


def test_a_prepared_copy_whose_source_died_is_discarded_after_its_lease():
    lab = Checked()
    lab.after(1.0)
    lab.migrate()
    lab.until_prepared()
    lab.world.boards["e0"].crash()
    target = lab.world.boards["e1"].engine
    lab.after(target.timing.lease + 1.0)
    assert target.programs == {} and target._incoming == {}
    lab.after(lab.d.config.lost_after + 20.0)
    assert lab.d.programs[lab.iid].status == "Lost"  # its only committed copy died


def test_a_dropped_restore_resumes_the_source_and_abort_is_not_retried_forever():
    lab = Checked()
    lab.after(1.0)
    target = lab.world.boards["e1"].engine
    target._migrate_cmds["restore_code"] = lambda kw, src: held  # never answers
    held = lab.world.clock.create_future()
    fut = lab.migrate()
    lab.after(target.request_timeout + 1.0)
    assert isinstance(fut.exception(), RemoteError)
    source = lab.world.boards["e0"].engine
    assert source._busy == {} and source.programs[lab.iid].status is ProgramStatus.RUNNING
    aborts = [r for r in lab.world.network.trace_rows()
              if r["event"] == "publish" and (r["topic"] or "").startswith("e1/migrate/")]
    lab.after(120.0)
    later = [r for r in lab.world.network.trace_rows()
             if r["event"] == "publish" and (r["topic"] or "").startswith("e1/migrate/")]
    assert len(later) == len(aborts) <= 2  # restore, one abort: nothing more
    lab.console()


@pytest.mark.parametrize("when", ["before-commit", "after-commit"])
def test_a_target_crash_and_reboot_during_the_commit(when):
    """The source asks the rebooted target (its journal survives) instead of guessing."""
    lab = Checked()
    lab.after(1.0)
    board = lab.world.boards["e1"]
    real_commit = board.engine._migrate_cmds["commit_migration"]

    def crash(kwargs, source):
        if when == "after-commit":
            real_commit(kwargs, source)
        board.crash()
        raise p.ProtocolError(p.INTERNAL, "unreachable")

    board.engine._migrate_cmds["commit_migration"] = crash
    fut = lab.migrate()
    lab.after(30.0)
    assert not fut.done()  # in doubt: the source keeps its copy paused
    source = lab.world.boards["e0"].engine
    assert source.programs[lab.iid].status is ProgramStatus.PAUSED
    board.reboot()
    lab.after(60.0)
    assert fut.done()
    if when == "before-commit":
        assert isinstance(fut.exception(), RemoteError)
        assert lab.running() == ["e0"]
        lab.console()
    else:
        assert fut.exception() is None and lab.copies() == []
        assert lab.d.programs[lab.iid].status == "Lost"


def test_retained_messages_are_not_replayed_after_hops():
    world = World(0)
    for name in ("e0", "e1", "e2"):
        world.add_board(name)
    d = world.add_dispatcher()
    world.run(1.0)
    pub = world.network.client("pub", world.network.add_link("pub"))
    pub.connect()
    world.run(1.5)
    pub.publish("config/rate", b"5", qos=1, retain=True)
    world.run(2.0)
    listener = ("seen = []\n"
                "def on(topic, value):\n"
                "    seen.append(value)\n"
                "    print(len(seen), value)\n"
                "things.subscribe('config/rate', on)\n"
                "things.set_interval(lambda: None, 1.0)\n")
    iid = world.wait(d.run_code("e0", "listener", listener))["id"]
    world.run(world.env.now + 1.0)
    for source, target in (("e0", "e1"), ("e1", "e2")):
        world.wait(d.move_code(source, target, "listener", iid))
        world.run(world.env.now + 1.0)
    assert list(d.programs[iid].console) == ["1 5"]
    pub.publish("config/rate", b"7", qos=1, retain=True)  # a new value is delivered
    world.run(world.env.now + 1.0)
    assert list(d.programs[iid].console) == ["1 5", "2 7"]


def test_the_dispatcher_waits_for_the_outcome_by_id_past_its_request_timeout():
    lab = Checked(request_timeout=5.0, migration_poll=2.0)
    lab.after(1.0)
    target = lab.world.boards["e1"].engine
    real_commit = target._migrate_cmds["commit_migration"]
    target._migrate_cmds["commit_migration"] = lambda kw, src: (_ for _ in ()).throw(
        p.ProtocolError(p.INTERNAL, "not now"))
    fut = lab.d.move_code("e0", "e1", "counter", lab.iid)  # the 5 s default
    lab.after(15.0)
    assert not fut.done()  # past 5 s: asking the source by migration id (within the lease)
    target._migrate_cmds["commit_migration"] = real_commit
    lab.after(60.0)
    assert fut.exception() is None and fut.result()["engine"] == "e1"
    assert lab.d.programs[lab.iid].engine == "e1"


def test_owner_records_follow_the_program():
    lab = Checked()
    lab.after(1.0)
    lab.world.wait(lab.migrate())
    lab.after(1.0)
    lab.world.wait(lab.migrate("e1", "e0"))
    lab.after(1.0)
    owner = [r for r in lab.world.network.trace_rows() if r["event"] == "publish"
             and r["topic"] == p.owner_topic(lab.iid)]
    assert [r["client"] for r in owner] == ["e0", "e1", "e0"]  # run, then two commits
    assert lab.d.programs[lab.iid].epoch == 3


@pytest.mark.parametrize("reboot", [True, False])
def test_programs_csv_says_lost_when_the_only_copy_died(reboot):
    """Was: a crashed board's program stayed 'Running' in programs.csv."""
    from thingssim.sim.scenario import Scenario

    fault = {"at": 3.0, "type": "crash", "board": "a"}
    if reboot:
        fault["duration"] = 2.0
    results = Scenario.from_dict({
        "duration": 40.0, "seed": 1,
        "boards": [{"name": "a", "profile": "raspberry-pi-3"},
                   {"name": "b", "profile": "raspberry-pi-3"}],
        "programs": [{"name": "p", "board": "a", "source": COUNTER}],
        "faults": [fault],
    }).run()
    assert list(results.programs["status"]) == ["Lost"]


@pytest.mark.parametrize("reboot", [False, True])
def test_a_dispatcher_connecting_later_still_sees_the_lost_program(reboot):
    """``dispatch status`` is a dispatcher that connects after the fact: it learns each
    program's owner from the retained owner records, so a dead board's program is not
    forgotten (Unreachable), and Lost once the rebooted board's journal says so."""
    lab = Checked()
    lab.after(1.0)
    lab.world.boards["e0"].crash()
    lab.after(20.0)
    if reboot:
        lab.world.boards["e0"].reboot()
        lab.after(2.0)
    late = lab.world.add_dispatcher("late")
    lab.after(2.0)
    assert late.programs[lab.iid].status == ("Lost" if reboot else "Unreachable")
    assert late.programs[lab.iid].engine == "e0"
