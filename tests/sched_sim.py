"""Shared helpers for the scheduler tests in simulation: a world with boards, a
scheduler node, a client, and an invariant sampler (running copies per instance)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness import forever_counter

from runtime.scheduler.client import SchedulerClient
from thingssim.sim.boards import get_profile
from thingssim.sim.world import World, link_profile

COUNTER = forever_counter(0.1)


def app_doc(name: str = "demo", count: int = 3, memory_mb: float = 40.0, **extra: Any) -> dict:
    return {"name": name, "components": [{"name": "counter", "code": COUNTER, "count": count,
                                          "memory_mb": memory_mb, **extra}]}


def running_copies(world: World) -> Counter:
    """Instance id -> number of engines running it now (prepared copies excluded)."""
    copies: Counter = Counter()
    for board in world.boards.values():
        if not board.up:
            continue
        engine = board.engine
        for iid, host in engine.programs.items():
            if iid not in engine._prepared and host.status is not None and \
                    host.status.value == "Running":
                copies[iid] += 1
    return copies


class Lab:
    def __init__(self, boards: int = 3, seed: int = 1, keepalive: float = 2.0,
                 profile: str = "desktop-vm", sample: float = 0.05, **config: Any) -> None:
        self.world = w = World(seed=seed, keepalive=keepalive)
        for i in range(boards):
            w.add_board(f"b{i}", profile)
        self.config = {"checkpoint_s": 1.0, **config}
        self.node = w.add_scheduler(**self.config)
        link = w.network.add_link("user", link_profile(get_profile("desktop-vm")))
        self.transport = w.network.client("user", link)
        self.transport.connect()
        self.client = SchedulerClient(self.transport, w.clock, timeout=120.0,
                                      client_id="user")
        self.max_copies: Counter = Counter()
        self.last_running: dict[str, float] = {}
        self._sample_every = sample
        w.at(0.0, self._sample)
        w.run(2.0)

    def _sample(self) -> None:
        now = self.world.clock.now()
        for iid, n in running_copies(self.world).items():
            self.max_copies[iid] = max(self.max_copies[iid], n)
            self.last_running[iid] = now
        self.world.at(now + self._sample_every, self._sample)

    def run(self, seconds: float) -> None:
        self.world.run(self.world.clock.now() + seconds)

    def wait(self, future: Any, timeout: float = 200.0) -> Any:
        return self.world.wait(future, timeout)

    @property
    def scheduler(self) -> Any:
        return self.node.scheduler

    def where(self, token: str) -> dict[str, str]:
        """Instance id -> the engine its scheduler says it is on."""
        status = self.wait(self.client.status(token))
        return {v["id"]: v["engine"] for v in status["instances"].values()}
