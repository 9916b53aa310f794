"""RIoTBench on real workers: peak rate against raw paho, latency, migration mid-stream.

    python experiments/riotbench_real.py --seed 1 --out results/riotbench
    python experiments/riotbench_real.py --quick          # a ~1 minute check (to a temp dir)

Everything runs on this machine: a loopback Mosquitto (amqtt without it) that the
script starts, three real workers (``python -m runtime.worker``, each program isolated
in its own child process, as in production, signed migrations), the file service, and
the runner (dispatcher, source stamps checked at the sink).  **They share the machine's
cores** (2 here) with the broker and the load generator, and with whatever else runs:
each trial records the CPU every part used (``/proc``) and what the rest of the machine
used meanwhile (``other_cores``), so a disturbed trial can be seen.

1. **Peak sustainable input rate** of each dataflow (ETL, STATS, TRAIN, PRED on TAXI,
   every program placed round robin over the three workers), found by
   :func:`riotbench.find_peak` (doubling from ``--start``, then bisection to
   ``--precision``), a run being ``--duration`` seconds of input.  A rate is sustainable
   as :func:`riotbench.sustainable` defines it (the source kept its rate, the sink saw
   every stream end, no backlog at the end, latency not growing over the run), **no
   tuple was lost on any hop** (on loopback a lost QoS 0 tuple means the broker dropped
   it for a subscriber that fell behind, i.e. overload) and the sink's end of stream
   came at most 10% of the run after the source's (riotbench's rule without its 1 s
   floor, which on a 4 s run would let a quarter of the input still be queued at the
   end).  A rate fails only when ``--attempts`` runs in a row fail (the machine is
   shared: one disturbed run must not end a search).  Side by side, **the limit**: the
   same program sources (same task functions, envelopes, topics, broker) on raw
   paho-mqtt, one process per program, no runtime (:mod:`thingssim.riot.rawpipe`),
   searched the same way.
2. **End-to-end latency** p50/p95/p99 of each dataflow at half thingssim's peak, and of
   the raw pipeline at the same rate.
3. **Migration mid-stream**: at half the peak, every stage of the dataflow is migrated
   once, one at a time (``--gap`` seconds apart), to the next worker, while the stream
   flows.  Per migration: its phases, the latency of the tuples whose source stamp falls
   in the migration (start to end + 0.5 s) against the second before it and against the
   run's steady state before any migration (``baseline``), and what the sink saw in that
   window: lost, doubled, reordered tuples (sequence numbers per stream); plus the whole
   run's loss on every hop.

The input is TAXI's sample replayed in a loop at the rate (the same lines every run);
``--seed`` seeds the rest (run ids, the fleet's snapshot key).  CPU profile columns, over
the stream only (from the source's start to the sink's end of stream): ``<part>_cores``,
the cores each part used (broker, workers, programs: the workers' child processes, raw:
the raw-paho processes, gfs, runner, other: the rest of the machine), and
``<part>_us_per_hop``, its CPU microseconds per hop (a tuple handed from one program to
the next: every program's ``in`` counted).

Writes ``real_peak.csv`` (one row per dataflow and way: the peak and, at it, throughput,
latency, CPU per part), ``real_trials.csv`` (every run of the searches), ``real_latency.csv``,
``real_migration.csv`` and ``real.png``; prints the tables and its run time.  Measurements
of a shared machine: they differ from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from riotbench import find_peak, sustainable  # noqa: E402

from runtime.clock import AsyncioClock  # noqa: E402
from runtime.dispatcher import Dispatcher  # noqa: E402
from runtime.gfs.remote import GfsClient  # noqa: E402
from runtime.mqtt import MqttTransport  # noqa: E402
from thingssim.broker import start_broker  # noqa: E402
from thingssim.riot.dataflows import FLOWS, GRANT, build  # noqa: E402
from thingssim.riot.rawpipe import detach, run_raw_async  # noqa: E402
from thingssim.riot.run import Deployment, RunResult, RunSpec, _put_files  # noqa: E402

WAYS = ("thingssim", "raw paho")
WORKERS = ("w1", "w2", "w3")
#: CPU groups, by what a process runs (see CpuMeter)
GROUPS = ("broker", "workers", "programs", "raw", "gfs", "runner")


# ------------------------------------------------------------------------------ CPU
class CpuMeter:
    """CPU seconds used by this script's processes, by group, from ``/proc``.

    A thread samples every process descended from this one every ``period`` seconds
    (a process that exits loses at most its last period, spent after the stream ended);
    :meth:`mark` takes a sample now and returns the totals so far, so two marks bracket a
    trial.  ``other`` is the machine's busy time minus ours: other jobs' share.
    """

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.tick = os.sysconf("SC_CLK_TCK")
        self.me = os.getpid()
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (group, last cpu seconds)
        self.totals = dict.fromkeys(GROUPS, 0.0)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="cpu-meter")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()

    def _stat(self, pid: int) -> Optional[tuple[int, float]]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick

    def _group(self, pid: int) -> str:
        if pid == self.me:
            return "runner"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            return "runner"
        for needle, group in (("mosquitto", "broker"), ("amqtt", "broker"),
                              ("runtime.worker", "workers"), ("runtime.child", "programs"),
                              ("rawpipe", "raw"), ("runtime.gfs.server", "gfs")):
            if needle in cmd:
                return group
        return "runner"

    def sample(self) -> None:
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = self._stat(int(name))
                if stat is not None:
                    stats[int(name)] = stat
        ours = {self.me}
        grew = True
        while grew:  # descendants of this process
            grew = False
            for pid, (ppid, _) in stats.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
        with self.lock:
            for pid in ours:
                cpu = stats[pid][1]
                group, last = self.seen.get(pid, (None, 0.0))
                if group is None:
                    group = self._group(pid)
                self.totals[group] += max(0.0, cpu - last)
                self.seen[pid] = (group, cpu)

    def mark(self) -> dict[str, float]:
        self.sample()
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        with self.lock:
            out = dict(self.totals)
        out["machine_busy"] = (sum(ticks) - ticks[3] - ticks[4]) / self.tick
        out["wall"] = time.monotonic()
        return out

    @staticmethod
    def usage(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds of each group between two marks, ``other`` (the rest of the
        machine's busy time), and ``wall``, the seconds between the marks."""
        used = {g: after[g] - before[g] for g in GROUPS}
        busy = after["machine_busy"] - before["machine_busy"]
        used["other"] = max(0.0, busy - sum(used.values()))
        used["wall"] = max(1e-9, after["wall"] - before["wall"])
        return used

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2.0)


# ------------------------------------------------------------------------------ lab
class Lab:
    """Broker, workers and file service on this machine, plus an asyncio loop in a
    thread for the runner (dispatcher, file client, raw-paho fleet)."""

    def __init__(self, seed: int, tmp: Path) -> None:
        self.seed, self.tmp = seed, tmp
        self.rng = random.Random(seed)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.procs: list[subprocess.Popen] = []
        self.broker = start_broker()
        self.url = self.broker.url
        key = f"{self.rng.getrandbits(128):032x}"  # the fleet's snapshot key, this run only
        for wid in WORKERS:
            config = tmp / f"{wid}.json"
            config.write_text(json.dumps({"pubsub_url": self.url, "id": wid,
                                          "resource_period": 1.0, "snapshot_key": key}))
            self._start(wid, [sys.executable, "-m", "runtime.worker", str(config)])
        self._start("gfs", [sys.executable, "-m", "runtime.gfs.server", "--broker", self.url,
                            "--db", str(tmp / "gfs.db"), "--grant", GRANT])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="runner-loop")
        self.thread.start()
        self.cpu = CpuMeter()
        self.call(self._connect(), 60.0)

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - kept with the process
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env))

    def call(self, coro: Any, timeout: float) -> Any:
        """Run a coroutine on the runner's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.clock = AsyncioClock(loop)
        transport = MqttTransport(self.url, client_id="riot-real-runner", loop=loop,
                                  io="asyncio")
        self.d = Dispatcher(transport, self.clock, {
            "id": "riot-real", "request_timeout": 30.0, "watch_console": False,
            "watch_resources": False})
        gfs_state: dict[str, Any] = {}
        transport.subscribe("gfs/state", lambda m: gfs_state.update(
            json.loads(m.payload) if m.payload else {}), qos=1)
        self.d.start()
        self.fs = GfsClient(transport, self.clock, timeout=60.0)
        deadline = loop.time() + 30.0
        while not (set(WORKERS) <= {e for e, h in self.d.engines.items()
                                    if h.status != "dead"} and gfs_state.get("status") == "up"):
            if loop.time() > deadline:
                raise RuntimeError(f"workers or file service not up after 30 s (logs in "
                                   f"{self.tmp}); engines: {sorted(self.d.engines)}, "
                                   f"file service: {gfs_state or 'silent'}")
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- one run
    def run(self, way: str, spec: RunSpec) -> tuple[Any, dict]:
        """One run of ``spec`` (``way``: thingssim or raw paho): ``(RunResult or the
        error text, CPU seconds of each part while the stream flowed)``: from the
        source's start to the sink's end of stream (or the end of the run), so the
        programs' start and stop are not counted."""
        marks: list[dict] = []

        def tick(dep: Deployment) -> None:
            started = not marks and dep.state in ("running", "draining")
            ended = len(marks) == 1 and (dep.collector.sink_done or dep.state != "running")
            if started or ended:
                marks.append(self.cpu.mark())

        limit = spec.ready_s + spec.duration + spec.drain_s + 90.0
        try:
            if way == "thingssim":
                result = self.call(self._thingssim(spec, tick), limit)
            else:
                result = self.call(run_raw_async(spec, self.d.transport, self.clock, self.url,
                                                 root=self.tmp / "raw-root", on_tick=tick),
                                   limit)
        except Exception as exc:  # noqa: BLE001 - a failed trial is recorded, not fatal
            result = f"{type(exc).__name__}: {exc}"
        while len(marks) < 2:
            marks.append(self.cpu.mark())
        return result, CpuMeter.usage(*marks)

    async def _thingssim(self, spec: RunSpec, on_tick: Callable[[Deployment], None]
                         ) -> RunResult:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        dep = Deployment(spec, build(spec.flow, spec.dataset), self.d, self.clock,
                         list(WORKERS), lambda files: _put_files(self.fs, self.clock, files))
        limit = loop.time() + spec.ready_s + spec.duration + spec.drain_s + 60.0
        try:
            dep.start()
            while not dep.finished and loop.time() < limit:
                await asyncio.sleep(0.05)
                on_tick(dep)
            if not dep.finished:
                dep.error = dep.error or "did not finish in time"
            return dep.result("real", [], time.perf_counter() - started)
        finally:
            detach(dep.collector, self.d.transport)

    def close(self) -> None:
        try:
            self.call(self._disconnect(), 10.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5.0)
            self.cpu.close()
            for proc in self.procs:
                proc.send_signal(signal.SIGTERM)
            for proc in self.procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.broker.stop()

    async def _disconnect(self) -> None:
        self.d.kill()


# ------------------------------------------------------------------------------ rows
def hops(result: RunResult) -> int:
    """Tuples handed from one program to another in the run (every ``in`` counted)."""
    tasks = result.measurement.tasks
    return int(tasks.loc[tasks["stage"] != "source", "in"].sum())


def summary_row(result: Any, used: dict[str, float]) -> dict:
    """The columns every table shares: the run's summary, the cores each part used
    while the stream flowed, and their CPU per hop."""
    wall = used["wall"]
    row: dict[str, Any] = {f"{g}_cores": round(used[g] / wall, 4) for g in (*GROUPS, "other")}
    if isinstance(result, str):
        return {"error": result, **row}
    s = result.measurement.summary.iloc[0]
    n = hops(result)
    row.update({k: s[k] for k in ("sent", "received", "lost", "duplicates", "reordered",
                                  "throughput", "latency_p50_ms", "latency_p95_ms",
                                  "latency_p99_ms", "latency_max_ms", "jitter", "drain_s",
                                  "latency_growth", "complete")})
    row["hops"] = n
    for g in ("broker", "workers", "programs", "raw"):
        row[f"{g}_us_per_hop"] = round(1e6 * used[g] / n, 2) if n else float("nan")
    row["error"] = ""
    return row


def judge(result: Any, duration: float, rate: float) -> bool:
    """Sustainable (riotbench.sustainable), nothing lost on any hop, and the sink's end
    of stream at most 10% of the run after the source's (riotbench's drain rule without
    its 1 s floor, which on a 4 s run would pass a quarter of the input still queued)."""
    if isinstance(result, str):
        return False
    s = result.measurement.summary.iloc[0]
    return sustainable(result, duration, rate) and int(s["lost"]) == 0 and \
        bool(s["drain_s"] <= 0.1 * duration)


# ------------------------------------------------------------------------------ 1. peak
def search(lab: Lab, flow: str, way: str, args: argparse.Namespace, rows: list[dict],
           bar: tqdm) -> float:
    """The peak rate of ``flow`` run ``way`` (every run appended to ``rows``).

    A rate fails only if ``args.attempts`` runs in a row fail: the machine is shared, and
    one disturbed run (or, for TRAIN, one slow model among the dozen the sink sees) must
    not end the search."""
    def trial(rate: float) -> bool:
        for attempt in range(1, args.attempts + 1):
            bar.set_postfix_str(f"{flow} {way} {rate:g} msg/s")
            spec = RunSpec(flow=flow, rate=rate, duration=args.duration, seed=args.seed,
                           drain_s=args.drain, run_id=_run_id(lab, flow, way, rate))
            result, used = lab.run(way, spec)
            ok = judge(result, args.duration, rate)
            rows.append({"flow": flow, "way": way, "rate": rate, "attempt": attempt,
                         "sustainable": ok, **summary_row(result, used)})
            bar.update()
            if ok:
                return True
        return False

    peak, _ = find_peak(trial, start=args.start, limit=args.limit, precision=args.precision)
    return peak


def _run_id(lab: Lab, flow: str, way: str, rate: float) -> str:
    tag = "raw" if way != "thingssim" else "ts"
    return f"{flow.lower()}-{tag}-{rate:g}-{lab.rng.getrandbits(24):06x}".replace(".", "p")


# ------------------------------------------------------------------------------ 3. migration
class Migrations:
    """Migrates every stage once while the stream flows, recording wall-clock times."""

    def __init__(self, stages: list[str], lead: float, gap: float) -> None:
        self.stages, self.lead, self.gap = stages, lead, gap
        self.rows: list[dict] = []
        self.t0: Optional[float] = None  # wall clock when the source was told to start

    def actions(self) -> list[dict]:
        start = {"at": 0.0, "type": "call", "fn": lambda dep: setattr(self, "t0", time.time())}
        return [start] + [{"at": self.lead + i * self.gap, "type": "call", "stage": stage,
                           "fn": lambda dep, s=stage: self.move(dep, s)}
                          for i, stage in enumerate(self.stages)]

    def move(self, dep: Deployment, stage: str) -> None:
        source = dep.placement[stage]
        target = WORKERS[(WORKERS.index(source) + 1) % len(WORKERS)]
        row = {"stage": stage, "from": source, "to": target, "start": time.time(),
               "end": None, "ok": None, "error": ""}
        self.rows.append(row)
        fut = dep.d.move_code(source, target, dep.flow.code_name(stage), dep.instances[stage])

        def done(f: Any) -> None:
            row["end"] = time.time()
            error = f.exception()
            row["ok"] = error is None
            if error is not None:
                row["error"] = f"{type(error).__name__}: {error}"
                return
            dep.placement[stage] = target
            phases = f.result().get("migration") or {}
            for key in ("snapshot_bytes", "snapshot_s", "transfer_s", "restore_s",
                        "commit_s", "total_s"):
                row[key] = phases.get(key)

        fut.add_done_callback(done)


def sink_anomalies(lat: pd.DataFrame, t0: float, t1: float) -> dict[str, int]:
    """Lost, doubled and reordered tuples at the sink whose source stamp is in
    ``[t0, t1]`` (a missing sequence number is placed at its received neighbours)."""
    lost = dup = reordered = 0
    for _, rows in lat.sort_values("arrival").groupby("stream"):
        seqs, stamps = rows["seq"].to_numpy(), rows["ts"].to_numpy()
        seen: set[int] = set()
        top = -1
        for seq, ts in zip(seqs, stamps):
            inside = t0 <= ts <= t1
            if seq in seen:
                dup += inside
            elif seq < top:
                reordered += inside
            seen.add(int(seq))
            top = max(top, int(seq))
        order = np.argsort(seqs, kind="stable")
        s_sorted, ts_sorted = seqs[order], stamps[order]
        for k in range(1, len(s_sorted)):
            gap = int(s_sorted[k] - s_sorted[k - 1]) - 1
            if gap > 0 and (t0 <= ts_sorted[k - 1] <= t1 or t0 <= ts_sorted[k] <= t1):
                lost += gap
    return {"window_lost": lost, "window_duplicates": dup, "window_reordered": reordered}


def migration_rows(flow: str, rate: float, result: Any, moves: Migrations,
                   used: dict[str, float]) -> list[dict]:
    if isinstance(result, str):
        return [{"flow": flow, "rate": rate, "error": result}]
    lat = result.measurement.latency
    s = result.measurement.summary.iloc[0]

    def pct(values: pd.Series, q: float) -> float:
        return float(np.percentile(values, q)) if len(values) else float("nan")

    # steady state: stamped after the first 0.3 s of the stream, before any migration
    first = min((m["start"] for m in moves.rows), default=float("inf"))
    t0 = moves.t0 if moves.t0 is not None else float(lat["ts"].min())
    baseline = lat[(lat["ts"] >= t0 + 0.3) & (lat["ts"] < first)]["latency_ms"]
    out = []
    for m in moves.rows:
        end = m["end"] if m["end"] is not None else m["start"]
        before = lat[(lat["ts"] >= m["start"] - 1.0) & (lat["ts"] < m["start"])]["latency_ms"]
        window = lat[(lat["ts"] >= m["start"]) & (lat["ts"] <= end + 0.5)]["latency_ms"]
        out.append({
            "flow": flow, "rate": rate, "stage": m["stage"], "from": m["from"], "to": m["to"],
            "ok": m["ok"], "at_s": round(m["start"] - moves.t0, 3) if moves.t0 else None,
            "dispatcher_wall_s": round(end - m["start"], 4),
            **{k: m.get(k) for k in ("snapshot_bytes", "snapshot_s", "transfer_s",
                                     "restore_s", "commit_s", "total_s")},
            "p50_baseline_ms": pct(baseline, 50), "p99_baseline_ms": pct(baseline, 99),
            "tuples_before": len(before), "p50_before_ms": pct(before, 50),
            "p99_before_ms": pct(before, 99),
            "max_before_ms": float(before.max()) if len(before) else float("nan"),
            "tuples_window": len(window), "p50_window_ms": pct(window, 50),
            "p99_window_ms": pct(window, 99),
            "max_window_ms": float(window.max()) if len(window) else float("nan"),
            **sink_anomalies(lat, m["start"], end + 0.5),
            "run_sent": s["sent"], "run_received": s["received"],
            "run_lost_all_hops": s["lost"], "run_duplicates": s["duplicates"],
            "run_reordered": s["reordered"], "run_complete": s["complete"],
            **{f"{g}_cores": round(used[g] / used["wall"], 3)
               for g in ("broker", "workers", "programs", "other")},
            "error": m["error"]})
    return out


# ------------------------------------------------------------------------------ figure
def figure(peaks: pd.DataFrame, latency: pd.DataFrame, migration: pd.DataFrame,
           path: Path, cores: int) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    flows = list(dict.fromkeys(peaks["flow"]))
    x = np.arange(len(flows))
    ax = axes[0]
    for k, way in enumerate(WAYS):
        sub = peaks[peaks["way"] == way].set_index("flow").reindex(flows)
        bars = ax.bar(x + (k - 0.5) * 0.4, sub["peak_msg_s"], 0.4, label=way)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(x, flows)
    ax.set_ylabel("peak sustained input rate (msg/s)")
    ax.set_title(f"Peak rate, TAXI, 3 workers ({cores} cores shared)")
    ax.legend(fontsize=8)
    ax = axes[1]
    for k, way in enumerate(WAYS):
        sub = latency[latency["way"] == way].set_index("flow").reindex(flows)
        pos = x + (k - 0.5) * 0.4
        ax.bar(pos, sub["latency_p99_ms"], 0.4, alpha=0.35, color=f"C{k}")
        ax.bar(pos, sub["latency_p95_ms"], 0.4, alpha=0.6, color=f"C{k}")
        ax.bar(pos, sub["latency_p50_ms"], 0.4, color=f"C{k}", label=f"{way} p50/p95/p99")
    ax.set_xticks(x, flows)
    ax.set_yscale("log")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("Latency at half thingssim's peak")
    ax.legend(fontsize=8)
    ax = axes[2]
    if len(migration) and "p99_window_ms" in migration:
        labels = [f"{f}:{s}" for f, s in zip(migration["flow"], migration["stage"])]
        pos = np.arange(len(labels))
        ax.scatter(pos, migration["p99_baseline_ms"], marker="_", s=80,
                   label="p99, before any migration")
        ax.scatter(pos, migration["p99_window_ms"], marker="o", s=14, label="p99, during")
        ax.scatter(pos, migration["max_window_ms"], marker="^", s=14, label="max, during")
        ax.set_xticks(pos, labels, rotation=90, fontsize=6)
        ax.set_yscale("log")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("Each stage migrated mid-stream (half the peak)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="a ~1 minute check: ETL only, short trials, coarse search")
    parser.add_argument("--flows", nargs="+", choices=FLOWS, default=None)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of input per search trial (default 4; quick 2)")
    parser.add_argument("--drain", type=float, default=3.0,
                        help="seconds the sink may take after the input ends")
    parser.add_argument("--start", type=float, default=None, help="first rate tried")
    parser.add_argument("--limit", type=float, default=None, help="highest rate tried")
    parser.add_argument("--precision", type=float, default=None,
                        help="relative precision of the bisection")
    parser.add_argument("--attempts", type=int, default=None,
                        help="runs at a rate before it counts as not sustainable")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--latency-duration", type=float, default=None)
    parser.add_argument("--gap", type=float, default=None,
                        help="seconds between two migrations")
    parser.add_argument("--migrate", type=int, default=None,
                        help="migrate only the first N stages of each dataflow (0: none)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/riotbench (--quick: a temporary folder)")
    args = parser.parse_args(argv)
    quick = {"flows": ["ETL"], "duration": 2.0, "start": 64.0, "limit": 256.0,
             "precision": 0.5, "attempts": 1, "latency_duration": 3.0, "gap": 1.0,
             "migrate": 2}
    full = {"flows": list(FLOWS), "duration": 4.0, "start": 128.0, "limit": 8192.0,
            "precision": 0.1, "attempts": 2, "latency_duration": 5.0, "gap": 1.5,
            "migrate": 99}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="riotbench-real-quick-")) if args.quick \
            else ROOT / "results" / "riotbench"
    return args


def write(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, float_format="%.6g", lineterminator="\n")


def main(argv: Optional[list[str]] = None) -> int:
    started = time.perf_counter()
    args = parse(argv)
    cores = os.cpu_count() or 1
    print(f"riotbench_real: broker, 3 workers, file service, raw-paho processes and the load "
          f"generator all share this machine's {cores} cores", flush=True)
    trials: list[dict] = []
    peaks: list[dict] = []
    latency: list[dict] = []
    migration: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="riotbench-real-") as tmp:
        lab = Lab(args.seed, Path(tmp))
        try:
            with tqdm(desc="peak search", unit="trial") as bar:
                for flow in args.flows:
                    for way in args.ways:
                        peak = search(lab, flow, way, args, trials, bar)
                        at = next((r for r in trials if r["flow"] == flow and r["way"] == way
                                   and r["rate"] == peak and r["sustainable"]), {})
                        peaks.append({"flow": flow, "way": way, "peak_msg_s": peak,
                                      "share_of_raw": float("nan"),
                                      "at_search_limit": peak >= args.limit,
                                      "runs": sum(1 for r in trials if r["flow"] == flow
                                                  and r["way"] == way),
                                      **{k: v for k, v in at.items()
                                         if k not in ("flow", "way", "rate", "attempt",
                                                      "sustainable")}})
            peak_of = {(p["flow"], p["way"]): p["peak_msg_s"] for p in peaks}
            for p in peaks:
                raw = peak_of.get((p["flow"], "raw paho"))
                if raw:
                    p["share_of_raw"] = round(p["peak_msg_s"] / raw, 3)
            runs = [(flow, way) for flow in args.flows for way in args.ways]
            for flow, way in tqdm(runs, desc="latency at half the peak", unit="run"):
                rate = peak_of.get((flow, "thingssim"), 0.0) / 2
                if rate <= 0:
                    continue
                spec = RunSpec(flow=flow, rate=rate, duration=args.latency_duration,
                               seed=args.seed, drain_s=args.drain + 5.0,
                               run_id=_run_id(lab, flow, way, rate) + "-lat")
                result, used = lab.run(way, spec)
                latency.append({"flow": flow, "way": way, "rate": rate,
                                "basis": "half thingssim's peak",
                                **summary_row(result, used)})
            for flow in tqdm(args.flows if "thingssim" in args.ways else [],
                             desc="migration mid-stream", unit="run"):
                rate = peak_of[(flow, "thingssim")] / 2
                stages = [s.name for s in build(flow).stages][:args.migrate]
                if rate <= 0 or not stages:
                    continue
                moves = Migrations(stages, lead=1.5, gap=args.gap)
                spec = RunSpec(flow=flow, rate=rate, seed=args.seed,
                               duration=1.5 + args.gap * len(stages) + 1.5,
                               drain_s=args.drain + 10.0, actions=moves.actions(),
                               run_id=_run_id(lab, flow, "thingssim", rate) + "-mig")
                result, used = lab.run("thingssim", spec)
                migration.extend(migration_rows(flow, rate, result, moves, used))
        finally:
            lab.close()
    args.out.mkdir(parents=True, exist_ok=True)
    peak_frame, latency_frame = pd.DataFrame(peaks), pd.DataFrame(latency)
    migration_frame = pd.DataFrame(migration)
    write(peak_frame, args.out / "real_peak.csv")
    write(pd.DataFrame(trials), args.out / "real_trials.csv")
    write(latency_frame, args.out / "real_latency.csv")
    write(migration_frame, args.out / "real_migration.csv")
    figure(peak_frame, latency_frame, migration_frame, args.out / "real.png", cores)
    show = lambda f, cols: print(f[[c for c in cols if c in f]].to_string(  # noqa: E731
        index=False, float_format=lambda v: f"{v:.4g}"))
    show(peak_frame, ["flow", "way", "peak_msg_s", "share_of_raw", "runs", "throughput",
                      "latency_p50_ms", "latency_p99_ms", "broker_us_per_hop",
                      "workers_us_per_hop", "programs_us_per_hop", "raw_us_per_hop",
                      "other_cores"])
    show(latency_frame, ["flow", "way", "rate", "received", "lost", "latency_p50_ms",
                         "latency_p95_ms", "latency_p99_ms", "jitter", "other_cores"])
    show(migration_frame, ["flow", "stage", "ok", "total_s", "p99_baseline_ms", "p99_window_ms",
                           "max_window_ms", "window_lost", "window_duplicates",
                           "window_reordered", "run_lost_all_hops"])
    print(f"written to {args.out}")
    print(f"riotbench_real: {time.perf_counter() - started:.1f} s "
          f"(on {cores} cores shared by everything)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
