"""E2: the ThingsMigrate table: what migratability costs, program by program.

    thingssim experiment thingsmigrate --out results/thingsmigrate   # 10 replications
    thingssim experiment thingsmigrate --quick

For each program of the corpus (``tests/programs``), one replication measures: the
whole run under the program host against a bare heap loop running the same source
(run-time overhead, and the time inside the program's callbacks on both sides); the
tracemalloc peak of one run on each side (memory overhead); the snapshot of the program
halfway through its events (size raw and gzipped, time to take it) and its restore (cold:
the program never compiled in this process; warm: compiled before); and cloudpickle on
the same state (globals, timers, subscriptions, queue), measured in the same replication.
Times are medians of ``rounds`` repetitions inside a replication, taken with the garbage
collector off (as ``timeit`` does), the host and plain sides
(and thingssim and cloudpickle) alternating in an order the seed shuffles, so that drift
of this shared machine's speed hits both sides alike.  The workloads are those of
``tests/benchmarks`` (``workloads.py``), so these numbers are comparable with the
pytest-benchmark ones (``results/benchmarks.json``; this experiment replaced the ratio
table ``experiments/report_benchmarks.py`` made from them).

These are measurements: the CSVs differ on every run (sizes excepted), and parallel
backends (``--jobs``, ``--dask``) would make the two sides compete for the CPU: run it
serially.  Beside them, the published ThingsMigrate figures (JavaScript source
instrumentation, on its own benchmarks and machine): 33% run-time and 78% memory
overhead on average, and the snapshot sizes it reported for five of the programs.
"""

from __future__ import annotations

import gc
import gzip
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

from workloads import (  # noqa: E402
    cloudpickle_dumps,
    cloudpickle_loads,
    corpus_names,
    host_at_midpoint,
    run_host_timed,
    run_plain_timed,
    source_of,
)

from runtime import ProgramHost, VirtualClock  # noqa: E402
from runtime.program import compile_program  # noqa: E402
from runtime.snapshot import dumps, loads  # noqa: E402
from thingssim.experiment import Experiment, grid  # noqa: E402
from thingssim.experiment.stats import ci95, ci_summary, wide  # noqa: E402
from thingssim.experiment.style import (  # noqa: E402
    PALETTE,
    ci_note,
    legend_below,
    save,
    style,
)

#: ThingsMigrate's published figures, with their source (../shared/reference/anchors.md):
#: Gascon-Samson et al., "ThingsMigrate: Platform-Independent Migration of Stateful
#: JavaScript IoT Applications", ECOOP 2018, and Software: Practice & Experience 51(1), 2021
PUBLISHED_SOURCE = "ThingsMigrate, ECOOP 2018 / SPE 51(1) 2021"
PUBLISHED_MEAN = {"run_overhead_pct": 33.0, "memory_overhead_pct": 78.0}
#: snapshot sizes of the original (JSON), KB as published
PUBLISHED_SNAPSHOT_KB = {"factorial": 74.0, "splay": 18.0, "richards": 20.0,
                         "raytrace": 81.0, "navier_stokes": 2200.0}
ALL = "all programs (mean)"

KEYS = ("program",)
METRICS = ("run_host_ms", "run_plain_ms", "run_overhead_pct", "callbacks_host_ms",
           "callbacks_plain_ms", "callback_overhead_pct", "peak_host_kb", "peak_plain_kb",
           "memory_overhead_pct", "snapshot_kb", "snapshot_gz_kb", "cloudpickle_kb",
           "cloudpickle_gz_kb", "snapshot_ms", "cloudpickle_snapshot_ms", "restore_cold_ms",
           "restore_warm_ms", "cloudpickle_restore_ms")
#: the overall mean's metrics: overheads are averaged over programs, like ThingsMigrate's
MEAN_METRICS = ("run_overhead_pct", "callback_overhead_pct", "memory_overhead_pct")


def _peak(fn: Callable[[str], Any], source: str) -> int:
    tracemalloc.start()
    try:
        fn(source)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds ``fn`` takes, and its result, with the cyclic garbage collector off
    (as ``timeit`` does): a full collection scans this whole process's heap (pandas,
    matplotlib...) and lands on whichever side happens to allocate past the threshold,
    which made one side of a pair 4x slower at random."""
    gc.disable()
    try:
        started = time.perf_counter()
        result = fn()
        return (time.perf_counter() - started) * 1e3, result
    finally:
        gc.enable()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One replication for one program (see the module docstring)."""
    rng = random.Random(f"{seed}:{point['program']}")
    source = source_of(point["program"])
    rounds = int(point["rounds"])
    sides = {"host": run_host_timed, "plain": run_plain_timed}
    outputs = {side: fn(source)[0] for side, fn in sides.items()}  # warm-up, and a check
    if outputs["host"] != outputs["plain"]:
        raise AssertionError(f"{point['program']}: host and plain outputs differ")
    run: dict[str, list[float]] = {"host": [], "plain": []}
    callbacks: dict[str, list[float]] = {"host": [], "plain": []}
    for _ in range(rounds):
        for side in rng.sample(sorted(sides), 2):
            ms, (_, inside) = _timed(lambda side=side: sides[side](source))
            run[side].append(ms)
            callbacks[side].append(inside * 1e3)
    peak = {side: _peak(fn, source) / 1024 for side, fn in sides.items()}

    host = host_at_midpoint(source)
    data = dumps(host.snapshot())
    pickled = cloudpickle_dumps(host)
    snap: dict[str, list[float]] = {"thingssim": [], "cloudpickle": []}
    restore: dict[str, list[float]] = {"cold": [], "warm": [], "cloudpickle": []}

    def restore_thingssim(cold: bool) -> float:
        if cold:
            compile_program.cache_clear()
        return _timed(lambda: ProgramHost.restore(loads(data), clock=VirtualClock()))[0]

    for _ in range(rounds):
        for side in rng.sample(sorted(snap), 2):
            snap[side].append(_timed((lambda: dumps(host.snapshot())) if side == "thingssim"
                                     else (lambda: cloudpickle_dumps(host)))[0])
    # restores last: a cold restore clears the compile cache, after which this process
    # can no longer snapshot ``host`` (its functions' code is no longer the cached one)
    for _ in range(rounds):
        for kind in rng.sample(sorted(restore), 3):
            restore[kind].append(
                _timed(lambda: cloudpickle_loads(pickled, host))[0] if kind == "cloudpickle"
                else restore_thingssim(kind == "cold"))
    row = {
        "run_host_ms": _median(run["host"]), "run_plain_ms": _median(run["plain"]),
        "callbacks_host_ms": _median(callbacks["host"]),
        "callbacks_plain_ms": _median(callbacks["plain"]),
        "peak_host_kb": peak["host"], "peak_plain_kb": peak["plain"],
        "snapshot_kb": len(data) / 1024,
        "snapshot_gz_kb": len(gzip.compress(data, 6, mtime=0)) / 1024,
        "cloudpickle_kb": len(pickled) / 1024,
        "cloudpickle_gz_kb": len(gzip.compress(pickled, 6, mtime=0)) / 1024,
        "snapshot_ms": _median(snap["thingssim"]),
        "cloudpickle_snapshot_ms": _median(snap["cloudpickle"]),
        "restore_cold_ms": _median(restore["cold"]), "restore_warm_ms": _median(restore["warm"]),
        "cloudpickle_restore_ms": _median(restore["cloudpickle"]),
    }
    row["run_overhead_pct"] = (row["run_host_ms"] / row["run_plain_ms"] - 1) * 100
    row["callback_overhead_pct"] = (row["callbacks_host_ms"] / row["callbacks_plain_ms"]
                                    - 1) * 100
    row["memory_overhead_pct"] = (row["peak_host_kb"] / row["peak_plain_kb"] - 1) * 100
    return [row]


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Per program, plus the mean over programs of each overhead (per seed, then a CI over
    seeds), each beside the published ThingsMigrate figure where there is one."""
    summary = ci_summary(trials, KEYS, METRICS)
    per_seed = trials.groupby("seed", sort=True)[list(MEAN_METRICS)].mean()
    rows = []
    for metric in MEAN_METRICS:
        n, mean, std, half = ci95(per_seed[metric].to_numpy())
        rows.append({"program": ALL, "metric": metric, "n": n, "mean": mean, "std": std,
                     "ci95": half})
    summary = pd.concat([summary, pd.DataFrame(rows)], ignore_index=True)
    published = [PUBLISHED_MEAN.get(m) if p == ALL else
                 (PUBLISHED_SNAPSHOT_KB.get(p) if m == "snapshot_kb" else None)
                 for p, m in zip(summary["program"], summary["metric"])]
    summary["thingsmigrate"] = published
    summary["thingsmigrate_source"] = [PUBLISHED_SOURCE if v is not None else None
                                       for v in published]
    return summary


# ------------------------------------------------------------------------ figures
def _tables(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    per = summary[summary["program"] != ALL]
    mean, ci = wide(per, KEYS), wide(per, KEYS, "ci95")
    return mean, ci, int(per["n"].max()) if len(per) else 0


#: one colour per side, in every panel
COLOURS = {"thingssim": PALETTE[0], "thingssim, cold": PALETTE[0],
           "thingssim, warm": PALETTE[5], "cloudpickle": PALETTE[1]}


def _bars(ax: Any, labels: list[str], series: list[tuple[str, Any, Any]]) -> None:
    """Grouped horizontal bars, programs top to bottom in the table's order (the axes
    share y: the caller inverts it once)."""
    y = np.arange(len(labels))
    height = 0.8 / len(series)
    for k, (name, values, err) in enumerate(series):
        ax.barh(y + (k - (len(series) - 1) / 2) * height, values, height, xerr=err,
                label=name, color=COLOURS[name])
    ax.set_yticks(y, labels)


def figures(trials: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    mean, ci, n = _tables(summary)
    labels = list(mean["program"])
    files = []
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(8, 1.6 + 0.26 * len(labels)), sharey=True,
                                 layout="constrained")
        for ax, metric, label in ((axes[0], "run_overhead_pct", "run-time overhead (%)"),
                                  (axes[1], "memory_overhead_pct", "memory overhead (%)")):
            _bars(ax, labels, [("thingssim", mean[metric], ci[metric])])
            ax.axvline(PUBLISHED_MEAN[metric], color="black", linestyle="--",
                       label="ThingsMigrate (published mean)")
            ax.set_xlabel(label)
        axes[0].invert_yaxis()
        axes[0].set_title("host vs plain loop, whole run", fontsize=9)
        axes[1].set_title("tracemalloc peak", fontsize=9)
        fig.suptitle(f"Cost of migratability ({ci_note(n)})", fontsize=10)
        legend_below(fig, ncol=2)
        files += save(fig, out / "fig_overhead")

        fig, axes = plt.subplots(1, 3, figsize=(10, 1.6 + 0.26 * len(labels)), sharey=True,
                                 layout="constrained")
        _bars(axes[0], labels, [("thingssim", mean["snapshot_kb"], None),
                                ("cloudpickle", mean["cloudpickle_kb"], None)])
        published = [PUBLISHED_SNAPSHOT_KB.get(p, np.nan) for p in labels]
        axes[0].scatter(published, np.arange(len(labels)), marker="D", color="black",
                        zorder=3, label="ThingsMigrate (published)")
        axes[0].set(xscale="log", xlabel="snapshot size (KiB, raw)")
        _bars(axes[1], labels, [("thingssim", mean["snapshot_ms"], ci["snapshot_ms"]),
                                ("cloudpickle", mean["cloudpickle_snapshot_ms"],
                                 ci["cloudpickle_snapshot_ms"])])
        axes[1].set(xscale="log", xlabel="snapshot time (ms)")
        _bars(axes[2], labels, [("thingssim, cold", mean["restore_cold_ms"],
                                 ci["restore_cold_ms"]),
                                ("thingssim, warm", mean["restore_warm_ms"],
                                 ci["restore_warm_ms"]),
                                ("cloudpickle", mean["cloudpickle_restore_ms"],
                                 ci["cloudpickle_restore_ms"])])
        axes[2].set(xscale="log", xlabel="restore time (ms)")
        axes[0].invert_yaxis()
        legend_below(fig, ncol=5)
        fig.suptitle(f"Snapshots halfway through each program ({ci_note(n)})", fontsize=10)
        files += save(fig, out / "fig_snapshots")
    return files


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Per program: overheads, snapshot size and times against cloudpickle; then the mean
    over programs beside ThingsMigrate's published means."""
    mean, ci, _ = _tables(summary)
    table = pd.DataFrame({
        "program": mean["program"],
        "run overhead (%)": mean["run_overhead_pct"],
        "memory overhead (%)": mean["memory_overhead_pct"],
        "snapshot (KiB)": mean["snapshot_kb"],
        "ThingsMigrate snapshot (KB)": [PUBLISHED_SNAPSHOT_KB.get(p) for p in mean["program"]],
        "size / cloudpickle": mean["snapshot_kb"] / mean["cloudpickle_kb"],
        "snapshot (ms)": mean["snapshot_ms"],
        "snapshot / cloudpickle": mean["snapshot_ms"] / mean["cloudpickle_snapshot_ms"],
        "restore warm (ms)": mean["restore_warm_ms"],
        "restore cold (ms)": mean["restore_cold_ms"],
        "restore warm / cloudpickle": mean["restore_warm_ms"] / mean["cloudpickle_restore_ms"],
    })
    overall = summary[summary["program"] == ALL].set_index("metric")
    table.loc[len(table)] = {
        "program": ALL,
        "run overhead (%)": overall.loc["run_overhead_pct", "mean"],
        "memory overhead (%)": overall.loc["memory_overhead_pct", "mean"]}
    table.loc[len(table)] = {
        "program": "ThingsMigrate (published mean)",
        "run overhead (%)": PUBLISHED_MEAN["run_overhead_pct"],
        "memory overhead (%)": PUBLISHED_MEAN["memory_overhead_pct"]}
    return table


EXPERIMENT = Experiment(
    name="thingsmigrate",
    title="The ThingsMigrate table: run-time and memory overhead, snapshots",
    description="\n\n".join(__doc__.split("\n\n")[2:4]),
    params={"program": corpus_names(), "rounds": 5},
    seeds=range(1, 11),
    presets={"quick": {"program": ["counter", "factorial", "navier_stokes", "splay"],
                       "rounds": 3, "seeds": range(1, 4)},
             "tiny": {"program": ["counter", "factorial"], "rounds": 2,
                      "seeds": range(1, 4)}},
    keys=KEYS,
    metrics=METRICS,
    design=lambda params: grid(params, ["program"]),
    trial=trial,
    summarise=summarise,
    figures=figures,
    headline=headline,
    deterministic=False,
)
