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
                 resource_period = 1.0, program_qos = 0 (QoS of programs' messages),
                 and any BoardProfile field as an override
    [[programs]] name (required), file (relative to the TOML) or source, board, at = 0.0
    [[actions]]  at, type = run|migrate|pause|resume|kill|spawn, program, to
    [[faults]]   at, type = crash|reboot|link_down|link_up|broker_down|broker_up,
                 board (or the [gfs] node's name), duration (recover after that many seconds)
    [gfs]        name = "gfs", profile = "desktop-vm" (its node's link; latency, bandwidth,
                 jitter, loss override it), storage = "vm-disk" | "sd-card" (its cost
                 model; commit_latency, read_latency, write_per_byte, read_per_byte
                 override it), grants = ["PROGRAMS:TARGET[:MOUNT][:MODE]", ...],
                 files = {"/global/path" = "file relative to the TOML"}: a global file
                 system node (thingssim.sim.gfs); the run also writes gfs.csv
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from runtime import protocol
from runtime.dispatcher import DispatcherConfig, UnknownEngine, UnknownProgram
from runtime.gfs.paths import Grant, normalize
from runtime.userinput import read_text, unknown_keys

from .boards import PROFILES, BoardProfile
from .gfs import STORAGE_PROFILES, StorageCost
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
    program_qos: int = 0
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
class GfsSpec:
    """The ``[gfs]`` table: a global file system node (:mod:`thingssim.sim.gfs`)."""

    name: str = "gfs"
    profile: str = "desktop-vm"
    storage: str = "vm-disk"  # a STORAGE_PROFILES name
    grants: list = field(default_factory=list)  # Grant.parse specs
    cost: dict = field(default_factory=dict)  # StorageCost overrides
    overrides: dict = field(default_factory=dict)  # link overrides (BoardProfile fields)
    files: dict = field(default_factory=dict)  # global path -> bytes, preloaded

    def storage_cost(self) -> StorageCost:
        return STORAGE_PROFILES[self.storage].with_overrides(**self.cost)


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
    gfs: GfsSpec | None = None
    #: ``[scheduler]``: SchedulerConfig's fields plus ``name`` and ``profile``
    scheduler: dict | None = None
    #: ``[[applications]]``: (submit time, the application's document, programs inline)
    applications: list[tuple[float, dict]] = field(default_factory=list)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Load a TOML scenario; every problem is a ScenarioError starting with the path."""
        path = Path(path)
        try:
            text = read_text(path, "scenario file")
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except ScenarioError as exc:
            raise ScenarioError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict, base_dir: Path | None = None) -> Scenario:
        """Build and validate a scenario: unknown keys, wrong types, impossible values,
        unknown profiles and programs that do not compile are ScenarioErrors naming the
        entry and key, raised before anything runs."""
        base_dir = base_dir or Path.cwd()
        if not isinstance(data, dict):
            raise ScenarioError("a scenario must be a table (a dict)")
        top = {"name", "seed", "duration", "keepalive", "broker", "cost", "dispatcher",
               "boards", "programs", "actions", "faults", "trace", "gfs", "scheduler",
               "applications"}
        _no_unknown("scenario", data, top)
        if "duration" not in data:
            raise ScenarioError("scenario needs a 'duration' (simulated seconds)")
        duration = _number("scenario", "duration", data["duration"], positive=True)
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ScenarioError(f"scenario: seed must be an integer, not {seed!r}")
        keepalive = _number("scenario", "keepalive", data.get("keepalive", 10.0),
                            positive=True)
        name = data.get("name", "scenario")
        if not isinstance(name, str):
            raise ScenarioError(f"scenario: name must be a string, not {name!r}")
        trace = data.get("trace", True)
        if not isinstance(trace, bool):
            raise ScenarioError(f"scenario: trace must be true or false, not {trace!r}")
        broker = _calibrated(_table(data, "broker",
                                    {"from"} | {f.name for f in fields(BrokerProfile)}),
                             "broker", base_dir)
        cost = _calibrated(_table(data, "cost", {"from"} | {f.name for f in fields(CostModel)}),
                           "cost", base_dir)
        for section, kind in (("broker", BrokerProfile), ("cost", CostModel)):
            try:
                kind(**(broker if section == "broker" else cost))
            except (TypeError, ValueError) as exc:
                raise ScenarioError(f"[{section}]: {exc}") from None
        dispatcher = _table(data, "dispatcher", {"profile"} |
                            {f.name for f in fields(DispatcherConfig)} - {"id"})
        if "profile" in dispatcher:
            _profile("[dispatcher]", dispatcher["profile"])
        boards = [_board(where, item) for where, item in _entries(data, "boards")]
        programs = [_program(where, item, base_dir)
                    for where, item in _entries(data, "programs")]
        actions = [ActionSpec(**_action(where, item))
                   for where, item in _entries(data, "actions")]
        faults = [FaultSpec(**_fault(where, item)) for where, item in _entries(data, "faults")]
        gfs = _gfs(data["gfs"], base_dir) if "gfs" in data else None
        scheduler = _scheduler(data) if "scheduler" in data else None
        applications = [_application(where, item, base_dir)
                        for where, item in _entries(data, "applications")]
        if applications and scheduler is None:
            raise ScenarioError("[[applications]] need a [scheduler] table to run them")
        scenario = cls(duration=duration, boards=boards, programs=programs,
                       actions=actions, faults=faults, seed=seed, name=name,
                       keepalive=keepalive, broker=broker, cost=cost,
                       dispatcher=dispatcher, trace=trace, gfs=gfs, scheduler=scheduler,
                       applications=applications)
        scenario.validate()
        return scenario

    def validate(self) -> None:
        names = [n for b in self.boards for n in b.names()]
        if len(set(names)) != len(names):
            raise ScenarioError("board names must be unique")
        nodes = list(names)
        if self.gfs is not None:
            if self.gfs.name in names or self.gfs.name == "dispatcher":
                raise ScenarioError(f"[gfs]: name {self.gfs.name!r} is taken by a board or "
                                    "the dispatcher")
            nodes.append(self.gfs.name)
        if self.scheduler is not None:
            nodes.append(self.scheduler.get("name", "scheduler"))
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
            if not fault.type.startswith("broker") and fault.board not in nodes:
                raise ScenarioError(f"fault {fault.type} at {fault.at}: unknown board "
                                    f"{fault.board!r}")
        if not self.duration > 0 or not math.isfinite(self.duration):
            raise ScenarioError(f"duration must be a finite number > 0, not {self.duration!r}")

    # ---------------------------------------------------------------- running
    def run(self, seed: int | None = None,
            on_progress: Callable[[float], None] | None = None, *,
            on_world: Callable[[World], None] | None = None, steps: int = 100) -> Results:
        """Run it (``seed`` overrides its own).  ``on_progress(now)`` is called ``steps``
        times; ``on_world(world)`` once its dispatcher is started, before time starts (an
        in-process observer: ``thingssim sim --dashboard``).  Neither changes the results."""
        return _Runner(self, self.seed if seed is None else seed).run(on_progress, on_world,
                                                                      steps)

    def build_world(self, seed: int | None = None, *, trace: bool | None = None,
                    grants: Iterable[Any] = ()) -> World:
        """The scenario's world without its programs, actions, dispatcher and faults: its
        boards, broker, cost model and file system (with ``grants`` added).  What ``run``
        starts from; other drivers (``thingssim riot``) put their own programs on it, then
        call :meth:`schedule_faults`."""
        broker = BrokerProfile(**self.broker) if self.broker else BrokerProfile()
        cost = CostModel(**self.cost) if self.cost else CostModel()
        w = World(self.seed if seed is None else seed, broker=broker, cost=cost,
                  trace=self.trace if trace is None else trace, keepalive=self.keepalive)
        for spec in self.boards:
            for name in spec.names():
                w.add_board(name, spec.profile, spec.resource_period, spec.program_qos,
                            **spec.overrides)
        if self.gfs is not None:
            g = self.gfs
            w.add_gfs(g.name, g.profile, grants=[*g.grants, *grants], cost=g.storage_cost(),
                      files=g.files, **g.overrides)
        return w

    def schedule_faults(self, w: World) -> None:
        """Put the scenario's faults (and their ends) on ``w``'s timeline."""
        for fault in self.faults:
            w.at(fault.at, lambda f=fault: apply_fault(w, f.type, f.board))
            if fault.duration is not None and fault.type in _UNDO:
                w.at(fault.at + fault.duration,
                     lambda f=fault: apply_fault(w, _UNDO[f.type], f.board))


def _no_unknown(where: str, item: dict, known: set[str]) -> None:
    problem = unknown_keys(item, known)
    if problem:
        raise ScenarioError(f"{where}: {problem}")


def _required(where: str, item: dict, key: str) -> Any:
    if key not in item:
        raise ScenarioError(f"every entry of [[{where}]] needs {key!r}")
    return item[key]


def _number(where: str, key: str, value: Any, *, positive: bool = False) -> float:
    """A finite number, > 0 (``positive``) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ScenarioError(f"{where}: {key} must be a finite number "
                            f"{'> 0' if positive else '>= 0'}, not {value!r}")
    return float(value)


def _string(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _table(data: dict, section: str, known: set[str]) -> dict:
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ScenarioError(f"'{section}' must be a table ([{section}]), not {table!r}")
    _no_unknown(f"[{section}]", table, known)
    return dict(table)


def _calibrated(table: dict, section: str, base_dir: Path) -> dict:
    """``from = "calibration.json"`` (relative to the scenario) fills the section from a
    calibration (:mod:`thingssim.sim.calibration`); keys given beside it win."""
    if "from" not in table:
        return table
    from .calibration import CalibrationError, load_calibration

    source = table.pop("from")
    if not isinstance(source, str):
        raise ScenarioError(f"[{section}]: from must be a file name, not {source!r}")
    try:
        calibration = load_calibration(base_dir / source)
    except CalibrationError as exc:
        raise ScenarioError(f"[{section}]: {exc}") from None
    return {**getattr(calibration, section), **table}


def _entries(data: dict, section: str) -> list[tuple[str, dict]]:
    """``(where, entry)`` for each ``[[section]]`` entry; ``where`` names it in errors."""
    entries = data.get(section, [])
    if not isinstance(entries, list):
        raise ScenarioError(f"'{section}' must be an array of tables ([[{section}]])")
    out = []
    for n, item in enumerate(entries, 1):
        if not isinstance(item, dict):
            raise ScenarioError(f"[[{section}]] entry {n} must be a table, not {item!r}")
        name = item.get("name")
        out.append((f"[[{section}]] {name!r}" if isinstance(name, str)
                    else f"[[{section}]] entry {n}", dict(item)))
    return out


def _profile(where: str, name: Any) -> BoardProfile:
    if name not in PROFILES:
        raise ScenarioError(f"{where}: unknown profile {name!r}; known profiles: "
                            f"{', '.join(sorted(PROFILES))}")
    return PROFILES[name]


_BOARD_KEYS = {"name", "profile", "count", "resource_period", "program_qos"}
_OVERRIDES = {f.name for f in fields(BoardProfile)} - {"name"}


def _board(where: str, item: dict) -> BoardSpec:
    _no_unknown(where, item, _BOARD_KEYS | _OVERRIDES)
    name = _required("boards", item, "name")
    try:
        protocol.check_name("board name", name)
    except protocol.ProtocolError as exc:
        raise ScenarioError(f"{where}: {exc.message}") from None
    profile = item.pop("profile", "raspberry-pi-3")
    base = _profile(where, profile)
    count = item.pop("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ScenarioError(f"{where}: count must be an integer >= 1, not {count!r}")
    period = item.pop("resource_period", 1.0)
    if period is not None:
        period = _number(where, "resource_period", period, positive=True)
    qos = item.pop("program_qos", 0)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise ScenarioError(f"{where}: program_qos must be 0 or 1, not {qos!r}")
    item.pop("name")
    try:
        base.with_overrides(**item)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return BoardSpec(name=name, profile=profile, count=count, resource_period=period,
                     program_qos=qos, overrides=item)


def _program(where: str, item: dict, base_dir: Path) -> ProgramSpec:
    _no_unknown(where, item, {"name", "file", "source", "board", "at"})
    name = _string(where, "name", _required("programs", item, "name"))
    try:
        protocol.check_name("program name", name)
    except protocol.ProtocolError as exc:
        raise ScenarioError(f"{where}: {exc.message}") from None
    board = _string(where, "board", _required("programs", item, "board"))
    at = _number(where, "at", item.get("at", 0.0))
    if "source" in item:
        source = item["source"]
        if not isinstance(source, str):
            raise ScenarioError(f"{where}: source must be a string")
        filename = f"<program {name}>"
    elif "file" in item:
        file = base_dir / _string(where, "file", item["file"])
        if not file.is_file():
            raise ScenarioError(f"{where}: no file {file}")
        try:
            source = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ScenarioError(f"{where}: {file} is not UTF-8 text") from None
        except OSError as exc:
            raise ScenarioError(f"{where}: cannot read {file} "
                                f"({exc.strerror or exc})") from None
        filename = str(file)
    else:
        raise ScenarioError(f"program {name!r} needs 'file' or 'source'")
    try:  # a program that cannot compile is the scenario's mistake: say so before running
        compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ScenarioError(f"{where}: {filename}:{exc.lineno}: syntax error: "
                            f"{exc.msg}") from None
    except ValueError as exc:  # e.g. NUL bytes (a SyntaxError from Python 3.12 on)
        raise ScenarioError(f"{where}: {filename}: {exc}") from None
    return ProgramSpec(name, source, board, at)


def _action(where: str, item: dict) -> dict:
    _no_unknown(where, item, {"at", "type", "program", "to"})
    for key in ("at", "type", "program"):
        _required("actions", item, key)
    item["at"] = _number(where, "at", item["at"])
    _string(where, "type", item["type"])
    _string(where, "program", item["program"])
    to = item.get("to")
    if to is not None and not isinstance(to, str) and not (
            isinstance(to, list) and to and all(isinstance(t, str) for t in to)):
        raise ScenarioError(f"{where}: to must be a board name or a list of board names, "
                            f"not {to!r}")
    return item


def _fault(where: str, item: dict) -> dict:
    _no_unknown(where, item, {"at", "type", "board", "duration"})
    for key in ("at", "type"):
        _required("faults", item, key)
    item["at"] = _number(where, "at", item["at"])
    _string(where, "type", item["type"])
    if item.get("board") is not None:
        _string(where, "board", item["board"])
    if item.get("duration") is not None:
        item["duration"] = _number(where, "duration", item["duration"], positive=True)
    return item


_GFS_KEYS = {"name", "profile", "storage", "grants", "files"}
_GFS_COST = {f.name for f in fields(StorageCost)}
_GFS_LINK = {"latency", "bandwidth", "jitter", "loss"}


def _gfs(table: Any, base_dir: Path) -> GfsSpec:
    """The ``[gfs]`` table, checked as the others are (every problem names the key)."""
    where = "[gfs]"
    if not isinstance(table, dict):
        raise ScenarioError(f"'gfs' must be a table ([gfs]), not {table!r}")
    _no_unknown(where, table, _GFS_KEYS | _GFS_COST | _GFS_LINK)
    name = table.get("name", "gfs")
    try:
        protocol.check_name("name", name)
    except protocol.ProtocolError as exc:
        raise ScenarioError(f"{where}: {exc.message}") from None
    profile = table.get("profile", "desktop-vm")
    link = {k: table[k] for k in _GFS_LINK if k in table}
    try:
        _profile(where, profile).with_overrides(**link)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    storage = table.get("storage", "vm-disk")
    if storage not in STORAGE_PROFILES:
        raise ScenarioError(f"{where}: unknown storage {storage!r}; known: "
                            f"{', '.join(sorted(STORAGE_PROFILES))}")
    cost = {k: table[k] for k in _GFS_COST if k in table}
    try:
        STORAGE_PROFILES[storage].with_overrides(**cost)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    grants = table.get("grants", [])
    if not isinstance(grants, list):
        raise ScenarioError(f"{where}: grants must be a list such as "
                            f"[\"riot-*:/shared/models:/models:rw\"], not {grants!r}")
    for n, grant in enumerate(grants, 1):
        try:
            Grant.parse(grant)
        except (ValueError, TypeError, OSError) as exc:
            raise ScenarioError(f"{where}: grants entry {n}: {exc}") from None
    files = table.get("files", {})
    if not isinstance(files, dict):
        raise ScenarioError(f"{where}: files must be a table of global path = file, "
                            f"not {files!r}")
    preload = {}
    for path, file in files.items():
        try:
            target = normalize(path)
        except (ValueError, TypeError, OSError) as exc:
            raise ScenarioError(f"{where}: files {path!r}: {exc}") from None
        if target == "/" or any(other.startswith(target + "/") or target.startswith(other + "/")
                                for other in preload):
            raise ScenarioError(f"{where}: files {path!r}: a file cannot be the root or "
                                "the folder of another file")
        source = base_dir / _string(f"{where}: files {path!r}", "the file", file)
        try:
            preload[target] = source.read_bytes()
        except OSError as exc:
            raise ScenarioError(f"{where}: files {path!r}: cannot read {source} "
                                f"({exc.strerror or exc})") from None
    return GfsSpec(name=name, profile=profile, storage=storage, grants=list(grants),
                   cost=cost, overrides=link, files=preload)


def _scheduler(data: dict) -> dict:
    """The ``[scheduler]`` table: SchedulerConfig's fields, ``name`` and ``profile``."""
    from runtime.scheduler.service import SchedulerConfig

    known = {f.name for f in fields(SchedulerConfig)} | {"name", "profile"}
    table = _table(data, "scheduler", known)
    if "profile" in table:
        _profile("[scheduler]", table["profile"])
    try:
        SchedulerConfig(**{k: v for k, v in table.items()
                           if k not in ("name", "profile")}).check()
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"[scheduler]: {exc}") from None
    return table


def _application(where: str, item: dict, base_dir: Path) -> tuple[float, dict]:
    """One ``[[applications]]`` entry: ``file = "app.toml"`` (relative to the scenario) or
    the application inline (``name``, ``components``, ``flows``), and ``at`` (default 1 s)."""
    from runtime.scheduler.appfile import (
        application_from_dict,
        application_to_dict,
        load_application,
    )
    from runtime.scheduler.model import SchedulerError

    item = dict(item)
    at = _number(where, "at", item.pop("at", 1.0))
    try:
        if "file" in item:
            if set(item) != {"file"}:
                raise ScenarioError(f"{where}: give 'file' or the application inline, "
                                    "not both")
            app = load_application(base_dir / _string(where, "file", item["file"]))
        else:
            app = application_from_dict(item, base=base_dir, origin=where)
    except (SchedulerError, OSError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return at, application_to_dict(app)


#: the tables a run writes, as ``<name>.csv`` (``Results.save``); a scenario with a
#: ``[gfs]`` table also writes ``gfs.csv``
CSV_NAMES = ("messages", "migrations", "programs", "boards", "actions", "faults")


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
    gfs: pd.DataFrame | None = None  # one row per GFS request (scenarios with [gfs])
    #: one row per scheduler event (scenarios with [scheduler]): placements, actions,
    #: recoveries with their timings (thingssim.sim.scheduler.COLUMNS)
    scheduler: pd.DataFrame | None = None

    def save(self, out: str | Path) -> list[Path]:
        """Write the six CSVs into ``out`` (and ``gfs.csv`` if the world had a GFS).  They
        depend only on the scenario and its seed (same Python and platform): the same bytes
        from any directory, path spelling, ``PYTHONHASHSEED`` or OS (``\\n`` line endings,
        fixed float format)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in CSV_NAMES + (("gfs",) if self.gfs is not None else ()) + \
                (("scheduler",) if self.scheduler is not None else ()):
            path = out / f"{name}.csv"
            getattr(self, name).to_csv(path, index=False, float_format="%.9g",
                                       lineterminator="\n")
            written.append(path)
        return written

    def summary(self) -> pd.DataFrame:
        return self.boards[["board", "profile", "status", "programs", "events", "cpu_util_%",
                            "memory_used_mb"]]


def apply_fault(w: World, kind: str, board: str | None) -> None:
    """A scenario fault now: ``crash``/``reboot`` of a board or the GFS node, ``link_down``/
    ``link_up`` of its link, ``broker_down``/``broker_up``."""
    # a board, the GFS node or a scheduler node
    node: Any = w.boards.get(board) or w.gfs.get(board) or w.schedulers.get(board)
    if kind == "crash":
        node.crash()
    elif kind == "reboot":
        node.reboot()
    elif kind in ("link_down", "link_up"):
        getattr(node.link, kind.split("_")[1])()
        w.record_fault(kind, board)
    else:
        getattr(w.network, kind)()
        w.record_fault(kind, "broker")


class _Runner:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.s = scenario
        self.world = scenario.build_world(seed)
        self.instances: dict[str, str] = {}  # scenario program name -> instance id
        self.code_names: dict[str, str] = {}

    def run(self, on_progress: Callable[[float], None] | None,
            on_world: Callable[[World], None] | None = None, steps: int = 100) -> Results:
        w, s = self.world, self.s
        w.add_dispatcher(**s.dispatcher)
        if s.scheduler is not None:
            self._start_scheduler()
        for prog in s.programs:
            w.at(prog.at, lambda prog=prog: self._act("run", prog.name, prog.board, prog))
        for action in s.actions:
            w.at(action.at, lambda a=action: self._act(a.type, a.program, a.to))
        s.schedule_faults(w)
        if on_world is not None:
            on_world(w)
        w.run(s.duration, on_progress, steps)
        return self._results()

    def _start_scheduler(self) -> None:
        """The [scheduler] node, and each application submitted at its time by a client
        on the dispatcher's node (replies and refusals in scheduler.csv)."""
        from runtime.scheduler.client import SchedulerClient

        w, spec = self.world, dict(self.s.scheduler or {})
        name, profile = spec.pop("name", "scheduler"), spec.pop("profile", "desktop-vm")
        w.add_scheduler(name, profile, **spec)
        client = SchedulerClient(w.dispatcher.transport, w.clock,
                                 spec.get("id", "things-scheduler"), timeout=120.0,
                                 client_id=f"{w.dispatcher.id}-apps")
        for i, (at, doc) in enumerate(self.s.applications):
            w.at(at, lambda doc=doc, i=i: client.submit(doc, token=f"app{i}"))

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
            stats=w.network.counters(),
            gfs=pd.concat([node.frame() for node in w.gfs.values()], ignore_index=True)
            if w.gfs else None,
            scheduler=pd.concat([node.frame() for node in w.schedulers.values()],
                                ignore_index=True) if w.schedulers else None)


_MIGRATION_COLUMNS = ["migration_id", "instance_id", "code_name", "source", "target",
                      "started", "snapshot_s", "snapshot_bytes", "transfer_s", "restore_s",
                      "commit_s", "total_s", "ok", "error"]

__all__ = ["CSV_NAMES", "ActionSpec", "BoardSpec", "FaultSpec", "GfsSpec", "ProgramSpec",
           "Results", "Scenario", "ScenarioError"]
