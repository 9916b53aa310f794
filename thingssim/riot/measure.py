"""What a RIoTBench run measured, as pandas DataFrames (and CSV files).

A :class:`Collector` listens, on the runner's own connection, to what the programs
report (:mod:`thingssim.riot.programs`): the sink's per-tuple rows, each task's
cumulative counters, the engines' per-program resource reports, and with ``record`` every
tuple of every stage.  :class:`Measurement` turns that into tables.  Definitions:

- **End-to-end latency** of a tuple: the sink's ``things.time()`` at arrival minus the
  source's ``things.time()`` when it sent the tuple's source message (``_ts``; for a
  window, the message that closed it).  Percentiles p50/p95/p99 over every tuple that
  reached the sink.  On real boards the two clocks are different machines' wall clocks
  (on one machine, the same clock); in a simulation, the world's time.
- **Throughput**: tuples at the sink per second, between the first and the last arrival;
  **input rate**: messages the source sent per second, likewise.
- **Jitter** (RIoTBench, Shukla et al. 2017, section "metrics": the deviation of the
  observed output rate from the expected one, the input rate times the dataflow's
  selectivity): the run is cut into intervals of ``interval`` seconds (1 s); in interval
  ``i`` the source sent ``Omega_i`` messages and the sink got ``omega_i`` tuples; with
  ``sigma`` the run's selectivity (tuples at the sink / messages sent),
  ``J_i = (omega_i - sigma * Omega_i) / (sigma * Omega_i)``.  ``jitter`` is the mean of
  ``J_i`` (RIoTBench's signed form: negative when the output falls behind), and
  ``jitter_abs`` the mean of ``|J_i|`` (which does not let a slow interval cancel a
  burst).  Intervals where the source sent nothing are left out; the sink's intervals
  are shifted by the median latency so a steady pipeline scores 0.  The intervals are
  those between the source's reports (every ``report_s``, 1 s); a last one shorter than
  half of that is left out.
- **Per task**: tuples in and out, selectivity (out / in), input and output rates (per
  second of the task's active time: first to last report with traffic); **processing
  time** per input tuple = the program's CPU seconds (the engines' resource reports:
  ``/proc`` on a board, the cost model in a simulation) / tuples in; **task time** per
  input tuple = the CPU of the stage program's own callbacks (``things.cpu_time()``,
  across migrations: measured on a board, without the runtime's share that /proc sees;
  in a simulation the cost model's charge, so about the processing time);
  **input delay** (queueing) = mean and maximum of the time from the upstream's publish
  to the start of handling (network + broker + waiting in the board's queue); **CPU**
  mean percent of one core and **memory** peak resident MB, from the resource reports.
- **Drain**: from the source's end of stream to the sink's (``drain_s``): how far behind
  the dataflow was when the input stopped; **latency growth**: the median latency of the
  last quarter of the tuples at the sink over that of the first quarter.
- **Loss, duplicates, reordering**: ``lost`` counts, on every hop, the tuples a stage
  published that the next one never handled (its inputs' final ``out`` counters minus
  its ``in``: per task ``lost_in``, and ``extra_in`` for the opposite); the sink's
  sequence numbers per input stream (``streams``) say which ones on the last hop, and
  give ``duplicates`` and ``reordered`` (a tuple numbered below one already seen is
  reordered if it was missing, else a duplicate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from runtime.transport import Message

__all__ = ["Collector", "Measurement", "jitter"]


@dataclass
class Collector:
    """Everything a run's programs report, gathered on one connection."""

    run: str
    stages: list[str]
    record: bool = False
    ready: set[str] = field(default_factory=set)
    sink_rows: list[list] = field(default_factory=list)
    sink_streams: list[dict] = field(default_factory=list)
    sink_done: bool = False
    stats: list[dict] = field(default_factory=list)
    resources: list[tuple[str, float, Any, Any]] = field(default_factory=list)
    records: dict[str, list[dict]] = field(default_factory=dict)
    instances: set[str] = field(default_factory=set)  # the run's instance ids
    last_report: float | None = None  # when the sink last reported (collector's clock)
    done_at: float | None = None  # the sink's things.time() when its last stream ended

    def attach(self, transport: Any, now: Callable[[], float]) -> None:
        """Subscribe on ``transport`` (a dispatcher's, or any client's)."""
        self._now = now
        base = f"riot/{self.run}"
        transport.subscribe(f"{base}/ready", self._on_ready, qos=1)
        transport.subscribe(f"{base}/report", self._on_report, qos=1)
        transport.subscribe(f"{base}/stats/+", self._on_stats, qos=0)
        transport.subscribe("+/+/resource", self._on_resource, qos=0)
        if self.record:
            transport.subscribe(f"{base}/+", self._on_tuple, qos=0)

    def _on_ready(self, message: Message) -> None:
        self.ready.add(json.loads(message.payload)["stage"])

    def _on_report(self, message: Message) -> None:
        report = json.loads(message.payload)
        self.ready.add("sink")  # its ready message may have been lost (QoS 0)
        self.sink_rows.extend(report["rows"])
        self.sink_streams = report["streams"]
        if report["done"] and not self.sink_done:
            self.sink_done = True
            self.done_at = float(report["t"])
        self.last_report = self._now()

    def _on_stats(self, message: Message) -> None:
        stats = json.loads(message.payload)
        self.ready.add(stats["stage"])  # reports start once the program is ready
        self.stats.append(stats)

    def _on_resource(self, message: Message) -> None:
        iid = message.topic.split("/")[1]
        if iid not in self.instances:
            return
        body = json.loads(message.payload)
        self.resources.append((iid, float(body.get("timestamp") or 0.0), body.get("cpu"),
                               (body.get("memory") or {}).get("rss")))

    def _on_tuple(self, message: Message) -> None:
        stage = message.topic.rsplit("/", 1)[1]
        if stage in self.stages or stage == "source":
            item = json.loads(message.payload)
            if not item.get("_eos"):  # the end of the stream is no output
                self.records.setdefault(stage, []).append(item)

    def ended(self) -> set[str]:
        """The stages whose end-of-stream counters came."""
        return {s["stage"] for s in self.stats if s.get("eos")}

    def received(self) -> int:
        return len(self.sink_rows)

    def sent(self) -> int:
        """Messages the source has reported sending so far."""
        counts = [s["out"] for s in self.stats if s["stage"] == "source"]
        return max(counts) if counts else 0


def jitter(edges: np.ndarray, sent: np.ndarray, arrivals: np.ndarray,
           shift: float = 0.0) -> tuple[float, float]:
    """RIoTBench's jitter (see the module docstring): ``(mean J_i, mean |J_i|)``.

    ``edges``: the times the source reported its cumulative count ``sent`` (so interval
    ``i`` is ``edges[i-1] .. edges[i]``, ``Omega_i = sent[i] - sent[i-1]``);
    ``arrivals``: the sink's arrival times, compared shifted back by ``shift``.
    """
    edges, sent = np.asarray(edges, float), np.asarray(sent, float)
    if len(edges) < 2 or len(arrivals) == 0 or sent[-1] <= 0:
        return float("nan"), float("nan")
    sigma = len(arrivals) / sent[-1]
    omega_in = np.diff(sent)
    omega_out, _ = np.histogram(np.asarray(arrivals, float) - shift, edges)
    widths = np.diff(edges)
    keep = (omega_in > 0) & (widths >= 0.5 * np.median(widths))  # not a last sliver
    if not keep.any() or sigma == 0:
        return float("nan"), float("nan")
    expected = sigma * omega_in[keep]
    j = (omega_out[keep] - expected) / expected
    return float(np.mean(j)), float(np.mean(np.abs(j)))


@dataclass
class Measurement:
    """A run's results: build with :meth:`from_collector`, then read the frames."""

    meta: dict[str, Any]
    latency: pd.DataFrame  # one row per tuple at the sink
    tasks: pd.DataFrame  # one row per program
    summary: pd.DataFrame  # one row: the dataflow
    streams: pd.DataFrame  # one row per sink input stream: loss, duplicates, reordering
    records: dict[str, pd.DataFrame] = field(default_factory=dict)

    @classmethod
    def from_collector(cls, c: Collector, meta: dict[str, Any]) -> Measurement:
        """``meta``: flow, dataset, mode, rate, duration, ``programs`` (name -> {engine,
        instance_id}), ``inputs`` (sink stream names in order), ``resource_period``."""
        streams_in = meta["sink_inputs"]
        lat = pd.DataFrame(c.sink_rows, columns=["stream", "seq", "id", "n_ids", "ts",
                                                 "arrival"])
        lat["stream"] = [streams_in[i] for i in lat["stream"]]
        lat["latency_ms"] = (lat["arrival"] - lat["ts"]) * 1e3
        stream_rows = []
        for i, info in enumerate(c.sink_streams):
            stream_rows.append({"stream": streams_in[i], "received": info["received"],
                                "sent": info["ended"], "lost": info["missing"],
                                "duplicates": info["duplicates"],
                                "reordered": info["reordered"]})
        streams = pd.DataFrame(stream_rows, columns=["stream", "received", "sent", "lost",
                                                     "duplicates", "reordered"])
        tasks = _task_frame(c, meta)
        source = tasks[tasks["stage"] == "source"]
        sent = int(source["out"].iloc[0]) if len(source) else 0
        summary = _summary(c, meta, lat, streams, tasks, sent)
        records = {stage: pd.DataFrame(rows) for stage, rows in c.records.items()}
        return cls(meta, lat, tasks, summary, streams, records)

    def save(self, out: str | Path) -> list[Path]:
        """``summary.csv``, ``tasks.csv``, ``latency.csv``, ``streams.csv``, and with
        records ``tasks/<stage>.csv`` (one row per output tuple, its input ids and every
        output field)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("summary", "tasks", "latency", "streams"):
            path = out / f"{name}.csv"
            getattr(self, name).to_csv(path, index=False, float_format="%.6g",
                                       lineterminator="\n")
            written.append(path)
        if self.records:
            (out / "tasks").mkdir(exist_ok=True)
            for stage, frame in self.records.items():
                path = out / "tasks" / f"{stage}.csv"
                _record_frame(frame).to_csv(path, index=False, lineterminator="\n")
                written.append(path)
        return written


def _record_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Input ids first (``;``-joined), then every output field; the envelope's timing
    fields (which differ from run to run) last."""
    ids = frame["_ids"] if "_ids" in frame else [None] * len(frame)
    out = pd.DataFrame({"ids": [";".join(str(int(i)) for i in v) if isinstance(v, list)
                                else "" for v in ids]})
    fields = [c for c in frame.columns if not c.startswith("_")]
    timing = [c for c in ("_id", "_seq", "_ts", "_sent") if c in frame.columns]
    for c in fields + timing:
        out[c] = frame[c].to_numpy()
    return out


def _task_frame(c: Collector, meta: dict[str, Any]) -> pd.DataFrame:
    """One row per program: the last cumulative counters, rates and resources."""
    period = float(meta.get("resource_period") or 1.0)
    by_iid = {info["instance_id"]: name for name, info in meta["programs"].items()}
    cpu: dict[str, list[tuple[float, Any, Any]]] = {}
    for iid, t, pct, rss in c.resources:
        if iid in by_iid:
            cpu.setdefault(by_iid[iid], []).append((t, pct, rss))
    last: dict[str, dict] = {}
    history: dict[str, list[tuple[float, int, int]]] = {}
    for s in sorted(c.stats, key=lambda s: s["t"]):
        name = s["stage"]
        if name not in last or (s["in"], s["out"]) >= (last[name]["in"], last[name]["out"]):
            last[name] = s
            history.setdefault(name, []).append((s["t"], s["in"], s["out"]))
    if c.sink_rows:  # the sink counts what it got
        last["sink"] = {"in": len(c.sink_rows), "out": 0, "eos": c.sink_done}
    rows = []
    for name, info in meta["programs"].items():
        s = last.get(name, {})
        n_in, n_out = s.get("in", 0), s.get("out", 0)
        reports = sorted(cpu.get(name, []), key=lambda r: r[0])
        cpu_s, pcts, rss = 0.0, [], []
        prev_t = None
        for t, pct, mem in reports:
            dt = period if prev_t is None else max(0.0, t - prev_t)
            prev_t = t
            if isinstance(pct, (int, float)):
                cpu_s += pct / 100.0 * dt
                pcts.append(pct)
            if isinstance(mem, (int, float)):
                rss.append(mem)
        in_rate, out_rate = _rates(history.get(name, []))
        rows.append({
            "stage": name, "engine": info.get("engine"), "instance_id": info["instance_id"],
            "in": n_in, "out": n_out,
            "selectivity": n_out / n_in if n_in else float("nan"),
            "in_rate": in_rate, "out_rate": out_rate,
            "processing_ms": 1e3 * cpu_s / n_in if n_in else float("nan"),
            "task_ms": 1e3 * s.get("cpu", 0.0) / n_in if n_in else float("nan"),
            "delay_ms": 1e3 * s.get("delay_sum", 0.0) / n_in if n_in else float("nan"),
            "delay_max_ms": 1e3 * s.get("delay_max", 0.0),
            "cpu_pct": float(np.mean(pcts)) if pcts else float("nan"),
            "rss_mb": max(rss) / 1e6 if rss else float("nan"),
            "eos": bool(s.get("eos", False)),
            **{k: s[k] for k in ("errors", "skipped", "misses", "models", "stored", "plots")
               if s.get(k)}})
    frame = pd.DataFrame(rows)
    # tuples lost (or doubled) on the way in: what the inputs published minus what came
    out = dict(zip(frame["stage"], frame["out"]))
    inputs = meta.get("inputs", {})
    expected = [sum(out.get(i, 0) for i in inputs[n]) if n in inputs else float("nan")
                for n in frame["stage"]]
    frame["lost_in"] = [max(0, e - i) if e == e else 0 for e, i in zip(expected, frame["in"])]
    frame["extra_in"] = [max(0, i - e) if e == e else 0 for e, i in zip(expected, frame["in"])]
    return frame


def _rates(history: list[tuple[float, int, int]]) -> tuple[float, float]:
    """Tuples in and out per second while the task was busy: the slope of its cumulative
    counters between the first and the last report at which they had moved."""
    moved = [h for i, h in enumerate(history) if i == 0 or h[1:] != history[i - 1][1:]]
    moved = [h for h in moved if h[1] or h[2]]
    if len(moved) < 2 or moved[-1][0] <= moved[0][0]:
        return float("nan"), float("nan")
    span = moved[-1][0] - moved[0][0]
    return (moved[-1][1] - moved[0][1]) / span, (moved[-1][2] - moved[0][2]) / span


def _growth(lat: pd.DataFrame) -> float:
    """Median latency of the last quarter of the tuples (by arrival) over that of the
    first quarter: about 1 while the dataflow keeps up, growing with a backlog."""
    if len(lat) < 8:
        return float("nan")
    values = lat.sort_values("arrival")["latency_ms"].to_numpy()
    quarter = len(values) // 4
    first = float(np.median(values[:quarter]))
    return float(np.median(values[-quarter:])) / first if first > 0 else float("nan")


def _summary(c: Collector, meta: dict[str, Any], lat: pd.DataFrame, streams: pd.DataFrame,
             tasks: pd.DataFrame, sent: int) -> pd.DataFrame:
    source = sorted((s["t"], s["out"]) for s in c.stats if s["stage"] == "source")
    ended = [s["t"] for s in c.stats if s["stage"] == "source" and s.get("eos")]
    # the source keeps reporting after its end (repeating it): the rate and the jitter
    # count up to its end only
    if ended:
        source = [(t, out) for t, out in source if t <= min(ended)]
    active = [(t, out) for t, out in source if out]
    arrivals = lat["arrival"].to_numpy()
    n = len(lat)
    span_out = float(arrivals.max() - arrivals.min()) if n > 1 else float("nan")
    span_in = active[-1][0] - active[0][0] if len(active) > 1 else float("nan")
    latency = lat["latency_ms"].to_numpy()
    pct = np.percentile(latency, [50, 95, 99]) if n else [float("nan")] * 3
    shift = float(np.median(latency) / 1e3) if n else 0.0
    j, j_abs = jitter(np.array([t for t, _ in source]), np.array([o for _, o in source]),
                      arrivals, shift)
    # on every hop: published by a stage, never handled by the next (QoS 0 on a lossy
    # link, or a program that died); the sink's sequence numbers tell the last hop's
    lost = int(tasks["lost_in"].sum()) if "lost_in" in tasks else 0
    # the sink's own count (its rows travel in reports a lossy link may lose)
    received = int(streams["received"].sum()) if len(streams) else n
    row = {
        "flow": meta["flow"], "dataset": meta["dataset"], "mode": meta["mode"],
        "rate": meta.get("rate"), "duration_s": meta.get("duration"),
        "sent": sent, "received": received,
        "selectivity": received / sent if sent else float("nan"),
        "input_rate": (active[-1][1] - active[0][1]) / span_in
        if span_in == span_in and span_in > 0 else float("nan"),
        "throughput": received / span_out if span_out == span_out and span_out > 0
        else float("nan"),
        "latency_p50_ms": pct[0], "latency_p95_ms": pct[1], "latency_p99_ms": pct[2],
        "latency_mean_ms": float(np.mean(latency)) if n else float("nan"),
        "latency_max_ms": float(np.max(latency)) if n else float("nan"),
        "jitter": j, "jitter_abs": j_abs,
        "lost": lost,
        "duplicates": int(streams["duplicates"].sum()) if len(streams) else 0,
        "reordered": int(streams["reordered"].sum()) if len(streams) else 0,
        "complete": bool(c.sink_done),
        "drain_s": c.done_at - min(ended) if c.done_at is not None and ended
        else float("nan"),
        "latency_growth": _growth(lat),
    }
    return pd.DataFrame([row])
