"""The emulated board lab (thingssim.lab): namespaces, shaped links, broker, workers, cleanup.

These tests create network namespaces, so they need root, iproute2 and Mosquitto (CI has
them); elsewhere they are skipped with the reason. Each run uses its own prefix and subnet
and removes everything it made, even when an assertion fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from thingssim import lab as labmod
from thingssim.lab import LabError, lab_down, lab_group, lab_up
from thingssim.sim.boards import get_profile


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the board lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the board lab needs root (network namespaces, veth, tc): run pytest as root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the board lab needs iproute2 (ip, tc): apt-get install iproute2"
    if (shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")) is None:
        return "the board lab needs Mosquitto: apt-get install mosquitto"
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return "needs paho-mqtt: pip install paho-mqtt"
    return None


needs_lab = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

PROBE = r'''
"""Lab test worker: retained hello, then MQTT round trips and a bulk round trip."""
import json, statistics, sys, threading, time
from urllib.parse import urlparse
import paho.mqtt.client as mqtt

cfg = json.load(open(sys.argv[1]))
wid = cfg["id"]
u = urlparse(cfg["pubsub_url"])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=wid)
c.connect(u.hostname, u.port or 1883, keepalive=cfg["keepalive"])
c.loop_start()
c.publish(f"lab/hello/{wid}", wid, qos=1, retain=True).wait_for_publish(5)

def pings(topic, n, size):
    got, subbed = threading.Event(), threading.Event()
    c.message_callback_add(topic, lambda *_: got.set())
    c.on_subscribe = lambda *_: subbed.set()
    c.subscribe(topic)
    subbed.wait(5)
    out = []
    for _ in range(n):
        got.clear()
        t = time.perf_counter()
        c.publish(topic, b"x" * size)
        if not got.wait(5):
            raise SystemExit("ping lost")
        out.append(time.perf_counter() - t)
    return out

result = {"id": wid, "rtt_ms": statistics.median(pings(f"lab/ping/{wid}", 35, 16)[5:]) * 1e3}
size = 1_000_000
result["bulk_s"] = min(pings(f"lab/bulk/{wid}", 2, size))
result["bulk_bytes"] = size
c.publish(f"lab/rtt/{wid}", json.dumps(result), qos=1, retain=True).wait_for_publish(5)
print(json.dumps(result), flush=True)
while True:
    time.sleep(3600)
'''


@pytest.fixture
def prefix():
    """A fresh lab prefix (and subnet), torn down after the test whatever happens."""
    name = "tl" + secrets.token_hex(4)
    yield name
    with contextlib.suppress(Exception):
        lab_down(name)


def _subnet() -> str:
    return f"10.78.{secrets.randbelow(250) + 1}.0/24"


def _mqtt(url: str):
    import paho.mqtt.client as mqtt

    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="host-" + secrets.token_hex(3))
    client.connect(host, int(port), keepalive=10)
    client.loop_start()
    return client


def _collect(client, topic_filter: str, want: set[str], timeout: float,
             workers=()) -> dict[str, bytes]:
    """Messages on ``topic_filter`` until every topic in ``want`` has arrived (or every
    one of ``workers`` has exited: no point in waiting then)."""
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(_c, _u, msg):
        got[msg.topic] = msg.payload
        if want <= set(got):
            done.set()

    client.message_callback_add(topic_filter, on_message)
    client.subscribe(topic_filter, qos=1)
    deadline = time.monotonic() + timeout
    while not done.wait(0.1) and time.monotonic() < deadline:
        if workers and not any(w.alive for w in workers):
            done.wait(0.5)
            break
    return dict(got)


def _host_rtt_ms(client, n: int = 30) -> float:
    topic = "lab/hostping/" + secrets.token_hex(3)
    got, subbed = threading.Event(), threading.Event()
    client.message_callback_add(topic, lambda *_: got.set())
    client.on_subscribe = lambda *_: subbed.set()
    client.subscribe(topic)
    assert subbed.wait(5)
    samples = []
    for _ in range(n + 5):
        got.clear()
        t = time.perf_counter()
        client.publish(topic, b"x" * 16)
        assert got.wait(5)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples[5:]) * 1e3


def _leftovers(prefix: str, pids: list[tuple[int, int | None]]) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    out = [line for line in netns.splitlines() if line.startswith(prefix + "-")]
    out += [line for line in links.splitlines() if prefix in line]
    out += [f"pid {pid}" for pid, start in pids if labmod._pid_alive(pid, start)]
    return out


@needs_lab
def test_lab_two_shaped_workers(prefix, tmp_path, timing_bounds):
    """Two workers behind shaped links.  What the probes measure through them (round trip,
    goodput, and how long lab up took) is checked against the profiles only with
    --benchmark-enable (``timing_bounds``): on a busy machine those are not the links'."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    profiles = ["raspberry-pi-3", "raspberry-pi-zero"]
    t0 = time.monotonic()
    lab = lab_up(2, profiles, prefix=prefix, subnet=_subnet(), cpu="none",  # links only
                 worker_command=[sys.executable, str(probe), "{config}"])
    pids = [(lab.broker_pid, lab.broker_start)]
    for w in lab.workers:
        pids += [(w.pid, w.pid_start), (w.relay_pid, w.relay_start)]
    pids = [p for p in pids if p[0]]
    client = None
    try:
        if timing_bounds:
            assert time.monotonic() - t0 < 8
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for ns in (f"{prefix}-broker", f"{prefix}-w1", f"{prefix}-w2"):
            assert ns in netns
        assert [w.profile for w in lab.workers] == profiles
        assert all(w.shaping in ("tbf+relay", "netem") for w in lab.workers)
        state = json.loads(Path(lab.state_file).read_text())
        assert [w["shaping"] for w in state["workers"]] == [w.shaping for w in lab.workers]
        configs = [json.loads(Path(w.config_file).read_text()) for w in lab.workers]
        config = configs[1]
        key = config.pop("snapshot_key")  # one random key per lab, shared by its workers
        assert config == {"pubsub_url": lab.workers[1].pubsub_url, "id": "w2",
                          "device": "raspberry-pi-zero", "memory_limit": 380, "keepalive": 10}
        assert len(key) == 64 and configs[0]["snapshot_key"] == key
        assert all(Path(w.config_file).stat().st_mode & 0o777 == 0o600 for w in lab.workers)

        # the broker is reachable from the host; every worker's hello and results arrive
        client = _mqtt(lab.broker_url)
        want = {"lab/hello/w1", "lab/hello/w2", "lab/rtt/w1", "lab/rtt/w2"}
        got = _collect(client, "lab/#", want, timeout=15, workers=lab.workers)
        assert want <= set(got), (set(got), [Path(w.log_file).read_text() for w in lab.workers])
        assert got["lab/hello/w1"] == b"w1"
        host_ms = _host_rtt_ms(client)

        # a round trip through a shaped link costs ~2 x latency + mean jitter (2 x J/2) more
        extra = {}
        for w in lab.workers:
            result = json.loads(got[f"lab/rtt/{w.name}"])
            assert result["rtt_ms"] > 0 and result["bulk_s"] > 0, result  # measured
            if not timing_bounds:
                continue
            p = get_profile(w.profile)
            expected = (2 * p.latency + p.jitter) * 1e3
            extra[w.name] = result["rtt_ms"] - host_ms
            assert 0.75 * expected - 0.05 < extra[w.name] < 1.25 * expected + 1.0, \
                (w.name, result, host_ms, expected)
            # 1 MB up and 1 MB down through the shaped link at about the profile's goodput
            goodput = 2 * 8 * result["bulk_bytes"] / result["bulk_s"]
            assert 0.6 * p.bandwidth < goodput < 1.15 * p.bandwidth, (w.name, goodput)
        if timing_bounds:  # the Pi Zero's Wi-Fi vs the Pi 3's Ethernet
            assert extra["w2"] > extra["w1"] + 3.0

        status = CliRunner().invoke(lab_group, ["status", "--prefix", prefix])
        assert status.exit_code == 0, status.output
        lines = status.output.splitlines()
        assert lines[0].split() == ["worker", "namespace", "address", "profile", "shaping",
                                    "cpus", "memory", "alive"]
        for w in lab.workers:
            row = next(line.split() for line in lines if line.startswith(w.name + " "))
            assert row[:5] + row[-1:] == [w.name, w.namespace, w.address, w.profile,
                                          w.shaping, "yes"]
            assert row[6] == f"{get_profile(w.profile).memory_mb}M" or row[6] == "-"
        assert lines[-1].startswith("cpu: ")
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        removed = lab_down(prefix)
    assert any("netns" in r for r in removed)
    assert _leftovers(prefix, pids) == []
    assert not Path(lab.state_dir).exists()
    assert lab_down(prefix) == []  # idempotent


@needs_lab
def test_lab_bad_profile_leaves_nothing(prefix):
    with pytest.raises(LabError, match="unknown board profile 'nope'"):
        lab_up(1, ["nope"], prefix=prefix, subnet=_subnet())
    assert _leftovers(prefix, []) == []


def test_lab_without_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(labmod.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(labmod.shutil, "which", lambda name, **_: f"/usr/sbin/{name}")
    with pytest.raises(LabError, match="needs root"):
        lab_up(1)
    monkeypatch.setattr(labmod.shutil, "which", lambda name, **_: None)
    with pytest.raises(LabError, match="iproute2"):
        lab_down("tslab")


def _real_worker_missing() -> str | None:
    proc = subprocess.run([sys.executable, "-m", "thingssim.cli", "worker", "--help"],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else "`thingssim worker` does not exist yet"


@needs_lab
def test_lab_real_workers(prefix):
    reason = _real_worker_missing()
    if reason:
        pytest.skip(reason)
    # CPUs un-throttled: an emulated Pi Zero (3% of a CPU) takes about 45 s to start
    # Python and the worker; the CPU emulation has its own test below
    lab = lab_up(2, ["raspberry-pi-3", "raspberry-pi-zero"], prefix=prefix, subnet=_subnet(),
                 cpu="none")
    client = None
    try:
        client = _mqtt(lab.broker_url)
        want = {"engine-registry/state/w1", "engine-registry/state/w2"}
        got = _collect(client, "engine-registry/state/+", want, timeout=30,
                       workers=lab.workers)
        assert want <= set(got), [Path(w.log_file).read_text() for w in lab.workers]
        assert not any(b'"dead"' in payload for payload in got.values()), got
        assert all(w.alive for w in lab.workers)
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        lab_down(prefix)
    assert _leftovers(prefix, []) == []


@needs_lab
def test_lab_migrates_a_program_across_two_emulated_boards(prefix):
    """lab up, run a counter on a Pi 3, migrate it to a Pi Zero (shaped links), lab down.

    CPUs un-throttled (``cpu="none"``): on an emulated Pi Zero a cold program process
    starts in more than the migration's 10 s step (two Pythons starting at 3% of a CPU:
    the one restoring and the next warm one), which is the boards' business, not this
    test's (tests/test_validation.py and E6 measure it)."""
    import asyncio

    from harness import forever_counter
    from waiting import until

    from runtime.clock import AsyncioClock
    from runtime.dispatcher import Dispatcher
    from runtime.mqtt import MqttTransport

    source = forever_counter(0.05)

    async def scenario(url: str) -> tuple[list[str], dict]:
        loop = asyncio.get_running_loop()
        d = Dispatcher(MqttTransport(url, client_id=f"{prefix}-d", loop=loop),
                       AsyncioClock(loop), {"id": "labdisp"})
        d.start()
        await until(lambda: {"w1", "w2"} <= {e for e, h in d.engines.items()
                                             if h.status != "dead"}, 15, "both workers")
        iid = (await d.run_code("w1", "counter", source))["id"]
        console = d.programs[iid].console
        await until(lambda: len(console) >= 6, what="6 console lines")
        moved = await d.move_code("w1", "w2", "counter", iid)
        await until(lambda: len(console) >= 12, what="12 console lines")
        assert d.programs[iid].engine == "w2"
        await d.kill_code(iid)
        console = list(d.programs[iid].console)
        d.kill()
        return console, moved["migration"]

    lab = lab_up(2, ["raspberry-pi-3", "raspberry-pi-zero"], prefix=prefix, subnet=_subnet(),
                 cpu="none")
    try:
        console, migration = asyncio.run(scenario(lab.broker_url))
    finally:
        lab_down(prefix)
    numbers = [int(x) for x in console]
    assert numbers == list(range(len(numbers))) and len(numbers) > 10
    assert migration["ok"] and migration["transfer_s"] > 0.002  # crossed shaped links
    assert _leftovers(prefix, []) == []


# ------------------------------------------------------------------ CPU and memory emulation

CPU_PROBE = r"""
import json, sys, time
cfg = json.load(open(sys.argv[1]))
def loop():
    t = time.perf_counter(); x = 0
    for i in range(1_500_000):
        x += i * i % 7
    return time.perf_counter() - t
runs = [loop() for _ in range(3)]
groups = open("/proc/self/cgroup").read()
json.dump({"id": cfg["id"], "best": min(runs), "cgroup": groups},
          open(sys.argv[1] + ".result", "w"))
time.sleep(3600)
"""


def test_cpu_limit_from_profiles():
    """The quota is cores x cpu_factor / machine factor CPUs, at least 1 ms per period
    (a longer period for slow boards), capped at the machine's CPUs; memory from the
    profile."""
    from thingssim.labcpu import MIN_QUOTA_US, cpu_limit

    zero = cpu_limit(get_profile("raspberry-pi-zero"), 0.8, 2)
    assert zero.cpus == pytest.approx(0.024 / 0.8, rel=0.01)
    assert zero.quota_us == MIN_QUOTA_US and zero.period_us == 33_334 and not zero.capped
    assert zero.memory_bytes == 380 * 2**20
    pi3 = cpu_limit(get_profile("raspberry-pi-3"), 0.8, 2)
    assert pi3.cpus == pytest.approx(4 * 0.05 / 0.8) and pi3.period_us == 10_000
    vm = cpu_limit(get_profile("desktop-vm"), 0.8, 2)
    assert vm.cpus == 2 and vm.capped and vm.speed == 1.0
    with pytest.raises(ValueError):
        cpu_limit(get_profile("desktop-vm"), 0.0, 2)


def test_lab_without_cgroups_runs_unthrottled_and_says_so(monkeypatch, tmp_path):
    """No cgroups (here: no root): the lab records why, its workers get no group, and
    the status line says the CPUs are not emulated."""
    from thingssim import labcpu
    from thingssim.lab import Lab, LabConfig, LabWorker, cpu_note

    monkeypatch.setattr(labcpu.os, "geteuid", lambda: 1000)
    assert labcpu.detect().reason == "cgroups need root"
    lab = Lab(prefix="tlx", subnet="10.9.0.0/24", state_dir=str(tmp_path), broker_namespace="b",
              broker_address="10.9.0.1", broker_port=1883, host_address="10.9.0.254",
              host_interface="tlx-h", shaping="auto",
              workers=[LabWorker("w1", "tlx-w1", "10.9.0.2", "raspberry-pi-zero", "none")])
    labmod._emulate_cpus(lab, LabConfig(n=1))
    assert lab.cpu_emulation == {"method": "none", "reason": "cgroups need root"}
    assert lab.workers[0].cgroup == {}
    assert cpu_note(lab).startswith("cpu: NOT emulated (cgroups need root)")
    assert Lab.from_dict(lab.to_dict()).cpu_emulation == lab.cpu_emulation


@needs_lab
def test_lab_pi_zero_computes_like_one(prefix, tmp_path):
    """A CPU-bound loop in a lab "Pi Zero" worker runs about cpu_factor-proportionally
    slower than in a "desktop-vm" worker (whose quota is capped at this machine's
    CPUs), and the worker's memory limit is the profile's."""
    from thingssim import labcpu

    support = labcpu.detect()
    if not support.available:
        pytest.skip(f"no cgroups here: {support.reason}")
    probe = tmp_path / "cpu_probe.py"
    probe.write_text(CPU_PROBE)
    lab = lab_up(2, ["raspberry-pi-zero", "desktop-vm"], prefix=prefix, subnet=_subnet(),
                 worker_command=[sys.executable, str(probe), "{config}"], shaping="none")
    try:
        assert lab.cpu_emulation["method"] == f"cgroup {support.version}"
        results = {}
        deadline = time.monotonic() + 120
        while len(results) < 2 and time.monotonic() < deadline:
            for w in lab.workers:
                path = Path(w.config_file + ".result")
                if path.exists() and path.stat().st_size:
                    results[w.profile] = json.loads(path.read_text())
            time.sleep(0.2)
        assert len(results) == 2, [Path(w.log_file).read_text() for w in lab.workers]
        zero, vm = lab.workers[0].cgroup, lab.workers[1].cgroup
        expected = labcpu.CpuLimit(**{k: vm[k] for k in ("cpus", "quota_us", "period_us",
                                                         "memory_bytes", "capped")}).speed \
            / zero["cpus"]
        ratio = results["raspberry-pi-zero"]["best"] / results["desktop-vm"]["best"]
        assert 0.6 * expected < ratio < 1.4 * expected, (ratio, expected, results)
        assert f"thingssim-{prefix}/w1" in results["raspberry-pi-zero"]["cgroup"]
        assert zero["memory_bytes"] == 380 * 2**20
        memory = [p for p in zero["paths"] if "memory" in p or support.version == "v2"][0]
        limit_file = "memory.max" if support.version == "v2" else "memory.limit_in_bytes"
        assert int(Path(memory, limit_file).read_text()) == 380 * 2**20
    finally:
        lab_down(prefix)
    assert not any(Path(p).exists() for w in lab.workers for p in w.cgroup["paths"])
