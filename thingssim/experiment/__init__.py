"""The experiment framework: ``thingssim experiment NAME`` and ``thingssim report``.

An experiment is one module in ``experiments/`` declaring ``EXPERIMENT`` (see
:mod:`.spec` for the contract); :mod:`.runner` expands its design times its seeds into
trials, runs them serially, with joblib or on Dask, and writes tidy CSVs, figures in one
style (:mod:`.style`) and provenance; :mod:`.report` rebuilds ``results/README.md``.
"""

from typing import Any

from .spec import Experiment, grid, one_at_a_time

__all__ = ["Experiment", "ci95", "ci_summary", "grid", "one_at_a_time"]


def __getattr__(name: str) -> Any:
    """The statistics on first use: scipy loads only where something is summarised."""
    if name in ("ci95", "ci_summary"):
        from . import stats

        return getattr(stats, name)
    raise AttributeError(name)
