"""The shared subscription table (runtime/subscriptions.py), then the same subscription
scenario on every transport: in memory, simulated, and on a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import itertools
import logging

import mqtt_fixtures
import pytest
from mqtt_fixtures import AMQTT_ONE_COPY_PER_FILTER, needs_mosquitto
from waiting import wait_until

from runtime import VirtualClock
from runtime.memory import MemoryBroker
from runtime.subscriptions import SubscriptionTable
from runtime.topics import TopicError
from runtime.transport import Message
from thingssim.sim.clock import SimEnvironment as SimEnv
from thingssim.sim.network import LinkProfile, Network

broker = mqtt_fixtures.broker
event_loop_thread = mqtt_fixtures.event_loop_thread

LOGGER = "runtime.subscriptions"


def recorder(into: list, name: str):
    return lambda m: into.append((name, m.topic))


def msg(topic: str, payload: bytes = b"x") -> Message:
    return Message(topic, payload)


# ====================================================================== the table
def test_overlapping_filters_call_each_handler_once_in_subscription_order():
    table, got = SubscriptionTable(), []
    h1, h2, h3 = recorder(got, "h1"), recorder(got, "h2"), recorder(got, "h3")
    table.add("s/a", h3)
    table.add("s/#", h1)
    table.add("s/+", h2)
    table.add("s/+", h1)  # h1 again under another matching filter
    table.add("s/a", h1)  # ... and a third
    table.add("s/a", h2)
    assert table.handlers_for("s/a") == (h3, h1, h2)  # s/a's first, then s/#, then s/+
    assert table.dispatch(msg("s/a")) == 3
    assert got == [("h3", "s/a"), ("h1", "s/a"), ("h2", "s/a")]
    got.clear()
    assert table.dispatch(msg("s/b/c")) == 1 and got == [("h1", "s/b/c")]
    assert table.dispatch(msg("x/a")) == 0


def test_equal_handlers_are_one_handler():
    class Box:
        def __init__(self):
            self.got = []

        def on(self, m):
            self.got.append(m.topic)

    box, table = Box(), SubscriptionTable()
    table.add("a/+", box.on)  # each ``box.on`` is a new bound method object, all equal
    table.add("a/#", box.on)
    assert table.add("a/+", box.on) is False and table.handlers_of("a/+") == (box.on,)
    table.dispatch(msg("a/1"))
    assert box.got == ["a/1"]


@pytest.mark.parametrize(("topic_filter", "topic", "match"), [
    ("+", "a", True), ("+", "a/b", False), ("+/+", "/b", True), ("a/+/c", "a/b/c", True),
    ("a/+", "a", False), ("#", "a/b/c", True), ("a/#", "a", True), ("a/#", "ab", False),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
    ("$SYS/+", "$SYS/x", True), ("a/b", "a/b", True), ("a/b", "a/b/", False),
])
def test_wildcards_and_dollar_topics(topic_filter, topic, match):
    table, got = SubscriptionTable(), []
    table.add(topic_filter, recorder(got, "h"))
    assert table.dispatch(msg(topic)) == int(match)
    assert bool(table.handlers_for(topic)) is match


def test_bad_filters_are_refused():
    table = SubscriptionTable()
    for bad in ("", "a/#/b", "a+", "a/b#"):
        with pytest.raises(TopicError):
            table.add(bad, print)
    assert len(table) == 0


def test_add_and_remove_say_when_the_broker_must_be_told():
    table = SubscriptionTable()
    h1, h2 = (lambda m: None), (lambda m: None)
    assert table.add("f", h1, qos=0) is True  # new filter: SUBSCRIBE
    assert table.add("f", h2, qos=0) is False  # held already
    assert table.add("f", h2, qos=0) is False and table.handlers_of("f") == (h1, h2)
    assert table.add("f", h1, qos=1) is True and table.qos("f") == 1  # QoS rose: SUBSCRIBE
    assert table.add("f", h1, qos=0) is False and table.qos("f") == 1  # never lowered
    assert table.remove("f", lambda m: None) is False  # not one of its handlers
    assert table.remove("nothing") is False
    assert table.remove("f", h1) is False  # one handler gone: the filter stays
    assert "f" in table and table.handlers_of("f") == (h2,) and table.filters() == {"f": 1}
    assert table.remove("f", h2) is True  # the last one: UNSUBSCRIBE
    assert "f" not in table and table.qos("f") is None and table.handlers_of("f") == ()
    table.add("g", h1)
    table.add("g", h2)
    assert table.remove("g") is True and len(table) == 0  # every handler at once


def test_filters_in_first_subscribed_order_and_clear():
    table = SubscriptionTable()
    h = lambda m: None  # noqa: E731
    table.add("b", h, qos=0)
    table.add("a/#", h, qos=1)
    table.add("c", h, qos=0)
    table.add("b", h, qos=1)  # keeps its place
    assert list(table.filters().items()) == [("b", 1), ("a/#", 1), ("c", 0)]
    table.remove("b")
    table.add("b", h, qos=0)  # gone and back: last now, at its new QoS
    assert list(table.filters().items()) == [("a/#", 1), ("c", 0), ("b", 0)]
    table.filters()["x"] = 1  # a copy
    assert "x" not in table and table.filters_for("a/b") == ("a/#",)
    table.clear()
    assert len(table) == 0 and table.filters() == {} and table.handlers_for("b") == ()


def test_lookups_are_cached_until_the_table_changes():
    table, got = SubscriptionTable(), []
    h1, h2 = recorder(got, "h1"), recorder(got, "h2")
    table.add("t/+", h1)
    first = table.handlers_for("t/1")
    assert table.handlers_for("t/1") is first == (h1,)  # cached: the same tuple
    table.add("t/#", h2)
    assert table.handlers_for("t/1") == (h1, h2)
    table.add("t/1", h1)  # nothing new to call, but a change all the same
    assert table.handlers_for("t/1") == (h1, h2)
    table.remove("t/+", h1)  # t/+ goes: h1 is still there under t/1, now after t/#
    assert table.filters_for("t/1") == ("t/#", "t/1")
    assert table.handlers_for("t/1") == (h2, h1)
    table.remove("t/1")
    assert table.handlers_for("t/1") == (h2,)
    table.dispatch(msg("t/1"))
    assert got == [("h2", "t/1")]
    table.clear()
    assert table.handlers_for("t/1") == () and table.dispatch(msg("t/1")) == 0


def test_the_cache_is_bounded():
    table = SubscriptionTable(cache_limit=3)
    table.add("#", print)
    for i in range(10):
        assert table.handlers_for(f"t/{i}") == (print,)
    assert len(table._cache) <= 3


def test_a_raising_handler_is_reported_and_does_not_stop_the_others(caplog):
    errors, got = [], []
    table = SubscriptionTable(lambda *args: errors.append(args), owner="board-7")

    def boom(m):
        raise RuntimeError("a bad handler")

    h1, h2 = recorder(got, "h1"), recorder(got, "h2")
    table.add("e/#", h1)
    table.add("e/a", boom)
    table.add("e/+", h2)
    message = msg("e/a")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert table.dispatch(message) == 3  # boom was called too
    assert got == [("h1", "e/a"), ("h2", "e/a")]
    [(handler, seen, exc)] = errors
    assert handler is boom and seen is message and isinstance(exc, RuntimeError)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR and "board-7" in record.getMessage()
    assert "failed on e/a" in record.getMessage()
    assert record.exc_info and record.exc_info[1] is exc  # with its traceback
    assert "a bad handler" in caplog.text and "Traceback" in caplog.text


def test_an_on_error_that_raises_ends_the_dispatch():
    def fail_fast(handler, message, exc):
        raise exc

    table, got = SubscriptionTable(fail_fast), []
    table.add("e", lambda m: 1 / 0)
    table.add("e", recorder(got, "after"))
    with pytest.raises(ZeroDivisionError):
        table.dispatch(msg("e"))
    assert got == []


def test_handlers_removed_or_added_during_a_dispatch():
    table, got = SubscriptionTable(), []
    late = recorder(got, "late")
    doomed = recorder(got, "doomed")
    other = recorder(got, "other")

    def first(m):
        got.append(("first", m.topic))
        table.remove("d/#", doomed)
        table.add("d/+", late)

    table.add("d/#", first)
    table.add("d/#", doomed)
    table.add("d/x", other)
    assert table.dispatch(msg("d/x")) == 2
    assert got == [("first", "d/x"), ("other", "d/x")]  # no doomed, no late
    got.clear()
    table.dispatch(msg("d/x"))
    assert got == [("first", "d/x"), ("other", "d/x"), ("late", "d/x")]


def test_handlers_of_and_deliver_for_retained_messages():
    table, got = SubscriptionTable(), []
    h1, h2, h3 = recorder(got, "h1"), recorder(got, "h2"), recorder(got, "h3")
    table.add("r/#", h1)
    table.add("r/#", h2)
    table.add("r/+", h3)
    assert table.handlers_of("r/#") == (h1, h2) and table.handlers_of("r/+") == (h3,)
    assert table.handlers_of("r/x") == ()
    assert table.deliver(msg("r/a"), (h2,)) == 1 and got == [("h2", "r/a")]  # one target
    got.clear()
    assert table.deliver(msg("r/a"), table.handlers_of("r/#")) == 2  # a re-subscription
    assert got == [("h1", "r/a"), ("h2", "r/a")]


# ====================================================================== every transport
FAST = LinkProfile(latency=0.001, bandwidth=100e6)


class Memory:
    def __init__(self, request, name: str) -> None:
        self.clock = VirtualClock()
        broker = MemoryBroker(self.clock)
        self.sub, self.pub = broker.client(f"{name}-sub"), broker.client(f"{name}-pub")

    def connect(self) -> None:
        self.sub.connect()
        self.pub.connect()
        self.clock.run(until=self.clock.now() + 0.1)

    def do(self, fn, *args) -> None:
        fn(*args)

    def settle(self, predicate, what: str) -> None:
        self.clock.run(until=self.clock.now() + 1.0)
        assert predicate(), what

    def close(self) -> None:
        pass


class Sim:
    def __init__(self, request, name: str) -> None:
        self.env = SimEnv()
        self.net = net = Network(self.env, seed=1)
        self.sub = net.client(f"{name}-sub", net.add_link(f"{name}-sub", FAST))
        self.pub = net.client(f"{name}-pub", net.add_link(f"{name}-pub", FAST))

    def connect(self) -> None:
        self.sub.connect()
        self.pub.connect()
        self.env.run(until=self.env.now + 1.0)
        assert self.sub.connected and self.pub.connected

    def do(self, fn, *args) -> None:
        fn(*args)

    def settle(self, predicate, what: str) -> None:
        self.env.run(until=self.env.now + 1.0)
        assert predicate(), what

    def close(self) -> None:
        pass


class Mqtt:
    """MqttTransport on the module's Mosquitto, its loop in a background thread."""

    def __init__(self, request, name: str) -> None:
        from runtime.mqtt import MqttTransport

        url = request.getfixturevalue("broker").url
        self.runner = request.getfixturevalue("event_loop_thread")
        self.sub, self.pub = (MqttTransport(url, client_id=f"{name}-{role}",
                                            loop=self.runner.loop, reconnect_min=0.1,
                                            reconnect_max=0.5) for role in ("sub", "pub"))

    def connect(self) -> None:
        for t in (self.sub, self.pub):
            self.runner.call(t.connect)
        for t in (self.sub, self.pub):
            self.runner.run(t.wait_connected(5))

    def do(self, fn, *args) -> None:
        self.runner.call(fn, *args)  # on the loop thread, as the core does

    def settle(self, predicate, what: str) -> None:
        wait_until(lambda: self.runner.call(predicate), what=what)
        self.runner.run(asyncio.sleep(0.05))  # time for a stray extra copy to show up

    def close(self) -> None:
        for t in (self.sub, self.pub):
            self.runner.call(t.close)


TRANSPORTS = [
    pytest.param(Memory, id="memory"),
    pytest.param(Sim, id="sim"),
    pytest.param(Mqtt, id="mosquitto", marks=needs_mosquitto(AMQTT_ONE_COPY_PER_FILTER)),
]


_ids = itertools.count(1)


@pytest.fixture()
def lab(request):
    kind = request.param
    made = kind(request, f"subs{next(_ids)}-{kind.__name__.lower()}")
    yield made
    made.close()


def _marker(lab, sub, topic: str):
    """Subscribe to ``topic``; returns a ``publish-and-wait`` for it: the broker keeps one
    publisher's order, so once its marker is here, everything published before is too."""
    marks: list[bytes] = []
    lab.do(sub.subscribe, topic, lambda m: marks.append(m.payload))

    def flush(what: str) -> None:
        n = str(len(marks)).encode()
        lab.do(lab.pub.publish, topic, n, 1)
        lab.settle(lambda: n in marks, what)

    return flush


@pytest.mark.parametrize("lab", TRANSPORTS, indirect=True)
def test_every_transport_calls_each_handler_once_per_message(lab):
    got: list[tuple[str, str]] = []
    h1, h2, h3 = recorder(got, "h1"), recorder(got, "h2"), recorder(got, "h3")
    sub, pub = lab.sub, lab.pub
    lab.do(sub.subscribe, "s/#", h1)
    lab.do(sub.subscribe, "s/+", h2, 0)
    lab.do(sub.subscribe, "s/a", h1)  # h1 under a second (third) matching filter
    lab.do(sub.subscribe, "s/a", h3)
    flush = _marker(lab, sub, "s-end")
    lab.connect()
    for topic in ("s/a", "s/b/c", "x/a"):
        lab.do(pub.publish, topic, b"1", 1)
    flush("the first messages")
    assert got == [("h1", "s/a"), ("h2", "s/a"), ("h3", "s/a"), ("h1", "s/b/c")]
    lab.do(sub.unsubscribe, "s/a", h3)
    lab.do(sub.unsubscribe, "s/#")  # every handler of that filter: h1 keeps s/a
    got.clear()
    for topic in ("s/a", "s/z"):
        lab.do(pub.publish, topic, b"2", 1)
    flush("the messages after unsubscribing")
    assert got == [("h2", "s/a"), ("h1", "s/a"), ("h2", "s/z")]


@pytest.mark.parametrize("lab", TRANSPORTS, indirect=True)
def test_every_transport_hands_retained_messages_to_the_new_subscription_only(lab):
    got: list[tuple[str, str, bool]] = []

    def rec(name):
        return lambda m: got.append((name, m.topic, m.retain))

    h1, h2, h3 = rec("h1"), rec("h2"), rec("h3")
    sub, pub = lab.sub, lab.pub
    flush = _marker(lab, sub, "r-end")
    lab.connect()
    lab.do(pub.publish, "r/a", b"state", 1, True)
    flush("the retained message stored")
    for n, (handler, topic_filter) in enumerate(((h1, "r/#"), (h2, "r/+"), (h3, "r/#"))):
        lab.do(sub.subscribe, topic_filter, handler)
        lab.settle(lambda n=n: len(got) > n, f"the retained message for {topic_filter}")
    flush("any other copies")  # (a copy comes per SUBSCRIBE; all of them are here now)
    assert got == [("h1", "r/a", True), ("h2", "r/a", True), ("h3", "r/a", True)]
    got.clear()
    lab.do(pub.publish, "r/a", b"live", 1)
    flush("the live message")
    assert [(name, topic) for name, topic, _ in got] == [("h1", "r/a"), ("h3", "r/a"),
                                                         ("h2", "r/a")]
    lab.do(pub.publish, "r/a", b"", 1, True)  # clear it
    flush("the clearing")


ERROR_CASES = [
    pytest.param(Memory, id="memory"),
    pytest.param(Sim, id="sim"),
    pytest.param(Mqtt, id="mosquitto", marks=needs_mosquitto(AMQTT_ONE_COPY_PER_FILTER)),
]


@pytest.mark.parametrize("lab", ERROR_CASES, indirect=True)
def test_every_transport_reports_a_raising_handler_and_calls_the_others(lab, caplog):
    got: list[tuple[str, str]] = []
    sub, pub = lab.sub, lab.pub

    def boom(m):
        raise RuntimeError(f"a bad handler on {m.topic}")

    lab.do(sub.subscribe, "e/#", recorder(got, "h1"))
    lab.do(sub.subscribe, "e/a", boom)
    lab.do(sub.subscribe, "e/+", recorder(got, "h2"))
    flush = _marker(lab, sub, "e-end")
    lab.connect()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        lab.do(pub.publish, "e/a", b"1", 1)
        lab.do(pub.publish, "e/b", b"1", 1)
        flush("the messages")
    assert got == [("h1", "e/a"), ("h2", "e/a"), ("h1", "e/b"), ("h2", "e/b")]
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert "failed on e/a" in record.getMessage() and sub.client_id in record.getMessage()
    assert isinstance(record.exc_info[1], RuntimeError)
    if isinstance(lab, Sim):  # the simulation also keeps it, and traces it
        assert [e[1:] for e in lab.net.handler_errors] == [
            (sub.client_id, "e/a", "RuntimeError: a bad handler on e/a")]
        [row] = [r for r in lab.net.trace_rows() if r["event"] == "handler_error"]
        assert (row["client"], row["topic"]) == (sub.client_id, "e/a")


def test_memory_broker_passes_handler_errors_to_on_error():
    errors = []
    clock = VirtualClock()
    broker = MemoryBroker(clock, on_error=lambda h, m, exc: errors.append((m.topic, exc)))
    c = broker.client("c")
    c.connect()
    c.subscribe("t", lambda m: 1 / 0)
    c.publish("t", b"x")
    clock.run(until=1)
    [(topic, exc)] = errors
    assert topic == "t" and isinstance(exc, ZeroDivisionError)
