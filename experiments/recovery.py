"""Recovery time and lost progress against checkpoint interval and snapshot size.

    python experiments/recovery.py --seed 1 --out results/scheduling          # simulation
    python experiments/recovery.py --real --seed 1 --out results/scheduling   # + real workers
    python experiments/recovery.py --keep-real --seed 1 --out results/scheduling
        # the simulation anew, the real workers' rows of recovery.csv kept as they are

A scheduler places one application (4 programs that publish a sequence number every
0.1 s and hold a blob of the given size, so their snapshots have that size); after a
random warm-up a board running some of them dies (a crash in simulation, SIGKILL of the
worker on real ones).  Measured per program, from a subscriber that sees every number:

- ``will_s``: death -> the broker's will (1.5 x keepalive in simulation; Mosquitto scans
  keepalives every few seconds);
- ``recovery_s``: death -> the first number from the recovered copy;
- ``after_fence_s``: the will + fence time + margin -> running again (what the scheduler
  adds: loading the checkpoint, the cycle, ``recover_code``, the restore);
- ``reemitted``: numbers published before the death that the recovered copy publishes
  again (progress since the last checkpoint, redone);
- ``checkpoint_age_s``: how old the checkpoint was when the board died.

Writes ``recovery.csv`` and ``recovery.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INTERVALS = (1.0, 5.0, 30.0)
SIZES = (1_000, 100_000, 1_000_000)
KEEPALIVE = 2.0
FENCE = 2.0
MARGIN = 0.5
COLUMNS = ["world", "checkpoint_s", "snapshot_bytes", "seed", "instance", "will_s",
           "recovery_s", "after_fence_s", "reemitted", "checkpoint_age_s"]


def program(size: int) -> str:
    return (f"blob = 'x' * {size}\n"
            "n = 0\n"
            "def tick():\n"
            "    global n\n"
            "    things.publish('seq/' + things.instance_id, n)\n"
            "    n += 1\n"
            "things.set_interval(tick, 0.1)\n")


def app(size: int) -> dict:
    return {"name": "rec", "components": [{"name": "seq", "code": program(size), "count": 4,
                                           "memory_mb": 60}]}


def measure(seqs: dict, t_dead: float, moved: list[str],
            will: float) -> dict[str, tuple[float, int]]:
    """instance -> (time of the first number of the recovered copy, numbers re-emitted).
    Numbers arriving before the will were in flight from the dead board: not recovery."""
    out = {}
    for iid in moved:
        seen = seqs.get(iid, [])
        before = [n for t, n in seen if t <= t_dead + will]
        last = before[-1] if before else -1
        after = [(t, n) for t, n in seen if t > t_dead + will]
        if not after:
            continue
        out[iid] = (after[0][0], sum(1 for _, n in after if n <= last))
    return out


def sim_trial(interval: float, size: int, seed: int) -> list[list]:
    from runtime.scheduler.client import SchedulerClient
    from thingssim.sim.boards import get_profile
    from thingssim.sim.world import World, link_profile

    rng = random.Random(f"{seed}:{interval}:{size}")
    w = World(seed=seed, keepalive=KEEPALIVE, trace=False)
    for i in range(3):
        w.add_board(f"b{i}", "raspberry-pi-3")
        w.boards[f"b{i}"].engine.fence_s = FENCE
    node = w.add_scheduler(checkpoint_s=interval, fence_margin_s=MARGIN)
    link = w.network.add_link("sink", link_profile(get_profile("desktop-vm")))
    sink = w.network.client("sink", link)
    seqs: dict[str, list] = {}
    sink.subscribe("seq/+", lambda m: seqs.setdefault(m.topic.split("/")[1], []).append(
        (w.clock.now(), int(m.payload))), qos=0)
    sink.connect()
    client = SchedulerClient(sink, w.clock, timeout=60.0, client_id="sink",
                             new_id=w.id_source("sink"))
    w.run(2.0)
    reply = w.wait(client.submit(app(size)))
    where = {v["id"]: v["engine"] for v in reply["instances"].values()}
    w.run(w.clock.now() + interval + rng.uniform(2.0, 2.0 + interval))
    victim = sorted(where.values())[0]
    moved = [iid for iid, e in where.items() if e == victim]
    t_dead = w.clock.now()
    w.boards[victim].crash()
    w.run(t_dead + 1.5 * KEEPALIVE + FENCE + MARGIN + 10.0)
    recs = {e["data"]["instance"]: e for e in node.scheduler.history
            if e["type"] == "action" and e["data"].get("kind") == "recover"}
    deaths = [e["timestamp"] for e in node.scheduler.history if e["type"] == "engine-dead"]
    will = deaths[0] - t_dead if deaths else float("nan")
    rows = []
    for iid, (first, again) in sorted(measure(seqs, t_dead, moved, will).items()):
        age = recs[iid]["data"].get("checkpoint_age") if iid in recs else None
        taken = recs[iid]["data"].get("checkpoint_taken") if iid in recs else None
        rows.append(["sim", interval, size, seed, iid, round(will, 4),
                     round(first - t_dead, 4),
                     round(first - t_dead - will - FENCE - MARGIN, 4), again,
                     round(t_dead - taken, 3) if taken is not None else (age or "")])
    return rows


def real_trial(interval: float, size: int, seed: int, tmp: Path) -> list[list]:
    import asyncio
    import json
    import os
    import signal
    import subprocess
    import time

    from runtime.clock import AsyncioClock
    from runtime.dispatcher import Dispatcher
    from runtime.mqtt import MqttTransport
    from runtime.scheduler.client import SchedulerClient
    from thingssim.broker import start_broker

    rng = random.Random(f"{seed}:{interval}:{size}")
    broker = start_broker()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {}
    for wid in ("w1", "w2", "w3"):
        cfg = tmp / f"{wid}.json"
        cfg.write_text(json.dumps({"pubsub_url": broker.url, "id": wid, "keepalive": KEEPALIVE,
                                   "resource_period": 0.5, "snapshot_key": "k",
                                   "fence_s": FENCE}))
        procs[wid] = subprocess.Popen([sys.executable, "-m", "runtime.worker", str(cfg)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env)
    sched = subprocess.Popen([sys.executable, "-m", "runtime.scheduler.server", broker.url,
                              "--db", str(tmp / f"s{time.time_ns()}.db"), "--checkpoint-s",
                              str(interval), "--fence-margin-s", str(MARGIN)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    async def main() -> list[list]:
        loop = asyncio.get_running_loop()
        t = MqttTransport(broker.url, client_id=f"rec-{os.getpid()}", loop=loop)
        d = Dispatcher(t, AsyncioClock(loop), {"id": f"rec-{os.getpid()}",
                                               "watch_console": False})
        seqs: dict[str, list] = {}
        t.subscribe("seq/+", lambda m: seqs.setdefault(m.topic.split("/")[1], []).append(
            (time.monotonic(), int(m.payload))), qos=0)
        deaths: dict[str, float] = {}
        d.on("engine-dead", lambda e: deaths.setdefault(e.id, time.monotonic()))
        d.start()
        client = SchedulerClient(t, AsyncioClock(loop), timeout=10.0, client_id=f"rc{seed}")
        while len([e for e in d.engines.values() if e.status != "dead"]) < 3:
            await asyncio.sleep(0.1)
        reply = None
        for _ in range(40):
            try:
                reply = await client.submit(app(size))
                break
            except Exception:  # noqa: BLE001 - the scheduler is still starting
                await asyncio.sleep(0.5)
        where = {v["id"]: v["engine"] for v in reply["instances"].values()}
        await asyncio.sleep(interval + rng.uniform(2.0, 2.0 + interval))
        victim = sorted(where.values())[0]
        moved = [iid for iid, e in where.items() if e == victim]
        t_dead = time.monotonic()
        procs[victim].send_signal(signal.SIGKILL)
        await asyncio.sleep(25.0)
        will = deaths.get(victim, float("nan")) - t_dead
        rows = []
        for iid, (first, again) in sorted(measure(seqs, t_dead, moved, will).items()):
            rows.append(["real", interval, size, seed, iid, round(will, 3),
                         round(first - t_dead, 3),
                         round(first - t_dead - will - FENCE - MARGIN, 3), again, ""])
        d.kill()
        return rows

    try:
        return asyncio.run(main())
    finally:
        sched.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in [sched, *procs.values()]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()


def plot(frame, out: Path, stem: str = "recovery", pdf: bool = False) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (world, size), g in frame.groupby(["world", "snapshot_bytes"]):
        m = g.groupby("checkpoint_s").mean(numeric_only=True)
        label = f"{world}, {size // 1000} KB"
        axes[0].plot(m.index, m["after_fence_s"], marker="o", label=label)
        axes[1].plot(m.index, m["reemitted"], marker="o", label=label)
    axes[0].set(xscale="log", xlabel="checkpoint interval (s)",
                ylabel="recovery after will + fence (s)")
    axes[1].set(xscale="log", xlabel="checkpoint interval (s)",
                ylabel="outputs re-emitted per program")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths = [out / f"{stem}.png"]
    fig.savefig(paths[0], dpi=120)
    if pdf:
        paths.append(out / f"{stem}.pdf")
        fig.savefig(paths[1], metadata={"CreationDate": None})
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    import csv
    import tempfile

    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="also on real workers")
    parser.add_argument("--keep-real", action="store_true",
                        help="keep the real workers' rows of OUT/recovery.csv as they are "
                             "and rerun only the simulation (real rows are measured: a "
                             "rerun takes minutes and gives other numbers)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "scheduling")
    args = parser.parse_args(argv)
    if args.real and args.keep_real:
        parser.error("--real reruns the real workers, --keep-real keeps their rows: one")
    args.out.mkdir(parents=True, exist_ok=True)
    kept: list[list[str]] = []
    if args.keep_real:
        with open(args.out / "recovery.csv", newline="") as f:
            kept = [row for row in csv.reader(f) if row and row[0] == "real"]
        if not kept:
            parser.error(f"--keep-real: {args.out / 'recovery.csv'} has no real rows")
    rows = []
    for interval in INTERVALS:
        for size in SIZES:
            for seed in range(args.seed, args.seed + args.seeds):
                rows += sim_trial(interval, size, seed)
    if args.real:
        with tempfile.TemporaryDirectory() as tmp:
            for interval in INTERVALS:
                for size in (SIZES[0], SIZES[2]):
                    rows += real_trial(interval, size, args.seed, Path(tmp))
                    print("real", interval, size, file=sys.stderr)
    with open(args.out / "recovery.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        writer.writerows(kept)  # as read: the same bytes
    frame = pd.concat([pd.DataFrame(rows, columns=COLUMNS),
                       pd.read_csv(args.out / "recovery.csv").iloc[len(rows):]],
                      ignore_index=True) if kept else pd.DataFrame(rows, columns=COLUMNS)
    plot(frame, args.out)
    summary = frame.groupby(["world", "checkpoint_s", "snapshot_bytes"]).agg(
        recovery_s=("recovery_s", "mean"), after_fence_s=("after_fence_s", "mean"),
        after_fence_max=("after_fence_s", "max"), reemitted=("reemitted", "mean"),
        n=("instance", "count"))
    print(summary.to_string())
    return 0


# ---------------------------------------------------------------- the framework's view
#: ``thingssim experiment recovery [--quick]``: the simulated half only (real workers
#: stay ``--real`` of the script: they need a broker and are one trial per point)
KEYS = ["world", "checkpoint_s", "snapshot_bytes"]
METRICS = ["will_s", "recovery_s", "after_fence_s", "reemitted", "checkpoint_age_s"]
PARAMS = {"world": "sim", "checkpoint_s": list(INTERVALS), "snapshot_bytes": list(SIZES)}


def design(params: Any) -> list[dict[str, Any]]:
    from thingssim.experiment.spec import grid

    return grid(params, ["checkpoint_s", "snapshot_bytes"])


def trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    rows = sim_trial(float(point["checkpoint_s"]), int(point["snapshot_bytes"]), seed)
    return [{k: v for k, v in zip(COLUMNS, row) if k not in ("seed", *KEYS)}
            for row in rows]


def figures(trials: Any, summary: Any, out: Path) -> list[Path]:
    return plot(trials, out, "fig_recovery", pdf=True)


def headline(summary: Any) -> Any:
    """Per checkpoint interval and snapshot size: recovery time and outputs redone."""
    import pandas as pd

    from thingssim.experiment import stats

    table = stats.wide(summary, KEYS)
    return pd.DataFrame({"checkpoint (s)": table.checkpoint_s,
                         "snapshot (KB)": table.snapshot_bytes / 1000,
                         "death -> running (s)": table.recovery_s,
                         "after fence (s)": table.after_fence_s,
                         "re-emitted": table.reemitted}).reset_index(drop=True)


def _experiment() -> Any:
    from thingssim.experiment.spec import Experiment

    return Experiment(
        name="recovery",
        title="Recovery from checkpoints: time and re-emitted outputs (simulation)",
        description="\n\n".join(__doc__.split("\n\n")[1:3]),
        params=PARAMS,
        seeds=range(1, 4),
        presets={"quick": {"checkpoint_s": [1.0, 5.0], "snapshot_bytes": [1_000, 100_000],
                           "seeds": range(1, 3)},
                 "tiny": {"checkpoint_s": [1.0], "snapshot_bytes": [1_000], "seeds": [1]}},
        keys=KEYS,
        metrics=METRICS,
        design=design,
        trial=trial,
        figures=figures,
        headline=headline,
        deterministic=True,  # simulation only; tokens come from the world's seeded ids
    )


EXPERIMENT = _experiment()


if __name__ == "__main__":
    sys.exit(main())
