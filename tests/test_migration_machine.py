"""The migration state machines on their own (no transport, no clock), checked exhaustively.

``explore`` is a small explicit-state model checker: from the start of a migration it
tries every interleaving of message deliveries, losses, duplicates, timeouts (a timer may
fire at any moment: that is what "delayed past every timeout" means without a clock),
lease expiries and crashes of either side, up to a bound, and checks in every reached
state that the program never runs twice.  From every reached state it then lets the
network heal (everything delivered, in order) and checks the migration ends with exactly
one running copy, or none when the only committed copy died with its board.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import pytest

from runtime import migration as m
from runtime.journal import MemoryJournal


@dataclass
class Model:
    source: m.SourceMigration
    target: m.TargetMigration | None = None
    journal: MemoryJournal = field(default_factory=MemoryJournal)
    flight: list = field(default_factory=list)  # ("req", token, ctrl, kwargs) | ("rep", ...)
    timers: list = field(default_factory=list)  # source timers/timeouts: (kind, token)
    source_copy: str = "paused"  # paused | running | dropped | crashed
    target_copy: str = "none"  # none | prepared | running | paused | discarded | crashed
    source_resumed: bool = False
    target_activated: bool = False
    faults: int = 0
    crashed: str = ""

    def key(self) -> tuple:
        s, t = self.source, self.target
        return (s.phase, s._token, min(s.queries, 3), s._backoff,
                None if t is None else t.state, tuple(sorted(self.journal.decisions.items())),
                tuple(sorted(repr(x) for x in self.flight)), tuple(sorted(self.timers)),
                self.source_copy, self.target_copy, self.source_resumed,
                self.target_activated, self.faults, self.crashed)


def start(was_running: bool = True) -> Model:
    source = m.SourceMigration("mig", "prog.1", 1, was_running, {}, 100)
    model = Model(source)
    apply_source(model, source.start())
    return model


def apply_source(model: Model, outputs: list) -> None:
    for out in outputs:
        if isinstance(out, m.Request):
            model.flight.append(("req", out.token, out.ctrl, tuple(sorted(
                (k, v) for k, v in out.kwargs.items() if k != "snapshot"))))
            model.timers.append(("timeout", out.token))
        elif isinstance(out, m.Notify):
            model.flight.append(("req", 0, out.ctrl, ()))
        elif isinstance(out, m.Wait):
            model.timers.append(("wait", out.token))
        elif isinstance(out, m.Resume):
            assert model.source_copy == "paused"
            model.source_copy = "running" if model.source.was_running else "paused"
            model.source_resumed = True
        elif isinstance(out, m.Drop):
            model.source_copy = "dropped"


def apply_target(model: Model, outputs: list) -> dict | None:
    answer = None
    for out in outputs:
        if isinstance(out, m.Journal):
            model.journal.decide(out.migration_id, out.decision)
        elif isinstance(out, m.Activate):
            assert model.target_copy == "prepared"
            model.target_copy = "running" if out.resume else "paused"
            model.target_activated = True
        elif isinstance(out, m.Discard):
            model.target_copy = "discarded"
        elif isinstance(out, m.Answer):
            answer = out.payload
    if model.target is not None and model.target.state != m.PREPARED:
        model.target = None  # decided: the journal answers from now on
    return answer


def target_receives(model: Model, token: int, ctrl: str, kwargs: dict) -> None:
    """What CodeEngine does with each step (see its _cmd_restore_code/_commit/...)."""
    mid = "mig"
    reply: tuple
    if ctrl == m.RESTORE:
        if model.target is not None:
            reply = ("ok", {"status": "Paused"})
        elif model.journal.decision(mid) is not None:
            reply = ("err", "bad_state")
        else:
            model.target = m.TargetMigration(mid, "prog.1", kwargs["epoch"])
            model.target_copy = "prepared"
            reply = ("ok", {"status": "Paused"})
    elif ctrl == m.COMMIT:
        if model.target is None:
            reply = ("ok", m.decided_answer(mid, m.presume_abort(model.journal, mid)))
        else:
            reply = ("ok", apply_target(model, model.target.commit(kwargs["epoch"],
                                                                   kwargs["resume"])))
    elif ctrl == m.ABORT:
        if model.target is None:
            reply = ("ok", m.decided_answer(mid, m.presume_abort(model.journal, mid)))
        else:
            reply = ("ok", apply_target(model, model.target.abort()))
    else:
        reply = ("ok", apply_target(model, model.target.status()) if model.target else
                 m.decided_answer(mid, m.presume_abort(model.journal, mid)))
    if token:
        model.flight.append(("rep", token, reply[0], tuple(sorted(reply[1].items()))
                             if isinstance(reply[1], dict) else reply[1]))


def deliver(model: Model, item: tuple) -> None:
    if item[0] == "req":
        if model.crashed == "target-down":
            return
        target_receives(model, item[1], item[2], dict(item[3]))
    else:
        if model.source_copy == "crashed":
            return
        if ("timeout", item[1]) in model.timers:
            model.timers.remove(("timeout", item[1]))
        event = m.Replied(item[1], dict(item[3])) if item[2] == "ok" else \
            m.Refused(item[1], item[3], "refused")
        apply_source(model, model.source.handle(event))


def fire(model: Model, timer: tuple) -> None:
    model.timers.remove(timer)
    if model.source_copy == "crashed":
        return
    event = m.NoAnswer(timer[1]) if timer[0] == "timeout" else m.TimerFired(timer[1])
    apply_source(model, model.source.handle(event))


def successors(model: Model, max_faults: int):
    """Every next step: (label, new model)."""
    for i, item in enumerate(model.flight):
        nxt = copy.deepcopy(model)
        nxt.flight.pop(i)
        deliver(nxt, item)
        yield f"deliver {item[:3]}", nxt
        if model.faults < max_faults:
            lost = copy.deepcopy(model)
            lost.flight.pop(i)
            lost.faults += 1
            yield f"lose {item[:3]}", lost
            dup = copy.deepcopy(model)
            dup.faults += 1
            deliver(dup, item)  # delivered, and still in flight: a duplicate follows
            yield f"duplicate {item[:3]}", dup
    for timer in sorted(set(model.timers)):
        nxt = copy.deepcopy(model)
        fire(nxt, timer)
        yield f"fire {timer}", nxt
    if model.target is not None:
        nxt = copy.deepcopy(model)
        apply_target(nxt, nxt.target.lease_expired())
        yield "lease expires", nxt
    if not model.crashed and model.faults < max_faults:
        nxt = copy.deepcopy(model)  # the target's board crashes and reboots: journal kept
        nxt.crashed, nxt.faults = "target", nxt.faults + 1
        nxt.target = None
        if nxt.target_copy in ("prepared", "running", "paused"):
            nxt.target_copy = "crashed"
        yield "target crashes", nxt
        nxt = copy.deepcopy(model)
        nxt.crashed, nxt.faults = "source", nxt.faults + 1
        if nxt.source_copy in ("paused", "running"):
            nxt.source_copy = "crashed"
        yield "source crashes", nxt


def check_safe(model: Model, path: list[str]) -> None:
    running = [x for x in (model.source_copy, model.target_copy) if x == "running"]
    assert len(running) <= 1, f"two running copies after {path}"
    assert not (model.source_resumed and model.target_activated), \
        f"the program ran on from the same snapshot twice after {path}"


def heal(model: Model) -> Model:
    """No more faults: deliver in order, fire timers only when nothing is in flight."""
    model = copy.deepcopy(model)
    for _ in range(200):
        if model.flight:
            deliver(model, model.flight.pop(0))
        elif model.source.phase.final and model.target is None:
            break
        elif model.target is not None and model.source.phase.final:
            apply_target(model, model.target.lease_expired())
        elif model.timers:
            fire(model, model.timers[0])
        else:
            break
    return model


def check_live(model: Model, path: list[str]) -> None:
    end = heal(model)
    if end.source_copy != "crashed":
        assert end.source.phase.final, f"migration never ends after {path}"
    live = [x for x in (end.source_copy, end.target_copy) if x in ("running", "paused")]
    lost = end.source_copy == "crashed" or end.target_copy == "crashed"
    assert len(live) == 1 or (lost and not live), f"{live} after {path} -> {end}"


def explore(max_faults: int, max_depth: int, was_running: bool = True) -> int:
    first = start(was_running)
    seen = {first.key()}
    frontier = [(first, [])]
    for _ in range(max_depth):
        nxt_frontier = []
        for model, path in frontier:
            for label, nxt in successors(model, max_faults):
                key = nxt.key()
                if key in seen:
                    continue
                seen.add(key)
                steps = path + [label]
                check_safe(nxt, steps)
                check_live(nxt, steps)
                nxt_frontier.append((nxt, steps))
        frontier = nxt_frontier
    return len(seen)


#: steps explored from the start; 12 takes ~25 s per case (45,902 states), CI runs 10
DEPTH = int(os.environ.get("THINGSSIM_EXPLORE_DEPTH", "10"))


@pytest.mark.parametrize("was_running", [True, False])
def test_every_schedule_with_up_to_two_faults_is_safe_and_ends(was_running):
    states = explore(max_faults=2, max_depth=DEPTH, was_running=was_running)
    print(f"explored {states} distinct states (depth {DEPTH}, up to 2 faults)")
    assert states > 10_000 or DEPTH < 10  # the exploration really branched


def test_the_exploration_finds_a_planted_bug(monkeypatch):
    """The checker is not vacuous: a target that forgets to presume abort (the bug it
    found first) is caught."""
    monkeypatch.setattr(m, "presume_abort", lambda journal, mid: journal.decision(mid))
    with pytest.raises(AssertionError, match="after"):
        explore(max_faults=2, max_depth=8)


def test_the_happy_path():
    model = start()
    while model.flight:
        deliver(model, model.flight.pop(0))
    assert model.source.phase is m.Phase.COMMITTED
    assert (model.source_copy, model.target_copy) == ("dropped", "running")
    assert dict(model.journal.decisions) == {"mig": m.COMMITTED}


def test_after_the_commit_an_abort_is_answered_committed():
    target = m.TargetMigration("mig", "prog.1", 2)
    target.commit(2, True)
    assert target.abort() == [m.Answer({"state": m.COMMITTED, "migration_id": "mig",
                                        "instance_id": "prog.1", "epoch": 2})]
    assert target.lease_expired() == []


def test_a_source_in_doubt_backs_off_and_never_guesses():
    source = m.SourceMigration("mig", "prog.1", 1, True, {}, 10)
    token = source.start()[0].token
    commit = source.handle(m.Replied(token, {}))[0]
    delays = []
    event: object = m.NoAnswer(commit.token)
    for _ in range(8):
        wait = source.handle(event)[0]
        assert isinstance(wait, m.Wait) and source.phase is m.Phase.IN_DOUBT
        delays.append(wait.delay)
        query = source.handle(m.TimerFired(wait.token))[0]
        assert query.ctrl == m.STATUS
        event = m.NoAnswer(query.token)
    assert delays == sorted(delays) and delays[-1] == source.timing.query_max
    assert isinstance(source.handle(event)[0], m.Wait)
    assert source.handle(m.Replied(query.token, {"state": m.COMMITTED})) == []  # too late
    assert source.phase is m.Phase.IN_DOUBT
