"""Simulated network speed: messages per wall-clock second vs. a bare SimPy relay.

Both sides move the same number of messages, one every simulated millisecond:
(a) the bare relay does a ``Timeout``, a ``Store.put`` and a ``get`` per message (the
floor any SimPy model pays); (b) our network carries each message from a publisher over
its uplink, through the broker and down a second link to a subscriber's handler (QoS 0,
no trace, as a large experiment would run).  ``extra_info["messages_per_s"]`` is the
delivered rate; the target is ours >= 1/4 of the relay's.
"""

from __future__ import annotations

import time

import simpy

from thingssim.sim.clock import SimEnvironment
from thingssim.sim.network import LinkProfile, Network

MESSAGES = 20_000
PERIOD = 0.001


def run_bare_relay(n: int = MESSAGES) -> int:
    env = SimEnvironment()
    store = simpy.Store(env)
    received = [0]

    def producer():
        for i in range(n):
            yield env.timeout(PERIOD)
            store.put(i)

    def consumer():
        while True:
            yield store.get()
            received[0] += 1

    env.process(producer())
    env.process(consumer())
    env.run()
    return received[0]


def run_network(n: int = MESSAGES, trace: bool = False, qos: int = 0) -> int:
    env = SimEnvironment()
    net = Network(env, seed=1, trace=trace)
    profile = LinkProfile(latency=0.002, bandwidth=10e6, jitter=0.001)
    pub = net.client("pub", net.add_link("pub", profile))
    sub = net.client("sub", net.add_link("sub", profile))
    received = [0]

    def on_message(message):
        received[0] += 1

    sub.subscribe("sensors/+/temp", on_message, qos=qos)
    pub.connect()
    sub.connect()
    payload = b"x" * 64

    def producer():
        yield env.timeout(1.0)  # connected by then
        for _ in range(n):
            yield env.timeout(PERIOD)
            pub.publish("sensors/a/temp", payload, qos=qos)

    env.process(producer())
    env.run()
    return received[0]


def _rate(fn, benchmark, **kwargs) -> float:
    """Run ``fn`` under the benchmark (once when benchmarks are disabled); best rate."""
    times: list[float] = []

    def timed() -> int:
        start = time.perf_counter()
        delivered = fn(**kwargs)
        times.append(time.perf_counter() - start)
        return delivered

    rounds = 1 if benchmark.disabled else 5
    delivered = benchmark.pedantic(timed, rounds=rounds, iterations=1)
    assert delivered == MESSAGES
    rate = MESSAGES / min(times)
    benchmark.extra_info["messages_per_s"] = round(rate)
    return rate


def test_bare_simpy_relay(benchmark):
    benchmark.group = "sim-speed"
    _rate(run_bare_relay, benchmark)


def test_network_relay(benchmark):
    benchmark.group = "sim-speed"
    _rate(run_network, benchmark)


def test_network_relay_qos1_traced(benchmark):
    benchmark.group = "sim-speed"
    _rate(run_network, benchmark, trace=True, qos=1)


def test_network_at_least_quarter_of_bare_relay(timing_bounds):
    """Ours vs. the relay, measured back to back (best of 3 each: noisy machines).  The
    ratio is checked with --benchmark-enable only; otherwise one small run of each."""
    def best(fn, n: int, rounds: int) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn(n)
            times.append(time.perf_counter() - start)
        return n / min(times)

    n, rounds = (5_000, 3) if timing_bounds else (500, 1)
    bare, ours = best(run_bare_relay, n, rounds), best(run_network, n, rounds)
    if timing_bounds:
        assert ours >= bare / 4, (ours, bare)
