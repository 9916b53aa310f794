"""End-to-end migration latency between two real workers on loopback (real Mosquitto,
programs in child processes), for program states of 1 KB to 10 MB.

    python experiments/real_migration.py --sizes 1e3 1e5 1e6 1e7 --repeat 5 \
        --out results/real_migration.csv

The two workers share a ``snapshot_key``, as a deployed fleet does (workers restore only
signed snapshots), so the times include signing and checking.  Measurements on this
machine (wall clock), so they differ from run to run.
Writes ``results/real_migration.csv`` (one row per migration: size, snapshot, transfer,
restore, commit, total seconds as recorded by the source engine, plus the dispatcher's
wall-clock round trip), ``results/real_migration.png`` (median phases per size) and
prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.clock import AsyncioClock  # noqa: E402
from runtime.dispatcher import Dispatcher  # noqa: E402
from runtime.mqtt import MqttTransport  # noqa: E402
from thingssim.broker import start_broker  # noqa: E402

PROGRAM = """
blob = "x" * {size}
n = 0
def tick():
    global n
    n += 1
things.set_interval(tick, 0.05)
"""


def start_worker(url: str, wid: str, tmp: Path, key: str) -> subprocess.Popen:
    config = tmp / f"{wid}.json"
    config.write_text(json.dumps({"pubsub_url": url, "id": wid, "resource_period": None,
                                  "snapshot_key": key}))
    return subprocess.Popen([sys.executable, "-m", "runtime.worker", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


async def measure(url: str, sizes: list[int], repeat: int) -> list[dict]:
    loop = asyncio.get_running_loop()
    d = Dispatcher(MqttTransport(url, client_id="bench-dispatcher", loop=loop),
                   AsyncioClock(loop), {"id": "bench", "request_timeout": 120,
                                        "watch_console": False, "watch_resources": False})
    d.start()
    while not {"w1", "w2"} <= {e for e, h in d.engines.items() if h.status != "dead"}:
        await asyncio.sleep(0.05)
    rows = []
    bar = tqdm(total=len(sizes) * repeat, unit="migration", desc="migrations")
    for size in sizes:
        iid = (await d.run_code("w1", f"state{size}", PROGRAM.format(size=size)))["id"]
        where = "w1"
        for k in range(repeat):
            target = "w2" if where == "w1" else "w1"
            started = time.perf_counter()
            result = await d.move_code(where, target, f"state{size}", iid)
            wall = time.perf_counter() - started
            m = result["migration"]
            rows.append({"state_bytes": size, "hop": k + 1, "snapshot_bytes": m["snapshot_bytes"],
                         "snapshot_s": m["snapshot_s"], "transfer_s": m["transfer_s"],
                         "restore_s": m["restore_s"], "commit_s": m["commit_s"],
                         "total_s": m["total_s"], "dispatcher_wall_s": wall})
            where = target
            bar.update()
        await d.kill_code(iid)
    bar.close()
    d.kill()
    return rows


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e5, 1e6, 1e7])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "real_migration.csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_broker() as broker:
        key = secrets.token_hex(16)  # the fleet's shared secret, for this run only
        workers = [start_worker(broker.url, w, Path(tmp), key) for w in ("w1", "w2")]
        try:
            rows = asyncio.run(measure(broker.url, [int(s) for s in args.sizes], args.repeat))
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.6f", lineterminator="\n")
    cols = ["snapshot_bytes", "snapshot_s", "transfer_s", "restore_s", "commit_s", "total_s",
            "dispatcher_wall_s"]
    medians = df.groupby("state_bytes")[cols].median()
    print(medians.to_string(float_format="%.4f"))
    phases = ["snapshot_s", "transfer_s", "restore_s", "commit_s"]
    ax = (medians[phases] * 1e3).rename(columns=lambda c: c[:-2]).plot.bar(
        stacked=True, figsize=(7, 4), rot=0)
    ax.set_xticklabels([f"{int(b):,} B" for b in medians.index])
    ax.set(xlabel="program state", ylabel="median time (ms)",
           title="Migration between two real workers (loopback Mosquitto)")
    ax.grid(axis="y", alpha=0.3)
    figure = args.out.with_suffix(".png")
    ax.figure.tight_layout()
    ax.figure.savefig(figure, dpi=120)
    plt.close(ax.figure)
    print(f"written: {args.out}, {figure}")
    print(f"run time: {time.perf_counter() - wall_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
