"""How good a placement is, and whether it is allowed at all.

The measures the policies are compared on (tests, the exact solver, experiments/scheduling):

- *balance*: each board's utilisation is its larger share used, memory or CPU, counting
  what the scheduler does not manage (``used_memory_mb``, ``used_cpu``); reported as the
  maximum over boards and as the coefficient of variation (std / mean) over boards;
- *traffic*: bytes per second between instances on different boards, and the same
  weighted by the link (``bytes/s / bandwidth``: the share of the link's time the
  placement keeps busy, summed over pairs; a slow link counts more);
- *migrations*: instances whose board differs from ``problem.current``, and what the
  moves cost in seconds of disruption (:func:`move_seconds`).

:func:`validate` lists every violated constraint; it is written independently of the
policies (``packing.py``) so that it can check them.  Standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .model import Demand, Placement, Problem

#: a migration's fixed pause (snapshot, hand-over, restore) before the state's transfer
MOVE_OVERHEAD_S = 0.1
_EPS = 1e-9


def move_seconds(problem: Problem, d: Demand, source: str, target: str) -> float:
    """Disruption of moving ``d``: a fixed pause plus its snapshot over the link."""
    return MOVE_OVERHEAD_S + d.state_bytes / problem.link(source, target).bandwidth


def loads(problem: Problem, placement: Placement) -> dict[str, tuple[float, float]]:
    """Memory (MB) and CPU used on each board, unmanaged use included."""
    used = {b.id: [b.used_memory_mb, b.used_cpu] for b in problem.boards}
    demands = {d.key: d for d in problem.demands}
    for key, board in placement.items():
        d = demands.get(key)
        if d is not None and board in used:
            used[board][0] += d.memory_mb
            used[board][1] += d.cpu
    return {b: (m, c) for b, (m, c) in used.items()}


def utilisations(problem: Problem, placement: Placement) -> dict[str, float]:
    """Each board's larger share used (memory or CPU); 0-capacity boards are left out."""
    used = loads(problem, placement)
    out = {}
    for b in problem.boards:
        if b.memory_mb <= 0 or b.cpu <= 0:
            continue
        mem, cpu = used[b.id]
        out[b.id] = max(mem / b.memory_mb, cpu / b.cpu)
    return out


def max_utilisation(problem: Problem, placement: Placement) -> float:
    return max(utilisations(problem, placement).values(), default=0.0)


def imbalance(problem: Problem, placement: Placement) -> float:
    """Coefficient of variation of the boards' utilisations (0 = perfectly even)."""
    u = list(utilisations(problem, placement).values())
    if not u:
        return 0.0
    mean = sum(u) / len(u)
    if mean <= 0:
        return 0.0
    return math.sqrt(sum((x - mean) ** 2 for x in u) / len(u)) / mean


def cross_traffic(problem: Problem, placement: Placement) -> float:
    """Bytes per second between instances on different boards."""
    return sum(t.bytes_per_s for t in problem.traffic
               if placement.get(t.a) != placement.get(t.b))


def link_load(problem: Problem, placement: Placement) -> float:
    """Cross-board traffic weighted by link speed: sum of bytes/s / bandwidth."""
    total = 0.0
    for t in problem.traffic:
        a, b = placement.get(t.a), placement.get(t.b)
        if a != b and a is not None and b is not None:
            total += t.bytes_per_s / problem.link(a, b).bandwidth
    return total


def migrations(problem: Problem, placement: Placement) -> int:
    """Instances that run now and would run on another board."""
    return sum(1 for k, b in problem.current.items() if k in placement and placement[k] != b)


def migration_seconds(problem: Problem, placement: Placement) -> float:
    """Total disruption of the moves, in seconds (:func:`move_seconds` each)."""
    demands = {d.key: d for d in problem.demands}
    return sum(move_seconds(problem, demands[k], b, placement[k])
               for k, b in problem.current.items()
               if k in demands and k in placement and placement[k] != b)


def validate(problem: Problem, placement: Placement) -> list[str]:
    """Every constraint ``placement`` violates, one sentence each (empty: feasible)."""
    errors: list[str] = []
    boards = {b.id: b for b in problem.boards}
    demands = {d.key: d for d in problem.demands}
    for key in sorted(set(placement) - set(demands)):
        errors.append(f"{key}: placed but not demanded")
    groups: dict[tuple[str, str], list[str]] = {}
    for d in problem.demands:
        board_id = placement.get(d.key)
        if board_id is None:
            errors.append(f"{d.key}: not placed")
            continue
        b = boards.get(board_id)
        if b is None:
            errors.append(f"{d.key}: on unknown board {board_id!r}")
            continue
        if d.device is not None and b.device != d.device:
            errors.append(f"{d.key}: device {d.device!r} required, {b.id} is {b.device!r}")
        missing = d.capabilities - b.capabilities
        if missing:
            errors.append(f"{d.key}: {b.id} lacks capabilities {sorted(missing)}")
        if d.pin is not None and d.pin != b.id:
            errors.append(f"{d.key}: pinned to {d.pin!r}, placed on {b.id}")
        if d.anti_affinity_group is not None:
            groups.setdefault((d.anti_affinity_group, b.id), []).append(d.key)
    for (group, board), keys in sorted(groups.items()):
        if len(keys) > 1:
            errors.append(f"anti-affinity {group}: {len(keys)} instances on {board}")
    used = loads(problem, placement)
    for b in problem.boards:
        mem, cpu = used[b.id]
        if mem > b.memory_mb + _EPS:
            errors.append(f"{b.id}: memory {mem:g} MB > capacity {b.memory_mb:g} MB")
        if cpu > b.cpu + _EPS:
            errors.append(f"{b.id}: cpu {cpu:g} > capacity {b.cpu:g}")
    return errors


@dataclass(frozen=True)
class Score:
    """One placement's measures (see the module docstring)."""

    max_utilisation: float
    imbalance: float
    cross_traffic: float
    link_load: float
    migrations: int
    migration_seconds: float
    violations: int


def score(problem: Problem, placement: Placement) -> Score:
    return Score(max_utilisation(problem, placement), imbalance(problem, placement),
                 cross_traffic(problem, placement), link_load(problem, placement),
                 migrations(problem, placement), migration_seconds(problem, placement),
                 len(validate(problem, placement)))
