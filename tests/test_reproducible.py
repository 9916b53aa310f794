"""Results reproduce from the README: deterministic outputs are byte-identical in fresh
processes, from another directory, with another path spelling and another
``PYTHONHASHSEED``; every file in results/ is written by a documented command
(``experiments/all.py``), and the README shows exactly those commands."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_CSVS = ["actions.csv", "boards.csv", "faults.csv", "messages.csv", "migrations.csv",
                 "programs.csv"]


def _all():
    spec = importlib.util.spec_from_file_location("experiments_all", ROOT / "experiments" /
                                                  "all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(argv: list[str], cwd: Path, hashseed: str) -> str:
    result = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONHASHSEED": hashseed}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _detour(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd``, through a detour (``.../experiments/../experiments/./``)."""
    parts = os.path.relpath(path, cwd).split(os.sep)
    return "/".join([*parts[:-1], "..", parts[-2], ".", parts[-1]])


def test_migration_chain_csvs_are_identical_across_processes_paths_and_hash_seeds(tmp_path):
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "cwd"
    elsewhere.mkdir()
    _run(["-m", "thingssim.cli", "sim", "experiments/scenarios/migration_chain.toml",
          "--out", str(a), "--no-progress"], ROOT, "1")
    toml = _detour(ROOT / "experiments" / "scenarios" / "migration_chain.toml", elsewhere)
    out = _run(["-m", "thingssim.cli", "sim", toml, "--out", "../b", "--no-progress"],
               elsewhere, "2")
    assert "run time:" in out
    assert sorted(p.name for p in a.iterdir()) == SCENARIO_CSVS
    for name in SCENARIO_CSVS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_snapshot_records_the_file_name_not_the_path_as_typed(tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    _run(["-m", "thingssim.cli", "snapshot", "tests/programs/counter.py", "--after", "0.35",
          "-o", str(tmp_path / "a.json"), "--virtual"], ROOT, "1")
    _run(["-m", "thingssim.cli", "snapshot", _detour(ROOT / "tests" / "programs" /
                                                     "counter.py", elsewhere),
          "--after", "0.35", "-o", "../b.json", "--virtual"], elsewhere, "2")
    a, b = ((tmp_path / n).read_bytes() for n in ("a.json", "b.json"))
    assert len(a) == len(b)
    docs = [json.loads(data) for data in (a, b)]
    assert [d["program"]["filename"] for d in docs] == ["counter.py", "counter.py"]
    for doc in docs:
        doc["program"].pop("instance_id")  # unique per instance, by design
    assert docs[0] == docs[1]


def test_every_results_file_is_written_by_a_documented_command():
    experiments = _all()
    assert experiments.orphans() == [], "files in results/ that no command in " \
        "experiments/all.py writes"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for exp in experiments.EXPERIMENTS:
        assert f"`{exp.command}`" in readme, f"README lacks the command of {exp.name}"
    written = {w for e in experiments.EXPERIMENTS for w in e.writes}
    folders = {w.rsplit("/", 1)[0] for w in written if "/" in w}
    for mention in set(re.findall(r"results/[\w./-]*(?:\{[\w,]+\})?", readme)):
        stem, _, alternatives = mention.partition("{")
        for name in [stem + alt for alt in alternatives.rstrip("}").split(",")]:
            path = name[len("results/"):].rstrip("./")
            assert not path or path in written or path in folders, \
                f"README mentions {name}, which no documented command writes"


def test_a_program_importing_random_snapshots_the_same_on_every_run(tmp_path):
    """With --virtual (and in the simulator, whose instance ids are seeded) a program's
    own random is seeded reproducibly."""
    program = tmp_path / "dice.py"
    program.write_text("import random\nthings.set_interval(lambda: None, 0.1)\n")
    docs = []
    for n in (1, 2):
        _run(["-m", "thingssim.cli", "snapshot", str(program), "--after", "0.35",
              "-o", str(tmp_path / f"{n}.json"), "--virtual"], ROOT, str(n))
        doc = json.loads((tmp_path / f"{n}.json").read_bytes())
        doc["program"].pop("instance_id")  # unique per instance, by design
        docs.append(doc)
    assert docs[0] == docs[1]
