"""An exact placement: a mixed-integer linear program solved by HiGHS (``scipy.optimize.milp``).

For small instances (tens of instances, a handful of boards), to measure how far each
heuristic is from the optimum.  Variables ``x[i, b] = 1`` when instance ``i`` runs on
board ``b`` (only for boards its device, capabilities and pin allow).  Constraints: each
instance on exactly one board; memory and CPU within each board's free capacity; at most
one instance of an anti-affinity group per board.  Objectives (``objective=``), each
measured exactly as :mod:`metrics` measures heuristics:

- ``balance``: the maximum utilisation ``z >= (used + sum m_i x_ib) / capacity`` over
  boards and both resources;
- ``traffic``: link load, ``sum w_ij / bandwidth(a, b)`` over instance pairs on different
  boards: with uniform links ``w_ij (1 - sum_b s_ijb)``, ``s_ijb <= x_ib, x_jb`` (same-board
  indicators); with per-pair links ``y_ijab >= x_ia + x_jb - 1``;
- ``migration``: seconds of disruption (``metrics.move_seconds``) of the moves from
  ``problem.current``;
- ``weighted``: ``sum weights[k] * objective_k`` over the three (``weights=``).

SciPy is imported when a problem is solved, so the runtime (stdlib only) can import this
module; ``pip install 'thingssim[scheduler]'`` provides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from . import metrics
from .model import Placement, Problem, SchedulerError, Unplaceable
from .packing import Bins, eligible

OBJECTIVES = ("balance", "traffic", "migration", "weighted")


@dataclass(frozen=True)
class Solution:
    placement: Placement
    objective: float  # the objective's value of ``placement`` (metrics' definition)
    optimal: bool  # proven optimal (False: the time limit stopped the search first)
    bound: float  # HiGHS's lower bound on the optimum


def objective_value(problem: Problem, placement: Placement, objective: str = "balance",
                    weights: Optional[Mapping[str, float]] = None) -> float:
    """``objective`` of any placement (a heuristic's, to compare with the optimum)."""
    if objective == "balance":
        return metrics.max_utilisation(problem, placement)
    if objective == "traffic":
        return metrics.link_load(problem, placement)
    if objective == "migration":
        return metrics.migration_seconds(problem, placement)
    if objective == "weighted":
        w = _weights(weights)
        return sum(w[k] * objective_value(problem, placement, k) for k in w if w[k])
    raise SchedulerError(f"unknown objective {objective!r}; expected one of: "
                         f"{', '.join(OBJECTIVES)}")


def _weights(weights: Optional[Mapping[str, float]]) -> dict[str, float]:
    w = {"balance": 1.0, "traffic": 1.0, "migration": 0.1}
    for k, v in (weights or {}).items():
        if k not in w:
            raise SchedulerError(f"unknown objective weight {k!r}; expected some of: "
                                 f"{', '.join(w)}")
        w[k] = float(v)
    return w


class Exact:
    """The MILP above as a policy (``name = "exact"``)."""

    name = "exact"

    def __init__(self, objective: str = "balance", time_limit: float = 30.0,
                 weights: Optional[Mapping[str, float]] = None) -> None:
        if objective not in OBJECTIVES:
            raise SchedulerError(f"unknown objective {objective!r}; expected one of: "
                                 f"{', '.join(OBJECTIVES)}")
        self.objective = objective
        self.time_limit = time_limit
        self.weights = _weights(weights)

    def place(self, problem: Problem) -> Placement:
        return self.solve(problem).placement

    def solve(self, problem: Problem) -> Solution:
        try:
            import numpy as np
            from scipy.optimize import Bounds, LinearConstraint, milp
            from scipy.sparse import coo_array
        except ImportError as exc:
            raise SchedulerError("the exact solver needs scipy >= 1.9: "
                                 "pip install 'thingssim[scheduler]'") from exc
        if not problem.demands:
            return Solution({}, 0.0, True, 0.0)
        model = _Model(problem, self.objective, self.weights)
        n = model.n
        a = coo_array((model.vals, (model.rows, model.cols)), shape=(len(model.lo), n))
        res = milp(np.array(model.cost), integrality=np.array(model.integral),
                   bounds=Bounds(np.array(model.var_lo), np.array(model.var_hi)),
                   constraints=LinearConstraint(a.tocsr(), np.array(model.lo),
                                                np.array(model.hi)),
                   options={"time_limit": self.time_limit, "mip_rel_gap": 1e-9,
                            "disp": False})
        if res.x is None:
            if res.status == 2:
                raise Unplaceable("no placement satisfies the constraints (the exact "
                                  "solver proved it: memory, cpu and anti-affinity together)")
            raise Unplaceable(f"the exact solver found no placement: {res.message}")
        placement: Placement = {}
        for (key, board), col in sorted(model.x.items()):
            if res.x[col] > 0.5:
                placement[key] = board
        placement = {k: placement[k] for k in sorted(placement)}
        bound = float(getattr(res, "mip_dual_bound", None) or res.fun) + model.constant
        return Solution(placement, objective_value(problem, placement, self.objective,
                                                   self.weights),
                        optimal=res.status == 0, bound=bound)


class _Model:
    """The MILP's arrays: variables, sparse constraint rows, costs."""

    def __init__(self, problem: Problem, objective: str, weights: dict[str, float]) -> None:
        self.cost: list[float] = []
        self.integral: list[int] = []
        self.var_lo: list[float] = []
        self.var_hi: list[float] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.constant = 0.0
        w = ({k: 0.0 for k in ("balance", "traffic", "migration")} | {objective: 1.0}
             if objective != "weighted" else weights)
        boards = sorted(problem.boards, key=lambda b: b.id)
        self.x: dict[tuple[str, str], int] = {}
        by_board: dict[str, list[tuple[Any, int]]] = {b.id: [] for b in boards}
        bins = Bins(problem)
        for d in problem.demands:
            cols = []
            for b in boards:
                if eligible(d, b) and d.memory_mb <= b.memory_mb - b.used_memory_mb + 1e-9 \
                        and d.cpu <= b.cpu - b.used_cpu + 1e-9:
                    col = self.x[d.key, b.id] = self._var(0.0, 1.0, integral=True)
                    cols.append(col)
                    by_board[b.id].append((d, col))
            if not cols:
                raise bins.unplaceable(d)
            self._row([(c, 1.0) for c in cols], 1.0, 1.0)
        groups: dict[tuple[str, str], list[int]] = {}
        for b in boards:
            items = by_board[b.id]
            self._row([(c, d.memory_mb) for d, c in items], -float("inf"),
                      b.memory_mb - b.used_memory_mb)
            self._row([(c, d.cpu) for d, c in items], -float("inf"), b.cpu - b.used_cpu)
            for d, c in items:
                if d.anti_affinity_group is not None:
                    groups.setdefault((d.anti_affinity_group, b.id), []).append(c)
        for cols in groups.values():
            if len(cols) > 1:
                self._row([(c, 1.0) for c in cols], -float("inf"), 1.0)
        if w["balance"]:
            self._balance(boards, by_board, w["balance"])
        if w["traffic"]:
            self._traffic(problem, boards, w["traffic"])
        if w["migration"]:
            demands = {d.key: d for d in problem.demands}
            for (key, board), col in self.x.items():
                origin = problem.current.get(key)
                if origin is not None and origin != board and origin in by_board:
                    self.cost[col] += w["migration"] * metrics.move_seconds(
                        problem, demands[key], origin, board)

    @property
    def n(self) -> int:
        return len(self.cost)

    def _var(self, lo: float, hi: float, *, integral: bool = False, cost: float = 0.0) -> int:
        self.cost.append(cost)
        self.integral.append(1 if integral else 0)
        self.var_lo.append(lo)
        self.var_hi.append(hi)
        return len(self.cost) - 1

    def _row(self, terms: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(self.lo)
        for c, v in terms:
            self.rows.append(r)
            self.cols.append(c)
            self.vals.append(v)
        self.lo.append(lo)
        self.hi.append(hi)

    def _balance(self, boards: list, by_board: dict, weight: float) -> None:
        """z >= each board's memory and CPU share (boards with capacity, as metrics)."""
        shares = [max(b.used_memory_mb / b.memory_mb, b.used_cpu / b.cpu)
                  for b in boards if b.memory_mb > 0 and b.cpu > 0]
        z = self._var(max(shares, default=0.0), float("inf"), cost=weight)
        for b in boards:
            if b.memory_mb <= 0 or b.cpu <= 0:
                continue
            items = by_board[b.id]
            self._row([(c, d.memory_mb / b.memory_mb) for d, c in items] + [(z, -1.0)],
                      -float("inf"), -b.used_memory_mb / b.memory_mb)
            self._row([(c, d.cpu / b.cpu) for d, c in items] + [(z, -1.0)],
                      -float("inf"), -b.used_cpu / b.cpu)

    def _traffic(self, problem: Problem, boards: list, weight: float) -> None:
        """Link load of the pairs on different boards, linearised (module docstring)."""
        ids = [b.id for b in boards]
        for t in problem.traffic:
            if t.a == t.b or t.bytes_per_s <= 0:
                continue
            xa = {b: self.x[t.a, b] for b in ids if (t.a, b) in self.x}
            xb = {b: self.x[t.b, b] for b in ids if (t.b, b) in self.x}
            if not xa or not xb:
                continue
            if not problem.links:
                c = weight * t.bytes_per_s / problem.default_link.bandwidth
                self.constant += c
                for b in sorted(set(xa) & set(xb)):
                    s = self._var(0.0, 1.0, cost=-c)
                    self._row([(s, 1.0), (xa[b], -1.0)], -float("inf"), 0.0)
                    self._row([(s, 1.0), (xb[b], -1.0)], -float("inf"), 0.0)
                continue
            for a_board, ca in sorted(xa.items()):
                for b_board, cb in sorted(xb.items()):
                    if a_board == b_board:
                        continue
                    c = weight * t.bytes_per_s / problem.link(a_board, b_board).bandwidth
                    y = self._var(0.0, 1.0, cost=c)
                    self._row([(y, 1.0), (ca, -1.0), (cb, -1.0)], -1.0, float("inf"))
