"""Programs in child processes (the real worker's isolation), on asyncio in real time."""

from __future__ import annotations

import asyncio
import os

import pytest
from harness import consecutive, forever_counter

from runtime.clock import AsyncioClock
from runtime.dispatcher import Dispatcher
from runtime.engine import CodeEngine
from runtime.isolation import process_factory
from runtime.memory import MemoryBroker
from runtime.rpc import RemoteError

COUNTER = forever_counter(0.05)


async def lab(n: int = 2, **factory):
    clock = AsyncioClock(asyncio.get_running_loop())
    broker = MemoryBroker(clock)
    engines = [CodeEngine(broker.client(f"w{i}"), clock, engine_id=f"w{i}",
                          resource_period=0.2,
                          program_factory=process_factory(**factory)).start()
               for i in range(n)]
    d = Dispatcher(broker.client("d"), clock, {"id": "d"}).start()
    await asyncio.sleep(0.05)
    return engines, d


def test_programs_run_pause_migrate_and_really_die_in_their_own_processes():
    async def main():
        engines, d = await lab()
        started = await d.run_code("w0", "counter", COUNTER)
        iid = started["id"]
        host = engines[0].programs[iid]
        assert host.pid != os.getpid()
        await asyncio.sleep(0.3)
        assert await d.pause_code(iid) == "Paused"
        await asyncio.sleep(0.2)
        assert await d.resume_code(iid) == "Running"
        moved = await d.move_code("w0", "w1", "counter", iid)
        assert moved["engine"] == "w1"
        new_pid = engines[1].programs[iid].pid
        assert host.proc.poll() is not None  # the source's process is gone
        await asyncio.sleep(0.3)
        assert await d.kill_code(iid) == "Exited"
        await asyncio.sleep(0.1)
        with pytest.raises(ProcessLookupError):
            os.kill(new_pid, 0)
        assert d.programs[iid].resource is not None
        return list(d.programs[iid].console)

    console = asyncio.run(main())
    assert len(consecutive(console)) > 8


@pytest.mark.parametrize(("source", "expect"), [
    ("def f():\n    raise ValueError('bad sensor')\nthings.set_timeout(f, 0.05)\n",
     "ValueError: bad sensor"),
    ("def spin():\n    while True:\n        pass\nthings.set_timeout(spin, 0.05)\n",
     "longer than 0.5 s"),
    ("def hog():\n    global x\n    x = bytearray(2 * 1024**3)\nthings.set_timeout(hog, 0.05)\n",
     "MemoryError"),
    ("import os\ndef die():\n    os._exit(3)\nthings.set_timeout(die, 0.05)\n",
     "exited with code 3"),
])
def test_a_bad_program_crashes_alone(source, expect):
    async def main():
        engines, d = await lab(1, memory_limit_mb=400, max_callback_s=0.5)
        bad = await d.run_code("w0", "bad", source)
        good = await d.run_code("w0", "good", COUNTER)
        await asyncio.sleep(1.5)
        assert d.programs[bad["id"]].status == "Crashed"
        assert expect in (d.programs[bad["id"]].error or "")
        assert d.programs[good["id"]].status == "Running" and engines[0].running
        assert await d.pause_code(good["id"]) == "Paused"
        for engine in engines:
            engine.stop()
        return list(d.programs[good["id"]].console)

    assert len(consecutive(asyncio.run(main()))) > 10


def test_syntax_errors_and_bad_snapshots_are_clear_errors():
    async def main():
        engines, d = await lab(1)
        with pytest.raises(RemoteError) as info:
            await d.run_code("w0", "broken", "def (:\n")
        assert info.value.code == "bad_program"
        engines[0].stop()

    asyncio.run(main())
