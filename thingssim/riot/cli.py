"""``thingssim riot FLOW``: run a RIoTBench dataflow in simulation or on real workers."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

import click

from .dataflows import FLOWS
from .datasets import DATASETS

__all__ = ["riot_command"]

_MIGRATE = re.compile(r"^(?P<stage>[A-Za-z_]+):(?P<to>[^@\s]+)@(?P<at>[0-9.eE+-]+)$")


def _positive(ctx: Any, param: Any, value: Optional[float]) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite number > 0, not {value}", ctx, param)
    return value


def _migrations(ctx: Any, param: Any, values: tuple[str, ...]) -> list[dict]:
    out = []
    for value in values:
        match = _MIGRATE.match(value)
        if match is None:
            raise click.BadParameter(f"{value!r} is not STAGE:ENGINE@SECONDS", ctx, param)
        out.append({"at": float(match["at"]), "type": "migrate", "stage": match["stage"],
                    "to": match["to"]})
    return out


def _table(frame: Any) -> str:
    from tabulate import tabulate

    return tabulate(frame, headers="keys", showindex=False, floatfmt=".4g", missingval="-")


@click.command("riot")
@click.argument("flow", type=click.Choice(FLOWS, case_sensitive=False))
@click.option("--sim", "scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Simulate on this scenario's boards (default: 3 Raspberry "
              "Pi 3 and a file-system node).")
@click.option("--broker", "url", default=None, metavar="URL",
              help="Run on the real workers connected to this broker instead.")
@click.option("--dataset", type=click.Choice(DATASETS, case_sensitive=False), default="TAXI",
              show_default=True)
@click.option("--input", "input_file", default=None, metavar="FILE",
              help="A SenML CSV file to replay, or 'synthetic' (default: the sample).")
@click.option("--rate", type=float, default=100.0, show_default=True, callback=_positive,
              help="Messages per second.")
@click.option("--speedup", type=float, default=None, callback=_positive,
              help="Replay at the recorded timestamps divided by this, instead of --rate.")
@click.option("--duration", type=float, default=10.0, show_default=True, callback=_positive,
              help="Seconds of input.")
@click.option("--placement", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON or TOML {stage: engine} (default: round robin).")
@click.option("--migrate", "migrations", multiple=True, callback=_migrations,
              metavar="STAGE:ENGINE@S", help="Migrate a stage S seconds after the start.")
@click.option("--record", is_flag=True, help="Write every task's output to OUT/tasks/.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the result CSVs here.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--username", "-u", default=None, help="Broker user name.")
@click.option("--password", "-p", default=None, envvar="THINGSSIM_PASSWORD",
              help="Broker password (or THINGSSIM_PASSWORD).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def riot_command(flow: str, scenario: Optional[Path], url: Optional[str], dataset: str,
                 input_file: Optional[str], rate: float, speedup: Optional[float],
                 duration: float, placement: Optional[Path], migrations: list[dict],
                 record: bool, out: Optional[Path], seed: int, username: Optional[str],
                 password: Optional[str], progress: bool) -> None:
    """Run the RIoTBench dataflow FLOW (ETL, STATS, TRAIN, PRED) and summarise it.

    In simulation by default; with --broker on the workers connected to it (a file
    service is started for the run if none is up).  With --out, writes summary.csv,
    tasks.csv, latency.csv, streams.csv (and actions.csv, migrations.csv, and with
    --record tasks/<stage>.csv).
    """
    from .run import RunSpec, load_placement, run_real, run_sim

    if scenario is not None and url is not None:
        raise click.UsageError("give --sim or --broker, not both")
    if input_file is not None and input_file != "synthetic" and not Path(input_file).is_file():
        raise click.BadParameter(f"{input_file}: no such file", param_hint="--input")
    if url is not None:
        from runtime.mqtt import parse_broker_url

        url = url if "://" in url else f"mqtt://{url}"
        try:
            parse_broker_url(url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--broker") from None
    try:
        where = load_placement(placement) if placement is not None else None
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(flow=flow.upper(), dataset=dataset.upper(), rate=rate, speedup=speedup,
                   duration=duration, input=input_file, seed=seed, placement=where,
                   record=record, actions=migrations)
    try:
        if url is not None:
            result = run_real(spec, url, username=username, password=password,
                              progress=progress)
        else:
            loaded = None
            if scenario is not None:
                from thingssim.sim.scenario import Scenario, ScenarioError

                try:
                    loaded = Scenario.from_toml(scenario)
                except (ScenarioError, OSError) as exc:
                    raise click.ClickException(str(exc)) from None
            result = run_sim(spec, scenario=loaded, progress=progress)
    except (RuntimeError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    m = result.measurement
    s = m.summary.iloc[0]
    click.echo(f"{s['flow']} on {s['dataset']} ({s['mode']}): {s['sent']} sent, "
               f"{s['received']} at the sink, {s['lost']} lost, {s['duplicates']} duplicated, "
               f"{s['reordered']} reordered; throughput {s['throughput']:.4g}/s; latency p50 "
               f"{s['latency_p50_ms']:.4g} ms, p95 {s['latency_p95_ms']:.4g} ms, p99 "
               f"{s['latency_p99_ms']:.4g} ms; jitter {s['jitter']:.3g} "
               f"(|J| {s['jitter_abs']:.3g}); {result.wall_s:.1f} s")
    columns = ["stage", "engine", "in", "out", "selectivity", "in_rate", "out_rate",
               "processing_ms", "delay_ms", "cpu_pct", "rss_mb"]
    click.echo(_table(m.tasks[columns]))
    if len(result.actions):
        click.echo(_table(result.actions))
    for name, lines in result.consoles.items():
        for line in lines[-5:]:
            click.echo(f"{name}: {line.rstrip()}", err=True)
    if out is not None:
        result.save(out)
        click.echo(f"results in {out}")
