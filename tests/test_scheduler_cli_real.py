"""``thingssim scheduler`` and ``thingssim schedule`` as a user runs them, on Mosquitto
with real worker processes: the CLI's output for every command (text and ``--json``)
and its errors; a standby taking over from a SIGKILLed active scheduler with the
application still running and nothing doubled; and a worker stopped by SIGTERM whose
programs the scheduler re-places at once (no fence wait).  Skipped, with the reason,
without a broker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import mqtt_fixtures
import pytest
from click.testing import CliRunner
from test_real_workers import ROOT, Workers, dispatcher, wait_for_engines
from waiting import until

from thingssim.cli import main as cli

broker = mqtt_fixtures.broker
SEQ = ("n = 0\n"
       "def tick():\n"
       "    global n\n"
       "    things.publish('seq/' + things.instance_id, n)\n"
       "    n += 1\n"
       "things.set_interval(tick, 0.05)\n")
APP = f'''name = "seq"

[[components]]
name = "seq"
count = 2
memory_mb = 20
code = """
{SEQ}"""
'''


def _scheduler_argv(url: str, db: Path, *extra: str) -> list[str]:
    exe = shutil.which("thingssim")
    head = [exe] if exe else [sys.executable, "-c", "from thingssim.cli import main; main()"]
    return [*head, "scheduler", url, "--db", str(db), "--checkpoint-s", "0.5",
            "--fence-margin-s", "1", "--lease-s", "3", "--period-s", "2", *extra]


class Schedulers:
    """``thingssim scheduler`` processes (SIGKILLed at the end)."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp, self.procs = url, tmp, []

    def start(self, *extra: str) -> subprocess.Popen:
        log = open(self.tmp / f"scheduler-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(_scheduler_argv(self.url, self.tmp / "sched.db", *extra),
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


@pytest.fixture()
def fleet(broker, tmp_path):
    w = Workers(broker.url, tmp_path)
    s = Schedulers(broker.url, tmp_path)
    yield w, s
    s.kill_all()  # first: the workers' SIGTERM must not start recoveries
    w.stop_all()


def schedule(url: str, *args: str, timeout: float = 10.0) -> Any:
    """``thingssim schedule URL ARGS...`` in process: (exit code, output)."""
    result = CliRunner().invoke(cli, ["schedule", url, *args, "--timeout", str(timeout)])
    return result.exit_code, result.output


def schedule_retrying(url: str, *args: str) -> str:
    """The same, while the scheduler process is still starting (no answer yet)."""
    deadline = time.monotonic() + 20
    while True:
        code, out = schedule(url, *args, timeout=2.0)
        if code == 0 or "no answer" not in out or time.monotonic() > deadline:
            assert code == 0, out
            return out
        time.sleep(0.2)


def test_bad_application_files_are_named_before_anything_connects(tmp_path) -> None:
    missing = tmp_path / "nope.toml"
    code, out = schedule("mqtt://127.0.0.1:1", "submit", str(missing))
    assert code == 1 and "nope.toml: cannot read the application file" in out
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 'x'\n[[components]]\nname = 'c'\ncode = 'pass'\n"
                      "count = 'two'\n")
    code, out = schedule("mqtt://127.0.0.1:1", "submit", str(broken))
    assert code == 1 and "broken.toml" in out and "count" in out, out
    broken.write_text("name = 'x'\n[[components]\n")
    code, out = schedule("mqtt://127.0.0.1:1", "submit", str(broken))
    assert code == 1 and "broken.toml" in out, out
    code, out = schedule("mqtt://127.0.0.1:1", "pause")
    assert code == 2 and "pause needs TOKEN" in out


def test_the_schedule_cli_prints_each_command_in_text_and_json(fleet, tmp_path) -> None:
    workers, scheds = fleet
    url = workers.url
    workers.start("w1", fence_s=2.0)
    scheds.start()
    app = tmp_path / "seq.toml"
    app.write_text(APP)
    wait_for_engines(url, ["w1"])

    out = schedule_retrying(url, "submit", str(app))
    first = out.splitlines()[0]
    token = first.split()[0]
    assert re.fullmatch(r"[0-9a-f]{8}  seq  Running", first), out
    lines = out.splitlines()[1:]
    assert len(lines) == 2 and all(re.fullmatch(rf"  seq\.{token}-\d +w1 +running", x)
                                   for x in lines), out

    code, out = schedule(url, "status")
    assert code == 0
    head = out.splitlines()[0]
    assert re.fullmatch(r"scheduler things-scheduler: \S+ active \(term 1\), 1 engines",
                        head), out
    assert f"{token}  seq  Running" in out

    code, out = schedule(url, "status", token, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["token"] == token and doc["status"] == "Running"
    assert {v["engine"] for v in doc["instances"].values()} == {"w1"}

    code, out = schedule(url, "pause", token)
    assert code == 0 and out.splitlines()[0] == f"{token}  seq  Paused", out
    code, out = schedule(url, "pause", token)
    assert code == 1 and "bad_state" in out and "Paused, not Running" in out
    code, out = schedule(url, "resume", token, "--json")
    assert code == 0 and json.loads(out)["status"] == "Running"
    code, out = schedule(url, "status", "--json")
    assert code == 0 and json.loads(out)["apps"][token]["status"] == "Running"
    code, out = schedule(url, "kill", token)
    assert code == 0 and out.splitlines()[0] == f"{token}  seq  Killed", out
    code, out = schedule(url, "kill", "nosuch")
    assert code == 1 and "not_found" in out

    code, out = schedule(url, "status", "--id", "nobody-here", timeout=1.0)
    assert code == 1 and "no answer from scheduler 'nobody-here' within 1 s " \
                          "(is it running?)" in out


def _copies(d: Any) -> Counter:
    seen: Counter = Counter()
    for e in d.engines.values():
        if e.status == "dead":
            continue
        for iid, proc in (e.report.get("procs") or {}).items():
            if proc.get("status") == "Running":
                seen[iid] += 1
    return seen


async def _watch(url: str, engines: list[str], body: Any) -> dict:
    """Run ``body(d, seqs)`` with a dispatcher and every seq/+ number, sampling the
    worst number of running copies throughout."""
    d = await dispatcher(url, engines, watch_console=False)
    seqs: dict[str, list[int]] = {}
    d.transport.subscribe("seq/+", lambda m: seqs.setdefault(
        m.topic.split("/")[1], []).append(int(m.payload)), qos=0)
    worst = [0]

    async def watch() -> None:
        while True:
            worst[0] = max([worst[0], *_copies(d).values()])
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    try:
        out = await body(d, seqs)
    finally:
        watcher.cancel()
        d.kill()
    return {**out, "worst": worst[0]}


def _status(url: str, token: str) -> Optional[dict]:
    code, out = schedule(url, "status", token, "--json", timeout=2.0)
    return json.loads(out) if code == 0 else None


def test_a_standby_takes_over_from_a_sigkilled_active_scheduler(fleet, tmp_path) -> None:
    workers, scheds = fleet
    url = workers.url
    for wid in ("w1", "w2"):
        workers.start(wid, fence_s=2.0)
    active = scheds.start()
    app = tmp_path / "seq.toml"
    app.write_text(APP)
    wait_for_engines(url, ["w1", "w2"])
    token = schedule_retrying(url, "submit", str(app)).split()[0]
    scheds.start("--standby")  # on the same database: the lease keeps it silent

    async def body(d: Any, seqs: dict) -> dict:
        before = {v["id"]: v["engine"] for v in (await asyncio.to_thread(
            _status, url, token))["instances"].values()}
        await until(lambda: all(len(seqs.get(i, ())) > 5 for i in before), timeout=10,
                    what="both programs publishing")
        active.send_signal(signal.SIGKILL)
        active.wait(5)
        killed_at = time.monotonic()
        counts = {i: len(seqs[i]) for i in before}
        status = None
        while time.monotonic() - killed_at < 20:
            status = await asyncio.to_thread(_status, url, token)
            if status is not None:
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - killed_at
        await asyncio.sleep(3.0)  # the new active one's settle and a cycle or two
        code, out = await asyncio.to_thread(schedule, url, "status", "--json", timeout=5.0)
        return {"before": before, "status": status, "took": took, "all": json.loads(out),
                "grew": all(len(seqs[i]) > counts[i] + 20 for i in before),
                "final": _copies(d)}

    out = asyncio.run(_watch(url, ["w1", "w2"], body))
    assert out["status"] is not None, "the standby never answered"
    assert out["all"]["term"] == 2 and out["all"]["role"] == "active"
    assert out["status"]["status"] == "Running"
    after = {v["id"]: v["engine"] for v in out["status"]["instances"].values()}
    assert after == out["before"]  # adopted where it ran, nothing moved or restarted
    assert out["grew"]  # the programs kept publishing throughout
    assert out["worst"] == 1 and sorted(out["final"]) == sorted(out["before"])
    assert set(out["final"].values()) == {1}
    print(f"standby answered {out['took']:.2f} s after the SIGKILL (lease 3 s)")


def test_a_sigtermed_workers_programs_run_elsewhere_at_once(fleet, tmp_path) -> None:
    workers, scheds = fleet
    url = workers.url
    for wid in ("w1", "w2"):
        workers.start(wid, fence_s=10.0)  # a fence wait would show: 10 s + margin
    scheds.start()
    app = tmp_path / "seq.toml"
    app.write_text(APP)
    wait_for_engines(url, ["w1", "w2"])
    token = schedule_retrying(url, "submit", str(app)).split()[0]

    async def body(d: Any, seqs: dict) -> dict:
        before = {v["id"]: v["engine"] for v in (await asyncio.to_thread(
            _status, url, token))["instances"].values()}
        await asyncio.sleep(1.5)  # checkpoints (every 0.5 s)
        victim = sorted(before.values())[0]
        moved = [i for i, e in before.items() if e == victim]
        stopped_at = time.monotonic()
        workers.procs[victim].send_signal(signal.SIGTERM)
        await until(lambda: all(any(e.id != victim and e.status != "dead" and i in (
            e.report.get("procs") or {}) for e in d.engines.values()) for i in moved),
            timeout=15, what="the stopped worker's programs running elsewhere")
        took = time.monotonic() - stopped_at
        await asyncio.sleep(1.0)
        return {"moved": moved, "took": took, "final": _copies(d), "before": before}

    out = asyncio.run(_watch(url, ["w1", "w2"], body))
    # the semantic bound: sooner than the 10 s fence (plus its 1 s margin) would allow
    assert out["moved"] and out["took"] < 10.0, out
    assert out["worst"] == 1 and sorted(out["final"]) == sorted(out["before"])
    print(f"re-placed {len(out['moved'])} programs {out['took']:.2f} s after SIGTERM")
