"""The scheduler's data model: applications, the placement problem, placements, actions.

Pure data, no I/O and no clock: policies (``policies.py``, ``exact.py``) read a
:class:`Problem` and return a :class:`Placement`; the service (``service.py``) builds the
problem from what its Dispatcher sees, diffs the placement against what runs
(:func:`plan`), and applies the actions.  Everything here is plain data so that it can be
stored (SQLite), sent (JSON) and compared in tests.

Units: memory in MB, CPU in cores (1.0 = one core of the board, a fraction for a light
program), rates in messages per second, sizes in bytes, bandwidth in bytes per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol

#: an instance's key: ``"<app>/<component>/<index>"`` (index from 0)
InstanceKey = str


def instance_key(app: str, component: str, index: int) -> InstanceKey:
    return f"{app}/{component}/{index}"


def split_key(key: InstanceKey) -> tuple[str, str, int]:
    app, component, index = key.rsplit("/", 2)
    return app, component, int(index)


class SchedulerError(Exception):
    """A request the scheduler refuses (bad application file, unknown token, ...)."""


class Unplaceable(SchedulerError):
    """No placement satisfies the constraints: the application is refused whole."""


@dataclass(frozen=True)
class Component:
    """One program of an application, run ``count`` times."""

    name: str
    source: str  # the program's Python source
    count: int = 1
    memory_mb: float = 40.0  # required memory per instance
    cpu: float = 0.1  # required cores per instance
    device: Optional[str] = None  # only on boards of this type (a board profile name)
    capabilities: frozenset[str] = frozenset()  # e.g. {"camera"}: the board must have all
    pin: Optional[str] = None  # only on this engine id
    anti_affinity: bool = False  # no two instances of this component on one board
    state_bytes: int = 0  # expected snapshot size (migration cost); 0 = unknown


@dataclass(frozen=True)
class Flow:
    """Messages from one component to another (every instance to every instance)."""

    source: str  # component name
    target: str  # component name
    topic: str
    rate: float = 1.0  # messages per second, per source instance
    size: int = 256  # bytes per message


@dataclass(frozen=True)
class Application:
    name: str
    components: tuple[Component, ...]
    flows: tuple[Flow, ...] = ()

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def instance_keys(self) -> list[InstanceKey]:
        return [instance_key(self.name, c.name, i)
                for c in self.components for i in range(c.count)]


@dataclass(frozen=True)
class BoardView:
    """What the scheduler knows of one live engine (from its status and resource reports)."""

    id: str
    memory_mb: float  # capacity for programs (the engine's memory_limit)
    cpu: float = 1.0  # cores
    device: Optional[str] = None
    capabilities: frozenset[str] = frozenset()
    used_memory_mb: float = 0.0  # measured use by programs the scheduler does not manage
    used_cpu: float = 0.0


@dataclass(frozen=True)
class Link:
    """The path between two boards: the slowest hop decides."""

    bandwidth: float  # bytes per second
    latency: float = 0.0  # seconds, one way


@dataclass(frozen=True)
class Demand:
    """One instance to place: its needs and its constraints (copied from its component)."""

    key: InstanceKey
    memory_mb: float
    cpu: float
    device: Optional[str] = None
    capabilities: frozenset[str] = frozenset()
    pin: Optional[str] = None
    anti_affinity_group: Optional[str] = None  # "<app>/<component>" when anti-affine
    state_bytes: int = 0


@dataclass(frozen=True)
class Traffic:
    """Bytes per second between two instances."""

    a: InstanceKey
    b: InstanceKey
    bytes_per_s: float


@dataclass
class Problem:
    """Everything a policy needs; ``current`` is where instances run now (may be empty)."""

    boards: list[BoardView]
    demands: list[Demand]
    traffic: list[Traffic] = field(default_factory=list)
    current: dict[InstanceKey, str] = field(default_factory=dict)
    #: between two boards (either order); a missing pair uses ``default_link``
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    default_link: Link = Link(bandwidth=1.25e6, latency=0.005)  # 10 Mbit/s, 5 ms

    def link(self, a: str, b: str) -> Link:
        return self.links.get((a, b)) or self.links.get((b, a)) or self.default_link


#: instance -> board id
Placement = dict[InstanceKey, str]


class Policy(Protocol):
    """A placement policy: one small class per policy, registered by ``name``."""

    name: str

    def place(self, problem: Problem) -> Placement:
        """A placement of every demand, or raise :class:`Unplaceable` with the reason."""
        ...


@dataclass(frozen=True)
class Action:
    """One step from the current placement to the target.

    ``kind`` is ``run`` (``target`` set), ``migrate`` (``source`` and ``target``),
    ``kill`` (``source`` set) or ``recover`` (restore a checkpoint on ``target``: the
    instance's board died).
    """

    kind: str
    key: InstanceKey
    source: Optional[str] = None
    target: Optional[str] = None


def plan(current: Mapping[InstanceKey, str], target: Mapping[InstanceKey, str],
         dead: frozenset[str] = frozenset()) -> list[Action]:
    """The actions that turn ``current`` into ``target`` (sorted by key, deterministic).

    An instance whose current board is in ``dead`` is recovered, not migrated.
    """
    actions: list[Action] = []
    for key in sorted(set(current) | set(target)):
        now, then = current.get(key), target.get(key)
        if now == then:
            continue
        if now is None:
            actions.append(Action("run", key, target=then))
        elif then is None:
            actions.append(Action("kill", key, source=now))
        elif now in dead:
            actions.append(Action("recover", key, source=now, target=then))
        else:
            actions.append(Action("migrate", key, source=now, target=then))
    return actions
