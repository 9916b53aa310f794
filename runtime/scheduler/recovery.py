"""Recovery: engine deaths, fences, checkpoints and recover actions.

An engine's will starts its fence time (``fence_s`` from its reports, plus
``fence_margin_s``); after it, its instances are recovered from their last checkpoints
at a higher owner epoch.  Before a recovery, every live engine promises to take no
migration of the instance to that epoch (a user's migration may be in flight from the
dead engine), and a copy that committed first is adopted instead.  Checkpoints are
taken every ``checkpoint_s`` into a store off the boards."""

from __future__ import annotations

import logging
from typing import Any, Generator, Iterable, Optional

from .. import protocol as p
from ..dispatcher import DispatcherError
from ..engine import DEFAULT_FENCE_S
from ..future import gather
from ..gfs.remote import drive
from ..transport import Message
from .checkpoints import loaded
from .config import (
    _RUNS,
    _App,
    _stopped_by_engine,
    token_of,
)
from .core import SchedulerCore
from .model import (
    Action,
    SchedulerError,
)
from .store import Checkpoint, InstanceRow

log = logging.getLogger("runtime.scheduler.service")


class Recovery(SchedulerCore):
    """Engine and program events that lead to recoveries, the recovery itself, checkpoints."""

    def _on_engine_dead(self, engine: Any) -> None:
        now = self.clock.now()
        self._died[engine.id] = now
        self._engine_status[engine.id] = "dead"
        if not self.active:
            return
        wait = self._fence_of(engine.id) + self.config.fence_margin_s
        self._event("engine-dead", engine=engine.id, recover_at=now + wait)
        self._timer(f"dead:{engine.id}", wait + 1e-6, lambda: self.trigger("engine-dead"))

    def _on_engine_update(self, engine: Any) -> None:
        was = self._engine_status.get(engine.id)
        self._engine_status[engine.id] = engine.status
        if engine.status != "dead":  # a will carries no meta: keep what the engine said
            try:
                self._fences[engine.id] = float((engine.meta or {}).get("fence_s",
                                                                         DEFAULT_FENCE_S))
            except (TypeError, ValueError):
                self._fences[engine.id] = DEFAULT_FENCE_S
        if engine.status == "dead":
            self._died.setdefault(engine.id, self.clock.now())
            return
        if was in (None, "dead"):
            self._died.pop(engine.id, None)
            self._stopping.discard(engine.id)
            if self.active:
                self._event("engine-join", engine=engine.id)
                self.trigger("engine-join")

    def _on_program_update(self, program: Any) -> None:
        token = token_of(program.instance_id)
        if token not in self.apps:
            return
        if _stopped_by_engine(program) and program.engine:
            # the engine is shutting down (SIGTERM, on_shutdown = "stop"): nothing more
            # goes there, and what it stopped is re-placed at once (no fence to wait: it
            # said itself that the copy is gone)
            self._stopping.add(program.engine)
            if self.active:
                self.trigger("engine-stop")
        elif program.status in ("Lost", "Crashed", "Exited") and self.active:
            self.trigger(f"program-{program.status.lower()}")

    def _on_resource(self, message: Message) -> None:
        levels = message.topic.split("/")
        if len(levels) != 2 or not self.active:
            return
        try:
            cpu = float(p.decode(message.payload).get("cpu", 0.0))
        except (p.ProtocolError, AttributeError, TypeError, ValueError):
            return
        engine = levels[0]
        if cpu > self.config.overload_cpu:
            self._hot[engine] = self._hot.get(engine, 0) + 1
            if self._hot[engine] >= self.config.overload_reports and \
                    self.clock.now() - self._last_rebalance >= self.config.rebalance_cooldown_s:
                self._last_rebalance = self.clock.now()
                self._event("overload", engine=engine, cpu=cpu)
                self.trigger("overload")
        else:
            self._hot.pop(engine, None)

    def _fence_recoveries(self, actions: list[Action]) -> Generator:
        """Before recovering, make sure no migration can run the same instance.

        A user's migration from the dead engine may be in flight: its target may hold a
        prepared copy (or get the restore and commit later) and commit it at the epoch we
        are about to recover at.  So (1) nothing is recovered while another engine that
        died may still come back unfenced (inside its fence time: it could commit a
        migration it prepared, and we could not ask it; an engine that stopped gracefully
        ended its copies, prepared ones too); (2) every live engine is asked
        ``fence_instances``: it promises in its journal to take no migration of these
        instances to the recovery's epoch or below, aborting a prepared copy.  An engine
        that says it holds a copy (a migration committed first) is adopted instead of
        recovering; one that does not answer postpones the recovery.  Returns the keys
        to recover now; their (checkpoint, epoch) are in ``_fenced``."""
        now = self.clock.now()
        d = self.dispatcher
        unfenced = sorted(e for e, died in self._died.items()
                          if self._engine_status.get(e) == "dead" and
                          e not in self._stopping and
                          now < died + self._fence_of(e) + self.config.fence_margin_s)
        if unfenced:
            self._event("recovery-wait", engines=unfenced,
                        instances=[a.key for a in actions])
            return set()
        wanted: dict[str, tuple[Optional[Checkpoint], int]] = {}
        for action in actions:
            row = self.rows[action.key]
            cp: Optional[Checkpoint] = yield loaded(self.clock, self.checkpoints.load(
                row.instance_id, row.token))
            prog = d.programs.get(row.instance_id)
            wanted[action.key] = (cp, max(row.epoch, prog.epoch if prog else 0,
                                          cp.epoch if cp else 0) + 1)
        ask = {self.rows[k].instance_id: epoch for k, (_, epoch) in wanted.items()}
        engines = sorted(e.id for e in d.engines.values()
                         if e.status != "dead" and e.id not in self._stopping)
        futures = []
        for engine in engines:
            try:
                futures.append(d.fence_instances(engine, ask, self.config.fence_query_s))
            except DispatcherError as exc:
                fut = self.clock.create_future()
                fut.set_exception(exc)
                futures.append(fut)
        outcomes = yield gather(self.clock.create_future, futures)
        silent = [e for e, (ok, _) in zip(engines, outcomes) if not ok]
        ready: set[str] = set()
        changed = []
        for key, (cp, epoch) in wanted.items():
            row = self.rows[key]
            holders, ahead = [], 0
            for engine, (ok, value) in zip(engines, outcomes):
                info = ((value or {}).get("instances") or {}).get(row.instance_id) \
                    if ok and isinstance(value, dict) else None
                if not isinstance(info, dict):
                    continue
                held = info.get("holds")
                if isinstance(held, dict) and held.get("status") in _RUNS and \
                        isinstance(held.get("epoch"), int) and held["epoch"] >= row.epoch:
                    holders.append((held["epoch"], engine, held["status"]))
                if isinstance(info.get("prepared"), int):
                    ahead = max(ahead, info["prepared"])
            if holders:  # a migration committed first: that copy is the instance
                held_epoch, engine, status = max(holders)
                row.engine, row.epoch = engine, held_epoch
                row.status = "paused" if status == "Paused" else "running"
                changed.append(row)
                self._event("adopted", instance=row.instance_id, engine=engine,
                            epoch=held_epoch)
            elif silent or ahead:
                if ahead:  # our view of its epoch is behind: fence higher next time
                    row.epoch = max(row.epoch, ahead)
                    changed.append(row)
                self._event("recovery-wait", instances=[key], engines=silent,
                            prepared=ahead or None)
            else:
                self._fenced[key] = (cp, epoch)
                ready.add(key)
        if changed:
            self.store.put_instances(changed)
        return ready

    def _recover(self, action: Action, row: InstanceRow, a: _App) -> Generator:
        """Restore the last checkpoint (or start afresh) at the owner epoch its engines
        were fenced at (:meth:`_fence_recoveries`)."""
        fenced = self._fenced.pop(row.key, None)
        if fenced is None:  # pragma: no cover - every recover action is fenced first
            return (yield self._failed(action, row, SchedulerError(
                f"{row.instance_id}: recovery not fenced")))
        cp, epoch = fenced
        died = self._died.get(row.engine or "", None)
        extra = {"epoch_to": epoch, "checkpoint_epoch": cp.epoch if cp else None,
                 "checkpoint_age": (self.clock.now() - cp.taken) if cp else None,
                 "checkpoint_taken": cp.taken if cp else None,
                 "from_engine": row.engine, "died_at": died,
                 "bytes": cp.nbytes if cp else 0}
        resume = a.row.status != "Paused"
        try:
            fut = self.dispatcher.recover_code(
                action.target, row.instance_id, row.component, epoch,
                snapshot=cp.snapshot if cp else None,
                source=None if cp else a.app.component(row.component).source, resume=resume)
        except DispatcherError as exc:
            return (yield self._failed(action, row, exc))
        record = yield self._outcome(action, row, fut, extra)
        return record

    # ================================================================ checkpoints
    def _checkpoint_all(self) -> None:
        if not self.active:
            return
        rows = [r for r in self.rows.values() if r.status == "running" and
                self.apps.get(r.token) is not None and self.apps[r.token].row.status ==
                "Running" and r.instance_id not in self._checkpointing]
        if rows:
            drive(self.clock, self._checkpoint(rows))
        self._timer("checkpoint", self.config.checkpoint_s or 1.0, self._checkpoint_all)

    def _checkpoint(self, rows: Iterable[InstanceRow]) -> Generator:
        futures, taken = [], []
        for r in rows:
            if r.instance_id in self._checkpointing or r.instance_id not in \
                    self.dispatcher.programs:
                continue
            try:
                futures.append(self.dispatcher.checkpoint_code(r.instance_id))
            except DispatcherError:
                continue
            self._checkpointing.add(r.instance_id)
            taken.append((r, self.clock.now()))
        outcomes = yield gather(self.clock.create_future, futures)
        saves = []
        for (r, at), (ok, value) in zip(taken, outcomes):
            self._checkpointing.discard(r.instance_id)
            if not ok or not isinstance(value, dict) or "snapshot" not in value:
                continue  # migrating, fenced, gone: the next one
            if not self.active or r.key not in self.rows or self.halted:
                continue
            saves.append(self.checkpoints.save(Checkpoint(
                r.instance_id, r.token, int(value.get("epoch", r.epoch)),
                str(value.get("engine")), at, value["snapshot"])))
        yield gather(self.clock.create_future, saves)
