"""A real worker under hostile input (hypothesis fuzzing) and with authentication on."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mqtt_fixtures import mosquitto_reason
from test_real_workers import COUNTER, Workers, broker, dispatcher  # noqa: F401
from waiting import wait_until

from runtime import protocol as p
from thingssim.broker import BrokerError, find_mosquitto, make_password_file, start_broker

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "runtime" / "deploy" / "mosquitto-thingssim.acl"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
CTRLS = ["run_code", "kill_code", "pause_code", "resume_code", "restore_code",
         "migrate_code", "spawn_code", "commit_migration", "abort_migration", "report",
         "pause", "resume", "snapshot", "kill", "", "../../etc", "\x00"]
messages = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda ctrl, kwargs, rid, reply: json.dumps(
        {"ctrl": ctrl, "kwargs": kwargs, "request_id": rid, "reply_to": reply}).encode(),
        st.sampled_from(CTRLS) | st.text(max_size=10),
        st.dictionaries(st.sampled_from(["instance_id", "source", "snapshot", "engine",
                                         "engines", "code_name", "migration_id",
                                         "paused", "size"]), json_values, max_size=4)
        | json_values,
        st.text(max_size=8) | st.none() | st.integers(),
        st.sampled_from(["fuzz/reply", "a/+", "", "#"]) | st.none()),
    st.just(b"[" * 100_000 + b"]" * 100_000),  # nesting bomb
    st.just(json.dumps({"ctrl": "run_code", "kwargs": {"source": "x = 1\n" * 50_000}})
            .encode()),
)


class FuzzTarget:
    """Worker w1 running a counter (``iid``) and a raw paho client (``client``) to fuzz it."""

    REPLY_TO = "fuzzer-check/reply"  # not among the fuzzed reply_to values

    def __init__(self, broker, tmp: Path) -> None:  # noqa: F811
        self.workers = Workers(broker.url, tmp)
        self.worker = self.workers.start("w1")
        self.replies: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer")
        self.client.on_message = lambda c, u, m: self.replies.put(m.payload)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(self.REPLY_TO, qos=1)

        async def program():
            d = await dispatcher(broker.url, ["w1"])
            iid = (await d.run_code("w1", "counter", COUNTER))["id"]
            d.kill()
            return iid

        self.iid = asyncio.run(program())
        self._requests = 0

    def report(self, timeout: float = 10.0) -> dict:
        """w1's status report, asked on this client's connection: the broker handles and
        w1 receives it after everything this client published before."""
        self._requests += 1
        rid = f"check-{self._requests}"
        self.client.publish("w1/cmd", json.dumps({"ctrl": "report", "request_id": rid,
                                                  "reply_to": self.REPLY_TO}), qos=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = json.loads(self.replies.get(timeout=max(0.0, deadline -
                                                                  time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"w1 did not answer 'report' within {timeout:g} s "
                                     f"(alive: {self.worker.poll() is None})") from None
            if reply.get("reply_id") == rid:
                return reply["payload"]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.workers.stop_all()


@pytest.fixture(scope="module")
def fuzz_target(broker, tmp_path_factory):  # noqa: F811
    target = FuzzTarget(broker, tmp_path_factory.mktemp("fuzz"))
    yield target
    target.close()


def changes_the_program(topic: str, payload: bytes) -> bool:
    """A well-formed pause, kill, or snapshot-and-stay-paused on the program's own topic:
    not hostile, it stops the program as asked (the fuzzing leaves those out)."""
    if not topic.startswith("counter/"):
        return False
    try:
        request = p.parse_request(payload)
    except p.ProtocolError:
        return False
    return request.ctrl in ("pause", "kill") or (
        request.ctrl == "snapshot" and bool(request.kwargs.get("pause_after")))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(topic=st.sampled_from(["w1/cmd", "w1/migrate/fuzzer", "w1/reply",
                              "engine-registry/bcast", "program-monitor/bcast",
                              "counter/{iid}/cmd", "w1/cmd"]),
       payload=messages, qos=st.sampled_from([0, 1]))
def test_fuzzing_every_topic_a_worker_listens_on(fuzz_target, topic, payload, qos):
    topic = topic.format(iid=fuzz_target.iid)
    assume(not changes_the_program(topic, payload))
    fuzz_target.client.publish(topic, payload, qos=qos).wait_for_publish(5)
    report = fuzz_target.report()  # w1 still answers, after this message
    assert report["procs"][fuzz_target.iid]["status"] == "Running"


def test_the_fuzzed_worker_is_alive_and_its_program_untouched(broker, fuzz_target):  # noqa: F811
    iid = fuzz_target.iid
    assert fuzz_target.report()["procs"][iid]["status"] == "Running"
    assert fuzz_target.worker.poll() is None, "the worker died"

    async def check():
        d = await dispatcher(broker.url, ["w1"])
        report = await d._engine_request("w1", "report", {})
        status = await d.pause_code(iid)
        d.kill()
        return report, status

    report, status = asyncio.run(check())
    assert report["procs"][iid]["status"] == "Running"
    assert status == "Paused"


@pytest.mark.skipif(find_mosquitto() is None,
                    reason=mosquitto_reason("the amqtt fallback has no password files or ACLs"))
def test_authentication_and_the_shipped_acl(tmp_path):
    users = {"dispatcher": "d-secret", "w1": "w1-secret", "mallory": "m-secret"}
    try:
        handle = start_broker(config={"password_file": str(make_password_file(
            tmp_path / "passwd", users)), "acl_file": str(ACL), "allow_anonymous": False})
    except BrokerError as exc:
        pytest.skip(str(exc))
    workers = Workers(handle.url, tmp_path)
    workers.start("w1", username="w1", password="w1-secret")
    try:
        def client(name: str | None, password: str | None):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"c-{name}")
            if name:
                c.username_pw_set(name, password)
            result = {}
            c.on_connect = lambda cl, ud, flags, rc, props: result.setdefault("rc", rc)
            c.on_subscribe = lambda *args: result.setdefault("subscribed", True)
            c.connect("127.0.0.1", handle.port)
            c.loop_start()
            wait_until(lambda: "rc" in result, what=f"{name}'s CONNACK")
            return c, result

        anonymous, result = client(None, None)
        assert result["rc"].is_failure  # no credentials: not even connected
        anonymous.loop_stop()
        replies, states = [], []

        def on_message(c, u, m) -> None:
            (states if m.topic.startswith("engine-registry/") else replies).append(
                json.loads(m.payload))

        admin, result = client("dispatcher", "d-secret")
        assert not result["rc"].is_failure
        admin.on_message = on_message
        admin.subscribe([("admin/reply", 1), ("engine-registry/state/w1", 1)])
        wait_until(lambda: "subscribed" in result, what="the SUBACK")
        wait_until(lambda: any(s.get("status") not in (None, "dead") for s in states),
                   what="w1 up")
        mallory, result = client("mallory", "m-secret")
        assert not result["rc"].is_failure
        command = {"ctrl": "run_code", "kwargs": {"code_name": "evil", "source": "pass"},
                   "reply_to": "admin/reply"}  # workers may answer on +/reply
        mallory.publish("w1/cmd", json.dumps({**command, "request_id": "m1"}),
                        qos=1).wait_for_publish(10)  # acknowledged: the broker has it
        admin.publish("w1/cmd", json.dumps({**command, "request_id": "d1"}), qos=1)
        wait_until(lambda: replies, what="the reply to d1")
        # w1 answers in order: a report asked now comes after any answer to m1
        admin.publish("w1/cmd", json.dumps({"ctrl": "report", "request_id": "d2",
                                            "reply_to": "admin/reply"}), qos=1)
        wait_until(lambda: len(replies) >= 2, what="the reply to d2")
        # the broker dropped m1: mallory may not command workers
        assert [r["reply_id"] for r in replies] == ["d1", "d2"]
        for c in (admin, mallory):
            c.loop_stop()
            c.disconnect()
    finally:
        workers.stop_all()
        handle.stop()
