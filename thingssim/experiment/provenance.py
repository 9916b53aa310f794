"""``provenance.json``: what a reader needs to trust or redo a run.

Everything volatile lives here and nowhere in the CSVs: the wall time, when and where it
ran, on which backend, the git commit (and whether the tree had uncommitted changes),
and the versions of every package that shapes the numbers.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from .registry import ROOT
from .spec import Experiment

#: packages whose versions can change a result or a figure
PACKAGES = ("thingssim", "paho-mqtt", "simpy", "numpy", "pandas", "scipy", "matplotlib",
            "cloudpickle", "joblib", "dask", "distributed", "tqdm", "click")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, Any]:
    """The commit and whether the work tree differs from it (None outside a checkout)."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                                    text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": cpus, "node": platform.node()}


def provenance(experiment: Experiment, *, preset: str, params: Mapping[str, Any],
               seeds: Sequence[int], points: int, backend: Mapping[str, Any], command: str,
               started_utc: str, wall_s: float, trial_seconds: Sequence[float],
               files: Sequence[str]) -> dict[str, Any]:
    return {
        "experiment": experiment.name,
        "title": experiment.title,
        "deterministic": experiment.deterministic,
        "command": command,
        "preset": preset,
        "seeds": list(seeds),
        "parameters": dict(params),
        "points": points,
        "trials": len(trial_seconds),
        "backend": dict(backend),
        "started_utc": started_utc,
        "wall_s": round(wall_s, 3),
        "trial_wall_s": {"total": round(sum(trial_seconds), 3),
                         "max": round(max(trial_seconds, default=0.0), 3)},
        "git": git_state(),
        "versions": versions(),
        "machine": machine(),
        "files": sorted(files),
    }
