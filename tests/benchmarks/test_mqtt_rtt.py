"""Command round trip on a real Mosquitto vs. a raw paho-mqtt ping-pong.

In one run against the same broker, interleaved in blocks so drift hits all sides:

(a) raw paho-mqtt 2.x ping-pong at QoS 0: two clients with ``loop_start()`` threads,
    one echoes in its ``on_message``, the other times ``publish`` -> echo (and, for
    reference, the same at QoS 1, the QoS of our commands);
(b) our command round trip: a ``Requester`` on the dispatcher's ``MqttTransport`` sends
    the engine ``report`` command to a ``CodeEngine`` (``AsyncioClock``, same process and
    loop, dispatcher running) and waits for the reply; also ``Dispatcher.pause_code`` /
    ``resume_code`` on a running program.  Each with ``io="thread"`` (paho's network
    thread, the default) and ``io="asyncio"`` (paho driven by the loop).

``extra_info`` has each side's p50/p99 in ms and ``ratio_*`` = ours p50 / raw QoS 0 p50
(target <= 1.5; ``*_vs_raw_qos1``: against raw QoS 1, the guarantee our commands have).
With ``--benchmark-disable`` (the default) it runs once, briefly, as a smoke test;
``--benchmark-enable`` measures 2000 round trips per side.
"""

from __future__ import annotations

import asyncio
import threading
import time

import mqtt_fixtures
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from runtime import protocol as p
from runtime.clock import AsyncioClock
from runtime.dispatcher import Dispatcher
from runtime.engine import CodeEngine
from runtime.mqtt import MqttTransport, _set_nodelay
from runtime.rpc import Requester

broker = mqtt_fixtures.broker

FOREVER = """
n = 0
def tick():
    global n
    n += 1
things.set_interval(tick, 0.5)
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_ping_pong(host: str, port: int, n: int, qos: int = 0) -> list[float]:
    def client(name: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{name}-{qos}",
                        protocol=mqtt.MQTTv311)
        c.on_socket_open = _set_nodelay  # as ours does; paho alone leaves Nagle on
        return c

    echo, ping = client("echo"), client("ping")
    pong = threading.Event()
    echo.on_message = lambda c, u, m: c.publish(f"raw/pong{qos}", m.payload, qos)
    ping.on_message = lambda c, u, m: pong.set()
    echo.on_connect = lambda c, u, f, r, props: c.subscribe(f"raw/ping{qos}", qos)
    ping.on_connect = lambda c, u, f, r, props: c.subscribe(f"raw/pong{qos}", qos)
    subscribed = []
    for c in (echo, ping):
        event = threading.Event()
        c.on_subscribe = lambda *args, event=event: event.set()
        subscribed.append(event)
        c.connect(host, port)
        c.loop_start()
    if not all(event.wait(5) for event in subscribed):
        raise AssertionError("raw ping-pong: no SUBACK within 5 s")
    rtts = []
    payload = b"x" * 64
    for _ in range(n):
        pong.clear()
        start = time.perf_counter()
        ping.publish(f"raw/ping{qos}", payload, qos)
        if not pong.wait(5):
            raise AssertionError("raw ping-pong: no echo within 5 s")
        rtts.append(time.perf_counter() - start)
    for c in (echo, ping):
        c.disconnect()
        c.loop_stop()
    return rtts


async def command_rtts(url: str, io: str, n: int) -> tuple[list[float], list[float]]:
    clock = AsyncioClock(asyncio.get_running_loop())
    engine = CodeEngine(MqttTransport(url, client_id=f"bench-e-{io}", loop=clock.loop, io=io),
                        clock, engine_id=f"bench-e-{io}", resource_period=None).start()
    d = Dispatcher(MqttTransport(url, client_id=f"bench-d-{io}", loop=clock.loop, io=io),
                   clock, {"id": f"bench-d-{io}", "request_timeout": 5.0}).start()
    requester = Requester(d.transport, clock, f"bench-d-{io}/bench", timeout=5.0)
    deadline = time.monotonic() + 5
    while engine.id not in d.engines:
        assert time.monotonic() < deadline, "the engine never showed up"
        await asyncio.sleep(0.01)
    iid = (await d.run_code(engine.id, "forever", FOREVER))["id"]
    topic = p.engine_topic(engine.id, "cmd")
    for _ in range(20):  # warm up
        await requester.request(topic, "report")
    reports, pause_resume = [], []
    for i in range(n):
        start = time.perf_counter()
        await requester.request(topic, "report")
        reports.append(time.perf_counter() - start)
        start = time.perf_counter()
        await (d.pause_code(iid) if i % 2 == 0 else d.resume_code(iid))
        pause_resume.append(time.perf_counter() - start)
    engine.stop()
    d.kill()
    return reports, pause_resume


def measure(url: str, host: str, port: int, n: int, blocks: int) -> dict:
    samples: dict[str, list[float]] = {k: [] for k in (
        "raw_qos0", "raw_qos1", "report_thread", "pause_resume_thread", "report_asyncio",
        "pause_resume_asyncio")}
    per_block = max(1, n // blocks)
    for _ in range(blocks):
        samples["raw_qos0"] += raw_ping_pong(host, port, per_block, qos=0)
        samples["raw_qos1"] += raw_ping_pong(host, port, per_block, qos=1)
        for io in ("thread", "asyncio"):
            reports, pause_resume = asyncio.run(command_rtts(url, io, per_block))
            samples[f"report_{io}"] += reports
            samples[f"pause_resume_{io}"] += pause_resume
    info: dict[str, float] = {"round_trips_per_side": per_block * blocks}
    for name, values in samples.items():
        info[f"{name}_p50_ms"] = round(percentile(values, 0.50) * 1e3, 4)
        info[f"{name}_p99_ms"] = round(percentile(values, 0.99) * 1e3, 4)
    raw, raw1 = info["raw_qos0_p50_ms"], info["raw_qos1_p50_ms"]
    for name in ("report_thread", "report_asyncio", "pause_resume_thread",
                 "pause_resume_asyncio", "raw_qos1"):
        info[f"ratio_{name}"] = round(info[f"{name}_p50_ms"] / raw, 2)
    for name in ("report_thread", "report_asyncio"):  # same delivery guarantee as ours
        info[f"ratio_{name}_vs_raw_qos1"] = round(info[f"{name}_p50_ms"] / raw1, 2)
    info["target_ratio"] = 1.5
    return info


def test_command_round_trip_vs_raw_paho(benchmark, broker, timing_bounds):
    benchmark.group = "mqtt-rtt"
    n, blocks = (200, 2) if benchmark.disabled else (2000, 4)
    results: list[dict] = []

    def run() -> None:
        results.append(measure(broker.url, broker.host, broker.port, n, blocks))

    benchmark.pedantic(run, rounds=1, iterations=1)
    info = results[-1]
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"  {k}: {v}" for k, v in info.items()))
    # sanity, not the target: a lost TCP_NODELAY (~40 ms delayed ACKs) would show here
    if timing_bounds:
        assert info["report_thread_p50_ms"] < 10 and info["report_asyncio_p50_ms"] < 10
