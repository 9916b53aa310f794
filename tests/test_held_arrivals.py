"""Held arrivals change nothing but speed.

A QoS 0 message to a topic nobody subscribes to does nothing at the broker but mark its
client heard, so the broker holds it instead of queueing its arrival (most of a large
world's traffic: engines' resource reports nobody watches).  Whatever could change its
fate must turn it back into a queued arrival with its original key: a subscription that
matches it (exact or wildcard, at the exact instant), its link going down, the broker
crashing; and a keepalive check must count it as heard.  Each world here runs twice,
holding and not holding, with faults aimed at instants when held messages are in flight,
and the two runs must agree on every trace row, counter and board statistic.
"""

from __future__ import annotations

import random

import pytest

from thingssim.sim.world import World

SENSOR = """
room = things.code_name
n = 0
def read():
    global n
    n += 1
    things.publish("home/" + room + "/temp", {"n": n, "at": things.now()})
things.set_interval(read, 0.5)
"""

AGGREGATOR = """
seen = {}
def on_reading(topic, reading):
    seen[topic] = seen.get(topic, 0) + 1
    if sum(seen.values()) % 10 == 0:
        things.publish("home/summary", {"rooms": len(seen), "readings": sum(seen.values())})
things.subscribe("home/+/temp", on_reading)
"""

MONITOR = """
reports = 0
def on_report(topic, report):
    global reports
    reports += 1
    if reports % 20 == 0:
        print(topic, reports)
def narrow():
    things.subscribe("z2/resource", on_report)
def wide():
    things.subscribe("+/resource", on_report)
things.set_timeout(narrow, NARROW)
things.set_timeout(wide, WIDE)
"""

BOARDS = [("z1", "raspberry-pi-zero"), ("z2", "raspberry-pi-zero"), ("z3", "raspberry-pi-zero"),
          ("z4", "raspberry-pi-zero"), ("p1", "raspberry-pi-3"), ("p2", "raspberry-pi-3")]
DURATION = 30.0


def run_world(seed: int, holds: bool, plan: dict) -> dict:
    world = World(seed, trace=True, keepalive=2.0)
    world.network.broker.holds = holds
    for name, profile in BOARDS:
        extra = {"jitter": 0.004, "loss": 0.02} if name.startswith("z") else {}
        world.add_board(name, profile, resource_period=0.5 if name == "z3" else 1.0, **extra)
    d = world.add_dispatcher(watch_console=False, watch_resources=False)
    for i, name in enumerate(["z1", "z2", "z3", "z4"]):
        # at 0.6 s: a 2% loss can hold a board's registration back by one RTO (0.2 s)
        world.at(0.6 + 0.07 * i, lambda name=name: d.run_code(name, f"room{name}", SENSOR))
    world.at(plan["aggregator"], lambda: d.run_code("p1", "aggregator", AGGREGATOR))
    monitor = MONITOR.replace("NARROW", str(plan["narrow"])).replace("WIDE", str(plan["wide"]))
    world.at(plan["monitor"], lambda: d.run_code("p2", "monitor", monitor))
    for kind, board, at, duration in plan["faults"]:
        if kind == "link_down":
            link = world.boards[board].link
            world.at(at, link.down)
            world.at(at + duration, link.up)
        elif kind == "broker_down":
            world.at(at, world.network.broker_down)
            world.at(at + duration, world.network.broker_up)
        elif kind == "crash":
            world.at(at, world.boards[board].crash)
            world.at(at + duration, world.boards[board].reboot)
        else:
            world.at(at, world.boards[board].freeze)
            world.at(at + duration, world.boards[board].thaw)
    world.run(DURATION)
    net = world.network
    return {
        "trace": net.messages_frame().to_csv(index=False, float_format="%.12g"),
        "counters": net.counters(),
        "now": world.env.now,
        "boards": [(b.name, b.events, b.cpu_seconds, len(b.engine.programs))
                   for b in world.boards.values()],
        "programs": sorted((p.instance_id, p.engine, p.status)
                           for p in d.programs.values()),
        "handler_errors": net.handler_errors,
        "held_at_end": sum(len(q) for q in net.broker._held.values()),
    }


def _in_flight_instants(seed: int, rng: random.Random, count: int) -> list[tuple[str, float]]:
    """(board, time) just after some board published an unrouted message: its PUBLISH
    is then on the uplink (from a fault-free run without holding, the same up to then)."""
    world = World(seed, trace=True, keepalive=2.0)
    for name, profile in BOARDS:
        world.add_board(name, profile)
    world.add_dispatcher(watch_console=False, watch_resources=False)
    world.run(DURATION)
    rows = [r for r in world.network.trace_rows()
            if r["event"] == "publish" and r["topic"].endswith("/resource")
            and r["client"] in dict(BOARDS) and r["time"] > 2.0]
    picks = rng.sample(rows, count)
    return [(r["client"], r["time"] + rng.uniform(1e-5, 2e-3)) for r in picks]


def _plan(seed: int) -> dict:
    rng = random.Random(f"held-{seed}")
    (b1, t1), (b2, t2), (b3, t3), (b4, t4) = _in_flight_instants(seed, rng, 4)
    return {
        "aggregator": round(rng.uniform(3, 20), 3),
        "monitor": round(rng.uniform(1, 10), 3),
        "narrow": round(rng.uniform(0.5, 5), 3),
        "wide": round(rng.uniform(5, 15), 3),
        "faults": sorted([("link_down", b1, t1, rng.uniform(0.1, 4.0)),
                          ("broker_down", None, t2, rng.uniform(0.1, 2.0)),
                          ("crash", b3, t3, rng.uniform(1.0, 4.0)),
                          ("freeze", b4, t4, rng.uniform(1.0, 5.0))],
                         key=lambda f: f[2]),
    }


@pytest.mark.parametrize("seed", range(12))
def test_holding_unrouted_arrivals_changes_nothing(seed):
    plan = _plan(seed)
    queued = run_world(seed, holds=False, plan=plan)
    held = run_world(seed, holds=True, plan=plan)
    assert queued["held_at_end"] == 0
    for key in ("counters", "now", "boards", "programs", "handler_errors"):
        assert held[key] == queued[key], key
    if held["trace"] != queued["trace"]:
        for i, (a, b) in enumerate(zip(queued["trace"].splitlines(),
                                       held["trace"].splitlines())):
            assert a == b, f"trace row {i}: queued {a!r} held {b!r}"
        pytest.fail("the traces differ in length")


def test_the_world_really_holds_and_materializes_them():
    """Not vacuous: in these worlds most reports are held, and subscriptions, cuts and
    crashes do turn held ones back into arrivals."""
    from thingssim.sim import broker as broker_module

    calls = {"hold": 0, "queued": 0}
    real_hold, real_materialize = broker_module.Broker.hold, broker_module.Broker.materialize

    def counting_hold(self, root, entry):
        calls["hold"] += 1
        return real_hold(self, root, entry)

    def counting_materialize(self, wanted, root=None):
        before = sum(len(q) for q in self._held.values())
        pushed = self.env.pending()
        real_materialize(self, wanted, root)
        calls["queued"] += self.env.pending() - pushed
        assert sum(len(q) for q in self._held.values()) <= before

    broker_module.Broker.hold = counting_hold
    broker_module.Broker.materialize = counting_materialize
    try:
        for seed in range(4):
            run_world(seed, holds=True, plan=_plan(seed))
    finally:
        broker_module.Broker.hold = real_hold
        broker_module.Broker.materialize = real_materialize
    assert calls["hold"] > 500
    assert calls["queued"] > 0


@pytest.mark.parametrize("topic_filter", ["home/a/temp", "home/+/temp", "+/a/temp", "#"])
@pytest.mark.parametrize("offset", [0.0, 0.3, 0.47, 0.48, 0.49, 0.495, 0.5, 0.6])
def test_a_subscription_made_while_a_held_message_flies_gets_it_as_if_queued(topic_filter,
                                                                              offset):
    """The publisher's uplink is slow (0.5 s), so the message is in flight when the
    subscription reaches the broker, or has just arrived: either way as with a queue."""
    from thingssim.sim.clock import SimEnvironment
    from thingssim.sim.network import LinkProfile, Network

    def run(holds: bool):
        env = SimEnvironment()
        net = Network(env, seed=3)
        net.broker.holds = holds
        a = net.client("a", net.add_link("a", LinkProfile(latency=0.5, bandwidth=1e6)))
        b = net.client("b", net.add_link("b", LinkProfile(latency=0.01)))
        got = []
        a.connect()
        b.connect()
        env.run(until=2)
        a.publish("home/a/temp", b"warm-up")  # the broker learns that nobody listens
        env.run(until=4)
        env.call_at(5.0, a.publish, "home/a/temp", b"1")
        env.call_at(5.0 + offset, b.subscribe, topic_filter,
                    lambda m: got.append((env.now, m.payload, m.retain)))
        env.run(until=8)
        return got, net.messages_frame().to_csv(index=False), net.counters()

    queued, held = run(False), run(True)
    assert held == queued
    if offset < 0.47:  # it reached the broker after the subscription
        assert [payload for _, payload, _ in held[0]] == [b"1"]
