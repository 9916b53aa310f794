"""A real worker under hostile input (hypothesis fuzzing) and with authentication on."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_real_workers import COUNTER, Workers, broker, dispatcher  # noqa: F401

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


@pytest.fixture(scope="module")
def fuzz_target(broker, tmp_path_factory):  # noqa: F811
    workers = Workers(broker.url, tmp_path_factory.mktemp("fuzz"))
    workers.start("w1")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()

    async def program_topic():
        d = await dispatcher(broker.url, ["w1"])
        iid = (await d.run_code("w1", "counter", COUNTER))["id"]
        d.kill()
        return iid

    iid = asyncio.run(program_topic())
    yield client, workers, iid
    client.loop_stop()
    client.disconnect()
    workers.stop_all()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(topic=st.sampled_from(["w1/cmd", "w1/migrate/fuzzer", "w1/reply",
                              "engine-registry/bcast", "program-monitor/bcast",
                              "counter/{iid}/cmd", "w1/cmd"]),
       payload=messages, qos=st.sampled_from([0, 1]))
def test_fuzzing_every_topic_a_worker_listens_on(fuzz_target, topic, payload, qos):
    client, workers, iid = fuzz_target
    client.publish(topic.format(iid=iid), payload, qos=qos).wait_for_publish(5)


def test_the_fuzzed_worker_is_alive_and_its_program_untouched(broker, fuzz_target):  # noqa: F811
    client, workers, iid = fuzz_target
    time.sleep(1.0)
    assert workers.procs["w1"].poll() is None, "the worker died"

    async def check():
        d = await dispatcher(broker.url, ["w1"])
        report = await d._engine_request("w1", "report", {})
        status = await d.pause_code(iid)
        d.kill()
        return report, status

    report, status = asyncio.run(check())
    assert report["procs"][iid]["status"] in ("Running", "Paused", "Exited")
    assert status in ("Paused", "Exited")


@pytest.mark.skipif(find_mosquitto() is None, reason="Mosquitto is needed for ACLs")
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
            c.connect("127.0.0.1", handle.port)
            c.loop_start()
            for _ in range(100):
                if "rc" in result:
                    break
                time.sleep(0.02)
            return c, result.get("rc")

        anonymous, rc = client(None, None)
        assert rc is not None and rc.is_failure  # no credentials: not even connected
        anonymous.loop_stop()
        time.sleep(1.0)
        replies = []
        admin, rc = client("dispatcher", "d-secret")
        assert not rc.is_failure
        admin.on_message = lambda c, u, m: replies.append(json.loads(m.payload))
        admin.subscribe("admin/reply", qos=1)
        mallory, rc = client("mallory", "m-secret")
        assert not rc.is_failure
        command = {"ctrl": "run_code", "kwargs": {"code_name": "evil", "source": "pass"},
                   "reply_to": "admin/reply"}  # workers may answer on +/reply
        mallory.publish("w1/cmd", json.dumps({**command, "request_id": "m1"}), qos=1)
        time.sleep(1.0)
        assert replies == []  # the broker dropped it: mallory may not command workers
        admin.publish("w1/cmd", json.dumps({**command, "request_id": "d1"}), qos=1)
        for _ in range(100):
            if replies:
                break
            time.sleep(0.05)
        assert [r["reply_id"] for r in replies] == ["d1"]
        for c in (admin, mallory):
            c.loop_stop()
            c.disconnect()
    finally:
        workers.stop_all()
        handle.stop()
