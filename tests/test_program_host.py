"""The program model: timers, pub/sub, clock, statuses, pause/resume, crashes."""

from __future__ import annotations

import pytest
from harness import Run

from runtime import ProgramHost, ProgramStatus, VirtualClock
from runtime.topics import topic_matches


def test_events_at_the_same_time_run_in_scheduling_order():
    run = Run("""
        for name in "abcde":
            things.set_timeout(print, 1.0, name)
        things.set_immediate(print, "immediate")
        things.set_timeout(print, 0, "zero")
    """).run()
    assert run.output.split() == ["immediate", "zero", "a", "b", "c", "d", "e"]
    assert run.host.status is ProgramStatus.EXITED and run.host.exit_code == 0


def test_interval_period_and_clear_and_now():
    run = Run("""
        ticks = []
        def tick(tag):
            ticks.append(things.now())
            if len(ticks) == 3:
                things.clear_timer(timer)
                print(tag, ticks)
        timer = things.set_interval(tick, 0.5, "T")
    """).run()
    assert run.output == "T [0.5, 1.0, 1.5]\n"
    assert run.host.program_time() == 1.5


def test_import_things_and_identity():
    run = Run("""
        import things as t
        from things import now
        print(t is things, now(), things.code_name, things.instance_id)
    """, code_name="ident", instance_id="ident.7").run()
    assert run.output == "True 0.0 ident ident.7\n"


def test_publish_subscribe_wildcards_and_payload_types():
    run = Run("""
        def on(topic, payload):
            print(topic, repr(payload))
        things.subscribe("home/+/temp", on)
        things.subscribe("alarm/#", on)
        things.publish("home/kitchen/temp", {"c": 21.5})
        things.publish("home/kitchen/humidity", 40)
        things.publish("alarm", [1, 2])
        things.publish("alarm/fire/now", b"\\xff\\x00raw")
        things.publish("alarm/text", b'"json-in-bytes"')
        things.set_timeout(things.exit, 1)
    """).run()
    assert run.output.splitlines() == [
        "home/kitchen/temp {'c': 21.5}",
        "alarm [1, 2]",
        "alarm/fire/now b'\\xff\\x00raw'",
        "alarm/text 'json-in-bytes'",
    ]


def test_unsubscribe_one_callback_or_all():
    run = Run("""
        a = lambda t, p: print("a", p)
        b = lambda t, p: print("b", p)
        things.subscribe("x", a)
        things.subscribe("x", b)
        things.publish("x", 1)
        def later():
            things.unsubscribe("x", a)
            things.publish("x", 2)
            things.set_timeout(final, 1)
        def final():
            things.unsubscribe("x")
            things.publish("x", 3)
        things.set_timeout(later, 1)
    """).run()
    assert run.output.split("\n")[:-1] == ["a 1", "b 1", "b 2"]
    assert run.host.status is ProgramStatus.EXITED  # nothing left to wait for


def test_messages_are_copies_not_shared_objects():
    run = Run("""
        data = {"k": [1]}
        def on(t, p):
            p["k"].append(2)
            print(data, p)
            things.exit()
        things.subscribe("s", on)
        things.publish("s", data)
    """).run()
    assert run.output == "{'k': [1]} {'k': [1, 2]}\n"


def test_pause_stops_timers_and_queues_messages_then_resume_continues():
    run = Run("""
        def on(t, p): print("msg", p, things.now())
        things.subscribe("in", on)
        things.set_interval(lambda: print("tick", things.now()), 1.0)
    """)
    run.run(until=2.5)
    run.host.pause()
    assert run.host.status is ProgramStatus.PAUSED
    run.host.deliver("in", b'"queued-1"')
    run.host.deliver("in", b'"queued-2"')
    run.clock.run(until=100.0)  # a long pause: nothing runs, the program clock stops
    assert run.output.split("\n")[:-1] == ["tick 1.0", "tick 2.0"]
    assert run.host.program_time() == 2.5
    run.host.resume()
    run.clock.run(until=run.clock.now() + 1.0)
    assert run.output.split("\n")[2:-1] == ["msg queued-1 2.5", "msg queued-2 2.5", "tick 3.0"]


def test_a_crashing_callback_crashes_the_program_not_the_host():
    run = Run("""
        def boom():
            raise ValueError("sensor unplugged")
        things.set_timeout(boom, 1)
        things.set_interval(print, 0.4, "alive")
    """).run()
    assert run.host.status is ProgramStatus.CRASHED
    assert "ValueError: sensor unplugged" in run.host.error
    assert 'in boom' in run.host.error and "raise ValueError" in run.host.error
    assert run.output == "alive\nalive\n"
    assert run.host.pending_events == 0


def test_crash_at_top_level_and_sys_exit_and_things_exit_codes():
    assert Run("1/0").run().host.status is ProgramStatus.CRASHED
    host = Run("import sys\nsys.exit(4)").run().host
    assert (host.status, host.exit_code) == (ProgramStatus.EXITED, 4)
    host = Run("things.set_timeout(things.exit, 2, 7)").run().host
    assert (host.status, host.exit_code) == (ProgramStatus.EXITED, 7)
    host = Run("""
        def f():
            try:
                things.exit(3)
            except Exception:
                print("swallowed")
        things.set_immediate(f)
    """).run().host
    assert host.exit_code == 3


def test_bad_api_arguments_raise_in_the_program():
    run = Run("""
        for bad in (lambda: things.set_timeout(print, -1),
                    lambda: things.set_interval(print, 0),
                    lambda: things.set_timeout("not callable", 1),
                    lambda: things.subscribe("a/#/b", print),
                    lambda: things.publish("a/+", 1),
                    lambda: things.publish("a", object())):
            try:
                bad()
            except (TypeError, ValueError) as exc:
                print(type(exc).__name__)
    """).run()
    assert run.output.split() == ["ValueError", "ValueError", "TypeError", "TopicError",
                                  "TopicError", "TypeError"]


def test_kill_stops_everything():
    run = Run("things.set_interval(print, 1, 'x')")
    run.run(until=2)
    run.host.kill()
    run.clock.run(until=10)
    assert run.output == "x\nx\n" and run.host.status is ProgramStatus.EXITED


def test_horizon_runs_events_due_at_or_before_it():
    run = Run("things.set_interval(lambda: print(things.now()), 0.1)")
    run.host.set_horizon(0.3)
    run.run()
    assert run.output.split() == ["0.1", "0.2", "0.30000000000000004"]


@pytest.mark.parametrize(("flt", "topic", "expected"), [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "x/y", True), ("+/+", "a/b", True),
    ("+", "$SYS", False), ("#", "$SYS/x", False), ("a/+/c", "a/b/d", False),
])
def test_topic_matching(flt, topic, expected):
    assert topic_matches(flt, topic) is expected


def test_syntax_error_is_reported_at_load():
    with pytest.raises(SyntaxError):
        ProgramHost("def (:", clock=VirtualClock())


def test_status_hook_sees_every_transition():
    seen = []
    clock = VirtualClock()
    host = ProgramHost("things.set_timeout(print, 1)", clock=clock,
                       on_status=lambda h: seen.append(h.status.value))
    host.start()
    host.pause()
    host.resume()
    clock.run()
    assert seen == ["Running", "Paused", "Running", "Exited"]


def test_wall_time_keeps_running_while_the_program_clock_stands_still():
    """``things.time()`` is the host clock's wall time (the world's time when simulated);
    ``things.now()`` stops while the program is paused."""
    run = Run("""
        def tick():
            print(round(things.now(), 3), round(things.time(), 3))
        things.set_interval(tick, 1.0)
    """)
    run.run(1.5)
    run.host.pause()
    run.clock.run(until=11.5)
    run.host.resume()
    run.run(12.6)
    assert run.output.splitlines() == ["1.0 1.0", "2.0 12.0"]  # paused 10 s


CPU_READER = """
n = 0
def tick():
    global n
    n += 1
    print(n, things.cpu_time())
things.set_interval(tick, 0.1)
"""


def test_cpu_time_is_what_the_meter_charged_for_completed_events():
    """The injected hook's charge, not the measured seconds: the top level and every
    tick before this one (the running callback counts once it returns)."""
    clock = VirtualClock()
    lines: list[str] = []
    host = ProgramHost(CPU_READER, clock=clock, console=lines.append,
                       on_event=lambda h, seconds: 0.25)
    host.start()
    clock.run(until=0.35)
    assert "".join(lines).split("\n")[:3] == ["1 0.25", "2 0.5", "3 0.75"]
    assert host.cpu_time == 1.0 and host.events_run == 4


def test_cpu_time_without_a_meter_is_the_measured_time():
    clock = VirtualClock()
    lines: list[str] = []
    host = ProgramHost(CPU_READER, clock=clock, console=lines.append)
    host.start()
    clock.run(until=0.35)
    seen = [float(line.split()[1]) for line in lines if line.strip()]
    assert len(seen) == 3 and 0 < seen[0] <= seen[1] <= seen[2] <= host.cpu_time


def test_cpu_time_survives_a_snapshot_only_for_programs_that_read_it():
    """Kept across migrations (like the program's own counters); a program whose code
    never names ``cpu_time`` has nothing to keep, so its snapshot is as it always was."""
    from runtime.snapshot import dumps, loads

    clock = VirtualClock()
    host = ProgramHost(CPU_READER, clock=clock, on_event=lambda h, s: 0.25)
    host.start()
    clock.run(until=0.25)
    doc = loads(dumps(host.snapshot()))
    assert doc["loop"]["cpu_time"] == 0.75
    lines: list[str] = []
    moved = ProgramHost.restore(doc, clock=VirtualClock(), console=lines.append,
                                on_event=lambda h, s: 0.5)
    moved._clock.run(until=0.15)
    assert lines[0] == "3 0.75\n" and moved.cpu_time == 1.25
    plain = ProgramHost("things.set_interval(print, 0.1)", clock=VirtualClock(),
                        on_event=lambda h, s: 0.25)
    plain.start()
    assert "cpu_time" not in plain.snapshot()["loop"]


def test_a_snapshot_with_a_bad_cpu_time_is_refused():
    from runtime.snapshot import RestoreError, dumps, loads

    host = ProgramHost(CPU_READER, clock=VirtualClock())
    host.start()
    doc = loads(dumps(host.snapshot()))
    for bad in (-1.0, float("inf"), "1", True):
        doc["loop"]["cpu_time"] = bad
        with pytest.raises(RestoreError, match="cpu_time"):
            ProgramHost.restore(doc, clock=VirtualClock())
