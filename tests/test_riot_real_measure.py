"""The real-worker RIoTBench measurement (``experiments/riotbench_real.py``) in minimal form.

One dataflow (ETL), two rates per way (the search doubles from 20 to its limit of 40
msg/s and stops), 1.5 s of input per run, one stage migrated: the whole machinery
(broker, three real workers, the file service, the raw-paho fleet, CPU accounting, the
tables and the figure) in seconds.  No bound on any time or rate is checked here: that
is what the experiment measures; this checks that it measures, and that the raw pipeline
(the limit thingssim is compared with) delivers every message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from mqtt_fixtures import require_broker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

import riotbench_real  # noqa: E402

SHARED = ["flow", "way", "sent", "received", "lost", "duplicates", "reordered", "throughput",
          "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "hops", "broker_cores",
          "workers_cores", "programs_cores", "raw_cores", "other_cores", "error"]


def test_minimal_measurement_writes_its_tables_and_raw_paho_loses_nothing(tmp_path,
                                                                          monkeypatch):
    require_broker()
    out = tmp_path / "riotbench"
    real_judge, verdicts = riotbench_real.judge, []

    def judge(result, duration, rate):
        """Judged as usual, but every rate passes: what runs must not depend on how busy
        the machine is."""
        verdicts.append(real_judge(result, duration, rate))
        return True

    monkeypatch.setattr(riotbench_real, "judge", judge)
    assert riotbench_real.main([
        "--flows", "ETL", "--start", "20", "--limit", "40", "--precision", "1",
        "--duration", "1.5", "--drain", "3", "--latency-duration", "1.5", "--migrate", "1",
        "--gap", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"real_peak.csv", "real_trials.csv",
                                                "real_latency.csv", "real_migration.csv",
                                                "real.png"}

    assert len(verdicts) == 4 and all(isinstance(v, bool) for v in verdicts)
    trials = pd.read_csv(out / "real_trials.csv")
    assert set(SHARED + ["rate", "attempt", "sustainable", "raw_us_per_hop"]) <= \
        set(trials.columns)
    raw = trials[trials["way"] == "raw paho"]
    assert list(raw["rate"]) == [20, 40]
    # every message of the source reached the sink, once, in order (ETL: one tuple each)
    assert list(raw["sent"]) == [30, 60]
    assert (raw["received"] == raw["sent"]).all()
    assert (raw[["lost", "duplicates", "reordered"]] == 0).all().all()
    assert (raw["raw_cores"] > 0).all()  # the CPU of the raw processes is counted
    mine = trials[trials["way"] == "thingssim"]
    assert (mine["programs_cores"] > 0).all() and (mine["raw_cores"] == 0).all()

    peak = pd.read_csv(out / "real_peak.csv")
    assert list(peak["way"]) == ["thingssim", "raw paho"]
    assert {"peak_msg_s", "share_of_raw", "at_search_limit", "runs"} <= set(peak.columns)
    assert peak.set_index("way").loc["raw paho", "peak_msg_s"] == 40

    latency = pd.read_csv(out / "real_latency.csv")
    assert set(SHARED + ["rate", "basis"]) <= set(latency.columns)
    rate = peak.set_index("way").loc["thingssim", "peak_msg_s"] / 2
    assert list(latency["rate"]) == [rate, rate]

    migration = pd.read_csv(out / "real_migration.csv")
    assert list(migration["stage"]) == ["parse"]
    assert {"from", "to", "ok", "total_s", "p99_baseline_ms", "p99_before_ms", "p99_window_ms",
            "max_window_ms",
            "window_lost", "window_duplicates", "window_reordered",
            "run_lost_all_hops"} <= set(migration.columns)
    assert migration["ok"].all() and migration["from"][0] != migration["to"][0]
