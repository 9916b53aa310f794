"""From applications and boards to the placement :class:`Problem` a policy solves.

One demand per instance (its component's needs and constraints; anti-affine components
get the group ``"<app>/<component>"``), and the traffic between instances from the flows:
a source instance's ``rate * size`` bytes/s shared evenly by the target component's
instances other than itself (replicas of a stage split its input), summed per unordered
pair.  Standard library only.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

from .model import (
    Application,
    BoardView,
    Demand,
    InstanceKey,
    Link,
    Problem,
    SchedulerError,
    Traffic,
    instance_key,
)


def demands_of(app: Application) -> list[Demand]:
    """The instances of ``app``, in component then index order."""
    return [Demand(key=instance_key(app.name, c.name, i), memory_mb=c.memory_mb, cpu=c.cpu,
                   device=c.device, capabilities=c.capabilities, pin=c.pin,
                   anti_affinity_group=f"{app.name}/{c.name}" if c.anti_affinity else None,
                   state_bytes=c.state_bytes)
            for c in app.components for i in range(c.count)]


def traffic_of(app: Application) -> dict[tuple[InstanceKey, InstanceKey], float]:
    """Bytes/s between instance pairs (``a < b``) that ``app``'s flows cause."""
    out: dict[tuple[InstanceKey, InstanceKey], float] = {}
    for f in app.flows:
        src, dst = app.component(f.source), app.component(f.target)
        per_source = f.rate * f.size
        for i in range(src.count):
            a = instance_key(app.name, src.name, i)
            targets = [instance_key(app.name, dst.name, j) for j in range(dst.count)]
            targets = [b for b in targets if b != a]
            if not targets or per_source <= 0:
                continue
            share = per_source / len(targets)
            for b in targets:
                pair = (a, b) if a < b else (b, a)
                out[pair] = out.get(pair, 0.0) + share
    return out


def problem_for(apps: Iterable[Application], boards: Iterable[BoardView],
                current: Optional[Mapping[InstanceKey, str]] = None,
                links: Optional[Mapping[tuple[str, str], Link]] = None,
                default_link: Optional[Link] = None) -> Problem:
    """The problem of placing every instance of ``apps`` on ``boards``.

    ``current`` is where instances run now (instances of no application are kept: the
    service's :func:`~runtime.scheduler.model.plan` kills them); ``links`` the known
    paths between boards.  Two applications with one name are an error.
    """
    demands: list[Demand] = []
    traffic: dict[tuple[InstanceKey, InstanceKey], float] = {}
    names: set[str] = set()
    for app in apps:
        if app.name in names:
            raise SchedulerError(f"two applications are called {app.name!r}")
        names.add(app.name)
        demands.extend(demands_of(app))
        for pair, rate in traffic_of(app).items():
            traffic[pair] = traffic.get(pair, 0.0) + rate
    problem = Problem(boards=list(boards), demands=demands,
                      traffic=[Traffic(a, b, w) for (a, b), w in sorted(traffic.items())],
                      current=dict(current or {}), links=dict(links or {}))
    if default_link is not None:
        problem.default_link = default_link
    return problem
