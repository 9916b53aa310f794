"""One figure style for every experiment, and saving a figure as PNG and PDF.

Why a module and not per-script settings: a paper's figures should look like one
family (same fonts, sizes, colours, grid), whichever experiment drew them.  The colours
are Okabe and Ito's colour-blind-safe palette; PDF fonts are embedded as TrueType
(type 42), which publishers' checkers accept.  Files carry no creation date or software
version, so the same data draws the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Okabe & Ito (2008), "Color Universal Design"
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
#: phases of a migration, in the order they happen (one colour each, in every figure)
PHASES = ("snapshot", "transfer", "restore", "commit")
PHASE_COLOURS = dict(zip(PHASES, PALETTE))

RC: dict[str, Any] = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "errorbar.capsize": 2.5,
    "lines.markersize": 4,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.hashsalt": "thingssim",
}


@contextmanager
def style() -> Iterator[None]:
    """Draw inside ``with style():`` (the settings are undone afterwards)."""
    with matplotlib.rc_context(RC):
        yield


def save(fig: Any, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (no dates, no software version) and close."""
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                _plain_log(axis)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Creator": None, "Producer": None,
                                    "CreationDate": None})
    plt.close(fig)
    return paths


def _plain_log(axis: Any) -> None:
    """Log axes labelled 1, 2, 5, 10, 20... in plain numbers: matplotlib's default
    labels powers of ten only (none at all on an axis spanning less than a decade) or,
    on short axes, every minor tick in scientific notation."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    if isinstance(axis.get_major_locator(), FixedLocator):  # value_ticks chose them
        return
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def value_ticks(ax: Any, values: Any, axis: str = "x") -> None:
    """Ticks at exactly the swept values, labelled plainly (``0.5``, ``20``), instead
    of a log axis's powers of ten, which a short sweep may not even reach."""
    from matplotlib.ticker import NullFormatter, NullLocator

    values = sorted(set(float(v) for v in values))
    labels = [f"{v:g}" for v in values]
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())
    (ax.set_xticks if axis == "x" else ax.set_yticks)(values, labels)


def legend_below(fig: Any, ncol: int = 4) -> None:
    """One legend for the whole figure, under everything (bars fill the plot areas),
    each label once however many panels use it; needs ``layout="constrained"``."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol,
               frameon=False)


def ci_note(n: int | str) -> str:
    """The caption fragment every figure with intervals carries."""
    return f"mean ± 95% CI (Student's t) over {n} seeds"
