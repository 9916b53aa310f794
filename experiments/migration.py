"""E1: live-migration latency in simulation, phase by phase.

    thingssim experiment migration --out results/migration          # default: 10 seeds
    thingssim experiment migration --quick                          # about 10 s

One trial is one migration in a fresh simulated world (`thingssim.sim.World`): a source
and a target board of the point's profiles, both access links set to the point's
bandwidth and one-way latency (the profiles keep their jitter and loss: a Pi Zero's
Wi-Fi loses 0.2% of packets), the real CodeEngines and Dispatcher, and the program
started on the source; after it has run a while (plus a seeded offset of up to one
tick, so seeds also move the snapshot point), the dispatcher moves it.  The engines
measure the phases: snapshot (on the source's CPU), transfer (the snapshot over the two
links and the broker), restore (on the target's CPU), commit (the fenced hand-over), and
`total` is their sum.  CPU costs come from the simulator's fixed cost model (a snapshot
or restore costs so much per byte, divided by the board's speed), so everything is a
function of the seed: the CSVs are the same bytes on every run.  E1 keeps the default,
unfitted costs (E6, `experiments/validation.py`, fits them to the board lab and shows what
the model still misses there): read absolute CPU phases as the model's, and the network
phases as within 0.3% of shaped links (packet loss, as in TCP, delays a packet by 0.2 s
and never loses it).

The design is one factor at a time around a baseline (a BeagleBone Black moving a
program holding 128 KB of readings to a Pi Zero over 20 Mbit/s links with 2 ms latency,
close to the issue's first sim-vs-lab comparison): every program of the corpus
(``tests/programs``, migrated 40% of the way through its run), board pairs, link
bandwidths, link latencies and state sizes.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from runtime import ProgramHost, VirtualClock
from runtime.bus import LocalBus
from thingssim.experiment import Experiment, one_at_a_time
from thingssim.experiment.stats import wide
from thingssim.experiment.style import (
    PHASE_COLOURS,
    PHASES,
    ci_note,
    legend_below,
    save,
    style,
    value_ticks,
)
from thingssim.labcalibrate import TICK, buffer_program
from thingssim.sim.world import World

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "programs"
KEYS = ("program", "source", "target", "bandwidth_mbps", "latency_ms", "state_kb")
METRICS = ("snapshot_kb", *(f"{p}_ms" for p in PHASES), "total_ms")
#: the synthetic program whose state size is a parameter
BUFFER = "buffer"
# the buffer program (a live ring buffer of ``state_kb`` KB of readings) is the one the lab
# calibration measures too: ``thingssim.labcalibrate.buffer_program``

PAIRS = (("beaglebone-black", "raspberry-pi-zero"), ("raspberry-pi-zero", "beaglebone-black"),
         ("beaglebone-black", "raspberry-pi-3"), ("raspberry-pi-3", "raspberry-pi-zero"),
         ("beaglebone-black", "beaglebone-black"), ("desktop-vm", "raspberry-pi-zero"))
BASELINE = {"program": BUFFER, "pair": PAIRS[0], "bandwidth_mbps": 20.0, "latency_ms": 2.0,
            "state_kb": 128.0}

PARAMS: dict[str, Any] = {
    "program": sorted(p.stem for p in CORPUS.glob("*.py")),
    "pair": list(PAIRS),
    "bandwidth_mbps": [1.0, 5.0, 20.0, 100.0],
    "latency_ms": [0.5, 2.0, 10.0, 50.0, 100.0],
    "state_kb": [1.0, 8.0, 64.0, 128.0, 512.0, 2048.0],
    "run_s": 2.0,  # how long the buffer program runs before it moves
    "corpus_fraction": 0.4,  # how far through its run a corpus program moves
}


def design(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One factor at a time around ``BASELINE``; a pair sets source and target, and a
    corpus program has no state-size parameter (its own state, blank in the CSV)."""
    points = []
    for point in one_at_a_time(params, BASELINE, ["program", "pair", "bandwidth_mbps",
                                                  "latency_ms", "state_kb"]):
        point["source"], point["target"] = point.pop("pair")
        if point["program"] != BUFFER:
            point["state_kb"] = None
        points.append(point)
    return points


@functools.cache
def corpus_duration(name: str) -> float:
    """How long (program time) a corpus program runs alone: it moves at a fraction."""
    clock, bus = VirtualClock(), LocalBus()  # the bus delivers its own publishes back
    host = bus.attach(ProgramHost((CORPUS / f"{name}.py").read_text(encoding="utf-8"),
                                  clock=clock, code_name=name, instance_id=f"{name}.1",
                                  publish=bus.publish, console=lambda _: None))
    host.start()
    clock.run()
    return host.program_time()


def program_of(point: Mapping[str, Any]) -> tuple[str, float]:
    """The point's program source and how long it runs before the migration."""
    if point["program"] == BUFFER:
        return buffer_program(point["state_kb"]), point["run_s"]
    name = point["program"]
    return ((CORPUS / f"{name}.py").read_text(encoding="utf-8"),
            point["corpus_fraction"] * corpus_duration(name))


def trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One migration of the point's program between its boards, in a world of ``seed``."""
    world = World(seed=seed, trace=False)
    link = {"bandwidth": point["bandwidth_mbps"] * 1e6, "latency": point["latency_ms"] / 1e3}
    world.add_board("source", point["source"], **link)
    world.add_board("target", point["target"], **link)
    dispatcher = world.add_dispatcher()
    world.run(1.0)  # the engines register
    source, run_s = program_of(point)
    instance = world.wait(dispatcher.run_code("source", point["program"], source))["id"]
    offset = random.Random(f"{seed}:migrate-at").uniform(0.0, TICK)
    world.run(world.clock.now() + run_s + offset)
    result = world.wait(dispatcher.move_code("source", "target", point["program"], instance),
                        timeout=3600.0)
    m = result.get("migration") or {}
    row = {"ok": bool(m.get("ok")), "snapshot_kb": m.get("snapshot_bytes", 0) / 1024}
    row.update({f"{p}_ms": m[f"{p}_s"] * 1e3 for p in (*PHASES, "total") if m.get(f"{p}_s")
                is not None})
    return [row]


# ------------------------------------------------------------------------ figures
def _line(summary: pd.DataFrame, axis: str, stat: str = "mean") -> pd.DataFrame:
    """The points of the ``axis`` sweep (every other factor at the baseline)."""
    table = wide(summary, KEYS, stat)
    base = {"program": BUFFER, "source": PAIRS[0][0], "target": PAIRS[0][1],
            **{k: BASELINE[k] for k in ("bandwidth_mbps", "latency_ms", "state_kb")}}
    if axis == "program":
        base = {k: v for k, v in base.items() if k not in ("program", "state_kb")}
        rows = table[table["program"] != BUFFER]
    else:
        rows = table[table["program"] == BUFFER]
        drop = ("source", "target") if axis == "pair" else (axis,)
        base = {k: v for k, v in base.items() if k not in drop}
    for key, value in base.items():
        rows = rows[rows[key] == value]
    if axis in ("bandwidth_mbps", "latency_ms", "state_kb"):
        rows = rows.sort_values(axis, kind="stable")
    return rows


def _both(summary: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _line(summary, axis, "mean"), _line(summary, axis, "ci95")


def _n(summary: pd.DataFrame) -> int:
    return int(summary["n"].max()) if len(summary) else 0


def _fig_state(summary: pd.DataFrame, out: Path) -> list[Path]:
    mean, ci = _both(summary, "state_kb")
    with style():
        fig, ax = plt.subplots()
        x = mean["snapshot_kb"].to_numpy()
        for phase in PHASES:
            ax.errorbar(x, mean[f"{phase}_ms"], yerr=ci[f"{phase}_ms"], marker="o",
                        color=PHASE_COLOURS[phase], label=phase)
        ax.errorbar(x, mean["total_ms"], yerr=ci["total_ms"], marker="s", color="black",
                    label="total")
        ax.set(xscale="log", yscale="log", xlabel="snapshot size (KiB)", ylabel="time (ms)",
               title="BeagleBone Black → Pi Zero, 20 Mbit/s, 2 ms links")
        ax.legend(title=ci_note(_n(summary)), title_fontsize=7)
        return save(fig, out / "fig_state_size")


def _fig_link(summary: pd.DataFrame, out: Path) -> list[Path]:
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
        for ax, axis, label in ((axes[0], "bandwidth_mbps", "link bandwidth (Mbit/s)"),
                                (axes[1], "latency_ms", "one-way link latency (ms)")):
            mean, ci = _both(summary, axis)
            x = mean[axis].to_numpy()
            for metric, colour, name in (("transfer_ms", PHASE_COLOURS["transfer"],
                                          "transfer"), ("total_ms", "black", "total")):
                ax.errorbar(x, mean[metric], yerr=ci[metric], marker="o", color=colour,
                            label=name)
            ax.set(xscale="log", yscale="log", xlabel=label)
            value_ticks(ax, x)
        axes[0].set_ylabel("time (ms)")
        axes[0].legend(title=ci_note(_n(summary)), title_fontsize=7)
        fig.suptitle("128 KB of state, BeagleBone Black → Pi Zero", fontsize=10)
        return save(fig, out / "fig_link")


def _stacked(summary: pd.DataFrame, axis: str, labels: list[str], stem: Path,
             title: str) -> list[Path]:
    mean, ci = _both(summary, axis)
    order = np.argsort(mean["total_ms"].to_numpy(), kind="stable")
    mean, ci = mean.iloc[order], ci.iloc[order]
    labels = [labels[i] for i in order]
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.28 * len(labels)), layout="constrained")
        y = np.arange(len(labels))
        left = np.zeros(len(labels))
        for phase in PHASES:
            values = mean[f"{phase}_ms"].to_numpy()
            ax.barh(y, values, left=left, color=PHASE_COLOURS[phase], label=phase)
            left += values
        ax.errorbar(mean["total_ms"], y, xerr=ci["total_ms"], fmt="none", color="black")
        ax.set_yticks(y, labels)
        ax.set(xlabel=f"migration time (ms), phases stacked; total's {ci_note(_n(summary))}",
               title=title)
        legend_below(fig)
        return save(fig, stem)


def figures(trials: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    """State size, link bandwidth and latency, board pairs, corpus programs."""
    pairs = _line(summary, "pair")
    programs = _line(summary, "program")
    return [*_fig_state(summary, out), *_fig_link(summary, out),
            *_stacked(summary, "pair", [f"{s} → {t}" for s, t in
                                        zip(pairs["source"], pairs["target"])],
                      out / "fig_board_pairs", "128 KB of state, 20 Mbit/s, 2 ms links"),
            *_stacked(summary, "program", list(programs["program"]), out / "fig_programs",
                      "Corpus programs, BeagleBone Black → Pi Zero")]


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The state-size sweep (it includes the baseline, 128 KB), phase means and the
    total's 95% CI."""
    mean, ci = _both(summary, "state_kb")  # sorted by state size
    table = pd.DataFrame({"state (KB)": mean["state_kb"],
                          "snapshot (KiB)": mean["snapshot_kb"]})
    for phase in PHASES:
        table[f"{phase} (ms)"] = mean[f"{phase}_ms"]
    table["total (ms)"] = mean["total_ms"]
    table["± 95% CI"] = ci["total_ms"]
    return table.reset_index(drop=True)


EXPERIMENT = Experiment(
    name="migration",
    title="Migration latency in simulation, by phase",
    description="\n\n".join(__doc__.split("\n\n")[2:4]),
    params=PARAMS,
    seeds=range(1, 11),
    presets={
        "quick": {"program": ["counter", "closures", "navier_stokes"],
                  "pair": list(PAIRS[:3]), "bandwidth_mbps": [5.0, 20.0, 100.0],
                  "latency_ms": [2.0, 50.0], "state_kb": [8.0, 128.0, 1024.0],
                  "seeds": range(1, 4)},
        "tiny": {"program": ["counter"], "pair": list(PAIRS[:2]),
                 "bandwidth_mbps": [20.0], "latency_ms": [2.0, 50.0],
                 "state_kb": [8.0, 128.0, 512.0], "seeds": range(1, 4)},
    },
    keys=KEYS,
    metrics=METRICS,
    design=design,
    trial=trial,
    figures=figures,
    headline=headline,
    deterministic=True,
)
