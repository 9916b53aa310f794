"""The golden trace: one seeded world, every CSV byte for byte as recorded.

The simulator is optimised for speed (issue 9); this test is what says the optimisation
changed nothing a user can see.  ``tests/golden/golden_world.toml`` exercises the whole
network model (loss, jitter, QoS 0 and 1, wildcards, retained messages, wills, broker
service time and outage, link cuts, crash and reboot, migrations, spawn, pause, kill);
on top of it the test installs what a TOML cannot say: a seeded interceptor that drops,
duplicates and delays some copies, and a board frozen for a while.  Its six CSVs and the
network counters must equal ``tests/golden/*.csv.gz`` exactly.

When a change is *meant* to change the model's outputs, regenerate the goldens with
``python tests/test_golden_trace.py --write`` and say why in the commit.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

from thingssim.sim.network import DELIVER, DROP, DUPLICATE, delay
from thingssim.sim.scenario import Scenario, _Runner

GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = ("messages", "migrations", "programs", "boards", "actions", "faults")


def run_golden(trace: bool = True) -> dict[str, bytes]:
    """Run the golden world; its CSVs (and counters, as JSON) by name."""
    scenario = Scenario.from_toml(GOLDEN / "golden_world.toml")
    scenario.trace = trace
    runner = _Runner(scenario, scenario.seed)
    world = runner.world
    rng = random.Random("golden-interceptor")

    def interceptor(stage: str, client: str, topic: str, payload: bytes, qos: int):
        if not 8.0 <= world.clock.now() < 60.0 or rng.random() >= 0.03:
            return DELIVER
        return rng.choice([DROP, DUPLICATE, delay(round(rng.uniform(0.01, 0.4), 3))])

    world.at(0.0, lambda: world.network.intercept(interceptor))
    world.at(44.0, lambda: world.boards["zero-2"].freeze())
    world.at(52.5, lambda: world.boards["zero-2"].thaw())
    results = runner.run(None)
    out: dict[str, bytes] = {}
    for name in NAMES:
        out[name] = getattr(results, name).to_csv(
            index=False, float_format="%.9g", lineterminator="\n").encode()
    out["counters"] = json.dumps(results.stats, sort_keys=True, indent=1).encode() + b"\n"
    return out


def _golden_path(name: str) -> Path:
    return GOLDEN / (f"{name}.json" if name == "counters" else f"{name}.csv.gz")


def _read(name: str) -> bytes:
    data = _golden_path(name).read_bytes()
    return data if name == "counters" else gzip.decompress(data)


def _first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())):
        if x != y:
            return f"line {i + 1}:\n golden: {x.decode()}\n now:    {y.decode()}"
    return f"lengths differ: golden {len(a.splitlines())} lines, now {len(b.splitlines())}"


def test_the_golden_world_is_byte_identical_to_its_recording():
    produced = run_golden()
    assert len(produced["messages"].splitlines()) > 5_000  # the trace is not trivially empty
    for name, data in produced.items():
        golden = _read(name)
        assert data == golden, f"{name} differs from the golden copy, " + \
            _first_difference(golden, data)


def test_without_the_trace_everything_else_is_the_same():
    """Large runs switch the trace off; the hot paths then skip its rows but nothing else:
    every other CSV and every counter stays byte-identical."""
    produced = run_golden(trace=False)
    assert produced["messages"].strip() == b""  # no trace rows at all
    for name in NAMES[1:] + ("counters",):
        assert produced[name] == _read(name), f"{name} differs without the trace"


def write_goldens() -> None:
    for name, data in run_golden().items():
        path = _golden_path(name)
        if name == "counters":
            path.write_bytes(data)
        else:  # mtime=0: the same CSV gives the same .gz bytes
            path.write_bytes(gzip.compress(data, mtime=0))
        print(f"wrote {path} ({len(data)} bytes)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden_trace.py --write  (regenerates the goldens)")
    write_goldens()
