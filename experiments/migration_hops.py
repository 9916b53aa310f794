"""Migrate every corpus program many times and check it never notices.

    thingssim experiment migration_hops --out results/migration_hops
    thingssim experiment migration_hops --quick

For each program in ``tests/programs``, one trial (a seed) runs it once uninterrupted,
then again with ``hops`` migrations at loop boundaries the seed picks, each one a real
snapshot -> JSON -> restore into a fresh host on a virtual clock.  One row per hop: the
event and program time it happened at, the snapshot size (raw JSON and gzip level 6),
and whether the program's whole output was identical to the uninterrupted run's.

Deterministic: sizes and hop points are functions of the seed, so the CSVs are the same
bytes on every run, backend and ``PYTHONHASHSEED``; seed 1's rows are those of the
script this experiment replaced (``python experiments/migration_hops.py --seed 1``,
whose ``results/migration_hops.csv`` they continue).  The old script also timed each
snapshot and restore with the wall clock; E2 (``thingssim experiment thingsmigrate``)
measures those times for the same programs with replications, so they are no longer
taken here.
"""

from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime import ProgramHost, VirtualClock  # noqa: E402
from runtime.bus import LocalBus  # noqa: E402
from runtime.snapshot import dumps, loads  # noqa: E402
from thingssim.experiment import Experiment, grid  # noqa: E402
from thingssim.experiment.stats import wide  # noqa: E402
from thingssim.experiment.style import ci_note, save, style  # noqa: E402

PROGRAMS = ROOT / "tests" / "programs"
KEYS = ("program", "hops")
METRICS = ("bytes", "gzip_bytes", "identical")


def corpus() -> list[str]:
    return sorted(p.stem for p in PROGRAMS.glob("*.py"))


def _host(console: list[str], source: str | None = None,
          doc: dict | None = None) -> tuple[Any, VirtualClock]:
    clock, bus = VirtualClock(), LocalBus()
    hooks = {"clock": clock, "publish": bus.publish, "console": console.append}
    host = ProgramHost.restore(doc, **hooks) if doc is not None else \
        ProgramHost(source, code_name="exp", instance_id="exp.1", **hooks)
    return bus.attach(host), clock


def measure(name: str, source: str, hops: int, rng: random.Random) -> list[dict[str, Any]]:
    """The hops of one program: one row per migration (see the module docstring)."""
    plain: list[str] = []
    host, clock = _host(plain, source)
    host.start()
    clock.run()
    events = host.events_run
    points = sorted(rng.sample(range(1, events), k=min(hops, events - 1)))
    console: list[str] = []
    host, clock = _host(console, source)
    host.start()
    rows: list[dict[str, Any]] = []
    while host.alive:
        while points and host.events_run >= points[0]:
            points.pop(0)
            data = dumps(host.snapshot())
            host, clock = _host(console, doc=loads(data))
            rows.append({"hop": len(rows) + 1, "event": host.events_run,
                         "program_time": host.program_time(), "bytes": len(data),
                         "gzip_bytes": len(gzip.compress(data, 6, mtime=0))})
        if not clock.step():
            break
    identical = int("".join(console) == "".join(plain))
    for row in rows:
        row["identical"] = identical
    return rows


def trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    name = point["program"]
    rng = random.Random(f"{seed}:{name}")  # the old script's seeding: seed 1 repeats it
    source = (PROGRAMS / f"{name}.py").read_text(encoding="utf-8")
    return measure(name, source, int(point["hops"]), rng)


def figures(trials: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    mean, ci = wide(summary, KEYS), wide(summary, KEYS, "ci95")
    n = trials.groupby("program")["seed"].nunique().max() if len(trials) else 0
    y = np.arange(len(mean))
    with style():
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(mean) + 1.4), layout="constrained")
        ax.barh(y + 0.2, mean["bytes"] / 1024, 0.4, xerr=ci["bytes"] / 1024,
                label="raw JSON")
        ax.barh(y - 0.2, mean["gzip_bytes"] / 1024, 0.4, xerr=ci["gzip_bytes"] / 1024,
                label="gzip")
        ax.set_yticks(y, mean["program"])
        ax.invert_yaxis()
        ax.set(xscale="log", xlabel="snapshot size (KiB)")
        bad = mean[mean["identical"] < 1]["program"].tolist()
        ax.set_title(f"Corpus programs migrated {int(mean['hops'].max())} times each, "
                     f"{ci_note(n)}; output identical: "
                     f"{'all' if not bad else 'not ' + ', '.join(bad)}", fontsize=9)
        ax.legend(loc="lower right")
        files = save(fig, out / "fig_sizes")
    return files


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    mean = wide(summary, KEYS)
    n = summary[summary["metric"] == "bytes"].set_index("program")["n"]
    return pd.DataFrame({"program": mean["program"], "migrations": n.reindex(mean["program"])
                         .to_numpy(),
                         "snapshot (KiB)": mean["bytes"] / 1024,
                         "gzip (KiB)": mean["gzip_bytes"] / 1024,
                         "output identical": mean["identical"] == 1})


EXPERIMENT = Experiment(
    name="migration_hops",
    title="Many migrations of every corpus program: snapshot sizes, output unchanged",
    description=(
        "Each program of the corpus (`tests/programs`) runs once uninterrupted, then "
        "again with `hops` migrations at loop boundaries the seed picks (a snapshot to "
        "JSON, then a restore into a fresh host): per hop the snapshot size, raw and "
        "gzipped, and whether the whole output equals the uninterrupted run's. Seed 1 "
        "reproduces the rows of the retired `experiments/migration_hops.py --seed 1`; "
        "snapshot and restore times are E2's."),
    params={"program": corpus(), "hops": 10},
    seeds=range(1, 6),
    presets={"quick": {"program": ["closures", "counter", "factorial"], "hops": 3,
                       "seeds": range(1, 3)},
             "tiny": {"program": ["counter"], "hops": 2, "seeds": range(1, 2)}},
    keys=KEYS,
    metrics=METRICS,
    design=lambda params: grid(params, ["program"]),
    trial=trial,
    figures=figures,
    headline=headline,
)
