"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium).

Against real worker processes on a real broker (Mosquitto, from ``mqtt_fixtures``) with
the file service and the scheduler running too: the page shows both engines, runs a
program uploaded from disk, migrates it by the UI (a target picked in its row, then by
dragging it onto the other engine) while its console keeps counting with no gap and no
repeat, stores a file in the global file system and runs it from there, submits a
scheduler application and shows its placements, and shows a SIGKILLed worker dead
within the failure-detection time.  A results folder renders its timeline.  No page
logs a console error.  The tests write the README's screenshots to ``docs/dashboard/``.

Skipped, saying why, without chromium and chromedriver (``apt-get install chromium
chromium-driver``) or Selenium.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mqtt_fixtures
import pytest
from dashboard_server import Server
from harness import forever_counter
from test_real_workers import Workers
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: w2's keepalive (s): a frozen worker's will comes 1.5 x keepalive after its last packet,
#: at Mosquitto's next check (every ~6 s), a killed one's at once (its socket closes).  The
#: page marks an engine silent after three report periods (1.5 s here, at least 2 s), so
#: before a frozen w2's will can come (6 s or more)
KEEPALIVE = 4
FAILURE_DETECTION_S = 1.5 * KEEPALIVE + 6.5

broker = mqtt_fixtures.broker

selenium = pytest.importorskip("selenium", reason="needs Selenium (pip install selenium)")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromedriver (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from thingssim.dashboard.app import create_app  # noqa: E402
from thingssim.dashboard.cli import open_live  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def make_driver(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = make_driver(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE"]


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def wait_js(driver, script: str, what: str, timeout: float = 20.0, *args):
    return wait_until(lambda: js(driver, script, *args), timeout, what, interval=0.05)


def click(driver, selector: str) -> None:
    """Click what ``selector`` finds now (a row or listing may be redrawn between a
    lookup and a click: live updates replace it)."""
    wait_js(driver, "const n = document.querySelector(arguments[0]); if (n) n.click();"
                    "return !!n", f"{selector} to click", 20.0, selector)


def shoot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    js(driver, "const t = document.getElementById('toast'); if (t) t.replaceChildren()")
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def console_numbers(driver) -> list[int]:
    text = js(driver, "return document.getElementById('console-lines').textContent")
    return [int(x) for x in text.split("\n") if x.strip()]


def assert_consecutive(numbers: list[int]) -> None:
    assert numbers, "no console lines"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


# ====================================================================== results
def test_results_folder_renders_its_timeline(browser):
    folder = ROOT / "results" / "migration_chain"
    with open(folder / "migrations.csv") as f:
        migrations = list(csv.DictReader(f))
    with open(folder / "faults.csv") as f:
        faults = list(csv.DictReader(f))
    with Server(create_app(results=folder)) as server:
        browser.get(server.url + "/")
        wait_js(browser, "return document.querySelectorAll('#timeline-svg line.migration')"
                         ".length > 0", "the timeline")
        drawn = js(browser, "return document.querySelectorAll('#timeline-svg line.migration')"
                            ".length")
        assert drawn == len(migrations)
        assert js(browser, "return document.querySelectorAll('#timeline-svg .fault').length") \
            == len(faults)
        assert js(browser, "return document.querySelectorAll('#timeline-svg .residence')"
                           ".length") >= 1
        boards = js(browser, "return [...document.querySelectorAll('#load .small h3')]"
                             ".map(h => h.textContent.split(':')[0])")
        assert boards == ["bbb", "pi3", "zero"]
        kinds = js(browser, "return [...document.querySelectorAll('#latency .small')]"
                            ".map(n => n.dataset.kind)")
        assert {"console", "migration", "resource"} <= set(kinds)
        rows = js(browser, "return document.querySelectorAll('#results-migrations tbody tr')"
                           ".length")
        assert rows == len(migrations)
        shoot(browser, "results")
        assert console_errors(browser) == []


def test_experiment_folder_shows_its_figures(browser):
    folder = ROOT / "results" / "migration"
    figures = sorted(p.name for p in folder.glob("*.png"))
    with Server(create_app(results=folder)) as server:
        browser.get(server.url + "/")
        wait_js(browser, "return [...document.querySelectorAll('#figures img')]"
                         ".filter(i => i.complete && i.naturalWidth > 0).length === "
                         + str(len(figures)), "the figures loaded")
        shown = js(browser, "return [...document.querySelectorAll('#figures figcaption')]"
                            ".map(c => c.textContent)")
        assert shown == figures
        assert js(browser, "return document.querySelector('#timeline').hidden") is True
        assert console_errors(browser) == []


# ====================================================================== live fleet
class Services:
    """The file service and the scheduler as processes on the test broker."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.procs = []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for name, argv in (
                ("gfs", ["runtime.gfs.server", "--broker", url, "--db", str(tmp / "gfs.db")]),
                ("scheduler", ["runtime.scheduler.server", url, "--db",
                               str(tmp / "sched.db"), "--period-s", "2",
                               "--checkpoint-s", "0"])):
            log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            self.procs.append(subprocess.Popen([sys.executable, "-m", *argv], stdout=log,
                                               stderr=subprocess.STDOUT, env=env))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


APP_TOML = '''name = "tickers"

[[components]]
name = "ticker"
count = 2
memory_mb = 16
code = """
n = 0
def tick():
    global n
    n += 1
things.set_interval(tick, 0.5)
"""
'''


def test_live_fleet_in_the_browser(browser, broker, tmp_path):
    workers = Workers(broker.url, tmp_path)
    services = Services(broker.url, tmp_path)
    try:
        workers.start("w1", keepalive=2, device="raspberry-pi-3")
        workers.start("w2", keepalive=KEEPALIVE, device="beaglebone-black")
        app = create_app(lambda: open_live(broker.url, timeout=10.0))
        with Server(app) as server:
            try:
                _drive_the_fleet(browser, server, workers, tmp_path)
            except Exception:
                browser.save_screenshot(str(tmp_path / "failure.png"))
                print("page at the failure:", tmp_path / "failure.png")
                print("actions:", js(browser, "return document.getElementById('actions')"
                                              ".innerText"))
                print("console:", console_errors(browser))
                raise
    finally:
        services.stop()
        workers.stop_all()


def services_up(url: str) -> None:
    """Until the file service and the scheduler answer through the dashboard (they may
    take seconds to start on a busy machine; a page loaded before would log their 504)."""
    import httpx

    def answers(path: str) -> bool:
        try:
            return httpx.get(url + path, timeout=30).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(lambda: answers("/api/files?path=/codes") and answers("/api/apps"), 90,
               "the file service and the scheduler", interval=0.2)


def _drive_the_fleet(browser, server, workers, tmp_path):
    b = browser
    services_up(server.url)
    b.get(server.url + "/")
    # both engines, alive, with their devices and resource sparklines
    wait_js(b, "const c = document.querySelectorAll('#engines .card');"
               "return c.length === 2 && [...c].every(x => x.dataset.status === 'idle')",
            "both engines idle on the page")
    assert js(b, "return [...document.querySelectorAll('#engines .card')]"
                 ".map(c => c.dataset.engine)") == ["w1", "w2"]
    wait_js(b, "return document.querySelectorAll('#engines svg.spark.mem polyline')"
               ".length === 2", "memory sparklines of both engines")
    assert "raspberry-pi-3" in b.find_element(By.CSS_SELECTOR, '[data-engine="w1"]').text

    # run a program uploaded from disk on w1
    program = tmp_path / "counter.py"
    program.write_text(forever_counter(0.05))
    Select(b.find_element(By.ID, "run-engine")).select_by_value("w1")
    b.find_element(By.ID, "run-file").send_keys(str(program))
    b.find_element(By.ID, "run-go").click()
    iid = wait_js(b, "const r = document.querySelector('#programs tr[data-status=Running]');"
                     "return r && r.dataset.program", "the program running")
    assert js(b, f"return document.querySelector('#programs tr[data-program=\"{iid}\"]')"
                 ".dataset.engine") == "w1"
    wait_js(b, "return document.getElementById('console-lines').dataset.program === "
               f"'{iid}' && +document.getElementById('console-lines').dataset.lines >= 20",
            "20 console lines")

    # migrate it by picking a target in its row
    # (in one script: a row redrawn between two WebDriver calls would lose the choice)
    js(b, "const r = document.querySelector(`#programs tr[data-program='${arguments[0]}']`);"
          "const s = r.querySelector('select.migrate-target'); s.value = 'w2';"
          "s.dispatchEvent(new Event('change')); r.querySelector('button.migrate').click()",
       iid)
    wait_js(b, f"const r = document.querySelector('#programs tr[data-program=\"{iid}\"]');"
               "return r && r.dataset.engine === 'w2'", "the program on w2")
    migrated = wait_js(b, "const a = document.querySelector('#actions li[data-kind=migrate]"
                          "[data-state=ok]'); return a && a.textContent",
                       "the migration's outcome")
    for phase in ("snapshot", "transfer", "restore", "commit"):
        assert phase in migrated
    at = int(js(b, "return +document.getElementById('console-lines').dataset.lines"))
    wait_js(b, f"return +document.getElementById('console-lines').dataset.lines >= {at + 20}",
            "20 more console lines on w2")
    assert_consecutive(console_numbers(b))
    assert console_numbers(b)[0] == 0  # every line since the start, none lost or doubled
    shoot(b, "fleet")

    # drag it back onto w1
    js(b, """
        const chip = document.querySelector(`.chip[data-program="${arguments[0]}"]`);
        const card = document.querySelector('.card[data-engine="w1"]');
        const dt = new DataTransfer();
        chip.dispatchEvent(new DragEvent('dragstart', {bubbles: true, dataTransfer: dt}));
        card.dispatchEvent(new DragEvent('dragover', {bubbles: true, dataTransfer: dt}));
        card.dispatchEvent(new DragEvent('drop', {bubbles: true, dataTransfer: dt}));
        chip.dispatchEvent(new DragEvent('dragend', {bubbles: true, dataTransfer: dt}));
    """, iid)
    wait_js(b, f"const r = document.querySelector('#programs tr[data-program=\"{iid}\"]');"
               "return r && r.dataset.engine === 'w1'", "the program dragged back to w1")
    at = int(js(b, "return +document.getElementById('console-lines').dataset.lines"))
    wait_js(b, f"return +document.getElementById('console-lines').dataset.lines >= {at + 10}",
            "10 more console lines on w1")
    assert_consecutive(console_numbers(b))

    # an error as the engine sent it: migrating a program that has ended
    click(b, f'#programs tr[data-program="{iid}"] button.kill')
    wait_js(b, f"const r = document.querySelector('#programs tr[data-program=\"{iid}\"]');"
               "return r && r.dataset.status === 'Exited'", "the program killed")

    # files: upload into /codes, then run the program from there
    b.get(server.url + "/#files")
    wait_js(b, "return !!document.querySelector('#files tr[data-path=\"/apps\"]')",
            "the file browser listing /")
    b.find_element(By.ID, "files-newdir").send_keys("codes")
    b.find_element(By.ID, "files-mkdir").click()
    wait_js(b, "return [...document.querySelectorAll('#toast div')]"
               ".some(t => t.textContent.startsWith('mkdir /codes: '))", "mkdir's outcome")
    wait_js(b, "return !!document.querySelector('#files tr[data-path=\"/codes\"] a')",
            "the /codes folder")
    click(b, '#files tr[data-path="/codes"] a')
    wait_js(b, "return !!document.querySelector('#files tr[data-path=\"/codes/data\"]')",
            "inside /codes")
    b.find_element(By.ID, "files-upload").send_keys(str(program))
    b.find_element(By.ID, "files-put").click()
    wait_js(b, "return !!document.querySelector('#files tr[data-path=\"/codes/counter.py\"]')",
            "the uploaded file listed")
    href = b.find_element(By.CSS_SELECTOR,
                          '#files tr[data-path="/codes/counter.py"] a').get_attribute("href")
    assert href.endswith("/api/files/download?path=%2Fcodes%2Fcounter.py")
    downloaded = js(b, "return fetch(arguments[0]).then(r => r.text())", href)
    assert downloaded == program.read_text()
    shoot(b, "files")
    b.get(server.url + "/#fleet")
    wait_js(b, "return document.querySelectorAll('#engines .card').length === 2", "fleet")
    Select(b.find_element(By.ID, "run-engine")).select_by_value("w2")
    b.find_element(By.ID, "run-gfs").send_keys("/codes/counter.py")
    b.find_element(By.ID, "run-go").click()
    from_gfs = wait_js(b, "const r = document.querySelector('#programs tr[data-status=Running]"
                          "[data-engine=w2]'); return r && r.dataset.program",
                       "the program from the file system running on w2")
    assert from_gfs.startswith("counter.py")
    click(b, f'#programs tr[data-program="{from_gfs}"] button.kill')

    # applications: submit one, see its placements and the scheduler's events
    app_file = tmp_path / "tickers.toml"
    app_file.write_text(APP_TOML)
    b.get(server.url + "/#apps")
    b.find_element(By.ID, "app-file").send_keys(str(app_file))
    b.find_element(By.ID, "app-submit").click()
    wait_js(b, "const r = document.querySelector('#apps tr[data-app]');"
               "return r && r.textContent.includes('Running') && "
               "(r.textContent.match(/→ w[12]/g) || []).length === 2",
            "the application's two placements", timeout=30)
    wait_js(b, "return document.querySelectorAll('#sched-events li').length > 0",
            "scheduler events")
    shoot(b, "apps")
    click(b, "#apps tr[data-app] button.kill")
    wait_js(b, "const r = document.querySelector('#apps tr[data-app]');"
               "return r && !r.textContent.includes('Running')", "the application killed")

    # a frozen worker is marked silent, and once killed turns dead on the page within the
    # failure-detection time
    b.get(server.url + "/#fleet")
    wait_js(b, "return document.querySelectorAll('#engines .card').length === 2", "fleet")
    workers.procs["w2"].send_signal(signal.SIGSTOP)
    silent = wait_js(b, "const s = document.querySelector('.card[data-engine=w2] .stale');"
                        "return s && s.textContent", "w2 marked silent", timeout=10)
    assert silent.startswith("no report for ")
    assert js(b, "return document.querySelector('.card[data-engine=w1] .stale')") is None
    killed_at = time.monotonic()
    workers.procs["w2"].send_signal(signal.SIGKILL)
    wait_js(b, "const c = document.querySelector('.card[data-engine=w2]');"
               "return c && c.dataset.status === 'dead'", "w2 dead on the page",
            timeout=FAILURE_DETECTION_S)
    assert time.monotonic() - killed_at <= FAILURE_DETECTION_S
    assert console_errors(b) == []


def test_login_page_then_the_dashboard(tmp_path):
    """With a password: the page asks for it, refuses a wrong one, then shows the results."""
    from thingssim.dashboard.auth import Auth

    driver = make_driver(tmp_path / "profile")
    try:
        app = create_app(results=ROOT / "results" / "migration_chain",
                         auth=Auth("s3cret", fail_delay=0))
        with Server(app) as server:
            driver.get(server.url + "/")
            wait_js(driver, "return location.pathname === '/login'", "the login page")
            driver.find_element(By.ID, "password").send_keys("wrong\n")
            wait_js(driver, "return !document.getElementById('failed').hidden",
                    "'wrong password' shown")
            driver.find_element(By.ID, "password").send_keys("s3cret\n")
            wait_js(driver, "return document.querySelectorAll('#timeline-svg line.migration')"
                            ".length > 0", "the results after logging in")
            assert not driver.find_element(By.ID, "logout").get_attribute("hidden")
            assert console_errors(driver) == []
    finally:
        driver.quit()
