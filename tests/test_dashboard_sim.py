"""``thingssim sim SCENARIO --dashboard``: the Fleet view of a simulation while it runs.

In process: a short scenario followed by the dashboard fills its state model (engines,
programs with consoles and resource samples, the scenario's actions with the
migrations' phases, faults), the page's API answers while the simulation runs, every
action is refused (read-only), and the CSVs are byte-identical to a run without it.
The command's refusals (sweeps, --realtime alone, a port in use).  In a real headless
browser (skipped, saying why, without Chromium and Selenium): the CLI's page shows the
boards and a migration while the run goes, then links to its results, with no console
error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from waiting import wait_until

from thingssim.cli import main
from thingssim.dashboard import simlive
from thingssim.sim.scenario import CSV_NAMES, Scenario

ROOT = Path(__file__).resolve().parent.parent
CHAIN = ROOT / "experiments" / "scenarios" / "migration_chain.toml"


def short_chain(tmp: Path, duration: float) -> Path:
    """migration_chain.toml, shorter (its first migrations, the crash if it lasts)."""
    text = CHAIN.read_text().replace("duration = 40.0", f"duration = {duration}")
    text = text.replace('file = "programs/counter.py"',
                        f'file = "{(CHAIN.parent / "programs" / "counter.py").as_posix()}"')
    path = tmp / "chain.toml"
    path.write_text(text)
    return path


def csv_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / f"{name}.csv").read_bytes() for name in CSV_NAMES}


def test_followed_run_fills_the_fleet_and_changes_no_byte(tmp_path):
    scenario = Scenario.from_toml(short_chain(tmp_path, 31.0))
    scenario.run().save(tmp_path / "alone")

    feed, server = simlive.start(scenario.name, scenario.duration, seed=scenario.seed,
                                 out=tmp_path / "followed", port=0)
    seen_mid_run: dict = {}
    try:
        client = httpx.Client(base_url=server.url, timeout=10)

        def step(now: float) -> None:
            feed.step(now)
            if now >= 12.0 and not seen_mid_run:  # the page's API, while it runs
                seen_mid_run.update(client.get("/api/state").json())
            if now >= 28.0 and "crashed" not in seen_mid_run:  # pi3 crashed at 25 s
                seen_mid_run["crashed"] = client.get("/api/state").json()

        results = scenario.run(on_progress=step, on_world=feed.attach,
                               steps=simlive.steps_for(scenario.duration))
        results.save(tmp_path / "followed")
        feed.finish(results=True)
        assert feed.broken is None

        # mid-run: the clock, the boards, the program on zero after two migrations
        sim = seen_mid_run["sim"]
        assert 12.0 <= sim["t"] < 13.0 and not sim["done"]
        assert sorted(seen_mid_run["engines"]) == ["bbb", "pi3", "zero"]
        (program,) = seen_mid_run["programs"].values()
        assert program["engine"] == "zero" and program["status"] == "Running"
        # a crashed board is silent (its will comes 1.5 keepalives later): the page
        # marks it "no report for N s" by the simulated clock
        crashed = seen_mid_run["crashed"]
        assert crashed["now"] - crashed["engines"]["pi3"]["last_seen"] >= 3.0

        # at the end
        session = client.get("/api/session").json()
        assert session["read_only"] is True and session["live"] is True
        assert session["sim"]["done"] is True and session["sim"]["results"] is True
        state = client.get("/api/state").json()
        assert state["sim"]["t"] == 31.0
        engines = state["engines"]
        assert sorted(engines) == ["bbb", "pi3", "zero"]
        assert engines["bbb"]["device"] == "beaglebone-black"
        # resource reports every simulated second, stamped in simulated seconds
        samples = engines["zero"]["samples"]
        assert len(samples) >= 25 and all(s[2] for s in samples)
        assert [s[0] for s in samples] == sorted(s[0] for s in samples)
        assert samples[-1][0] <= 31.0
        (program,) = state["programs"].values()
        assert program["code_name"] == "counter" and program["engine"] == "bbb"
        lines = [int(x) for x in program["console"]]
        assert lines == list(range(lines[0], lines[0] + len(lines)))  # no gap, no repeat
        assert program["lines"] >= 60
        actions = [(a["kind"], a["state"], a["args"]["target"]) for a in state["actions"]]
        assert actions == [("run", "ok", "bbb"), ("migrate", "ok", "pi3"),
                           ("migrate", "ok", "zero"), ("migrate", "ok", "bbb"),
                           ("pause", "ok", None), ("resume", "ok", None)]
        migrations = [a["result"] for a in state["actions"] if a["kind"] == "migrate"]
        assert [(m["migration"]["source"], m["engine"]) for m in migrations] == \
            [("bbb", "pi3"), ("pi3", "zero"), ("zero", "bbb")]
        assert all(m["migration"]["total_s"] > 0 and m["migration"]["snapshot_bytes"] > 0
                   for m in migrations)
        first = state["actions"][1]
        assert first["started"] == 5.0 and 5.0 < first["ended"] < 5.1
        assert [(log["t"], log["text"]) for log in state["logs"]] == [
            (25.0, "fault at t = 25 s: crash pi3"), (30.0, "fault at t = 30 s: reboot pi3")]
        assert engines["pi3"]["status"] == "idle"  # back after its reboot

        # read-only: every action refused, with the reason
        csrf = {"X-CSRF-Token": session["csrf"]}
        iid = program["id"]
        for path, body in ((f"/api/programs/{iid}/kill", None),
                           (f"/api/programs/{iid}/migrate", {"target": "zero"}),
                           ("/api/programs", {"engine": "bbb", "source": "print(1)"})):
            response = client.post(path, json=body, headers=csrf)
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "read_only"
        assert client.get("/api/files?path=/").status_code == 409
        # the results view of --out, once written
        assert client.get("/api/results").json()["kind"] == "scenario"
        client.close()
    finally:
        server.stop()
    assert not server.thread.is_alive()
    assert csv_bytes(tmp_path / "followed") == csv_bytes(tmp_path / "alone")


def test_the_feed_reads_nothing_it_must_not_change(tmp_path):
    """Progress steps (the dashboard looks every 0.1 simulated s) change no byte either:
    without the feed, 100 steps and 500 give the same CSVs."""
    scenario = Scenario.from_toml(short_chain(tmp_path, 12.0))
    scenario.run(on_progress=lambda now: None, steps=500).save(tmp_path / "many")
    scenario.run().save(tmp_path / "none")
    assert csv_bytes(tmp_path / "many") == csv_bytes(tmp_path / "none")


def sim_cli(*args: str):
    return CliRunner().invoke(main, ["sim", *args])


def test_dashboard_refuses_sweeps_and_lone_realtime(tmp_path):
    path = short_chain(tmp_path, 2.0)
    for args in ([str(path), str(path), "--out", str(tmp_path / "o")],
                 [str(path), "--seeds", "1-2", "--out", str(tmp_path / "o")]):
        result = sim_cli(*args, "--dashboard")
        assert result.exit_code == 2
        assert "--dashboard follows one run: give one SCENARIO.toml without --seeds" \
            in result.output
    result = sim_cli(str(path), "--realtime", "2")
    assert result.exit_code == 2 and "give --dashboard too" in result.output


def test_dashboard_port_in_use_is_an_error_before_the_run(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = sim_cli(str(short_chain(tmp_path, 2.0)), "--out", str(tmp_path / "o"),
                         "--dashboard", "--dashboard-port", str(port), "--no-progress")
    assert result.exit_code == 1
    assert f"--dashboard-port {port}: Address already in use" in result.output
    assert not (tmp_path / "o" / "messages.csv").exists()


# ====================================================================== the browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_tools():
    """The browser helpers of test_dashboard_browser (which skips, saying why, without
    Chromium, chromedriver or Selenium)."""
    import test_dashboard_browser as tools
    return tools


def test_the_page_follows_a_running_simulation(page_tools, tmp_path):
    tools = page_tools
    driver = tools.make_driver(tmp_path / "profile")
    port = free_port()
    out = tmp_path / "out"
    # 12 simulated seconds at 3x real time: 4 s to watch it
    proc = subprocess.Popen(
        [sys.executable, "-m", "thingssim.cli", "sim", str(short_chain(tmp_path, 12.0)),
         "--out", "out", "--dashboard", "--dashboard-port", str(port),
         "--realtime", "3", "--no-progress"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    b = driver
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/session",
                                 timeout=2).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None
        wait_until(up, 30, "the dashboard serving", interval=0.05)
        assert proc.poll() is None
        b.get(f"http://127.0.0.1:{port}/")
        # the boards, while the run goes, with its simulated clock
        tools.wait_js(b, "const S = window.thingsDashboard; return S.sim && !S.sim.done"
                         " && document.querySelectorAll('#engines .card').length === 3",
                      "three boards while the run goes", 10)
        assert tools.js(b, "return [...document.querySelectorAll('#engines .card')]"
                           ".map(c => c.dataset.engine)") == ["bbb", "pi3", "zero"]
        assert "beaglebone-black" in tools.js(
            b, "return document.querySelector('[data-engine=bbb]').textContent")
        clock = tools.js(b, "return document.getElementById('simclock').textContent")
        assert clock.startswith("simulated t = ") and "x real time" in clock
        # read-only: no run form, no action buttons, said on the page
        assert tools.js(b, "return getComputedStyle(document.getElementById('run-form'))"
                           ".display") == "none"
        assert tools.js(b, "return [...document.querySelectorAll('nav button')]"
                           ".filter(n => n.offsetParent).map(n => n.dataset.tab)") == ["fleet"]
        assert "read-only" in tools.js(b, "return document.getElementById('sim-banner')"
                                          ".textContent")
        # a migration as it happens (at t = 5 s), with its phases
        migrated = tools.wait_js(b, "const a = document.querySelector('#actions "
                                    "li[data-kind=migrate][data-state=ok]');"
                                    "return a && a.textContent", "the first migration", 15)
        for phase in ("snapshot", "transfer", "restore", "commit"):
            assert phase in migrated
        assert tools.js(b, "return document.querySelectorAll('#programs button').length") \
            == 0
        assert tools.js(b, "return [...document.querySelectorAll('.chip')]"
                           ".every(c => c.getAttribute('draggable') === 'false')") is True
        tools.wait_js(b, "const r = document.querySelector('#programs tr[data-status=Running]');"
                         "return r && r.dataset.engine === 'pi3' || r.dataset.engine === "
                         "'zero'", "the program moved", 15)
        tools.wait_js(b, "return document.querySelectorAll('#engines svg.spark.mem polyline')"
                         ".length === 3", "memory sparklines of the three boards")
        tools.click(b, "#programs a.prog")
        tools.wait_js(b, "return +document.getElementById('console-lines').dataset.lines > 5",
                      "the program's console")
        # the end: a link to the results, which render
        tools.wait_js(b, "const a = document.getElementById('sim-results');"
                         "return !a.hidden", "the results link at the end", 20)
        assert tools.js(b, "return document.getElementById('simclock').textContent")\
            .startswith("finished: simulated t = 12.0 s of 12 s")
        speed = tools.js(b, "return window.thingsDashboard.sim.speed")
        assert 2.5 < speed <= 3.05  # --realtime 3: at most 3 simulated seconds a second
        tools.shoot(b, "simulation")
        tools.click(b, "#sim-results")
        tools.wait_js(b, "return document.querySelectorAll('#timeline-svg line.migration')"
                         ".length === 2", "the results' timeline: two migrations")
        assert tools.js(b, "return [...document.querySelectorAll('nav button')]"
                           ".filter(n => n.offsetParent).map(n => n.dataset.tab)") \
            == ["fleet", "results"]
        assert tools.console_errors(b) == []
    finally:
        driver.quit()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, output
    assert "shows the finished run and the results of out; Ctrl-C stops it" in output
    alone = tmp_path / "alone"
    Scenario.from_toml(short_chain(tmp_path, 12.0)).run().save(alone)
    assert csv_bytes(out) == csv_bytes(alone)


def test_ctrl_c_during_the_run_stops_both(tmp_path):
    """Ctrl-C while the run goes stops the simulation and the server (exit 130, no
    CSVs)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thingssim.cli", "sim", str(short_chain(tmp_path, 40.0)),
         "--out", str(tmp_path / "out"), "--dashboard", "--dashboard-port", str(port),
         "--realtime", "4", "--no-progress"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: b'"sim":{' in _get(port) or proc.poll() is not None, 30,
                   "the dashboard serving", interval=0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0]
    assert proc.returncode in (1, 130), output
    assert not (tmp_path / "out" / "messages.csv").exists()


def _get(port: int) -> bytes:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/session", timeout=2).content
    except httpx.TransportError:
        return b""
