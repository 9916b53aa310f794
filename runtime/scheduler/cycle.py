"""The cycle: assess -> place -> plan -> apply, one at a time from one queue.

Triggers (a submission, an engine joining or dying, overload, the period...) ask for a
cycle; one asked for while another runs is queued, so cycles never overlap and the
whole placement is computed before any action.  An application that does not fit is
refused whole; a new one that fails to start has what did start killed."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Generator

from .. import protocol as p
from ..dispatcher import DispatcherError
from ..future import gather
from ..gfs.remote import drive
from .config import (
    _LIVE_APP,
    _LOST,
    _RUNS,
    REBALANCE_ON,
    UNPLACEABLE,
    _App,
    _stopped_by_engine,
)
from .core import SchedulerCore
from .model import (
    BoardView,
    Demand,
    Placement,
    Problem,
    Traffic,
    Unplaceable,
    plan,
)
from .problem import demands_of, traffic_of

log = logging.getLogger("runtime.scheduler.service")


class Cycle(SchedulerCore):
    """Triggers, the job queue, and one cycle from assessment to applied actions."""

    # ================================================================ triggers
    def trigger(self, reason: str) -> None:
        """Ask for a cycle; one queued while busy (the latest reason wins, but a
        rebalancing reason is kept)."""
        if not self.active:
            return
        if self._busy or self._jobs:
            if self._wanted is None or reason in REBALANCE_ON:
                self._wanted = reason
            return
        self._run_job(("cycle", reason))

    def _periodic(self) -> None:
        self.trigger("period")
        self._timer("period", self.config.period_s, self._periodic)

    # ================================================================ the job queue
    def _run_job(self, job: tuple[str, Any]) -> None:
        self._busy = True
        kind, arg = job
        steps = self._cycle(arg) if kind == "cycle" else arg
        done = drive(self.clock, steps)
        done.add_done_callback(self._job_done)

    def _job_done(self, fut: Any) -> None:
        error = fut.exception()
        if error is not None:
            log.error("%s: a scheduler job failed: %r", self.id, error, exc_info=error)
            self._event("scheduler-event", phase="error", error=f"{type(error).__name__}: "
                                                                f"{error}")
        self._busy = False
        if not self.active:
            return
        if self._jobs:
            self._run_job(self._jobs.popleft())
        elif self._wanted is not None:
            reason, self._wanted = self._wanted, None
            self._run_job(("cycle", reason))

    def _enqueue(self, steps: Generator) -> None:
        if self._busy:
            self._jobs.append(("job", steps))
        else:
            self._run_job(("job", steps))

    # ================================================================ the cycle
    def _boards(self) -> tuple[list[BoardView], set[str]]:
        """Live boards (views for the policy) and the ids of dead engines."""
        boards, dead = [], set()
        d = self.dispatcher
        ours = {r.instance_id for r in self.rows.values()}
        for e in sorted(d.engines.values(), key=lambda e: e.id):
            if e.status == "dead" or e.id in self._stopping:
                dead.add(e.id)
                continue
            resource = e.resource or {}
            capacity = resource.get("memory_limit", self.config.board_memory_mb)
            used = 0.0
            for iid in e.programs:
                prog = d.programs.get(iid)
                if iid in ours or prog is None or prog.status not in _RUNS:
                    continue
                rss = ((prog.resource or {}).get("memory") or {}).get("rss", 0)
                used += float(rss) / 1e6
            meta = e.meta or {}
            boards.append(BoardView(id=e.id, memory_mb=float(capacity),
                                    cpu=self._cores_of(meta), device=meta.get("device"),
                                    capabilities=frozenset(meta.get("capabilities") or ()),
                                    used_memory_mb=used))
        return boards, dead

    def _cores_of(self, meta: dict) -> float:
        """A board's CPU capacity: what its engine reports, else what its device type
        has, else ``board_cpu`` (1 core: what an engine that names none has)."""
        cores = meta.get("cores")
        if isinstance(cores, (int, float)) and not isinstance(cores, bool) and cores > 0:
            return float(cores)
        by_device = self.config.device_cores.get(meta.get("device"))
        if isinstance(by_device, (int, float)) and by_device > 0:
            return float(by_device)
        return self.config.board_cpu

    def _assess(self, live: set[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """Where each instance of a live application runs now.

        Returns ``current`` (key -> live engine), ``lost`` (key -> the engine it was on,
        recoverable now) and ``uncertain`` (keys whose run's outcome is unknown: asked
        again on the same engine, never started elsewhere)."""
        d = self.dispatcher
        now = self.clock.now()
        current: dict[str, str] = {}
        lost: dict[str, str] = {}
        uncertain: list[str] = []
        changed = []
        for key, r in sorted(self.rows.items()):
            a = self.apps.get(r.token)
            if a is None or a.row.status not in (*_LIVE_APP, "Pending") or r.status == "ended":
                continue
            prog = d.programs.get(r.instance_id)
            if prog is not None and prog.epoch >= r.epoch:
                if prog.status in _RUNS and prog.engine in live:
                    new = "paused" if prog.status == "Paused" else "running"
                    if (r.engine, r.epoch, r.status) != (prog.engine, prog.epoch, new):
                        r.engine, r.epoch, r.status = prog.engine, prog.epoch, new
                        changed.append(r)
                    current[key] = prog.engine
                    continue
                if _stopped_by_engine(prog):
                    lost[key] = prog.engine or _LOST  # its engine stopped it: re-place now
                    continue
                if prog.status in ("Exited", "Crashed") and prog.engine in live:
                    r.status = "ended"
                    changed.append(r)
                    self._event("instance-ended", instance=r.instance_id,
                                status=prog.status, engine=prog.engine)
                    continue
            if r.engine is None or r.status == "new":
                continue  # never started: the policy places it
            engine = r.engine
            if engine in live and not (prog is not None and prog.status == "Lost"):
                report = d.engines[engine].report or {}
                if r.instance_id in (report.get("procs") or {}):
                    current[key] = engine  # reported there (the program view lags)
                    continue
                if r.status == "uncertain":
                    uncertain.append(key)
                    continue
                if now - self._died.get(engine, -1e18) < self._fence_of(engine) and \
                        engine in self._died:
                    continue
                lost[key] = engine  # its engine lives but does not have it: re-run
                continue
            if prog is not None and prog.status == "Lost":
                lost[key] = engine  # its board rebooted without it: gone for sure
                continue
            died = self._died.setdefault(engine, now)
            if now >= died + self._fence_of(engine) + self.config.fence_margin_s:
                lost[key] = engine
        if changed:
            self.store.put_instances(changed)
        return current, lost, uncertain

    def _problem(self, boards: list[BoardView], apps: list[_App], current: dict[str, str],
                 skip: set[str]) -> Problem:
        demands: list[Demand] = []
        traffic: dict[tuple[str, str], float] = {}
        for a in apps:
            demands.extend(dm for dm in demands_of(a.app) if dm.key not in skip)
            for pair, rate in traffic_of(a.app).items():
                traffic[pair] = traffic.get(pair, 0.0) + rate
        keys = {dm.key for dm in demands}
        return Problem(boards=boards, demands=demands,
                       traffic=[Traffic(x, y, w) for (x, y), w in sorted(traffic.items())
                                if x in keys and y in keys],
                       current={k: v for k, v in current.items() if k in keys})

    def _place(self, boards: list[BoardView], current: dict[str, str], skip: set[str],
               reason: str) -> tuple[Placement, list[tuple[_App, str]]]:
        """The target placement, applications added one at a time in submission order;
        a new one that does not fit is refused whole; a running one that no longer fits
        keeps what runs where it runs.  Rebalancing (joins, overload) re-places all."""
        accepted: list[_App] = []
        refused: list[tuple[_App, str]] = []
        target: Placement = {}
        order = sorted((a for a in self.apps.values()
                        if a.row.status in (*_LIVE_APP, "Pending")), key=lambda a: a.row.seq)
        for a in order:
            try:
                target = self.policy.place(self._problem(boards, [*accepted, a], current,
                                                         skip))
                accepted.append(a)
            except Unplaceable as exc:
                if a.row.status == "Pending":
                    refused.append((a, str(exc)))
                else:
                    self._event("unplaceable", token=a.row.token, reason=str(exc))
                    accepted.append(a)
                    skip = skip | {k for k in self.rows if self.rows[k].token == a.row.token
                                   and k not in current}
                    target = self.policy.place(self._problem(boards, accepted, current,
                                                             skip)) if accepted else {}
        if self.rebalance is not None and reason in REBALANCE_ON and accepted:
            try:
                target = self.rebalance.place(self._problem(boards, accepted, current, skip))
            except Unplaceable as exc:
                self._event("unplaceable", policy=self.config.rebalance_policy,
                            reason=str(exc))
        for key, engine in current.items():  # never killed for want of room
            if key not in target and self.rows[key].token in {a.row.token for a in accepted}:
                target[key] = engine
        return target, refused

    def _cycle(self, reason: str) -> Generator:
        self.cycles += 1
        started = self.clock.now()
        boards, dead = self._boards()
        live = {b.id for b in boards}
        current, lost, uncertain = self._assess(live)
        waiting = {k for k, r in self.rows.items() if r.engine is not None and
                   r.status not in ("new", "ended") and k not in current and k not in lost}
        # an instance that ended (it finished, or a user killed it) stays ended: placing
        # it again would re-run it (its engine answered "already exists" for the ended
        # copy it still lists, and the row flapped between running and ended each cycle)
        waiting |= {k for k, r in self.rows.items() if r.status == "ended"}
        target, refused = self._place(boards, current, waiting, reason)
        for a, why in refused:
            self._refuse(a, why)
        refused_tokens = {a.row.token for a, _ in refused}
        target = {k: v for k, v in target.items() if k.split("/")[0] not in refused_tokens}
        now_map = {**current, **{k: _LOST for k in lost}}
        actions = plan(now_map, target, frozenset({_LOST}))
        actions = [act for act in actions if act.kind != "kill"]  # only commands kill
        recovering = [act for act in actions if act.kind == "recover"]
        if recovering:
            ready = yield from self._fence_recoveries(recovering)
            actions = [act for act in actions if act.kind != "recover" or act.key in ready]
            if len(ready) < len(recovering):
                self._timer("retry", self.config.retry_s, lambda: self.trigger("retry"))
        strays = self._strays()
        self._event("scheduler-event", phase="invoke", reason=reason, cycle=self.cycles,
                    boards=len(boards), dead=sorted(dead), current=len(current),
                    lost=sorted(lost), actions=[dataclasses.asdict(x) for x in actions],
                    strays=strays, uncertain=uncertain)
        futures = [self._apply(act) for act in actions]
        futures += [self._rerun(key) for key in uncertain]
        futures += [self._kill_stray(iid) for iid in strays]
        outcomes = yield gather(self.clock.create_future, futures)
        failed = [o for ok, o in outcomes if not ok]
        failed += [o for ok, o in outcomes if ok and isinstance(o, dict) and o.get("error")]
        # applications placed for the first time: started whole, or undone whole
        for a in [a for a in self.apps.values() if a.row.status == "Pending" and
                  a.row.token not in refused_tokens]:
            broken = [o for o in failed if isinstance(o, dict) and o.get("token") ==
                      a.row.token and o.get("code") in (p.PROGRAM_CRASHED, p.BAD_PROGRAM)]
            if broken:
                yield from self._undo(a, broken[0]["error"])
                continue
            self._set_status(a, "Running")
            summary = self._app_summary(a)
            summary["failed"] = [o for o in failed if isinstance(o, dict) and
                                 o.get("token") == a.row.token]
            for request in a.reply:
                self._answer(request, summary)
            a.reply.clear()
        self._event("scheduler-event", phase="resolve", reason=reason, cycle=self.cycles,
                    seconds=self.clock.now() - started, actions=len(futures),
                    failed=len(failed))
        self._publish_state()
        if failed or (lost and not actions):
            self._timer("retry", self.config.retry_s, lambda: self.trigger("retry"))
        for engine in dead:  # an engine still inside its fence time: come back then
            when = self._died.get(engine, 0.0) + self._fence_of(engine) + \
                self.config.fence_margin_s
            if when > self.clock.now() and f"dead:{engine}" not in self._timers:
                self._timer(f"dead:{engine}", when - self.clock.now() + 1e-6,
                            lambda: self.trigger("engine-dead"))

    def _refuse(self, a: _App, why: str) -> None:
        self._set_status(a, "Refused", why)
        self.store.drop_instances(a.row.token)
        for key in [k for k, r in self.rows.items() if r.token == a.row.token]:
            del self.rows[key]
        for request in a.reply:
            self._answer(request, error=(UNPLACEABLE, f"application {a.row.name!r} cannot "
                                         f"be placed, nothing was started: {why}"))
        a.reply.clear()

    def _undo(self, a: _App, why: str) -> Generator:
        """A new application one of whose programs cannot start: kill what did start."""
        rows = [r for r in self.rows.values() if r.token == a.row.token and r.engine]
        futures = []
        for r in rows:
            try:
                futures.append(self.dispatcher.kill_code(r.instance_id))
            except DispatcherError:
                pass
        yield gather(self.clock.create_future, futures)
        self._refuse(a, f"a program failed to start ({why}); what had started was killed")
