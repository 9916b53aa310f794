"""Leadership: only the holder of the store's lease acts.

The active scheduler renews its lease every ``lease_s / 3`` and stands down
``lease_margin_s`` before it would run out unrenewed, so that a standby, which takes an
expired lease at term + 1, never acts at the same time.  A new active scheduler loads
applications and instances from the store, asks every engine to report, waits
``settle_s`` and then reconciles (a ``takeover`` cycle: adopt what runs, recover what is
missing, kill strays)."""

from __future__ import annotations

import dataclasses
import logging

from .appfile import application_from_dict
from .config import (
    STANDBY,
    _App,
)
from .core import SchedulerCore
from .model import (
    SchedulerError,
)

log = logging.getLogger("runtime.scheduler.service")


class Leadership(SchedulerCore):
    """Taking, renewing and losing the lease; becoming active."""

    # ================================================================ the lease
    def _try_lease(self) -> None:
        """Standby: take the lease once it has expired (or was released)."""
        if self.halted:
            return
        try:
            term = self.store.acquire(self.holder, self.clock.wall(), self.config.lease_s)
        except Exception as exc:  # noqa: BLE001 - sqlite3 errors: stay standby, try again
            log.warning("%s: cannot read the lease: %s", self.holder, exc)
            term = None
        if term is None:
            self._timer("lease", self.config.lease_s / 3, self._try_lease)
            return
        self._lease_until = self.clock.wall() + self.config.lease_s
        self._become_active(term)

    def _renew(self) -> None:
        try:
            ok = self.store.renew(self.holder, self.term, self.clock.wall(),
                                  self.config.lease_s)
        except Exception as exc:  # noqa: BLE001 - a locked or broken disk: no renewal
            log.warning("%s: cannot renew the lease: %s", self.holder, exc)
            ok = False
        if ok:
            self._lease_until = self.clock.wall() + self.config.lease_s
            self._timer("deadline", self.config.lease_s - self.config.lease_margin_s,
                        self._lease_lost)
        self._timer("renew", self.config.lease_s / 3, self._renew)

    def _lease_lost(self) -> None:
        """Not renewed in time: stop acting before anyone else may start (the margin)."""
        log.error("%s: could not renew the lease (term %d): standing down", self.holder,
                  self.term)
        self._event("scheduler-event", phase="lease-lost", term=self.term)
        self.role = STANDBY
        for name in list(self._timers):
            self.clock.cancel(self._timers.pop(name))
        self._jobs.clear()
        self._wanted = None
        self._timer("lease", self.config.lease_s / 3, self._try_lease)

    def _become_active(self, term: int) -> None:
        self.role, self.term = "active", term
        self._load()
        self._event("scheduler-event", phase="boot", term=term, holder=self.holder,
                    apps=len(self.apps))
        self._timer("deadline", self.config.lease_s - self.config.lease_margin_s,
                    self._lease_lost)
        self._timer("renew", self.config.lease_s / 3, self._renew)
        self.dispatcher.request_status_reports()
        self._timer("settle", self.config.settle_s, lambda: self.trigger("takeover"))
        self._timer("period", self.config.period_s, self._periodic)
        if self.config.checkpoint_s:
            self._timer("checkpoint", self.config.checkpoint_s, self._checkpoint_all)
        self._publish_state()

    def _load(self) -> None:
        """Applications and instances from the store (a restart, or a takeover)."""
        self.apps.clear()
        self.rows.clear()
        for row in self.store.apps():
            try:
                app = dataclasses.replace(application_from_dict(row.spec), name=row.token)
            except SchedulerError as exc:  # pragma: no cover - it was valid when stored
                log.error("%s: stored application %s unreadable: %s", self.id, row.token, exc)
                continue
            self.apps[row.token] = _App(row, app)
        for row in self.store.instances():
            self.rows[row.key] = row
