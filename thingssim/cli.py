"""The ``thingssim`` command line (click: well kept, composable, good error messages).

Every user mistake ends in one line on stderr naming the file, key or value at fault:
exit code 1 for a user error (a missing or bad file, a program that does not compile, an
unwritable output), 2 for bad options (click's usage errors).
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import click

from runtime import ProgramStatus, __version__
from runtime.snapshot import SnapshotError

from . import standalone


class FiniteFloat(click.FloatRange):
    """click's FloatRange, minus nan and inf (``--for nan`` would never end)."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


SECONDS = FiniteFloat(min=0)

_FOR = click.option("--for", "duration", type=SECONDS, default=None,
                    help="Stop after this many seconds of program time.")
_VIRTUAL = click.option("--virtual", is_flag=True,
                        help="Simulated clock: jump from event to event, no waiting.")
_COMPRESS = click.option("--compress/--no-compress", default=None,
                         help="gzip the snapshot (default: only if the name ends in .gz).")
#: an input file: its problems (missing, a directory, unreadable) are user errors (exit 1,
#: one line naming it), found when it is read, not click usage errors (exit 2)
_INPUT = click.Path(path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="thingssim")
def main() -> None:
    """thingssim: live-migratable IoT programs, in simulation and on real boards."""


class _StdoutClosed(KeyboardInterrupt):
    """Whoever read our stdout went away (``thingssim run P | head``).

    A KeyboardInterrupt because ProgramHost lets those through instead of calling them
    the program's crash; the command then ends quietly with exit code 1, as click ends
    any command whose stdout closes.
    """


class _Console:
    """The program's console on stdout. If the reader goes away, the console goes to
    /dev/null; ``stop_when_closed`` (run, restore --for) also ends the command, while a
    snapshot still gets written."""

    def __init__(self, stop_when_closed: bool) -> None:
        self.stop_when_closed = stop_when_closed
        self.closed = False

    def __call__(self, text: str) -> None:
        if self.closed:
            return
        try:
            sys.stdout.write(text)
        except BrokenPipeError:
            self.closed = True
            _stdout_to_devnull()
            if self.stop_when_closed:
                raise _StdoutClosed from None


def _stdout_to_devnull() -> None:
    """Later flushes of what is still buffered (ours, at exit) must not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass


def _finish(host: Any) -> None:
    """Exit like the program did: its exit code, or 1 with its traceback if it crashed."""
    sys.stdout.flush()
    if host.status is ProgramStatus.CRASHED:
        click.echo(f"program {host.code_name} crashed:\n{host.error}", err=True, nl=False)
        sys.exit(1)
    if host.status is ProgramStatus.EXITED and host.exit_code:
        sys.exit(host.exit_code)


def _run_for(host: Any, clock: Any, duration: float | None) -> None:
    try:
        standalone.run_for(host, clock, duration)
    except _StdoutClosed:
        sys.exit(1)


def _load(virtual: bool, console: _Console, **source: Path) -> tuple[Any, Any]:
    """A host for ``program=`` or ``snapshot=``; every problem with the file is one line
    naming it (exit 1)."""
    ((_, path),) = source.items()
    clock = standalone.make_clock(virtual)
    try:
        host = standalone.load_host(clock=clock, console=console, reproducible=virtual,
                                    **source)
    except SyntaxError as exc:
        raise click.ClickException(f"{exc.filename}:{exc.lineno}: {exc.msg}") from None
    except FileNotFoundError:
        raise click.ClickException(f"{path}: no such file") from None
    except IsADirectoryError:
        raise click.ClickException(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read it ({exc.strerror or exc})") \
            from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not a UTF-8 text file") from None
    except SnapshotError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    return host, clock


def _cannot_write_in(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (None: it can)."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".thingssim-"):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _check_output(output: Path) -> None:
    """Before running: a snapshot that could not be written would waste the run."""
    parent = output.parent
    if not parent.is_dir():
        raise click.ClickException(f"-o {output}: no directory {parent}")
    reason = _cannot_write_in(parent)
    if reason:
        raise click.ClickException(f"-o {output}: cannot write in {parent} ({reason})")


def _snapshot_to(host: Any, out: Path, compress: bool | None, at: float) -> None:
    if not host.alive:
        _finish(host)
        raise click.ClickException(f"the program ended ({host.status.value}) before "
                                   f"t={at:g}; nothing to snapshot")
    try:
        size = standalone.write_snapshot(host, out, compress)
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"-o {out}: {exc.strerror or exc}") from None
    click.echo(f"snapshot of {host.instance_id} at t={host.program_time():g} -> {out} "
               f"({size} bytes)", err=True)


@main.command()
@click.argument("program", type=_INPUT)
@_FOR
@_VIRTUAL
def run(program: Path, duration: float | None, virtual: bool) -> None:
    """Run PROGRAM, printing its console, until it exits (or for --for seconds)."""
    host, clock = _load(virtual, _Console(stop_when_closed=True), program=program)
    _run_for(host, clock, duration)
    _finish(host)


@main.command()
@click.argument("program", type=_INPUT)
@click.option("--after", type=SECONDS, required=True,
              help="Run every event due at or before this program time, then snapshot.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Snapshot file to write (JSON; .gz to compress).")
@_VIRTUAL
@_COMPRESS
def snapshot(program: Path, after: float, output: Path, virtual: bool,
             compress: bool | None) -> None:
    """Run PROGRAM up to program time --after, then write a snapshot and stop."""
    _check_output(output)
    host, clock = _load(virtual, _Console(stop_when_closed=False), program=program)
    _run_for(host, clock, after)
    _snapshot_to(host, output, compress, after)


@main.command()
@click.argument("snapshot_file", metavar="SNAPSHOT",
                type=_INPUT)
@_FOR
@click.option("--after", type=SECONDS, default=None,
              help="Snapshot again after this many more seconds (needs -o).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to write the next snapshot.")
@_VIRTUAL
@_COMPRESS
def restore(snapshot_file: Path, duration: float | None, after: float | None,
            output: Path | None, virtual: bool, compress: bool | None) -> None:
    """Continue a program from SNAPSHOT (for --for seconds, or snapshot again --after)."""
    if (after is None) != (output is None):
        raise click.UsageError("--after and -o go together")
    if after is not None and duration is not None:
        raise click.UsageError("use either --for or --after/-o, not both")
    if output is not None:
        _check_output(output)
    host, clock = _load(virtual, _Console(stop_when_closed=output is None),
                        snapshot=snapshot_file)
    _run_for(host, clock, after if after is not None else duration)
    if output is not None:
        _snapshot_to(host, output, compress, after)
    else:
        _finish(host)


class SeedList(click.ParamType):
    """``N``, ``A-B`` (both included) or a comma list of them (``1,3,5-7``): seeds are
    integers >= 0; a seed named twice runs once; the order is kept."""

    name = "seeds"
    MAX = 100_000  # runs of one sweep: more is surely a typo (1-10000000000)
    _ITEM = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):  # already converted (a default)
            return value
        seeds: dict[int, None] = {}  # ordered, without duplicates
        for item in str(value).split(","):
            if not item.strip():
                self.fail(f"{value!r} has an empty item; use N, A-B or a comma list "
                          "like 1,3,5-7.", param, ctx)
            match = self._ITEM.fullmatch(item)
            if match is None:
                self.fail(f"{item.strip()!r} in {value!r} is not a seed (an integer >= 0) "
                          "or a range A-B.", param, ctx)
            first = int(match.group(1))
            last = first if match.group(2) is None else int(match.group(2))
            if last < first:
                self.fail(f"{item.strip()!r} in {value!r} is a reversed range (write "
                          f"{last}-{first}).", param, ctx)
            if last - first >= self.MAX or len(seeds) + last - first >= self.MAX:
                self.fail(f"{value!r} is more than {self.MAX} seeds (a typo?).", param, ctx)
            seeds.update(dict.fromkeys(range(first, last + 1)))
        return list(seeds)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # this process's CPUs (taskset, containers)
    except AttributeError:  # not on macOS or Windows
        return os.cpu_count() or 1


def _make_out_dir(out: Path) -> None:
    """Create ``out`` and check a file can be written there (before running: a run whose
    CSVs cannot be written is wasted)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"--out {out}: cannot create the directory "
                                   f"({exc.strerror or exc})") from None
    reason = _cannot_write_in(out)
    if reason:
        raise click.ClickException(f"--out {out}: cannot write there ({reason})")


@main.command()
@click.argument("scenario_files", metavar="SCENARIO.toml...", nargs=-1, required=True,
                type=_INPUT)
@click.option("--seed", type=int, default=None,
              help="Override the seed of every scenario.")
@click.option("--seeds", type=SeedList(), default=None,
              help="Run each scenario with each of these seeds: N, A-B or a list like "
                   "1,3,5-7.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help=f"Runs at a time, each in its own process; 1 runs them one after the "
                   f"other in this process [default: the CPUs this process may use, "
                   f"{_usable_cpus()} here].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the CSVs (messages, migrations, programs, boards, actions, "
                   "faults) here; a sweep's into DIR/<file stem>/seed-<N>/.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--dashboard", is_flag=True, default=False,
              help="Follow the run in the dashboard's Fleet view on http://127.0.0.1:PORT/ "
                   "(read-only; one run only); it serves --out DIR's results afterwards, "
                   "until Ctrl-C.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=8080,
              show_default=True, help="The dashboard's port (127.0.0.1 only).")
@click.option("--realtime", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="FACTOR", help="With --dashboard: run at most FACTOR simulated "
              "seconds per wall-clock second [default: as fast as it can].")
def sim(scenario_files: tuple[Path, ...], seed: int | None, seeds: list[int] | None,
        jobs: int | None, out: Path | None, progress: bool, dashboard: bool,
        dashboard_port: int, realtime: float | None) -> None:
    """Run simulated scenarios (boards, programs, actions, faults) and summarise them.

    One SCENARIO.toml without --seeds is one run: it prints a per-board table and the
    migrations, and writes its six CSVs into --out DIR.

    Several scenarios, or --seeds, make a sweep: each scenario with each seed (without
    --seeds, its own seed or --seed), --jobs runs at a time, each in its own process.
    A sweep needs --out DIR, laid out as:

    \b
      DIR/runs.csv                 scenario, seed, folder, wall_s, ok, error
      DIR/<file stem>/seed-<N>/    that run's six CSVs

    For example `thingssim sim a.toml b.toml --seeds 1-8 --jobs 4 --out sweep` writes
    sweep/a/seed-1/ to sweep/b/seed-8/. Each folder's CSVs are byte-identical to a lone
    run of that scenario with that seed (only wall_s in runs.csv is measured). Every
    file is checked before any run starts. A run that fails is reported with its
    scenario and seed, its folder is left without CSVs, the other runs finish, and the
    exit code is 1.

    --dashboard serves the dashboard while one run goes (engines, programs, consoles,
    the scenario's actions and faults, in simulated time); the results are the same
    bytes with or without it.
    """
    if seed is not None and seeds is not None:
        raise click.UsageError("use either --seed or --seeds, not both")
    if realtime is not None and not dashboard:
        raise click.UsageError("--realtime paces a run followed with --dashboard: give "
                               "--dashboard too")
    if dashboard and (len(scenario_files) != 1 or seeds is not None):
        raise click.UsageError("--dashboard follows one run: give one SCENARIO.toml "
                               "without --seeds (a sweep's runs go in parallel; open "
                               "them afterwards with thingssim dashboard --results DIR)")
    if len(scenario_files) == 1 and seeds is None:
        _sim_one(scenario_files[0], seed, out, progress,
                 dashboard_port if dashboard else None, realtime)
        return
    if out is None:
        raise click.UsageError("a sweep (several scenarios, or --seeds) needs --out DIR: "
                               "each run writes DIR/<scenario file stem>/seed-<N>/")
    _sweep(scenario_files, [seed] if seed is not None else seeds, jobs or _usable_cpus(),
           out, progress)


def _sim_one(scenario_file: Path, seed: int | None, out: Path | None,
             progress: bool, dashboard_port: int | None = None,
             realtime: float | None = None) -> None:
    """One run, printed in full (followed in the dashboard on ``dashboard_port``)."""
    started = time.perf_counter()
    from tqdm import tqdm

    from .sim.scenario import Scenario, ScenarioError

    try:
        scenario = Scenario.from_toml(scenario_file)  # its errors start with the file name
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    if out is not None:
        _make_out_dir(out)
    bar = tqdm(total=scenario.duration, unit="sim-s", disable=not progress,
               desc=scenario.name, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim-s "
               "[{elapsed}<{remaining}]")

    feed = server = None
    if dashboard_port is not None:
        feed, server = _start_sim_dashboard(scenario, seed, out, dashboard_port, realtime)

    def advance(now: float) -> None:
        bar.update(now - bar.n)
        if feed is not None:
            feed.step(now)

    if feed is None:
        results = scenario.run(seed=seed, on_progress=advance)
    else:
        from .dashboard.simlive import steps_for

        try:
            results = scenario.run(seed=seed, on_progress=advance, on_world=feed.attach,
                                   steps=steps_for(scenario.duration))
        except BaseException:
            bar.close()
            server.stop()
            raise
    bar.close()
    click.echo(f"\n{scenario.name}: seed {scenario.seed if seed is None else seed}, "
               f"{scenario.duration:g} simulated seconds")
    click.echo(results.summary().to_string(index=False))
    if len(results.migrations):
        cols = ["code_name", "source", "target", "ok", "snapshot_bytes", "snapshot_s",
                "transfer_s", "restore_s", "commit_s", "total_s"]
        click.echo("\nmigrations:")
        click.echo(results.migrations[cols].to_string(index=False, float_format="%.4f"))
    failed = results.actions[results.actions["ok"] == False]  # noqa: E712
    if len(failed):
        click.echo("\nfailed actions:")
        click.echo(failed.to_string(index=False))
    if out is not None:
        try:
            paths = results.save(out)
        except OSError as exc:
            raise click.ClickException(f"--out {out}: {exc.strerror or exc}") from None
        click.echo(f"\nwritten: {', '.join(str(p) for p in paths)}")
    click.echo(f"run time: {time.perf_counter() - started:.1f} s")
    if server is not None:
        feed.finish(results=out is not None)
        click.echo(f"the dashboard on {server.url} shows the finished run"
                   f"{f' and the results of {out}' if out is not None else ''}; "
                   f"Ctrl-C stops it", err=True)
        try:
            while server.thread.is_alive():
                server.thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


def _start_sim_dashboard(scenario: Any, seed: int | None, out: Path | None, port: int,
                         realtime: float | None) -> tuple[Any, Any]:
    """The dashboard for one run, serving on 127.0.0.1:``port`` before it starts."""
    try:
        from .dashboard import simlive

        feed, server = simlive.start(scenario.name, scenario.duration,
                                     seed=scenario.seed if seed is None else seed, out=out,
                                     port=port, realtime=realtime)
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs {exc.name}: pip install "
                                   f"'thingssim[dashboard]'") from None
    except OSError as exc:
        raise click.ClickException(f"--dashboard-port {port}: {exc.strerror or exc}") \
            from None
    click.echo(f"thingssim dashboard on {server.url} (simulation {scenario.name}, "
               f"read-only)", err=True)
    return feed, server


def _sweep_run(scenario: Any, seed: int, folder: Path) -> tuple[float, str | None, str]:
    """One run of a sweep, in a pool process or in this one: ``(wall seconds, error,
    traceback)``, error None if its CSVs were written.  Module level, so that a pool
    process can find it by name."""
    started = time.perf_counter()
    try:
        scenario.run(seed=seed).save(folder)
    except Exception as exc:  # reported with its scenario and seed; the sweep goes on
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return time.perf_counter() - started, " ".join(error.split()), \
            traceback.format_exc()
    return time.perf_counter() - started, None, ""


def _sweep(scenario_files: tuple[Path, ...], seeds: list[int] | None, jobs: int,
           out: Path, progress: bool) -> None:
    started = time.perf_counter()
    from tqdm import tqdm

    from .sim.scenario import CSV_NAMES, Scenario, ScenarioError

    scenarios, errors = [], []
    for path in scenario_files:  # every file before any run
        try:
            scenarios.append(Scenario.from_toml(path))
        except ScenarioError as exc:
            errors.append(str(exc))
    if errors:
        for error in errors[:-1]:
            click.echo(f"Error: {error}", err=True)
        raise click.ClickException(errors[-1])
    by_stem: dict[str, Path] = {}
    for path in scenario_files:
        if path.stem in by_stem:
            raise click.ClickException(
                f"{by_stem[path.stem]} and {path} would both write {out / path.stem}: "
                "give each scenario file its own name")
        by_stem[path.stem] = path
    runs = [(path, scenario, n, out / path.stem / f"seed-{n}")
            for path, scenario in zip(scenario_files, scenarios)
            for n in (seeds if seeds is not None else [scenario.seed])]
    _make_out_dir(out)
    for *_, folder in runs:
        _make_out_dir(folder)

    outcomes: dict[int, tuple[float, str | None, str]] = {}
    bar = tqdm(total=len(runs), unit="run", desc="sim", disable=not progress)

    def done(i: int, outcome: tuple[float, str | None, str]) -> None:
        outcomes[i] = outcome
        path, _, n, folder = runs[i]
        if outcome[1] is not None:
            for name in (*CSV_NAMES, "gfs"):  # no CSVs, not even stale ones: a folder with CSVs
                try:  # is a run that worked
                    (folder / f"{name}.csv").unlink()
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    pass
            tqdm.write(f"run failed: {path} seed {n}:\n{outcome[2]}", file=sys.stderr,
                       end="")
        bar.update(1)

    workers = min(jobs, len(runs))
    if workers == 1:
        for i, (_, scenario, n, folder) in enumerate(runs):
            done(i, _sweep_run(scenario, n, folder))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # "spawn": each worker is a fresh interpreter, as a lone `thingssim sim` is.
        # fork would copy this process mid-flight (tqdm's monitor thread, imported
        # modules' state, open files): unsafe with threads, and deprecated by Python
        # 3.12 for that reason; forkserver is not on every platform.  Spawning costs an
        # import per worker (about a second), once per worker, not per run.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(_sweep_run, scenario, n, folder): i
                       for i, (_, scenario, n, folder) in enumerate(runs)}
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process died (BrokenProcessPool)
                    error = f"{type(exc).__name__}: {exc}"
                    outcome = (float("nan"), error, error + "\n")
                done(futures[future], outcome)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()

    index = out / "runs.csv"
    rows = [{"scenario": str(path), "seed": n, "folder": folder.relative_to(out).as_posix(),
             "wall_s": f"{outcomes[i][0]:.3f}", "ok": outcomes[i][1] is None,
             "error": outcomes[i][1] or ""}
            for i, (path, _, n, folder) in enumerate(runs)]
    try:
        with open(index, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise click.ClickException(f"--out {index}: {exc.strerror or exc}") from None
    width = max(len(r["scenario"]) for r in rows)
    click.echo(f"\n{'scenario':<{width}}  {'seed':>6}  ok     wall_s  folder")
    for r in rows:
        click.echo(f"{r['scenario']:<{width}}  {r['seed']:>6}  {'yes' if r['ok'] else 'NO':<5}"
                   f"{r['wall_s']:>9}  {r['folder']}")
    click.echo(f"\nwritten: {index} and {len(rows)} folders under {out}")
    click.echo(f"run time: {time.perf_counter() - started:.1f} s ({workers} "
               f"{'process' if workers == 1 else 'processes'})")
    failed = [r for r in rows if not r["ok"]]
    if failed:
        for r in failed:
            click.echo(f"failed: {r['scenario']} seed {r['seed']}: {r['error']}", err=True)
        raise click.ClickException(f"{len(failed)} of {len(rows)} runs failed "
                                   f"(see {index})")


_AUTH = [click.option("--username", "-u", default=None, help="Broker user name."),
         click.option("--password", "-p", default=None, envvar="THINGSSIM_PASSWORD",
                      help="Broker password (or THINGSSIM_PASSWORD).")]


def _auth(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_AUTH):
        fn = option(fn)
    return fn


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-v", "--verbose", is_flag=True)
def worker(config: Path, verbose: bool) -> None:
    """Run a worker (CodeEngine) on a real broker, programs in child processes."""
    from runtime import worker as w

    sys.exit(w.main([str(config)] + (["-v"] if verbose else [])))


def _broker_url(ctx: Any, param: Any, value: str) -> str:
    """A broker URL (mqtt:// or mqtts://, a port in 1-65535), checked before connecting."""
    from runtime.mqtt import parse_broker_url

    value = value if "://" in value else f"mqtt://{value}"
    try:
        parse_broker_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("url", callback=_broker_url)
@click.argument("action", type=click.Choice(["run", "pause", "resume", "kill", "migrate",
                                             "spawn", "status"]))
@click.argument("args", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds to wait for each reply.")
@_auth
def dispatch(url: str, action: str, args: tuple[str, ...], as_json: bool, timeout: float,
             username: str | None, password: str | None) -> None:
    """One command to the workers on broker URL, e.g. `dispatch mqtt://host run bbb1 p.py`.

    \b
    Actions: run ENGINE FILE [CODE_NAME], pause|resume|kill INSTANCE_ID,
    migrate INSTANCE_ID TARGET_ENGINE, spawn INSTANCE_ID TARGET_ENGINE..., status.
    """
    import asyncio
    import json

    from .remote import (
        USER_ERRORS,
        UsageError,
        check_args,
        connect,
        read_program,
        render,
        run_action,
    )

    try:  # before connecting: a wrong command needs no broker to be wrong
        check_args(action, list(args))
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    source = None
    if action == "run":
        try:
            source = read_program(args[1])
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None

    async def go() -> object:
        d = await connect(url, username=username, password=password, timeout=timeout)
        try:
            return await run_action(d, action, list(args), source=source)
        finally:
            d.kill()

    try:
        result = asyncio.run(go())
    except USER_ERRORS as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(json.dumps(result, indent=2, default=str) if as_json
               else render(result, action, args))


@main.command()
@click.argument("url", callback=_broker_url)
@_auth
def shell(url: str, username: str | None, password: str | None) -> None:
    """An interactive console over the workers on broker URL."""
    from .remote import USER_ERRORS, Shell

    try:
        console = Shell(url, username=username, password=password)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    console.cmdloop()


# ---------------------------------------------------------------- the global file system
_TLS = [click.option("--ca-certs", type=click.Path(dir_okay=False), default=None,
                     help="CA certificates (PEM) to check the broker with (mqtts://)."),
        click.option("--certfile", type=click.Path(dir_okay=False), default=None,
                     help="Client certificate (PEM)."),
        click.option("--keyfile", type=click.Path(dir_okay=False), default=None,
                     help="The client certificate's key (PEM, unencrypted)."),
        click.option("--tls-insecure", is_flag=True,
                     help="Do not check the broker certificate's host name.")]


def _tls(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_TLS):
        fn = option(fn)
    return fn


def _tls_dict(ca_certs: str | None, certfile: str | None, keyfile: str | None,
              tls_insecure: bool) -> dict | None:
    from runtime.gfs.server import tls_options

    return tls_options(ca_certs, certfile, keyfile, tls_insecure)


def _grants(ctx: Any, param: Any, value: tuple[str, ...]) -> list[str]:
    from runtime.gfs.paths import Grant

    for spec in value:
        try:
            Grant.parse(spec)
        except (ValueError, OSError) as exc:
            raise click.BadParameter(f"{spec}: {exc}", ctx, param) from None
    return list(value)


def _name(ctx: Any, param: Any, value: str | None) -> str | None:
    from runtime import protocol

    try:
        return None if value is None else protocol.check_name(param.opts[0], value)
    except protocol.ProtocolError as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


@main.command()
@click.option("--broker", "url", required=True, callback=_broker_url, metavar="URL",
              help="mqtt://host:1883 or mqtts://host:8883.")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="The SQLite file (created if missing).")
@click.option("--postgres", metavar="DSN", default=None,
              help="A PostgreSQL database instead (e.g. postgresql://gfs@db/gfs).")
@click.option("--id", "service_id", default="gfs", show_default=True, callback=_name,
              help="Service id: requests arrive on <id>/cmd.")
@click.option("--grant", "grants", multiple=True, callback=_grants,
              metavar="PROGRAMS:TARGET[:MOUNT][:MODE]",
              help="Show programs matching a glob a folder (repeatable), e.g. "
                   "'riot-*:/shared/models:r'.")
@click.option("--keepalive", type=FiniteFloat(min=0, min_open=True), default=10.0,
              show_default=True, help="MQTT keepalive (s).")
@_auth
@_tls
@click.option("-v", "--verbose", is_flag=True)
def gfs(url: str, db: Path | None, postgres: str | None, service_id: str,
        grants: list[str], keepalive: float, username: str | None, password: str | None,
        ca_certs: str | None, certfile: str | None, keyfile: str | None,
        tls_insecure: bool, verbose: bool) -> None:
    """Run the global file system service on broker URL (SQLite, or PostgreSQL)."""
    from runtime.gfs import server

    if (db is None) == (postgres is None):
        raise click.UsageError("give --db PATH (SQLite) or --postgres DSN, one of them")
    config = server.ServerConfig(
        broker=url, db=None if db is None else str(db), postgres=postgres, id=service_id,
        grants=grants, username=username, password=password, keepalive=keepalive,
        tls=_tls_dict(ca_certs, certfile, keyfile, tls_insecure))
    sys.exit(server.run(config, verbose))


_FS_OPTIONS = [
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    click.option("--as", "as_program", default=None, metavar="PROGRAM", callback=_name,
                 help="Act in that program's view: its namespace and granted folders."),
    click.option("--service", default=None, metavar="ID", callback=_name,
                 help="The GFS service's id (default gfs)."),
    click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=None,
                 help="Seconds to wait for each reply (default 30; one resend).")]


def _fs_options(fn):  # type: ignore[no-untyped-def]
    """Accepted by the group (before URL) and by each subcommand (after it)."""
    for option in reversed(_FS_OPTIONS):
        fn = option(fn)
    return fn


@main.group("fs", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("url", callback=_broker_url)
@_fs_options
@_auth
@_tls
@click.pass_context
def fs_group(ctx: click.Context, url: str, username: str | None, password: str | None,
             ca_certs: str | None, certfile: str | None, keyfile: str | None,
             tls_insecure: bool, **options: Any) -> None:
    """Files of the global file system on broker URL.  --json, --as, --service and
    --timeout go before URL or after the command; -u/-p and TLS options before URL.

    \b
    ls [PATH] [-l], cat PATH, put LOCAL REMOTE [-a], get REMOTE LOCAL (- for stdout),
    rm PATH... [-r], mkdir PATH... [-p], mv SRC DST, stat PATH.
    """
    ctx.obj = {"url": url, "tls": _tls_dict(ca_certs, certfile, keyfile, tls_insecure),
               "username": username, "password": password, **options}


def _fs_call(ctx: click.Context, options: dict, action: Any,
             errors: list | None = None) -> None:
    """Run ``action(client) -> Outcome`` and print it; errors in one line, exit 1."""
    import json

    from . import fs

    given = {k: v if v not in (None, False) else ctx.obj.get(k) for k, v in options.items()}
    settings = fs.Options(url=ctx.obj["url"], service=given["service"] or "gfs",
                          as_program=given["as_program"], username=ctx.obj["username"],
                          password=ctx.obj["password"], tls=ctx.obj["tls"],
                          timeout=given["timeout"] or 30.0)
    errors = [] if errors is None else errors
    try:
        outcome = fs.run(settings, lambda client: action(client, bool(given["as_json"])))
    except fs.USER_ERRORS as exc:
        errors.append(exc)
        outcome = None
    if outcome is not None and given["as_json"] and outcome.value is not None:
        click.echo(json.dumps(outcome.value, indent=2))
    elif outcome is not None and outcome.text:
        click.echo(outcome.text)
    for exc in errors:
        click.echo(f"thingssim fs: {fs.describe(exc, settings)}", err=True)
    if errors:
        ctx.exit(1)


@fs_group.command("ls")
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Kind, size, modification time.")
@_fs_options
@click.pass_context
def fs_ls(ctx: click.Context, path: str, long: bool, **options: Any) -> None:
    """List a directory (or show a file)."""
    from . import fs

    _fs_call(ctx, options, lambda c, _: fs.ls(c, path, long))


@fs_group.command("cat")
@click.argument("path")
@_fs_options
@click.pass_context
def fs_cat(ctx: click.Context, path: str, **options: Any) -> None:
    """Print a file's bytes."""
    from . import fs

    _fs_call(ctx, options, lambda c, as_json: fs.cat(c, path, as_json))


@fs_group.command("put")
@click.argument("local")
@click.argument("remote")
@click.option("-a", "--append", is_flag=True, help="Append to the file (one atomic record).")
@_fs_options
@click.pass_context
def fs_put(ctx: click.Context, local: str, remote: str, append: bool, **options: Any) -> None:
    """Copy a local file (- for stdin) to the GFS as one atomic write, in pieces."""
    from . import fs

    _fs_call(ctx, options, lambda c, _: fs.put(c, local, remote, "a" if append else "w"))


@fs_group.command("get")
@click.argument("remote")
@click.argument("local")
@_fs_options
@click.pass_context
def fs_get(ctx: click.Context, remote: str, local: str, **options: Any) -> None:
    """Copy a GFS file to a local file (- for stdout)."""
    from . import fs

    _fs_call(ctx, options, lambda c, _: fs.get(c, remote, local))


@fs_group.command("rm")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-r", "recursive", is_flag=True, help="Directories too, with their content.")
@_fs_options
@click.pass_context
def fs_rm(ctx: click.Context, paths: tuple[str, ...], recursive: bool,
          **options: Any) -> None:
    """Remove files (and directories with -r)."""
    from . import fs

    errors: list = []
    _fs_call(ctx, options, lambda c, _: fs.rm(c, paths, recursive, errors), errors)


@fs_group.command("mkdir")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-p", "parents", is_flag=True, help="Make parents; no error if it exists.")
@_fs_options
@click.pass_context
def fs_mkdir(ctx: click.Context, paths: tuple[str, ...], parents: bool,
             **options: Any) -> None:
    """Make directories."""
    from . import fs

    errors: list = []
    _fs_call(ctx, options, lambda c, _: fs.mkdir(c, paths, parents, errors), errors)


@fs_group.command("mv")
@click.argument("src")
@click.argument("dst")
@_fs_options
@click.pass_context
def fs_mv(ctx: click.Context, src: str, dst: str, **options: Any) -> None:
    """Rename SRC to DST atomically (os.rename's rules: DST is the new name)."""
    from . import fs

    _fs_call(ctx, options, lambda c, _: fs.mv(c, src, dst))


@fs_group.command("stat")
@click.argument("path")
@_fs_options
@click.pass_context
def fs_stat(ctx: click.Context, path: str, **options: Any) -> None:
    """Kind, size, modification time and version of a path."""
    from . import fs

    _fs_call(ctx, options, lambda c, _: fs.stat(c, path))


def _register_plugins() -> None:
    """Commands that live next to what they drive."""
    from .broker import broker_command
    from .calibrate import calibrate_command
    from .dashboard.cli import build_command
    from .experiment.cli import experiment_command, report_command
    from .lab import lab_group
    from .riot.cli import riot_command

    main.add_command(calibrate_command, "calibrate")
    main.add_command(broker_command, "broker")
    main.add_command(lab_group, "lab")
    main.add_command(riot_command, "riot")
    main.add_command(experiment_command, "experiment")
    main.add_command(report_command, "report")
    main.add_command(build_command(_broker_url, _auth, _tls, _tls_dict), "dashboard")


_register_plugins()

if __name__ == "__main__":  # pragma: no cover
    main()


# ---------------------------------------------------------------- the scheduler
@main.command("scheduler")
@click.argument("url", callback=_broker_url)
@click.option("--db", type=click.Path(path_type=Path), required=True,
              help="The SQLite file (created if missing); a standby shares it.")
@click.option("--id", "scheduler_id", default="things-scheduler", show_default=True,
              callback=_name, help="Scheduler id: commands arrive on <id>/cmd.")
@click.option("--policy", default="best-fit", show_default=True,
              help="Placement policy (thingsjs, first-fit, best-fit, worst-fit, "
                   "network-aware, rebalance, exact).")
@click.option("--rebalance-policy", default=None,
              help="Policy for cycles after a board joins or is overloaded.")
@click.option("--checkpoint-s", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Checkpoint every running program this often (0: never).")
@click.option("--fence-margin-s", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Waited on top of a dead engine's fence time before recovering.")
@click.option("--period-s", type=FiniteFloat(min=0, min_open=True), default=10.0,
              show_default=True)
@click.option("--lease-s", type=FiniteFloat(min=0, min_open=True), default=6.0,
              show_default=True, help="The active scheduler's lease in the store.")
@click.option("--gfs", "gfs_id", default=None, metavar="ID",
              help="Keep checkpoints in this GFS service's /checkpoints instead.")
@click.option("--standby", is_flag=True,
              help="Expect to start as a standby (the lease decides in any case).")
@_auth
@click.option("-v", "--verbose", is_flag=True)
def scheduler_cmd(url: str, db: Path, scheduler_id: str, policy: str,
                  rebalance_policy: str | None, checkpoint_s: float, fence_margin_s: float,
                  period_s: float, lease_s: float, gfs_id: str | None, standby: bool,
                  username: str | None, password: str | None, verbose: bool) -> None:
    """Run the scheduler on broker URL until Ctrl-C or SIGTERM."""
    from runtime.scheduler import server

    config = server.ServerConfig(broker=url, db=str(db), id=scheduler_id, policy=policy,
                                 rebalance_policy=rebalance_policy, checkpoint_s=checkpoint_s,
                                 fence_margin_s=fence_margin_s, period_s=period_s,
                                 lease_s=lease_s, standby=standby, gfs=gfs_id,
                                 username=username, password=password)
    sys.exit(server.run(config, verbose))


def _render_app(app: dict) -> str:
    lines = [f"{app['token']}  {app['name']}  {app['status']}" +
             (f"  ({app['reason']})" if app.get("reason") else "")]
    for _key, inst in sorted((app.get("instances") or {}).items()):
        lines.append(f"  {inst['id']:<32} {inst.get('engine') or '-':<16} {inst['status']}")
    for failure in app.get("failed") or ():
        lines.append(f"  failed: {failure}")
    return "\n".join(lines)


@main.command("schedule")
@click.argument("url", callback=_broker_url)
@click.argument("action", type=click.Choice(["submit", "pause", "resume", "kill", "status"]))
@click.argument("arg", required=False)
@click.option("--id", "scheduler_id", default="things-scheduler", show_default=True,
              callback=_name)
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=30.0,
              show_default=True)
@_auth
def schedule(url: str, action: str, arg: str | None, scheduler_id: str, as_json: bool,
             timeout: float, username: str | None, password: str | None) -> None:
    """Talk to the scheduler on broker URL.

    \b
    submit APP.toml | pause TOKEN | resume TOKEN | kill TOKEN | status [TOKEN]
    """
    import asyncio
    import json
    import uuid

    from runtime.rpc import RemoteError, RequestTimeout
    from runtime.scheduler.model import SchedulerError

    if action != "status" and not arg:
        raise click.UsageError(f"{action} needs {'APP.toml' if action == 'submit' else 'TOKEN'}")
    app = None
    if action == "submit":
        from runtime.scheduler.appfile import load_application

        try:
            app = load_application(arg)
        except (SchedulerError, OSError) as exc:
            raise click.ClickException(str(exc)) from None

    async def go() -> object:
        from runtime.clock import AsyncioClock
        from runtime.mqtt import MqttTransport
        from runtime.scheduler.client import SchedulerClient

        loop = asyncio.get_running_loop()
        client_id = f"schedule-{uuid.uuid4().hex[:8]}"
        transport = MqttTransport(url, client_id=client_id, loop=loop, username=username,
                                  password=password, io="asyncio")
        client = SchedulerClient(transport, AsyncioClock(loop), scheduler_id, timeout,
                                 client_id=client_id)
        transport.connect()
        for _ in range(100):
            if transport.connected:
                break
            await asyncio.sleep(0.05)
        else:
            raise OSError(f"cannot connect to {url}")
        try:
            if action == "submit":
                return await client.submit(app)
            if action == "status":
                return await client.status(arg)
            return await getattr(client, action)(arg)
        finally:
            transport.close()

    try:
        result = asyncio.run(go())
    except RemoteError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    except RequestTimeout:
        raise click.ClickException(f"no answer from scheduler {scheduler_id!r} within "
                                   f"{timeout:g} s (is it running?)") from None
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    elif action == "status" and not arg:
        click.echo(f"scheduler {result['id']}: {result['holder']} {result['role']} "
                   f"(term {result['term']}), {len(result.get('engines', {}))} engines")
        for token in sorted(result["apps"]):
            click.echo(_render_app(result["apps"][token]))
    else:
        click.echo(_render_app(result))
