"""E4 scheduling and E5 recovery as experiments of the framework (``thingssim experiment
NAME``): their tiny presets run and give the script's columns, one row per policy or
per recovered program."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from thingssim.cli import main


def _run(name: str, out: Path) -> pd.DataFrame:
    result = CliRunner().invoke(main, ["experiment", name, "--preset", "tiny", "--out",
                                       str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"trials.csv", "summary.csv",
                                                "provenance.json"}
    return pd.read_csv(out / "trials.csv")


def test_scheduling_runs_in_the_framework(tmp_path: Path) -> None:
    trials = _run("scheduling", tmp_path / "scheduling")
    assert set(trials.scenario) == {"scale", "join", "gap"}
    scale = trials[trials.scenario == "scale"]
    assert set(scale.policy) >= {"best-fit", "rebalance", "network-aware"}
    join = trials[(trials.scenario == "join") & (trials.policy == "rebalance")]
    assert (join.max_util <= join.max_util_before + 1e-9).all()  # never busier
    assert (tmp_path / "scheduling" / "fig_policies.png").exists()


def test_recovery_runs_in_the_framework(tmp_path: Path) -> None:
    trials = _run("recovery", tmp_path / "recovery")
    assert set(trials.world) == {"sim"} and len(trials) >= 1
    assert (trials.after_fence_s < 1.0).all() and (trials.reemitted >= 0).all()
    assert (tmp_path / "recovery" / "fig_recovery.pdf").exists()


def test_recovery_in_simulation_is_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    """Application tokens (and so instance ids) come from the world's seeded ids."""
    first = _run("recovery", tmp_path / "a")
    _run("recovery", tmp_path / "b")
    assert (tmp_path / "a" / "trials.csv").read_bytes() == \
        (tmp_path / "b" / "trials.csv").read_bytes()
    assert first.instance.str.len().min() > 0
