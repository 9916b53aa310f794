"""Issue 13's validation half: the calibration fit, calibration files, and E6.

The fit is checked on synthetic measurements made from known parameters (it must give
them back); a calibration file loads into a World and a scenario and changes only what
it names; E6's tiny preset runs its simulated half (the lab half is skipped, saying so,
with THINGSSIM_NO_LAB, as it is without root; the lab itself is exercised by
tests/test_lab.py and by the committed results/validation/)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from thingssim.cli import main
from thingssim.labcalibrate import LabMeasurements, fit_calibration, linear_fit
from thingssim.sim.boards import get_profile
from thingssim.sim.calibration import Calibration, CalibrationError, load_calibration
from thingssim.sim.scenario import Scenario
from thingssim.sim.world import CostModel, World

KNOWN = {"event_cost": 2e-4, "snapshot_base_cost": 1e-3, "snapshot_cost_per_byte": 40e-9,
         "restore_base_cost": 2e-3, "restore_cost_per_byte": 60e-9, "child_start_cost": 0.09}


def _synthetic() -> LabMeasurements:
    """Lab numbers as boards running exactly the KNOWN costs would give them."""
    bbb, zero = get_profile("beaglebone-black"), get_profile("raspberry-pi-zero")
    snaps, rests = [], []
    for nbytes in (16_000, 130_000, 520_000):
        for _ in range(3):
            snaps.append({"profile": bbb.name, "bytes": nbytes, "seconds": (
                KNOWN["snapshot_base_cost"] + nbytes * KNOWN["snapshot_cost_per_byte"])
                / bbb.cpu_factor})
            rests.append({"profile": zero.name, "bytes": nbytes, "seconds": (
                KNOWN["restore_base_cost"] + nbytes * KNOWN["restore_cost_per_byte"])
                / zero.cpu_factor})
    cold = [{"profile": zero.name, "bytes": 130_000, "seconds": (
        KNOWN["child_start_cost"] + KNOWN["restore_base_cost"]
        + 130_000 * KNOWN["restore_cost_per_byte"]) / zero.cpu_factor}]
    rates = [{"profile": bbb.name, "machine_factor": 0.8,
              "cpu_s_per_message": KNOWN["event_cost"] / 0.8}]
    # Mosquitto's way: checks every 6 s (the first 1.2 s after connecting), each firing
    # the wills whose 1.5 x keepalive deadline has passed
    wills = [{"keepalive": k, "delay": next(1.2 + 6 * n for n in range(9)
                                             if 1.2 + 6 * n >= 1.5 * k)}
             for k in (1, 2, 4, 7) for _ in range(2)]
    return LabMeasurements(snaps, rests, cold, rates, [30e-6, 31e-6, 29e-6], wills)


def test_the_fit_recovers_known_parameters():
    fitted = fit_calibration(_synthetic())
    for name, value in KNOWN.items():
        assert fitted["cost"][name] == pytest.approx(value, rel=1e-6), name
    assert fitted["broker"] == pytest.approx({"service_time": 30e-6, "will_factor": 1.5,
                                              "will_offset": 0.0, "will_check_interval": 6.0})


def test_the_fit_splits_a_relayed_message_into_event_and_engine_messages():
    """relay = in + event + out, sink = in + event, in = out: both costs come back."""
    event, message = 1.5e-4, 0.5e-4
    m = _synthetic()
    m.relay_rates = [{"profile": "beaglebone-black", "machine_factor": 0.8,
                      "cpu_s_per_message": (event + 2 * message) / 0.8}]
    m.sink_rates = [{"profile": "beaglebone-black", "machine_factor": 0.8,
                     "cpu_s_per_message": (event + message) / 0.8}]
    per_byte = 20e-9
    m.sink_rates[0]["bytes"] = 20
    m.sink_big_rates = [{"profile": "beaglebone-black", "machine_factor": 0.8, "bytes": 16404,
                         "cpu_s_per_message": (event + message + 16384 * per_byte) / 0.8}]
    cost = fit_calibration(m)["cost"]
    assert cost["event_cost"] == pytest.approx(event)
    assert cost["message_cost"] == pytest.approx(message)
    assert cost["message_cost_per_byte"] == pytest.approx(per_byte)
    # without sink measurements (an older file): the whole relay is the event
    assert fit_calibration(_synthetic())["cost"]["message_cost"] == 0.0
    # a noisy sink dearer than the relay: no negative message cost
    m.sink_rates[0]["cpu_s_per_message"] = 2 * m.relay_rates[0]["cpu_s_per_message"]
    assert fit_calibration(m)["cost"]["message_cost"] == 0.0


def test_without_periodic_checks_the_will_fit_is_a_line():
    from thingssim.labcalibrate import fit_wills

    wills = [{"keepalive": 2, "delay": 3.5}, {"keepalive": 2, "delay": 3.6}]
    assert fit_wills(wills)["will_check_interval"] == 0.0
    line = fit_wills([{"keepalive": k, "delay": 2.0 * k + 0.5} for k in (1, 2)],
                     resolution=5.0)
    assert line == pytest.approx({"will_factor": 2.0, "will_offset": 0.5,
                                  "will_check_interval": 0.0})


def test_linear_fit_clamps_a_negative_intercept():
    assert linear_fit([1, 2, 3], [2, 4, 6]) == pytest.approx((0.0, 2.0))
    a, b = linear_fit([1, 2, 3], [0.5, 2.6, 4.4])  # intercept < 0: through the origin
    assert a == 0.0 and b == pytest.approx((0.5 + 5.2 + 13.2) / 14)


def test_a_calibration_file_feeds_world_and_scenario(tmp_path):
    path = Calibration({"event_cost": 3e-4, "child_start_cost": 0.05},
                       {"will_check_interval": 6.0}).save(tmp_path / "cal.json")
    world = World(calibration=path)
    assert world.cost == CostModel(event_cost=3e-4, child_start_cost=0.05)
    assert world.network.broker.profile.will_due(1.0, 4.0) == 12.0  # 7 s, next check at 12
    scenario = Scenario.from_dict({"duration": 1, "cost": {"from": "cal.json",
                                                           "event_cost": 1e-4},
                                   "broker": {"from": "cal.json"}}, base_dir=tmp_path)
    assert scenario.cost == {"event_cost": 1e-4, "child_start_cost": 0.05}
    assert scenario.broker == {"will_check_interval": 6.0}
    (tmp_path / "bad.json").write_text(json.dumps({"format": "thingssim-calibration/1",
                                                   "cost": {"speed": 1}}))
    with pytest.raises(CalibrationError, match="unknown fields"):
        load_calibration(tmp_path / "bad.json")


def test_without_a_calibration_the_defaults_are_untouched():
    world = World()
    assert world.cost == CostModel()
    assert world.network.broker.profile.will_due(0.25, 10.0) == 15.25


def test_a_cold_program_process_is_paid_by_the_first_restore_only():
    """A board that never started a program process pays child_start_cost once, at its
    first restore; one that already ran a program does not."""
    from thingssim.labcalibrate import WARM_SOURCE, buffer_program

    def restore_s(warm: bool) -> list[float]:
        world = World(cost=CostModel(child_start_cost=0.024))  # 1 s on a Pi Zero
        world.add_board("a", "beaglebone-black")
        world.add_board("b", "raspberry-pi-zero")
        d = world.add_dispatcher()
        world.run(1.0)
        if warm:
            world.wait(d.kill_code(world.wait(d.run_code("b", "w", WARM_SOURCE))["id"]))
        out = []
        for _ in range(2):
            iid = world.wait(d.run_code("a", "buf", buffer_program(8)))["id"]
            world.run(world.clock.now() + 0.5)
            out.append(world.wait(d.move_code("a", "b", "buf", iid))["migration"]["restore_s"])
            world.wait(d.kill_code(iid))
        return out

    cold, warm = restore_s(False), restore_s(True)
    assert cold[0] == pytest.approx(warm[0] + 1.0, abs=1e-4)  # ids vary the size a little
    assert cold[1] == pytest.approx(warm[1], abs=1e-4)
    assert warm[1] == pytest.approx(warm[0], abs=1e-4)


def test_calibrate_from_lab_says_why_it_cannot_run(monkeypatch):
    import thingssim.labcalibrate as labcalibrate

    monkeypatch.setattr(labcalibrate, "lab_unavailable", lambda: "the board lab needs root")
    result = CliRunner().invoke(main, ["calibrate", "--from-lab"])
    assert result.exit_code == 1 and "--from-lab: the board lab needs root" in result.output


def test_e6_tiny_runs_its_simulated_half_and_skips_the_lab(tmp_path, monkeypatch):
    monkeypatch.setenv("THINGSSIM_NO_LAB", "1")
    out = tmp_path / "validation"
    result = CliRunner().invoke(main, ["experiment", "validation", "--preset", "tiny",
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["env"]) == {"sim"} and set(trials["kind"]) == {"migration", "pipeline"}
    migration = trials[trials["kind"] == "migration"]
    phases = migration[["snapshot_ms", "transfer_ms", "restore_ms", "commit_ms"]].sum(axis=1)
    assert (abs(phases - migration["total_ms"]) < 0.01 * migration["total_ms"] + 0.05).all()
    latency = trials["latency_ms"].dropna()
    assert len(latency) == 2 * 5 and (latency > 0).all()  # 5 messages x 2 seeds, all arrived
    summary = pd.read_csv(out / "summary.csv")
    assert summary["lab_n"].eq(0).all() and summary["err_mean"].isna().all()
    assert summary["sim_n"].gt(0).all()
    assert json.loads((out / "provenance.json").read_text())["experiment"] == "validation"


def test_a_frozen_clients_will_waits_for_the_brokers_next_check():
    """With will_check_interval, a silent client's will goes out at the first check (a
    multiple of the interval) after 1.5 x keepalive."""
    from runtime.transport import Message
    from thingssim.sim.broker import BrokerProfile
    from thingssim.sim.network import LinkProfile

    for interval, expect in ((0.0, None), (6.0, 6.0)):
        world = World(broker=BrokerProfile(will_check_interval=interval))
        net = world.network
        quiet = net.client("quiet", net.add_link("quiet", LinkProfile(latency=0.001)))
        watcher = net.client("watch", net.add_link("watch", LinkProfile(latency=0.001)))
        wills = []
        watcher.subscribe("gone", lambda m, wills=wills, world=world:
                          wills.append(world.clock.now()), qos=0)
        watcher.connect()
        quiet.connect(will=Message("gone", b"x"), keepalive=2.0)
        world.at(0.5, quiet.freeze)
        world.run(20.0)
        assert len(wills) == 1
        if expect is None:  # silent from its freeze at 0.5 s: 1.5 x 2 s later
            assert wills[0] == pytest.approx(0.5 + 3.0, abs=0.01)
        else:
            assert wills[0] == pytest.approx(expect, abs=0.01)
