"""RIoTBench data: SenML parsing and writing, the shipped samples, the properties reader,
the synthetic generator and the replayer.

Tests that read the project's copied samples (``thingssim/riot/data/``): every
``test_sample_*``, ``test_schema_files``, ``test_properties_*``, ``test_metadata``, and
every generator test (the generator draws ids from the samples and metadata, and its
marginals are compared with the samples).  The SenML unit tests and the replayer's
pacing tests on made-up lines need no file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from runtime.riot.senml import Field, Schema, format_line, parse_line, to_senml
from thingssim.riot import datasets
from thingssim.riot.datasets import (
    DATA_DIR,
    DATASETS,
    load_metadata,
    load_properties,
    parse_properties,
    sample_path,
    schema,
    schema_file,
)
from thingssim.riot.generate import IST, MODELS, fit, generate, sample_rows
from thingssim.riot.replay import line_timestamp, replay

ROOT = Path(__file__).resolve().parents[1]


# --- SenML ------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", DATASETS)
def test_sample_lines_parse_and_format_back_byte_for_byte(dataset: str) -> None:
    sch = schema(dataset)
    kinds = {f.name: f.kind for f in sch.fields}
    lines = sample_path(dataset).read_text(encoding="utf-8").splitlines()
    assert len(lines) == {"TAXI": 1000, "SYS": 1000, "FIT": 45}[dataset]
    for line in lines:
        ts, fields = parse_line(line)
        assert list(fields) == sch.names
        for name, value in fields.items():
            assert isinstance(value, float if kinds[name] == "v" else str)
        assert format_line(ts, fields, sch) == line


def test_sample_first_taxi_line_values() -> None:
    ts, f = parse_line(sample_path("TAXI").read_text().splitlines()[0])
    assert ts == 1358101800000
    assert f["taxi_identifier"] == "149298F6D390FA640E80B41ED31199C5"
    assert f["pickup_datetime"] == "2013-01-13 23:36:00"
    assert (f["trip_time_in_secs"], f["trip_distance"], f["fare_amount"]) == (1440.0, 9.08, 29.0)
    assert f["pickup_longitude"] == "-73.982071"  # coordinates are sv strings in the data
    assert f["total_amount"] == 30.0


def test_round_trip_of_arbitrary_values() -> None:
    sch = Schema((
        Field("id", "string", "sv"),
        Field("money", "dollar", "v", 2),
        Field("x", "m/s2", "v"),
        Field("n", "count", "v"),
    ))
    cases = [
        {"id": "a,b \"c\" / d", "money": 29.0, "x": -9.2997, "n": 1440.0},
        {"id": "", "money": 1 / 3, "x": 0.0054617, "n": -0.0},  # 1/3 cannot keep 2 decimals
        {"id": "é", "money": 1e20, "x": 1e-300, "n": 2.0**60},
    ]
    for fields in cases:
        line = format_line(1417890600020, fields, sch)
        assert parse_line(line) == (1417890600020, fields)
    line = format_line(5, cases[0], sch)
    assert '"v":"29.00"' in line and '"v":"1440"' in line and '"u":"m\\/s2"' in line


def test_to_senml_layout_and_schema_rules() -> None:
    sch = Schema((Field("timestamp", "time", "sv"), Field("a", "u", "v"), Field("b", "s", "sv")),
                 string_bt=True)
    record = to_senml({"a": 2, "timestamp": 7}, sch, 7)
    assert record == {"e": [{"v": "2", "u": "u", "n": "a"}], "bt": "7"}  # b absent: left out
    assert parse_line(format_line(7, {"a": 2.5, "b": "x"}, sch)) == (7, {"a": 2.5, "b": "x"})
    with pytest.raises(ValueError, match="not in the schema: c"):
        to_senml({"a": 1.0, "c": 2.0}, sch, 0)
    with pytest.raises(ValueError, match="not a number"):
        to_senml({"a": "lots"}, sch, 0)


def test_parse_fallbacks() -> None:
    assert parse_line('{"bn":"dev1","bt":"42","e":[{"v":3},{"n":"s","vs":"on"}]}') == (
        42, {"dev1": 3.0, "s": "on"})
    assert parse_line('17 , {"e":[{"n":"a","v":"1e3"}]}\r\n') == (17, {"a": 1000.0})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "no SenML JSON object"),
        ("1358101800000,", "no SenML JSON object"),
        ('1,{"e":[}', "invalid SenML JSON"),
        ('x1,{"e":[]}', "timestamp is not an integer"),
        ('1 {"e":[]}', "expected '<timestamp>,'"),
        ('{"e":[]}', "neither a timestamp prefix nor a 'bt'"),
        ('{"e":[],"bt":"soon"}', "bt is not an integer"),
        ("1,[]", "no SenML JSON object"),
        ('1,{"bt":1}', "no 'e' list"),
        ('1,{"e":[1]}', "entry 0 of 'e' is not an object"),
        ('1,{"e":[{"v":"1"}]}', "has no name"),
        ('1,{"e":[{"n":"a"}]}', "entry 'a' has no value"),
        ('1,{"e":[{"n":"a","v":"ten"}]}', "value of 'a' is not a number"),
        ('1,{"e":[{"n":"a","v":true}]}', "value of 'a' is not a number"),
        ('1,{"e":[{"n":"a","sv":5}]}', "string value of 'a' is not a string"),
    ],
)
def test_malformed_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_line(line)


def test_schema_files() -> None:
    taxi = Schema.load(str(schema_file("TAXI", annotated=True)))
    assert len(taxi.fields) == 20 and taxi.names[-3:] == ["taxi_company", "drivername", "taxi_city"]
    assert taxi.kind("timestamp") == "sv" and taxi.unit("fare_amount") == "dollar"
    sys_plain = Schema.load(str(schema_file("SYS")))
    sys_annotated = Schema.load(str(schema_file("SYS", annotated=True)))  # starts blank
    assert sys_annotated.names == sys_plain.names + ["location", "type"]
    fit_schema = Schema.load(str(schema_file("FIT")))
    assert fit_schema.unit("label") == "number "  # as written, in the schema and the data
    assert fit_schema.unit("label") == schema("FIT").unit("label")
    with pytest.raises(ValueError, match="ships no plain schema file for TAXI"):
        schema_file("TAXI")
    # the sample's own schema: the annotated file's columns minus timestamp and annotations
    assert schema("TAXI").names == [n for n in taxi.names[:17] if n != "timestamp"]


def test_schema_load_and_infer_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.csv"
    bad.write_text("a,b\nu\nv,v\n")
    with pytest.raises(ValueError, match="2 names, 1 units and 2 kinds"):
        Schema.load(str(bad))
    bad.write_text("a\nu\nx\n")
    with pytest.raises(ValueError, match="kind must be 'v' or 'sv'"):
        Schema.load(str(bad))
    bad.write_text("a\n")
    with pytest.raises(ValueError, match="needs 3 lines"):
        Schema.load(str(bad))
    with pytest.raises(ValueError, match="no SenML lines"):
        Schema.infer(["", "\n"])
    with pytest.raises(ValueError, match="both 'v' and 'sv'"):
        Schema.infer(['1,{"e":[{"n":"a","v":"1"}]}', '2,{"e":[{"n":"a","sv":"x"}]}'])


# --- datasets ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DATA_DIR.glob("*.properties")), ids=lambda p: p.name)
def test_properties_every_shipped_file(path: Path) -> None:
    props = load_properties(path)
    assert len(props) > 60
    assert props["FILTER.RANGE_FILTER.USE_MSG_FIELD"] == "0"  # written " = 0"
    assert all(key and key == key.strip() for key in props)
    assert "AGGREGATE.DISTINCT_APPROX_COUNT.BUCKETS" in props


def test_properties_by_dataset_name() -> None:
    taxi = load_properties("TAXI")
    assert taxi["FILTER.RANGE_FILTER.VALID_RANGE"].startswith("trip_time_in_secs:140:3155,")
    assert taxi["IO.AZURE_STORAGE_CONN_STR"] == "sample-connection-string "  # trailing kept
    assert load_properties("city") == load_properties("SYS")
    fit_props = load_properties("FIT")
    # what Java makes of the range line broken without a backslash
    assert fit_props["FILTER.RANGE_FILTER.VALID_RANGE"].endswith("ecg_lead_2:-6.786:6.6604,")
    assert fit_props["acc_ankle_x"].startswith("-5.0006:8.1472,acc_ankle_y")


def test_parse_properties_java_rules() -> None:
    text = (
        "# comment\n! also a comment\n  a = 1 \nb:2\nc 3\nd=line \\\n    continued\n"
        "e=tab\\tand\\u0041\\\\\nf\ng=x=y\na=last\n"
    )
    assert parse_properties(text) == {
        "a": "last", "b": "2", "c": "3", "d": "line continued", "e": "tab\tandA\\",
        "f": "", "g": "x=y",
    }


def test_metadata() -> None:
    taxi = load_metadata("TAXI")
    assert len(taxi) == 9302
    assert taxi["00005007A9F30E289E760362F69E4EAD"] == ("carpool", "dellas", "San Jose")
    assert {f["taxi_identifier"] for _, f in sample_rows("TAXI")} <= set(taxi)
    assert {f["source"] for _, f in sample_rows("SYS")} <= set(load_metadata("SYS"))
    with pytest.raises(ValueError, match="no annotation metadata for FIT"):
        load_metadata("FIT")
    with pytest.raises(ValueError, match="unknown RIoTBench dataset 'GRID'"):
        datasets.sample_path("GRID")


# --- generator --------------------------------------------------------------------------


def _digest(dataset: str, n: int, seed: int) -> str:
    h = hashlib.sha256()
    for line in generate(dataset, n, seed):
        h.update(line.encode() + b"\n")
    return h.hexdigest()


@pytest.mark.parametrize("dataset", DATASETS)
def test_generator_deterministic_per_seed_and_prefix_stable(dataset: str) -> None:
    a = list(generate(dataset, 1500, 11))
    assert a == list(generate(dataset, 1500, 11))
    assert a[:700] == list(generate(dataset, 700, 11))  # blocks: shorter is a prefix
    b = list(generate(dataset, 1500, 12))
    assert sum(x != y for x, y in zip(a, b)) > 1400
    assert list(generate(dataset, 0, 1)) == []


def test_generator_same_bytes_in_another_process_and_hash_seed() -> None:
    code = (
        "import hashlib\nfrom thingssim.riot.generate import generate\n"
        "for d in ('TAXI', 'SYS', 'FIT'):\n"
        "    h = hashlib.sha256()\n"
        "    for line in generate(d, 800, 5):\n"
        "        h.update(line.encode() + b'\\n')\n"
        "    print(h.hexdigest())\n"
    )
    expected = [_digest(d, 800, 5) for d in ("TAXI", "SYS", "FIT")]
    for hash_seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
        assert out == expected


def _ks_pvalues(dataset: str) -> dict[str, float | bool]:
    """Two-sample KS p-value per numeric field: 5,000 generated rows against the sample;
    a field constant in the sample maps to whether every generated value equals it.

    SYS rows are every 10th of 50,000: its values are by sensor (788 sensors whose own
    parts drift slowly), so 5,000 consecutive rows would hold far fewer than 5,000
    independent draws and the KS test assumes independent ones.
    """
    sample = [f for _, f in sample_rows(dataset)]
    if dataset == "SYS":
        lines = itertools.islice(generate(dataset, 50_000, 3), 0, None, 10)
    else:
        lines = generate(dataset, 5000, 3)
    rows = [parse_line(line)[1] for line in lines]
    assert len(rows) == 5000
    result: dict[str, float | bool] = {}
    for name, value in sample[0].items():
        if isinstance(value, str):
            continue
        a = np.array([f[name] for f in sample])
        b = np.array([f[name] for f in rows])
        result[name] = bool(np.all(b == a[0])) if np.ptp(a) == 0 else stats.ks_2samp(b, a).pvalue
    return result


@pytest.mark.parametrize("dataset", DATASETS)
def test_generator_marginals_match_the_sample(dataset: str) -> None:
    pvalues = _ks_pvalues(dataset)
    assert len(pvalues) == {"TAXI": 8, "SYS": 7, "FIT": 24}[dataset]
    bad = {k: p for k, p in pvalues.items() if p is False or (p is not True and p <= 0.01)}
    assert not bad, f"fields whose generated marginal differs from the sample's: {bad}"


@pytest.mark.parametrize("dataset", DATASETS)
def test_fit_recomputes_the_constants(dataset: str) -> None:
    def same(a: object, b: object) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, float) or isinstance(b, float):
            return bool(np.isclose(a, b, rtol=1e-5, atol=1e-12))
        return a == b

    assert same(fit(dataset), MODELS[dataset])


def test_taxi_derived_relations() -> None:
    rows = [parse_line(line) for line in generate("TAXI", 3000, 8)]
    taxis = load_metadata("TAXI")
    fare, dist, time = (np.array([f[k] for _, f in rows])
                        for k in ("fare_amount", "trip_distance", "trip_time_in_secs"))
    for ts, f in rows:
        parts = f["fare_amount"] + f["surcharge"] + f["mta_tax"] + f["tip_amount"]
        assert round(parts + f["tolls_amount"], 2) == f["total_amount"]
        if f["payment_type"] == "CSH":
            assert f["tip_amount"] == 0.0
        assert f["taxi_identifier"] in taxis
        dropoff = dt.datetime.fromtimestamp(ts / 1000, IST).replace(tzinfo=None)
        pickup = dt.datetime.strptime(f["pickup_datetime"], "%Y-%m-%d %H:%M:%S")
        assert (dropoff - pickup).total_seconds() == f["trip_time_in_secs"]
        assert f["trip_time_in_secs"] % 60 == 0 and f["fare_amount"] % 0.5 == 0
    card = [f for _, f in rows if f["payment_type"] == "CRD"]
    assert np.mean([f["tip_amount"] > 0 for f in card]) > 0.9  # card tips are mostly paid
    assert stats.spearmanr(fare, dist)[0] > 0.8 and stats.spearmanr(fare, time)[0] > 0.75


def test_generator_timestamps() -> None:
    taxi = [line_timestamp(line) for line in generate("TAXI", 2000, 1)]
    steps = set(np.diff(taxi).tolist())
    assert taxi[0] == 1358101800000 and steps == {0, 60000}
    per_minute = np.unique(taxi, return_counts=True)[1]
    assert 3 < per_minute.mean() < 4.5  # the sample has 1000 lines in 275 minutes
    sys_ts = [line_timestamp(line) for line in generate("SYS", 2000, 1)]
    assert set(np.diff(sys_ts).tolist()) == {0, 1000}
    fit_ts = [line_timestamp(line) for line in generate("FIT", 100, 1)]
    assert fit_ts == [1417890600000 + 20 * i for i in range(100)]
    paced = [line_timestamp(line) for line in generate("TAXI", 7, 1, start_ms=1000, rate=3)]
    assert paced == [1000, 1333, 1666, 2000, 2333, 2666, 3000]


def test_sys_values_by_sensor() -> None:
    rows = [parse_line(line)[1] for line in generate("SYS", 1024, 4)]  # one block
    seen: dict[str, tuple[float, float, float]] = {}
    pairs = []
    for f in rows:
        if f["source"] in seen:
            lon, lat, temp = seen[f["source"]]
            assert (f["longitude"], f["latitude"]) == (lon, lat)
            pairs.append((temp, f["temperature"]))
        seen[f["source"]] = (f["longitude"], f["latitude"], f["temperature"])
    assert len(pairs) > 100
    a, b = np.array(pairs).T
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_generator_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        list(generate("TAXI", -1, 0))
    with pytest.raises(ValueError, match="rate must be > 0"):
        list(generate("SYS", 1, 0, rate=0))
    with pytest.raises(ValueError, match="unknown RIoTBench dataset"):
        list(generate("PLUG", 1, 0))


# --- replay -----------------------------------------------------------------------------


def test_replay_at_a_fixed_rate() -> None:
    got = list(replay(sample_path("SYS"), rate=250))
    assert len(got) == 1000
    assert [d for d, _ in got[:4]] == [0.0, 0.004, 0.008, 0.012]
    assert got[-1][0] == pytest.approx(999 / 250)
    assert got[0][1] == sample_path("SYS").read_text().splitlines()[0]


def test_replay_at_scaled_recorded_timestamps() -> None:
    got = list(replay(sample_path("TAXI"), speedup=60))  # a recorded minute per second
    first = line_timestamp(got[0][1])
    for due, line in got:
        assert due == pytest.approx((line_timestamp(line) - first) / 60000)
    assert got[-1][0] == pytest.approx(274.0)


def test_replay_late_lines_go_at_once_and_until_and_loop() -> None:
    lines = ["1000,{}", "3000,{}", "2000,{}", "", "5000,{}"]
    assert [d for d, _ in replay(lines, speedup=2)] == [0.0, 1.0, 1.0, 2.0]
    assert [d for d, _ in replay(lines, speedup=2, until=1.5)] == [0.0, 1.0, 1.0]
    looped = list(replay(sample_path("FIT"), speedup=1, loop=True, until=1.0))
    dues = [d for d, _ in looped]
    assert dues == sorted(dues) and dues[-1] <= 1.0 and len(looped) > 45 * 20
    at_rate = list(replay(sample_path("FIT"), rate=100, loop=True, until=0.995))
    assert len(at_rate) == 100 and at_rate[45][1] == at_rate[0][1]


def test_replay_is_lazy() -> None:
    endless = (f"{1000 * i},{{}}" for i in itertools.count())
    got = list(itertools.islice(replay(endless, speedup=1000), 5))
    assert [d for d, _ in got] == [0.0, 0.001, 0.002, 0.003, 0.004]


def test_replay_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        list(replay(["1,{}"]))
    with pytest.raises(ValueError, match="exactly one of"):
        list(replay(["1,{}"], rate=1, speedup=1))
    with pytest.raises(ValueError, match="needs a file path"):
        list(replay(["1,{}"], rate=1, loop=True, until=1))
    with pytest.raises(ValueError, match="needs until="):
        list(replay(sample_path("FIT"), rate=1, loop=True))
    bad = tmp_path / "bad.csv"
    bad.write_text('1,{"e":[]}\n\n{"e":[]}\n')
    with pytest.raises(ValueError, match=r"bad\.csv:3: no '<timestamp ms>,'"):
        list(replay(bad, speedup=1))
    assert len(list(replay(bad, rate=1))) == 2  # a rate needs no timestamps
    assert json.loads(next(replay(bad, rate=1))[1].split(",", 1)[1]) == {"e": []}
