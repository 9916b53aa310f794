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
counted, not held against a rate: programs publish with QoS 0, and the Pi Zero's Wi-Fi
link loses 0.2% of packets (its profile), whatever the rate.

The simulation is deterministic (fixed cost model: every program event costs 100 us of
the reference machine divided by the board's ``cpu_factor``), so the peak is a property
of the event counts, the boards and the network, and the files are the same bytes on
every run.  Writes ``sim_peak.csv`` (one row per dataflow and mix: the peak rate and, at
it, throughput, latency percentiles, jitter, drain), ``sim_trials.csv`` (every run of the
search) and ``sim_peak.png``; prints the table and its run time.

Real workers: :func:`find_peak` takes any ``trial(rate) -> bool``; the real-worker
measurement (against a raw-paho pipeline) plugs in a trial built on
:func:`thingssim.riot.run.run_real` and :func:`sustainable` (see :func:`real_trial`).
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

from thingssim.riot.dataflows import FLOWS  # noqa: E402
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


if __name__ == "__main__":
    sys.exit(main())
