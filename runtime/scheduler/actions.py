"""The actions a cycle applies, and what their outcomes do to the instance rows.

Each action's future never fails: it resolves to a record (``error`` set on failure)
after the row is updated and stored.  A run or recovery whose reply never came leaves
the instance ``uncertain`` on that engine: it is asked again there (same instance id),
never started elsewhere, so there are never two copies."""

from __future__ import annotations

import logging
from typing import Any, Optional

from .. import protocol as p
from ..dispatcher import DispatcherError
from ..gfs.remote import drive
from ..rpc import RemoteError, RequestTimeout
from .config import (
    _RUNS,
    _why,
    token_of,
)
from .core import SchedulerCore
from .model import (
    Action,
    SchedulerError,
)
from .store import InstanceRow

log = logging.getLogger("runtime.scheduler.service")


class Actions(SchedulerCore):
    """Run, migrate, recover (see :mod:`.recovery`), re-run, and killing strays."""

    # ---------------------------------------------------------------- actions
    def _outcome(self, action: Action, row: InstanceRow, fut: Any,
                 extra: Optional[dict] = None) -> Any:
        """A future that never fails: the action's record (``error`` set on failure),
        after the instance's row has been updated."""
        out = self.clock.create_future()
        began = self.clock.now()

        def done(f: Any) -> None:
            error = f.exception()
            if self.halted:  # a scheduler that stopped acting writes nothing more
                out.set_result({"kind": action.kind, "key": row.key, "error": "halted"})
                return
            record = {"kind": action.kind, "instance": row.instance_id, "key": row.key,
                      "token": row.token, "source": action.source, "target": action.target,
                      "seconds": self.clock.now() - began, **(extra or {})}
            if error is None:
                result = f.result() or {}
                if isinstance(result, dict):
                    epoch = result.get("epoch")
                    row.engine = result.get("engine", action.target)
                    row.epoch = epoch if isinstance(epoch, int) else max(row.epoch, 1)
                    row.status = "paused" if result.get("status") == "Paused" else "running"
                    record.update(ok=True, epoch=row.epoch,
                                  restore_s=result.get("restore_s"))
            else:
                record.update(ok=False, error=_why(error),
                              code=getattr(error, "code", type(error).__name__))
                if action.kind == "run" and isinstance(error, RemoteError) and \
                        error.code == p.BAD_STATE and "already exists" in error.message:
                    row.engine, row.status, row.epoch = action.target, "running", \
                        max(row.epoch, 1)  # a repeat: it runs there already
                    record.update(ok=True, adopted=True)
                    record.pop("error")
                elif action.kind in ("run", "recover") and isinstance(error, RequestTimeout):
                    # it may have started: never start it elsewhere until its engine says
                    row.engine, row.status = action.target, "uncertain"
            self.store.put_instances([row])
            self._event("action", **record)
            out.set_result(record)

        fut.add_done_callback(done)
        return out

    def _failed(self, action: Action, row: InstanceRow, error: Exception) -> Any:
        fut = self.clock.create_future()
        fut.set_exception(error)
        return self._outcome(action, row, fut)

    def _apply(self, action: Action) -> Any:
        row = self.rows[action.key]
        a = self.apps[row.token]
        d = self.dispatcher
        try:
            if action.kind == "run":
                comp = a.app.component(row.component)
                return self._outcome(action, row, d.run_code(
                    action.target, row.component, comp.source, instance_id=row.instance_id))
            if action.kind == "migrate":
                return self._outcome(action, row, d.move_code(
                    action.source, action.target, row.component, row.instance_id))
            if action.kind == "recover":
                return drive(self.clock, self._recover(action, row, a))
        except DispatcherError as exc:
            return self._failed(action, row, exc)
        return self._failed(action, row, SchedulerError(f"unknown action {action.kind}"))

    def _rerun(self, key: str) -> Any:
        """A run whose reply never came: ask the same engine again (same instance id:
        it answers ``already exists`` if the first one started)."""
        row = self.rows[key]
        action = Action("run", key, target=row.engine)
        try:
            return self._outcome(action, row, self.dispatcher.run_code(
                row.engine, row.component, self.apps[row.token].app.component(
                    row.component).source, instance_id=row.instance_id))
        except DispatcherError as exc:
            return self._failed(action, row, exc)

    def _strays(self) -> list[str]:
        """Running programs of our applications that we do not want: of killed or refused
        applications, or unknown instances of our tokens."""
        ours = {r.instance_id for r in self.rows.values() if r.status != "ended"}
        stray = []
        for iid, prog in sorted(self.dispatcher.programs.items()):
            token = token_of(iid)
            if token is None or token not in self.apps or prog.status not in _RUNS:
                continue
            engine = self.dispatcher.engines.get(prog.engine or "")
            if engine is None or engine.status == "dead":
                continue
            if self.apps[token].row.status in ("Killed", "Refused") or iid not in ours:
                stray.append(iid)
        return stray

    def _kill_stray(self, iid: str) -> Any:
        out = self.clock.create_future()
        try:
            fut = self.dispatcher.kill_code(iid)
        except DispatcherError as exc:
            out.set_result({"kind": "kill", "instance": iid, "ok": False, "error": str(exc)})
            return out

        def done(f: Any) -> None:
            error = f.exception()
            record = {"kind": "kill-stray", "instance": iid, "ok": error is None}
            if error is not None:
                record["error"] = _why(error)
            self._event("action", **record)
            out.set_result(record)

        fut.add_done_callback(done)
        return out
