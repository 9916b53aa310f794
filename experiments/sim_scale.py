"""How the simulation scales: N boards, each running a program that publishes once a
second, for a span of simulated time; wall time, peak memory and the cost per message.

    python experiments/sim_scale.py --boards 100 1000 3000 10000 --minutes 10 --out results

Writes ``results/sim_scale.csv`` and ``results/sim_scale.png`` (``--out``).  They are
measurements (wall time, memory), so they differ from run to run; the event and message
counts are deterministic.  Each size runs in a fresh process, so wall time is clean and
peak memory is that process's peak RSS.
Engines' 1 s resource reports are on (they are part of the system's load); message
tracing is off (a trace of millions of rows is what you would not keep at this scale).
PureEdgeSim (Java) simulates 10,000 devices for 10 minutes in 58 s.

``us_per_message`` is the run's wall time after setup divided by the messages published
(each board publishes three a second: its program's, its engine's and its program's
resource reports); ``bare_relay_us`` is what a bare SimPy relay (a ``Timeout``, a
``Store.put`` and a ``get`` per message: the floor any SimPy model pays) costs per message
in the same process, measured just before, and ``ratio_to_bare_relay`` the two side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import simpy  # noqa: E402
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


def bare_relay_us(messages: int = 50_000, rounds: int = 3) -> float:
    """A bare SimPy relay's wall time per message (best of ``rounds``)."""

    def producer(env: simpy.Environment, store: simpy.Store) -> Any:
        for i in range(messages):
            yield env.timeout(0.001)
            store.put(i)

    def consumer(store: simpy.Store) -> Any:
        while True:
            yield store.get()

    best = float("inf")
    for _ in range(rounds):
        env = simpy.Environment()
        store = simpy.Store(env)
        env.process(producer(env, store))
        env.process(consumer(store))
        start = time.perf_counter()
        env.run()
        best = min(best, time.perf_counter() - start)
    return best / messages * 1e6


def measure(boards: int, minutes: float, seed: int, profile: str, progress: bool) -> dict:
    relay_us = bare_relay_us()
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
    per_message = (wall - setup) / stats["published"] * 1e6
    return {"boards": boards, "sim_minutes": minutes, "wall_s": round(wall, 3),
            "setup_s": round(setup, 3), "peak_rss_mb": round(peak / 2**20, 1),
            "us_per_message": round(per_message, 2), "bare_relay_us": round(relay_us, 2),
            "ratio_to_bare_relay": round(per_message / relay_us, 2),
            "programs_running": running,
            "program_events": sum(b.events for b in world.boards.values()),
            "published": stats.get("published"), "delivered": stats.get("delivered"),
            "delivered_per_wall_s": round(stats.get("delivered", 0) / wall),
            "sim_s_per_wall_s": round(horizon / wall, 2)}


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, nargs="+", default=[100, 1000, 3000, 10000])
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
    fig, (ax, cost) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(df["boards"], df["wall_s"], "o-", label="wall time (s)")
    ax.plot(df["boards"], df["peak_rss_mb"], "s--", label="peak RSS (MiB)")
    ax.set(xscale="log", yscale="log", xlabel="boards",
           title=f"{args.minutes:g} simulated minutes, 3 messages/s per board")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    cost.plot(df["boards"], df["us_per_message"], "o-", label="thingssim")
    cost.plot(df["boards"], df["bare_relay_us"], "s--", label="bare SimPy relay")
    cost.set(xscale="log", ylim=(0, None), xlabel="boards", ylabel="µs of wall time per message",
             title="cost per published message")
    cost.grid(alpha=0.3, which="both")
    cost.legend()
    fig.tight_layout()
    fig.savefig(args.out / "sim_scale.png", dpi=120)
    print(df.to_string(index=False))
    print(f"written: {args.out / 'sim_scale.csv'}, {args.out / 'sim_scale.png'}")
    print(f"run time: {time.perf_counter() - wall_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
