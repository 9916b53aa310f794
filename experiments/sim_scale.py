"""How the simulation scales: N boards, each running a program that publishes once a
second, for a span of simulated time; wall time, peak memory and event rates.

    python experiments/sim_scale.py --boards 100 1000 10000 --minutes 10 --out results

Writes ``results/sim_scale.csv`` and ``results/sim_scale.png`` (``--out``).  They are
measurements (wall time, memory), so they differ from run to run; the event and message
counts are deterministic.  Each size runs in a fresh process, so wall time is clean and
peak memory is that process's peak RSS.
Engines' 1 s resource reports are on (they are part of the system's load); message
tracing is off (a trace of millions of rows is what you would not keep at this scale).
PureEdgeSim (Java) simulates 10,000 devices for 10 minutes in 58 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from thingssim.sim.world import World  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = """
n = 0
def tick():
    global n
    n += 1
    things.publish("sensors/" + things.code_name, {"n": n, "t": things.now()})
things.set_interval(tick, 1.0)
"""


def measure(boards: int, minutes: float, seed: int, profile: str, progress: bool) -> dict:
    started = time.perf_counter()
    world = World(seed, trace=False)
    for i in range(boards):
        world.add_board(f"b{i}", profile)
    d = world.add_dispatcher(watch_console=False, watch_resources=False)
    world.run(1.0)
    for i in range(boards):  # programs start spread over one second
        world.at(1.0 + i / boards, lambda i=i: d.run_code(f"b{i}", f"p{i}", PUBLISHER))
    setup = time.perf_counter() - started
    horizon = 2.0 + minutes * 60
    with tqdm(total=horizon, unit="sim-s", desc=f"{boards} boards", leave=False,
              disable=not progress) as bar:
        world.run(horizon, on_progress=lambda now: bar.update(now - bar.n))
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    stats = world.network.counters()
    running = sum(len(b.engine.programs) for b in world.boards.values())
    return {"boards": boards, "sim_minutes": minutes, "wall_s": round(wall, 3),
            "setup_s": round(setup, 3), "peak_rss_mb": round(peak / 2**20, 1),
            "programs_running": running,
            "program_events": sum(b.events for b in world.boards.values()),
            "published": stats.get("published"), "delivered": stats.get("delivered"),
            "delivered_per_wall_s": round(stats.get("delivered", 0) / wall),
            "sim_s_per_wall_s": round(horizon / wall, 2)}


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", default="raspberry-pi-3")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in this fresh process
        row = measure(args.boards[0], args.minutes, args.seed, args.profile, progress=True)
        print(json.dumps(row))
        return 0
    rows = []
    for n in args.boards:
        child = subprocess.run([sys.executable, __file__, "--child", "--boards", str(n),
                                "--minutes", str(args.minutes), "--seed", str(args.seed),
                                "--profile", args.profile], stdout=subprocess.PIPE,
                               text=True, check=True)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "sim_scale.csv", index=False, lineterminator="\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["boards"], df["wall_s"], "o-", label="wall time (s)")
    ax.plot(df["boards"], df["peak_rss_mb"], "s--", label="peak RSS (MiB)")
    ax.set(xscale="log", yscale="log", xlabel="boards",
           title=f"{args.minutes:g} simulated minutes, 1 msg/s per board")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "sim_scale.png", dpi=120)
    print(df.to_string(index=False))
    print(f"written: {args.out / 'sim_scale.csv'}, {args.out / 'sim_scale.png'}")
    print(f"run time: {time.perf_counter() - wall_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
