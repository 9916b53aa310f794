"""Snapshots move between CPython minor versions, both ways (issue 2: no bytecode inside).

Uses the other CPython 3 interpreters found on this machine (pyenv's versions, or
python3.X on PATH); skipped, with the reason, where there are none.  Programs that need
NumPy are left out for interpreters without it.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Run, corpus

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).parent / "crossversion_worker.py"


def other_interpreters() -> list[str]:
    found = {}
    candidates = glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))
    candidates += [p for m in range(8, 16) if (p := shutil.which(f"python3.{m}"))]
    for path in sorted(candidates):
        try:
            version = subprocess.run([path, "-c", "import platform;print(platform."
                                      "python_version())"], capture_output=True, text=True,
                                     timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not version:
            continue
        minor = tuple(map(int, version.split(".")[:2]))
        if minor >= (3, 9) and minor != sys.version_info[:2]:
            found.setdefault(minor, path)
    return [found[m] for m in sorted(found)]


INTERPRETERS = other_interpreters()
PROGRAMS = [p for p in corpus() if "numpy" not in p.read_text()]


def run_worker(python: str, job: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([python, str(WORKER)], input=json.dumps(job), capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def plan(tmp_path: Path) -> list[dict]:
    """For each program: a seeded split point, the snapshot there, and the expected rest."""
    cases = []
    for program in PROGRAMS:
        whole = Run(program.read_text()).run()
        events = whole.host.events_run
        point = random.Random(f"xv:{program.stem}").randrange(1, events)
        run = Run(program.read_text()).start()
        while run.host.alive and run.host.events_run < point and run.clock.step():
            pass
        before = run.output
        snap = tmp_path / f"{program.stem}.here.json"
        snap.write_text(json.dumps(run.host.snapshot()))
        cases.append({"program": program, "point": point, "snap": snap,
                      "rest": whole.output[len(before):], "whole": whole.output})
    return cases


@pytest.mark.skipif(not INTERPRETERS, reason="no other CPython 3 minor version on this machine")
@pytest.mark.parametrize("python", INTERPRETERS, ids=lambda p: p.split("/versions/")[-1][:5])
def test_snapshots_cross_python_versions_both_ways(python, tmp_path):
    cases = plan(tmp_path)
    job = {"finish": [str(c["snap"]) for c in cases],
           "make": [[str(c["program"]), c["point"], str(tmp_path / f"{c['program'].stem}.there")]
                    for c in cases]}
    answer = run_worker(python, job)
    assert answer["python"] != platform.python_version()
    for case in cases:  # made here, finished there
        assert answer["outputs"][str(case["snap"])] == case["rest"], case["program"].stem
    for case in cases:  # made there, finished here
        from runtime import ProgramHost
        from runtime.snapshot import loads

        data = (tmp_path / f"{case['program'].stem}.there").read_bytes()
        doc = loads(data)
        assert doc["created_by"]["python"] == answer["python"]
        console: list[str] = []
        run = Run("pass")
        run.host = run.bus.attach(ProgramHost.restore(doc, clock=run.clock,
                                                      publish=run.bus.publish,
                                                      console=console.append))
        run.clock.run()
        assert "".join(console) == case["rest"], case["program"].stem


def test_this_interpreter_is_listed_in_the_snapshot():
    run = Run("things.subscribe('x', print)").start()
    assert run.host.snapshot()["created_by"]["python"] == platform.python_version()
    assert sys.version_info >= (3, 9)
