"""Seeded schedules of board deaths, partitions, returns and scheduler crashes in
simulation, with the invariant: each instance runs at most once at any time, and every
instance of a live application runs again within the fence time plus a recovery bound
after the faults stop."""

from __future__ import annotations

import random

import pytest
from sched_sim import Lab, app_doc, running_copies

SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_fault_schedules_never_run_an_instance_twice(seed: int) -> None:
    rng = random.Random(seed)
    lab = Lab(boards=4, seed=seed, lease_s=3.0, lease_margin_s=1.0)
    standby = lab.world.add_scheduler("scheduler-2", store=lab.node.store, **lab.config) \
        if seed % 2 else None
    tokens = [lab.wait(lab.client.submit(app_doc(name=f"a{i}", count=rng.randint(1, 4))))
              ["token"] for i in range(2)]
    boards = sorted(lab.world.boards)
    t = lab.world.clock.now() + 1.0
    for _ in range(rng.randint(2, 5)):
        t += rng.uniform(1.0, 12.0)
        what = rng.choice(["crash", "partition", "scheduler"])
        board = lab.world.boards[rng.choice(boards)]
        if what == "crash":
            lab.world.at(t, board.crash)
            lab.world.at(t + rng.uniform(2.0, 25.0), board.reboot)
        elif what == "partition":
            lab.world.at(t, board.link.down)
            lab.world.at(t + rng.uniform(1.0, 25.0), board.link.up)
        else:
            lab.world.at(t, lab.node.crash)
            lab.world.at(t + rng.uniform(1.0, 10.0), lab.node.reboot)
    end = t + 30.0  # every fault is healed by then
    lab.world.run(end)
    fence = 10.0
    recovery_bound = 3 * 3.0 + 5.0  # a takeover (lease) plus a cycle, generously
    lab.world.run(end + fence + recovery_bound)
    assert max(lab.max_copies.values()) == 1, lab.max_copies
    copies = running_copies(lab.world)
    live = [i for tok in tokens for i in (lab.scheduler if lab.node.up else
                                          standby.scheduler).rows.values()
            if i.token == tok]
    missing = [r.instance_id for r in live if copies.get(r.instance_id) != 1]
    assert not missing, (missing, copies)
    if standby is not None:
        assert not (lab.node.scheduler.active and standby.scheduler.active)
