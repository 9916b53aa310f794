"""Snapshot and restore time and size: thingssim vs. cloudpickle on the same state.

The state is each corpus program halfway through its run (by event count): globals,
timers, subscriptions and queued messages.  Sizes (raw and gzip level 6) go to
``extra_info`` (of ``results/benchmarks.json``).  E2 (``thingssim experiment
thingsmigrate``) measures the same workloads with replications and confidence intervals:
its table replaced the ratio table once made from this file.
"""

from __future__ import annotations

import gzip

import pytest
from workloads import (
    cloudpickle_dumps,
    cloudpickle_loads,
    corpus_names,
    host_at_midpoint,
    source_of,
)

from runtime import ProgramHost, VirtualClock
from runtime.program import compile_program
from runtime.snapshot import dumps, loads

ROUNDS = 15


@pytest.fixture(scope="module")
def midpoints() -> dict:
    return {name: host_at_midpoint(source_of(name)) for name in corpus_names()}


def _sizes(benchmark, data: bytes) -> None:
    benchmark.extra_info["bytes"] = len(data)
    benchmark.extra_info["gzip_bytes"] = len(gzip.compress(data, compresslevel=6, mtime=0))


@pytest.mark.parametrize("program", corpus_names())
def test_snapshot_thingssim(benchmark, midpoints, program):
    host = midpoints[program]
    benchmark.group = f"snapshot:{program}"
    data = benchmark.pedantic(lambda: dumps(host.snapshot()), rounds=ROUNDS, warmup_rounds=1)
    _sizes(benchmark, data)
    assert loads(data)["program"]["instance_id"] == host.instance_id


@pytest.mark.parametrize("program", corpus_names())
def test_snapshot_cloudpickle(benchmark, midpoints, program):
    host = midpoints[program]
    benchmark.group = f"snapshot:{program}"
    data = benchmark.pedantic(cloudpickle_dumps, args=(host,), rounds=ROUNDS, warmup_rounds=1)
    _sizes(benchmark, data)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("program", corpus_names())
def test_restore_thingssim(benchmark, midpoints, program, warm):
    """cold: the restoring process has never compiled the program; warm: it has."""
    data = dumps(midpoints[program].snapshot())
    benchmark.group = f"restore:{program}"

    def setup():
        if not warm:
            compile_program.cache_clear()
        return (), {}

    host = benchmark.pedantic(lambda: ProgramHost.restore(loads(data), clock=VirtualClock()),
                              setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert host.alive


@pytest.mark.parametrize("program", corpus_names())
def test_restore_cloudpickle(benchmark, midpoints, program):
    host = midpoints[program]
    data = cloudpickle_dumps(host)
    benchmark.group = f"restore:{program}"
    state = benchmark.pedantic(cloudpickle_loads, args=(data, host), rounds=ROUNDS,
                               warmup_rounds=1)
    assert set(state) == {"globals", "timers", "subs", "queue", "source"}
