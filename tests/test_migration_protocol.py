"""Issue 7's list of ways a migration used to go wrong, each as a test on the simulated
network (real engines and dispatcher, SimPy links and broker).

Every test checks the same promise: at no instant do two copies of the program run, its
console is 0, 1, 2, ... with no repeat and no gap, and once faults heal the program runs
on exactly one engine (or is reported Lost when the only copy died with its board).
"""

from __future__ import annotations

import asyncio
import json

import mqtt_fixtures
import pytest
from harness import consecutive, forever_counter
from test_real_workers import Workers
from test_real_workers import dispatcher as real_dispatcher
from waiting import until

from runtime import protocol as p
from runtime.program import ProgramStatus
from runtime.rpc import RemoteError
from thingssim.sim.network import DELIVER, DROP
from thingssim.sim.world import World

COUNTER = forever_counter(0.1)
broker = mqtt_fixtures.broker  # a real broker, for the real-worker test


class Checked:
    """A world whose every simulation step is checked for two running copies."""

    def __init__(self, n: int = 2, seed: int = 0, source: str = COUNTER,
                 **dispatcher: object) -> None:
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
        self.iid = self.world.wait(self.d.run_code("e0", "counter", source))["id"]
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


# ---------------------------------------------------------------- ended programs
def ending_counter(end: str) -> str:
    """Prints 0..9 every 0.1 s, then ends by ``end`` (a statement run after 9)."""
    return ("n = 0\n"
            "def tick():\n"
            "    global n\n"
            "    print(n)\n"
            "    n += 1\n"
            "    if n == 10:\n"
            f"        {end}\n"
            "timer = things.set_interval(tick, 0.1)\n")


#: how a program ends -> its source (the forever counter is killed), its final status
ENDINGS = {"exit": (ending_counter("things.clear_timer(timer)"), "Exited"),  # counter.py
           "crash": (ending_counter("raise RuntimeError('sensor gone')"), "Crashed"),
           "kill": (COUNTER, "Exited")}  # there is no Killed status: a kill ends Exited


def ended(how: str, **dispatcher: object) -> Checked:
    """A lab whose program has ended on e0, and the dispatcher has heard so."""
    source, status = ENDINGS[how]
    lab = Checked(source=source, **dispatcher)
    lab.after(0.5)
    if how == "kill":
        assert lab.world.wait(lab.d.kill_code(lab.iid)) == "Exited"
    lab.after(1.5)
    assert lab.world.boards["e0"].engine.programs[lab.iid].status.value == status
    assert lab.d.programs[lab.iid].status == status
    numbers = lab.console()  # no gap, no repeat
    assert how == "kill" or numbers == list(range(10))
    return lab


def migrate_timed(lab: Checked) -> tuple[object, list[float]]:
    """A migration to e1 (the dispatcher's own request timeout), and the simulated time
    at which its result completes."""
    done: list[float] = []
    fut = lab.d.move_code("e0", "e1", "counter", lab.iid)
    fut.add_done_callback(lambda _: done.append(lab.world.env.now))
    return fut, done


def assert_nothing_moved(lab: Checked, status: str, since: float) -> None:
    """The program stays ended on its source, which holds no migration; the target
    holds nothing (no copy, nothing prepared, no decision: it was never asked)."""
    source, target = (lab.world.boards[n].engine for n in ("e0", "e1"))
    assert source.programs[lab.iid].status.value == status
    assert source._busy == {} and source._outgoing == {} and source.migrations == []
    assert target.programs == {} and target._incoming == {} and target._prepared == {}
    assert target.journal.decisions == {}
    assert lab.running() == [] and lab.copies() == ["e0"]
    steps = [r for r in lab.world.network.trace_rows() if r["time"] >= since and
             r["event"] == "publish" and ("/migrate/" in (r["topic"] or "") or
                                          (r["topic"] or "").startswith("e1/cmd"))]
    assert steps == []


@pytest.mark.parametrize("how", ENDINGS)
def test_migrating_an_ended_program_fails_at_once_and_moves_nothing(how):
    """Was: a migrate_code whose bad_state reply was lost kept move_code waiting 35 s, and
    it then failed as "never committed on <target>" after asking the target to presume
    abort.  A dispatcher that heard the program end now fails it at once, sending nothing."""
    lab = ended(how)
    status = ENDINGS[how][1]
    t0 = lab.world.env.now
    fut, done = migrate_timed(lab)
    lab.after(1.0)
    assert fut.done() and done == [t0]  # no round trip: no reply to lose
    assert not [r for r in lab.world.network.trace_rows() if r["time"] >= t0 and
                r["event"] == "publish" and r["client"] == "dispatcher" and
                r["topic"] == "e0/cmd"]
    error = fut.exception()
    assert isinstance(error, RemoteError) and error.code == p.BAD_STATE
    assert "has ended" in error.message and status in error.message
    lab.after(60.0)  # past every timeout and lease: still nothing anywhere
    assert_nothing_moved(lab, status, t0)
    assert lab.d.programs[lab.iid].status == status
    assert lab.d.programs[lab.iid].engine == "e0"


@pytest.mark.parametrize("how", ENDINGS)
def test_the_source_refuses_an_ended_program_within_one_round_trip(how):
    """A dispatcher that has not heard of the end yet asks the source, which refuses
    with bad_state in one round trip, before anything reaches the target."""
    lab = ended(how)
    status = ENDINGS[how][1]
    lab.d.programs[lab.iid].status = "Running"  # its end report has not arrived yet
    t0 = lab.world.env.now
    fut, done = migrate_timed(lab)
    lab.after(1.0)
    assert fut.done() and done[0] - t0 < 0.05  # one round trip is about 1 ms here
    error = fut.exception()
    assert isinstance(error, RemoteError) and error.code == p.BAD_STATE
    assert "has ended" in error.message and status in error.message
    lab.after(60.0)
    assert_nothing_moved(lab, status, t0)


def test_a_lost_refusal_is_told_again_by_the_source_without_asking_the_target():
    """The source remembers the refused migration id: when the reply is lost, the
    dispatcher's migration_status query gets the refusal itself (bad_state, not a presumed
    abort), and the target is never asked to decide a migration it never saw."""
    lab = ended("exit", request_timeout=5.0, migration_poll=2.0)
    lab.d.programs[lab.iid].status = "Running"  # its end report has not arrived yet
    dropped: list[bytes] = []

    def lose_the_refusal(stage, client, topic, payload, qos):
        if stage == "downlink" and topic == "dispatcher/reply" and b"bad_state" in payload \
                and not dropped:
            dropped.append(payload)
            return DROP
        return DELIVER

    lab.world.network.intercept(lose_the_refusal)
    t0 = lab.world.env.now
    fut, done = migrate_timed(lab)
    lab.after(4.0)
    assert dropped and not fut.done()  # waiting for a reply that will never come
    lab.after(10.0)
    assert fut.done() and 5.0 + 2.0 <= done[0] - t0 < 5.0 + 2.0 + 0.05
    error = fut.exception()
    assert isinstance(error, RemoteError) and error.code == p.BAD_STATE
    assert "has ended" in error.message
    assert_nothing_moved(lab, "Exited", t0)
    source = lab.world.boards["e0"].engine
    answer = source._cmd_migration_status({"migration_id": next(iter(source._outcomes)),
                                           "decide": True})
    assert answer["state"] == "aborted" and answer["code"] == p.BAD_STATE
    assert "presumed" not in answer and source.journal.decisions == {}


def test_real_workers_refuse_to_migrate_an_ended_program(broker, tmp_path):
    """The same on worker processes (programs in child processes) on a real broker: the
    dispatcher fails it at once, the source refuses it in one round trip, the target
    never holds a copy."""
    workers = Workers(broker.url, tmp_path)
    workers.start("w1")
    workers.start("w2")

    async def main() -> None:
        d = await real_dispatcher(broker.url, ["w1", "w2"])
        iid = (await d.run_code("w1", "counter", ending_counter(
            "things.clear_timer(timer)")))["id"]
        await until(lambda: d.programs[iid].status == "Exited", what="the program's end")
        fut = d.move_code("w1", "w2", "counter", iid)
        assert fut.done()  # the dispatcher knew: nothing sent
        with pytest.raises(RemoteError) as known:
            await fut
        d.programs[iid].status = "Running"  # a dispatcher that has not heard of the end
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(RemoteError) as refused:
            await d.move_code("w1", "w2", "counter", iid)
        # the reply itself: a status poll could only follow the request timeout
        assert loop.time() - t0 < d.config.request_timeout
        for error in (known.value, refused.value):
            assert error.code == p.BAD_STATE
            assert "has ended" in error.message and "Exited" in error.message
        await until(lambda: d.engines["w1"].report.get("procs", {}).get(iid, {})
                    .get("status") == "Exited", what="w1 reporting the program Exited")
        assert d.engines["w2"].programs == []  # the target holds nothing
        d.kill()

    try:
        asyncio.run(main())
    finally:
        workers.stop_all()
