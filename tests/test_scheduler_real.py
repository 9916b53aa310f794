"""The scheduler on real worker processes and a real broker: a SIGKILLed worker's
programs run again elsewhere from their checkpoints (never two copies), and a SIGKILLed
scheduler restarted on its database loses and duplicates nothing.  Runs on Mosquitto
(or the amqtt fallback, which never times out a silent client: the worker's death is
then its process exit, whose will amqtt does publish)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mqtt_fixtures
import pytest
from test_real_workers import ROOT, Workers, dispatcher
from waiting import until

from runtime.clock import AsyncioClock
from runtime.scheduler.client import SchedulerClient

broker = mqtt_fixtures.broker
SEQ = ("n = 0\n"
       "def tick():\n"
       "    global n\n"
       "    things.publish('seq/' + things.instance_id, n)\n"
       "    n += 1\n"
       "things.set_interval(tick, 0.05)\n")


class Scheduler:
    def __init__(self, url: str, db: Path, log: Path) -> None:
        self.url, self.db, self.log, self.proc = url, db, log, None

    def start(self) -> None:
        out = open(self.log, "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.scheduler.server", self.url, "--db", str(self.db),
             "--checkpoint-s", "0.5", "--fence-margin-s", "1", "--lease-s", "3",
             "--period-s", "2"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def fleet(broker, tmp_path):
    w = Workers(broker.url, tmp_path)
    s = Scheduler(broker.url, tmp_path / "sched.db", tmp_path / "scheduler.log")
    yield w, s
    s.kill()
    w.stop_all()


def copies(d) -> Counter:
    """Instance id -> live engines reporting it Running (from their registry reports)."""
    seen: Counter = Counter()
    for e in d.engines.values():
        if e.status == "dead":
            continue
        for iid, proc in (e.report.get("procs") or {}).items():
            if proc.get("status") == "Running":
                seen[iid] += 1
    return seen


def test_a_killed_worker_and_a_killed_scheduler_lose_and_double_nothing(fleet) -> None:
    workers, sched = fleet
    for wid in ("w1", "w2", "w3"):
        workers.start(wid, fence_s=2.0)
    sched.start()

    async def main() -> dict:
        d = await dispatcher(workers.url, ["w1", "w2", "w3"], watch_console=False)
        loop = asyncio.get_running_loop()
        client = SchedulerClient(d.transport, AsyncioClock(loop), timeout=20.0,
                                 client_id=f"t{os.getpid()}")
        seqs: dict[str, list[int]] = {}
        d.transport.subscribe("seq/+", lambda m: seqs.setdefault(
            m.topic.split("/")[1], []).append(int(m.payload)), qos=0)
        worst = [0]

        async def watch() -> None:
            while True:
                worst[0] = max([worst[0], *copies(d).values()])
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        reply = None
        for _ in range(20):  # the scheduler process may still be starting
            try:
                reply = await client.submit({"name": "seq", "components": [
                    {"name": "seq", "code": SEQ, "count": 4, "memory_mb": 50}]},
                    token="realtest")
                break
            except Exception:  # noqa: BLE001 - RequestTimeout while it starts
                await asyncio.sleep(0.5)
        assert reply and reply["status"] == "Running", reply
        where = {v["id"]: v["engine"] for v in reply["instances"].values()}
        await asyncio.sleep(2.0)
        victim = sorted(where.values())[0]
        moved = [iid for iid, e in where.items() if e == victim]
        last = {iid: seqs[iid][-1] for iid in moved}
        killed_at = time.monotonic()
        workers.procs[victim].send_signal(signal.SIGKILL)
        await until(lambda: all(copies(d).get(iid) == 1 and any(
            e.id != victim and iid in (e.report.get("procs") or {})
            for e in d.engines.values() if e.status != "dead") for iid in moved),
            timeout=40, what="the killed worker's programs running elsewhere")
        recovered_at = time.monotonic()
        await asyncio.sleep(1.5)
        # re-emitted: numbers at or below the last one seen before the kill, seen again
        again = {iid: sum(1 for n in seqs[iid][seqs[iid].index(last[iid]) + 1:]
                          if n <= last[iid]) for iid in moved}
        # the scheduler dies and comes back on its database
        sched.kill()
        await asyncio.sleep(1.0)
        sched.start()
        await asyncio.sleep(6.0)
        status = None
        for _ in range(20):
            try:
                status = await client.status("realtest")
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.5)
        watcher.cancel()
        assert status is not None and status["status"] == "Running"
        final = copies(d)
        d.kill()
        return {"moved": moved, "again": again, "worst": worst[0], "final": final,
                "status": status, "took": recovered_at - killed_at, "where": where}

    out = asyncio.run(main())
    assert out["worst"] == 1, out
    assert sorted(out["final"]) == sorted(out["where"]) and set(out["final"].values()) == {1}
    assert all(v["engine"] != out["where"][v["id"]] or out["where"][v["id"]] not in
               [out["where"][m] for m in out["moved"]]
               for v in out["status"]["instances"].values())
    print(f"recovered {len(out['moved'])} programs {out['took']:.2f} s after SIGKILL; "
          f"re-emitted {out['again']}")
