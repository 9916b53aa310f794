"""Run a RIoTBench dataflow: on virtual boards in a simulated world, or on real workers.

The same :class:`Deployment` does both: it puts the files the programs need in the
global file system, starts the sink, every stage and the source on their engines
(through the :class:`~runtime.dispatcher.Dispatcher`), waits until every program says it
is ready, tells the source to start, carries out scheduled actions (migrations) while
the stream flows, and ends when the sink has seen every input stream end (or after a
grace period).  It only reacts to futures and clock callbacks, so it runs on the SimPy
clock of a :class:`~thingssim.sim.world.World` and on asyncio alike.
:func:`run_sim` and :func:`run_real` are the two drivers; both return a
:class:`~thingssim.riot.measure.Measurement`.

Input: the dataset's sample (or ``input``: a SenML CSV file, or ``"synthetic"`` for
:func:`thingssim.riot.generate.generate`), replayed by
:func:`thingssim.riot.replay.replay` at ``rate`` messages per second (or at its recorded
timestamps divided by ``speedup``), looped until ``duration``.  Up to ``embed_lines``
lines travel inside the source program; longer inputs go to the file system in parts
of ``part_lines`` that the source reads as it goes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from runtime.future import gather, settle

from . import programs
from .dataflows import GRANT, SHARED, Dataflow, build, topic
from .datasets import dataset_name, sample_path
from .measure import Collector, Measurement
from .replay import replay

__all__ = ["Deployment", "RunSpec", "RunResult", "load_placement", "run_real", "run_sim",
           "schedule"]

DEFAULT_BOARDS = (("pi", "raspberry-pi-3", 3),)


@dataclass
class RunSpec:
    """What to run and how (see the module docstring)."""

    flow: str = "ETL"
    dataset: str = "TAXI"
    rate: float = 100.0
    duration: float = 10.0
    input: Optional[str] = None
    speedup: Optional[float] = None
    seed: int = 1
    placement: Optional[dict[str, str]] = None
    record: bool = False
    report_s: float = 1.0
    drain_s: float = 30.0  # after the last message is due, how long the sink may take
    ready_s: float = 60.0  # how long the programs may take to start
    embed_lines: int = 3000
    part_lines: int = 2000
    #: while the stream flows: ``{"at": seconds after the start, "type": "migrate",
    #: "stage": name, "to": engine}`` (also pause/resume/kill of a stage, and ``"call"``
    #: with ``"fn": fn(deployment)``)
    actions: list[dict] = field(default_factory=list)
    run_id: Optional[str] = None
    model_topic: Optional[str] = None

    def run_name(self) -> str:
        return self.run_id or f"{self.flow.lower()}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunResult:
    """A run's measurement, plus what happened to the programs."""

    measurement: Measurement
    actions: pd.DataFrame
    migrations: pd.DataFrame
    placement: dict[str, str]
    consoles: dict[str, list[str]]
    wall_s: float

    def save(self, out: str | Path) -> list[Path]:
        written = self.measurement.save(out)
        for name in ("actions", "migrations"):
            frame = getattr(self, name)
            if len(frame):
                path = Path(out) / f"{name}.csv"
                frame.to_csv(path, index=False, float_format="%.6g", lineterminator="\n")
                written.append(path)
        return written


def schedule(spec: RunSpec) -> list[tuple[float, str]]:
    """The source's ``(due seconds, line)`` pairs for ``spec``."""
    ds = dataset_name(spec.dataset)
    until = spec.duration - (0.5 / spec.rate if spec.speedup is None else 0.0)
    kind = {"rate": spec.rate} if spec.speedup is None else {"speedup": spec.speedup}
    if spec.input == "synthetic":
        from .generate import generate

        count = int(spec.rate * spec.duration) + 1 if spec.speedup is None else 100_000
        return list(replay(generate(ds, count, spec.seed), until=until, **kind))
    path = sample_path(ds) if spec.input is None else Path(spec.input)
    return list(replay(path, loop=True, until=until, **kind))


def load_placement(path: str | Path) -> dict[str, str]:
    """A placement file: JSON or TOML ``{stage: engine}`` (``source``, ``sink`` included;
    stages not named are placed round robin)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: a placement is a table of stage = engine names")
    return dict(data)


class Deployment:
    """One run of a dataflow on a dispatcher's engines (see the module docstring)."""

    def __init__(self, spec: RunSpec, flow: Dataflow, dispatcher: Any, clock: Any,
                 engines: list[str], put_files: Callable[[dict[str, bytes]], Any]) -> None:
        self.spec, self.flow, self.d, self.clock = spec, flow, dispatcher, clock
        self.run = spec.run_name()
        self.engines = list(engines)
        self.put_files = put_files
        if not self.engines:
            raise ValueError("no engine to run the dataflow on")
        self.placement = self._place(spec.placement or {})
        self.collector = Collector(self.run, [s.name for s in flow.stages], spec.record)
        self.collector.attach(dispatcher.transport, clock.now)
        self.instances: dict[str, str] = {}
        self.state = "new"
        self.error: Optional[str] = None
        self.started_at: Optional[float] = None
        self.finished = False
        self.actions: list[dict] = []
        self.lines = schedule(spec)
        self._deadline = 0.0
        self._started_tick = 0.0
        self._timer: Any = None

    def _place(self, given: dict[str, str]) -> dict[str, str]:
        names = self.flow.names
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"placement names no stage of {self.flow.name}: "
                             f"{', '.join(unknown)} (stages: {', '.join(names)})")
        bad = sorted({e for e in given.values() if e not in self.engines})
        if bad:
            raise ValueError(f"placement names unknown engines {', '.join(bad)} "
                             f"(engines: {', '.join(self.engines)})")
        cycle = itertools.cycle(self.engines)
        return {name: given.get(name) or next(cycle) for name in names}

    # ------------------------------------------------------------------ programs
    def sources(self) -> dict[str, str]:
        """Every program's source, by name."""
        spec, run = self.spec, self.run
        out = {}
        common = {"run": run, "flow": self.flow.name, "report_s": spec.report_s,
                  "ready_topic": f"riot/{run}/ready"}
        for name, s in self.flow.specs(run, report_s=spec.report_s,
                                       model_topic=spec.model_topic).items():
            if self.flow.stage(name).role == "predict":  # its first model, at start
                s["files"]["__model__"] = f"{self.flow.model_dir()}/{s['analytic_type']}.json"
            out[name] = programs.task_program(s)
        embed = len(self.lines) <= spec.embed_lines
        out["source"] = programs.source_program({
            **common, "output": topic(run, "source"), "stats_topic": f"riot/{run}/stats/source",
            "start_topic": f"riot/{run}/start", "low_water": spec.part_lines // 2,
            "lines": [[due, line] for due, line in self.lines] if embed else None,
            "parts": [] if embed else [f"/riot/input/{run}/part-{k:05d}.tsv" for k in
                                       range(-(-len(self.lines) // spec.part_lines))]})
        out["sink"] = programs.sink_program({
            **common, "inputs": [topic(run, s) for s in self.flow.sink_inputs],
            "report_topic": f"riot/{run}/report"})
        return out

    def files(self) -> dict[str, bytes]:
        files = self.flow.gfs_files()
        if len(self.lines) > self.spec.embed_lines:
            size = self.spec.part_lines
            for k, i in enumerate(range(0, len(self.lines), size)):
                text = "".join(f"{due!r}\t{line}\n" for due, line in self.lines[i:i + size])
                files[f"{SHARED}/input/{self.run}/part-{k:05d}.tsv"] = text.encode()
        return files

    # ------------------------------------------------------------------ the run
    def start(self) -> None:
        self.state = "files"
        pending = self.put_files(self.files())
        if pending is None:
            self._launch()
        else:
            pending.add_done_callback(lambda f: self._fail(f"files: {f.exception()}")
                                      if f.exception() else self._launch())

    def _launch(self) -> None:
        self.state = "starting"
        sources = self.sources()
        order = ["sink", *reversed([s.name for s in self.flow.stages]), "source"]
        futures = [self.d.run_code(self.placement[n], self.flow.code_name(n), sources[n])
                   for n in order]
        gather(self.clock.create_future, futures).add_done_callback(
            lambda f: self._launched(order, f.result()))

    def _launched(self, order: list[str], results: list) -> None:
        errors = []
        for name, (ok, value) in zip(order, results):
            if ok:
                self.instances[name] = value["id"]
                self.collector.instances.add(value["id"])
            else:
                errors.append(f"{name}: {value}")
        if errors:
            self._fail("could not start " + "; ".join(errors))
            return
        self.state = "ready"
        self._deadline = self.clock.now() + self.spec.ready_s
        self._tick()

    def _tick(self) -> None:
        self._timer = None
        if self.finished:
            return
        now = self.clock.now()
        c = self.collector
        crashed = [n for n, iid in self.instances.items()
                   if getattr(self.d.programs.get(iid), "status", None) == "Crashed"]
        if crashed:
            self._fail(f"crashed: {', '.join(crashed)}{self._consoles_hint(crashed)}")
            return
        if self.state == "ready":
            if set(self.flow.names) <= c.ready:
                self.state = "running"
                self.started_at = now
                last_due = self.lines[-1][0] if self.lines else 0.0
                self._deadline = now + last_due + self.spec.drain_s
                for action in sorted(self.spec.actions, key=lambda a: a["at"]):
                    self.clock.call_later(float(action["at"]), lambda a=action: self._act(a))
                self.d.transport.publish(f"riot/{self.run}/start", b"{}", qos=1)
                self._started_tick = now
            elif now > self._deadline:
                missing = sorted(set(self.flow.names) - c.ready)
                self._fail(f"not ready after {self.spec.ready_s:g} s: {', '.join(missing)}"
                           f"{self._consoles_hint(missing)}")
                return
        elif self.state == "running" and not c.sent() and now - self._started_tick > 0.5:
            self._started_tick = now  # the source has not started: the start was lost
            self.d.transport.publish(f"riot/{self.run}/start", b"{}", qos=1)
        if self.state == "running" and (c.sink_done or now > self._deadline):
            self.state = "draining"  # the stages' last counters are on their way
            self._deadline = min(self._deadline, now + 2 * self.spec.report_s)
        if self.state == "draining" and (c.ended() >= {s.name for s in self.flow.stages}
                                         or now > self._deadline):
            self._stop()
            return
        self._timer = self.clock.call_later(0.05, self._tick)

    def _consoles_hint(self, names: list[str]) -> str:
        lines = []
        for name in names:
            prog = self.d.programs.get(self.instances.get(name, ""))
            if prog is not None and (prog.error or prog.status not in ("Running", "Paused")):
                lines.append(f"\n  {name}: {prog.status} {(prog.error or '').strip()[-400:]}")
        return "".join(lines)

    def _act(self, action: dict) -> None:
        if self.finished:
            return
        stage, kind = action.get("stage"), action.get("type", "migrate")
        row = {"at": self.clock.now() - (self.started_at or 0.0), "type": kind,
               "stage": stage, "from": self.placement.get(stage), "to": action.get("to"),
               "ok": None, "total_s": None, "error": None}
        self.actions.append(row)
        try:
            if kind == "call":  # a hook for tests and experiments: fn(deployment)
                action["fn"](self)
                row["ok"] = True
                return
            iid = self.instances[stage]
            if kind == "migrate":
                fut = self.d.move_code(self.placement[stage], action["to"],
                                       self.flow.code_name(stage), iid)
            else:
                fut = getattr(self.d, f"{kind}_code")(iid)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            return

        def done(f: Any) -> None:
            error = f.exception()
            row["ok"] = error is None
            if error is not None:
                row["error"] = f"{type(error).__name__}: {error}"
            elif kind == "migrate":
                self.placement[stage] = action["to"]
                row["total_s"] = (f.result().get("migration") or {}).get("total_s")

        fut.add_done_callback(done)

    def _fail(self, why: str) -> None:
        self.error = why
        self._stop()

    def _stop(self) -> None:
        self.state = "stopping"
        futures = []
        for iid in self.instances.values():
            try:
                futures.append(self.d.kill_code(iid))
            except Exception:  # noqa: BLE001 - already gone
                continue
        if not futures:
            self._finished()
            return
        gather(self.clock.create_future, futures).add_done_callback(
            lambda _: self._finished())

    def _finished(self) -> None:
        self.state = "finished"
        self.finished = True

    # ------------------------------------------------------------------ results
    def measurement(self, mode: str) -> Measurement:
        meta = {"flow": self.flow.name, "dataset": self.flow.dataset, "mode": mode,
                "rate": self.spec.rate if self.spec.speedup is None else None,
                "duration": self.spec.duration, "sink_inputs": list(self.flow.sink_inputs),
                "resource_period": 1.0,
                "programs": {n: {"engine": self.placement[n],
                                 "instance_id": self.instances.get(n, "")}
                             for n in self.flow.names},
                "inputs": {**{s.name: list(s.inputs) for s in self.flow.stages},
                           "sink": list(self.flow.sink_inputs)}}
        return Measurement.from_collector(self.collector, meta)

    def consoles(self) -> dict[str, list[str]]:
        out = {}
        for name, iid in self.instances.items():
            prog = self.d.programs.get(iid)
            if prog is not None and (prog.console or prog.error):
                out[name] = list(prog.console) + ([prog.error] if prog.error else [])
        return out

    def result(self, mode: str, migrations: list[dict], wall_s: float) -> RunResult:
        if self.error is not None:
            raise RuntimeError(f"RIoTBench {self.flow.name} run {self.run} failed: {self.error}")
        mine = set(self.instances.values())
        return RunResult(self.measurement(mode), pd.DataFrame(self.actions),
                         pd.DataFrame([m for m in migrations if m["instance_id"] in mine]),
                         dict(self.placement), self.consoles(), wall_s)


class _Progress:
    """A tqdm bar over the messages the source sends (or nothing)."""

    def __init__(self, total: int, enabled: bool, label: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="msg", leave=False)

    def update(self, c: Collector) -> None:
        if self.bar is not None:
            self.bar.n = min(self.bar.total, c.sent())
            self.bar.set_postfix(at_sink=c.received(), refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -------------------------------------------------------------------------- simulation
def default_world(seed: int = 1, boards: tuple = DEFAULT_BOARDS, **options: Any) -> Any:
    """Three Raspberry Pi 3 and a file-system node, no message trace (long runs)."""
    from thingssim.sim.world import World

    world = World(seed, trace=False, **options)
    for prefix, profile, count in boards:
        for i in range(1, count + 1):
            world.add_board(f"{prefix}-{i}", profile)
    world.add_gfs("gfs", grants=[GRANT])
    return world


def world_from_scenario(scenario: Any, seed: Optional[int] = None) -> Any:
    """A world with the scenario's boards, broker, cost model, file system (the RIoTBench
    grant added, or a file system of its own) and faults; its programs run beside the
    dataflow, its actions are not used (give migrations of stages as ``RunSpec.actions``)."""
    world = scenario.build_world(seed, trace=False, grants=[GRANT])
    if not world.gfs:
        world.add_gfs("gfs", grants=[GRANT])
    scenario.schedule_faults(world)
    return world


def run_sim(spec: RunSpec, world: Any = None, *, scenario: Any = None,
            progress: bool = False, step: float = 0.25) -> RunResult:
    """Run ``spec`` in a simulated world (default: :func:`default_world`)."""
    started = time.perf_counter()
    if world is None:
        world = world_from_scenario(scenario, spec.seed) if scenario is not None \
            else default_world(spec.seed)
    gfs = next(iter(world.gfs.values()), None)
    if gfs is None:
        raise ValueError("the world needs a file system node (world.add_gfs(grants=[GRANT]))")
    d = world.dispatcher or world.add_dispatcher()
    for prog in getattr(scenario, "programs", []) or []:
        world.at(prog.at, lambda p=prog: d.run_code(p.board, p.name, p.source))
    world.run(world.clock.now() + 1.0)  # engines register
    engines = sorted(name for name, b in world.boards.items() if b.up)
    flow = build(spec.flow, spec.dataset)

    def put(files: dict[str, bytes]) -> None:
        gfs.preload(files)

    dep = Deployment(spec, flow, d, world.clock, engines, put)
    bar = _Progress(len(dep.lines), progress, f"{flow.name} (simulated)")
    dep.start()
    limit = world.clock.now() + spec.ready_s + spec.duration + spec.drain_s + 60.0
    try:
        while not dep.finished and world.clock.now() < limit:
            world.run(world.clock.now() + step)
            bar.update(dep.collector)
    finally:
        bar.close()
    if not dep.finished:
        dep.error = dep.error or f"did not finish by simulated time {limit:g} s"
    migrations = [m for b in world.boards.values() for m in b.engine.migrations] + \
        [m for e in world.retired_engines for m in e.migrations]
    return dep.result("sim", migrations, time.perf_counter() - started)


# -------------------------------------------------------------------------- real boards
async def _real(spec: RunSpec, url: str, *, username: Optional[str], password: Optional[str],
                progress: bool, discover: float, gfs_db: Optional[str]) -> RunResult:
    from runtime.clock import AsyncioClock
    from runtime.dispatcher import Dispatcher
    from runtime.gfs.remote import GfsClient
    from runtime.mqtt import MqttTransport

    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    client_id = f"riot-{uuid.uuid4().hex[:8]}"
    transport = MqttTransport(url, client_id=client_id, loop=loop, username=username,
                              password=password, io="asyncio")
    clock = AsyncioClock(loop)
    d = Dispatcher(transport, clock, {"id": client_id, "request_timeout": 30.0})
    gfs_state: dict[str, Any] = {}
    transport.subscribe("gfs/state", lambda m: gfs_state.update(
        json.loads(m.payload) if m.payload else {}), qos=1)
    d.start()
    server = None
    try:
        await asyncio.sleep(discover)
        if not transport.connected:
            raise OSError(f"cannot connect to {url}: "
                          f"{getattr(transport, 'connect_error', None) or 'no answer'}")
        engines = sorted(e.id for e in d.engines.values() if e.status != "dead")
        if gfs_state.get("status") != "up":
            server = _start_gfs(url, gfs_db, username, password)
            deadline = loop.time() + 20.0
            while gfs_state.get("status") != "up":
                if loop.time() > deadline or server.poll() is not None:
                    raise OSError("the file service did not start "
                                  f"(exit code {server.poll()})")
                await asyncio.sleep(0.05)
        fs = GfsClient(transport, clock, timeout=60.0)
        flow = build(spec.flow, spec.dataset)

        def put(files: dict[str, bytes]) -> Any:
            return _put_files(fs, clock, files)

        dep = Deployment(spec, flow, d, clock, engines, put)
        bar = _Progress(len(dep.lines), progress, f"{flow.name} (real)")
        dep.start()
        limit = loop.time() + spec.ready_s + spec.duration + spec.drain_s + 60.0
        try:
            while not dep.finished and loop.time() < limit:
                await asyncio.sleep(0.1)
                bar.update(dep.collector)
        finally:
            bar.close()
        if not dep.finished:
            dep.error = dep.error or "did not finish in time"
        migrations = []
        for row in dep.actions:  # the dispatcher's answer carries the phases
            if row.get("ok"):
                migrations.append({"instance_id": dep.instances[row["stage"]], **row})
        return dep.result("real", migrations, time.perf_counter() - started)
    finally:
        d.kill()
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


def _put_files(fs: Any, clock: Any, files: dict[str, bytes]) -> Any:
    """Make the folders, then write the files, through a GfsClient; the future fails
    with the first error."""
    out = clock.create_future()
    folders = sorted({path.rpartition("/")[0] for path in files})

    def check(results: list) -> bool:
        errors = [value for ok, value in results if not ok]
        if errors:
            settle(out, error=errors[0])
        return not errors

    def written(f: Any) -> None:
        if check(f.result()):
            settle(out, None)

    def made(f: Any) -> None:
        if check(f.result()):
            gather(clock.create_future, [fs.write_file(path, data) for path, data in
                                         files.items()]).add_done_callback(written)

    gather(clock.create_future, [fs.mkdir(folder, parents=True, exist_ok=True)
                                 for folder in folders]).add_done_callback(made)
    return out


def _start_gfs(url: str, db: Optional[str], username: Optional[str],
               password: Optional[str]) -> subprocess.Popen:
    """A file service for the run (none answered on the broker), with the RIoTBench grant."""
    db = db or os.path.join(tempfile.mkdtemp(prefix="riot-gfs-"), "gfs.db")
    cmd = [sys.executable, "-m", "runtime.gfs.server", "--broker", url, "--db", db,
           "--grant", GRANT]
    if username:
        cmd += ["-u", username]
    env = dict(os.environ)
    if password:
        env["THINGSSIM_PASSWORD"] = password
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_real(spec: RunSpec, url: str, *, username: Optional[str] = None,
             password: Optional[str] = None, progress: bool = False, discover: float = 1.0,
             gfs_db: Optional[str] = None) -> RunResult:
    """Run ``spec`` on the workers connected to broker ``url`` (placement round robin over
    them unless ``spec.placement`` says).  Starts a file service for the run when none is
    up (``gfs/state``); an existing one must grant ``riot-*`` the folder
    ``/shared/riot`` as ``/riot`` (:data:`~thingssim.riot.dataflows.GRANT`)."""
    return asyncio.run(_real(spec, url, username=username, password=password,
                             progress=progress, discover=discover, gfs_db=gfs_db))
