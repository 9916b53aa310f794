"""MqttTransport and the broker tooling on a real broker (Mosquitto; no mocks).

Transport tests run in both I/O modes (``io="thread"``: paho's network thread, the
default; ``io="asyncio"``: paho driven by the loop).  Needs Mosquitto (``apt-get install
mosquitto``) or amqtt; tests of passwords, ACLs, persistence, and of what amqtt does
differently (a copy per overlapping subscription, no keepalive timeout, no queue for
offline sessions) are marked and skip without Mosquitto.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mqtt_fixtures
import paho.mqtt.client as mqtt
import pytest
from harness import forever_counter
from mqtt_fixtures import (
    AMQTT_NO_KEEPALIVE,
    AMQTT_NO_OFFLINE_QUEUE,
    AMQTT_ONE_COPY_PER_FILTER,
    AUTH_USERS,
    needs_mosquitto,
    require_broker,
)
from paho.mqtt.enums import CallbackAPIVersion
from waiting import until

from runtime.clock import AsyncioClock
from runtime.dispatcher import Dispatcher
from runtime.engine import CodeEngine
from runtime.mqtt import MqttConnectError, MqttTransport, parse_broker_url
from runtime.transport import Message
from thingssim import broker as broker_mod
from thingssim.broker import BrokerError, make_password_file, start_broker

# the fixtures (conftest may import them too: the same objects)
broker = mqtt_fixtures.broker
auth_broker = mqtt_fixtures.auth_broker
broker_factory = mqtt_fixtures.broker_factory
event_loop_thread = mqtt_fixtures.event_loop_thread

ROOT = Path(__file__).resolve().parents[1]
IO_MODES = pytest.mark.parametrize("io", ["thread", "asyncio"])

COUNTER = forever_counter(0.02)


def transport(url: str, client_id: str, io: str = "thread", **kwargs) -> MqttTransport:
    kwargs.setdefault("reconnect_min", 0.1)
    kwargs.setdefault("reconnect_max", 0.5)
    return MqttTransport(url, client_id=client_id, loop=asyncio.get_running_loop(), io=io,
                         **kwargs)


async def connected(*transports: MqttTransport, keepalive: float = 10.0) -> None:
    for t in transports:
        if t.state == "idle":
            t.connect(keepalive=keepalive)
    for t in transports:
        await t.wait_connected(5)


# ====================================================================== URLs
def test_parse_broker_url():
    assert parse_broker_url("mqtt://broker.lan") == ("broker.lan", 1883, None, None, False)
    assert parse_broker_url("mqtts://u%40x:p%3Aw@h:8884/") == ("h", 8884, "u@x", "p:w", True)
    assert parse_broker_url("ssl://h") == ("h", 8883, None, None, True)
    assert parse_broker_url("tcp://[::1]:1999") == ("::1", 1999, None, None, False)
    assert parse_broker_url("localhost:1884") == ("localhost", 1884, None, None, False)
    assert parse_broker_url("mqtt://user@h") == ("h", 1883, "user", None, False)
    for bad, match in [("ws://h", "scheme"), ("mqtt://h:99999", "port"), ("mqtt://h:0", "port"),
                       ("mqtt://", "no host"), ("mqtt://h/topic", "path"),
                       ("mqtt://:pw@h", "no user name"), ("", "non-empty"),
                       ("mqtt://h:x", "port")]:
        with pytest.raises(ValueError, match=match):
            parse_broker_url(bad)
    with pytest.raises(ValueError) as info:
        parse_broker_url("ws://me:secret@h")
    assert "secret" not in str(info.value)  # passwords never end up in messages
    t = MqttTransport("mqtts://me:secret@h", client_id="x")
    assert (t.host, t.port, t.username, t.tls) == ("h", 8883, "me", {})
    assert "secret" not in repr(t) and "secret" not in t.url
    with pytest.raises(ValueError, match="tls option"):
        MqttTransport("h", client_id="x", tls={"cafile": "x"})
    with pytest.raises(ValueError, match="io"):
        MqttTransport("h", client_id="x", io="trio")
    with pytest.raises(ValueError, match="client_id"):
        MqttTransport("h", client_id="")


# ====================================================================== pub/sub
@needs_mosquitto(AMQTT_ONE_COPY_PER_FILTER)
@IO_MODES
def test_wildcards_several_handlers_each_once_on_the_loop_thread(broker, io):
    async def main():
        loop_thread = threading.get_ident()
        sub, pub = transport(broker.url, f"sub-{io}", io), transport(broker.url, f"pub-{io}", io)
        got: list[tuple[str, str]] = []
        threads: set[int] = set()
        active = [0]

        def handler(name):
            def handle(m: Message):
                active[0] += 1
                assert active[0] == 1  # never concurrently
                threads.add(threading.get_ident())
                got.append((name, m.topic))
                active[0] -= 1
            return handle

        h1, h2, h3 = handler("h1"), handler("h2"), handler("h3")
        sub.subscribe("w/#", h1)
        sub.subscribe("w/+", h2, qos=0)
        sub.subscribe("w/a", h1)  # h1 again on another matching filter: still called once
        sub.subscribe("w/a", h3)

        def boom(m: Message):
            raise RuntimeError("a bad handler")

        sub.subscribe("w/a", boom)  # must not keep the others from their message
        await connected(sub, pub)
        pub.publish("w/a", b"1", qos=1)
        pub.publish("w/b/c", b"2", qos=1)
        pub.publish("x/a", b"3", qos=1)
        await until(lambda: ("h1", "w/b/c") in got, what="w/b/c")
        assert got == [("h1", "w/a"), ("h2", "w/a"), ("h3", "w/a"), ("h1", "w/b/c")]
        assert threads == {loop_thread}
        sub.unsubscribe("w/a", h3)
        sub.unsubscribe("w/a", boom)
        sub.unsubscribe("w/#")  # every handler of that filter
        got.clear()
        pub.publish("w/a", b"4", qos=1)
        pub.publish("w/z", b"5", qos=1)
        await until(lambda: ("h2", "w/z") in got, what="w/z")
        assert got == [("h2", "w/a"), ("h1", "w/a"), ("h2", "w/z")]  # h1 still has w/a
        sub.close()
        pub.close()

    asyncio.run(main())


@IO_MODES
def test_qos1_in_order_and_qos1_published_before_connect(broker, io):
    async def main():
        sub = transport(broker.url, f"q-sub-{io}", io)
        pub = transport(broker.url, f"q-pub-{io}", io)
        got: list[bytes] = []
        sub.subscribe("q/+", lambda m: got.append(m.payload), qos=1)
        await connected(sub)
        pub.publish("q/a", b"early", qos=1)  # before connect: queued by paho
        pub.publish("q/a", b"lost", qos=0)  # QoS 0 while disconnected: dropped
        await connected(pub)
        n = 1000
        for i in range(n):
            pub.publish("q/b" if i % 2 else "q/a", str(i).encode(), qos=1)
        await until(lambda: len(got) >= n + 1, what="all QoS 1 messages")
        assert got[0] == b"early" and b"lost" not in got
        assert got[1:] == [str(i).encode() for i in range(n)]
        sub.close()
        pub.close()

    asyncio.run(main())


@pytest.mark.parametrize("second", [
    "#",  # a second handler on the same filter
    pytest.param("a", marks=needs_mosquitto(AMQTT_ONE_COPY_PER_FILTER)),  # an overlapping one
])
@IO_MODES
def test_retained_messages_on_subscribe_go_to_the_new_handler_only(broker, io, second):
    async def main():
        base = f"ret-{io}-{'same' if second == '#' else 'overlap'}"
        pub = transport(broker.url, f"{base}-pub", io)
        sub = transport(broker.url, f"{base}-sub", io)
        echoed = []  # the publisher's own copies: the broker has stored what it retains
        pub.subscribe(f"{base}/+", lambda m: echoed.append((m.topic, m.payload)))
        pub.subscribe(f"{base}-marker", lambda m: echoed.append((m.topic, m.payload)))
        await connected(pub, sub)
        retained = [(f"{base}/a", b"state-a"), (f"{base}/b", b"state-b"),
                    (f"{base}-marker", b"marker")]
        for topic, payload in retained:
            pub.publish(topic, payload, qos=1, retain=True)
        await until(lambda: set(retained) <= set(echoed), what="the retained messages stored")
        first, later = [], []
        sub.subscribe(f"{base}/#", lambda m: first.append((m.topic[-1], m.payload, m.retain)))
        await until(lambda: len(first) == 2, what="retained messages")
        assert sorted(first) == [("a", b"state-a", True), ("b", b"state-b", True)]
        sub.subscribe(f"{base}/{second}", lambda m: later.append(m.payload))
        expected = [b"state-a", b"state-b"] if second == "#" else [b"state-a"]
        await until(lambda: len(later) == len(expected), what="retained again")
        pub.publish(f"{base}/a", b"live", qos=1)
        await until(lambda: later[-1:] == [b"live"], what="live message")
        assert len(first) == 3 and first[-1] == ("a", b"live", False)  # no retained twice
        assert sorted(later[:-1]) == expected and later[-1:] == [b"live"]
        for topic in (f"{base}/a", f"{base}/b"):
            pub.publish(topic, b"", qos=1, retain=True)  # clear
        await until(lambda: echoed.count((f"{base}/b", b"")) == 1, what="the clearing")
        late, marker = [], []
        sub.subscribe(f"{base}/+", lambda m: late.append(m))
        # the broker sends retained messages subscription by subscription, in order: once
        # the marker's comes, any for the subscription before would have come
        sub.subscribe(f"{base}-marker", lambda m: marker.append(m.payload))
        await until(lambda: marker, what="the marker")
        assert late == []
        pub.publish(f"{base}-marker", b"", qos=1, retain=True)
        pub.close()
        sub.close()

    asyncio.run(main())


def _rude_close(broker, name: str) -> None:
    """A client with a will on ``wills/<name>`` that closes its socket without DISCONNECT."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    c.will_set(f"wills/{name}", b"dead", qos=1)
    up = []
    c.on_connect = lambda *args: up.append(True)
    c.connect(broker.host, broker.port)
    deadline = time.monotonic() + 10
    while not up and time.monotonic() < deadline:
        c.loop(0.05)
    assert up, "the rude client did not connect"
    c.socket().close()


def test_clean_disconnect_sends_no_will_and_stops_the_thread(broker):
    async def main():
        loop = asyncio.get_running_loop()
        watcher = transport(broker.url, "will-watcher")
        wills = []
        watcher.subscribe("wills/#", lambda m: wills.append(m.topic))
        await connected(watcher)
        clients = [transport(broker.url, f"polite-{io}", io) for io in ("thread", "asyncio")]
        for t in clients:
            t.connect(will=Message(f"wills/{t.client_id}", b"dead", qos=1), keepalive=1)
        for t in clients:
            await t.wait_connected(5)
        for t in clients:
            t.disconnect()
        # then an abnormal close: its will comes at once, after the polite ones would have
        await loop.run_in_executor(None, _rude_close, broker, "rude")
        await until(lambda: wills, what="the rude client's will")
        assert wills == ["wills/rude"]
        assert not [th for th in threading.enumerate() if "polite" in th.name]
        watcher.close()

    asyncio.run(main())


_WILL_CLIENT = """
import asyncio, sys
from runtime.mqtt import MqttTransport
from runtime.transport import Message
async def main():
    url, name, io, keepalive = sys.argv[1:5]
    t = MqttTransport(url, client_id=name, loop=asyncio.get_running_loop(), io=io)
    t.connect(will=Message("wills/" + name, b"dead", qos=1), keepalive=float(keepalive))
    await t.wait_connected(5)
    print("connected", flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
"""


async def _will_after(broker, name: str, io: str, keepalive: float, sig: int,
                      timeout: float) -> None:
    """Start a client process with a will, send it ``sig``, wait for its will."""
    watcher = transport(broker.url, f"will-watcher-{name}")
    arrived = []
    watcher.subscribe(f"wills/{name}", lambda m: arrived.append(m.payload))
    await connected(watcher)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WILL_CLIENT, broker.url, name, io, str(keepalive), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.strip() == b"connected"
        proc.send_signal(sig)
        await until(lambda: arrived, timeout, f"the {name} client's will")
        assert arrived == [b"dead"]
        if sig == signal.SIGSTOP:  # still there, its socket open: the keepalive expired
            assert proc.returncode is None
    finally:
        watcher.close()
        if proc.returncode is None:
            proc.kill()  # (a stopped process too)
        await proc.wait()


def test_will_published_when_a_client_process_is_killed(broker):
    """SIGKILL closes the socket: the broker publishes the will at once -- well before
    1.5 x keepalive (90 s), so not because the client fell silent."""
    asyncio.run(_will_after(broker, "killed", "thread", keepalive=60, sig=signal.SIGKILL,
                            timeout=20))


@needs_mosquitto(AMQTT_NO_KEEPALIVE)
def test_will_published_when_a_client_process_is_frozen(broker):
    """SIGSTOP leaves the socket open: the broker publishes the will once the client has
    been silent for 1.5 x keepalive (1 s), but Mosquitto 2.0 only scans keepalives every
    few seconds (measured: 5.3-5.4 s for a 1 s keepalive, 11.4 s for 4 s and for 7 s)."""
    asyncio.run(_will_after(broker, "frozen", "asyncio", keepalive=1, sig=signal.SIGSTOP,
                            timeout=30))


# ====================================================================== outages
@IO_MODES
def test_reconnect_resubscribes_and_keeps_qos1_across_a_broker_restart(broker_factory, io):
    b = broker_factory()

    async def main():
        loop = asyncio.get_running_loop()
        me = transport(b.url, f"me-{io}", io)  # publishes and subscribes itself
        other = transport(b.url, f"other-{io}", io)  # only subscribes
        mine, theirs, ups = [], [], []
        me.subscribe("out/#", lambda m: mine.append(m.payload), qos=1)
        other.subscribe("out/#", lambda m: theirs.append(m.payload), qos=1)
        me.add_connection_listener(ups.append)
        await connected(me, other, keepalive=2)
        me.publish("out/x", b"before", qos=1)
        await until(lambda: b"before" in theirs, what="before")
        b.kill()
        await until(lambda: not me.connected and not other.connected, 5, "connection loss")
        during = [f"during-{i}".encode() for i in range(20)]
        for payload in during:
            me.publish("out/x", payload, qos=1)
        await loop.run_in_executor(None, b.restart)
        await until(lambda: me.connected and other.connected, 10, "reconnection")
        after = [f"after-{i}".encode() for i in range(20)]
        for payload in after:
            me.publish("out/x", payload, qos=1)
        await until(lambda: set(after) <= set(theirs) and set(during + after) <= set(mine),
                    5, "every QoS 1 message")
        assert ups == [True, False, True]
        assert [m for m in mine if m.startswith(b"after")] == after  # in order, once
        me.close()
        other.close()

    asyncio.run(main())


@IO_MODES
def test_unreachable_broker_is_retried_until_it_comes_and_close_is_prompt(io):
    require_broker()
    port = broker_mod.free_port()

    async def main():
        loop = asyncio.get_running_loop()
        t = transport(f"mqtt://127.0.0.1:{port}", f"early-{io}", io)
        ups = []
        t.add_connection_listener(ups.append)
        t.publish("early/x", b"queued", qos=1)
        got = []
        t.subscribe("early/#", lambda m: got.append(m.payload))
        t.connect()
        await until(lambda: t.connect_error is not None, what="a connection error")
        assert "cannot reach the broker" in t.connect_error and t.state == "connecting"
        with pytest.raises(asyncio.TimeoutError, match="not connected"):
            await t.wait_connected(0.2)
        b = await loop.run_in_executor(None, lambda: start_broker(port))
        try:
            await t.wait_connected(5)
            await until(lambda: got == [b"queued"], what="the message queued meanwhile")
            assert ups == [True] and t.connect_error is None
            b.kill()
            await until(lambda: not t.connected, what="the loss")
            t.close()  # while it keeps trying to reconnect: the thread ends (no timeout)
            assert ups == [True, False] and t.state == "idle"
            assert not [th for th in threading.enumerate() if f"early-{io}" in th.name]
        finally:
            b.stop()

    asyncio.run(main())


@IO_MODES
def test_persistent_session_gets_qos1_published_by_others_during_an_outage(broker_factory,
                                                                          io):
    b = broker_factory(config={"persistence": True})

    async def main():
        loop = asyncio.get_running_loop()
        sub = transport(b.url, f"psub-{io}", io)
        pub = transport(b.url, f"ppub-{io}", io)
        got = []
        sub.subscribe("p/#", lambda m: got.append(m.payload), qos=1)
        await connected(sub, pub)  # after the SUBACKs: the subscription is in the session
        await loop.run_in_executor(None, b.restart, 0.3)  # a clean stop saves the sessions
        sent = [f"m{i}".encode() for i in range(10)]
        for payload in sent:
            pub.publish("p/x", payload, qos=1)
        await until(lambda: set(sent) <= set(got), 10, "messages of the outage")
        sub.close()
        pub.close()

    asyncio.run(main())


@needs_mosquitto(AMQTT_NO_OFFLINE_QUEUE)
def test_fresh_session_drops_what_an_earlier_life_left(broker):
    """A restarted engine must not replay commands queued for its previous life."""
    def earlier_life(client_id: str) -> None:
        old = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                          protocol=mqtt.MQTTv311, clean_session=False)
        subscribed = threading.Event()
        old.on_subscribe = lambda *args: subscribed.set()
        old.connect(broker.host, broker.port)
        old.loop_start()
        old.subscribe("life/#", 1)
        assert subscribed.wait(10), "no SUBACK"
        old.disconnect()
        old.loop_stop()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id + "-pub")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish("life/cmd", b"stale", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()

    async def main():
        results = {}
        for fresh in (True, False):
            name = f"life-{fresh}"
            earlier_life(name)
            t = transport(broker.url, name, fresh_session=fresh)
            got = []
            t.subscribe("life/#", lambda m, got=got: got.append(m.payload), qos=1)
            await connected(t)
            # what the session kept comes right after CONNACK: before our own marker
            t.publish(f"life/{name}/marker", b"marker", qos=1)
            await until(lambda got=got: b"marker" in got, what="the marker")
            results[fresh] = got[:-1]
            t.close()
        assert results == {True: [], False: [b"stale"]}

    asyncio.run(main())


@IO_MODES
def test_ten_megabyte_payload_round_trip(broker, io):
    async def main():
        t = transport(broker.url, f"big-{io}", io)
        got = []
        t.subscribe("big/x", lambda m: got.append(m.payload), qos=1)
        await connected(t)
        payload = os.urandom(10 * 1024 * 1024)
        t.publish("big/x", payload, qos=1)
        await until(lambda: got, 60, "the 10 MB message")
        assert len(got) == 1
        assert hashlib.sha256(got[0]).digest() == hashlib.sha256(payload).digest()
        t.close()

    asyncio.run(main())


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@IO_MODES
def test_tls(broker_factory, tmp_path, io):
    cert, key = _self_signed(tmp_path)
    b = broker_factory(config={"certfile": str(cert), "keyfile": str(key)})
    url = b.url.replace("mqtt://", "mqtts://")

    async def main():
        t = transport(url, f"tls-{io}", io, tls={"ca_certs": str(cert)})
        insecure = transport(url, f"tls-insecure-{io}", io, tls={"insecure": True})
        got = []
        t.subscribe("tls/#", lambda m: got.append(m.payload), qos=1)
        await connected(t, insecure)
        burst = [str(i).encode() * 50 for i in range(300)]  # many packets per TLS record
        for payload in burst:
            insecure.publish("tls/x", payload, qos=1)
        await until(lambda: len(got) == len(burst), what="every message over TLS")
        assert got == burst
        t.close()
        insecure.close()

    asyncio.run(main())


# ====================================================================== auth
def test_auth_refusals_are_clear_and_only_the_dispatcher_may_command(auth_broker):
    users = auth_broker.users

    async def main():
        refused = []
        for name, kwargs in [("anonymous", {}),
                             ("wrong-password", {"username": "dispatcher", "password": "x"})]:
            for io in ("thread", "asyncio"):
                t = transport(auth_broker.url, f"{name}-{io}", io, **kwargs)
                told = []
                t.add_connection_listener(told.append)
                t.connect()
                with pytest.raises(MqttConnectError, match="not authori|bad user"):
                    await t.wait_connected(5)
                assert t.state == "failed" and told == [] and not t.connected
                assert "not retrying" in t.connect_error
                refused.append(t)
        for t in refused:
            t.close()
        assert not [th for th in threading.enumerate() if "wrong-password" in th.name]

        def login(user: str, io: str = "thread") -> MqttTransport:
            return transport(auth_broker.url, f"user-{user}", io, username=user,
                             password=users[user])

        disp, engine, guest = login("dispatcher"), login("engine", "asyncio"), login("guest")
        seen = []
        disp.subscribe("#", lambda m: seen.append((m.topic, m.payload)))
        await connected(disp, engine, guest)
        for who in (guest, engine):
            who.publish("e1/cmd", who.client_id.encode(), qos=1)
            who.publish("counter/c1/cmd", who.client_id.encode(), qos=1)
        guest.publish("sensors/t", b"21.5", qos=1)
        engine.publish("engine-registry", b"report", qos=1)
        disp.publish("e1/cmd", b"dispatcher", qos=1)
        disp.publish("counter/c1/cmd", b"dispatcher", qos=1)
        await until(lambda: ("counter/c1/cmd", b"dispatcher") in seen and
                    ("sensors/t", b"21.5") in seen and ("engine-registry", b"report") in seen,
                    what="the allowed messages")
        # each client's messages arrive in order: the refused ones came before these
        assert [m for m in seen if m[0].endswith("/cmd")] == [
            ("e1/cmd", b"dispatcher"), ("counter/c1/cmd", b"dispatcher")]
        for t in (disp, engine, guest):
            t.close()

    asyncio.run(main())


def test_anonymous_clients_cannot_publish_commands_where_anonymous_is_allowed(
        auth_broker, broker_factory):
    b = broker_factory(config={"allow_anonymous": True,
                               "password_file": str(auth_broker.password_file),
                               "acl_file": str(auth_broker.acl_file)})

    async def main():
        anon = transport(b.url, "anon")
        disp = transport(b.url, "disp", username="dispatcher",
                         password=AUTH_USERS["dispatcher"])
        seen = []
        disp.subscribe("#", lambda m: seen.append(m.payload))
        anon.subscribe("#", lambda m: seen.append(b"anon read " + m.payload))
        await connected(anon, disp)
        disp.publish("barrier/anon", b"barrier", qos=1, retain=True)
        await until(lambda: b"barrier" in seen, what="the barrier stored")
        anon.publish("e1/cmd", b"anonymous", qos=1)
        # the broker handles anon's packets in order: when the retained message of this
        # later SUBSCRIBE comes back, it has dropped or routed the command before it
        passed = []
        anon.subscribe("barrier/anon", passed.append)
        await until(lambda: passed, what="anon's barrier")
        disp.publish("e1/cmd", b"dispatcher", qos=1)  # comes after any copy of anon's
        await until(lambda: b"dispatcher" in seen and b"anon read dispatcher" in seen,
                    what="the dispatcher's command")
        assert b"anonymous" not in seen and b"anon read anonymous" not in seen
        disp.publish("barrier/anon", b"", qos=1, retain=True)
        anon.close()
        disp.close()

    asyncio.run(main())


# ====================================================================== the core
@IO_MODES
def test_engines_and_dispatcher_on_real_mqtt_migrate_a_counter(broker, io):
    async def main():
        clock = AsyncioClock(asyncio.get_running_loop())
        names = [f"e1-{io}", f"e2-{io}"]
        engines = {n: CodeEngine(transport(broker.url, n, io), clock, engine_id=n,
                                 resource_period=0.2, keepalive=2).start() for n in names}
        d = Dispatcher(transport(broker.url, f"disp-{io}", io), clock,
                       {"id": f"disp-{io}", "request_timeout": 10}).start()
        await until(lambda: all(d.engines.get(n) and d.engines[n].status == "idle"
                                for n in names), what="both engines")
        started = await d.run_code(names[0], "counter", COUNTER)
        iid = started["id"]
        assert started["engine"] == names[0] and started["status"] == "Running"

        async def count_on(more: int) -> None:  # let the counter print ``more`` lines
            console = d.programs[iid].console
            goal = len(console) + more
            await until(lambda: len(console) >= goal, what=f"{goal} console lines")

        hops = []
        for src, dst in (names, names[::-1], names):
            await count_on(4)
            moved = await d.move_code(src, dst, "counter", iid)
            assert moved["engine"] == dst and moved["migration"]["ok"]
            hops.append(moved["migration"])
            assert iid in engines[dst].programs and iid not in engines[src].programs
        await count_on(4)
        assert await d.pause_code(iid) == "Paused"
        program = d.programs[iid]
        await until(lambda: program.status == "Paused", what="the program report")
        numbers = [int(x) for x in program.console if x.isdigit()]
        assert numbers == list(range(len(numbers))) and len(numbers) >= 15, numbers
        assert program.engine == names[1]
        assert all(h["snapshot_bytes"] > 0 for h in hops)
        await until(lambda: d.engines[names[0]].resource is not None,
                    what="a resource report")  # resource reports flow too
        for engine in engines.values():
            engine.stop()
        await until(lambda: all(d.engines[n].status == "dead" for n in names),
                    what="engines reported dead")
        d.kill()

    asyncio.run(main())


def test_transport_on_a_loop_in_another_thread(broker, event_loop_thread):
    got = []

    async def setup():
        t = transport(broker.url, "bg-loop")
        t.subscribe("bg/x", lambda m: got.append(threading.get_ident()))
        await connected(t)
        t.publish("bg/x", b"1", qos=1)
        await until(lambda: got, what="the message")
        return t, threading.get_ident()

    t, loop_thread = event_loop_thread.run(setup())
    assert got == [loop_thread] != [threading.get_ident()]
    event_loop_thread.call(t.close)


# ====================================================================== broker tooling
def test_start_broker_errors_and_handle():
    with pytest.raises(ValueError, match="unknown broker config"):
        start_broker(config={"bogus": 1})
    with pytest.raises(ValueError, match="prefer"):
        start_broker(prefer="hivemq")
    require_broker()
    if broker_mod.find_mosquitto() is not None:
        with pytest.raises(BrokerError, match="does not exist"):
            start_broker(config={"acl_file": "/nonexistent/acl"})
        with start_broker() as b:
            assert b.kind == "mosquitto" and b.running and b.url.endswith(f":{b.port}")
            port = b.port
            b.restart()
            assert b.running and b.port == port
        assert not b.running and not b.dir.exists()
        with pytest.raises(BrokerError, match="exited with code"):
            start_broker(config={"extra": ["no_such_option 1"]})
        with socket.socket() as taken:  # another program on the port: not "ready"
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(BrokerError, match="Address already in use"):
                start_broker(taken.getsockname()[1])


def test_password_file_without_mosquitto_passwd_works_with_mosquitto(tmp_path, monkeypatch,
                                                                     broker_factory):
    real = broker_mod.find_mosquitto
    monkeypatch.setattr(broker_mod, "find_mosquitto",
                        lambda name="mosquitto": None if name == "mosquitto_passwd"
                        else real(name))
    path = make_password_file(tmp_path / "pw", {"ann": "s3cret"})
    user, rest = path.read_text().strip().split(":", 1)
    _, kind, rounds, salt, digest = rest.split("$")
    assert (user, kind, rounds) == ("ann", "7", "101")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac(
        "sha512", b"s3cret", base64.b64decode(salt), 101, 64)
    monkeypatch.undo()
    b = broker_factory(config={"password_file": str(path)})

    async def main():
        ok = transport(b.url, "ann", username="ann", password="s3cret")
        no = transport(b.url, "ann-bad", username="ann", password="nope")
        await connected(ok)
        no.connect()
        with pytest.raises(MqttConnectError):
            await no.wait_connected(5)
        ok.close()
        no.close()

    asyncio.run(main())


def test_amqtt_fallback_has_the_same_handle():
    if not broker_mod.amqtt_available():
        pytest.skip("amqtt is not installed (pip install amqtt)")

    async def main(b):
        a, c = transport(b.url, "amqtt-a", "asyncio"), transport(b.url, "amqtt-c")
        got = []
        a.subscribe("am/+", lambda m: got.append(m.payload), qos=1)
        await connected(a, c)
        c.publish("am/x", b"hello", qos=1)
        await until(lambda: got == [b"hello"], what="a message through amqtt")
        a.close()
        c.close()

    with start_broker(prefer="amqtt") as b:
        assert b.kind == "amqtt"
        asyncio.run(main(b))
    with pytest.raises(BrokerError, match="amqtt fallback does not support persistence"):
        start_broker(prefer="amqtt", config={"persistence": True})


def test_broker_command_runs_until_interrupted():
    require_broker()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from thingssim.broker import broker_command; "
         "broker_command(['--port', '0'])"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "broker listening on mqtt://127.0.0.1:" in line, line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
