"""Running an experiment: the grid times the seeds, on one of three backends, into CSVs.

Backends, all behind :func:`execute`:

- ``serial``: one trial after the other in this process;
- ``joblib`` (``--jobs J``, J > 1): J local processes (joblib's loky pool: it restarts
  dead workers, reuses them between calls and is what scikit-learn uses; a hand-written
  ``multiprocessing`` pool would need all of that again);
- ``dask`` (``--dask ADDRESS``, or ``local`` for a ``LocalCluster``): Dask distributed,
  to run a sweep on many machines.  Its workers must run one trial per process at a
  time (``--nthreads 1``): the simulator and the program host are not thread-safe.

Each task is ``(experiment name, point, seed)``: plain data, so any backend can ship it,
and the worker loads the experiment by name (see :mod:`.registry`).  Results come back
as a list in task order, whatever order they completed in, and tasks are ordered by
point (the design's order) then seed (ascending), so the CSVs are byte-identical across
backends and worker counts.  Volatile facts (wall times, the backend, the machine) go to
``provenance.json`` only.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from tqdm import tqdm

from . import registry
from .provenance import provenance
from .spec import Experiment, Point
from .stats import ci_summary

#: how floats are written: 9 significant digits (a simulated microsecond in a run of
#: hours), the same text on every platform
FLOAT_FORMAT = "%.9g"


@dataclass(frozen=True)
class Backend:
    """Where trials run: ``serial``, ``joblib`` (``jobs`` processes) or ``dask``
    (``address``: a scheduler ``tcp://HOST:PORT``, or ``local`` for a LocalCluster of
    ``jobs`` workers)."""

    kind: str = "serial"
    jobs: int = 1
    address: Optional[str] = None

    @classmethod
    def choose(cls, jobs: int = 1, dask: Optional[str] = None) -> Backend:
        if dask:
            return cls("dask", max(jobs, 1), dask)
        return cls("joblib", jobs) if jobs > 1 else cls()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "jobs": self.jobs, "address": self.address}


@dataclass
class Outcome:
    """What a run produced (the frames as written and read back, and the files)."""

    experiment: Experiment
    trials: pd.DataFrame
    summary: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    wall_s: float = 0.0


class TrialError(RuntimeError):
    """A trial raised: the message names the experiment, the point and the seed."""


def run_trial(name: str, point: Point, seed: int) -> tuple[list[dict[str, Any]], float]:
    """One trial, as a worker runs it: the rows (the point's keys and the seed first)
    and its wall time.  Module-level and importable, so joblib and Dask ship it by
    reference."""
    experiment = registry.load(name)
    started = time.perf_counter()
    try:
        rows = experiment.trial(dict(point), seed)
    except Exception as exc:
        key = {k: point[k] for k in experiment.keys}
        traceback.print_exc()
        raise TrialError(f"{name}: trial {key} seed {seed} failed: "
                           f"{type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - started
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    head = {k: point[k] for k in experiment.keys}
    return [{**head, "seed": seed, **{k: v for k, v in row.items() if k not in head}}
            for row in rows], seconds


def tasks(experiment: Experiment, params: Mapping[str, Any],
          seeds: Sequence[int]) -> list[tuple[str, Point, int]]:
    """Every (name, point, seed), by point then seed."""
    return [(experiment.name, point, seed) for point in experiment.points(params)
            for seed in sorted(seeds)]


def execute(todo: Sequence[tuple[str, Point, int]], backend: Backend,
            progress: bool = True) -> list[tuple[list[dict[str, Any]], float]]:
    """Run the tasks on ``backend``; results in the tasks' order."""
    bar = tqdm(total=len(todo), desc=todo[0][0] if todo else "trials", unit="trial",
               disable=not progress, leave=False)
    try:
        if backend.kind == "serial":
            out = []
            for task in todo:
                out.append(run_trial(*task))
                bar.update()
            return out
        if backend.kind == "joblib":
            from joblib import Parallel, delayed

            out = []
            parallel = Parallel(n_jobs=backend.jobs, return_as="generator")
            for result in parallel(delayed(run_trial)(*task) for task in todo):
                out.append(result)
                bar.update()
            return out
        if backend.kind == "dask":
            return _dask(todo, backend, bar)
        raise ValueError(f"unknown backend {backend.kind!r}")
    finally:
        bar.close()


def _dask(todo: Sequence[tuple[str, Point, int]], backend: Backend,
          bar: Any) -> list[tuple[list[dict[str, Any]], float]]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if backend.address == "local":
        cluster = LocalCluster(n_workers=backend.jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        client = Client(backend.address)
    try:
        names, points, seeds = zip(*todo) if todo else ((), (), ())
        futures = client.map(run_trial, names, points, seeds, pure=False)
        for _ in as_completed(futures):
            bar.update()
        return client.gather(futures)  # in submission order
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return path


def summarise(experiment: Experiment, trials: pd.DataFrame) -> pd.DataFrame:
    if experiment.summarise is not None:
        return experiment.summarise(trials)
    return ci_summary(trials, experiment.keys, experiment.metrics)


def run(experiment: Experiment, out: Path, *, preset: str = "default",
        seeds: Optional[Sequence[int]] = None, backend: Backend = Backend(),
        progress: bool = True, command: str = "") -> Outcome:
    """Run ``experiment`` and write ``out``/trials.csv, summary.csv, its figures and
    provenance.json.  Figures and the summary are made from the CSVs as read back, so
    they are exactly what ``thingssim report`` sees."""
    started = time.perf_counter()
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    params, preset_seeds = experiment.resolve(preset)
    seeds = sorted(set(seeds)) if seeds else preset_seeds
    todo = tasks(experiment, params, seeds)
    results = execute(todo, backend, progress)
    rows = [row for trial_rows, _ in results for row in trial_rows]
    out.mkdir(parents=True, exist_ok=True)
    files = [write_csv(pd.DataFrame(rows), out / "trials.csv")]
    trials = pd.read_csv(files[0])
    files.append(write_csv(summarise(experiment, trials), out / "summary.csv"))
    summary = pd.read_csv(files[1])
    files.extend(experiment.figures(trials, summary, out))
    wall = time.perf_counter() - started
    trial_seconds = [seconds for _, seconds in results]
    doc = provenance(experiment, preset=preset, params=params, seeds=seeds,
                     points=len(todo) // max(len(seeds), 1), backend=backend.describe(),
                     command=command, started_utc=started_utc, wall_s=wall,
                     trial_seconds=trial_seconds,
                     files=[p.name for p in files] + ["provenance.json"])
    (out / "provenance.json").write_text(json.dumps(doc, indent=2, sort_keys=True,
                                                    default=repr) + "\n", encoding="utf-8")
    files.append(out / "provenance.json")
    return Outcome(experiment, trials, summary, files, wall)
