"""Live migration as two small sans-IO state machines, one per side, keyed by migration id.

Like h11, nothing here touches a transport or a clock: a machine takes typed inputs
(a reply arrived, a step failed, a timer fired, a command came in) and returns typed
outputs (send this request, start this timer, resume or drop the local copy, answer
this).  :class:`~runtime.engine.CodeEngine` only routes them.  That keeps the protocol
checkable on its own (``tests/test_migration_machine.py``) and identical in simulation and
on real boards.

Safety rests on three rules:

1. **The target's commit is the commit point.**  The target decides, once, whether a
   migration committed or aborted, and writes that decision to its durable journal before
   acting on it.  Every later step (a duplicate commit, an abort, a status query) gets the
   same answer.  A source never guesses: until it has the target's answer it keeps its
   copy paused ("in doubt"), asking again with back-off.
2. **Fencing by epoch.**  Each instance has an owner epoch, 1 when it starts, +1 at every
   commit; the committing target publishes ``program-owner/<instance>`` (retained) with
   it.  A copy whose epoch is stale never runs or publishes again.
3. **Leases.**  A prepared (restored, paused, invisible) copy lives only ``lease`` seconds
   unless committed; then the target aborts it by itself and says ``aborted`` to anyone
   who asks.  So a source that dies or is cut off never leaves a hidden copy behind.

Source side (:class:`SourceMigration`)::

    state       input                              outputs                     next
    ---------   --------------------------------   -------------------------   ----------
    PREPARING   restore ok                          Request(commit)             COMMITTING
    PREPARING   restore error / timeout             Notify(abort), Resume       ABORTED
    COMMITTING  commit -> committed                 Drop                        COMMITTED
    COMMITTING  commit -> aborted / not_found       Resume                      ABORTED
    COMMITTING  commit timeout / other error        Wait(query)                 IN_DOUBT
    IN_DOUBT    query timer                         Request(status)             IN_DOUBT
    IN_DOUBT    status -> committed                 Drop                        COMMITTED
    IN_DOUBT    status -> aborted / unknown         Resume                      ABORTED
    IN_DOUBT    status -> prepared                  Request(commit)             COMMITTING
    IN_DOUBT    status timeout / error              Wait(query, backed off)     IN_DOUBT

Before the commit request leaves, the target cannot commit, so any failure there resumes
the source at once.  After it left, only the target's word ends the migration.

Target side (:class:`TargetMigration`)::

    state       input               outputs                                 next
    ---------   -----------------   -------------------------------------   ---------
    PREPARED    commit(epoch)       Journal(committed), Activate, Answer    COMMITTED
    PREPARED    abort               Journal(aborted), Discard, Answer       ABORTED
    PREPARED    lease expired       Journal(aborted), Discard               ABORTED
    COMMITTED   commit / abort      Answer(committed)                       COMMITTED
    ABORTED     commit / abort      Answer(aborted)                         ABORTED
    any         status              Answer(state)                           same

A rebooted target remembers decisions (the journal is durable) but not prepared copies.
Asked about a migration it holds no copy of and has no decision for, it *presumes abort*:
it journals ``aborted`` before answering, so a duplicate restore or a late commit still in
flight can never create a second copy (:func:`presume_abort`; the exhaustive exploration
in ``tests/test_migration_machine.py`` found exactly that schedule).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

# ---------------------------------------------------------------- wire vocabulary
RESTORE = "restore_code"
COMMIT = "commit_migration"
ABORT = "abort_migration"
STATUS = "migration_status"

#: what a target says about a migration id
PREPARED, COMMITTED, ABORTED, UNKNOWN = "prepared", "committed", "aborted", "unknown"


class Phase(str, Enum):
    PREPARING = "preparing"
    COMMITTING = "committing"
    IN_DOUBT = "in_doubt"
    COMMITTED = "committed"
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        return self in (Phase.COMMITTED, Phase.ABORTED)


# ---------------------------------------------------------------- inputs (source)
@dataclass(frozen=True)
class Replied:
    """The target answered request ``token`` with ``payload``."""

    token: int
    payload: Any


@dataclass(frozen=True)
class Refused:
    """The target answered request ``token`` with an error ``code``."""

    token: int
    code: str
    message: str


@dataclass(frozen=True)
class NoAnswer:
    """Request ``token`` got no answer in time (lost, slow, dead or cut off: unknown)."""

    token: int


@dataclass(frozen=True)
class TimerFired:
    token: int


SourceInput = Union[Replied, Refused, NoAnswer, TimerFired]


# ---------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Request:
    """Send ``ctrl`` to the target's migrate topic; feed the outcome back with ``token``."""

    token: int
    ctrl: str
    kwargs: dict
    timeout: float


@dataclass(frozen=True)
class Notify:
    """Send ``ctrl`` to the target and ignore the answer (best effort: leases clean up)."""

    ctrl: str
    kwargs: dict


@dataclass(frozen=True)
class Wait:
    """Call back with ``TimerFired(token)`` after ``delay`` seconds."""

    token: int
    delay: float


@dataclass(frozen=True)
class Resume:
    """Source: the program continues here (running again only if it was running)."""


@dataclass(frozen=True)
class Drop:
    """Source: the target's copy is the program now; forget ours."""


@dataclass(frozen=True)
class Journal:
    """Target: durably record ``decision`` for the migration before acting on it."""

    migration_id: str
    decision: str


@dataclass(frozen=True)
class Activate:
    """Target: the prepared copy becomes the program, owner epoch ``epoch``; it runs only
    if ``resume`` (a paused program arrives paused)."""

    epoch: int
    resume: bool


@dataclass(frozen=True)
class Discard:
    """Target: drop the prepared copy."""


@dataclass(frozen=True)
class CancelLease:
    """Target: the lease timer is no longer needed."""


@dataclass(frozen=True)
class Answer:
    """Target: the reply to the step that came in."""

    payload: dict


Output = Union[Request, Notify, Wait, Resume, Drop, Journal, Activate, Discard, CancelLease,
               Answer]


@dataclass(frozen=True)
class Timing:
    """How long each side waits (seconds).  ``lease`` must exceed a commit round trip;
    queries back off from ``query`` to ``query_max`` while in doubt."""

    step: float = 10.0
    lease: float = 30.0
    query: float = 1.0
    query_max: float = 15.0


# ---------------------------------------------------------------- source side
@dataclass
class SourceMigration:
    """The source's view of one migration; the engine has already paused and captured
    the program and sends the first :class:`Request` that :meth:`start` returns."""

    migration_id: str
    instance_id: str
    epoch: int  # the epoch of the copy being moved; the target's will be epoch + 1
    was_running: bool
    snapshot: dict
    size: int
    timing: Timing = field(default_factory=Timing)
    phase: Phase = Phase.PREPARING
    error: str | None = None
    queries: int = 0
    _token: int = 0
    _backoff: float = 0.0

    def _next(self) -> int:
        self._token += 1
        return self._token

    def _ids(self) -> dict:
        return {"instance_id": self.instance_id, "migration_id": self.migration_id}

    def start(self) -> list[Output]:
        return [Request(self._next(), RESTORE,
                        {"snapshot": self.snapshot, "paused": True, "size": self.size,
                         "epoch": self.epoch + 1, "lease_s": self.timing.lease, **self._ids()},
                        self.timing.step)]

    def _commit(self) -> list[Output]:
        self.phase = Phase.COMMITTING
        return [Request(self._next(), COMMIT,
                        {**self._ids(), "epoch": self.epoch + 1, "resume": self.was_running},
                        self.timing.step)]

    def _abort(self, reason: str) -> list[Output]:
        self.phase, self.error = Phase.ABORTED, reason
        return [Notify(ABORT, self._ids()), Resume()]

    def _doubt(self, reason: str) -> list[Output]:
        self.phase = Phase.IN_DOUBT
        self.error = reason
        self._backoff = min(self.timing.query_max, max(self.timing.query, 2 * self._backoff))
        return [Wait(self._next(), self._backoff)]

    def _decided(self, state: Any, reason: str) -> list[Output]:
        if state == COMMITTED:
            self.phase, self.error = Phase.COMMITTED, None
            return [Drop()]
        if state in (ABORTED, UNKNOWN):
            self.phase, self.error = Phase.ABORTED, reason
            return [Resume()]
        if state == PREPARED:
            return self._commit()
        return self._doubt(f"unexpected migration state {state!r}")

    def handle(self, event: SourceInput) -> list[Output]:
        """Feed one input; stale inputs (an older token, a finished migration) do nothing."""
        if self.phase.final or event.token != self._token:
            return []
        phase = self.phase
        if phase is Phase.PREPARING:
            if isinstance(event, Replied):
                return self._commit()
            if isinstance(event, Refused):
                return self._abort(f"target could not restore: {event.message}")
            return self._abort("no answer from the target to restore_code")
        if phase is Phase.COMMITTING:
            if isinstance(event, Replied):
                state = event.payload.get("state") if isinstance(event.payload, dict) else None
                return self._decided(state, "the target aborted the migration (lease over)")
            if isinstance(event, Refused) and event.code == "not_found":
                return self._decided(UNKNOWN, f"the target lost the prepared copy: "
                                              f"{event.message}")
            return self._doubt("commit not confirmed: " + (
                event.message if isinstance(event, Refused) else "no answer"))
        # IN_DOUBT
        if isinstance(event, TimerFired):
            self.queries += 1
            return [Request(self._next(), STATUS, self._ids(), self.timing.step)]
        if isinstance(event, Replied):
            state = event.payload.get("state") if isinstance(event.payload, dict) else None
            return self._decided(state, "the target never committed the migration")
        return self._doubt(self.error or "in doubt")


# ---------------------------------------------------------------- target side
@dataclass
class TargetMigration:
    """The target's view of one migration it prepared a copy for."""

    migration_id: str
    instance_id: str
    epoch: int
    state: str = PREPARED

    def _answer(self) -> Answer:
        return Answer({"state": self.state, "migration_id": self.migration_id,
                       "instance_id": self.instance_id, "epoch": self.epoch})

    def commit(self, epoch: int, resume: bool) -> list[Output]:
        if self.state == PREPARED:
            if epoch != self.epoch:
                return [self._answer()]  # a commit for another epoch: not ours to act on
            self.state = COMMITTED
            return [CancelLease(), Journal(self.migration_id, COMMITTED),
                    Activate(self.epoch, resume), self._answer()]
        return [self._answer()]

    def abort(self) -> list[Output]:
        if self.state == PREPARED:
            self.state = ABORTED
            return [CancelLease(), Journal(self.migration_id, ABORTED), Discard(),
                    self._answer()]
        return [self._answer()]

    def lease_expired(self) -> list[Output]:
        if self.state == PREPARED:
            self.state = ABORTED
            return [Journal(self.migration_id, ABORTED), Discard()]
        return []

    def status(self) -> list[Output]:
        return [self._answer()]


def decided_answer(migration_id: str, decision: str | None) -> dict:
    """What a target says about a migration it holds no machine for (journal only)."""
    return {"state": decision or UNKNOWN, "migration_id": migration_id}


def presume_abort(journal: Any, migration_id: str) -> str:
    """The decision for a migration this target holds no prepared copy of.

    A target that says it does not know a migration must never commit it later (a
    duplicate restore and a late commit may still be on their way, say after a reboot
    lost the prepared copy and the reply cache): so "unknown" is written down as
    ``aborted`` before it is said.  ``journal``: a :class:`~runtime.journal.MemoryJournal`
    (or anything with ``decision``/``decide``).
    """
    decision = journal.decision(migration_id)
    if decision is None:
        journal.decide(migration_id, ABORTED)
        decision = ABORTED
    return decision


# ---------------------------------------------------------------- messages in flight
# Between the source's snapshot and the moment the target's subscriptions reach the broker,
# messages for the program arrive at the source only: they would die with the source's
# copy.  So the source keeps what arrives for the paused copy after its snapshot (the
# "late" messages) and sends them with the commit; the target holds back what arrives for
# its prepared copy (the "early" messages) and, at the commit, delivers the late messages
# it lacks, then its own.  A message is (topic, via filter, payload, retained).

#: at most this many late messages travel with a commit (the oldest beyond are dropped,
#: and the engine logs it): about 100 s of a 100 msg/s stream
MAX_CARRIED = 10_000

Carried = tuple  # (topic: str, via: str | None, payload: bytes, retained: bool)


def carried_to_wire(messages: list[Carried]) -> list[dict]:
    return [{"topic": t, "via": v, "b64": base64.b64encode(d).decode("ascii"), "retained": r}
            for t, v, d, r in messages]


def carried_from_wire(items: Any) -> list[Carried]:
    """The late messages of a commit request (malformed entries are skipped)."""
    out: list[Carried] = []
    if not isinstance(items, list):
        return out
    for item in items:
        try:
            out.append((str(item["topic"]), item.get("via"),
                        base64.b64decode(item["b64"].encode("ascii"), validate=True),
                        bool(item.get("retained"))))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def splice(late: list[Carried], early: list[Carried]) -> list[Carried]:
    """What the committed copy gets, in order: the late messages the target did not also
    receive, then the early ones.

    Per (topic, filter), the broker hands both engines the same sequence, and the target's
    subscription started part-way through the source's: its early messages on a topic
    continue the source's late ones, overlapping by however many arrived at both.  The
    overlap is the longest run at the end of the late messages (by payload digest) that
    matches the start of the early ones.  Messages that carry an id or a time stamp are
    spliced exactly; identical repeated payloads may be taken for an overlap only when
    they line up at both ends, so a message is never lost, at worst delivered twice.
    """
    def key(m: Carried) -> tuple:
        return (m[0], m[1])

    def digest(m: Carried) -> bytes:
        return hashlib.blake2b(m[2], digest_size=12).digest()

    early_by_key: dict[tuple, list[bytes]] = {}
    for m in early:
        early_by_key.setdefault(key(m), []).append(digest(m))
    late_by_key: dict[tuple, list[int]] = {}
    for i, m in enumerate(late):
        late_by_key.setdefault(key(m), []).append(i)
    dropped: set[int] = set()
    for k, indices in late_by_key.items():
        theirs = early_by_key.get(k)
        if not theirs:
            continue
        ours = [digest(late[i]) for i in indices]
        for n in range(min(len(ours), len(theirs)), 0, -1):
            if ours[-n:] == theirs[:n]:
                dropped.update(indices[-n:])
                break
    return [m for i, m in enumerate(late) if i not in dropped] + list(early)
