"""Scenarios (Python API and TOML) and the ``thingssim sim`` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from thingssim.cli import main
from thingssim.sim.scenario import Scenario, ScenarioError

SCENARIOS = Path(__file__).resolve().parent.parent / "experiments" / "scenarios"


@pytest.mark.parametrize("name", ["migration_chain", "sensor_pipeline"])
def test_example_scenarios_run_and_are_reproducible(name, tmp_path):
    scenario = Scenario.from_toml(SCENARIOS / f"{name}.toml")
    first = scenario.run()
    assert first.actions["ok"].all(), first.actions
    assert len(first.migrations) >= 1 and first.migrations["ok"].all()
    assert {"publish", "deliver"} <= set(first.messages["event"])
    a = first.save(tmp_path / "a")
    b = scenario.run().save(tmp_path / "b")
    for x, y in zip(a, b):  # same seed: byte-identical CSVs
        assert x.read_bytes() == y.read_bytes(), x.name
    other = scenario.run(seed=scenario.seed + 1).save(tmp_path / "c")
    assert (tmp_path / "c" / "messages.csv").read_bytes() != a[0].read_bytes()
    assert other


def test_migration_chain_console_stays_consecutive():
    results = Scenario.from_toml(SCENARIOS / "migration_chain.toml").run()
    console = results.messages[results.messages["event"].eq("deliver") &
                               results.messages["topic"].str.endswith("/console")]
    assert len(console) > 100  # the dispatcher received the counter's console
    assert list(results.faults["fault"]) == ["crash", "reboot"]
    assert list(results.migrations["target"]) == ["pi3", "zero", "bbb", "pi3"]


def test_python_api_scenario():
    scenario = Scenario.from_dict({
        "duration": 5.0, "seed": 3,
        "boards": [{"name": "a", "profile": "beaglebone-black"},
                   {"name": "b", "profile": "desktop-vm", "latency": 0.01}],
        "programs": [{"name": "p", "board": "a",
                      "source": "things.set_interval(lambda: print(things.now()), 0.5)"}],
        "actions": [{"at": 2.0, "type": "migrate", "program": "p", "to": "b"}],
    })
    results = scenario.run()
    assert results.migrations.iloc[0]["target"] == "b"
    assert results.programs.iloc[0]["board"] == "b"
    assert set(results.boards["board"]) == {"a", "b"}


@pytest.mark.parametrize(("data", "message"), [
    ({}, "needs a 'duration'"),
    ({"duration": 1, "colour": "red"}, "unknown key(s) colour"),
    ({"duration": 1, "boards": [{"profile": "x"}]}, "needs 'name'"),
    ({"duration": 1, "boards": [{"name": "a", "profile": "cray-1"}]}, "cray-1"),
    ({"duration": 1, "boards": [{"name": "a"}],
      "programs": [{"name": "p", "board": "zz", "source": ""}]}, "unknown board 'zz'"),
    ({"duration": 1, "boards": [{"name": "a"}],
      "programs": [{"name": "p", "board": "a"}]}, "needs 'file' or 'source'"),
    ({"duration": 1, "boards": [{"name": "a"}], "programs": [],
      "actions": [{"at": 1, "type": "teleport", "program": "p"}]}, "unknown action type"),
    ({"duration": 1, "faults": [{"at": 1, "type": "meteor"}]}, "unknown fault type"),
    ({"duration": 1, "boards": [{"name": "a", "loss": 2.0}]}, "loss"),
])
def test_bad_scenarios_get_clear_errors(data, message):
    with pytest.raises((ScenarioError, KeyError, ValueError)) as info:
        Scenario.from_dict(data).run()
    assert message in str(info.value)


def test_sim_command(tmp_path):
    result = CliRunner().invoke(main, ["sim", str(SCENARIOS / "migration_chain.toml"),
                                       "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "migrations:" in result.stdout and "bbb" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "actions.csv", "boards.csv", "faults.csv", "messages.csv", "migrations.csv",
        "programs.csv"]
    bad = tmp_path / "bad.toml"
    bad.write_text("duration = [")
    result = CliRunner().invoke(main, ["sim", str(bad)])
    assert result.exit_code != 0 and "invalid TOML" in result.stderr
