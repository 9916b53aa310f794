"""Real workers (separate processes, programs in child processes) on a real broker.

The broker is started by the fixture on a free loopback port (Mosquitto when installed,
else amqtt); the tests are skipped with the reason when neither is available.  The broker
restart test needs persistence, and the command-line interoperability test Mosquitto's
clients: both skip without Mosquitto, saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mqtt_fixtures
import pytest
from harness import consecutive, forever_counter
from waiting import until

from runtime import protocol as p
from runtime.clock import AsyncioClock
from runtime.dispatcher import Dispatcher
from runtime.rpc import RemoteError
from thingssim.broker import find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
COUNTER = forever_counter(0.05)
#: the test fleet's shared snapshot_key (signed snapshots): a worker without one refuses
#: every migration unless its config lists migrate_peers
FLEET_KEY = "test-fleet-snapshot-key"


broker = mqtt_fixtures.broker
broker_factory = mqtt_fixtures.broker_factory


class Workers:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp, self.procs = url, tmp, {}

    def start(self, wid: str, **config) -> subprocess.Popen:
        path = self.tmp / f"{wid}.json"
        path.write_text(json.dumps({"pubsub_url": self.url, "id": wid, "keepalive": 2,
                                    "resource_period": 0.5, "snapshot_key": FLEET_KEY,
                                    **config}))
        log = open(self.tmp / f"{wid}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "runtime.worker", str(path)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.procs[wid] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def workers(broker, tmp_path):
    w = Workers(broker.url, tmp_path)
    yield w
    w.stop_all()


async def dispatcher(url: str, engines: list[str], timeout: float = 20.0,
                     **config) -> Dispatcher:
    from runtime.mqtt import MqttTransport

    loop = asyncio.get_running_loop()
    d = Dispatcher(MqttTransport(url, client_id=f"test-{os.getpid()}-{time.time_ns()}",
                                 loop=loop), AsyncioClock(loop), {"id": "tester", **config})
    d.start()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(d.engines.get(e) and d.engines[e].status != "dead" for e in engines):
            return d
        await asyncio.sleep(0.05)
    raise AssertionError(f"engines not seen: {engines}, have {list(d.engines)}")


def wait_for_engines(url: str, engines: list[str]) -> None:
    """Until a dispatcher sees every one of ``engines`` alive."""
    async def main() -> None:
        (await dispatcher(url, engines)).kill()

    asyncio.run(main())


def test_run_pause_resume_migrate_spawn_kill_across_worker_processes(broker, workers):
    workers.start("w1")
    workers.start("w2")

    async def main():
        d = await dispatcher(broker.url, ["w1", "w2"])
        iid = (await d.run_code("w1", "counter", COUNTER))["id"]
        console = d.programs[iid].console
        await until(lambda: len(console) >= 5, what="5 console lines")
        assert await d.pause_code(iid) == "Paused"
        paused_at = len(console)
        for _ in range(2):  # two more resource reports (0.5 s apart): time passed on w1
            report = d.engines["w1"].resource
            await until(lambda report=report: d.engines["w1"].resource is not report,
                        what="a resource report from w1")
        assert len(console) <= paused_at + 1  # nothing runs while paused
        assert await d.resume_code(iid) == "Running"
        moved = await d.move_code("w1", "w2", "counter", iid)
        assert moved["engine"] == "w2" and moved["migration"]["ok"]
        await until(lambda: d.engines["w1"].status == "idle" and
                    d.engines["w2"].status == "busy", what="w1 idle and w2 busy")
        copies = await d.spawn_code("w2", ["w1"], "counter", iid)
        assert copies[0]["engine"] == "w1" and copies[0]["id"] != iid
        goal = max(len(console) + 5, 15)
        await until(lambda: len(console) >= goal, what=f"{goal} console lines")
        assert await d.kill_code(iid) == "Exited"
        assert await d.kill_code(copies[0]["id"]) == "Exited"
        d.kill()
        return list(console)

    console = asyncio.run(main())
    assert len(consecutive(console)) > 10  # no gap, no repeat across the move


def test_sigkilled_worker_is_reported_dead_and_its_programs_lost(broker, workers):
    workers.start("w1")
    victim = workers.start("w2")

    async def main():
        d = await dispatcher(broker.url, ["w1", "w2"], lost_after=1.0)
        iid = (await d.run_code("w2", "counter", COUNTER))["id"]
        statuses = []

        def note(program) -> None:
            if program.instance_id == iid:
                statuses.append(program.status)

        d.on("program-monitor-update", note)
        victim.send_signal(signal.SIGKILL)
        await until(lambda: d.engines["w2"].status == "dead", what="w2 reported dead")
        await until(lambda: d.programs[iid].status == "Lost", what="the program Lost")
        # cut off or dead: not known yet, so Unreachable; after lost_after, it is gone
        assert statuses[statuses.index("Unreachable"):] == ["Unreachable", "Lost"], statuses
        d.kill()

    asyncio.run(main())


def test_broker_restart_reconnects_everyone_and_no_command_is_lost_or_repeated(
        broker_factory, tmp_path):
    """A command sent while the broker is down reaches the worker once.  The broker must
    keep the sessions across its restart (persistence, saved on its clean stop): else,
    when the dispatcher reconnects first, its command finds nobody subscribed yet."""
    b = broker_factory(config={"persistence": True})
    workers = Workers(b.url, tmp_path)
    workers.start("w1")

    async def main():
        d = await dispatcher(b.url, ["w1"])
        iid = (await d.run_code("w1", "counter", COUNTER))["id"]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: b.stop(keep_state=True))
        pending = d.run_code("w1", "second", COUNTER)  # sent while the broker is down
        await asyncio.sleep(0.5)  # down for a while: everyone retries meanwhile
        await loop.run_in_executor(None, b.start)
        second = await asyncio.wait_for(pending, 30)
        assert await d.pause_code(iid) == "Paused"

        def reported() -> dict:  # the registry report follows the replies
            programs = d.engines["w1"].report.get("procs", {})
            done = second["id"] in programs and programs[iid]["status"] == "Paused"
            return programs if done else {}

        programs = await until(reported, what="the registry report")
        assert set(programs) == {iid, second["id"]}  # run once, not lost, not twice
        d.kill()

    try:
        asyncio.run(main())
    finally:
        workers.stop_all()


def test_bad_programs_do_not_hurt_the_worker(broker, workers):
    workers.start("w1", program_memory_limit_mb=400, max_callback_s=0.5)

    async def main():
        d = await dispatcher(broker.url, ["w1"])
        good = (await d.run_code("w1", "good", COUNTER))["id"]
        bad = {}
        for name, source in {
            "raises": "def f():\n    raise KeyError('x')\nthings.set_timeout(f, 0.05)\n",
            "loops": "def f():\n    while True:\n        pass\nthings.set_timeout(f, 0.05)\n",
            "hogs": "def f():\n    global b\n    b = bytearray(3 * 1024**3)\n"
                    "things.set_timeout(f, 0.05)\n",
        }.items():
            bad[name] = (await d.run_code("w1", name, source))["id"]
        await until(lambda: all(d.programs[iid].status not in ("Running", "unknown")
                                for iid in bad.values()), 30, "the bad programs to end")
        for name, iid in bad.items():
            assert d.programs[iid].status == "Crashed", name
        console = d.programs[good].console
        await until(lambda: len(console) > 20, what="21 console lines")
        assert d.programs[good].status == "Running"
        assert await d.pause_code(good) == "Paused"
        d.kill()
        return list(d.programs[good].console)

    assert len(consecutive(asyncio.run(main()))) > 20


def test_error_replies_over_mqtt(broker, workers):
    workers.start("w1")

    async def main():
        d = await dispatcher(broker.url, ["w1"])
        with pytest.raises(RemoteError) as info:
            await d._engine_request("w1", "warp_drive", {})
        assert info.value.code == p.UNKNOWN_CTRL
        with pytest.raises(RemoteError) as info:
            await d.run_code("w1", "bad", "def (:")
        assert info.value.code == p.BAD_PROGRAM
        d.kill()

    asyncio.run(main())


@pytest.mark.skipif(find_mosquitto() is None or find_mosquitto("mosquitto_pub") is None,
                    reason="needs Mosquitto and its command-line clients (apt-get install "
                           "mosquitto mosquitto-clients)")
def test_interoperability_with_mosquitto_command_line_clients(broker, workers):
    """Drive workers with mosquitto_pub/mosquitto_sub alone: run, read console, migrate."""
    workers.start("w1")
    workers.start("w2")
    host, port = "127.0.0.1", str(broker.port)
    wait_for_engines(broker.url, ["w1", "w2"])

    def pub(topic: str, payload: dict) -> None:
        subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", topic,
                        "-m", json.dumps(payload)], check=True, timeout=10)

    def sub(topic: str, count: int, timeout: int = 10) -> list:
        out = subprocess.run(["mosquitto_sub", "-h", host, "-p", port, "-q", "1", "-t", topic,
                              "-C", str(count), "-W", str(timeout)], capture_output=True,
                             text=True, timeout=timeout + 5)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    # a persistent session subscribed to the replies (-E: once the broker acknowledged
    # it), which keeps them until we read them
    replies = ["mosquitto_sub", "-h", host, "-p", port, "-q", "1", "-t", "cli/reply", "-c",
               "-i", "cli-replies"]
    subprocess.run([*replies, "-E"], check=True, timeout=10)
    pub("w1/cmd", {"ctrl": "run_code", "request_id": "r1", "reply_to": "cli/reply",
                   "kwargs": {"code_name": "counter", "source": COUNTER}})
    console = sub("counter/+/console", 5)
    assert len(console) == 5 and all(isinstance(line, list) for line in console)
    # find the instance id from the retained registry entry
    state = sub("engine-registry/state/w1", 1)[0]
    iid = next(iter(state["procs"]))
    pub("w1/cmd", {"ctrl": "migrate_code", "request_id": "r2", "reply_to": "cli/reply",
                   "kwargs": {"instance_id": iid, "engine": "w2"}})
    out = subprocess.run([*replies, "-C", "2", "-W", "20"], capture_output=True, text=True,
                         timeout=25).stdout
    answers = {r["reply_id"]: r for r in map(json.loads, out.splitlines())}
    assert answers["r1"]["payload"]["status"] == "Running"
    assert answers["r2"]["payload"]["engine"] == "w2"
    assert sub("engine-registry/state/w2", 1)[0]["procs"][iid]["status"] == "Running"


def test_sigterm_reports_dead_and_migrates_programs_away(broker, workers):
    workers.start("w1")
    leaving = workers.start("w2", on_shutdown="migrate")

    async def main():
        d = await dispatcher(broker.url, ["w1", "w2"])
        iid = (await d.run_code("w2", "counter", COUNTER))["id"]
        console = d.programs[iid].console
        await until(lambda: len(console) >= 3, what="3 console lines")
        leaving.send_signal(signal.SIGTERM)
        await until(lambda: d.engines["w2"].status == "dead" and
                    d.programs[iid].engine == "w1", what="w2 dead, its program on w1")
        await until(lambda: d.programs[iid].status == "Running", what="it runs on w1")
        goal = len(console) + 3
        await until(lambda: len(console) >= goal, what="3 more console lines")
        d.kill()
        return list(console)

    assert len(consecutive(asyncio.run(main()))) > 5
    assert leaving.wait(timeout=10) == 0


def test_dispatch_and_shell_commands(broker, workers, tmp_path):
    """The CLI a user types: one-shot dispatch (text and --json) and the shell on stdin."""
    workers.start("w1")
    workers.start("w2")
    program = tmp_path / "counter.py"
    program.write_text(COUNTER)

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "thingssim.cli", *args], input=stdin,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    wait_for_engines(broker.url, ["w1", "w2"])
    started = cli("dispatch", broker.url, "run", "w1", str(program), "--json")
    assert started.returncode == 0, started.stderr
    iid = json.loads(started.stdout)["id"]
    status = cli("dispatch", broker.url, "status")
    assert iid in status.stdout and "w1" in status.stdout
    moved = cli("dispatch", broker.url, "migrate", iid, "w2", "--json")
    assert json.loads(moved.stdout)["engine"] == "w2"
    missing = cli("dispatch", broker.url, "pause", "nope")
    assert missing.returncode != 0 and "UnknownProgram" in missing.stderr
    assert "Traceback" not in missing.stderr
    session = cli("shell", broker.url, stdin=f"engines\nprograms\ntail {iid} 3\npause {iid}\n"
                                              "kill nope\nquit\n")
    assert session.returncode == 0, session.stderr
    assert "w1" in session.stdout and "Paused" in session.stdout
    assert "error: unknown program instance 'nope'" in session.stdout
    unreachable = cli("dispatch", "mqtt://127.0.0.1:1", "status")
    assert unreachable.returncode != 0 and "cannot connect" in unreachable.stderr
