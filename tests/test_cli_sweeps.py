"""``thingssim sim`` over several scenarios and seeds, in parallel processes (issue 9):
every run's folder is byte-identical to a lone run, a failing run is reported while the
others finish, and every file is checked before anything runs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from thingssim.cli import SeedList, main
from thingssim.sim.scenario import CSV_NAMES, Scenario

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "experiments" / "scenarios" / "programs" / "counter.py"
CSVS = sorted(f"{name}.csv" for name in CSV_NAMES)

#: two small scenarios, a few simulated seconds each; jitter and loss make seeds matter
CHAIN = f"""
name = "chain"
seed = 7
duration = 4.0
[[boards]]
name = "a"
profile = "beaglebone-black"
jitter = 0.002
loss = 0.05
[[boards]]
name = "b"
profile = "raspberry-pi-3"
jitter = 0.002
[[programs]]
name = "counter"
file = "{COUNTER}"
board = "a"
at = 0.5
[[actions]]
at = 2.0
type = "migrate"
program = "counter"
to = "b"
"""
PAIR = f"""
name = "pair"
seed = 3
duration = 3.0
[[boards]]
name = "p"
count = 2
jitter = 0.003
loss = 0.05
[[programs]]
name = "one"
file = "{COUNTER}"
board = "p-1"
[[programs]]
name = "two"
file = "{COUNTER}"
board = "p-2"
at = 0.3
[[faults]]
at = 1.5
type = "link_down"
board = "p-2"
duration = 0.5
"""


@pytest.fixture
def scenarios(tmp_path: Path) -> list[Path]:
    paths = []
    for name, text in (("chain", CHAIN), ("pair", PAIR)):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        paths.append(path)
    return paths


def sim(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["sim", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def lone(path: Path, seed: int, out: Path) -> Path:
    """What the sweep must reproduce: the scenario run alone with that seed."""
    Scenario.from_toml(path).run(seed=seed).save(out)
    return out


def assert_same_files(got: Path, expected: Path) -> None:
    assert sorted(p.name for p in got.iterdir()) == CSVS
    for name in CSVS:
        assert (got / name).read_bytes() == (expected / name).read_bytes(), got / name


def index(out: Path) -> list[dict[str, str]]:
    with open(out / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- --seeds

@pytest.mark.parametrize(("text", "seeds"), [
    ("5", [5]),
    ("0", [0]),
    ("1-3", [1, 2, 3]),
    ("4-4", [4]),
    ("1,3,5-7", [1, 3, 5, 6, 7]),
    (" 2 , 8-9 ", [2, 8, 9]),
    ("3,1-4", [3, 1, 2, 4]),  # in the order given, a seed named twice runs once
    ("0-99999", list(range(100_000))),
])
def test_seeds_are_parsed(text: str, seeds: list[int]) -> None:
    assert SeedList().convert(text, None, None) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("", "'' has an empty item"),
    ("1,,3", "'1,,3' has an empty item"),
    ("2,", "'2,' has an empty item"),
    ("3-1", "'3-1' in '3-1' is a reversed range (write 1-3)"),
    ("1,9-5", "'9-5' in '1,9-5' is a reversed range"),
    ("x", "'x' in 'x' is not a seed (an integer >= 0) or a range A-B"),
    ("1.5", "'1.5' in '1.5' is not a seed"),
    ("-2", "'-2' in '-2' is not a seed"),
    ("1-", "'1-' in '1-' is not a seed"),
    ("1-2-3", "'1-2-3' in '1-2-3' is not a seed"),
    ("1,a-3", "'a-3' in '1,a-3' is not a seed"),
    ("1-10000000000", "'1-10000000000' is more than 100000 seeds (a typo?)"),
])
def test_bad_seeds_are_usage_errors_naming_the_value(tmp_path: Path, scenarios: list[Path],
                                                     text: str, message: str) -> None:
    code, out, err = sim(scenarios[0], "--seeds", text, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: Invalid value for '--seeds': ") and message in last, err
    assert not (tmp_path / "out").exists()  # nothing ran


# ---------------------------------------------------------------- sweeps

def test_two_scenarios_two_seeds_in_two_processes_match_lone_runs(
        tmp_path: Path, scenarios: list[Path]) -> None:
    out = tmp_path / "sweep"
    code, stdout, err = sim(*scenarios, "--seeds", "1-2", "--jobs", "2", "--out", out,
                            "--no-progress")
    assert code == 0, err
    assert "2 processes" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["chain", "pair", "runs.csv"]
    for path in scenarios:
        assert sorted(p.name for p in (out / path.stem).iterdir()) == ["seed-1", "seed-2"]
        for seed in (1, 2):
            assert_same_files(out / path.stem / f"seed-{seed}",
                              lone(path, seed, tmp_path / "lone" / path.stem / str(seed)))
    # the seeds did matter: the two runs of a scenario differ
    chain = out / "chain"
    assert (chain / "seed-1" / "messages.csv").read_bytes() != \
        (chain / "seed-2" / "messages.csv").read_bytes()
    rows = index(out)
    assert [(r["scenario"], r["seed"], r["folder"], r["ok"], r["error"]) for r in rows] == [
        (str(scenarios[0]), "1", "chain/seed-1", "True", ""),
        (str(scenarios[0]), "2", "chain/seed-2", "True", ""),
        (str(scenarios[1]), "1", "pair/seed-1", "True", ""),
        (str(scenarios[1]), "2", "pair/seed-2", "True", "")]
    assert all(float(r["wall_s"]) >= 0 for r in rows)


def test_without_seeds_each_scenario_uses_its_own(tmp_path: Path,
                                                  scenarios: list[Path]) -> None:
    out = tmp_path / "sweep"
    code, _, err = sim(*scenarios, "--jobs", "1", "--out", out, "--no-progress")
    assert code == 0, err
    assert [r["folder"] for r in index(out)] == ["chain/seed-7", "pair/seed-3"]
    assert_same_files(out / "chain" / "seed-7", lone(scenarios[0], 7, tmp_path / "lone"))


def test_one_scenario_with_seeds_has_the_same_layout(tmp_path: Path,
                                                     scenarios: list[Path]) -> None:
    out = tmp_path / "sweep"
    code, stdout, err = sim(scenarios[1], "--seeds", "4,6", "--jobs", "1", "--out", out,
                            "--no-progress")
    assert code == 0, err
    assert "1 process" in stdout
    assert sorted(p.name for p in (out / "pair").iterdir()) == ["seed-4", "seed-6"]
    for seed in (4, 6):  # one process, one run after the other: still as if alone
        assert_same_files(out / "pair" / f"seed-{seed}",
                          lone(scenarios[1], seed, tmp_path / "lone" / str(seed)))


def test_a_run_failing_in_a_pool_process_is_reported_and_the_others_finish(
        tmp_path: Path, scenarios: list[Path]) -> None:
    """A real failure in a worker process: seed 2's messages.csv cannot be written (a
    directory is in the way).  Its folder is left without CSVs, stale ones included."""
    out = tmp_path / "sweep"
    blocked = out / "chain" / "seed-2"
    (blocked / "messages.csv").mkdir(parents=True)
    (blocked / "boards.csv").write_text("stale, from an earlier sweep\n")
    code, stdout, err = sim(*scenarios, "--seeds", "1-2", "--jobs", "2", "--out", out,
                            "--no-progress")
    assert code == 1
    assert f"run failed: {scenarios[0]} seed 2:" in err and "Traceback" in err
    assert f"failed: {scenarios[0]} seed 2: IsADirectoryError" in err
    assert err.strip().splitlines()[-1] == \
        f"Error: 1 of 4 runs failed (see {out / 'runs.csv'})"
    assert "NO" in stdout  # the table of runs
    assert sorted(p.name for p in blocked.iterdir()) == ["messages.csv"]  # the directory
    rows = {(r["scenario"], r["seed"]): r for r in index(out)}
    assert len(rows) == 4
    failed = rows[str(scenarios[0]), "2"]
    assert failed["ok"] == "False" and failed["error"].startswith("IsADirectoryError: ")
    for path, seed in ((scenarios[0], 1), (scenarios[1], 1), (scenarios[1], 2)):
        assert rows[str(path), str(seed)]["ok"] == "True"
        assert_same_files(out / path.stem / f"seed-{seed}",
                          lone(path, seed, tmp_path / "lone" / path.stem / str(seed)))


def test_a_run_raising_in_this_process_is_reported_and_the_others_finish(
        tmp_path: Path, scenarios: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs 1 runs in this process, so the simulation itself can be made to fail."""
    run = Scenario.run

    def run_but_not_seed_2(self: Scenario, seed: int | None = None, **kwargs):
        if seed == 2:
            raise RuntimeError("the simulation broke")
        return run(self, seed, **kwargs)

    monkeypatch.setattr(Scenario, "run", run_but_not_seed_2)
    out = tmp_path / "sweep"
    code, _, err = sim(scenarios[1], "--seeds", "1-3", "--jobs", "1", "--out", out,
                       "--no-progress")
    assert code == 1
    assert f"failed: {scenarios[1]} seed 2: RuntimeError: the simulation broke" in err
    assert [(r["seed"], r["ok"]) for r in index(out)] == \
        [("1", "True"), ("2", "False"), ("3", "True")]
    assert list((out / "pair" / "seed-2").iterdir()) == []
    monkeypatch.undo()
    for seed in (1, 3):
        assert_same_files(out / "pair" / f"seed-{seed}",
                          lone(scenarios[1], seed, tmp_path / "lone" / str(seed)))


# ---------------------------------------------------------------- before running

def test_every_file_is_checked_before_any_run(tmp_path: Path, scenarios: list[Path]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("duration = 1\n[[boards]]\nname = 'a'\nprofle = 'x'\n")
    missing = tmp_path / "missing.toml"
    out = tmp_path / "sweep"
    code, stdout, err = sim(scenarios[0], bad, scenarios[1], missing, "--out", out,
                            "--no-progress")
    assert code == 1 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"Error: {bad}: [[boards]] 'a': unknown key(s) profle")
    assert lines[1].startswith(f"Error: {missing}: ") and "no such file" in lines[1]
    assert not out.exists()  # nothing ran, nothing written


def test_two_files_with_the_same_stem_are_refused(tmp_path: Path,
                                                  scenarios: list[Path]) -> None:
    other = tmp_path / "elsewhere" / "chain.toml"
    other.parent.mkdir()
    other.write_text(CHAIN)
    code, _, err = sim(scenarios[0], other, "--out", tmp_path / "sweep")
    assert code == 1
    assert err.strip() == (f"Error: {scenarios[0]} and {other} would both write "
                           f"{tmp_path / 'sweep' / 'chain'}: give each scenario file its "
                           "own name")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--seeds", "1-2"], "needs --out DIR"),
    (["SECOND"], "needs --out DIR"),
    (["--seed", "1", "--seeds", "2", "--out", "x"], "use either --seed or --seeds"),
    (["--seeds", "1", "--jobs", "0", "--out", "x"], "Invalid value for '-j' / '--jobs'"),
])
def test_bad_option_combinations_are_usage_errors(tmp_path: Path, scenarios: list[Path],
                                                  args: list[str], message: str) -> None:
    args = [str(scenarios[1]) if a == "SECOND" else a for a in args]
    code, out, err = sim(scenarios[0], *args)
    assert code == 2 and out == "" and message in err, err


def test_help_documents_the_layout() -> None:
    code, out, _ = sim("--help")
    assert code == 0
    words = " ".join(out.split())  # as wrapped for any terminal width
    for text in ("--seeds", "--jobs", "DIR/runs.csv", "DIR/<file stem>/seed-<N>/",
                 "identical to a lone run", "the exit code is 1"):
        assert text in words, text


def test_the_readme_shows_a_sweep() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "--seeds" in readme and "--jobs" in readme and "seed-<N>/" in readme
