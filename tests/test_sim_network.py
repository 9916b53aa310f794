"""The simulated MQTT network (thingssim.sim.network) and the SimPy clock."""

from __future__ import annotations

import pandas as pd
import pytest
import simpy

from runtime.future import InvalidStateError
from runtime.transport import Message
from thingssim.sim.clock import SimEnvironment, SimFuture, SimPyClock
from thingssim.sim.network import PUBLISH_OVERHEAD, BrokerProfile, LinkProfile, Network

FAST = LinkProfile(latency=0.001, bandwidth=100e6)


def world(seed: int = 1, broker: BrokerProfile | None = None, trace: bool = True,
          **kwargs):
    env = SimEnvironment()
    return env, Network(env, seed=seed, broker=broker or BrokerProfile(), trace=trace,
                        **kwargs)


def recorder(env, into: list):
    return lambda message: into.append((env.now, message))


def at(net: Network, when: float, fn) -> None:
    net.clock.call_at(when, fn)


# --------------------------------------------------------------------------- clock
def test_clock_same_time_callbacks_run_in_scheduling_order_and_cancel():
    env = SimEnvironment()
    clock = SimPyClock(env)
    order = []
    for name in "abcde":
        clock.call_at(1.0, lambda n=name: order.append((clock.now(), n)))
    early = clock.call_at(0.5, lambda: order.append((clock.now(), "early")))
    doomed = clock.call_at(1.0, lambda: order.append("cancelled"))
    clock.cancel(doomed)
    env.run()
    assert order == [(0.5, "early")] + [(1.0, n) for n in "abcde"]
    clock.cancel(early)  # cancelling a fired callback is a no-op
    clock.cancel(doomed)


def test_clock_wakes_at_exactly_the_requested_time_and_clamps_the_past():
    env = SimEnvironment()
    clock = SimPyClock(env)
    seen = []

    def first():
        seen.append(clock.now())
        clock.call_at(0.1 + 0.2, lambda: seen.append(clock.now()))  # not 0.1 + (0.3 - 0.1)
        clock.call_at(0.0, lambda: seen.append(("past", clock.now())))

    clock.call_at(0.1, first)
    env.run()
    assert seen == [0.1, ("past", 0.1), 0.1 + 0.2]


def test_clock_interleaves_with_simpy_processes_in_order():
    env = SimEnvironment()
    clock = SimPyClock(env)
    order = []

    def proc():
        yield env.timeout(1.0)
        order.append("process")

    clock.call_at(1.0, lambda: order.append("before"))
    env.process(proc())
    env.run(until=0.5)
    clock.call_at(1.0, lambda: order.append("after"))
    env.run()
    assert order == ["before", "process", "after"]


class Rejected(Exception):
    """An exception whose __init__ does not take its own args (like RequestTimeout)."""

    def __init__(self, topic: str, timeout: float) -> None:
        super().__init__(f"no reply on {topic} within {timeout}")
        self.topic = topic
        self.timeout = timeout


def test_simfuture_yielded_by_a_process_success_and_exception():
    env = SimEnvironment()
    clock = SimPyClock(env)
    ok, bad = clock.create_future(), clock.create_future()
    assert isinstance(ok, SimFuture) and isinstance(ok, simpy.Event)
    outcome = []

    def waiter():
        value = yield ok
        outcome.append((env.now, value))
        try:
            yield bad
        except Rejected as exc:
            outcome.append((env.now, type(exc), str(exc), exc.topic, exc.timeout))

    env.process(waiter())
    clock.call_at(1.0, lambda: ok.set_result(42))
    clock.call_at(2.0, lambda: bad.set_exception(Rejected("a/cmd", 30.0)))
    env.run()
    assert outcome == [(1.0, 42), (2.0, Rejected, "no reply on a/cmd within 30.0", "a/cmd",
                                    30.0)]
    assert ok.done() and ok.result() == 42 and ok.exception() is None
    assert isinstance(bad.exception(), Rejected)
    # inside a SimPy condition (a future or a timeout) as well
    third = clock.create_future()
    caught = []

    def racer():
        try:
            yield third | env.timeout(10)
        except Rejected as exc:
            caught.append((env.now, exc.topic))

    env.process(racer())
    clock.call_at(env.now + 1, lambda: third.set_exception(Rejected("b/cmd", 1.0)))
    env.run()
    assert caught == [(3.0, "b/cmd")]
    with pytest.raises(Rejected):
        bad.result()


def test_simfuture_failure_nobody_waits_for_does_not_crash_and_callbacks_run():
    env = SimEnvironment()
    clock = SimPyClock(env)
    fut = clock.create_future()
    calls = []
    fut.add_done_callback(lambda f: calls.append(("early", env.now, f.exception())))
    with pytest.raises(InvalidStateError):
        fut.result()
    with pytest.raises(InvalidStateError):
        fut.exception()
    assert not fut.done()
    clock.call_at(3.0, lambda: fut.set_exception(ValueError("boom")))
    env.run()  # must not raise
    assert fut.done() and isinstance(fut.exception(), ValueError)
    fut.add_done_callback(lambda f: calls.append(("late", env.now)))  # runs at once
    assert [c[:2] for c in calls] == [("early", 3.0), ("late", 3.0)]
    with pytest.raises(InvalidStateError):
        fut.set_result(1)
    with pytest.raises(InvalidStateError):
        fut.set_exception(ValueError())


# --------------------------------------------------------------------------- routing
def test_wildcard_routing_fan_out_one_copy_per_client_and_qos_downgrade():
    env, net = world()
    clients = {name: net.client(name, net.add_link(name, FAST)) for name in "pabcdef"}
    got = {name: [] for name in clients}
    rec = {name: recorder(env, got[name]) for name in clients}
    clients["a"].subscribe("home/+/temp", rec["a"])
    clients["b"].subscribe("home/#", rec["b"], qos=0)
    clients["c"].subscribe("home/kitchen/temp", rec["c"])
    clients["d"].subscribe("office/#", rec["d"])
    clients["e"].subscribe("#", rec["e"])
    # f: two matching filters, two handlers, plus one handler under both filters
    both = []
    clients["f"].subscribe("home/+/temp", recorder(env, got["f"]), qos=0)
    clients["f"].subscribe("home/kitchen/#", lambda m: both.append(m), qos=1)
    shared = []
    clients["f"].subscribe("home/+/temp", shared.append)
    clients["f"].subscribe("home/kitchen/#", shared.append)
    for c in clients.values():
        c.connect()
    at(net, 1.0, lambda: clients["p"].publish("home/kitchen/temp", b"21.5", qos=1))
    at(net, 1.1, lambda: clients["p"].publish("$SYS/load", b"1", qos=0))
    env.run(until=2.0)
    for name in "abcef":
        assert [m.payload for _, m in got[name]] == [b"21.5"], name
    assert got["d"] == []
    assert got["a"][0][1].qos == 1 and got["b"][0][1].qos == 0
    assert got["f"][0][1].qos == 1  # highest matching subscription qos wins
    assert len(both) == 1 and len(shared) == 1
    frame = net.messages_frame()
    delivered = frame[frame.event == "deliver"]
    assert sorted(delivered.client) == ["a", "b", "c", "e", "f"]  # one copy each, no $SYS
    assert net.delivered == 5 and net.published == 2


def test_publisher_receives_its_own_messages_and_unsubscribe_stops_delivery():
    env, net = world()
    me = net.client("me", net.add_link("me", FAST))
    got = []
    handler = recorder(env, got)
    me.subscribe("t/#", handler)
    me.connect()
    at(net, 1.0, lambda: me.publish("t/1", b"a"))
    at(net, 2.0, lambda: me.unsubscribe("t/#", handler))
    at(net, 3.0, lambda: me.publish("t/1", b"b"))
    env.run(until=4.0)
    assert [m.payload for _, m in got] == [b"a"]


def test_per_topic_fifo_under_jitter():
    env, net = world(seed=7)
    jittery = LinkProfile(latency=0.01, bandwidth=10e6, jitter=0.05)
    pub = net.client("pub", net.add_link("pub", jittery))
    sub = net.client("sub", net.add_link("sub", jittery))
    got = []
    sub.subscribe("seq/#", recorder(env, got), qos=0)
    pub.connect()
    sub.connect()

    def producer():
        yield env.timeout(1.0)
        for i in range(300):
            pub.publish(f"seq/{i % 3}", str(i).encode())
            yield env.timeout(0.002)

    env.process(producer())
    env.run(until=5.0)
    for topic in ("seq/0", "seq/1", "seq/2"):
        values = [int(m.payload) for _, m in got if m.topic == topic]
        assert values == sorted(values) and len(values) == 100
    latencies = net.messages_frame().query("event == 'deliver'").latency
    assert latencies.max() - latencies.min() > 0.02  # jitter did vary the delays
    assert latencies.min() >= 0.02


# --------------------------------------------------------------------------- timing
def test_one_megabyte_on_ten_megabit_links_exact_arrival():
    service = 0.002
    env, net = world(broker=BrokerProfile(service_time=service))
    up = LinkProfile(latency=0.015, bandwidth=10e6)
    down = LinkProfile(latency=0.025, bandwidth=10e6)
    pub = net.client("pub", net.add_link("pub", up))
    sub = net.client("sub", net.add_link("sub", down))
    got = []
    sub.subscribe("big", recorder(env, got))
    pub.connect()
    sub.connect()
    payload = bytes(1_000_000)
    at(net, 1.0, lambda: pub.publish("big", payload, qos=0))
    env.run(until=10.0)
    wire = len("big") + len(payload) + PUBLISH_OVERHEAD
    tx = wire * 8.0 / 10e6
    expected = 1.0 + tx + 0.015 + service + tx + 0.025
    assert len(got) == 1
    arrival = got[0][0]
    assert arrival == pytest.approx(expected, rel=0, abs=1e-12)
    assert arrival - 1.0 >= 2 * 0.8 + 0.015 + 0.025
    row = net.messages_frame().query("event == 'deliver'").iloc[0]
    assert row.bytes == wire and row.latency == pytest.approx(expected - 1.0, abs=1e-12)


def test_link_serialises_messages_fifo():
    env, net = world()
    slow = LinkProfile(latency=0.01, bandwidth=80_000)  # 10 kB/s
    pub = net.client("pub", net.add_link("pub", slow))
    sub = net.client("sub", net.add_link("sub", LinkProfile(latency=0.0, bandwidth=1e12)))
    got = []
    sub.subscribe("q", recorder(env, got))
    pub.connect()
    sub.connect()
    payload = bytes(1000 - 1 - PUBLISH_OVERHEAD)  # 1000 wire bytes: 0.1 s each

    def burst():
        for _ in range(3):
            pub.publish("q", payload)

    at(net, 1.0, burst)
    env.run(until=3.0)
    assert [t for t, _ in got] == pytest.approx([1.11, 1.21, 1.31], abs=1e-6)


def test_broker_service_time_queues_fifo():
    service = 0.05
    env, net = world(broker=BrokerProfile(service_time=service))
    sub = net.client("sub", net.add_link("sub", LinkProfile(latency=0.0, bandwidth=1e12)))
    pubs = [net.client(f"p{i}", net.add_link(f"p{i}", LinkProfile(latency=0.01,
                                                                   bandwidth=1e12)))
            for i in range(5)]
    got = []
    sub.subscribe("load/+", recorder(env, got))
    for c in [sub, *pubs]:
        c.connect()

    def burst():
        for i, p in enumerate(pubs):
            p.publish(f"load/{i}", b"x")

    at(net, 2.0, burst)
    env.run(until=4.0)
    assert [m.topic for _, m in got] == [f"load/{i}" for i in range(5)]
    expected = [2.0 + 0.01 + service * (k + 1) for k in range(5)]
    assert [t for t, _ in got] == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- QoS
def _stream(env, net, pub, topic, n, qos, start=1.0, period=0.01):
    def producer():
        yield env.timeout(start)
        for i in range(n):
            pub.publish(topic, str(i).encode(), qos=qos)
            yield env.timeout(period)

    env.process(producer())


def _lossy_stream(loss: float, seed: int, n: int, period: float):
    """QoS 0 from a publisher on a lossy uplink to a subscriber on a clean one: (arrival
    times, payloads, the uplink's retransmission count)."""
    env, net = world(seed=seed)
    pub = net.client("pub", net.add_link("pub", LinkProfile(latency=0.001, loss=loss)))
    sub = net.client("sub", net.add_link("sub", FAST))
    got = []
    sub.subscribe("x", recorder(env, got), qos=0)
    pub.connect()
    sub.connect()
    _stream(env, net, pub, "x", n, qos=0, period=period)
    env.run(until=1.0 + n * period + 5.0)
    assert len(got) == net.delivered and net.dropped == 0
    return [t for t, _ in got], [int(m.payload) for _, m in got], \
        net.links["pub"].up_dir.losses


def test_qos0_over_a_lossy_link_arrives_all_in_order_an_rto_late_per_loss():
    """TCP-like loss (thingssim.sim.link): nothing is lost or reordered; a lost (one
    segment) PUBLISH arrives one RTO later.  Messages 0.5 s apart, so no message waits
    behind another's retransmission: each is either on time or exactly RTO late."""
    from thingssim.sim.link import RTO

    n = 400
    lossy, values, losses = _lossy_stream(0.2, seed=3, n=n, period=0.5)
    clean, _, none = _lossy_stream(0.0, seed=3, n=n, period=0.5)
    assert values == list(range(n)) and none == 0
    extra = [a - b for a, b in zip(lossy, clean)]
    late = [e for e in extra if e > 1e-9]
    assert late == pytest.approx([RTO] * len(late)) and len(late) == losses
    assert 0.14 < losses / n < 0.26  # PUBLISH segments lost at 20% (seeded)
    assert sum(extra) == pytest.approx(RTO * losses)


def test_a_retransmission_holds_up_what_follows_in_order():
    """Back to back, a message behind a retransmitted one waits for it (head-of-line
    blocking): arrivals never go backwards, every message arrives."""
    times, values, losses = _lossy_stream(0.05, seed=4, n=2000, period=0.01)
    assert values == list(range(2000)) and losses > 50
    assert all(b >= a for a, b in zip(times, times[1:]))


def test_qos1_over_a_lossy_link_arrives_once_without_retransmissions():
    """With loss only delaying, QoS 1 needs no retransmission while connected (the
    retry interval is longer than an RTO): each message once, in order."""
    env, net = world(seed=5)
    lossy = LinkProfile(latency=0.005, loss=0.3)
    pub = net.client("pub", net.add_link("pub", lossy))
    sub = net.client("sub", net.add_link("sub", lossy))
    got = []
    sub.subscribe("x", recorder(env, got), qos=1)
    pub.connect()
    sub.connect()
    _stream(env, net, pub, "x", 300, qos=1)
    env.run(until=60.0)
    assert [int(m.payload) for _, m in got] == list(range(300))
    assert net.delivered == 300 and net.retransmits == net.duplicates == 0
    assert not pub._inflight


# --------------------------------------------------------------------------- retained
def test_retained_delivered_on_subscribe_and_cleared_by_empty_payload():
    env, net = world()
    pub = net.client("pub", net.add_link("pub", FAST))
    live = net.client("live", net.add_link("live", FAST))
    late = net.client("late", net.add_link("late", FAST))
    got_live, got_late, got_later = [], [], []
    live.subscribe("state/#", recorder(env, got_live))
    pub.connect()
    live.connect()
    late.connect()
    at(net, 1.0, lambda: pub.publish("state/a", b"on", qos=1, retain=True))
    at(net, 1.0, lambda: pub.publish("state/b", b"off", qos=0, retain=True))
    at(net, 2.0, lambda: late.subscribe("state/+", recorder(env, got_late)))
    at(net, 3.0, lambda: pub.publish("state/a", b"", retain=True))  # clears
    at(net, 4.0, lambda: late.subscribe("state/a", recorder(env, got_later)))
    env.run(until=5.0)
    assert [(m.topic, m.payload, m.retain) for _, m in got_live] == [
        ("state/a", b"on", False), ("state/b", b"off", False), ("state/a", b"", False)]
    late_retained = [(m.topic, m.payload, m.retain, m.qos) for _, m in got_late]
    assert late_retained[:2] == [("state/a", b"on", True, 1), ("state/b", b"off", True, 0)]
    assert late_retained[2] == ("state/a", b"", False, 0)  # the clearing message itself
    assert got_later == []  # cleared: nothing retained for state/a


# --------------------------------------------------------------------------- wills
def test_will_published_one_and_a_half_keepalive_after_vanish():
    env, net = world()
    watcher = net.client("watcher", net.add_link("w", LinkProfile(latency=0.0,
                                                                   bandwidth=1e12)))
    board = net.client("board", net.add_link("b", FAST))
    wills = []
    watcher.subscribe("dead/#", recorder(env, wills))
    watcher.connect()
    board.connect(will=Message("dead/board", b"bye", qos=1, retain=True), keepalive=4.0)
    at(net, 10.0, board.vanish)
    at(net, 11.0, lambda: board.publish("x", b"ignored"))  # a vanished client does nothing
    env.run(until=30.0)
    assert [(t, m.payload) for t, m in wills] == [(pytest.approx(16.0), b"bye")]
    assert net.wills == 1
    assert net.published == 0
    # reboot: the same transport subscribes, connects again and works
    back = []
    at(net, 31.0, lambda: (board.subscribe("dead/#", recorder(env, back)), board.connect()))
    env.run(until=32.0)
    assert board.connected
    assert [(m.payload, m.retain) for _, m in back] == [(b"bye", True)]  # retained will


def test_no_will_on_clean_disconnect():
    env, net = world()
    watcher = net.client("watcher", net.add_link("w", FAST))
    board = net.client("board", net.add_link("b", FAST))
    wills = []
    watcher.subscribe("dead/#", recorder(env, wills))
    watcher.connect()
    board.connect(will=Message("dead/board", b"bye"), keepalive=2.0)
    at(net, 5.0, board.disconnect)
    env.run(until=30.0)
    assert wills == [] and net.wills == 0
    assert not board.connected and board.state == "idle"


# --------------------------------------------------------------------------- faults
def test_link_down_up_reconnects_resubscribes_and_resends_queued_qos1():
    env, net = world()
    pub = net.client("pub", net.add_link("pub", FAST))
    link = net.add_link("sub", FAST)
    sub = net.client("sub", link)
    events, got = [], []
    sub.add_connection_listener(lambda ok: events.append((env.now, ok)))
    sub.subscribe("t/#", recorder(env, got), qos=1)
    pub.connect()
    sub.connect(keepalive=5.0)
    at(net, 0.5, lambda: pub.publish("t/retained", b"r", retain=True))
    at(net, 2.0, link.down)
    at(net, 3.0, lambda: sub.publish("t/from-sub", b"q1", qos=1))  # queued in flight
    at(net, 3.0, lambda: sub.publish("t/from-sub", b"q0", qos=0))  # lost
    at(net, 4.0, lambda: pub.publish("t/x", b"during-qos0", qos=0))
    at(net, 8.0, lambda: sub.publish("t/from-sub", b"offline-q1", qos=1))  # client queue
    at(net, 8.0, lambda: sub.publish("t/from-sub", b"offline-q0", qos=0))  # dropped
    at(net, 9.5, link.up)
    at(net, 15.0, lambda: pub.publish("t/x", b"after"))
    env.run(until=20.0)
    assert events[0][1] is True
    assert events[1] == (pytest.approx(7.0), False)  # keepalive after the link died
    assert events[2][1] is True and 9.5 <= events[2][0] <= 10.6  # retries every second
    payloads = [m.payload for _, m in got]
    assert b"during-qos0" not in payloads and b"q0" not in payloads
    assert payloads.count(b"r") == 2  # retained again after re-subscribing
    assert b"q1" in payloads and payloads[-1] == b"after"
    assert payloads.index(b"q1") < payloads.index(b"offline-q1")  # unacked first, then queued
    assert b"offline-q0" not in payloads
    assert sub.connected
    frame = net.messages_frame()
    queued = frame[(frame.event == "publish") & (frame.detail == "queued")]
    assert list(queued.client) == ["sub"]
    assert ((frame.event == "retransmit") & (frame.client == "sub")).sum() == 1


def test_clients_sharing_a_link_share_its_queue_and_its_faults():
    env, net = world()
    shared = net.add_link("gw", LinkProfile(latency=0.01, bandwidth=80_000))
    a, b = net.client("a", shared), net.client("b", shared)
    sink = net.client("sink", net.add_link("sink", LinkProfile(latency=0.0, bandwidth=1e12)))
    got, lost = [], []
    sink.subscribe("#", recorder(env, got))
    for c in (a, b, sink):
        c.connect(keepalive=1.0)
    for c in (a, b):
        c.add_connection_listener(lambda ok, c=c: lost.append((c.client_id, ok)))
    payload = bytes(1000 - 1 - PUBLISH_OVERHEAD)  # 0.1 s on the link
    at(net, 1.0, lambda: (a.publish("a", payload), b.publish("b", payload)))
    at(net, 2.0, shared.down)
    env.run(until=4.0)
    assert [(m.topic, round(t, 6)) for t, m in got] == [("a", 1.11), ("b", 1.21)]
    assert lost == [("a", True), ("b", True), ("a", False), ("b", False)]


def test_short_link_blip_is_ridden_out_without_reconnect():
    env, net = world(retry_interval=1.0)
    pub = net.client("pub", net.add_link("pub", FAST))
    link = net.add_link("sub", FAST)
    sub = net.client("sub", link)
    events, got = [], []
    sub.add_connection_listener(lambda ok: events.append(ok))
    sub.subscribe("t", recorder(env, got), qos=1)
    pub.connect()
    sub.connect(keepalive=10.0)
    at(net, 2.0, link.down)
    at(net, 2.5, lambda: pub.publish("t", b"qos1", qos=1))
    at(net, 3.0, link.up)
    env.run(until=10.0)
    assert events == [True]
    assert [m.payload for _, m in got] == [b"qos1"]  # broker retransmitted after the blip


def test_long_link_outage_publishes_will_and_offline_session_keeps_qos1():
    env, net = world()
    watcher = net.client("watcher", net.add_link("w", FAST))
    link = net.add_link("b", FAST)
    board = net.client("board", link)
    wills, got = [], []
    watcher.subscribe("dead/#", recorder(env, wills))
    board.subscribe("cmd", recorder(env, got), qos=1)
    watcher.connect()
    board.connect(will=Message("dead/board", b"bye"), keepalive=2.0)
    at(net, 1.0, link.down)
    at(net, 6.0, lambda: watcher.publish("cmd", b"kept", qos=1))
    at(net, 6.0, lambda: watcher.publish("cmd", b"dropped", qos=0))
    at(net, 10.0, link.up)
    env.run(until=15.0)
    assert [t for t, _ in wills] == [pytest.approx(4.0, abs=0.01)]
    assert [m.payload for _, m in got] == [b"kept"]
    assert board.connected


def test_broker_outage_loses_no_qos1_and_publishes_no_wills():
    env, net = world(seed=11, broker=BrokerProfile(service_time=0.0005))
    profile = LinkProfile(latency=0.01, bandwidth=1e6, jitter=0.005)
    pub = net.client("pub", net.add_link("pub", profile))
    sub = net.client("sub", net.add_link("sub", profile))
    watcher = net.client("watcher", net.add_link("w", profile))
    got, wills, events = [], [], []
    sub.subscribe("data", recorder(env, got), qos=1)
    watcher.subscribe("dead/#", recorder(env, wills))
    pub.add_connection_listener(lambda ok: events.append((env.now, ok)))
    pub.connect(will=Message("dead/pub", b"x"), keepalive=2.0)
    sub.connect(will=Message("dead/sub", b"x"), keepalive=2.0)
    watcher.connect()
    at(net, 0.5, lambda: pub.publish("status", b"last", retain=True))
    _stream(env, net, pub, "data", 500, qos=1, start=1.0, period=0.01)
    at(net, 2.0, net.broker_down)
    at(net, 4.0, net.broker_up)
    env.run(until=30.0)
    assert {int(m.payload) for _, m in got} == set(range(500))
    assert wills == [] and net.wills == 0
    assert [ok for _, ok in events] == [True, False, True]
    assert events[1][0] == pytest.approx(2.01)  # connection reset one latency later
    assert 4.0 <= events[2][0] <= 5.1
    late = []
    at(net, 31.0, lambda: watcher.subscribe("status", recorder(env, late)))
    env.run(until=32.0)
    assert [m.payload for _, m in late] == [b"last"]  # retained survived (persistence)


def test_broker_outage_without_persistence_forgets_retained():
    env, net = world(broker=BrokerProfile(persistence=False))
    pub = net.client("pub", net.add_link("pub", FAST))
    sub = net.client("sub", net.add_link("sub", FAST))
    got = []
    sub.subscribe("live", recorder(env, got))
    pub.connect()
    sub.connect()
    at(net, 0.5, lambda: pub.publish("status", b"last", retain=True))
    at(net, 1.0, net.broker_down)
    at(net, 2.0, net.broker_up)
    at(net, 5.0, lambda: pub.publish("live", b"after"))  # client re-subscribed by itself
    late = []
    at(net, 6.0, lambda: sub.subscribe("status", recorder(env, late)))
    env.run(until=7.0)
    assert [m.payload for _, m in got] == [b"after"]
    assert late == []


# --------------------------------------------------------------------------- determinism
def _scenario(seed: int, extra_link: bool = False) -> pd.DataFrame:
    env, net = world(seed=seed, retry_interval=0.3)
    profile = LinkProfile(latency=0.005, bandwidth=1e6, jitter=0.01, loss=0.1)
    if extra_link:
        net.add_link("zzz-unused", profile)
    pub = net.client("pub", net.add_link("pub", profile))
    sub = net.client("sub", net.add_link("sub", profile))
    sub.subscribe("d/+", lambda m: None, qos=1)
    pub.connect()
    sub.connect()
    _stream(env, net, pub, "d/a", 100, qos=1)
    _stream(env, net, pub, "d/b", 100, qos=0, start=1.005)
    env.run(until=20.0)
    return net.messages_frame()


def test_same_seed_identical_trace_different_seed_differs():
    first, again = _scenario(1), _scenario(1)
    pd.testing.assert_frame_equal(first, again)
    other = _scenario(2)
    assert not first.equals(other)
    assert (first.event == "drop").sum() != (other.event == "drop").sum() or \
        not first.latency.equals(other.latency)
    # adding a link does not disturb the others' random streams
    pd.testing.assert_frame_equal(first, _scenario(1, extra_link=True))


def test_counters_without_trace():
    env, net = world(trace=False)
    pub = net.client("pub", net.add_link("pub", FAST))
    sub = net.client("sub", net.add_link("sub", FAST))
    sub.subscribe("x", lambda m: None)
    pub.connect()
    sub.connect()
    _stream(env, net, pub, "x", 50, qos=1)
    env.run(until=5.0)
    counters = net.counters()
    assert counters["published"] == 50 and counters["delivered"] == 50
    assert counters["bytes_delivered"] == 50 * (1 + 1 + PUBLISH_OVERHEAD) + 40  # "10".."49"
    assert counters["bytes_sent"] > counters["bytes_delivered"]
    assert net.messages_frame().empty


def test_client_id_reuse_and_errors():
    env, net = world()
    link = net.add_link("a", FAST)
    first = net.client("c", link)
    first.connect()
    with pytest.raises(ValueError):
        net.client("c", link)
    with pytest.raises(RuntimeError):
        first.connect()
    with pytest.raises(ValueError):
        first.publish("a/+", b"")
    with pytest.raises(ValueError):
        first.publish("a", b"", qos=2)
    with pytest.raises(ValueError):
        net.add_link("a", FAST)
    with pytest.raises(ValueError):
        LinkProfile(loss=1.0)
    first.vanish()
    second = net.client("c", "a")
    second.connect()
    env.run(until=1.0)
    assert second.connected and not first.connected
