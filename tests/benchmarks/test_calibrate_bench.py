"""CPU calibration on the reference machine: ``thingssim calibrate`` measures ~1.0 here.

A timing bound, so a benchmark: with ``--benchmark-disable`` (the default suite) it
calibrates once as a smoke test; only with ``--benchmark-enable`` does it check that this
machine's factor and the run's duration are in their loose ranges (load and CI machines
vary).
"""

from __future__ import annotations

from thingssim.calibrate import calibrate


def test_calibrate_on_the_reference_machine(benchmark, timing_bounds):
    benchmark.group = "calibrate"
    report = benchmark.pedantic(calibrate, args=(0.3,), rounds=1, iterations=1)
    benchmark.extra_info["cpu_factor"] = round(report["cpu_factor"], 3)
    assert report["cpu_factor"] > 0
    if timing_bounds:
        # Loose: this machine calibrates to ~1.0, but CI machines and load vary.
        assert 0.3 <= report["cpu_factor"] <= 3.0
        assert 0.25 <= report["seconds"] < 2.0
