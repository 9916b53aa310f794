"""A user's migration in flight when its source board dies, with the scheduler recovering
the same instance: exactly one running copy, whatever the interleaving.

The race: a user moves an instance from S to T through a Dispatcher (not the scheduler).
S crashes or is cut off at some step of the migration protocol.  The scheduler sees S
dead, waits its fence time and recovers the instance from a checkpoint elsewhere at
owner epoch N+1, while T may still hold a prepared copy that a late commit turns into a
running one at epoch N+1, or S, back, resumes its paused copy after T aborted.

Each schedule: three boards, one instance, a user's ``move_code(S, T)``; the fault hits
S just as the k-th message of the migration (the user's command, restore, commit, status
queries and their replies, seen on the wire where they leave or arrive) passes, k over
every step, the fault one of: crash (with a reboot, or for good), a partition of S's
link for a seeded duration, and the same with T's link also cut for a while or the
commit held in the network (a late commit).  The invariant is checked every 10 ms of
simulated time on the engines' own state (not on reports): never two Running copies; and
after the faults heal, exactly one runs.  ``THINGSSIM_RACE=<n>`` runs ``n`` schedules per
step and fault kind (default 2) from the seeded generator.
"""

from __future__ import annotations

import os
import random
from typing import Any, Optional

import pytest
from sched_sim import Lab, app_doc, running_copies

from runtime import protocol as p

FAULTS = ("crash-reboot", "crash", "partition", "partition+target", "partition+late-commit")
STEPS = range(12)  # the k-th migration message; schedules past the last one are skipped
PER_KIND = int(os.environ.get("THINGSSIM_RACE", "2"))


def schedules() -> list[tuple[int, str, int]]:
    return [(step, fault, n) for step in STEPS for fault in FAULTS for n in range(PER_KIND)]


class Race:
    """One schedule's world: a scheduler, three boards, one instance, a user dispatcher."""

    def __init__(self, step: int, fault: str, n: int) -> None:
        self.rng = random.Random(f"race:{step}:{fault}:{n}")
        self.step, self.fault = step, fault
        self.lab = lab = Lab(boards=3, seed=1 + n, sample=0.01, period_s=5.0)
        self.token = lab.wait(lab.client.submit(app_doc(count=1)))["token"]
        lab.run(3.0)  # placed, and checkpointed
        (self.iid, self.source), = lab.where(self.token).items()
        self.target = sorted(b for b in lab.world.boards if b != self.source)[
            self.rng.randrange(2)]
        self.user = lab.world.add_dispatcher("user-d")
        lab.run(1.0)
        self.seen = 0
        self.hit: Optional[tuple[float, str, str]] = None
        self.heal_at = 0.0
        lab.world.network.intercept(self._watch)

    def _protocol(self, topic: str) -> bool:
        s, t = self.source, self.target
        return topic in (p.migrate_topic(t, s), f"{s}/reply/{t}", f"{t}/reply/{s}") or \
            topic == p.engine_topic(s, "cmd")

    def _watch(self, stage: str, client: str, topic: str, payload: bytes, qos: int) -> Any:
        if stage == "retained" or not self._protocol(topic):
            return None
        k, self.seen = self.seen, self.seen + 1
        if k != self.step or self.hit is not None:
            return None
        now = self.lab.world.clock.now()
        self.hit = (now, stage, topic)
        self.lab.world.at(now, self._strike)
        if self.fault == "partition+late-commit" and b"commit_migration" in payload:
            return ("delay", self.rng.uniform(12.0, 40.0))
        return None

    def _strike(self) -> None:
        world, rng = self.lab.world, self.rng
        now = world.clock.now()
        s = world.boards[self.source]
        if self.fault.startswith("crash"):
            s.crash()
            if self.fault == "crash-reboot":
                world.at(now + rng.uniform(1.0, 40.0), s.reboot)
            self.heal_at = now + 41.0
            return
        cut = rng.choice([rng.uniform(1.0, 9.0), rng.uniform(11.0, 30.0),
                          rng.uniform(30.0, 60.0)])
        s.link.down()
        world.at(now + cut, s.link.up)
        self.heal_at = now + cut
        if self.fault == "partition+target":
            t = world.boards[self.target]
            start = now + rng.uniform(0.0, 2.0)
            world.at(start, t.link.down)
            back = start + rng.uniform(1.0, 40.0)
            world.at(back, t.link.up)
            self.heal_at = max(self.heal_at, back)

    def run(self) -> None:
        lab = self.lab
        self.move = self.user.move_code(self.source, self.target, "counter", self.iid)
        lab.run(60.0)
        # every fault is over by now; give the fence, a lease, a cycle and a query backoff
        lab.world.run(max(lab.world.clock.now(), self.heal_at) + 60.0)


@pytest.mark.parametrize("step,fault,n", schedules())
def test_a_migration_in_flight_and_a_recovery_never_run_two_copies(step: int, fault: str,
                                                                    n: int) -> None:
    race = Race(step, fault, n)
    race.run()
    if race.hit is None:
        pytest.skip(f"the migration has fewer than {step + 1} messages in this schedule")
    lab = race.lab
    where = (race.hit, race.source, race.target)
    assert lab.max_copies[race.iid] <= 1, ("two running copies", where, lab.max_copies)
    copies = running_copies(lab.world)
    assert copies.get(race.iid) == 1, ("not exactly one copy after healing", where, copies)
