"""RIoTBench's dataflows end to end: in simulation, and on real workers over a real broker.

Each dataflow runs as programs (source, one per stage, sink); the sink's rows and every
stage's recorded output are checked: counts against what the tasks and the data say
(ETL's range filter against a reference computed here with numpy from the sample),
latencies positive and plausible, and, with stages migrated mid-stream, that no message
is lost, doubled or reordered (sequence numbers at the sink, gap-free streams at every
stage, every source id at the end of ETL).  The real-worker tests start their own broker
(Mosquitto, else amqtt) and three worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mqtt_fixtures
import numpy as np
import pytest
from click.testing import CliRunner

from runtime.riot.senml import parse_line
from thingssim.cli import main
from thingssim.riot.dataflows import SHARED, build, initial_models
from thingssim.riot.datasets import load_metadata, load_properties, sample_path
from thingssim.riot.run import RunSpec, default_world, run_real, run_sim

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = [line for line in sample_path("TAXI").read_text().splitlines() if line.strip()]

broker = mqtt_fixtures.broker


def _gap_free(result) -> None:
    """Every stage's recorded stream is numbered 0, 1, 2... with nothing missing or twice."""
    for stage, frame in result.measurement.records.items():
        assert list(frame["_seq"]) == list(range(len(frame))), stage


def _no_loss(result, sent: int) -> None:
    m = result.measurement
    s = m.summary.iloc[0]
    why = f"\n{m.summary.T}\n{m.streams}\n{m.tasks}\n{result.actions}\n{result.consoles}"
    assert s["complete"], why
    assert (s["lost"], s["duplicates"], s["reordered"]) == (0, 0, 0), why
    assert s["sent"] == sent, why


def _reference_etl(lines: list[str]) -> list[dict]:
    """What ETL's range filter must leave of each TAXI line, computed independently: the
    fields within RIoTBench's valid ranges (compared as 32-bit floats, as the Java
    task's Float.parseFloat makes them) keep their values, the others are nulled."""
    spec = load_properties("TAXI")["FILTER.RANGE_FILTER.VALID_RANGE"]
    ranges = {}
    for part in spec.split(","):
        name, low, high = part.split(":")
        ranges[name] = (np.float32(low), np.float32(high))
    out = []
    for line in lines:
        _, fields = parse_line(line)
        kept = {}
        for name, value in fields.items():
            if name in ranges:
                low, high = ranges[name]
                if not low <= np.float32(value) <= high:
                    continue
            kept[name] = value
        out.append(kept)
    return out


# ------------------------------------------------------------------------- simulation
def test_etl_in_simulation_matches_the_reference():
    result = run_sim(RunSpec(flow="ETL", rate=80, duration=12.5, run_id="etl-ref",
                             record=True))
    m = result.measurement
    _no_loss(result, 1000)
    assert sorted(m.latency["id"]) == list(range(1000))  # every message, once
    lat = m.latency["latency_ms"]
    assert (lat > 0).all() and lat.max() < 1000
    _gap_free(result)
    reference = _reference_etl(SAMPLE)
    metadata = load_metadata("TAXI")
    nulled = 0
    for _, row in m.records["csv_to_senml"].iterrows():
        i = int(row["_id"])
        got = {e["n"]: (float(e["v"]) if "v" in e else e["sv"])
               for e in json.loads(row["senml"])["e"]}
        want = dict(reference[i])
        taxi = want["taxi_identifier"]
        if taxi in metadata:
            want.update(zip(("taxi_company", "drivername", "taxi_city"), metadata[taxi]))
        assert got == want, i
        nulled += len(parse_line(SAMPLE[i])[1]) - len(reference[i])
    assert nulled > 500  # the filter really nulls (tolls are mostly 0)
    tasks = m.tasks.set_index("stage")
    assert tasks.loc["parse", "out"] == 10 * 1000  # split per observed field, then joined
    assert tasks.loc["join", "out"] == 1000


def test_stats_in_simulation_plots_a_png_per_window():
    world = default_world(3)
    result = run_sim(RunSpec(flow="STATS", rate=100, duration=4, run_id="stats",
                             input="synthetic", seed=3), world)
    _no_loss(result, 400)
    tasks = result.measurement.tasks.set_index("stage")
    for stage in ("kalman_filter", "distinct_approx_count", "second_order_moment"):
        assert tasks.loc[stage, "out"] == 400  # 1:1
    assert tasks.loc["plot", "out"] == result.measurement.summary["received"][0] > 0
    storage = world.gfs["gfs"].storage
    names = storage.listdir(f"{SHARED}/plots/stats")
    assert len(names) == tasks.loc["plot", "plots"] > 10
    data, _ = storage.read(f"{SHARED}/plots/stats/{names[0]}")
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 100


def test_train_in_simulation_stores_models_and_notifies():
    world = default_world(4)
    result = run_sim(RunSpec(flow="TRAIN", rate=200, duration=5, run_id="train"), world)
    _no_loss(result, 1000)
    m = result.measurement
    # 1000 rows, batches of 300: 3 MLR models; 900 labelled rows (3 batches of 300): 3 trees
    assert m.summary["received"][0] == 6
    storage = world.gfs["gfs"].storage
    for kind in ("MLR", "DTC"):
        model = json.loads(storage.read(f"{SHARED}/models/TAXI/{kind}.json")[0])
        assert model["type"] in ("linear_regression", "decision_tree")
    assert (m.latency["latency_ms"] > 0).all()


def test_pred_in_simulation_reloads_its_model_while_it_runs():
    world = default_world(5)
    model = json.loads(initial_models("TAXI")["DTC"])
    model["tree"] = {"leaf": "EXCELLENT"}
    path = "/riot/models/TAXI/DTC.json"
    notified = {}

    def new_model(dep) -> None:  # what a TRAIN run does: store, then notify
        world.gfs["gfs"].preload({SHARED + path[len("/riot"):]: json.dumps(model).encode()})
        dep.d.transport.publish("riot/models/TAXI", json.dumps(
            {"analytic_type": "DTC", "path": path, "model_version": 2}).encode(), qos=1)
        notified["at"] = world.clock.now()

    result = run_sim(RunSpec(flow="PRED", rate=100, duration=6, run_id="pred", record=True,
                             actions=[{"at": 3.0, "type": "call", "fn": new_model}]), world)
    _no_loss(result, 600)
    m = result.measurement
    labels = m.records["dt_classify"].dropna(subset=["classified_class"])
    before = labels[labels["_sent"] < notified["at"]]["classified_class"]
    after = labels[labels["_sent"] > notified["at"] + 0.5]["classified_class"]
    assert before.nunique() > 1 and len(after) > 100 and set(after) == {"EXCELLENT"}
    assert m.tasks.set_index("stage").loc["dt_classify", "models"] == 1
    residual = m.records["residual_error"]
    assert np.allclose(residual["residual"], residual["actual"] - residual["predict"])


def test_stages_migrated_mid_stream_lose_double_and_reorder_nothing_in_simulation():
    moves = [{"at": 1.0, "type": "migrate", "stage": "range_filter", "to": "pi-2"},
             {"at": 1.5, "type": "migrate", "stage": "join", "to": "pi-1"},  # stateful
             {"at": 2.0, "type": "migrate", "stage": "parse", "to": "pi-3"},
             {"at": 2.2, "type": "migrate", "stage": "source", "to": "pi-2"},  # reading
             {"at": 2.5, "type": "migrate", "stage": "annotate", "to": "pi-2"},  # 0.5 MB
             {"at": 3.0, "type": "migrate", "stage": "range_filter", "to": "pi-3"}]
    # the source reads its input from the file system in parts of 40 lines as it goes
    result = run_sim(RunSpec(flow="ETL", rate=60, duration=5, run_id="etl-moves",
                             record=True, actions=moves, embed_lines=100, part_lines=40,
                             placement={"source": "pi-1", "sink": "pi-1", "parse": "pi-1",
                                        "range_filter": "pi-1", "join": "pi-2",
                                        "annotate": "pi-3"}))
    assert list(result.actions["ok"]) == [True] * len(moves)
    _no_loss(result, 300)
    assert sorted(result.measurement.latency["id"]) == list(range(300))
    _gap_free(result)
    # a fan-in stage (two input streams) moved while both flow
    result = run_sim(RunSpec(flow="PRED", rate=200, duration=3, run_id="pred-moves",
                             record=True, actions=[
                                 {"at": 1.0, "type": "migrate", "stage": "residual_error",
                                  "to": "pi-1"}]))
    assert list(result.actions["ok"]) == [True]
    _no_loss(result, 600)
    _gap_free(result)
    assert result.measurement.tasks.set_index("stage").loc["residual_error", "out"] == 600


def test_cli_in_simulation(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["riot", "etl", "--rate", "50", "--duration", "2",
                                    "--record", "--out", str(out), "--no-progress",
                                    "--migrate", "join:pi-1@1"])
    assert res.exit_code == 0, res.output
    assert "100 sent, 100 at the sink, 0 lost" in res.output
    for name in ("summary", "tasks", "latency", "streams", "actions", "tasks/join"):
        assert (out / f"{name}.csv").is_file(), name
    res = CliRunner().invoke(main, ["riot", "pred", "--speedup", "600", "--duration", "2",
                                    "--no-progress"])  # the sample's own timestamps
    assert res.exit_code == 0 and "PRED on TAXI (sim)" in res.output, res.output
    bad = CliRunner().invoke(main, ["riot", "etl", "--rate", "0"])
    assert bad.exit_code == 2 and "--rate" in bad.output


# ---------------------------------------------------------------------- real workers
@pytest.fixture(scope="module")
def workers(broker, tmp_path_factory):
    """Three worker processes (programs in child processes) on the module's broker."""
    tmp = tmp_path_factory.mktemp("riot-workers")
    procs = []
    for wid in ("w1", "w2", "w3"):
        config = tmp / f"{wid}.json"
        config.write_text(json.dumps({"pubsub_url": broker.url, "id": wid, "keepalive": 2,
                                      "resource_period": 1.0, "snapshot_key": "riot-fleet"}))
        log = open(tmp / f"{wid}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, "-m", "runtime.worker", str(config)],
                                      stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}))
    time.sleep(1.0)
    yield broker.url
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("flow, received", [("ETL", 300), ("STATS", None), ("TRAIN", 2),
                                            ("PRED", 600)])
def test_dataflows_on_real_workers(workers, flow, received):
    result = run_real(RunSpec(flow=flow, rate=100, duration=3, run_id=f"real-{flow.lower()}",
                              drain_s=15), workers, discover=1.5)
    _no_loss(result, 300)
    s = result.measurement.summary.iloc[0]
    if received is not None:
        assert s["received"] == received
    else:
        assert s["received"] > 0
    if s["received"]:
        lat = result.measurement.latency["latency_ms"]
        # within the run plus its drain (amqtt, the fallback broker, takes seconds at
        # 100 msg/s through ETL's 8 hops; Mosquitto well under one)
        assert (lat > 0).all() and lat.max() < 1000 * (3 + 15)
    assert set(result.placement.values()) == {"w1", "w2", "w3"}
    tasks = result.measurement.tasks
    assert (tasks["cpu_pct"].notna()).any()  # resource reports from /proc


@mqtt_fixtures.needs_mosquitto(mqtt_fixtures.AMQTT_ONE_COPY_PER_FILTER + ": a stage moved "
                               "beside the sink's filters would see tuples twice")
def test_stages_migrated_mid_stream_lose_double_and_reorder_nothing_on_real_workers(workers):
    moves = [{"at": 0.8, "type": "migrate", "stage": "range_filter", "to": "w3"},
             {"at": 1.4, "type": "migrate", "stage": "join", "to": "w3"},
             {"at": 2.0, "type": "migrate", "stage": "parse", "to": "w1"}]
    result = run_real(RunSpec(flow="ETL", rate=100, duration=3, run_id="real-moves",
                              record=True, actions=moves, drain_s=15,
                              placement={"source": "w1", "parse": "w2", "range_filter": "w2",
                                         "join": "w2", "sink": "w1"}), workers, discover=1.5)
    assert list(result.actions["ok"]) == [True] * len(moves), result.actions.to_string()
    _no_loss(result, 300)
    assert sorted(result.measurement.latency["id"]) == list(range(300))
    _gap_free(result)


def test_dataflow_is_built_from_riotbench_properties():
    flow = build("PRED", "SYS")
    assert [s.name for s in flow.stages] == ["parse", "dt_classify", "mlr_predict", "average",
                                             "residual_error"]
    assert flow.sink_inputs == ("dt_classify", "residual_error")
    assert build("ETL", "FIT").names[-2] == "csv_to_senml"  # FIT: nothing to annotate
    with pytest.raises(ValueError, match="unknown dataflow"):
        build("NOPE")
