"""Issue 7's invariants on a real Mosquitto with real worker processes: faults injected at
each step of a live migration.

Each case runs a forever counter on board ``a``, asks a dispatcher to move it to board
``b``, and injects one fault exactly when an observer client sees the k-th protocol
message of the migration (1: ``restore_code`` request, 2: its reply, 3:
``commit_migration`` request, 4: its reply).  A *board* is a worker process in its own
process group, with its program processes: SIGKILL of the group is a power loss, SIGSTOP
a frozen board.  Faults:

- ``kill-source`` / ``kill-target``: SIGKILL, then the worker is started again with the
  same config (its journal in ``state_dir`` answers for what it decided);
- ``kill-source-for-good``: SIGKILL of the source, never restarted;
- ``freeze-source`` / ``freeze-target``: SIGSTOP for longer than the broker needs to drop
  the board (Mosquitto: ~5.3 s at a 1 s keepalive) and longer than the lease, then SIGCONT;
- ``broker-restart``: the broker (with persistence) stops cleanly and starts again on the
  same port after longer than ``fence_s``, so both engines fence themselves.

After each case: the console the observer saw is 0, 1, 2, ... with no repeat and no gap
(a lost program's console just stops); no registry report the observer saw ever left the
program Running on two engines at once; the dispatcher's ``move_code`` completes, and its
outcome is the target's decision (asked with ``migration_status``/``decide`` once a
prepared copy has lived out its lease): moved if and only if committed, else a clean
``migration_failed``; and the program ends up Running, and printing, on exactly that
engine (committed: the target, else the source), the other holding no copy -- or it is
reported Lost, on neither, when that engine was the one killed.

The four steps of one fault run concurrently (each step has its own boards, dispatcher
and observer; the broker restart, its own broker too), so the file takes about 75 s on
two busy cores.  Which interleaving a step gives (say, whether the target had processed
the commit before it froze) varies from run to run; each one must keep the invariants.

``test_move_code_reports_the_targets_decision_after_the_source_restarted`` reproduces a
dispatcher bug (two faults), fixed: once the source presumed abort, the target decides.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from harness import forever_counter
from mqtt_fixtures import _start, require_mosquitto
from waiting import until

from runtime import protocol as p
from runtime.clock import AsyncioClock
from runtime.dispatcher import Dispatcher
from runtime.rpc import RemoteError, RequestTimeout
from runtime.transport import Message

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 0.05
COUNTER = forever_counter(PERIOD)
FLEET_KEY = "test-fleet-snapshot-key"
KEEPALIVE, FENCE_S, LEASE_S, REQUEST_TIMEOUT = 1, 2.0, 5.0, 2.0
#: longer than Mosquitto's will for a silent client at a 1 s keepalive (~5.3 s), longer than
#: keepalive * 1.5 + fence_s, and longer than the lease
FREEZE_S = 6.5
BROKER_DOWN_S = FENCE_S + 0.8
STEPS = {1: "restore request", 2: "restore reply", 3: "commit request", 4: "commit reply"}
_ids = count(1)


@pytest.fixture(scope="module")
def broker():
    """Mosquitto with persistence: a frozen board's will and a broker restart need it."""
    require_mosquitto()
    handle = _start(config={"persistence": True})
    yield handle
    handle.stop()


class Board:
    """A worker process and its program processes, in a process group of their own."""

    def __init__(self, wid: str, url: str, tmp: Path, **config: Any) -> None:
        self.id, self.tmp = wid, tmp
        self.config = tmp / f"{wid}.json"
        self.config.write_text(json.dumps({
            "pubsub_url": url, "id": wid, "keepalive": KEEPALIVE, "fence_s": FENCE_S,
            "lease_s": LEASE_S, "request_timeout": REQUEST_TIMEOUT, "resource_period": 1.0,
            "state_dir": str(tmp / f"state-{wid}"), "snapshot_key": FLEET_KEY, **config}))
        self.log = tmp / f"{wid}.log"
        self.proc: subprocess.Popen | None = None
        self.lives = 0
        self.dead_for_good = False
        self.closed = False

    def start(self) -> Board:
        if self.closed:  # a restart due after the case ended (it failed early)
            return self
        self.lives += 1
        with open(self.log, "a") as log:
            log.write(f"---- life {self.lives}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.worker", str(self.config)], stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        return self

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        self.closed = True
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)  # and any program process left behind
        self.proc.wait()

    def journal(self) -> dict:
        path = self.tmp / f"state-{self.id}" / f"{self.id}.journal.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _transport(url: str, name: str) -> Any:
    from runtime.mqtt import MqttTransport

    return MqttTransport(url, client_id=f"{name}-{os.getpid()}-{time.time_ns()}",
                         loop=asyncio.get_running_loop())


class Lab:
    """Two boards, a dispatcher and an observer; one migration, faults at chosen steps.

    ``plan`` maps a step (:data:`STEPS`) to the faults injected the moment the observer
    sees it: ``kill-source``/``kill-target`` (SIGKILL, restarted 0.5 s later),
    ``kill-source-for-good``, ``freeze-source``/``freeze-target`` (SIGSTOP for
    ``freeze_s``), ``broker-restart``."""

    def __init__(self, broker: Any, tmp: Path, plan: dict[int, tuple[str, ...]],
                 freeze_s: float = FREEZE_S, board: dict | None = None,
                 move_timeout: float = 3.0) -> None:
        n = next(_ids)
        self.broker, self.plan, self.freeze_s = broker, plan, freeze_s
        self.move_timeout = move_timeout
        self.name = " + ".join(f"{fault} at {STEPS[step]}" for step, faults in plan.items()
                               for fault in faults)
        self.tmp = tmp / f"lab{n}"
        self.tmp.mkdir(parents=True)
        self.a = Board(f"a{n}", broker.url, self.tmp, **(board or {}))
        self.b = Board(f"b{n}", broker.url, self.tmp, **(board or {}))
        kills = any(f.startswith("kill") for faults in plan.values() for f in faults)
        self.dispatcher_config = {"id": f"tester-{n}", "request_timeout": 3.0,
                                  "migration_poll": 0.5,
                                  "lost_after": 1.0 if kills else 60.0}
        self.code = f"counter{n}"
        self.iid: str | None = None
        self.lines: list[str] = []
        self.events: list[tuple[float, str]] = []  # what the observer saw, timed
        self.steps: list[int] = []
        self.requests: dict[str, str] = {}  # request id -> ctrl (source to target)
        self.migration_id: str | None = None
        self.running_on: dict[str, tuple[str, int]] = {}  # engine -> (status, epoch)
        self.overlaps: list[str] = []
        self.killed: set[str] = set()
        self.restarting: list[Any] = []
        self.outcome = "?"
        self.t0 = time.monotonic()

    def note(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.t0, 3), what))

    # ---------------------------------------------------------------- observer
    def on_console(self, message: Message) -> None:
        lines = p.decode(message.payload)
        self.lines.extend(str(x) for x in (lines if isinstance(lines, list) else [lines]))

    def on_migrate(self, message: Message) -> None:
        if message.topic != f"{self.b.id}/migrate/{self.a.id}":
            return
        request = p.decode(message.payload)
        ctrl = request.get("ctrl")
        kwargs = request.get("kwargs") or {}
        self.note(f"{message.topic} {ctrl}")
        if self.iid is None or kwargs.get("instance_id") != self.iid:
            return
        self.migration_id = self.migration_id or kwargs.get("migration_id")
        self.requests[request.get("request_id")] = ctrl
        if ctrl == "restore_code":
            self.reached(1)
        elif ctrl == "commit_migration":
            self.reached(3)

    def on_reply(self, message: Message) -> None:
        if message.topic not in (f"{self.a.id}/reply", f"{self.a.id}/reply/{self.b.id}"):
            return
        reply = p.decode(message.payload)
        ctrl = self.requests.get(reply.get("reply_id"))
        if ctrl is None:
            return
        self.note(f"reply to {ctrl}: {reply.get('payload', reply.get('error'))!s:.100}")
        if ctrl == "restore_code":
            self.reached(2)
        elif ctrl == "commit_migration":
            self.reached(4)

    def on_command(self, message: Message) -> None:
        """The dispatcher's migrate_code and migration_status commands, and its replies."""
        payload = p.decode(message.payload)
        if message.topic in (f"{self.a.id}/cmd", f"{self.b.id}/cmd"):
            if payload.get("ctrl") in ("migrate_code", "migration_status"):
                self.requests[payload.get("request_id")] = \
                    f"{message.topic} {payload.get('ctrl')}"
                self.note(f"dispatcher: {message.topic} {payload.get('ctrl')}")
        elif payload.get("reply_id") in self.requests:
            self.note(f"dispatcher got from {self.requests[payload['reply_id']]}: "
                      f"{payload.get('payload', payload.get('error'))!s:.100}")

    def on_state(self, message: Message) -> None:
        """Every registry report: the program never Running on two engines at once."""
        try:
            report = p.decode(message.payload)
        except p.ProtocolError:
            return
        engine = report.get("id")
        if engine not in (self.a.id, self.b.id) or self.iid is None:
            return
        proc = (report.get("procs") or {}).get(self.iid)
        if proc is None or report.get("status") == "dead":
            self.running_on.pop(engine, None)
        else:
            self.running_on[engine] = (proc.get("status"), proc.get("epoch"))
        running = {e: v for e, v in self.running_on.items() if v[0] == "Running"}
        if len(running) > 1:
            self.overlaps.append(f"{time.monotonic() - self.t0:.3f}: {running}")
        self.note(f"registry {engine}: {report.get('status')} "
                  f"{self.running_on.get(engine)} ({report.get('eventName')})")

    def reached(self, step: int) -> None:
        if step in self.steps:
            return  # a retransmission, or a second commit after a status query
        self.steps.append(step)
        for fault in self.plan.get(step, ()):
            self.note(f"FAULT {fault} at step {step} ({STEPS[step]})")
            self.inject(fault)

    # ---------------------------------------------------------------- faults
    def inject(self, fault: str) -> None:
        loop = asyncio.get_running_loop()
        victim = self.b if "target" in fault else self.a
        if fault.startswith("kill"):
            victim.kill()
            self.killed.add(victim.id)
            victim.dead_for_good = fault.endswith("for-good")
            if not victim.dead_for_good:
                loop.call_later(0.5, lambda: (self.note(f"restart {victim.id}"),
                                              victim.start()))
        elif fault.startswith("freeze"):
            victim.signal(signal.SIGSTOP)
            loop.call_later(self.freeze_s, lambda: (self.note(f"thaw {victim.id}"),
                                                    victim.signal(signal.SIGCONT)))
        elif fault == "broker-restart":
            self.restarting.append(loop.run_in_executor(None, self.broker.restart,
                                                        BROKER_DOWN_S))
        else:
            raise ValueError(fault)

    # ---------------------------------------------------------------- the case
    async def run(self) -> None:
        self.a.start()
        self.b.start()
        try:
            await self._run()
        finally:  # (off the loop: the other cases' observers keep running meanwhile)
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, board.close)
                                   for board in (self.a, self.b)))
            self.dump()  # shown by pytest when the test fails (or with -s)

    def dump(self) -> None:
        print(f"==== {self.name} ({self.iid}, migration {self.migration_id}): {self.outcome}")
        for at, what in self.events:
            print(f"  {at:8.3f} {what}")
        print(f"console: {self.lines}")
        for board in (self.a, self.b):
            print(f"==== {board.id} journal {board.journal()}\n{board.log_tail()}")

    async def _run(self) -> None:
        url = self.broker.url
        observer = _transport(url, "observer")
        observer.subscribe(f"{self.code}/+/console", self.on_console, qos=1)
        observer.subscribe("+/migrate/+", self.on_migrate, qos=1)
        observer.subscribe("+/reply", self.on_reply, qos=1)  # (older engines)
        observer.subscribe("+/reply/+", self.on_reply, qos=1)  # <source>/reply/<target>
        observer.subscribe(p.ENGINE_STATE_PREFIX + "+", self.on_state, qos=1)
        observer.subscribe("+/cmd", self.on_command, qos=1)
        observer.subscribe(f"{self.dispatcher_config['id']}/reply", self.on_command, qos=1)
        observer.connect(keepalive=10)
        loop = asyncio.get_running_loop()
        d = Dispatcher(_transport(url, "dispatcher"), AsyncioClock(loop),
                       self.dispatcher_config).start()
        try:
            await until(lambda: self.up(d, self.a) and self.up(d, self.b), 30, "both engines")
            self.iid = (await d.run_code(self.a.id, self.code, COUNTER))["id"]
            await until(lambda: len(self.lines) >= 10, 10, "the first lines")
            self.note("migrate")
            moved = d.move_code(self.a.id, self.b.id, self.code, self.iid,
                                timeout=self.move_timeout)
            last = max(self.plan)
            await until(lambda: last in self.steps, 15, f"step {last} ({STEPS[last]})")
            for restart in self.restarting:
                await restart
                self.note("broker back")
            await self.settle(d, moved)
        finally:
            d.kill()
            observer.close()

    def up(self, d: Dispatcher, board: Board) -> bool:
        code = board.proc.poll()
        assert code is None, f"worker {board.id} exited ({code}):\n{board.log_tail()}"
        engine = d.engines.get(board.id)
        return engine is not None and engine.status != "dead"

    async def ask(self, d: Dispatcher, board: Board, ctrl: str, kwargs: dict,
                  timeout: float = 20.0) -> Any:
        """``ctrl`` to ``board`` (asked again while it does not answer: it may be
        restarting); None if its worker is gone for good."""
        deadline = time.monotonic() + timeout
        while not board.dead_for_good:
            try:
                return await d._engine_request(board.id, ctrl, kwargs, timeout=2.0)
            except RequestTimeout:
                assert time.monotonic() < deadline, f"{board.id} does not answer {ctrl}"
        return None

    async def decision(self, d: Dispatcher) -> str | None:
        """What the target decided, once it has (a prepared copy lives out its lease).
        Asked after move_code completed; ``decide``: a target that never heard of the
        migration journals it aborted rather than promise nothing."""
        deadline = time.monotonic() + LEASE_S + 15
        while True:
            answer = await self.ask(d, self.b, "migration_status",
                                    {"migration_id": self.migration_id, "decide": True})
            state = answer.get("state") if isinstance(answer, dict) else None
            if state != "prepared":
                return state
            assert time.monotonic() < deadline, "the target kept a prepared copy"
            await asyncio.sleep(0.2)

    async def settle(self, d: Dispatcher, moved: Any) -> None:
        try:
            result = await asyncio.wait_for(asyncio.shield(moved), 40)
            outcome = f"moved: {result.get('engine')}"
            assert result.get("engine") == self.b.id
        except RemoteError as exc:
            outcome = f"failed: {exc.code}"
            assert exc.code == p.MIGRATION_FAILED, exc
        except RequestTimeout as exc:  # (a dispatcher that does not ask the target)
            outcome = "source dead"
            assert self.a.dead_for_good, exc
        self.note(f"move_code: {outcome}")
        decision = await self.decision(d)
        self.note(f"the target's decision: {decision}")
        # the dispatcher's answer is the target's decision
        assert (decision == "committed") == outcome.startswith("moved"), (outcome, decision)
        owner = self.b if decision == "committed" else self.a
        killed = owner.id in self.killed
        if killed:  # the only copy died with its board: Lost, and nowhere running
            # ... unless the target died before its owner record left it: then nobody but
            # its journal knows it committed, and the source, in doubt, holds its copy
            # Paused (never resumed, never dropped on a guess)
            await until(lambda: d.programs[self.iid].status in ("Lost", "Paused"), 20,
                        f"the program reported Lost ({d.programs[self.iid].status})")
            await asyncio.sleep(1.5)  # past lost_after: Lost if the dispatcher can know
            for board in (self.a, self.b):
                procs = (await self.ask(d, board, "report", {}) or {}).get("procs", {})
                if d.programs[self.iid].status == "Paused" and board is self.a \
                        and owner is self.b:
                    assert procs.get(self.iid, {"status": "Paused"})["status"] == "Paused", \
                        procs  # held paused, or already dropped: never running
                else:
                    assert self.iid not in procs, (board.id, procs)
        else:
            await self.runs_on(d, owner)
        assert not self.overlaps, f"two engines reported the program Running: {self.overlaps}"
        numbers = [int(x) for x in self.lines]
        assert numbers == list(range(len(numbers))), f"repeat or gap: {numbers}"
        self.outcome = f"{outcome}; target decided {decision}; " + (
            "Lost" if killed else f"runs on {owner.id}") + f"; {len(numbers)} lines"

    async def runs_on(self, d: Dispatcher, owner: Board) -> None:
        """Exactly one copy, on ``owner``, Running and printing."""
        other = self.b if owner is self.a else self.a

        async def placement() -> tuple:
            mine = await self.ask(d, owner, "report", {})
            theirs = await self.ask(d, other, "report", {})
            assert mine is not None, f"{owner.id} is gone"
            return mine["procs"].get(self.iid, {}).get("status"), \
                sorted((theirs or {}).get("procs", {}))

        deadline = time.monotonic() + 20
        while True:
            status, others = await placement()
            if status == "Running" and self.iid not in others:
                break
            assert time.monotonic() < deadline, f"{owner.id}: {status}; {other.id}: {others}"
            await asyncio.sleep(0.2)
        printed = len(self.lines)
        await until(lambda: len(self.lines) >= printed + 10, 10, "the program printing")
        status, others = await placement()
        assert status == "Running" and self.iid not in others, (status, others)
        assert d.programs[self.iid].engine == owner.id, d.programs[self.iid]


def run_labs(labs: list[Lab]) -> None:
    async def main() -> None:
        results = await asyncio.gather(*(lab.run() for lab in labs), return_exceptions=True)
        for lab, result in zip(labs, results):
            print(f"{lab.name}: "
                  f"{result if isinstance(result, BaseException) else lab.outcome}")
        failures = [(lab, r) for lab, r in zip(labs, results) if isinstance(r, BaseException)]
        if failures:
            lab, error = failures[0]
            raise AssertionError(f"{lab.name}: {type(error).__name__}: {error}") from error

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["kill-source", "kill-source-for-good", "kill-target",
                                   "freeze-source", "freeze-target"])
def test_a_board_fault_at_each_step_of_a_migration(broker, tmp_path, fault):
    run_labs([Lab(broker, tmp_path, {step: (fault,)}) for step in STEPS])


def test_a_broker_restart_at_each_step_of_a_migration(tmp_path):
    """Mosquitto (persistence on) stops cleanly and starts again on its port, down for
    longer than ``fence_s``: both engines fence themselves mid-migration."""
    require_mosquitto()
    brokers = []
    try:
        for _ in STEPS:  # one broker per step: the four run at once
            brokers.append(_start(config={"persistence": True}))
        run_labs([Lab(broker, tmp_path, {step: ("broker-restart",)})
                  for broker, step in zip(brokers, STEPS)])
    finally:
        for broker in brokers:
            broker.stop()


def test_move_code_reports_the_targets_decision_after_the_source_restarted(broker, tmp_path):
    """The source dies just after sending commit_migration and restarts; the commit
    reaches the target late (it was frozen).  The dispatcher asks the restarted source
    (presumed abort: journaled aborted, ``presumed``), then the target (frozen: no
    answer), then the source again: now its journal says ``aborted`` without
    ``presumed``, and move_code fails -- but the target commits the copy once it thaws,
    and the program runs there."""
    run_labs([Lab(broker, tmp_path, {2: ("freeze-target",), 3: ("kill-source",)},
                  freeze_s=9.0, board={"lease_s": 20.0}, move_timeout=1.0)])
