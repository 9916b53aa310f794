"""Regenerate every file in results/ with the commands the README documents.

    python experiments/all.py                      # everything, into results/ (12-20 min)
    python experiments/all.py --list               # the commands, what each writes
    python experiments/all.py --only migration_chain sensor_pipeline
    python experiments/all.py --results /tmp/r     # somewhere else (results/ untouched)
    python experiments/all.py --check              # files in results/ no command writes
    python experiments/all.py --verify             # deterministic outputs: byte-identical?

``EXPERIMENTS`` below is the single list: the README's table shows the same commands
(``tests/test_reproducible.py`` checks that, and that every file in results/ is written by
one of them).  Each command runs from the repository root, exactly as documented, with
``results`` replaced by ``--results``.  Outputs are of two kinds:

- *deterministic*: the same bytes on every run (same seed, Python version and platform),
  from any directory, with any path spelling and any ``PYTHONHASHSEED``;
- *measured*: wall-clock times, memory, benchmark statistics: they differ on every run.

``--verify`` runs each experiment with deterministic outputs twice, in fresh processes
with different ``PYTHONHASHSEED`` values, once from the repository root and once from
another directory with every path spelled differently, and compares the files with
``cmp``'s strictness (byte for byte).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "results"
_SCENARIO_CSVS = ("actions.csv", "boards.csv", "faults.csv", "messages.csv",
                  "migrations.csv", "programs.csv")


@dataclass(frozen=True)
class Experiment:
    name: str
    #: the documented command, run from the repository root; ``results`` is the folder
    command: str
    #: what it writes, relative to the results folder
    deterministic: tuple[str, ...] = ()
    measured: tuple[str, ...] = ()
    #: what it needs beyond ``pip install -e '.[test]'``
    needs: str = ""

    @property
    def writes(self) -> tuple[str, ...]:
        return self.deterministic + self.measured

    def argv(self, results: str = RESULTS) -> list[str]:
        """The command's argv with the results folder replaced (a whole-word path prefix)."""
        words = []
        for word in shlex.split(self.command):
            if word == RESULTS or word.startswith(RESULTS + "/"):
                word = results + word[len(RESULTS):]
            words.append(word)
        return words


def _figures(*stems: str) -> tuple[str, ...]:
    """An experiment's figures: ``fig_<stem>.png`` and ``.pdf`` each."""
    return tuple(f"fig_{s}.{ext}" for s in stems for ext in ("png", "pdf"))


EXPERIMENTS = [
    Experiment("migration_chain",
               "thingssim sim experiments/scenarios/migration_chain.toml "
               "--out results/migration_chain",
               deterministic=tuple(f"migration_chain/{f}" for f in _SCENARIO_CSVS)),
    Experiment("sensor_pipeline",
               "thingssim sim experiments/scenarios/sensor_pipeline.toml "
               "--out results/sensor_pipeline",
               deterministic=tuple(f"sensor_pipeline/{f}" for f in _SCENARIO_CSVS)),
    Experiment("gfs_logger",
               "thingssim sim experiments/scenarios/gfs_logger.toml --out results/gfs_logger",
               deterministic=tuple(f"gfs_logger/{f}" for f in (*_SCENARIO_CSVS, "gfs.csv"))),
    Experiment("benchmarks",
               "pytest tests/benchmarks --benchmark-enable "
               "--benchmark-json results/benchmarks.json",
               measured=("benchmarks.json",),
               needs="Mosquitto or amqtt (the MQTT round-trip benchmark)"),
    Experiment("sim_scale",
               "python experiments/sim_scale.py --boards 100 1000 3000 10000 --minutes 10 "
               "--out results",
               measured=("sim_scale.csv", "sim_scale.png")),
    Experiment("real_migration",
               "python experiments/real_migration.py --sizes 1e3 1e5 1e6 1e7 "
               "--out results/real_migration.csv",
               measured=("real_migration.csv", "real_migration.png"),
               needs="Mosquitto or amqtt"),
    Experiment("gfs_throughput",
               "python experiments/gfs_throughput.py --seed 1 --out results",
               measured=("gfs_throughput.csv", "gfs_throughput.png", "gfs_cost_model.csv"),
               needs="Mosquitto or amqtt"),
    Experiment("dashboard_latency",
               "python experiments/dashboard_latency.py --out results/dashboard_latency.json",
               measured=("dashboard_latency.json",),
               needs="Mosquitto, chromium and chromedriver"),
    Experiment("riotbench",
               "python experiments/riotbench.py --seed 1 --out results/riotbench",
               deterministic=("riotbench/sim_peak.csv", "riotbench/sim_trials.csv",
                              "riotbench/sim_peak.png")),
    Experiment("scheduling",
               "python experiments/scheduling.py --seed 1 --out results/scheduling",
               measured=("scheduling/policies.csv", "scheduling/policies.png",
                         "scheduling/policies.pdf")),
    Experiment("recovery",
               "python experiments/recovery.py --seed 1 --real --out results/scheduling",
               measured=("scheduling/recovery.csv", "scheduling/recovery.png"),
               needs="Mosquitto or amqtt"),
    Experiment("riotbench_real",
               "python experiments/riotbench_real.py --seed 1 --out results/riotbench",
               measured=tuple(f"riotbench/{f}" for f in (
                   "real_peak.csv", "real_trials.csv", "real_latency.csv",
                   "real_migration.csv", "real.png")),
               needs="Mosquitto or amqtt"),
    # thingssim experiment (issue 13): trials.csv, summary.csv and figures per folder;
    # provenance.json holds the volatile facts (wall time, machine, versions)
    Experiment("migration",
               "thingssim experiment migration --out results/migration",
               deterministic=tuple(f"migration/{f}" for f in (
                   "trials.csv", "summary.csv", *_figures("state_size", "link",
                                                          "board_pairs", "programs"))),
               measured=("migration/provenance.json",)),
    Experiment("thingsmigrate",
               "thingssim experiment thingsmigrate --out results/thingsmigrate",
               measured=tuple(f"thingsmigrate/{f}" for f in (
                   "trials.csv", "summary.csv", *_figures("overhead", "snapshots"),
                   "provenance.json"))),
    Experiment("riotbench_experiment",
               "thingssim experiment riotbench --out results/riotbench",
               deterministic=tuple(f"riotbench/{f}" for f in (
                   "trials.csv", "summary.csv", *_figures("latency", "throughput"))),
               measured=("riotbench/provenance.json",)),
    Experiment("migration_hops",
               "thingssim experiment migration_hops --out results/migration_hops",
               deterministic=tuple(f"migration_hops/{f}" for f in (
                   "trials.csv", "summary.csv", *_figures("sizes"))),
               measured=("migration_hops/provenance.json",)),
    # E6: the lab half needs root, iproute2 and Mosquitto (without them it is skipped and
    # the lab columns are blank); the calibration first, then the comparison
    Experiment("calibration",
               "thingssim calibrate --from-lab --out results/validation/calibration.json",
               measured=("validation/calibration.json",),
               needs="root, iproute2 and Mosquitto (the board lab)"),
    Experiment("validation",
               "thingssim experiment validation --out results/validation",
               measured=tuple(f"validation/{f}" for f in (
                   "trials.csv", "summary.csv", *_figures("errors"), "provenance.json")),
               needs="root, iproute2 and Mosquitto for the lab half"),
    # last: it reads what the experiments above wrote
    Experiment("report", "thingssim report --results results",
               deterministic=("README.md",)),
]


def executable(argv: list[str]) -> list[str]:
    """Run ``thingssim``, ``pytest`` and ``python`` with this interpreter."""
    head = {"python": [sys.executable], "thingssim": [sys.executable, "-m", "thingssim.cli"],
            "pytest": [sys.executable, "-m", "pytest"]}.get(argv[0])
    return argv if head is None else head + argv[1:]


def run(experiment: Experiment, results: str, *, cwd: Path = ROOT,
        env: dict[str, str] | None = None, quiet: bool = False) -> float:
    """Run one experiment; returns its wall time.  Raises CalledProcessError on failure."""
    started = time.perf_counter()
    subprocess.run(executable(experiment.argv(results)), cwd=cwd, check=True,
                   env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - started


def orphans(results_dir: Path = ROOT / RESULTS) -> list[str]:
    """Files in results/ that no documented command writes (there must be none)."""
    written = {w for e in EXPERIMENTS for w in e.writes}
    present = sorted(p.relative_to(results_dir).as_posix()
                     for p in results_dir.rglob("*") if p.is_file())
    return [p for p in present if p not in written]


def missing(results_dir: Path = ROOT / RESULTS) -> list[str]:
    """Files the documented commands write that results/ does not hold (yet)."""
    return [w for e in EXPERIMENTS for w in e.writes if not (results_dir / w).is_file()]


def respelled(argv: list[str], cwd: Path) -> list[str]:
    """The same command for another working directory, every repository path spelled
    differently (relative to ``cwd``, through a detour: ``a/../a/b``)."""
    out = []
    for word in argv:
        if not word.startswith("-") and "/" in word and not os.path.isabs(word) \
                and (ROOT / word).exists():
            first, rest = word.split("/", 1)
            word = os.path.relpath(ROOT / first, cwd) + f"/../{first}/{rest}"
        out.append(word)
    return out


def verify(experiments: list[Experiment]) -> int:
    """Run each deterministic experiment twice (see the module docstring); 0 if every
    deterministic output is byte-identical."""
    failures = 0
    for exp in experiments:
        if not exp.deterministic:
            continue
        with tempfile.TemporaryDirectory(prefix=f"verify-{exp.name}-") as tmp:
            a, b, elsewhere = Path(tmp, "a"), Path(tmp, "b"), Path(tmp, "cwd")
            elsewhere.mkdir()
            print(f"=== {exp.name}\n  cd {ROOT} && PYTHONHASHSEED=1 "
                  f"{shlex.join(exp.argv(str(a)))}", flush=True)
            run(exp, str(a), env={"PYTHONHASHSEED": "1"}, quiet=True)
            argv = respelled(exp.argv(str(b)), elsewhere)
            print(f"  cd {elsewhere} && PYTHONHASHSEED=2 {shlex.join(argv)}", flush=True)
            subprocess.run(executable(argv), cwd=elsewhere, check=True,
                           stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONHASHSEED": "2"})
            for name in exp.deterministic:
                same = filecmp.cmp(a / name, b / name, shallow=False)
                failures += not same
                print(f"  {'identical' if same else 'DIFFERENT'}  {name}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        choices=[e.name for e in EXPERIMENTS],
                        help="run only these (default: all, in order)")
    parser.add_argument("--results", default=RESULTS,
                        help="the results folder (default: results/ in the repository)")
    parser.add_argument("--list", action="store_true", help="list the commands and exit")
    parser.add_argument("--check", action="store_true",
                        help="list files in results/ that no command writes, and exit")
    parser.add_argument("--verify", action="store_true",
                        help="check the deterministic outputs are byte-identical, and exit")
    args = parser.parse_args()
    chosen = [e for e in EXPERIMENTS if not args.only or e.name in args.only]
    if args.list:
        for e in chosen:
            print(f"{e.name}: {e.command}")
            for kind, files in (("deterministic", e.deterministic), ("measured", e.measured)):
                if files:
                    print(f"    {kind}: {', '.join(files)}")
            if e.needs:
                print(f"    needs: {e.needs}")
        return 0
    if args.check:
        extra, absent = orphans(), missing()
        for path in extra:
            print(f"not written by any documented command: results/{path}")
        for path in absent:
            print(f"documented but not in results/ (run its command): results/{path}")
        return 1 if extra else 0
    if args.verify:
        return verify(chosen)
    results = args.results if args.results == RESULTS else str(Path(args.results).resolve())
    started = time.perf_counter()
    times = []
    for e in chosen:
        print(f"\n=== {e.name}: {' '.join(e.argv(results))}", flush=True)
        times.append((e.name, run(e, results)))
    print("\nrun times:")
    for name, seconds in times:
        print(f"  {name:<18} {seconds:7.1f} s")
    print(f"  {'total':<18} {time.perf_counter() - started:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
