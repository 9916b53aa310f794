"""Every corpus program gives the same output with and without migrations (issue 2).

Migrations happen at seeded random loop boundaries (event counts), each one through the
real JSON document (serialised, parsed, validated) into a fresh host on a fresh clock.
"""

from __future__ import annotations

import random

import pytest
from harness import corpus, run_plain, run_with_migrations

from runtime import ProgramStatus

PROGRAMS = corpus()


def test_corpus_is_complete():
    names = {p.stem for p in PROGRAMS}
    assert len(names) >= 12
    assert {"counter", "factorial", "regulator", "richards", "deltablue", "raytrace", "nbody",
            "navier_stokes", "motion_detector"} <= names


@pytest.fixture(scope="module")
def plain_runs() -> dict:
    runs = {}
    for program in PROGRAMS:
        output, run = run_plain(program.read_text())
        runs[program.stem] = (output, run.host.events_run, run.host)
    return runs


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_program_runs_to_a_clean_end(program, plain_runs):
    output, events, host = plain_runs[program.stem]
    assert host.status is ProgramStatus.EXITED and host.exit_code == 0, host.error
    assert output and events > 10


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_migrations_at_random_points_keep_the_output(program, plain_runs):
    plain, events, _ = plain_runs[program.stem]
    rng = random.Random(f"points:{program.stem}")
    points = rng.sample(range(1, events), k=min(4, events - 1))
    moved, run = run_with_migrations(program.read_text(), points, compress=True)
    assert moved == plain
    assert run.host.events_run == events


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_ten_hops(program, plain_runs):
    """Ten migrations spread over the run, then ten back-to-back hops at one boundary."""
    plain, events, _ = plain_runs[program.stem]
    rng = random.Random(f"hops:{program.stem}")
    spread = rng.sample(range(1, events), k=min(10, events - 1))
    assert run_with_migrations(program.read_text(), spread)[0] == plain
    in_a_row = [rng.randrange(1, events)]
    assert run_with_migrations(program.read_text(), in_a_row, hops_per_point=10)[0] == plain
