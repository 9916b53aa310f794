"""A finished run's results folder, as the dashboard's Results view shows it.

Reads what ``thingssim sim SCENARIO.toml --out DIR`` writes (``messages.csv``,
``migrations.csv``, ``programs.csv``, ``boards.csv``, ``actions.csv``, ``faults.csv``,
and ``gfs.csv`` / ``scheduler.csv`` when the scenario had them; see
:mod:`thingssim.sim.scenario`), a sweep's ``runs.csv`` with its run folders, or an
experiment's folder (``summary.csv``, figures).  It derives:

- a **timeline**: runs and migrations (with their phases), faults, dispatcher actions,
  and where each program was (from its run and its committed migrations);
- **per-board load over time**: messages each board sent and received per second (from
  ``messages.csv``), and the programs placed on it;
- **message latency distributions** per kind of topic (console, resource reports,
  commands and replies, migration, registry, files, scheduler, application);
- the **figures** in the folder (``*.png``, ``*.svg``).

The results carry no CPU time series (``boards.csv`` has each board's utilisation over
the whole run), so load over time is in messages and programs, and says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

FIGURE_SUFFIXES = (".png", ".svg")
#: at most this many histogram bins, and load buckets on the time axis
BINS = 30
MAX_BUCKETS = 240


class ResultsError(ValueError):
    """The folder is missing, unreadable or holds no results."""


def _read(folder: Path, name: str) -> Any:
    import pandas as pd

    path = folder / f"{name}.csv"
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read it as CSV ({exc})") from None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf as None, numpy scalars as Python's."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rows(frame: Any, limit: int = 1000) -> list[dict]:
    if frame is None or frame.empty:
        return []
    return [{str(k): _clean(v) for k, v in row.items()}
            for row in frame.head(limit).to_dict("records")]


def topic_kind(topic: str) -> str:
    """The kind of a message by its topic (what its latency is grouped by)."""
    levels = topic.split("/")
    if topic.startswith(("engine-registry", "program-monitor", "program-owner/")):
        return "registry"
    if levels[-1] == "console":
        return "console"
    if levels[-1] == "resource":
        return "resource"
    if "migrate" in levels:
        return "migration"
    if levels[-1] in ("cmd", "reply") or (len(levels) >= 2 and levels[-2] == "reply"):
        return "commands"
    if levels[0] == "gfs":
        return "files"
    if levels[0].endswith("scheduler"):
        return "scheduler"
    return "application"


def latency_histograms(messages: Any) -> list[dict]:
    """Per kind of topic: count, p50, p95, p99, max (ms) and a log-spaced histogram."""
    import numpy as np

    if messages is None or messages.empty or "latency" not in messages:
        return []
    delivered = messages[(messages["event"] == "deliver") & messages["latency"].notna()]
    if delivered.empty:
        return []
    kinds = delivered["topic"].fillna("").map(topic_kind)
    out = []
    for kind in sorted(kinds.unique()):
        ms = delivered.loc[kinds == kind, "latency"].to_numpy(dtype=float) * 1000.0
        ms = ms[np.isfinite(ms)]
        if ms.size == 0:
            continue
        low, high = max(float(ms.min()), 1e-3), max(float(ms.max()), 1e-3)
        if high <= low * 1.01:
            edges = np.array([low * 0.9, high * 1.1])
        else:
            edges = np.geomspace(low, high * 1.0001, min(BINS, max(2, int(ms.size ** 0.5))) + 1)
        counts, edges = np.histogram(np.clip(ms, edges[0], edges[-1]), bins=edges)
        out.append({"kind": kind, "count": int(ms.size),
                    "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                    "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
                    "edges": [round(float(e), 6) for e in edges],
                    "counts": [int(c) for c in counts]})
    return out


def _bucket(duration: float) -> float:
    """A round bucket width giving at most MAX_BUCKETS buckets."""
    for width in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if duration / width <= MAX_BUCKETS:
            return float(width)
    return math.ceil(duration / MAX_BUCKETS)


def residence(actions: Any, migrations: Any, duration: float) -> list[dict]:
    """Where each program was: ``{program, board, start, end}`` from each run (the
    board its reply named) and each committed migration."""
    placed: dict[str, dict] = {}
    spans: list[dict] = []
    events: list[tuple[float, str, str, str]] = []  # (time, program, kind, board)
    for row in _rows(actions, 100_000):
        if row.get("action") == "run" and row.get("ok") is True and row.get("done") is not None:
            events.append((float(row["done"]), str(row["program"]), "run",
                           str(row.get("result") or row.get("target"))))
    for row in _rows(migrations, 100_000):
        if row.get("ok") is True and row.get("started") is not None:
            end = float(row["started"]) + float(row.get("total_s") or 0.0)
            events.append((end, str(row.get("code_name")), "migrate", str(row["target"])))
    for t, program, _kind, board in sorted(events):
        current = placed.get(program)
        if current is not None:
            current["end"] = t
            spans.append(current)
        placed[program] = {"program": program, "board": board, "start": t, "end": None}
    for current in placed.values():
        current["end"] = duration
        spans.append(current)
    return sorted(spans, key=lambda s: (s["program"], s["start"]))


def board_load(messages: Any, boards: list[str], spans: list[dict],
               duration: float) -> dict:
    """Per board and time bucket: messages sent, received, and programs placed."""
    import numpy as np

    width = _bucket(max(duration, 1e-9))
    n = max(1, int(math.ceil(duration / width)))
    t = [round(i * width, 6) for i in range(n)]
    out: dict[str, Any] = {"bucket_s": width, "t": t, "boards": {}}
    for board in boards:
        sent = received = np.zeros(n)
        if messages is not None and not messages.empty and "client" in messages:
            mine = messages[messages["client"] == board]
            for event, name in (("publish", "sent"), ("deliver", "received")):
                times = mine.loc[mine["event"] == event, "time"].to_numpy(dtype=float)
                idx = np.clip((times // width).astype(int), 0, n - 1)
                counts = np.bincount(idx, minlength=n)[:n] / width
                if name == "sent":
                    sent = counts
                else:
                    received = counts
        hosted = []
        for start in t:
            mid = start + width / 2
            hosted.append(sum(1 for s in spans if s["board"] == board
                              and s["start"] <= mid < (s["end"] if s["end"] is not None
                                                       else math.inf)))
        out["boards"][board] = {"sent": [round(float(x), 3) for x in sent],
                                "received": [round(float(x), 3) for x in received],
                                "programs": hosted}
    return out


def load_results(folder: str | Path) -> dict:
    """Everything the Results view shows about ``folder`` (ResultsError if none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such folder")
    figures = sorted(p.name for p in folder.iterdir()
                     if p.is_file() and p.suffix.lower() in FIGURE_SUFFIXES)
    runs = _read(folder, "runs")
    summary = _read(folder, "summary")
    messages = _read(folder, "messages")
    migrations = _read(folder, "migrations")
    actions = _read(folder, "actions")
    faults = _read(folder, "faults")
    boards = _read(folder, "boards")
    programs = _read(folder, "programs")
    scheduler = _read(folder, "scheduler")
    is_scenario = any(x is not None for x in (messages, migrations, actions, boards))
    if not (is_scenario or figures or runs is not None or summary is not None):
        raise ResultsError(f"{folder}: no results here (no scenario CSVs such as "
                           f"boards.csv, no runs.csv, summary.csv or figures)")
    out: dict[str, Any] = {"folder": str(folder), "name": folder.name,
                           "kind": "scenario" if is_scenario else
                           "sweep" if runs is not None else "experiment",
                           "figures": figures}
    if runs is not None:
        rows = _rows(runs)
        for row in rows:  # run folders that can be opened, relative to this one
            sub = row.get("folder")
            row["open"] = isinstance(sub, str) and (folder / sub).is_dir() and \
                not Path(sub).is_absolute() and ".." not in Path(sub).parts
        out["runs"] = rows
    if summary is not None:
        out["summary"] = _rows(summary, 200)
    if not is_scenario:
        return out
    times = [0.0]
    for frame, columns in ((messages, ("time",)), (migrations, ("started",)),
                           (actions, ("time", "done")), (faults, ("time",))):
        if frame is not None and not frame.empty:
            for column in columns:
                if column in frame and frame[column].notna().any():
                    times.append(float(frame[column].max()))
    duration = max(times)
    board_rows = _rows(boards)
    names = [str(r["board"]) for r in board_rows]
    for frame, columns in ((migrations, ("source", "target")), (faults, ("target",))):
        for row in _rows(frame, 100_000):
            for column in columns:
                name = row.get(column)
                if isinstance(name, str) and name not in names and name != "broker":
                    names.append(name)
    spans = residence(actions, migrations, duration)
    out.update({
        "duration": duration,
        "boards": board_rows,
        "board_names": names,
        "migrations": _rows(migrations),
        "faults": _rows(faults),
        "actions": _rows(actions),
        "programs": _rows(programs),
        "residence": spans,
        "load": board_load(messages, names, spans, duration),
        "latency": latency_histograms(messages),
        "messages": 0 if messages is None else int(len(messages)),
    })
    if scheduler is not None:
        out["scheduler"] = _rows(scheduler, 500)
    return out


def figure_path(folder: str | Path, name: str) -> Optional[Path]:
    """The figure ``name`` in ``folder`` (a plain file name of a figure), else None."""
    if "/" in name or "\\" in name or name.startswith(".") or \
            not name.lower().endswith(FIGURE_SUFFIXES):
        return None
    path = Path(folder) / name
    return path if path.is_file() else None


def run_folder(folder: str | Path, sub: str) -> Optional[Path]:
    """A sweep's run folder ``sub`` inside ``folder`` (never outside it), else None."""
    base = Path(folder).resolve()
    path = (base / sub).resolve()
    if path == base or base not in path.parents or not path.is_dir():
        return None
    return path
