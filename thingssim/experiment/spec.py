"""The experiment contract: what one module in ``experiments/`` declares, in one place.

An experiment module defines ``EXPERIMENT = Experiment(...)`` with

- ``params``: every parameter at its default size, and ``presets`` (``quick``, maybe
  ``tiny``) that override some of them, each with its own ``seeds``;
- ``design(params) -> [point, ...]``: the parameter points to run (:func:`grid` or
  :func:`one_at_a_time` below, or any function): each point is a plain dict that
  holds the experiment's ``keys`` (the columns that identify it in the CSVs);
- ``trial(point, seed) -> rows``: one replication of one point, a list of dicts (or a
  DataFrame), pure and, for simulated experiments, a function of its arguments only:
  the framework may run it in another process or on another machine;
- ``metrics``: the columns summarised per point (mean, std, n, 95% CI over seeds);
- ``summarise`` (optional: the default is :func:`thingssim.experiment.stats.ci_summary`),
  ``figures(trials, summary, out) -> [paths]`` (named ``fig_*``) and
  ``headline(summary) -> table`` (the few numbers the results page quotes).

Keeping all of it in one declaration is what lets the runner expand the grid, pick a
backend, and write the same CSVs whichever backend ran it, and lets ``thingssim report``
rebuild the results page without running anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

if TYPE_CHECKING:  # pandas is imported where frames are made, not by every CLI start
    import pandas as pd

Point = dict[str, Any]
Rows = Union[list[dict[str, Any]], "pd.DataFrame"]

#: the presets every experiment understands; ``default`` is ``params`` itself
PRESETS = ("default", "quick", "tiny")
#: figures an experiment writes are named ``fig_<what>.png`` and ``.pdf`` (the report
#: shows those, and a results folder may hold other files)
FIGURE_PREFIX = "fig_"


@dataclass(frozen=True)
class Experiment:
    """One experiment (see the module docstring for the contract)."""

    name: str
    title: str
    description: str
    params: Mapping[str, Any]
    seeds: Sequence[int]
    keys: Sequence[str]
    metrics: Sequence[str]
    design: Callable[[Mapping[str, Any]], list[Point]]
    trial: Callable[[Point, int], Rows]
    figures: Callable[[pd.DataFrame, pd.DataFrame, Path], list[Path]]
    headline: Callable[[pd.DataFrame], pd.DataFrame]
    #: preset name -> parameter overrides; the key ``seeds`` overrides the seeds
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summarise: Optional[Callable[[pd.DataFrame], pd.DataFrame]] = None
    #: True: the CSVs are the same bytes for the same seeds (simulation); False: they
    #: hold measurements (wall-clock times, memory) and differ on every run
    deterministic: bool = True

    def resolve(self, preset: str = "default") -> tuple[dict[str, Any], list[int]]:
        """The parameters and seeds of ``preset``."""
        if preset != "default" and preset not in self.presets:
            known = ", ".join(["default", *self.presets])
            raise KeyError(f"experiment {self.name} has no preset {preset!r} ({known})")
        overrides = dict(self.presets.get(preset, {}))
        seeds = overrides.pop("seeds", self.seeds)
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            raise KeyError(f"preset {preset!r} of {self.name} overrides unknown "
                           f"parameters: {', '.join(unknown)}")
        return {**self.params, **overrides}, sorted(set(int(s) for s in seeds))

    def points(self, params: Mapping[str, Any]) -> list[Point]:
        """The design's points, checked: each holds the keys, none twice."""
        points = self.design(params)
        seen: set[tuple] = set()
        for point in points:
            missing = [k for k in self.keys if k not in point]
            if missing:
                raise ValueError(f"{self.name}: a point lacks {missing}: {point}")
            key = self.key_of(point)
            if key in seen:
                raise ValueError(f"{self.name}: the design has the point {key} twice")
            seen.add(key)
        return points

    def key_of(self, point: Mapping[str, Any]) -> tuple:
        return tuple(_comparable(point[k]) for k in self.keys)


def _comparable(value: Any) -> Any:
    """NaN and None as one value (a point's blank key cell reads back as NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value


def grid(params: Mapping[str, Any], axes: Iterable[str]) -> list[Point]:
    """The cartesian product of the list-valued ``params[axis]`` for each axis, the
    other parameters copied into every point (first axis slowest)."""
    axes = list(axes)
    values = [list(params[a]) for a in axes]
    fixed = {k: v for k, v in params.items() if k not in axes}
    return [{**fixed, **dict(zip(axes, combo))} for combo in itertools.product(*values)]


def one_at_a_time(params: Mapping[str, Any], baseline: Mapping[str, Any],
                  axes: Iterable[str]) -> list[Point]:
    """A one-factor-at-a-time design: the baseline, then each axis's values with every
    other axis at its baseline value (the baseline point only once).

    Why not the full product: E1's five axes at five values each are 3,125 points of
    which a figure shows a line of five; varying one factor around a realistic baseline
    gives every figure at a fraction of the cost (interactions are out of its reach:
    :func:`grid` covers those)."""
    fixed = {k: v for k, v in params.items() if k not in baseline}
    points, seen = [], set()
    for axis in ["", *axes]:
        for value in (params[axis] if axis else [None]):
            point = {**fixed, **baseline}
            if axis:
                point[axis] = value
            key = tuple(sorted((k, repr(v)) for k, v in point.items() if k in baseline))
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points
