"""An isolated program flooded with messages while it publishes more than it receives.

The worker once wrote each message to the program's child process with a blocking write:
with the child's stdin full (the child busy) and its stdout full (the worker not reading,
being stuck in that write), both waited for each other for ever, and every program of the
worker stopped (RIoTBench's ETL did it at 192 msg/s on real workers).  Now the worker
never blocks on the pipe (runtime/isolation.py): everything arrives, in order.  The flood
runs in a subprocess, so a regression fails the test instead of hanging the test run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.clock import AsyncioClock
from runtime.dispatcher import Dispatcher
from runtime.engine import CodeEngine
from runtime.isolation import process_factory
from runtime.memory import MemoryBroker

HERE = Path(__file__).resolve().parent
AMPLIFIER = """
PAD = "x" * 8000

def on_message(topic, payload):
    for i in range(10):  # 80 kB out for each 8 kB in: more than a pipe holds
        things.publish("flood/out", {"n": payload["n"], "i": i, "pad": PAD})

things.subscribe("flood/in", on_message)
"""
MESSAGES = 400


def flood() -> list[tuple[int, int]]:
    """Run the amplifier in its own process on one engine, publish MESSAGES to it at
    once; the ``(n, i)`` of every output, in arrival order."""
    async def main() -> list[tuple[int, int]]:
        clock = AsyncioClock(asyncio.get_running_loop())
        broker = MemoryBroker(clock)
        engine = CodeEngine(broker.client("w0"), clock, engine_id="w0",
                            program_factory=process_factory()).start()
        d = Dispatcher(broker.client("d"), clock, {"id": "d"}).start()
        got: list[tuple[int, int]] = []
        sender = broker.client("sender")
        sender.connect()
        sender.subscribe("flood/out", lambda m: got.append(
            (json.loads(m.payload)["n"], json.loads(m.payload)["i"])), qos=0)
        await asyncio.sleep(0.05)
        await d.run_code("w0", "amplifier", AMPLIFIER)
        await asyncio.sleep(0.3)  # subscribed
        for n in range(MESSAGES):  # all at once, far more than a pipe holds
            sender.publish("flood/in", json.dumps({"n": n, "pad": "y" * 8000}).encode())
        for _ in range(300):
            if len(got) >= 10 * MESSAGES:
                break
            await asyncio.sleep(0.05)
        engine.stop()
        return got

    return asyncio.run(main())


def test_a_flood_both_ways_arrives_whole_and_in_order():
    code = "import json, test_isolation_flood as t; print(json.dumps(t.flood()))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker hung (a blocking write to a program's process?)")
    assert done.returncode == 0, done.stderr[-2000:]
    got = [tuple(pair) for pair in json.loads(done.stdout.strip().splitlines()[-1])]
    assert got == [(n, i) for n in range(MESSAGES) for i in range(10)]
