"""The peak input rate each RIoTBench dataflow sustains in simulation, per board mix.

    python experiments/riotbench.py --seed 1 --out results/riotbench

For each dataflow (ETL, STATS, TRAIN, PRED, TAXI data) and each board mix (four
BeagleBone Blacks; four Raspberry Pi Zeros; each with a file-system node), every program
of the dataflow placed round robin over the boards, it searches the highest input rate
the mix sustains: the rate doubles from 1 msg/s until a run is not sustainable, then a
binary search narrows it to 5%.  A run (``--duration`` seconds of input) is
**sustainable** when the source kept its rate (within 5%: it shares a board with
stages), the sink saw every stream end, the sink's end of stream came at
most ``max(1 s, 10% of the run)`` after the source's (no backlog left), and the median
latency of the last quarter of the tuples is at most twice that of the
first quarter plus 100 ms (latency does not grow over the run).  Tuples lost are
counted, not held against a rate: programs publish with QoS 0, which a fault could lose;
the Pi Zero's Wi-Fi loses 0.2% of packets (its profile), which TCP retransmits, so those
tuples arrive 0.2 s late rather than not at all.

The simulation is deterministic (fixed cost model: every program event costs 100 us of
the reference machine divided by the board's ``cpu_factor``), so the peak is a property
of the event counts, the boards and the network, and the files are the same bytes on
every run.  Writes ``sim_peak.csv`` (one row per dataflow and mix: the peak rate and, at
it, throughput, latency percentiles, jitter, drain), ``sim_trials.csv`` (every run of the
search) and ``sim_peak.png``; prints the table and its run time.

Real workers: :func:`find_peak` takes any ``trial(rate) -> bool``; the real-worker
measurement (against a raw-paho pipeline) plugs in a trial built on
:func:`thingssim.riot.run.run_real` and :func:`sustainable` (see :func:`real_trial`).

The module also declares experiment E3 (``thingssim experiment riotbench``, see
``EXPERIMENT`` at the end): each dataflow and board mix at a fixed fraction of the peak
found here, with and without a stage migrated mid-run, over several seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from thingssim.experiment import Experiment, grid  # noqa: E402
from thingssim.experiment.stats import wide  # noqa: E402
from thingssim.experiment.style import PALETTE, ci_note, legend_below, save, style  # noqa: E402
from thingssim.riot.dataflows import FLOWS, build  # noqa: E402
from thingssim.riot.run import RunResult, RunSpec, default_world, run_real, run_sim  # noqa: E402

#: board mixes: name -> (board name prefix, profile, count)
MIXES = {"beaglebone": (("bbb", "beaglebone-black", 4),),
         "pi-zero": (("zero", "raspberry-pi-zero", 4),)}


def sustainable(result: RunResult, duration: float, rate: float) -> bool:
    """Did the dataflow keep up (see the module docstring)?"""
    s = result.measurement.summary.iloc[0]
    if not s["complete"] or s["sent"] == 0:
        return False
    if rate >= 2 and not s["input_rate"] >= 0.95 * rate:  # the source itself fell behind
        return False
    if not s["drain_s"] <= max(1.0, 0.1 * duration):
        return False
    lat = result.measurement.latency.sort_values("arrival")["latency_ms"].to_numpy()
    if len(lat) >= 8:
        quarter = len(lat) // 4
        if np.median(lat[-quarter:]) > 2 * np.median(lat[:quarter]) + 100.0:
            return False
    return True


def find_peak(trial: Callable[[float], bool], start: float = 1.0, limit: float = 4096.0,
              precision: float = 0.05) -> tuple[float, list[float]]:
    """The highest rate ``trial`` sustains (``0`` if not even ``start``), and the rates
    tried: doubling from ``start``, then bisection to ``precision`` (relative)."""
    tried: list[float] = []

    def ok(rate: float) -> bool:
        tried.append(rate)
        return trial(rate)

    if not ok(start):
        return 0.0, tried
    good, bad = start, None
    while bad is None and good < limit:
        rate = min(limit, good * 2)
        if ok(rate):
            good = rate
        else:
            bad = rate
    if bad is None:
        return good, tried
    while (bad - good) / good > precision:
        rate = round((good + bad) / 2, 3)
        if ok(rate):
            good = rate
        else:
            bad = rate
    return good, tried


def sim_trial(flow: str, mix: str, seed: int, duration: float,
              rows: list[dict]) -> Callable[[float], bool]:
    """A trial in simulation: one run at ``rate`` on a fresh world of ``mix``."""
    def trial(rate: float) -> bool:
        world = default_world(seed, boards=MIXES[mix])
        spec = RunSpec(flow=flow, rate=rate, duration=duration, seed=seed,
                       run_id=f"{flow.lower()}-{mix}-{rate:g}", drain_s=duration)
        result = run_sim(spec, world)
        ok = sustainable(result, duration, rate)
        rows.append(_row(flow, mix, rate, result, ok, world))
        return ok

    return trial


def real_trial(flow: str, url: str, duration: float,
               rows: list[dict]) -> Callable[[float], bool]:
    """The same trial on the real workers of broker ``url`` (the hook for the real-worker
    peak-rate measurement; ``find_peak(real_trial(...))``)."""
    def trial(rate: float) -> bool:
        spec = RunSpec(flow=flow, rate=rate, duration=duration, drain_s=duration)
        result = run_real(spec, url)
        ok = sustainable(result, duration, rate)
        rows.append(_row(flow, "real", rate, result, ok, None))
        return ok

    return trial


def _row(flow: str, mix: str, rate: float, result: RunResult, ok: bool, world: Any) -> dict:
    s = result.measurement.summary.iloc[0]
    row = {"flow": flow, "mix": mix, "rate": rate, "sustainable": ok,
           **{k: s[k] for k in ("sent", "received", "lost", "input_rate", "throughput",
                                "latency_p50_ms",
                                "latency_p95_ms", "latency_p99_ms", "jitter", "jitter_abs",
                                "drain_s", "latency_growth", "complete")}}
    if world is not None:
        util = [b.utilisation() for b in world.boards.values()]
        row["busiest_board_cpu_pct"] = round(100 * max(util), 3)
    return row


def figure(peaks: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    mixes = list(dict.fromkeys(peaks["mix"]))
    width = 0.8 / len(mixes)
    x = np.arange(len(FLOWS))
    for k, mix in enumerate(mixes):
        sub = peaks[peaks["mix"] == mix].set_index("flow").reindex(FLOWS)
        bars = ax.bar(x + k * width, sub["peak_rate"], width, label=mix)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(x + width * (len(mixes) - 1) / 2, FLOWS)
    ax.set_ylabel("peak sustained input rate (msg/s)")
    ax.set_title("RIoTBench (TAXI) in simulation: 4 boards of each kind")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of input per trial")
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--mixes", nargs="+", default=list(MIXES), choices=list(MIXES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "riotbench")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows: list[dict] = []
    peaks = []
    pairs = [(flow, mix) for mix in args.mixes for flow in args.flows]
    for flow, mix in tqdm(pairs, desc="dataflow x mix", unit="search"):
        peak, tried = find_peak(sim_trial(flow, mix, args.seed, args.duration, rows))
        at = next((r for r in rows if r["flow"] == flow and r["mix"] == mix
                   and r["rate"] == peak), {})
        peaks.append({"flow": flow, "mix": mix, "boards": MIXES[mix][0][2],
                      "profile": MIXES[mix][0][1], "peak_rate": peak, "trials": len(tried),
                      **{k: at.get(k) for k in ("throughput", "lost", "latency_p50_ms",
                                                "latency_p95_ms", "latency_p99_ms", "jitter",
                                                "drain_s", "busiest_board_cpu_pct")}})
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(peaks)
    table.to_csv(args.out / "sim_peak.csv", index=False, float_format="%.6g",
                 lineterminator="\n")
    pd.DataFrame(rows).to_csv(args.out / "sim_trials.csv", index=False, float_format="%.6g",
                              lineterminator="\n")
    figure(table, args.out / "sim_peak.png")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"riotbench: {time.perf_counter() - started:.1f} s")
    return 0


# --------------------------------------------------- E3: thingssim experiment riotbench
#: the peak input rates (msg/s) this script found with ``--seed 1`` (results/riotbench/
#: sim_peak.csv): E3 runs each dataflow at a fraction (``load``) of its mix's peak
SIM_PEAK = {("ETL", "beaglebone"): 29.0, ("STATS", "beaglebone"): 34.0,
            ("TRAIN", "beaglebone"): 148.0, ("PRED", "beaglebone"): 116.0,
            ("ETL", "pi-zero"): 20.0, ("STATS", "pi-zero"): 24.0,
            ("TRAIN", "pi-zero"): 88.0, ("PRED", "pi-zero"): 80.0}
#: the stage each dataflow migrates mid-run: a stateful one (a join window, a regression
#: window, a training set, a model)
MIGRATED_STAGE = {"ETL": "join", "STATS": "sliding_linear_regression", "TRAIN": "dt_train",
                  "PRED": "dt_classify"}
E3_KEYS = ("flow", "mix", "load", "migrate")
E3_METRICS = ("rate", "throughput", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
              "latency_max_ms", "jitter", "lost", "drain_s", "migration_ms")


def e3_trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One run of ``point``'s dataflow on a fresh world of its mix at ``load`` x its
    peak; with ``migrate``, its stateful stage moves to the next board halfway through
    the input (round-robin placement: program k runs on board k mod n)."""
    flow, mix, duration = point["flow"], point["mix"], float(point["duration"])
    rate = round(point["load"] * SIM_PEAK[(flow, mix)], 3)
    world = default_world(seed, boards=MIXES[mix])
    actions = []
    if point["migrate"]:
        engines = sorted(world.boards)
        k = build(flow).names.index(MIGRATED_STAGE[flow])
        actions.append({"at": duration / 2, "type": "migrate", "stage": MIGRATED_STAGE[flow],
                        "to": engines[(k + 1) % len(engines)]})
    spec = RunSpec(flow=flow, rate=rate, duration=duration, seed=seed,
                   run_id=f"{flow.lower()}-{mix}-e3", drain_s=duration, actions=actions)
    result = run_sim(spec, world)
    if result.measurement.summary.empty:
        raise RuntimeError(f"{flow} on {mix}: no measurement")
    s = result.measurement.summary.iloc[0]
    row = {"rate": rate, **{k: s[k] for k in ("sent", "received", "lost", "input_rate",
                                               "throughput", "latency_p50_ms",
                                               "latency_p95_ms", "latency_p99_ms",
                                               "latency_max_ms", "jitter", "drain_s",
                                               "complete")}}
    moved = [a for a in result.actions.to_dict("records") if a.get("type") == "migrate"] \
        if len(result.actions) else []
    row["migration_ok"] = bool(moved and moved[0].get("ok")) if point["migrate"] else None
    total = moved[0].get("total_s") if moved else None
    row["migration_ms"] = total * 1e3 if total is not None else None
    return [row]


def _grouped(ax: Any, mean: pd.DataFrame, ci: pd.DataFrame, metric: str) -> None:
    """Bars per dataflow: each mix without and with the migration."""
    flows = [f for f in FLOWS if f in set(mean["flow"])]
    x = np.arange(len(flows))
    series = [(mix, moved) for mix in dict.fromkeys(mean["mix"]) for moved in (False, True)]
    width = 0.8 / len(series)
    for k, (mix, moved) in enumerate(series):
        pick = (mean["mix"] == mix) & (mean["migrate"] == moved)
        values = mean[pick].set_index("flow").reindex(flows)[metric]
        errors = ci[pick].set_index("flow").reindex(flows)[metric]
        colour = PALETTE[(k // 2) * 2 + (1 if moved else 0)]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, yerr=errors,
               color=colour, label=f"{mix}, {'stage migrated' if moved else 'no migration'}")
    ax.set_xticks(x, flows)


def e3_figures(trials: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    mean, ci = wide(summary, E3_KEYS), wide(summary, E3_KEYS, "ci95")
    n = int(summary["n"].max()) if len(summary) else 0
    loads = ", ".join(f"{v:g}" for v in sorted(set(mean["load"])))
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), layout="constrained")
        for ax, metric, label in ((axes[0], "latency_p50_ms", "median latency (ms)"),
                                  (axes[1], "latency_p95_ms", "p95 latency (ms)"),
                                  (axes[2], "latency_max_ms", "maximum latency (ms)")):
            _grouped(ax, mean, ci, metric)
            ax.set(yscale="log", ylabel=label)
        fig.suptitle(f"RIoTBench (TAXI) in simulation at {loads} x each mix's peak rate "
                     f"({ci_note(n)})", fontsize=10)
        legend_below(fig)
        files = save(fig, out / "fig_latency")
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
        ratio = mean.assign(out_per_in=mean["throughput"] / mean["rate"])
        _grouped(axes[0], ratio, ci.assign(out_per_in=np.nan), "out_per_in")
        axes[0].set_ylabel("output rate / input rate")
        _grouped(axes[1], mean, ci, "jitter")
        axes[1].set_ylabel("RIoTBench jitter (normalised)")
        fig.suptitle(f"Throughput and jitter ({ci_note(n)})", fontsize=10)
        legend_below(fig, ncol=2)
        files += save(fig, out / "fig_throughput")
    return files


def e3_headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Per dataflow and mix: the rate, then median and p95 latency and the maximum,
    without and with the migration, and the migration's duration."""
    mean = wide(summary, E3_KEYS)
    rows = []
    for (flow, mix, load), group in mean.groupby(["flow", "mix", "load"], sort=False):
        plain = group[~group["migrate"].astype(bool)]
        moved = group[group["migrate"].astype(bool)]
        if plain.empty or moved.empty:
            continue
        p, m = plain.iloc[0], moved.iloc[0]
        rows.append({"flow": flow, "mix": mix, "load": load, "rate (msg/s)": p["rate"],
                     "throughput (msg/s)": p["throughput"],
                     "p50 (ms)": p["latency_p50_ms"], "p95 (ms)": p["latency_p95_ms"],
                     "max (ms)": p["latency_max_ms"],
                     "p95 migrated (ms)": m["latency_p95_ms"],
                     "max migrated (ms)": m["latency_max_ms"],
                     "migration (ms)": m["migration_ms"]})
    return pd.DataFrame(rows)


EXPERIMENT = Experiment(
    name="riotbench",
    title="RIoTBench dataflows in simulation, with and without a stage migration",
    description=(
        "Each RIoTBench dataflow (TAXI data) on four BeagleBone Blacks and on four Pi "
        "Zeros (programs placed round robin, a file-system node), fed at `load` times the "
        "peak rate `python experiments/riotbench.py` found for that mix, for `duration` "
        "seconds: throughput, latency percentiles (source to sink), RIoTBench's jitter, "
        "tuples lost (QoS 0: none without faults; the Pi Zero's lossy Wi-Fi delays them "
        "by TCP's retransmission) and drain time; with `migrate`, "
        "the dataflow's stateful stage (ETL's join, STATS' sliding regression, TRAIN's "
        "decision-tree trainer, PRED's classifier) moves to the next board halfway "
        "through. Deterministic: the CSVs are the same bytes for the same seeds (a stage "
        "counts its CPU with `things.cpu_time()`, the cost model's charge in the "
        "simulation, so the migrated stage's snapshot has the same size on every run)."),
    params={"flow": list(FLOWS), "mix": list(MIXES), "load": [0.5], "migrate": [False, True],
            "duration": 20.0},
    seeds=range(1, 6),
    presets={"quick": {"flow": ["ETL", "PRED"], "mix": ["beaglebone"], "duration": 10.0,
                       "seeds": range(1, 4)},
             "tiny": {"flow": ["ETL"], "mix": ["beaglebone"], "duration": 5.0,
                      "seeds": range(1, 3)}},
    keys=E3_KEYS,
    metrics=E3_METRICS,
    design=lambda params: grid(params, ["flow", "mix", "load", "migrate"]),
    trial=e3_trial,
    figures=e3_figures,
    headline=e3_headline,
    deterministic=True,
)


if __name__ == "__main__":
    sys.exit(main())
