"""SimEnvironment: a simpy.Environment that owns its queue through SimPy's public methods.

It must behave like SimPy's own environment for everything SimPy offers (processes,
timeouts, events, conditions, priorities, failures, ``run(until=...)``), checked here
against ``simpy.Environment`` on generated workloads, and add ``call_at``: callbacks at
exact times, ordered with SimPy's events by the same (time, priority, insertion) rule.
One known difference: after ``run(until=t)`` SimPy leaves its spent "until" event in the
queue (``peek()`` says ``t``); SimEnvironment keeps no such event.
"""

from __future__ import annotations

import random

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from thingssim.sim.clock import SimEnvironment, SimPyClock


def _workload(env: simpy.Environment, plan: list[tuple[int, list[int]]], log: list) -> None:
    """Processes that wait (quarter seconds, zeros included: many ties), trigger shared
    events and wait on them; every step is logged with the time."""
    shared = [env.event() for _ in range(3)]

    def proc(name: int, waits: list[int]):
        for k, wait in enumerate(waits):
            if wait % 5 == 4:  # trigger a shared event (once), others may wait on it
                event = shared[wait % 3]
                if not event.triggered:
                    event.succeed((name, k))
                    log.append((env.now, name, k, "succeed"))
            elif wait % 7 == 6:
                value = yield shared[wait % 3] | env.timeout(1.0)
                log.append((env.now, name, k, "woke", len(value.todict())))
            else:
                yield env.timeout(wait / 4)
                log.append((env.now, name, k, "timeout"))

    for name, waits in plan:
        env.process(proc(name, waits))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.lists(st.integers(0, 12), max_size=8)),
                max_size=8),
       st.sampled_from([None, 0.25, 1.0, 2.5, 7.0]))
def test_it_runs_simpy_workloads_exactly_like_simpy(plan, until):
    logs = []
    for env in (simpy.Environment(), SimEnvironment()):
        log: list = []
        _workload(env, plan, log)
        env.run(until=until)
        logs.append((log, env.now))
    assert logs[0] == logs[1]


def test_call_at_interleaves_with_simpy_events_by_time_priority_and_order():
    env = SimEnvironment()
    log = []

    def proc():
        yield env.timeout(1.0)
        log.append(("timeout", env.now))
        env.call_at(1.0, log.append, ("call scheduled at 1.0 from the process", env.now))
        yield env.timeout(0)
        log.append(("timeout 0", env.now))

    env.call_at(1.0, log.append, ("call at 1.0, scheduled first", 0.0))
    env.process(proc())
    env.call_at(1.0, log.append, ("call at 1.0, scheduled after the process", 0.0))
    env.call_at(0.5, log.append, ("call at 0.5", 0.0))
    env.run()
    # the process's first timeout is made when it starts (its Initialize event, at 0):
    # after both calls at 1.0 were scheduled
    assert [entry[0] for entry in log] == [
        "call at 0.5", "call at 1.0, scheduled first",
        "call at 1.0, scheduled after the process", "timeout",
        "call scheduled at 1.0 from the process", "timeout 0"]


def test_call_at_wakes_at_exactly_the_time_asked_where_now_plus_delay_would_not():
    env = SimEnvironment()
    seen = []
    env.call_at(0.2, lambda: env.call_at(0.9, lambda: seen.append(env.now)))
    assert 0.2 + (0.9 - 0.2) != 0.9  # what a delay-based schedule would wake at
    env.run()
    assert seen == [0.9]


def test_call_at_in_the_past_runs_now_and_cancel_stops_it():
    env = SimEnvironment()
    seen = []
    env.call_at(2.0, lambda: env.call_at(1.0, lambda: seen.append(("late", env.now))))
    handle = env.call_at(3.0, lambda: seen.append(("cancelled", env.now)))
    env.call_at(2.5, lambda: env.cancel(handle))
    env.run()
    assert seen == [("late", 2.0)] and env.now == 3.0  # its slot still passes by


def test_run_until_stops_where_simpy_stops_and_resumes():
    for env in (simpy.Environment(), SimEnvironment()):
        log = []

        def at(t, label, env=env, log=log):
            def proc():
                yield env.timeout(t)
                log.append(label)
            env.process(proc())

        at(1.0, "a")
        at(2.0, "b (due at until: not run yet)")
        env.run(until=2.0)
        assert log == ["a"] and env.now == 2.0
        env.run(until=3.0)
        assert log == ["a", "b (due at until: not run yet)"] and env.now == 3.0
        with pytest.raises(ValueError, match="must be greater"):
            env.run(until=3.0)


def test_run_until_an_event_returns_its_value_and_failures_crash_like_simpy():
    env = SimEnvironment()
    done = env.timeout(2.0, value="v")
    assert env.run(until=done) == "v" and env.now == 2.0
    for kind in (simpy.Environment, SimEnvironment):
        env = kind()
        env.event().fail(KeyError("boom"))
        with pytest.raises(KeyError, match="boom"):
            env.run()
        env = kind()
        failed = env.event()
        failed.fail(KeyError("defused"))
        failed.defused = True
        env.run()  # a defused failure does not crash


def test_the_clock_needs_a_sim_environment():
    with pytest.raises(TypeError, match="SimEnvironment"):
        SimPyClock(simpy.Environment())


def test_same_seeded_random_schedule_gives_the_same_order_in_both_environments():
    """Many callbacks and timeouts at colliding times: the order is (time, priority,
    insertion) in both, with call_at in SimEnvironment standing for a timeout made at the
    same moment (dyadic times, so the plain environment's delays are exact too)."""
    rng = random.Random(5)
    times = [rng.randrange(0, 40) / 8 for _ in range(300)]
    orders = []
    for env in (simpy.Environment(), SimEnvironment()):
        log: list = []
        for i, t in enumerate(times):
            if isinstance(env, SimEnvironment) and i % 2:
                env.call_at(t, log.append, (i, t))
            else:
                env.timeout(t).callbacks.append(lambda _e, i=i, t=t, log=log: log.append((i, t)))
        env.run()
        orders.append(log)
    assert orders[0] == orders[1]
    assert orders[0] == sorted(orders[0], key=lambda e: e[1])


def test_is_past_tells_entries_before_the_one_being_processed():
    env = SimEnvironment()
    before = (1.0, 1, next(env._seq))  # as if queued now, for time 1.0
    verdicts = []
    env.call_at(1.0, lambda: verdicts.append((env.is_past(before), env.is_past(after),
                                              env.is_past((0.999, 1, 10**9)))))
    after = (1.0, 1, next(env._seq))
    env.run(until=1.0)
    assert not env.is_past(before)  # due at 1.0 exactly: run(until=1.0) stops before it
    env.run(until=2.0)
    assert verdicts == [(True, False, True)]
    assert env.is_past(after) and not env.is_past((2.0, 1, next(env._seq)))
