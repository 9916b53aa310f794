"""``thingssim experiment NAME|list`` and ``thingssim report``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import click

from . import registry
from .spec import PRESETS

__all__ = ["experiment_command", "report_command"]


def _seeds(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Any:
    if value is None:
        return None
    from ..cli import SeedList  # the same syntax as ``thingssim sim --seeds``

    return SeedList().convert(value, param, ctx)


def _list() -> None:
    from tabulate import tabulate

    rows = []
    available = registry.modules()
    for name in [*available, *(n for n in registry.SLOTS if n not in available)]:
        label = registry.SLOTS.get(name, ("",))[0]
        if name not in available:
            rows.append([label, name, registry.SLOTS[name][2], "-", "-",
                         f"not available yet ({registry.SLOTS[name][1]})"])
            continue
        exp = registry.load(name)
        sizes = []
        for preset in ("default", "quick"):
            params, seeds = exp.resolve(preset)
            sizes.append(f"{len(exp.points(params))} x {len(seeds)}")
        kind = "deterministic" if exp.deterministic else "measured"
        rows.append([label, name, exp.title, *sizes, kind])
    click.echo(tabulate(rows, headers=["", "name", "what", "default (points x seeds)",
                                       "--quick", "CSVs"], tablefmt="simple"))


@click.command("experiment")
@click.argument("name", metavar="NAME|list")
@click.option("--quick", is_flag=True,
              help="The small preset: checks the pipeline end to end in about a minute.")
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="A named preset (quick and tiny are smaller than default).")
@click.option("--seeds", callback=_seeds, default=None,
              help="Replications: N, A-B or a list like 1,3,5-7 [default: the preset's].")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes (joblib); with --dask local, its workers.")
@click.option("--dask", "dask_address", default=None, metavar="tcp://HOST:PORT|local",
              help="Run the trials on Dask distributed: a scheduler's address, or 'local' "
                   "for a LocalCluster on this machine.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write [default: results/NAME in the repository; "
                   "results-quick/NAME with --quick].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def experiment_command(name: str, quick: bool, preset: Optional[str],
                       seeds: Optional[list[int]], jobs: int, dask_address: Optional[str],
                       out: Optional[Path], progress: bool) -> None:
    """Run experiment NAME (`thingssim experiment list` shows them) and write
    trials.csv, summary.csv, its figures (PNG, PDF) and provenance.json."""
    if name == "list":
        _list()
        return
    from tabulate import tabulate

    from .runner import Backend, TrialError, run

    if quick and preset not in (None, "quick"):
        raise click.BadParameter("--quick and --preset disagree", param_hint="--quick")
    preset = "quick" if quick else (preset or "default")
    try:
        exp = registry.load(name)
    except registry.UnknownExperiment as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    except registry.NotAvailable as exc:
        raise click.ClickException(str(exc)) from None
    if preset != "default" and preset not in exp.presets:
        raise click.BadParameter(f"{name} has no preset {preset!r}", param_hint="--preset")
    # only the default size belongs in results/ (committed, documented): a quick look
    # must not overwrite it
    out = out or (registry.ROOT / "results" / name if preset == "default"
                  else registry.ROOT / f"results-{preset}" / name)
    backend = Backend.choose(jobs, dask_address)
    command = shlex.join(["thingssim", "experiment", *sys.argv[2:]]) \
        if sys.argv[1:2] == ["experiment"] else ""
    try:
        outcome = run(exp, out, preset=preset, seeds=seeds, backend=backend,
                      progress=progress, command=command)
    except TrialError as exc:  # the trial's traceback is above, from the worker
        raise click.ClickException(str(exc)) from None
    click.echo(f"{exp.title} ({preset}, {outcome.trials['seed'].nunique()} seeds, "
               f"{backend.kind}):")
    click.echo(tabulate(exp.headline(outcome.summary), headers="keys", showindex=False,
                        floatfmt=".4g", missingval="-"))
    click.echo("written: " + ", ".join(str(p) for p in outcome.files))
    click.echo(f"run time: {outcome.wall_s:.1f} s")


@click.command("report")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The results folder [default: results/ in the repository].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The page to write [default: RESULTS/README.md].")
def report_command(results: Optional[Path], out: Optional[Path]) -> None:
    """Rebuild results/README.md from the experiments' CSVs (nothing is run)."""
    from .report import write

    results = results or registry.ROOT / "results"
    if not results.is_dir():
        raise click.ClickException(f"--results {results}: no such directory")
    click.echo(f"written: {write(results, out)}")
