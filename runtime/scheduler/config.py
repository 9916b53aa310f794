"""The scheduler's settings and small shared vocabulary: its configuration, the
application record it keeps in memory, instance ids, and the statuses the other modules
test against.  Kept apart so that each part of the scheduler imports these without
importing the others."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .. import protocol as p
from ..rpc import RemoteError
from .model import Application, SchedulerError
from .store import AppRow

DEFAULT_ID = "things-scheduler"
UNPLACEABLE = "unplaceable"
STANDBY = "standby"
#: a placeholder "engine" for instances that must be recovered (plan() says recover)
_LOST = "(lost)"
#: cycle reasons that use the rebalancing policy (if one is configured)
REBALANCE_ON = frozenset({"engine-join", "overload"})
_LIVE_APP = ("Running", "Paused")
_RUNS = ("Running", "Paused")


@dataclass
class SchedulerConfig:
    id: str = DEFAULT_ID
    policy: str = "best-fit"
    rebalance_policy: Optional[str] = None  # e.g. "rebalance": on joins and overload
    period_s: float = 10.0
    checkpoint_s: Optional[float] = 1.0  # None or 0: no checkpoints (recovery from scratch)
    fence_margin_s: float = 0.0  # waited on top of an engine's fence time before recovery
    overload_cpu: float = 90.0  # percent, from the engines' resource reports
    overload_reports: int = 3
    rebalance_cooldown_s: float = 30.0
    retry_s: float = 2.0
    lease_s: float = 6.0
    lease_margin_s: float = 2.0
    settle_s: float = 1.0
    history: int = 1000
    request_timeout: float = 30.0
    #: how long a recovery waits for each live engine's ``fence_instances`` answer
    #: (unanswered: the recovery waits for a later cycle)
    fence_query_s: float = 5.0
    keepalive: float = 10.0
    #: cores of a board whose engine names none in its report (``meta.cores``; engines
    #: name theirs only when it is not 1) and whose device type is not in device_cores
    board_cpu: float = 1.0
    #: device type -> cores, for engines that do not say (the simulator fills it from
    #: its board profiles: simulated engines do not report their cores)
    device_cores: dict = dataclasses.field(default_factory=dict)
    board_memory_mb: float = 1000.0  # until an engine's resource report says

    def check(self) -> None:
        p.check_name("scheduler id", self.id)
        for name in ("period_s", "lease_s", "request_timeout", "keepalive", "retry_s"):
            if not getattr(self, name) > 0:
                raise SchedulerError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.checkpoint_s is not None and self.checkpoint_s < 0:
            raise SchedulerError(f"checkpoint_s must be >= 0, not {self.checkpoint_s!r}")
        if not 0 <= self.lease_margin_s < self.lease_s:
            raise SchedulerError("lease_margin_s must be >= 0 and below lease_s")


@dataclass
class _App:
    row: AppRow
    app: Application  # named by its token: instance keys are "<token>/<component>/<i>"
    reply: list = dataclasses.field(default_factory=list)  # requests awaiting placement


def instance_id(token: str, component: str, index: int) -> str:
    """Instance ids name their application's token, so that a restarted scheduler knows
    its own programs (and their strays) among all an engine runs."""
    return f"{component}.{token}-{index}"


def token_of(iid: str) -> Optional[str]:
    head, _, tail = iid.rpartition(".")
    token, dash, _ = tail.rpartition("-")
    return token if head and dash else None


def _stopped_by_engine(program: Any) -> bool:
    """Ended because its engine shut down (not killed, not finished): to re-place."""
    return program.status == "Exited" and program.event == p.STOPPED_BY_ENGINE


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if not isinstance(error, (RemoteError,
                                                                        SchedulerError)) \
        else str(error)
