"""CodeEngine and Dispatcher protocol behaviour, on the in-process memory transport.

(The same scenarios on the simulated network, with latencies and faults, are in
tests/test_sim_world.py.)
"""

from __future__ import annotations

import json

import pytest
from harness import PROGRAMS, forever_counter

from runtime import VirtualClock
from runtime import protocol as p
from runtime.dispatcher import Dispatcher, UnknownEngine, UnknownProgram
from runtime.engine import CodeEngine
from runtime.memory import MemoryBroker
from runtime.rpc import RemoteError, Requester, RequestTimeout

COUNTER = (PROGRAMS / "counter.py").read_text()
MIGRATION_STEPS = {"restore_code", "commit_migration", "abort_migration"}
FOREVER = forever_counter(0.1)


class Lab:
    def __init__(self, n: int = 3) -> None:
        self.clock = VirtualClock()
        self.broker = MemoryBroker(self.clock)
        self.transports = {f"e{i}": self.broker.client(f"e{i}") for i in range(n)}
        self.engines = {name: CodeEngine(t, self.clock, engine_id=name, resource_period=None)
                        .start() for name, t in self.transports.items()}
        self.client = self.broker.client("tester")
        self.client.connect()
        self.rpc = Requester(self.client, self.clock, "tester/reply", timeout=60.0)
        self.seen: list[tuple[str, object]] = []
        self.client.subscribe("#", lambda m: self.seen.append((m.topic, m.payload)))
        self.run(0.1)

    def run(self, seconds: float) -> None:
        self.clock.run(until=self.clock.now() + seconds)

    def request(self, engine_id: str, ctrl: str, **kwargs):
        topic = p.migrate_topic(engine_id, "tester") if ctrl in MIGRATION_STEPS else \
            p.engine_topic(engine_id, "cmd")
        fut = self.rpc.request(topic, ctrl, kwargs)
        self.run(0.2)
        return fut

    def raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload)
        self.run(0.1)

    def console(self, iid: str) -> list[str]:
        lines = []
        for topic, payload in self.seen:
            if topic.endswith(f"/{iid}/console"):
                lines.extend(json.loads(payload))
        return lines


def _counting(lines: list[str]) -> list[int]:
    return [int(x) for x in lines if x.isdigit()]


@pytest.fixture()
def lab() -> Lab:
    return Lab()


def test_malformed_messages_on_every_topic_are_logged_and_the_engine_keeps_working(lab):
    started = lab.request("e0", "run_code", code_name="counter", source=COUNTER).result()
    cmd = p.program_topic("counter", started["id"], "cmd")
    for topic in (p.engine_topic("e0", "cmd"), p.ENGINE_REGISTRY_BCAST,
                  p.PROGRAM_MONITOR_BCAST, cmd):
        for junk in (b"", b"\xff\xfe", b"not json", b"[1,2]", b'"str"', b"{}",
                     b'{"ctrl": 5}', b'{"ctrl": "run_code", "kwargs": []}',
                     b'{"ctrl": "x", "request_id": 7}', b'{"ctrl":"x","reply_to":"a/#"}',
                     json.dumps({"ctrl": "run_code", "kwargs": {"source": 1},
                                 "request_id": "r", "reply_to": "tester/reply"}).encode()):
            lab.raw(topic, junk)
    logs = [json.loads(pl) for t, pl in lab.seen if t == "e0/console"]
    assert any("bad command" in entry for entry in logs)
    assert lab.engines["e0"].running
    again = lab.request("e0", "run_code", code_name="c2", source=COUNTER).result()
    assert again["status"] == "Running"
    lab.run(1.0)
    assert _counting(lab.console(started["id"]))[:5] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("ctrl", "kwargs", "code"), [
    ("launch_rockets", {}, p.UNKNOWN_CTRL),
    ("run_code", {}, p.BAD_REQUEST),
    ("run_code", {"source": "x = (", "code_name": "bad"}, p.BAD_PROGRAM),
    ("run_code", {"source": "1/0", "code_name": "crash"}, p.PROGRAM_CRASHED),
    ("run_code", {"source": "pass", "code_name": "a/b"}, p.BAD_REQUEST),
    ("kill_code", {"instance_id": "nope"}, p.NOT_FOUND),
    ("migrate_code", {"instance_id": "nope", "engine": "e1"}, p.NOT_FOUND),
    ("restore_code", {"snapshot": {"format": "junk"}}, p.BAD_REQUEST),
    ("restore_code", {"snapshot": {"format": "thingssim-snapshot", "version": 1},
                      "instance_id": "x.1"}, p.RESTORE_FAILED),
    ("commit_migration", {"instance_id": "x"}, p.BAD_REQUEST),
    ("restore_code", {"snapshot": {"format": "junk"}}, p.UNKNOWN_CTRL),  # not on <e>/cmd
])
def test_every_failure_gets_an_error_reply(lab, ctrl, kwargs, code):
    if code == p.UNKNOWN_CTRL and ctrl in MIGRATION_STEPS:
        fut = lab.rpc.request("e0/cmd", ctrl, kwargs)
        lab.run(0.2)
    else:
        fut = lab.request("e0", ctrl, **kwargs)
    with pytest.raises(RemoteError) as info:
        fut.result()
    assert info.value.code == code
    assert lab.engines["e0"].programs == {}


def test_commands_are_idempotent_by_request_id(lab):
    message = p.encode({"ctrl": "run_code", "kwargs": {"code_name": "c", "source": COUNTER},
                        "request_id": "same-id", "reply_to": "tester/reply"})
    for _ in range(3):  # QoS 1 may deliver a command more than once
        lab.raw("e0/cmd", message)
    replies = [json.loads(pl) for t, pl in lab.seen if t == "tester/reply"]
    assert len(lab.engines["e0"].programs) == 1
    assert len(replies) == 3 and all(r == replies[0] for r in replies)


def test_instance_ids_are_unique(lab):
    ids = {lab.request(f"e{i % 3}", "run_code", code_name="counter", source=COUNTER)
           .result()["id"] for i in range(6)}
    assert len(ids) == 6


def test_failed_restore_on_the_target_keeps_the_program_running_on_the_source(lab):
    iid = lab.request("e0", "run_code", code_name="counter", source=COUNTER).result()["id"]
    lab.run(0.5)
    broken = lab.engines["e1"]
    broken._migrate_cmds["restore_code"] = lambda kw, source: (_ for _ in ()).throw(
        p.ProtocolError(p.RESTORE_FAILED, "disk full"))
    fut = lab.request("e0", "migrate_code", instance_id=iid, engine="e1")
    lab.run(0.5)
    with pytest.raises(RemoteError, match="disk full") as info:
        fut.result()
    assert info.value.code == p.MIGRATION_FAILED
    assert list(lab.engines["e0"].programs) == [iid] and lab.engines["e1"].programs == {}
    lab.run(1.0)
    numbers = _counting(lab.console(iid))
    assert numbers == list(range(len(numbers))) and len(numbers) > 12
    record = lab.engines["e0"].migrations[-1]
    assert record["ok"] is False and "disk full" in record["error"]


def test_migration_to_a_silent_engine_times_out_and_resumes(lab):
    iid = lab.request("e0", "run_code", code_name="counter", source=FOREVER).result()["id"]
    fut = lab.request("e0", "migrate_code", instance_id=iid, engine="ghost")
    lab.run(25)
    assert isinstance(fut.exception(), RemoteError)
    assert lab.engines["e0"].programs[iid].status.value == "Running"


def test_dispatcher_api_and_events(lab):
    d = Dispatcher(lab.broker.client("d"), lab.clock, {"id": "disp"}).start()
    events: list[str] = []
    for name in ("engine-join", "program-join", "engine-dead"):
        d.on(name, lambda handle, n=name: events.append(n))
    lab.run(0.5)
    assert sorted(d.engines) == ["e0", "e1", "e2"]
    assert {e.status for e in d.engines.values()} == {"idle"}
    with pytest.raises(UnknownEngine, match="unknown engine 'e9'"):
        d.run_code("e9", "x", "pass")
    with pytest.raises(UnknownProgram):
        d.kill_code("nope")
    with pytest.raises(ValueError):
        d.on("no-such-event", print)
    run = d.run_code("e0", "counter", COUNTER)
    lab.run(0.5)
    iid = run.result()["id"]
    assert d.programs[iid].engine == "e0" and d.engines["e0"].status == "busy"
    batch = d.apply_actions([
        {"type": "run", "args": ["e1", "counter", COUNTER]},
        {"type": "run", "args": ["e9", "counter", COUNTER]},
        {"type": "explode", "args": []},
        {"type": "pause", "args": [iid]},
    ])
    lab.run(0.5)
    summary = batch.result()
    assert len(summary["succeeded"]) == 2 and len(summary["failed"]) == 2
    assert "UnknownEngine" in summary["failed"][0]["error"]
    assert d.programs[iid].status == "Paused"
    lab.engines["e2"].crash()
    lab.transports["e2"].vanish()
    lab.run(0.5)
    assert d.engines["e2"].status == "dead" and "engine-dead" in events
    assert events.count("engine-join") == 3 and "program-join" in events


def test_request_timeouts_are_typed():
    clock = VirtualClock()
    broker = MemoryBroker(clock)
    client = broker.client("c")
    client.connect()
    fut = Requester(client, clock, "c/reply", timeout=2.0).request("nobody/cmd", "report")
    clock.run(until=5)
    assert isinstance(fut.exception(), RequestTimeout)
    assert "within 2 s" in str(fut.exception())


def test_signed_snapshots_only_when_engines_share_a_key():
    """With snapshot_key set, engines restore only snapshots signed with that key: a
    client that can reach <engine>/migrate/<sender> still cannot make a worker run its
    code."""
    from runtime.snapshot import document

    clock = VirtualClock()
    broker = MemoryBroker(clock)
    engines = {name: CodeEngine(broker.client(name), clock, engine_id=name,
                                resource_period=None, snapshot_key=b"lab-secret").start()
               for name in ("e0", "e1")}
    client = broker.client("mallory")
    client.connect()
    rpc = Requester(client, clock, "mallory/reply", timeout=60)
    clock.run(until=0.1)
    started = rpc.request("e0/cmd", "run_code", {"code_name": "c", "source": FOREVER})
    clock.run(until=0.5)
    iid = started.result()["id"]
    moved = rpc.request("e0/cmd", "migrate_code", {"instance_id": iid, "engine": "e1"})
    clock.run(until=1.0)
    assert moved.result()["engine"] == "e1"  # signed by e0, verified by e1
    doc = engines["e1"].programs[iid].snapshot()
    forged = {**doc, "program": {**doc["program"], "instance_id": "evil.1"}}
    attempts = {
        "unsigned": forged,
        "other key": document.sign(forged, b"guess"),
        "tampered": {**document.sign(doc, b"lab-secret"), "time": 99.0},
    }
    for label, snapshot in attempts.items():
        fut = rpc.request("e0/migrate/mallory", "restore_code", {"snapshot": snapshot,
                                                         "instance_id": f"x.{len(label)}"})
        clock.run(until=clock.now() + 0.5)
        with pytest.raises(RemoteError) as info:
            fut.result()
        assert info.value.code == p.RESTORE_FAILED, label
    assert list(engines["e0"].programs) == []
    good = rpc.request("e0/migrate/mallory", "restore_code",
                       {"snapshot": document.sign(forged, b"lab-secret")})
    clock.run(until=clock.now() + 0.5)
    assert good.result()["id"] == "evil.1"  # holders of the key can, of course


def test_only_the_source_of_a_migration_may_commit_or_abort_it(lab):
    iid = lab.request("e0", "run_code", code_name="c", source=FOREVER).result()["id"]
    doc = lab.engines["e0"].programs[iid].snapshot()
    # a source is an engine: its retained registry state says it is alive (a target
    # commits nothing before it has read it, and aborts once it says dead)
    lab.client.publish(p.engine_state_topic("tester"), p.encode(
        {"id": "tester", "status": "idle"}), qos=1, retain=True)
    prepared = lab.rpc.request("e1/migrate/tester", "restore_code",
                               {"snapshot": doc, "migration_id": "m1", "paused": True,
                                "epoch": 2, "instance_id": "moved.1"})
    lab.run(0.2)
    assert prepared.result()["id"] == "moved.1"
    for ctrl in ("commit_migration", "abort_migration", "migration_status"):
        forged = lab.rpc.request("e1/migrate/mallory", ctrl, {"migration_id": "m1"})
        lab.run(0.2)
        assert forged.exception().code == p.FORBIDDEN, ctrl
    done = lab.rpc.request("e1/migrate/tester", "commit_migration",
                           {"migration_id": "m1", "epoch": 2, "resume": True})
    lab.run(0.2)
    assert done.result()["state"] == "committed"
    assert lab.engines["e1"].programs["moved.1"].status.value == "Running"


def test_peer_replies_are_accepted_only_from_that_peer():
    clock = VirtualClock()
    broker = MemoryBroker(clock)
    client, mallory = broker.client("src"), broker.client("mallory")
    client.connect()
    mallory.connect()
    rpc = Requester(client, clock, "src/reply", timeout=5.0, peers=True)
    fut = rpc.request("tgt/migrate/src", "migration_status", {}, peer="tgt")
    clock.run(until=0.1)
    request = json.loads(broker.log[-1].payload)
    assert request["reply_to"] == "src/reply/tgt"
    forged = p.encode(p.reply(request["request_id"], {"state": "committed"}))
    for topic in ("src/reply", "src/reply/mallory"):
        mallory.publish(topic, forged)
        clock.run(until=clock.now() + 0.1)
        assert not fut.done(), topic
    mallory.publish("src/reply/tgt", p.encode(p.reply(request["request_id"],
                                                      {"state": "aborted"})))
    clock.run(until=clock.now() + 0.1)
    assert fut.result() == {"state": "aborted"}  # (the ACL keeps mallory off this topic)
