"""Messages that arrive while a program migrates are neither lost nor doubled.

Between the source's snapshot and the moment the target's subscription reaches the
broker, a stream's messages reach only the source's paused copy; after that, both copies.
The source sends what arrived since its snapshot with the commit, the target holds back
what it got, and the committed copy receives the union once, in order
(``runtime.migration.splice``).  Checked on the simulated network, whose links make the
window real (tens of milliseconds), with streams fast enough to fill it.
"""

from __future__ import annotations

import random

import pytest

from runtime.migration import splice
from thingssim.sim.world import World

PUBLISHER = """
n = 0
def tick():
    global n
    things.publish("stream/" + STREAM, {"seq": n})
    n += 1
things.set_interval(tick, PERIOD)
"""

CONSUMER = """
got = {}
def on_message(topic, payload):
    got.setdefault(topic, []).append(payload["seq"])
things.subscribe("stream/+", on_message)
things.subscribe("stream/a", lambda topic, payload: None)   # two filters, one topic
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_consumer_moving_between_boards_gets_every_message_once_in_order(seed):
    rng = random.Random(seed)
    world = World(seed=seed)
    for name, profile in (("pub", "desktop-vm"), ("a", "raspberry-pi-3"),
                          ("b", "beaglebone-black"), ("c", "raspberry-pi-zero")):
        world.add_board(name, profile, loss=0.0)  # QoS 0 on a lossy link loses anyway
    d = world.add_dispatcher()
    world.run(1.0)
    consumer = world.wait(d.run_code("a", "consumer", CONSUMER))["id"]
    world.run(1.5)
    for stream, period in (("a", 0.01), ("b", 0.023)):
        world.wait(d.run_code("pub", f"pub-{stream}", PUBLISHER.replace("STREAM", repr(stream))
                              .replace("PERIOD", str(period))))
    where = "a"
    for _ in range(6):
        world.run(world.clock.now() + rng.uniform(0.2, 1.5))
        target = rng.choice([b for b in ("a", "b", "c") if b != where])
        moved = world.wait(d.move_code(where, target, "consumer", consumer))
        assert moved["engine"] == target
        where = target
    for iid, program in list(d.programs.items()):
        if program.code_name.startswith("pub-"):
            world.wait(d.kill_code(iid))
    world.run(world.clock.now() + 2.0)
    got = world.boards[where].engine.programs[consumer].globals["got"]
    for topic in ("stream/a", "stream/b"):
        seqs = got[topic]
        assert seqs == list(range(len(seqs))), topic  # none lost, none twice, in order
        assert len(seqs) > 100


def test_splice_keeps_what_only_the_source_got_and_drops_the_overlap():
    def msgs(topic, *payloads, via="f"):
        return [(topic, via, p.encode(), False) for p in payloads]

    late = msgs("t", "1", "2", "3") + msgs("u", "x") + msgs("t", "4")
    early = msgs("t", "3", "4", "5") + msgs("v", "y")
    assert splice(late, early) == msgs("t", "1", "2") + msgs("u", "x") + early
    # nothing in common: all of both; no late messages: the early ones as they are
    assert splice(msgs("t", "1"), msgs("t", "2")) == msgs("t", "1", "2")
    assert splice([], early) == early
    # another filter of the same topic is another sequence
    assert splice(msgs("t", "1", via="g"), msgs("t", "1")) == \
        msgs("t", "1", via="g") + msgs("t", "1")
    # repeated payloads: an overlap only where they line up at both ends, never a loss
    assert splice(msgs("t", "a", "a"), msgs("t", "a", "b")) == msgs("t", "a", "a", "b")
