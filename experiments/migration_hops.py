"""Migrate every corpus program many times and check it never notices.

For each program in ``tests/programs`` (or ``--programs DIR``): run it once
uninterrupted, then again with ``--hops`` migrations at seeded random loop boundaries,
each one a real snapshot -> JSON -> restore into a fresh host.  Records per hop the
snapshot size (raw, gzip), capture and restore time, and whether the final output is
identical.  Writes (``--out``, default ``results/``):

- ``migration_hops.csv``: per hop the event, program time, snapshot size (raw, gzip) and
  whether the output was identical.  Deterministic: the same seed gives a byte-identical
  file, from any directory, with any ``PYTHONHASHSEED``.
- ``migration_hops_times.csv`` and ``migration_hops.png``: the measured capture and
  restore times (wall clock, so they differ from run to run).

    python experiments/migration_hops.py --seed 1 --hops 10 --out results
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from runtime import ProgramHost, VirtualClock  # noqa: E402
from runtime.bus import LocalBus  # noqa: E402
from runtime.snapshot import dumps, loads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the columns of migration_hops.csv: all of them are the same on every run of a seed
DETERMINISTIC = ["program", "hop", "event", "program_time", "bytes", "gzip_bytes",
                 "output_identical"]


def _host(console: list[str], source: str | None = None, doc: dict | None = None):
    clock, bus = VirtualClock(), LocalBus()
    hooks = {"clock": clock, "publish": bus.publish, "console": console.append}
    host = ProgramHost.restore(doc, **hooks) if doc is not None else \
        ProgramHost(source, code_name="exp", instance_id="exp.1", **hooks)
    return bus.attach(host), clock


def measure(name: str, source: str, hops: int, rng: random.Random) -> list[dict]:
    plain: list[str] = []
    host, clock = _host(plain, source)
    host.start()
    clock.run()
    events = host.events_run
    points = sorted(rng.sample(range(1, events), k=min(hops, events - 1)))
    console: list[str] = []
    host, clock = _host(console, source)
    host.start()
    rows = []
    while host.alive:
        while points and host.events_run >= points[0]:
            points.pop(0)
            started = time.perf_counter()
            data = dumps(host.snapshot())
            captured = time.perf_counter()
            host, clock = _host(console, doc=loads(data))
            restored = time.perf_counter()
            rows.append({"program": name, "hop": len(rows) + 1, "event": host.events_run,
                         "program_time": host.program_time(), "bytes": len(data),
                         "gzip_bytes": len(gzip.compress(data, 6, mtime=0)),
                         "snapshot_ms": (captured - started) * 1e3,
                         "restore_ms": (restored - captured) * 1e3})
        if not clock.step():
            break
    identical = "".join(console) == "".join(plain)
    for row in rows:
        row["output_identical"] = identical
    return rows


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hops", type=int, default=10)
    parser.add_argument("--programs", type=Path, default=ROOT / "tests" / "programs")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    programs = sorted(args.programs.glob("*.py"), key=lambda p: p.name)
    if not programs:
        parser.error(f"no programs in {args.programs}")
    rows = []
    for path in tqdm(programs, desc="programs", unit="prog"):
        rng = random.Random(f"{args.seed}:{path.stem}")
        rows.extend(measure(path.stem, path.read_text(encoding="utf-8"), args.hops, rng))
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes, times = args.out / "migration_hops.csv", args.out / "migration_hops_times.csv"
    figure = args.out / "migration_hops.png"
    df[DETERMINISTIC].to_csv(sizes, index=False, float_format="%.6g", lineterminator="\n")
    df[["program", "hop", "snapshot_ms", "restore_ms"]].to_csv(
        times, index=False, float_format="%.6g", lineterminator="\n")
    summary = df.groupby("program").agg(
        hops=("hop", "max"), kb=("bytes", lambda b: b.median() / 1024),
        gzip_kb=("gzip_bytes", lambda b: b.median() / 1024),
        snapshot_ms=("snapshot_ms", "median"), restore_ms=("restore_ms", "median"),
        identical=("output_identical", "all"))
    print(summary.round(2).to_string())
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(df["bytes"] / 1024, df["snapshot_ms"], s=12, label="snapshot")
    ax.scatter(df["bytes"] / 1024, df["restore_ms"], s=12, label="restore", marker="x")
    ax.set(xscale="log", yscale="log", xlabel="snapshot size (KiB, raw JSON)",
           ylabel="time (ms)", title=f"Live migration of {len(programs)} programs "
           f"({len(df)} hops, seed {args.seed})")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    print(f"written: {sizes}, {times}, {figure}")
    print(f"run time: {time.perf_counter() - wall_start:.1f} s")
    return 0 if bool(summary["identical"].all()) else 1


if __name__ == "__main__":
    sys.exit(main())
