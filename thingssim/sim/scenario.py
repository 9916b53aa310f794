"""Scenarios: boards, programs, dispatcher actions and faults at given times, as a Python
object or a TOML file, run into pandas DataFrames (and CSV files).

TOML layout (every key optional unless marked)::

    name = "migration-chain"
    seed = 1
    duration = 60.0                   # simulated seconds (required)
    keepalive = 10.0
    [broker]   service_time = 5e-5    # thingssim.sim.network.BrokerProfile fields
    [cost]     mode = "fixed"         # thingssim.sim.world.CostModel fields
    [dispatcher] profile = "desktop-vm"
    [[boards]]   name = "bbb" (required), profile = "beaglebone-black", count = 1,
                 resource_period = 1.0, and any BoardProfile field as an override
    [[programs]] name (required), file (relative to the TOML) or source, board, at = 0.0
    [[actions]]  at, type = run|migrate|pause|resume|kill|spawn, program, to
    [[faults]]   at, type = crash|reboot|link_down|link_up|broker_down|broker_up,
                 board, duration (recover after that many seconds)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from runtime.dispatcher import UnknownEngine, UnknownProgram

from .network import BrokerProfile
from .world import CostModel, World

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ScenarioError(ValueError):
    """A scenario that cannot run, with the reason."""


@dataclass
class BoardSpec:
    name: str
    profile: str = "raspberry-pi-3"
    count: int = 1
    resource_period: float | None = 1.0
    overrides: dict = field(default_factory=dict)

    def names(self) -> list[str]:
        return [self.name] if self.count == 1 else \
            [f"{self.name}-{i}" for i in range(1, self.count + 1)]


@dataclass
class ProgramSpec:
    name: str
    source: str
    board: str
    at: float = 0.0


@dataclass
class ActionSpec:
    at: float
    type: str
    program: str
    to: Any = None


@dataclass
class FaultSpec:
    at: float
    type: str
    board: str | None = None
    duration: float | None = None


#: how long an action waits for its engine or program to be known to the dispatcher
_DISCOVERY_WAIT = 10.0
_UNDO = {"crash": "reboot", "link_down": "link_up", "broker_down": "broker_up"}
ACTIONS = ("run", "migrate", "pause", "resume", "kill", "spawn")
FAULTS = ("crash", "reboot", "link_down", "link_up", "broker_down", "broker_up")


@dataclass
class Scenario:
    duration: float
    boards: list[BoardSpec] = field(default_factory=list)
    programs: list[ProgramSpec] = field(default_factory=list)
    actions: list[ActionSpec] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    seed: int = 0
    name: str = "scenario"
    keepalive: float = 10.0
    broker: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    dispatcher: dict = field(default_factory=dict)
    trace: bool = True

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
        return cls.from_dict(data, base_dir=path.parent)

    @classmethod
    def from_dict(cls, data: dict, base_dir: Path | None = None) -> Scenario:
        base_dir = base_dir or Path.cwd()
        top = {"name", "seed", "duration", "keepalive", "broker", "cost", "dispatcher",
               "boards", "programs", "actions", "faults", "trace"}
        _no_unknown("scenario", data, top)
        if "duration" not in data:
            raise ScenarioError("scenario needs a 'duration' (simulated seconds)")
        boards = []
        for item in data.get("boards", []):
            item = dict(item)
            spec = BoardSpec(name=_required("boards", item, "name"),
                             profile=item.pop("profile", "raspberry-pi-3"),
                             count=int(item.pop("count", 1)),
                             resource_period=item.pop("resource_period", 1.0))
            item.pop("name")
            spec.overrides = item
            boards.append(spec)
        programs = []
        for item in data.get("programs", []):
            _no_unknown("programs", item, {"name", "file", "source", "board", "at"})
            if "source" in item:
                source = item["source"]
            elif "file" in item:
                file = base_dir / item["file"]
                if not file.is_file():
                    raise ScenarioError(f"program {item.get('name')!r}: no file {file}")
                source = file.read_text(encoding="utf-8")
            else:
                raise ScenarioError(f"program {item.get('name')!r} needs 'file' or 'source'")
            programs.append(ProgramSpec(_required("programs", item, "name"), source,
                                        _required("programs", item, "board"),
                                        float(item.get("at", 0.0))))
        actions = [ActionSpec(**_checked("actions", a, {"at", "type", "program", "to"}))
                   for a in data.get("actions", [])]
        faults = [FaultSpec(**_checked("faults", f, {"at", "type", "board", "duration"}))
                  for f in data.get("faults", [])]
        scenario = cls(duration=float(data["duration"]), boards=boards, programs=programs,
                       actions=actions, faults=faults, seed=int(data.get("seed", 0)),
                       name=str(data.get("name", "scenario")),
                       keepalive=float(data.get("keepalive", 10.0)),
                       broker=dict(data.get("broker", {})), cost=dict(data.get("cost", {})),
                       dispatcher=dict(data.get("dispatcher", {})),
                       trace=bool(data.get("trace", True)))
        scenario.validate()
        return scenario

    def validate(self) -> None:
        names = [n for b in self.boards for n in b.names()]
        if len(set(names)) != len(names):
            raise ScenarioError("board names must be unique")
        programs = {p.name for p in self.programs}
        for prog in self.programs:
            if prog.board not in names:
                raise ScenarioError(f"program {prog.name!r} runs on unknown board "
                                    f"{prog.board!r} (boards: {', '.join(names)})")
        for action in self.actions:
            if action.type not in ACTIONS:
                raise ScenarioError(f"unknown action type {action.type!r}; one of {ACTIONS}")
            if action.program not in programs:
                raise ScenarioError(f"action at {action.at} names unknown program "
                                    f"{action.program!r}")
            targets = action.to if isinstance(action.to, list) else [action.to]
            if action.type in ("migrate", "spawn") and not all(t in names for t in targets):
                raise ScenarioError(f"{action.type} at {action.at}: unknown target {action.to!r}")
        for fault in self.faults:
            if fault.type not in FAULTS:
                raise ScenarioError(f"unknown fault type {fault.type!r}; one of {FAULTS}")
            if not fault.type.startswith("broker") and fault.board not in names:
                raise ScenarioError(f"fault {fault.type} at {fault.at}: unknown board "
                                    f"{fault.board!r}")
        if self.duration <= 0:
            raise ScenarioError("duration must be positive")

    # ---------------------------------------------------------------- running
    def run(self, seed: int | None = None,
            on_progress: Callable[[float], None] | None = None) -> Results:
        return _Runner(self, self.seed if seed is None else seed).run(on_progress)


def _no_unknown(where: str, item: dict, known: set[str]) -> None:
    unknown = sorted(set(item) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")


def _checked(where: str, item: dict, known: set[str]) -> dict:
    _no_unknown(where, item, known)
    return dict(item)


def _required(where: str, item: dict, key: str) -> Any:
    if key not in item:
        raise ScenarioError(f"every entry of [[{where}]] needs {key!r}")
    return item[key]


@dataclass
class Results:
    """Everything a scenario run produced, as DataFrames."""

    messages: pd.DataFrame
    migrations: pd.DataFrame
    programs: pd.DataFrame
    boards: pd.DataFrame
    actions: pd.DataFrame
    faults: pd.DataFrame
    stats: dict

    def save(self, out: str | Path) -> list[Path]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("messages", "migrations", "programs", "boards", "actions", "faults"):
            path = out / f"{name}.csv"
            getattr(self, name).to_csv(path, index=False, float_format="%.9g")
            written.append(path)
        return written

    def summary(self) -> pd.DataFrame:
        return self.boards[["board", "profile", "status", "programs", "events", "cpu_util_%",
                            "memory_used_mb"]]


class _Runner:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.s = scenario
        broker = BrokerProfile(**scenario.broker) if scenario.broker else BrokerProfile()
        cost = CostModel(**scenario.cost) if scenario.cost else CostModel()
        self.world = World(seed, broker=broker, cost=cost, trace=scenario.trace,
                           keepalive=scenario.keepalive)
        self.instances: dict[str, str] = {}  # scenario program name -> instance id
        self.code_names: dict[str, str] = {}

    def run(self, on_progress: Callable[[float], None] | None) -> Results:
        w, s = self.world, self.s
        for spec in s.boards:
            for name in spec.names():
                w.add_board(name, spec.profile, spec.resource_period, **spec.overrides)
        w.add_dispatcher(**s.dispatcher)
        for prog in s.programs:
            w.at(prog.at, lambda prog=prog: self._act("run", prog.name, prog.board, prog))
        for action in s.actions:
            w.at(action.at, lambda a=action: self._act(a.type, a.program, a.to))
        for fault in s.faults:
            w.at(fault.at, lambda f=fault: self._fault(f.type, f.board))
            if fault.duration is not None and fault.type in _UNDO:
                w.at(fault.at + fault.duration,
                     lambda f=fault: self._fault(_UNDO[f.type], f.board))
        w.run(s.duration, on_progress)
        return self._results()

    def _fault(self, kind: str, board: str | None) -> None:
        w = self.world
        if kind == "crash":
            w.boards[board].crash()
        elif kind == "reboot":
            w.boards[board].reboot()
        elif kind in ("link_down", "link_up"):
            getattr(w.boards[board].link, kind.split("_")[1])()
            w.record_fault(kind, board)
        else:
            getattr(w.network, kind)()
            w.record_fault(kind, "broker")

    def _act(self, kind: str, program: str, target: Any, spec: ProgramSpec | None = None,
             row: dict | None = None) -> None:
        w, d = self.world, self.world.dispatcher
        if row is None:
            row = {"time": w.clock.now(), "action": kind, "program": program,
                   "target": ",".join(target) if isinstance(target, list) else target,
                   "done": None, "ok": None, "result": None}
            w.actions.append(row)
        try:
            if kind == "run":
                self.code_names[program] = program
                fut = d.run_code(target, program, spec.source)
            else:
                iid = self.instances.get(program)
                if iid is None:
                    raise ScenarioError(f"program {program!r} is not running")
                if kind == "migrate":
                    fut = d.move_code(d.program(iid).engine, target, program, iid)
                elif kind == "spawn":
                    targets = target if isinstance(target, list) else [target]
                    fut = d.spawn_code(d.program(iid).engine, targets, program, iid)
                else:
                    fut = getattr(d, f"{kind}_code")(iid)
        except (UnknownEngine, UnknownProgram, ScenarioError) as exc:
            # not discovered yet (e.g. at t=0, or a program still starting): retry a while
            if w.clock.now() - row["time"] < _DISCOVERY_WAIT:
                w.at(w.clock.now() + 0.1,
                     lambda: self._act(kind, program, target, spec, row))
                return
            row.update(done=w.clock.now(), ok=False, result=f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # recorded, the simulation goes on
            row.update(done=w.clock.now(), ok=False, result=f"{type(exc).__name__}: {exc}")
            return

        def finished(f: Any) -> None:
            row["done"] = w.clock.now()
            error = f.exception()
            row["ok"] = error is None
            if error is None:
                result = f.result()
                if kind == "run":
                    self.instances[program] = result["id"]
                row["result"] = result.get("engine") if isinstance(result, dict) else \
                    str(result)[:200]
            else:
                row["result"] = f"{type(error).__name__}: {error}"

        fut.add_done_callback(finished)

    def _results(self) -> Results:
        w = self.world
        migrations = []
        for engine in [b.engine for b in w.boards.values()] + w.retired_engines:
            migrations.extend(engine.migrations)
        migrations.sort(key=lambda m: (m["started"], m["migration_id"]))
        program_rows = []
        for board in w.boards.values():
            for host in board.engine.programs.values():
                program_rows.append({"board": board.name, "instance_id": host.instance_id,
                                     "code_name": host.code_name, "status": host.status.value,
                                     "events": host.events_run,
                                     "program_time": host.program_time()})
        if w.dispatcher is not None:
            known = {r["instance_id"] for r in program_rows}
            for prog in w.dispatcher.programs.values():
                if prog.instance_id not in known:
                    program_rows.append({"board": prog.engine, "instance_id": prog.instance_id,
                                         "code_name": prog.code_name, "status": prog.status,
                                         "events": None, "program_time": None})
        board_rows = []
        for board in w.boards.values():
            board_rows.append({
                "board": board.name, "profile": board.profile.name,
                "cpu_factor": board.profile.cpu_factor, "cores": board.profile.cores,
                "memory_mb": board.profile.memory_mb,
                "status": board.engine.status if board.up else "down",
                "programs": len(board.engine.programs), "events": board.events,
                "cpu_seconds": board.cpu_seconds,
                "cpu_util_%": round(100 * board.utilisation(), 4),
                "memory_used_mb": round(board.memory_used_mb(), 3)})
        frame = w.network.messages_frame() if self.s.trace else pd.DataFrame()
        return Results(
            messages=frame,
            migrations=pd.DataFrame(migrations, columns=_MIGRATION_COLUMNS),
            programs=pd.DataFrame(program_rows, columns=["board", "instance_id", "code_name",
                                                         "status", "events",
                                                         "program_time"]),
            boards=pd.DataFrame(board_rows),
            actions=pd.DataFrame(w.actions, columns=["time", "action", "program", "target",
                                                     "done", "ok", "result"]),
            faults=pd.DataFrame(w.faults, columns=["time", "fault", "target"]),
            stats=w.network.counters())


_MIGRATION_COLUMNS = ["migration_id", "instance_id", "code_name", "source", "target",
                      "started", "snapshot_s", "snapshot_bytes", "transfer_s", "restore_s",
                      "commit_s", "total_s", "ok", "error"]

__all__ = ["ActionSpec", "BoardSpec", "FaultSpec", "ProgramSpec", "Results", "Scenario",
           "ScenarioError"]
