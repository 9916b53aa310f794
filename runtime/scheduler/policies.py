"""Placement policies: each a small class with a ``name`` and ``place(problem)``.

Every policy returns a placement of every demand or raises :class:`Unplaceable` naming an
instance and the constraint that binds; nothing is half-placed.  All are deterministic:
boards are tried in board-id order, instances in key order after their sort key, and
every tie is broken by board id.  Standard library only (``exact`` imports scipy when it
runs, not when this module is imported).

``thingsjs``
    ThingsJS's ``first_fit`` (thingsjs.md 4.4), for comparison.  *Reproduced*: memory is the
    only resource (CPU, device, capabilities, pin and anti-affinity are ignored, so its
    placements can violate them: ``metrics.validate`` says which); every instance is taken
    to need ``assumed_mb`` = 40 MB whatever it asks for (``assumed_mb=None`` uses the
    request, as ThingsJS's unit tests called the algorithm); instances that already run
    stay where they are and are never moved (charged at the same size); new instances
    go in decreasing size, each to the board with the most free memory (worst fit, in MB,
    ties to the lowest board id), and a board must have *strictly* more free memory than
    needed; no board at all is an error even with nothing to place.  *Corrected*: free
    memory is the board's capacity minus its unmanaged use (ThingsJS took it only from the
    current mapping, so an empty mapping had no capacity and its own tests failed); an
    instance whose board is gone is placed again (ThingsJS dropped it).
``first-fit`` / ``best-fit`` / ``worst-fit``
    Instances that run keep their board while it still accepts them (see
    ``Bins.keep_current``); the others, most constrained first (fewest eligible boards)
    then by decreasing memory and CPU, go to the first
    board by id that fits / the board left with the least free memory (then CPU) / the
    board left with the lowest utilisation (larger of its memory and CPU shares: balance
    across boards of different sizes, not ThingsJS's absolute MB).
``network-aware``
    Minimises link load (bytes/s crossing boards divided by the link's bandwidth): the
    most constrained, then the chattiest instances first, each to the board where its
    traffic to already-placed peers costs least (ties: lowest utilisation, then id; one
    with no placed peer goes worst-fit), then passes of single moves that lower the
    link load while capacities hold (to a peer's board; to any board when links
    differ).  Ignores ``current``.
``rebalance``
    Starts from ``current`` and moves an instance only when the move pays for itself, on
    the objective ``sum_b u_b**2 + traffic_weight * link_load + move_weight * seconds``
    (``u_b`` a board's utilisation, ``seconds`` the disruption of the moves made,
    ``metrics.move_seconds``: a fixed pause plus the snapshot over the link): a squared
    sum rewards moving work off the busiest boards onto idle ones (a board that joined),
    and a small imbalance is not worth a migration.  A move never leaves its destination
    busier than its source was (the larger utilisation of the two boards never rises), so
    rebalancing cannot raise the maximum utilisation, however much traffic a move
    would save: chatty peers are brought together on the less loaded side.  New
    instances (and those evicted from an overloaded or gone board) are placed worst-fit
    first; then passes over the boards, busiest first, make each board's most improving
    move (one per board and pass, so the busiest boards shed work first; destinations:
    the least loaded boards and the boards of the instance's peers) until a pass makes
    none.
``exact``
    The MILP of ``exact.py`` (scipy's HiGHS): optimal for small instances.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable

from .metrics import move_seconds
from .model import Demand, InstanceKey, Placement, Policy, Problem, SchedulerError, Unplaceable
from .packing import EPS, Bins


def _sorted(placement: Placement) -> Placement:
    return {k: placement[k] for k in sorted(placement)}


class ThingsJS:
    """ThingsJS's placement, reproduced (see the module docstring for what and how)."""

    name = "thingsjs"

    def __init__(self, assumed_mb: float | None = 40.0) -> None:
        self.assumed_mb = assumed_mb

    def place(self, problem: Problem) -> Placement:
        if not problem.boards:
            raise Unplaceable("no devices (ThingsJS refuses even an empty request)")
        size: Callable[[Demand], float] = (
            (lambda d: d.memory_mb) if self.assumed_mb is None
            else (lambda d: self.assumed_mb))  # type: ignore[misc,return-value]
        boards = sorted(problem.boards, key=lambda b: b.id)
        free = {b.id: b.memory_mb - b.used_memory_mb for b in boards}
        placement: Placement = {}
        tasks = []
        for d in problem.demands:
            board = problem.current.get(d.key)
            if board in free:
                placement[d.key] = board
                free[board] -= size(d)
            else:
                tasks.append(d)
        for d in sorted(tasks, key=lambda d: (-size(d), d.key)):
            best = boards[0].id
            for b in boards[1:]:
                if free[b.id] > free[best]:
                    best = b.id
            if not free[best] > size(d):
                raise Unplaceable(f"{d.key} (taken as {size(d):g} MB): not enough memory: "
                                  f"the most free is {free[best]:g} MB on {best}, and "
                                  f"ThingsJS needs strictly more")
            free[best] -= size(d)
            placement[d.key] = best
        return _sorted(placement)


class _Fit:
    """Keep what runs where it still fits, then place the rest in decreasing size."""

    name = ""

    def place(self, problem: Problem) -> Placement:
        bins = Bins(problem)
        for d in bins.order(bins.keep_current(problem)):
            board = self.choose(bins, d)
            if board is None:
                raise bins.unplaceable(d)
            bins.add(d, board)
        return _sorted(bins.placement)

    def choose(self, bins: Bins, d: Demand) -> str | None:
        raise NotImplementedError


class FirstFit(_Fit):
    """The first board by id with room."""

    name = "first-fit"

    def choose(self, bins: Bins, d: Demand) -> str | None:
        mem, cpu, groups = bins.mem, bins.cpu, bins.groups
        need_m, need_c, group = d.memory_mb - EPS, d.cpu - EPS, d.anti_affinity_group
        for b in bins.pool(d):
            if mem[b] >= need_m and cpu[b] >= need_c and (
                    group is None or group not in groups[b]):
                return b
        return None


class BestFit(_Fit):
    """The board left with the least free memory (then CPU): packs boards tight."""

    name = "best-fit"

    def choose(self, bins: Bins, d: Demand) -> str | None:
        mem, cpu = bins.mem, bins.cpu
        best, best_key = None, None
        for b in bins.candidates(d):
            key = (mem[b] - d.memory_mb, cpu[b] - d.cpu)
            if best_key is None or key < best_key:
                best, best_key = b, key
        return best


class WorstFit(_Fit):
    """The board left with the lowest utilisation: spreads load over boards' sizes."""

    name = "worst-fit"

    def choose(self, bins: Bins, d: Demand) -> str | None:
        return _least_loaded(bins, d, bins.candidates(d))


def _least_loaded(bins: Bins, d: Demand, boards: list[str]) -> str | None:
    """The board of ``boards`` whose utilisation with ``d`` added is lowest (ties: id)."""
    best, best_u = None, float("inf")
    for b in boards:
        u = bins.utilisation(b, d)
        if u < best_u - EPS:
            best, best_u = b, u
    return best


def _neighbours(problem: Problem) -> dict[InstanceKey, list[tuple[InstanceKey, float]]]:
    """Each instance's traffic peers with bytes/s (both directions summed)."""
    out: dict[InstanceKey, dict[InstanceKey, float]] = {}
    for t in problem.traffic:
        if t.a == t.b or t.bytes_per_s <= 0:
            continue
        out.setdefault(t.a, {}).setdefault(t.b, 0.0)
        out.setdefault(t.b, {}).setdefault(t.a, 0.0)
        out[t.a][t.b] += t.bytes_per_s
        out[t.b][t.a] += t.bytes_per_s
    return {k: sorted(v.items()) for k, v in out.items()}


class _LinkCost:
    """Link load an instance's traffic causes from a given board (uniform links fast)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.uniform = not problem.links
        self.inv_default = 1.0 / problem.default_link.bandwidth

    def of(self, board: str, peers: list[tuple[InstanceKey, float]],
           where: Placement) -> float:
        total = 0.0
        for peer, w in peers:
            other = where.get(peer)
            if other is None or other == board:
                continue
            total += w * (self.inv_default if self.uniform
                          else 1.0 / self.problem.link(board, other).bandwidth)
        return total


class NetworkAware:
    """Chatty instances together, within capacities (see the module docstring)."""

    name = "network-aware"

    def __init__(self, passes: int = 3) -> None:
        self.passes = passes

    def place(self, problem: Problem) -> Placement:
        bins = Bins(problem)
        peers = _neighbours(problem)
        cost = _LinkCost(problem)
        volume = {k: sum(w for _, w in v) for k, v in peers.items()}
        order = sorted(problem.demands,  # constrained first, as the fits do; then chatty
                       key=lambda d: (len(bins.pool(d)), -volume.get(d.key, 0.0),
                                      -d.memory_mb, -d.cpu, d.key))
        where = bins.placement
        for d in order:
            boards = bins.candidates(d)
            if not boards:
                raise bins.unplaceable(d)
            mine = peers.get(d.key, [])
            if not any(p in where for p, _ in mine):
                bins.add(d, _least_loaded(bins, d, boards))  # type: ignore[arg-type]
                continue
            if cost.uniform:  # only boards holding peers can beat the rest, which tie
                holding = {where[p] for p, _ in mine if p in where}
                shortlist = [b for b in boards if b in holding]
                spare = _least_loaded(bins, d, [b for b in boards if b not in holding])
                if spare is not None:
                    shortlist.append(spare)
            else:
                shortlist = boards
            best, best_key = None, None
            for b in shortlist:
                key = (cost.of(b, mine, where), bins.utilisation(b, d), b)
                if best_key is None or key < best_key:
                    best, best_key = b, key
            bins.add(d, best)  # type: ignore[arg-type]
        demands = {d.key: d for d in problem.demands}
        for _ in range(self.passes):
            if not self._improve(bins, demands, peers, cost):
                break
        return _sorted(bins.placement)

    @staticmethod
    def _improve(bins: Bins, demands: dict[InstanceKey, Demand],
                 peers: dict[InstanceKey, list[tuple[InstanceKey, float]]],
                 cost: _LinkCost) -> bool:
        """One pass of single moves that lower link load (each instance in key order)."""
        moved = False
        where = bins.placement
        for key in sorted(peers):
            d, mine = demands.get(key), peers[key]
            if d is None:
                continue
            here = where[key]
            now = cost.of(here, mine, where)
            bins.remove(d)
            best, best_cost = here, now
            # with uniform links only a peer's board can be better; else any board can
            targets = ({where[p] for p, _ in mine if p in where} if cost.uniform
                       else set(bins.by_id))
            for b in sorted(targets - {here}):
                c = cost.of(b, mine, where)
                if c < best_cost - EPS * max(1.0, now) and bins.fits(d, b):
                    best, best_cost = b, c
            bins.add(d, best)
            moved |= best != here
        return moved


class Rebalance:
    """Migration-cost-aware rebalancing from ``current`` (see the module docstring)."""

    name = "rebalance"

    def __init__(self, traffic_weight: float = 1.0, move_weight: float = 0.1,
                 max_passes: int = 20, spare_boards: int = 8) -> None:
        self.traffic_weight = traffic_weight
        self.move_weight = move_weight
        self.max_passes = max_passes
        self.spare_boards = spare_boards

    def place(self, problem: Problem) -> Placement:
        bins = Bins(problem)
        for d in bins.order(bins.keep_current(problem)):
            board = _least_loaded(bins, d, bins.candidates(d))
            if board is None:
                raise bins.unplaceable(d)
            bins.add(d, board)
        self._passes(problem, bins)
        return _sorted(bins.placement)

    def _passes(self, problem: Problem, bins: Bins) -> None:
        """Passes over the boards, busiest first, each making its source board's best
        move (one per board and pass, so the busiest boards shed work first), until a
        pass makes none."""
        demands = {d.key: d for d in problem.demands}
        peers = _neighbours(problem)
        cost = _LinkCost(problem)
        where = bins.placement
        ids = [b.id for b in bins.boards]
        live = set(ids)
        for _ in range(self.max_passes):
            moved = False
            util = {b: bins.utilisation(b) for b in ids}
            on: dict[str, list[InstanceKey]] = {b: [] for b in ids}
            for key in sorted(where):
                on[where[key]].append(key)
            for src in sorted(ids, key=lambda b: (-util[b], b)):
                if len(ids) <= 2 * self.spare_boards:
                    spare = ids
                else:  # refreshed per source board: the moves just made filled some
                    spare = heapq.nsmallest(self.spare_boards, ids,
                                            key=lambda b: (util[b], b))
                best: tuple[float, str, str] | None = None
                for key in on[src]:
                    if where.get(key) != src:
                        continue
                    delta, target = self._best_move(problem, bins, demands[key], spare,
                                                    peers.get(key, []), cost, live)
                    if target != src and (best is None or delta < best[0]):
                        best = (delta, key, target)
                if best is not None:
                    _, key, target = best
                    bins.remove(demands[key])
                    bins.add(demands[key], target)
                    moved = True
                    util[src] = bins.utilisation(src)
                    util[target] = bins.utilisation(target)
            if not moved:
                return

    def _best_move(self, problem: Problem, bins: Bins, d: Demand, spare: list[str],
                   mine: list[tuple[InstanceKey, float]], cost: _LinkCost,
                   live: set[str]) -> tuple[float, str]:
        """``d``'s most improving move (change of the objective, board); its own board
        if none improves.  Leaves ``bins`` as it found it."""
        where = bins.placement
        here = where[d.key]
        origin = problem.current.get(d.key)
        if origin not in live:
            origin = None  # its board is gone: placing it again is no migration
        u_here = bins.utilisation(here)
        traffic_here = cost.of(here, mine, where)
        paid = self._move_cost(problem, d, origin, here)
        bins.remove(d)
        u_here_without = bins.utilisation(here)
        targets = set(spare) | {where[p] for p, _ in mine if p in where}
        best, best_delta = here, -EPS
        for b in sorted(targets - {here}):
            if not bins.fits(d, b):
                continue
            u_b = bins.utilisation(b)
            u_b_with = bins.utilisation(b, d)
            if u_b_with > u_here + EPS:
                # the destination would end busier than the source was: the pair's
                # maximum rises, so a busy board could get busier for traffic's sake
                # (joins raised the maximum utilisation 0.41 -> 0.60 at 1,000 boards)
                continue
            delta = (u_here_without ** 2 + u_b_with ** 2 - u_here ** 2 - u_b ** 2
                     + self.traffic_weight * (cost.of(b, mine, where) - traffic_here)
                     + self._move_cost(problem, d, origin, b) - paid)
            if delta < best_delta:
                best, best_delta = b, delta
        bins.add(d, here)
        return best_delta, best

    def _move_cost(self, problem: Problem, d: Demand, origin: str | None, board: str) -> float:
        if origin is None or origin == board:
            return 0.0
        return self.move_weight * move_seconds(problem, d, origin, board)


def _exact(**options: Any) -> Policy:
    from .exact import Exact
    return Exact(**options)


#: policy name -> factory (keyword options as the class takes them)
POLICIES: dict[str, Callable[..., Policy]] = {
    ThingsJS.name: ThingsJS,
    FirstFit.name: FirstFit,
    BestFit.name: BestFit,
    WorstFit.name: WorstFit,
    NetworkAware.name: NetworkAware,
    Rebalance.name: Rebalance,
    "exact": _exact,
}


def get_policy(name: str, **options: Any) -> Policy:
    """The policy called ``name``; a clear error listing the names if there is none."""
    factory = POLICIES.get(name)
    if factory is None:
        raise SchedulerError(f"unknown placement policy {name!r}; "
                             f"expected one of: {', '.join(POLICIES)}")
    return factory(**options)
