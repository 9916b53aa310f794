"""Free capacity of boards while a policy fills them, and why an instance does not fit.

Shared by the heuristic policies (``policies.py``) so that every one of them applies the
same feasibility rule and explains a failure the same way.  The rule: an instance fits a
board when the board's type matches its ``device``, the board has all its
``capabilities``, the board is its ``pin`` (if any), no instance of its anti-affinity
group is already there, and the used memory and CPU *plus* the instance's needs are at
most the capacities (``<=``: a board may be filled exactly; ThingsJS demanded strictly
more free memory than needed).  ``metrics.validate`` checks placements with the same
rule, written independently.

Standard library only (boards run the runtime with the stdlib and paho).
"""

from __future__ import annotations

from .model import BoardView, Demand, Placement, Problem, Unplaceable

#: slack for float sums (30 instances of 0.1 cores on 3 cores must fit)
EPS = 1e-9


def eligible(d: Demand, b: BoardView) -> bool:
    """The static constraints: device type, capabilities, pin (capacity aside)."""
    return ((d.device is None or d.device == b.device)
            and d.capabilities <= b.capabilities
            and (d.pin is None or d.pin == b.id))


class Bins:
    """Remaining memory and CPU of each board, and the anti-affinity groups it holds."""

    def __init__(self, problem: Problem) -> None:
        self.boards = sorted(problem.boards, key=lambda b: b.id)
        self.by_id = {b.id: b for b in self.boards}
        self.mem = {b.id: b.memory_mb - b.used_memory_mb for b in self.boards}
        self.cpu = {b.id: b.cpu - b.used_cpu for b in self.boards}
        self.groups: dict[str, set[str]] = {b.id: set() for b in self.boards}
        self.placement: Placement = {}
        self._pools: dict[tuple, list[str]] = {}

    # ------------------------------------------------------------------ queries
    def fits(self, d: Demand, board: str) -> bool:
        """``d`` can go on ``board`` now (static constraints and what is left)."""
        return (eligible(d, self.by_id[board])
                and d.memory_mb <= self.mem[board] + EPS
                and d.cpu <= self.cpu[board] + EPS
                and (d.anti_affinity_group is None
                     or d.anti_affinity_group not in self.groups[board]))

    def pool(self, d: Demand) -> list[str]:
        """The boards ``d``'s static constraints allow, in board-id order (cached)."""
        sig = (d.device, d.capabilities, d.pin)
        pool = self._pools.get(sig)
        if pool is None:
            pool = self._pools[sig] = [b.id for b in self.boards if eligible(d, b)]
        return pool

    def order(self, demands: list[Demand]) -> list[Demand]:
        """Most constrained first (fewest eligible boards: a pinned instance before the
        board it needs fills up), then decreasing memory, CPU, and key."""
        return sorted(demands, key=lambda d: (len(self.pool(d)), -d.memory_mb, -d.cpu, d.key))

    def candidates(self, d: Demand) -> list[str]:
        """Every board ``d`` fits on now, in board-id order."""
        mem, cpu, groups = self.mem, self.cpu, self.groups
        need_m, need_c, group = d.memory_mb - EPS, d.cpu - EPS, d.anti_affinity_group
        return [b for b in self.pool(d)
                if mem[b] >= need_m and cpu[b] >= need_c
                and (group is None or group not in groups[b])]

    def utilisation(self, board: str, d: Demand | None = None) -> float:
        """The board's larger share used (memory or CPU), with ``d`` added if given."""
        b = self.by_id[board]
        mem = b.memory_mb - self.mem[board] + (d.memory_mb if d else 0.0)
        cpu = b.cpu - self.cpu[board] + (d.cpu if d else 0.0)
        return max(mem / b.memory_mb if b.memory_mb > 0 else float("inf"),
                   cpu / b.cpu if b.cpu > 0 else (0.0 if cpu <= 0 else float("inf")))

    # ------------------------------------------------------------------ changes
    def add(self, d: Demand, board: str) -> None:
        self.mem[board] -= d.memory_mb
        self.cpu[board] -= d.cpu
        if d.anti_affinity_group is not None:
            self.groups[board].add(d.anti_affinity_group)
        self.placement[d.key] = board

    def remove(self, d: Demand) -> str:
        board = self.placement.pop(d.key)
        self.mem[board] += d.memory_mb
        self.cpu[board] += d.cpu
        if d.anti_affinity_group is not None:
            self.groups[board].discard(d.anti_affinity_group)
        return board

    def keep_current(self, problem: Problem) -> list[Demand]:
        """Put back every instance whose current board still accepts it; return the rest.

        On each board the instances that are dearest to move (largest ``state_bytes``,
        then memory, then key) are kept first, so an overloaded board sheds its cheapest
        instances.  Deterministic: the order depends only on the problem.
        """
        by_board: dict[str, list[Demand]] = {}
        rest: list[Demand] = []
        for d in problem.demands:
            board = problem.current.get(d.key)
            if board in self.by_id:
                by_board.setdefault(board, []).append(d)
            else:
                rest.append(d)
        for board in sorted(by_board):
            for d in sorted(by_board[board],
                            key=lambda d: (-d.state_bytes, -d.memory_mb, d.key)):
                if self.fits(d, board):
                    self.add(d, board)
                else:
                    rest.append(d)
        return rest

    # ------------------------------------------------------------------ failures
    def unplaceable(self, d: Demand) -> Unplaceable:
        """The error for ``d``: names the instance and the constraint that binds."""
        need = f"{d.key} (needs {d.memory_mb:g} MB, {d.cpu:g} cpu)"
        if not self.boards:
            return Unplaceable(f"{need}: no live boards")
        pool = self.boards
        if d.pin is not None:
            pool = [b for b in pool if b.id == d.pin]
            if not pool:
                return Unplaceable(f"{need}: pinned to board {d.pin!r}, which is not live")
        if d.device is not None:
            pool = [b for b in pool if b.device == d.device]
            if not pool:
                return Unplaceable(f"{need}: no live board of device {d.device!r}")
        if d.capabilities:
            pool = [b for b in pool if d.capabilities <= b.capabilities]
            if not pool:
                caps = ", ".join(sorted(d.capabilities))
                return Unplaceable(f"{need}: no live board with capabilities {caps}"
                                   + (f" (and device {d.device!r})" if d.device else ""))
        if d.anti_affinity_group is not None:
            free = [b for b in pool if d.anti_affinity_group not in self.groups[b.id]]
            if not free:
                return Unplaceable(f"{need}: anti-affinity: each of the {len(pool)} "
                                   f"eligible board(s) already holds an instance of "
                                   f"{d.anti_affinity_group}")
            pool = free
        best_mem = max(pool, key=lambda b: (self.mem[b.id], b.id))
        if d.memory_mb > self.mem[best_mem.id] + EPS:
            return Unplaceable(f"{need}: memory: the most free on an eligible board is "
                               f"{max(self.mem[best_mem.id], 0):g} MB (on {best_mem.id})")
        best_cpu = max(pool, key=lambda b: (self.cpu[b.id], b.id))
        if d.cpu > self.cpu[best_cpu.id] + EPS:
            return Unplaceable(f"{need}: cpu: the most free on an eligible board is "
                               f"{max(self.cpu[best_cpu.id], 0):g} (on {best_cpu.id})")
        return Unplaceable(f"{need}: memory and cpu: no eligible board has both free")
