"""The dashboard without a browser: its state model, its results reader and its HTTP API.

The live API runs against real CodeEngines and a Dispatcher on the in-process memory
broker, on the Starlette test client's own asyncio loop (the lifespan builds them there,
as the CLI builds the MQTT ones on uvicorn's loop).  No wall-clock bounds are asserted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from runtime import protocol as p  # noqa: E402
from runtime.clock import AsyncioClock  # noqa: E402
from runtime.dispatcher import Dispatcher  # noqa: E402
from runtime.engine import CodeEngine  # noqa: E402
from runtime.memory import MemoryBroker  # noqa: E402
from runtime.transport import Message  # noqa: E402
from thingssim.dashboard.app import create_app  # noqa: E402
from thingssim.dashboard.auth import COOKIE, Auth, host_name, is_loopback  # noqa: E402
from thingssim.dashboard.live import Live  # noqa: E402
from thingssim.dashboard.results import (  # noqa: E402
    ResultsError,
    figure_path,
    load_results,
    run_folder,
    topic_kind,
)
from thingssim.dashboard.state import Fleet, Ring  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ("n = 0\ndef tick():\n    global n\n    print(n)\n    n += 1\n"
           "things.set_interval(tick, 0.01)\n")


# ====================================================================== state model
class FakeEngine:
    def __init__(self, id, status="idle", meta=None, programs=()):
        self.id, self.status, self.meta = id, status, meta or {}
        self.programs = list(programs)


class FakeProgram:
    def __init__(self, iid, engine, status="Running", code_name="c"):
        self.instance_id, self.code_name, self.engine, self.status = iid, code_name, engine, status
        self.error = None
        self.event = None


def msg(topic, value):
    return Message(topic, p.encode(value))


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_ring_keeps_the_last_items_and_answers_since():
    ring = Ring(3)
    for seq in range(1, 6):
        ring.add(seq, f"v{seq}")
    assert len(ring) == 3
    assert ring.since(0) == ["v3", "v4", "v5"]
    assert ring.since(4) == ["v5"]
    assert ring.since(5) == []
    assert ring.last() == "v5"


def test_fleet_delta_carries_only_what_changed_since_a_number():
    clock = Clock()
    fleet = Fleet(now=clock)
    fleet.engine_changed(FakeEngine("w1", meta={"device": "pi"}))
    fleet.engine_changed(FakeEngine("w2"))
    full = fleet.delta(0)
    assert full["full"] and set(full["engines"]) == {"w1", "w2"}
    assert full["engines"]["w1"]["device"] == "pi"
    mark = full["seq"]
    fleet.on_resource(msg("w2/resource", {"timestamp": 5.0, "memory": {"rss": 2048},
                                          "cpu": 12.5, "memory_limit": 256}))
    delta = fleet.delta(mark)
    assert not delta["full"] and list(delta["engines"]) == ["w2"]
    assert delta["engines"]["w2"]["samples"] == [[1000.0, 12.5, 2048, 5.0]]
    assert delta["engines"]["w2"]["memory_limit"] == 256
    assert fleet.delta(delta["seq"])["engines"] == {}


def test_engine_cpu_stands_in_from_its_programs_when_the_worker_reports_none():
    fleet = Fleet(now=Clock())
    fleet.engine_changed(FakeEngine("w1", "busy", programs=["a.1", "b.1"]))
    fleet.program_changed(FakeProgram("a.1", "w1"))
    fleet.program_changed(FakeProgram("b.1", "w1", status="Paused"))
    fleet.on_resource(msg("c/a.1/resource", {"timestamp": 1, "memory": {"rss": 10}, "cpu": 30}))
    fleet.on_resource(msg("c/b.1/resource", {"timestamp": 1, "memory": {"rss": 10}, "cpu": 50}))
    fleet.on_resource(msg("w1/resource", {"timestamp": 1, "memory": {"rss": 99}, "cpu": None}))
    engine = fleet.engines["w1"]
    assert engine.samples.last()[1] == 30.0  # the paused program counts for nothing
    assert engine.cpu_source == "programs"
    fleet.on_resource(msg("w1/resource", {"timestamp": 2, "memory": {"rss": 99}, "cpu": 7}))
    assert engine.samples.last()[1] == 7.0 and engine.cpu_source == "engine"


def test_histories_and_consoles_are_bounded():
    fleet = Fleet(history=5, console_lines=4, now=Clock())
    fleet.engine_changed(FakeEngine("w1"))
    for i in range(50):
        fleet.on_resource(msg("w1/resource", {"timestamp": i, "memory": {"rss": i}, "cpu": i}))
        fleet.on_console(msg("c/c.1/console", [str(i)]))
    assert len(fleet.engines["w1"].samples) == 5
    view = fleet.programs["c.1"]
    assert view.console.since(0) == ["46", "47", "48", "49"] and view.lines == 50
    assert fleet.delta(0)["programs"]["c.1"]["console"] == ["46", "47", "48", "49"]


def test_malformed_reports_are_ignored_not_raised():
    fleet = Fleet(now=Clock())
    fleet.engine_changed(FakeEngine("w1"))
    before = fleet.seq
    fleet.on_resource(Message("w1/resource", b"\xff not json"))
    fleet.on_resource(msg("w1/resource", [1, 2]))
    fleet.on_resource(msg("ghost/resource", {"cpu": 1}))  # never registered
    fleet.on_console(Message("c/c.1/console", b"{"))
    assert fleet.seq == before


def test_ended_programs_beyond_the_bound_are_forgotten_and_a_late_page_gets_everything():
    fleet = Fleet(max_ended=2, now=Clock())
    mark = fleet.delta(0)["seq"]
    for i in range(5):
        fleet.program_changed(FakeProgram(f"p.{i}", "w1", status="Exited"))
    assert sorted(fleet.programs) == ["p.2", "p.3", "p.4"] or len(fleet.programs) == 2
    assert len(fleet.programs) == 2
    late = fleet.delta(mark)
    assert late["full"] and set(late["programs"]) == set(fleet.programs)
    recent = fleet.delta(fleet.seq - 1)
    assert not recent["full"]


def test_program_removal_is_sent_to_a_page_that_is_not_too_far_behind():
    fleet = Fleet(max_ended=1, now=Clock())
    fleet.program_changed(FakeProgram("p.0", "w1", status="Exited"))
    mark = fleet.seq
    fleet.program_changed(FakeProgram("p.1", "w1", status="Exited"))
    delta = fleet.delta(mark)
    assert delta["removed"] == ["p.0"] and list(delta["programs"]) == ["p.1"]


def test_actions_scheduler_events_and_engine_logs_are_numbered_like_the_rest():
    fleet = Fleet(now=Clock())
    record = fleet.action_started("migrate", program="c.1", target="w2")
    mark = fleet.seq
    fleet.action_finished(record, error={"code": "bad_state", "message": "ended"})
    fleet.on_engine_console(msg("w1/console", ["ignored malformed command"]))
    fleet.on_scheduler_event(msg("things-scheduler/events", {"type": "placed", "data": {}}))
    fleet.on_scheduler_state(msg("things-scheduler/state", {"id": "things-scheduler",
                                                            "apps": {}}))
    delta = fleet.delta(mark)
    assert [a["state"] for a in delta["actions"]] == ["failed"]
    assert delta["actions"][0]["error"]["code"] == "bad_state"
    assert delta["logs"][0]["text"] == "ignored malformed command"
    assert delta["scheduler_events"][0]["type"] == "placed"
    assert delta["scheduler_state"]["id"] == "things-scheduler"


# ====================================================================== auth rules
def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("[::1]") and is_loopback("127.5.6.7")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("evil.example")
    assert host_name("[::1]:8080") == "::1" and host_name("localhost:80") == "localhost"


def test_sessions_expire_and_are_bounded():
    t = [0.0]
    auth = Auth("pw", session_s=10, max_sessions=2, now=lambda: t[0])
    assert auth.login("wrong") is None
    a, b, c = auth.login("pw"), auth.login("pw"), auth.login("pw")
    assert auth.identify({COOKIE: a}, None) is None  # pushed out by the third
    assert auth.identify({COOKIE: c}, None).how == "session"
    t[0] = 11
    assert auth.identify({COOKIE: b}, None) is None


# ====================================================================== HTTP: results
@pytest.fixture()
def results_dir(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "boards.csv").write_text(
        "board,profile,cpu_factor,cores,memory_mb,status,programs,events,cpu_seconds,"
        "cpu_util_%,memory_used_mb\nbbb,beaglebone-black,0.035,1,400,idle,0,10,0.5,1.3,24\n"
        "pi3,raspberry-pi-3,0.05,4,800,busy,1,10,0.2,0.1,32\n")
    (out / "actions.csv").write_text("time,action,program,target,done,ok,result\n"
                                     "1,run,counter,bbb,1.01,True,bbb\n"
                                     "5,migrate,counter,pi3,5.02,True,pi3\n")
    (out / "migrations.csv").write_text(
        "migration_id,instance_id,code_name,source,target,started,snapshot_s,snapshot_bytes,"
        "transfer_s,restore_s,commit_s,total_s,ok,error\n"
        "m1,counter.1,counter,bbb,pi3,5.0,0.001,1104,0.004,0.0008,0.0014,0.0072,True,\n")
    (out / "faults.csv").write_text("time,fault,target\n8,crash,bbb\n")
    (out / "programs.csv").write_text("board,instance_id,code_name,status,events,program_time\n"
                                      "pi3,counter.1,counter,Running,10,9\n")
    (out / "messages.csv").write_text(
        "time,event,client,topic,bytes,qos,msg_id,latency,detail\n"
        "0.5,publish,bbb,bbb/resource,80,0,,,\n"
        "0.6,deliver,dispatcher,bbb/resource,80,0,,0.002,\n"
        "1.5,publish,bbb,counter/counter.1/console,20,1,1,,\n"
        "1.6,deliver,dispatcher,counter/counter.1/console,20,1,1,0.004,\n"
        "6.0,deliver,pi3,pi3/migrate/bbb,1200,1,2,0.01,\n"
        "9.9,deliver,pi3,pi3/cmd,90,1,3,0.001,\n")
    (out / "fig_x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return out


def test_results_reader_builds_timeline_load_and_latency(results_dir):
    r = load_results(results_dir)
    assert r["kind"] == "scenario" and r["figures"] == ["fig_x.png"]
    assert r["board_names"] == ["bbb", "pi3"]
    assert r["duration"] == pytest.approx(9.9)
    spans = r["residence"]
    assert [(s["board"], round(s["start"], 2)) for s in spans] == [("bbb", 1.01), ("pi3", 5.01)]
    kinds = {h["kind"]: h for h in r["latency"]}
    assert set(kinds) == {"resource", "console", "migration", "commands"}
    assert kinds["console"]["p50"] == pytest.approx(4.0) and kinds["console"]["count"] == 1
    bbb = r["load"]["boards"]["bbb"]
    assert sum(bbb["sent"]) * r["load"]["bucket_s"] == pytest.approx(2)
    assert max(r["load"]["boards"]["pi3"]["programs"]) == 1
    json.dumps(r)  # everything is JSON


def test_results_reader_errors_and_path_safety(tmp_path, results_dir):
    with pytest.raises(ResultsError, match="no such folder"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no results here"):
        load_results(tmp_path / "empty")
    assert figure_path(results_dir, "../run/fig_x.png") is None
    assert figure_path(results_dir, "boards.csv") is None
    assert figure_path(results_dir, "fig_x.png") == results_dir / "fig_x.png"
    assert run_folder(tmp_path, "run") == results_dir.resolve()
    assert run_folder(results_dir, "..") is None and run_folder(results_dir, "/etc") is None


def test_topic_kinds():
    assert topic_kind("engine-registry/state/w1") == "registry"
    assert topic_kind("c/c.1/console") == "console"
    assert topic_kind("w1/resource") == "resource"
    assert topic_kind("w2/migrate/w1") == "migration"
    assert topic_kind("w1/reply/w2") == "commands" and topic_kind("w1/cmd") == "commands"
    assert topic_kind("things-scheduler/events") == "scheduler"
    assert topic_kind("sensors/kitchen") == "application"


def test_results_committed_in_the_repository_load():
    for name in ("migration_chain", "sensor_pipeline", "migration"):
        folder = ROOT / "results" / name
        if folder.is_dir():
            json.dumps(load_results(folder))


def test_results_http(results_dir):
    app = create_app(results=results_dir.parent)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        session = client.get("/api/session").json()
        assert session["results"] and not session["live"] and not session["login"]
        top = client.get("/api/results")  # the folder holds only a run folder
        assert top.status_code == 404 and "no results here" in top.json()["error"]["message"]
        r = client.get("/api/results", params={"run": "run"}).json()
        assert r["kind"] == "scenario" and r["migrations"][0]["target"] == "pi3"
        figure = client.get("/api/results/figures/fig_x.png", params={"run": "run"})
        assert figure.status_code == 200
        missing = client.get("/api/results", params={"run": "../.."})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/api/results/figures/..%2Fboards.csv").status_code == 404
        no_live = client.get("/api/state")
        assert no_live.status_code == 404 and "--results only" in no_live.json()["error"]["message"]
        page = client.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert client.get("/static/app.js").status_code == 200


# ====================================================================== HTTP: live
def live_factory(engines=("w1", "w2"), made=None):
    """Engines and a dispatcher on the memory broker, built on the app's loop."""
    async def factory():
        loop = asyncio.get_running_loop()
        clock = AsyncioClock(loop)
        broker = MemoryBroker(clock)
        for name in engines:
            CodeEngine(broker.client(name), clock, engine_id=name, device="test-board",
                       resource_period=0.05).start()
        d = Dispatcher(broker.client("dash"), clock, {"id": "dash", "request_timeout": 5.0})
        d.start()
        for _ in range(200):
            if all(e in d.engines for e in engines):
                break
            await asyncio.sleep(0.01)
        live = Live(d, Fleet(), timeout=2.0)
        if made is not None:
            made["live"], made["broker"] = live, broker
        return live
    return factory


def wait(client, predicate, what, tries=400):
    for _ in range(tries):
        state = client.get("/api/state").json()
        if predicate(state):
            return state
        client.portal.call(asyncio.sleep, 0.01)
    raise AssertionError(f"timed out waiting for {what}")


def csrf(client):
    return {"X-CSRF-Token": client.get("/api/session").json()["csrf"]}


@pytest.fixture()
def live_client():
    made: dict = {}
    app = create_app(live_factory(made=made), auth=Auth(None))
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        client.made = made
        yield client


def test_live_state_shows_engines_and_their_reports(live_client):
    state = wait(live_client, lambda s: len(s["engines"]) == 2 and all(
        e["samples"] for e in s["engines"].values()), "two engines reporting")
    assert state["engines"]["w1"]["device"] == "test-board"
    assert state["engines"]["w1"]["status"] == "idle"


def test_run_pause_resume_migrate_spawn_kill_through_the_api(live_client):
    c, h = live_client, csrf(live_client)
    run = c.post("/api/programs", json={"engine": "w1", "source": COUNTER,
                                        "code_name": "counter"}, headers=h)
    assert run.status_code == 200, run.text
    record = run.json()
    assert record["state"] == "ok" and record["result"]["engine"] == "w1"
    iid = record["result"]["id"]
    wait(c, lambda s: len(s["programs"].get(iid, {}).get("console", [])) >= 3, "console lines")
    assert c.post(f"/api/programs/{iid}/pause", headers=h).json()["result"] == "Paused"
    assert c.post(f"/api/programs/{iid}/resume", headers=h).json()["result"] == "Running"
    moved = c.post(f"/api/programs/{iid}/migrate", json={"target": "w2"}, headers=h).json()
    assert moved["result"]["engine"] == "w2"
    assert set(moved["result"]["migration"]) >= {"snapshot_s", "transfer_s", "restore_s",
                                                  "commit_s"}
    state = wait(c, lambda s: s["programs"][iid]["engine"] == "w2", "the program on w2")
    console = state["programs"][iid]["console"]
    numbers = [int(x) for x in console]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap, no repeat
    spawned = c.post(f"/api/programs/{iid}/spawn", json={"targets": ["w1"]}, headers=h)
    assert spawned.status_code == 200, spawned.text
    assert c.post(f"/api/programs/{iid}/kill", headers=h).json()["state"] == "ok"
    actions = c.get("/api/state").json()["actions"]
    assert [a["kind"] for a in actions] == ["run", "pause", "resume", "migrate", "spawn", "kill"]
    assert c.get(f"/api/actions/{actions[3]['id']}").json()["kind"] == "migrate"


def test_bad_input_gives_clear_errors(live_client):
    c, h = live_client, csrf(live_client)
    unknown = c.post("/api/programs", json={"engine": "nope", "source": COUNTER}, headers=h)
    assert unknown.status_code == 404
    assert "unknown engine 'nope'" in unknown.json()["error"]["message"]
    assert c.post("/api/programs", content=b"{not json", headers=h).status_code == 400
    assert c.post("/api/programs", json=[1], headers=h).json()["error"]["message"] == \
        "the body must be a JSON object"
    empty = c.post("/api/programs", json={"engine": "w1", "source": "  "}, headers=h)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
    both = c.post("/api/programs", json={"engine": "w1"}, headers=h)
    assert both.status_code == 400
    bad_name = c.post("/api/programs", json={"engine": "w1", "source": COUNTER,
                                             "code_name": "a/b"}, headers=h)
    assert bad_name.status_code == 400
    ghost = c.post("/api/programs/ghost.1/pause", headers=h)
    assert ghost.status_code == 404 and "ghost.1" in ghost.json()["error"]["message"]
    assert c.post("/api/programs/ghost.1/explode", headers=h).status_code == 404
    run = c.post("/api/programs", json={"engine": "w1", "source": COUNTER}, headers=h).json()
    iid = run["result"]["id"]
    to_nowhere = c.post(f"/api/programs/{iid}/migrate", json={"target": "w9"}, headers=h)
    assert to_nowhere.status_code == 404
    same = c.post(f"/api/programs/{iid}/migrate", json={"target": "w1"}, headers=h)
    assert same.status_code == 400 and "already runs on w1" in same.json()["error"]["message"]
    not_a_list = c.post(f"/api/programs/{iid}/spawn", json={"targets": "w2"}, headers=h)
    assert not_a_list.status_code == 400
    assert c.get("/api/state", params={"since": "x"}).status_code == 400
    assert c.get("/api/actions/999").status_code == 404


def test_an_engine_refusal_is_shown_as_the_engine_sent_it(live_client):
    c, h = live_client, csrf(live_client)
    crash = c.post("/api/programs", json={"engine": "w1", "source": "raise ValueError('boom')\n",
                                          "code_name": "bad"}, headers=h)
    assert crash.status_code == 502
    error = crash.json()["error"]
    assert error["code"] in (p.PROGRAM_CRASHED, p.BAD_PROGRAM) and "boom" in error["message"]
    failed = c.get("/api/state").json()["actions"][-1]
    assert failed["state"] == "failed" and failed["error"]["code"] == error["code"]
    run = c.post("/api/programs", json={"engine": "w1", "source": COUNTER}, headers=h).json()
    iid = run["result"]["id"]
    c.post(f"/api/programs/{iid}/kill", headers=h)
    wait(c, lambda s: s["programs"][iid]["status"] == "Exited", "the program ended")
    again = c.post(f"/api/programs/{iid}/migrate", json={"target": "w2"}, headers=h)
    assert again.status_code == 502 and again.json()["error"]["code"] == p.BAD_STATE


def test_files_and_applications_without_their_services_fail_clearly(live_client):
    c, h = live_client, csrf(live_client)
    c.made["live"].gfs.timeout = 0.05  # nobody serves gfs/cmd on this broker
    listing = c.get("/api/files", params={"path": "/"})
    assert listing.status_code == 504 and "thingssim gfs" in listing.json()["error"]["message"]
    assert c.get("/api/files/download").status_code == 400  # no path
    bad_app = c.post("/api/apps", content=b"name = 'x'\n[[components]]\nsource = 'a.py'\n",
                     params={"name": "a.toml"}, headers=h)
    assert bad_app.status_code == 400 and "a.toml" in bad_app.json()["error"]["message"]
    not_toml = c.post("/api/apps", content=b"name = = 1", headers=h)
    assert not_toml.status_code == 400 and "TOML" in not_toml.json()["error"]["message"]


def test_event_stream_sends_the_state_then_changes():
    """The SSE stream on a real uvicorn server: a first full message, then changes, and a
    reconnect with Last-Event-ID resumes after what it saw."""
    import httpx
    from dashboard_server import Server

    app = create_app(live_factory(engines=("w1",)), batch_s=0)
    with Server(app) as server:
        messages = []
        with httpx.stream("GET", f"{server.url}/api/events", timeout=30) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    messages.append(json.loads(line[6:]))
                    if len(messages) == 2:
                        break
        first, second = messages
        assert first["full"] and "w1" in first["engines"]
        assert second["seq"] > first["seq"] and not second["full"]
        with httpx.stream("GET", f"{server.url}/api/events", timeout=30,
                          headers={"Last-Event-ID": str(second["seq"])}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    resumed = json.loads(line[6:])
                    assert not resumed["full"]  # only what came after
                    if resumed["seq"] > second["seq"]:
                        break
        assert resumed["engines"]["w1"]["samples"]  # its next resource report


# ====================================================================== HTTP: auth
def test_without_a_password_only_loopback_hosts_and_csrf_protected_changes(live_client):
    c = live_client
    assert c.get("/api/state", headers={"Host": "evil.example:8080"}).status_code == 403
    assert c.get("/api/state", headers={"Host": "localhost:8080"}).status_code == 200
    no_token = c.post("/api/programs/x.1/pause")
    assert no_token.status_code == 403 and no_token.json()["error"]["code"] == "csrf"
    assert c.post("/api/programs/x.1/pause", headers={"X-CSRF-Token": "guess"}).status_code == 403
    cross = c.post("/api/programs/x.1/pause", headers={**csrf(c), "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.json()["error"]["message"]
    same = c.post("/api/programs/x.1/pause", headers={**csrf(c), "Origin": "http://127.0.0.1:8080"})
    assert same.status_code == 404  # past the guard: the program is unknown


def test_with_a_password_a_login_is_required():
    app = create_app(live_factory(engines=("w1",)), auth=Auth("s3cret", fail_delay=0))
    with TestClient(app, base_url="http://dash.example:8080") as c:
        assert c.get("/api/state").status_code == 401
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.get("/login").status_code == 200
        wrong = c.post("/login", data={"password": "nope"}, follow_redirects=False)
        assert wrong.status_code == 303 and "failed" in wrong.headers["location"]
        assert COOKIE not in c.cookies
        cross = c.post("/login", data={"password": "s3cret"}, headers={"Origin": "http://evil"})
        assert cross.status_code == 403
        ok = c.post("/login", data={"password": "s3cret"}, follow_redirects=False)
        assert ok.status_code == 303 and "httponly" in ok.headers["set-cookie"].lower()
        assert "samesite=strict" in ok.headers["set-cookie"].lower()
        assert c.get("/api/state").status_code == 200
        token = c.get("/api/session").json()["csrf"]
        assert c.post("/api/programs/x.1/pause").status_code == 403  # cookie alone: no
        assert c.post("/api/programs/x.1/pause", headers={"X-CSRF-Token": token}).status_code == 404
        assert c.post("/logout", headers={"X-CSRF-Token": token}).status_code == 200
        c.cookies.clear()
        assert c.get("/api/state").status_code == 401
        basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
        assert c.get("/api/state", headers={"Authorization": basic}).status_code == 200
        bad = "Basic " + base64.b64encode(b"anyone:wrong").decode()
        assert c.get("/api/state", headers={"Authorization": bad}).status_code == 401
        assert c.get("/api/state", headers={"Authorization": "Basic %%%"}).status_code == 401
        no_header = c.post("/api/programs/x.1/pause", headers={"Authorization": basic})
        assert no_header.status_code == 403
        assert c.post("/api/programs/x.1/pause", headers={"Authorization": basic,
                                                          "X-CSRF-Token": "1"}).status_code == 404


# ====================================================================== the command
def test_cli_refuses_unsafe_or_empty_setups(tmp_path):
    from click.testing import CliRunner

    from thingssim.cli import main

    runner = CliRunner()
    nothing = runner.invoke(main, ["dashboard"])
    assert nothing.exit_code == 2 and "give a broker URL, --results DIR, or both" in nothing.output
    exposed = runner.invoke(main, ["dashboard", "--results", str(ROOT / "results" / "migration"),
                                   "--host", "0.0.0.0"], env={"THINGSSIM_DASHBOARD_PASSWORD": ""})
    assert exposed.exit_code == 2 and "refusing to serve on 0.0.0.0 without a password" in \
        exposed.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(main, ["dashboard", "--results", str(tmp_path / "empty")])
    assert empty.exit_code == 1 and "no results here" in empty.output
    bad_url = runner.invoke(main, ["dashboard", "http://host:1883"])
    assert bad_url.exit_code == 2


def test_cli_serves_a_results_folder(tmp_path):
    """The command as a user runs it: the page and its assets from the installed package."""
    import os
    import subprocess
    import sys

    import httpx
    from dashboard_server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "thingssim.cli", "dashboard", "--results",
                             str(ROOT / "results" / "migration_chain"), "--port", str(port)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                page = httpx.get(url + "/", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                asyncio.run(asyncio.sleep(0.05))
        assert page.status_code == 200 and "app.js" in page.text
        assert httpx.get(url + "/static/app.js").status_code == 200
        assert httpx.get(url + "/api/results").json()["name"] == "migration_chain"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert f"thingssim dashboard on http://127.0.0.1:{port}/" in out


# ====================================================================== the broker's ACL
def test_actions_are_bound_by_the_broker_acl(tmp_path):
    """Through Mosquitto with passwords and an ACL: as ``dispatcher`` the dashboard runs a
    program on a real worker; as ``guest`` (no right to publish commands) the same action
    never reaches the engine and fails with no reply, as ``thingssim dispatch`` would."""
    import httpx
    import mqtt_fixtures
    from dashboard_server import Server
    from test_real_workers import Workers

    from thingssim.dashboard.cli import open_live

    mqtt_fixtures.require_mosquitto("the amqtt fallback has no password files or ACLs")
    broker = mqtt_fixtures._start(config={
        "allow_anonymous": False,
        "password_file": str(mqtt_fixtures.make_password_file(tmp_path / "passwords",
                                                              mqtt_fixtures.AUTH_USERS)),
        "acl_file": str(_write(tmp_path / "acl", mqtt_fixtures.AUTH_ACL))})
    workers = Workers(broker.url, tmp_path)
    try:
        workers.start("w1", username="engine", password=mqtt_fixtures.AUTH_USERS["engine"])
        for user, expect in (("dispatcher", 200), ("guest", 504)):
            app = create_app(lambda user=user: open_live(
                broker.url, username=user, password=mqtt_fixtures.AUTH_USERS[user],
                timeout=2.0))
            with Server(app) as server:
                for _ in range(400):
                    state = httpx.get(server.url + "/api/state").json()
                    if state["engines"].get("w1", {}).get("status") == "idle":
                        break
                    asyncio.run(asyncio.sleep(0.05))
                token = httpx.get(server.url + "/api/session").json()["csrf"]
                run = httpx.post(server.url + "/api/programs", timeout=30,
                                 json={"engine": "w1", "source": COUNTER},
                                 headers={"X-CSRF-Token": token})
                assert run.status_code == expect, (user, run.text)
                if expect == 200:
                    iid = run.json()["result"]["id"]
                    httpx.post(f"{server.url}/api/programs/{iid}/kill", timeout=30,
                               headers={"X-CSRF-Token": token})
                else:
                    assert run.json()["error"]["code"] == "timeout"
    finally:
        workers.stop_all()
        broker.stop()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
