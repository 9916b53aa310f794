"""The experiment framework (issue 13): ``thingssim experiment`` and ``thingssim report``.

Each experiment runs at its ``--quick`` preset, or at ``tiny`` where quick takes longer
than about 20 s here, and its outputs are checked for shape and sanity; the same seeds
give byte-identical CSVs, serially, on two joblib processes and on a local Dask cluster;
the report is a function of the CSVs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from thingssim.cli import main
from thingssim.experiment import registry
from thingssim.experiment.report import build, seed_list
from thingssim.experiment.stats import ci95

PHASES = ("snapshot_ms", "transfer_ms", "restore_ms", "commit_ms")
CSVS = ("trials.csv", "summary.csv")


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, ["experiment", *args, "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def e1(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e1") / "migration"
    assert "run time:" in _run("migration", "--quick", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def e1_tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e1tiny") / "migration"
    _run("migration", "--preset", "tiny", "--out", str(out))
    return out


def test_list_shows_every_experiment_and_the_planned_slots():
    result = CliRunner().invoke(main, ["experiment", "list"])
    assert result.exit_code == 0, result.output
    for name in ("migration", "thingsmigrate", "riotbench", "scheduling", "recovery"):
        assert name in result.output
    assert "deterministic" in result.output and "measured" in result.output


def test_an_unknown_experiment_is_a_usage_error_naming_the_known_ones():
    result = CliRunner().invoke(main, ["experiment", "migrashun"])
    assert result.exit_code == 2
    assert "unknown experiment 'migrashun'" in result.output
    assert "migration" in result.output and "thingssim experiment list" in result.output


def test_a_planned_experiment_without_its_module_says_so(monkeypatch):
    monkeypatch.setitem(registry.SLOTS, "e9", ("E9", "experiments/e9.py", "the future"))
    result = CliRunner().invoke(main, ["experiment", "e9"])
    assert result.exit_code == 1
    assert "E9 e9 (the future) is not available yet: experiments/e9.py" in result.output


def test_e1_quick_shape_and_sanity(e1):
    trials = pd.read_csv(e1 / "trials.csv")
    exp = registry.load("migration")
    params, seeds = exp.resolve("quick")
    assert len(trials) == len(exp.points(params)) * len(seeds)
    assert trials["ok"].all()
    # the phases sum to the total (each row, and the means)
    assert np.allclose(trials[list(PHASES)].sum(axis=1), trials["total_ms"], rtol=1e-6)
    # latency grows with the snapshot size, and every CPU phase with it
    sweep = trials[(trials["program"] == "buffer") & (trials["source"] == "beaglebone-black")
                   & (trials["target"] == "raspberry-pi-zero")
                   & (trials["bandwidth_mbps"] == 20) & (trials["latency_ms"] == 2)]
    means = sweep.groupby("state_kb")[["snapshot_kb", "total_ms", "snapshot_ms",
                                       "transfer_ms", "restore_ms"]].mean().sort_index()
    assert len(means) == 3
    for column in means:
        assert means[column].is_monotonic_increasing, column
    # a slower link makes the transfer slower
    link = trials[(trials["program"] == "buffer") & (trials["latency_ms"] == 2)
                  & (trials["state_kb"] == 128) & (trials["target"] == "raspberry-pi-zero")
                  & (trials["source"] == "beaglebone-black")]
    by_bw = link.groupby("bandwidth_mbps")["transfer_ms"].mean().sort_index()
    assert by_bw.is_monotonic_decreasing
    summary = pd.read_csv(e1 / "summary.csv")
    assert set(summary.columns) >= {"metric", "n", "mean", "std", "ci95"}
    assert (summary["n"] == 3).all()
    figures = sorted(p.name for p in e1.glob("fig_*"))
    assert figures == sorted(f"fig_{f}.{ext}" for f in ("state_size", "link", "board_pairs",
                                                        "programs") for ext in ("png", "pdf"))
    assert (e1 / "provenance.json").is_file()


def test_ci_half_width_shrinks_with_more_replications(e1_tiny, tmp_path):
    out = tmp_path / "ten"
    _run("migration", "--preset", "tiny", "--seeds", "1-10", "--out", str(out))
    trials = pd.read_csv(out / "trials.csv")
    base = trials[(trials["program"] == "buffer") & (trials["state_kb"] == 128)
                  & (trials["source"] == "beaglebone-black") & (trials["latency_ms"] == 2)]
    totals = base.sort_values("seed")["total_ms"].to_numpy()
    assert len(totals) == 10
    assert ci95(totals)[3] < ci95(totals[:3])[3]
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["n"] == 10).all()
    # the first three seeds' rows are the three-seed run's, byte for byte
    three = pd.read_csv(e1_tiny / "trials.csv")
    assert trials[trials["seed"] <= 3].reset_index(drop=True).equals(three)


def test_same_seeds_same_bytes_serially(e1_tiny, tmp_path):
    again = tmp_path / "again"
    _run("migration", "--preset", "tiny", "--seeds", "3,1,2", "--out", str(again))
    for name in CSVS:
        assert (e1_tiny / name).read_bytes() == (again / name).read_bytes(), name
    for png in e1_tiny.glob("fig_*"):
        assert png.read_bytes() == (again / png.name).read_bytes(), png.name


def test_joblib_and_dask_give_the_serial_bytes(e1_tiny, tmp_path):
    pytest.importorskip("joblib")
    pytest.importorskip("distributed")
    _run("migration", "--preset", "tiny", "--jobs", "2", "--out", str(tmp_path / "joblib"))
    _run("migration", "--preset", "tiny", "--dask", "local", "--jobs", "2",
         "--out", str(tmp_path / "dask"))
    for backend in ("joblib", "dask"):
        for name in CSVS:
            assert (e1_tiny / name).read_bytes() == \
                (tmp_path / backend / name).read_bytes(), (backend, name)
    import json

    doc = json.loads((tmp_path / "dask" / "provenance.json").read_text())
    assert doc["backend"] == {"kind": "dask", "jobs": 2, "address": "local"}
    assert doc["seeds"] == [1, 2, 3] and doc["preset"] == "tiny"
    assert set(doc) >= {"git", "versions", "machine", "wall_s", "parameters"}


def test_e2_tiny_measures_both_sides_beside_the_published_figures(tmp_path):
    out = tmp_path / "thingsmigrate"
    _run("thingsmigrate", "--preset", "tiny", "--out", str(out))
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(set(trials["program"])) == ["counter", "factorial"]
    assert len(trials) == 2 * 3
    for column in ("run_host_ms", "run_plain_ms", "peak_host_kb", "snapshot_ms",
                   "cloudpickle_snapshot_ms", "restore_cold_ms", "cloudpickle_restore_ms"):
        assert (trials[column] > 0).all(), column
    # sizes are deterministic: the same in every replication
    assert trials.groupby("program")["snapshot_kb"].nunique().eq(1).all()
    summary = pd.read_csv(out / "summary.csv")
    overall = summary[summary["program"] == "all programs (mean)"].set_index("metric")
    assert overall.loc["run_overhead_pct", "thingsmigrate"] == 33
    assert overall.loc["memory_overhead_pct", "thingsmigrate"] == 78
    factorial = summary[(summary["program"] == "factorial")
                        & (summary["metric"] == "snapshot_kb")]
    assert factorial["thingsmigrate"].item() == 74


def test_e3_tiny_runs_the_dataflow_with_and_without_a_migration(tmp_path):
    out = tmp_path / "riotbench"
    _run("riotbench", "--preset", "tiny", "--out", str(out))
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["migrate"]) == [False, False, True, True]
    assert trials["complete"].all()
    assert (trials["received"] == trials["sent"]).all()  # wired Beaglebones lose nothing
    assert np.allclose(trials["throughput"], trials["rate"], rtol=0.1)
    moved = trials[trials["migrate"]]
    assert moved["migration_ok"].all() and (moved["migration_ms"] > 0).all()
    assert trials[~trials["migrate"]]["migration_ms"].isna().all()


def test_report_is_a_function_of_the_csvs(e1_tiny, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(e1_tiny, results / "migration")
    page = build(results)
    assert "thingssim experiment migration --preset tiny --out results/migration" in page
    assert "![fig state size](migration/fig_state_size.png)" in page
    assert "state (KB)" in page and "total (ms)" in page
    (results / "migration" / "provenance.json").unlink()  # volatile: never read
    assert build(results) == page
    result = CliRunner().invoke(main, ["report", "--results", str(results)])
    assert result.exit_code == 0, result.output
    assert (results / "README.md").read_text(encoding="utf-8") == page


def test_seed_lists_are_spelled_as_ranges():
    assert seed_list([3, 1, 2, 5, 7, 8, 9]) == "1-3,5,7-9"
    assert seed_list([4]) == "4"


def test_e3_quick_gives_the_same_bytes_on_every_run(tmp_path, monkeypatch):
    """E3 is deterministic since the stages count their CPU with ``things.cpu_time()``
    (the cost model's charge) instead of keeping ``perf_counter`` seconds in the state
    a migration carries; the second run is from another directory."""
    a = tmp_path / "a"
    _run("riotbench", "--quick", "--out", str(a))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _run("riotbench", "--quick", "--out", "../b")
    b = tmp_path / "b"
    for name in CSVS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    trials = pd.read_csv(a / "trials.csv")
    assert trials[trials["migrate"]]["migration_ok"].all()


def test_migration_hops_quick_is_deterministic_and_no_program_notices(tmp_path):
    for name in ("a", "b"):
        _run("migration_hops", "--quick", "--out", str(tmp_path / name))
    for name in CSVS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    trials = pd.read_csv(tmp_path / "a" / "trials.csv")
    assert set(trials["program"]) == {"closures", "counter", "factorial"}
    assert (trials.groupby(["program", "seed"])["hop"].max() == 3).all()
    assert (trials["identical"] == 1).all()
    assert (trials["gzip_bytes"] < trials["bytes"]).all()
    first = trials[(trials["program"] == "counter") & (trials["seed"] == 1)]
    assert list(first["hop"]) == [1, 2, 3] and first["event"].is_monotonic_increasing
