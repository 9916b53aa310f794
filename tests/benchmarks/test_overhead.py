"""Steady-state overhead: a corpus program under ProgramHost vs. a bare plain-Python loop.

Both sides run the same unmodified program source to its end in virtual time; the host
adds only its own loop bookkeeping (callbacks are not instrumented).  The benchmark time
is the whole run (loop included); ``extra_info`` has the time spent inside the program's
callbacks (best of 5) and the tracemalloc peak of one run.
"""

from __future__ import annotations

import tracemalloc

import pytest
from workloads import corpus_names, run_host_timed, run_plain_timed, source_of

RUNNERS = {"host": run_host_timed, "plain": run_plain_timed}


def peak_memory(fn, source: str) -> int:
    tracemalloc.start()
    try:
        fn(source)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("program", corpus_names())
def test_run_program(benchmark, program, runner):
    source = source_of(program)
    fn = RUNNERS[runner]
    benchmark.group = f"overhead:{program}"
    output, _ = benchmark.pedantic(fn, args=(source,), rounds=7, iterations=1,
                                   warmup_rounds=1)
    assert output == RUNNERS["plain"](source)[0]  # same program, same output on both sides
    if not benchmark.disabled:
        benchmark.extra_info["peak_bytes"] = peak_memory(fn, source)
        # time inside the program's own callbacks, best of 5 runs
        benchmark.extra_info["callback_s"] = min(fn(source)[1] for _ in range(5))
