"""How fast the dashboard shows a fleet's reports, and what the page costs the browser.

    python experiments/dashboard_latency.py [--engines 100] [--seconds 30] [--out FILE]

Four processes on this machine: Mosquitto (``thingssim.broker``); ``--engines`` real
:class:`~runtime.engine.CodeEngine` objects in one process, each on its own MQTT
connection, each publishing its resource report every second (the real report: the
engine's own code and format, with programs not running); the dashboard as its users
start it (``thingssim dashboard URL``); and headless Chromium on the page with the
latency probe on (``/?probe=1``: the page records, for each engine sample, when it had
drawn it).

- **Latency**: from the moment an engine stamps a report (``timestamp``: the engine's
  ``loop.time()``, i.e. this machine's CLOCK_MONOTONIC, turned into wall-clock time with
  the offset between the two clocks measured here) to the moment the page has updated
  its DOM with it (``performance.timeOrigin + performance.now()`` after the render).
  Both clocks are this machine's, so no skew between hosts enters.
- **Browser CPU**: Chrome DevTools Protocol ``Performance.getMetrics``, the renderer's
  ``TaskDuration`` over the window divided by the window's length (one core = 100 %).
  The dashboard server's and the engines' CPU come from ``/proc/<pid>/stat``.

Prints a table and writes the numbers as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_engines(url: str, count: int) -> None:
    """``count`` CodeEngines on one asyncio loop until killed (the ``--engines-only`` mode)."""
    sys.path.insert(0, str(ROOT))
    from runtime.clock import AsyncioClock
    from runtime.engine import CodeEngine
    from runtime.mqtt import MqttTransport

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = AsyncioClock(loop)
        for i in range(count):
            name = f"bench-{i:03d}"
            transport = MqttTransport(url, client_id=name, loop=loop, io="asyncio")
            CodeEngine(transport, clock, engine_id=name, device="bench-board",
                       resource_period=1.0).start()
            await asyncio.sleep(0.01)  # do not stamp every report at the same instant
        await asyncio.Event().wait()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--engines-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engines_only:
        run_engines(args.engines_only, args.engines)
        return 0

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from thingssim.broker import start_broker

    broker = start_broker()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = free_port()
    procs = []
    driver = None
    try:
        engines = subprocess.Popen([sys.executable, __file__, "--engines", str(args.engines),
                                    "--engines-only", broker.url], env=env)
        procs.append(engines)
        dash = subprocess.Popen([sys.executable, "-m", "thingssim.cli", "dashboard",
                                 broker.url, "--port", str(port)], env=env)
        procs.append(dash)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     f"--user-data-dir={tempfile.mkdtemp(prefix='dash-bench-')}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")
                                                  or "/usr/bin/chromedriver"), options=options)
        deadline = time.monotonic() + 60
        while True:
            try:
                driver.get(f"http://127.0.0.1:{port}/?probe=1")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        count = f"document.querySelectorAll('#engines .card').length >= {args.engines}"
        while not driver.execute_script(f"return {count}"):
            if time.monotonic() > deadline:
                raise RuntimeError("the page never showed every engine")
            time.sleep(0.5)
        time.sleep(args.warmup)
        driver.execute_cdp_cmd("Performance.enable", {})

        def task_duration() -> float:
            metrics = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
            return next(m["value"] for m in metrics if m["name"] == "TaskDuration")

        driver.execute_script("window.thingsDashboard.probe.length = 0")
        offset = time.time() - time.monotonic()  # CLOCK_MONOTONIC -> wall clock
        start, task0 = time.monotonic(), task_duration()
        dash0, eng0 = cpu_seconds(dash.pid), cpu_seconds(engines.pid)
        time.sleep(args.seconds)
        window = time.monotonic() - start
        task1, dash1, eng1 = task_duration(), cpu_seconds(dash.pid), cpu_seconds(engines.pid)
        probe = driver.execute_script("return window.thingsDashboard.probe")
        latencies = [shown / 1000.0 - (stamp + offset) for _, stamp, shown in probe
                     if isinstance(stamp, (int, float))]
        if not latencies:
            raise RuntimeError("the probe recorded nothing")
        reports = len(latencies) / window
        result = {
            "engines": args.engines, "window_s": round(window, 2),
            "samples_shown": len(latencies), "reports_per_s_shown": round(reports, 1),
            "latency_ms": {"p50": round(1000 * percentile(latencies, 0.5), 1),
                           "p95": round(1000 * percentile(latencies, 0.95), 1),
                           "p99": round(1000 * percentile(latencies, 0.99), 1),
                           "max": round(1000 * max(latencies), 1)},
            "browser_cpu_percent": round(100 * (task1 - task0) / window, 1),
            "dashboard_server_cpu_percent": round(100 * (dash1 - dash0) / window, 1),
            "engines_process_cpu_percent": round(100 * (eng1 - eng0) / window, 1),
            "broker": broker.kind, "machine_cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
