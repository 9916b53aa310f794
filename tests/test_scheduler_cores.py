"""CPU capacity per board: engines name their cores in the report's meta (only when not
1, so recorded traces keep their bytes), a real worker offers ``os.cpu_count()`` or its
``cores`` key, and the scheduler places by them (simulated boards: their profile's)."""

from __future__ import annotations

import os

import pytest
from sched_sim import Lab, app_doc

from runtime.clock import VirtualClock
from runtime.engine import CodeEngine
from runtime.memory import MemoryBroker
from runtime.scheduler.service import Scheduler, SchedulerConfig
from runtime.scheduler.store import SchedulerStore
from runtime.worker import ConfigError, WorkerConfig, board_cores


def _engine(**kw) -> CodeEngine:
    clock = VirtualClock()
    return CodeEngine(MemoryBroker(clock).client("e"), clock, engine_id="e", **kw)


def test_the_report_names_cores_only_when_not_one() -> None:
    assert "cores" not in _engine().status_report()["meta"]  # not said: nothing added
    assert "cores" not in _engine(cores=1).status_report()["meta"]  # the default
    assert _engine(cores=4).status_report()["meta"]["cores"] == 4
    with pytest.raises(ValueError, match="cores"):
        _engine(cores=0)


def test_a_worker_offers_its_cpu_count_or_its_cores_key() -> None:
    base = {"pubsub_url": "mqtt://127.0.0.1:1883", "id": "w1"}
    assert board_cores(WorkerConfig.from_dict(base)) == max(1, os.cpu_count() or 1)
    assert board_cores(WorkerConfig.from_dict({**base, "cores": 3})) == 3
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ConfigError, match="cores must be a whole number"):
            WorkerConfig.from_dict({**base, "cores": bad})


def test_the_scheduler_takes_reported_then_device_then_default_cores() -> None:
    clock = VirtualClock()
    s = Scheduler(MemoryBroker(clock).client("s"), clock, SchedulerStore(":memory:"),
                  SchedulerConfig(device_cores={"pi": 4}, board_cpu=1.0))
    assert s._cores_of({"cores": 2, "device": "pi"}) == 2.0  # what the engine says wins
    assert s._cores_of({"device": "pi"}) == 4.0
    assert s._cores_of({"device": "other"}) == 1.0
    assert s._cores_of({"cores": "many"}) == 1.0


def test_a_simulated_board_is_as_big_as_its_profiles_cores() -> None:
    """Three programs of 0.5 cores fit on one 4-core Raspberry Pi 3, not on 1-core
    boards (the scheduler used to take every board for one core)."""
    lab = Lab(boards=0)
    lab.world.add_board("pi", "raspberry-pi-3")
    lab.world.add_board("zero", "raspberry-pi-zero")
    lab.run(2.0)
    boards = {b.id: b.cpu for b in lab.scheduler._boards()[0]}
    assert boards == {"pi": 4.0, "zero": 1.0}
    token = lab.wait(lab.client.submit(app_doc(count=5, memory_mb=10, cpu=0.5)))["token"]
    where = sorted(lab.where(token).values())
    assert where.count("pi") >= 3 and where.count("zero") <= 2
