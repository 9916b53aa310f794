"""Finding experiments: every module in ``experiments/`` that declares ``EXPERIMENT``.

Modules are found by a line starting ``EXPERIMENT =`` (read as text, so that listing
does not import every script in the folder) and imported by file path, which is also
how a joblib or Dask worker finds a trial's function: the runner ships only the
experiment's name, a point and a seed, never a function (functions of a module loaded by
path cannot be pickled by reference).  A Dask worker on another machine therefore needs
the same checkout installed (``pip install -e '.[experiments]'``).

``SLOTS`` keeps the place of experiments the issue plans whose modules are written
elsewhere (E4, E5): ``thingssim experiment list`` shows them, and running one says what
is missing instead of "unknown experiment".
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from .spec import Experiment

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = ROOT / "experiments"
_DECLARES = re.compile(r"^EXPERIMENT\s*[:=]", re.MULTILINE)

#: name -> (label, module, what it will measure): the issue's numbering, in order
SLOTS: dict[str, tuple[str, str, str]] = {
    "migration": ("E1", "experiments/migration.py",
                  "migration latency and its phases in simulation"),
    "thingsmigrate": ("E2", "experiments/thingsmigrate.py",
                      "the ThingsMigrate table: overheads, snapshot size and time"),
    "riotbench": ("E3", "experiments/riotbench.py",
                  "RIoTBench dataflows with and without a stage migration"),
    "scheduling": ("E4", "experiments/scheduling.py",
                   "scheduling policies (written with the scheduler)"),
    "recovery": ("E5", "experiments/recovery.py",
                 "failure recovery (written with the scheduler)"),
    "validation": ("E6", "experiments/validation.py",
                   "the simulator against the emulated board lab (root for the lab half)"),
}


class UnknownExperiment(KeyError):
    """No module declares that experiment (the message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0])


class NotAvailable(LookupError):
    """A planned experiment whose module does not declare it (yet)."""


def _declares(path: Path) -> bool:
    try:
        return bool(_DECLARES.search(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return False


def modules(directory: Path = EXPERIMENTS_DIR) -> dict[str, Path]:
    """Experiment name -> module file, from the file names (``migration.py`` is
    ``migration``); the slots' order first, then the others alphabetically."""
    found = {p.stem: p for p in sorted(directory.glob("*.py")) if _declares(p)}
    ordered = [n for n in SLOTS if n in found] + sorted(n for n in found if n not in SLOTS)
    return {n: found[n] for n in ordered}


def names() -> list[str]:
    return list(modules())


@functools.cache
def _import(path: Path) -> ModuleType:
    name = f"thingssim_experiments.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look modules up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load(name: str) -> Experiment:
    """The experiment ``name`` (UnknownExperiment, NotAvailable with a clear message)."""
    path = modules().get(name)
    if path is None:
        if name in SLOTS:
            label, module, what = SLOTS[name]
            raise NotAvailable(f"{label} {name} ({what}) is not available yet: {module} "
                               f"does not declare EXPERIMENT")
        known = ", ".join(names()) or "none"
        raise UnknownExperiment(f"unknown experiment {name!r}; known: {known} "
                                f"(thingssim experiment list)")
    experiment = getattr(_import(path.resolve()), "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise NotAvailable(f"{path.name}: EXPERIMENT is not a "
                           f"thingssim.experiment.Experiment")
    if experiment.name != name:
        raise NotAvailable(f"{path.name} declares the experiment {experiment.name!r}; "
                           f"name the file {experiment.name}.py")
    return experiment
