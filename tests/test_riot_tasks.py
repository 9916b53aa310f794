"""RIoTBench's tasks (runtime/riot/tasks.py) against independent references.

References: numpy/scipy (least squares, regression windows, percentiles, block means),
scikit-learn (the entropy decision tree), hashlib + numpy (LogLog), Guava's published
MurmurHash3 test vectors and SMHasher's verification value (the Bloom filter's hash),
exact rational arithmetic (the Kalman filter), hand-worked examples (C4.5's gain ratio,
RIoTBench's quantile labels); on the TAXI, SYS and FIT samples in thingssim/riot/data.
Every task also runs as a program that is snapshotted mid-window, restored and fed the
rest of its stream: its outputs and final state equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from runtime import ProgramHost, VirtualClock
from runtime.riot import senml
from runtime.riot.task import TASKS, make
from runtime.riot.tasks import (
    SENSOR,
    TRAIN_COLUMNS,
    Accumulator,
    Annotate,
    AnnotateDTClass,
    BlockWindowAverage,
    BloomFilterCheck,
    BloomFilterTrain,
    CsvToSenML,
    DecisionTreeClassify,
    DecisionTreeTrain,
    DistinctApproxCount,
    Interpolation,
    Join,
    KalmanFilter,
    MultiLinearRegressionPredict,
    MultiLinearRegressionTrain,
    Plot,
    RangeFilter,
    ResidualError,
    SecondOrderMoment,
    SenMLParse,
    SimpleLinearRegression,
    bloom_size,
    classify,
    configure,
    fit_ols,
    murmur3_x64_128,
    percentile,
    train_tree,
)
from runtime.snapshot import dumps, loads
from thingssim.riot.datasets import DATA_DIR as DATA
from thingssim.riot.datasets import load_properties

TAXI_NUMBERS = ["trip_time_in_secs", "trip_distance", "fare_amount", "surcharge", "mta_tax",
                "tip_amount", "tolls_amount", "total_amount"]


def _lines(name: str) -> list[str]:
    return [line for line in (DATA / name).read_text().splitlines() if line.strip()]


def _parsed(name: str) -> list[dict]:
    parse = SenMLParse()
    return [{"_id": i, **parse({"payload": line})[0]} for i, line in enumerate(_lines(name))]


@pytest.fixture(scope="module")
def taxi() -> list[dict]:
    return _parsed("TAXI_sample_data_senml.csv")


@pytest.fixture(scope="module")
def sys_items() -> list[dict]:
    return _parsed("SYS_sample_data_senml.csv")


def props_of(dataset: str) -> dict[str, str]:
    return load_properties(dataset)


def read(path: str) -> bytes:
    """The project copy of a file a properties file names (by base name).

    RIoTBench's ``taxi-schema-without-annotation.csv`` is not among the samples: it is the
    annotated schema without its three annotation columns, so it is derived from that.
    """
    name = Path(path).name
    if name == "taxi-schema-without-annotation.csv":
        rows = (DATA / "taxi-schema_with_annotation.csv").read_text().splitlines()
        return "\n".join(",".join(r.split(",")[:17]) for r in rows if r.strip()).encode()
    return (DATA / name).read_bytes()


def run(task, items):
    out = []
    for item in items:
        out.extend(task(item))
    return out


# =========================================================================== registry

def test_make_finds_every_task_and_configure_builds_them_from_each_properties_file():
    make("KalmanFilter", fields=["x"])
    expected = {"SenMLParse", "RangeFilter", "BloomFilterCheck", "BloomFilterTrain",
                "Interpolation", "Join", "Annotate", "CsvToSenML", "BlockWindowAverage",
                "KalmanFilter", "SimpleLinearRegression", "SecondOrderMoment",
                "DistinctApproxCount", "Accumulator", "Plot", "AnnotateDTClass",
                "DecisionTreeTrain", "MultiLinearRegressionTrain", "DecisionTreeClassify",
                "MultiLinearRegressionPredict", "ResidualError"}
    assert expected <= set(TASKS)
    with pytest.raises(ValueError, match="unknown RIoTBench task"):
        make("NoSuchTask")
    for dataset in ("TAXI", "SYS", "FIT"):
        props = props_of(dataset)
        for name in sorted(expected):
            extra = {"expected_insertions": 1000} if name == "BloomFilterTrain" else {}
            if dataset == "FIT" and name in ("Annotate", "CsvToSenML"):
                continue  # the FIT annotation files are not among RIoTBench's samples
            assert configure(name, props, dataset, read, **extra).name == name


def test_properties_give_riotbenchs_parameters():
    # FIT's range line is broken without a backslash: Java keeps only its first line
    fit = props_of("FIT")
    assert fit["FILTER.RANGE_FILTER.VALID_RANGE"].endswith("ecg_lead_2:-6.786:6.6604,")
    assert len(configure("RangeFilter", fit, "FIT").ranges) == 5
    taxi = props_of("TAXI")
    kalman = configure("KalmanFilter", taxi, "TAXI")
    assert (kalman.q, kalman.r, kalman.p0) == (0.125, 0.32, 30.0)
    assert kalman.fields == TAXI_NUMBERS and kalman.key_field == "taxi_identifier"
    assert configure("DistinctApproxCount", taxi, "TAXI").m == 1024
    assert configure("BlockWindowAverage", taxi, "TAXI").window == 10
    assert configure("Interpolation", props_of("SYS"), "SYS").window == 5
    assert configure("AnnotateDTClass", taxi, "TAXI").field == "trip_time_in_secs"
    mlr = configure("MultiLinearRegressionTrain", taxi, "TAXI")
    assert (mlr.features, mlr.target, mlr.batch_size) == (TRAIN_COLUMNS["TAXI"][:2],
                                                          "fare_amount", 300)
    assert configure("BloomFilterCheck", taxi, "TAXI").active is False  # USE_MSG_FIELD=0
    with pytest.raises(ValueError, match="pass read="):
        configure("Join", taxi, "TAXI")
    with pytest.raises(ValueError, match="unknown dataset"):
        configure("Join", taxi, "GRID", read)


# ================================================================================ ETL

def test_senml_parse_whole_and_split_and_bad_lines(taxi):
    first = taxi[0]
    assert first["timestamp"] == 1358101800000.0 and first["trip_time_in_secs"] == 1440.0
    assert first["payment_type"] == "CSH" and first["total_amount"] == 30.0
    parse = configure("SenMLParse", props_of("TAXI"), "TAXI", split=True)
    line = _lines("TAXI_sample_data_senml.csv")[0]
    tuples = parse({"payload": line, "_id": 7})
    meta = props_of("TAXI")["PARSE.META_FIELD_SCHEMA"].split(",")
    assert len(tuples) == 17 - len(meta)  # one per observed field
    for t in tuples:
        assert t["_id"] == 7 and t[SENSOR] == first["taxi_identifier"]
        assert all(t[m] == first[m] for m in meta)
        (obs,) = set(t) - set(meta) - {"_id", SENSOR}
        assert t[obs] == first[obs]
    bad = SenMLParse()
    assert bad({"payload": "123,{not json"}) == [] and bad({"nothing": 1}) == []
    assert bad({"payload": "1,{"}) == [] and bad.errors == 3 and "JSON" in bad.last_error


def test_range_filter_nulls_out_of_range_values_inclusive_as_java_floats(taxi):
    rf = configure("RangeFilter", props_of("TAXI"), "TAXI")
    out = run(rf, taxi)
    assert len(out) == len(taxi)  # RIoTBench nulls values; the message goes on
    whole = [o for o in out if all(o[f] is not None for f in rf.ranges)]
    assert len(whole) == 57  # thingsjs.md 7.3: 57 of the 1,000 rows pass all five
    for o, item in zip(out, taxi):
        for field, (lo, hi) in RangeFilter.parse_ranges(
                props_of("TAXI")["FILTER.RANGE_FILTER.VALID_RANGE"]).items():
            lo32, hi32 = np.float32(lo), np.float32(hi)
            ok = lo32 <= np.float32(item[field]) <= hi32
            assert (o[field] is not None) == ok
    edge = RangeFilter({"d": (1.37, 29.86)})
    assert edge({"d": 1.37})[0]["d"] == 1.37 and edge({"d": 29.86})[0]["d"] == 29.86
    assert edge({"d": 1.3699999999})[0]["d"] == 1.3699999999  # equal as Java floats
    assert edge({"d": 1.369})[0]["d"] is None and edge({"d": 30.0})[0]["d"] is None
    assert edge({"d": "x", "e": None}) == [{"d": "x", "e": None}]
    with pytest.raises(ValueError):
        RangeFilter("a:1")


# ------------------------------------------------------------------------ Bloom filter

def _guava_hash_bytes(data: bytes, seed: int) -> bytes:
    h1, h2 = murmur3_x64_128(data, seed)
    return h1.to_bytes(8, "little") + h2.to_bytes(8, "little")


def test_murmur3_matches_guavas_test_vectors_and_smhashers_verification():
    vectors = [(0, 0x629942693E10F867, 0x92DB0B82BAEB5347, "hell"),
               (1, 0xA78DDFF5ADAE8D10, 0x128900EF20900135, "hello"),
               (2, 0x8A486B23F422E826, 0xF962A2C58947765F, "hello "),
               (3, 0x2EA59F466F6BED8C, 0xC610990ACC428A17, "hello w"),
               (4, 0x79F6305A386C572C, 0x46305AED3483B94E, "hello wo"),
               (5, 0xC2219D213EC1F1B5, 0xA1D8E2E0A52785BD, "hello wor"),
               (0, 0xE34BBC7BBC071B6C, 0x7A433CA9C49A9347,
                "The quick brown fox jumps over the lazy dog"),
               (0, 0x658CA970FF85269A, 0x43FEE3EAA68E5C3E,
                "The quick brown fox jumps over the lazy cog")]
    for seed, h1, h2, text in vectors:
        assert murmur3_x64_128(text.encode("ascii"), seed) == (h1, h2), text
    # SMHasher: hash keys 0..255 bytes long with seed 256-i, then the concatenation
    hashes = b"".join(_guava_hash_bytes(bytes(range(i)), 256 - i) for i in range(256))
    final = _guava_hash_bytes(hashes, 0)
    assert int.from_bytes(final[:4], "little") == 0x6384BA69


def test_bloom_size_is_guavas():
    assert bloom_size(100, 0.01) == (960, 7)  # m = 958 -> 15 longs; k = round(6.64)
    n, p = 20_000_000, 0.01
    m = int(-n * math.log(p) / math.log(2) ** 2)
    assert bloom_size(n, p) == (math.ceil(m / 64) * 64, 7)
    assert bloom_size(1, 0.5) == (64, 1)
    for bad in (0.0, 1.0, -1):
        with pytest.raises(ValueError):
            bloom_size(10, bad)


def test_bloom_filter_bits_false_positive_rate_and_guava_form(taxi):
    ids = sorted({t["taxi_identifier"] for t in taxi})
    train = BloomFilterTrain("taxi_identifier", expected_insertions=len(ids),
                             false_positive_ratio=0.01)
    assert run(train, [{"taxi_identifier": i} for i in ids]) == []
    # the bits recomputed independently from the hash (Guava's MITZ_64 index rule)
    size, k = bloom_size(len(ids), 0.01)
    expected = np.zeros(size, dtype=np.uint8)
    for key in ids:
        h1, h2 = murmur3_x64_128(key.encode())
        for i in range(k):
            expected[((h1 + i * h2) % 2**64 & (2**63 - 1)) % size] = 1
    assert bytes(train.bits) == np.packbits(expected, bitorder="little").tobytes()
    model = train.model()
    assert model[:6] == bytes([1, k]) + (size // 64).to_bytes(4, "big")
    check = BloomFilterCheck("taxi_identifier", model=model)
    assert bytes(check.bits) == bytes(train.bits) and check.num_hashes == k
    for key in ids:  # no false negatives
        assert check({"taxi_identifier": key})[0]["taxi_identifier"] == key
    rng = random.Random(11)
    strangers = [f"{rng.getrandbits(128):032X}" for _ in range(10_000)]
    passed = sum(check({"taxi_identifier": s})[0]["taxi_identifier"] is not None
                 for s in strangers)
    assert 0.004 <= passed / len(strangers) <= 0.02  # p = 0.01
    assert check.rejected == len(strangers) - passed
    assert abs(train.expected_fpp() - 0.01) < 0.005
    assert BloomFilterCheck("x", model=model, active=False)({"x": "zz"}) == [{"x": "zz"}]
    assert BloomFilterCheck("x")({"x": "zz"}) == [{"x": "zz"}]  # no model: passes
    with pytest.raises(ValueError, match="strategy"):
        BloomFilterCheck("x", model=b"\x00" + model[1:])


# --------------------------------------------------------------------- interpolation

def test_interpolation_fills_nulls_with_the_window_mean_per_sensor(sys_items):
    task = Interpolation(["t"], window=3, key_field="s")
    stream = [("a", 1.0), ("a", 2.0), ("b", 10.0), ("a", None), ("a", 3.0), ("a", 4.0),
              ("a", 5.0), ("a", float("nan")), ("b", None), ("c", None)]
    got = [task({"s": s, "t": v})[0]["t"] for s, v in stream]
    assert got[:3] == [1.0, 2.0, 10.0] and got[3] == 1.5  # filled value not added
    assert got[7] == 4.0 and got[8] == 10.0 and got[9] is None  # no history: stays null
    assert Interpolation(["t"], window=0)({"t": None}) == [{"t": None}]
    assert task({"t": None}) == [{"t": None}]  # no sensor id: passes
    # on SYS after the range filter (RIoTBench's ETL), against a numpy window mean
    props = props_of("SYS")
    rf, interp = configure("RangeFilter", props, "SYS"), configure("Interpolation", props, "SYS")
    history: dict = {}
    for item in sys_items:
        filtered = rf(item)[0]
        out = interp(filtered)[0]
        for f in interp.fields:
            past = history.setdefault((item["source"], f), [])
            if filtered[f] is None:
                want = np.mean(past[-5:]) if past else None
                assert (out[f] is None) if want is None else out[f] == pytest.approx(want)
            else:
                past.append(filtered[f])
    assert interp.filled >= 5  # SYS sources seldom repeat within 1,000 lines


# ------------------------------------------------------------------- join / annotate

def test_split_parse_and_join_rebuild_each_message_in_schema_order(taxi):
    props = props_of("TAXI")
    split = configure("SenMLParse", props, "TAXI", split=True)
    join = configure("Join", props, "TAXI", read)
    assert join.max_count == 17
    tuples = [t for i, line in enumerate(_lines("TAXI_sample_data_senml.csv")[:40])
              for t in split({"payload": line, "_id": i, "_ts": i / 10})]
    random.Random(3).shuffle(tuples)  # interleaved, any order
    joined = run(join, tuples)
    assert len(joined) == 40 and join.pending == {}
    for message in joined:
        original = taxi[message["_id"]]
        assert list(message) == ["_id", "_ts"] + join.schema
        assert {k: original[k] for k in join.schema} == {k: message[k] for k in join.schema}
    # CITY's JOIN.MAX_COUNT_VALUE (5) is smaller than a SYS message: partial messages
    city = configure("Join", props_of("SYS"), "SYS", read)
    sys_split = configure("SenMLParse", props_of("SYS"), "SYS", split=True)
    parts = run(city, sys_split({"payload": _lines("SYS_sample_data_senml.csv")[0], "_id": 1}))
    assert len(parts) == 5 and all(sum(p[f] is not None for f in city.schema) == 5
                                   for p in parts)
    no_id = Join(["a"])
    assert no_id({"a": 1}) == [] and no_id.errors == 1  # no message id: dropped
    assert Join(["a"], max_count=1)({"_id": 3, "a": 1}) == [{"_id": 3, "a": 1}]


def test_annotate_adds_the_metadata_columns(taxi):
    task = configure("Annotate", props_of("TAXI"), "TAXI", read)
    assert task.key_field == "taxi_identifier"
    assert task.names == ["taxi_company", "drivername", "taxi_city"]
    out = task(taxi[0])[0]
    assert (out["taxi_company"], out["drivername"], out["taxi_city"]) == (
        "travel", "henry", "Indianapolis")
    table = {line.split(":")[0] for line in _lines("taxi-metadata-fulldataset.txt")}
    outs = run(task, taxi)
    assert sum("taxi_city" in o for o in outs) == sum(t["taxi_identifier"] in table
                                                      for t in taxi)
    assert task({"x": 1}) == [{"x": 1}] and task.misses >= 1
    city = configure("Annotate", props_of("SYS"), "SYS", read)
    assert city.key_field == "source" and city.names == ["location", "type"]
    with pytest.raises(ValueError):
        Annotate.parse_table("no colon here")


def test_csv_to_senml_round_trips_through_the_senml_parser(taxi):
    task = configure("CsvToSenML", props_of("TAXI"), "TAXI", read)
    annotate = configure("Annotate", props_of("TAXI"), "TAXI", read)
    for item in taxi[:200]:
        annotated = annotate(item)[0]
        (out,) = task(annotated)
        ts, fields = senml.parse_line(f"{int(item['timestamp'])},{out['senml']}")
        assert out["_id"] == item["_id"] and ts == item["timestamp"]
        assert fields == {k: v for k, v in annotated.items()
                          if not k.startswith("_") and k != "timestamp"}
        assert list(fields) == [n for n in task.names if n in fields]
    nulled = task({**taxi[0], "tip_amount": None})[0]
    assert '"tip_amount"' not in nulled["senml"]
    assert task({"trip_time_in_secs": 1.0}) == [] and task.errors == 1
    with pytest.raises(ValueError):
        CsvToSenML(["a"], ["u"], ["x"])


# ============================================================================== STATS

def test_block_window_average_against_numpy_block_means(taxi, sys_items):
    task = BlockWindowAverage(TAXI_NUMBERS, window=10)
    outs = run(task, taxi)
    assert len(outs) == 100
    for f in TAXI_NUMBERS:
        want = np.array([t[f] for t in taxi]).reshape(100, 10).mean(axis=1)
        assert np.allclose([o[f"{f}_average"] for o in outs], want, rtol=1e-12)
    assert outs[0]["_id"] == 9 and outs[0]["timestamp"] == taxi[9]["timestamp"]
    per_source = configure("BlockWindowAverage", props_of("SYS"), "SYS",
                           fields=["temperature"])
    outs = run(per_source, sys_items)
    by_source: dict = {}
    for item in sys_items:
        by_source.setdefault(item["source"], []).append(item["temperature"])
    want = sorted(np.mean(v[i:i + 5]) for v in by_source.values()
                  for i in range(0, len(v) - 4, 5))
    assert np.allclose(sorted(o["temperature_average"] for o in outs), want)
    assert BlockWindowAverage(["a"], 3)({"a": None}) == []  # nothing closed: empty
    with pytest.raises(ValueError):
        BlockWindowAverage(["a"], 0)


def test_kalman_filter_hand_worked_sequence_and_per_sensor_state():
    q, r, p0 = Fraction(1, 8), Fraction(8, 25), Fraction(30)
    zs = [1440, 660, 300, 1020]
    # step 1 by hand: P = 30.125, K = 30.125 / 30.445, x = 1440 K, P = (1 - K) 30.125
    assert Fraction(30125, 30445) * 1440 == pytest.approx(1424.86451)
    x, p, want = Fraction(0), p0, []
    for z in zs:
        p = p + q
        k = p / (p + r)
        x = x + k * (z - x)
        p = (1 - k) * p
        want.append(float(x))
    task = KalmanFilter(["t"], process_noise=0.125, sensor_noise=0.32, estimated_error=30)
    got = [task({"t": float(z), "other": "kept"})[0] for z in zs]
    assert [g["t"] for g in got] == pytest.approx(want, rel=1e-14)
    assert got[0]["other"] == "kept" and got[0]["t"] == pytest.approx(1424.86451, rel=1e-8)
    keyed = KalmanFilter(["t"], 0.125, 0.32, 30, key_field="s")
    mixed = [keyed({"s": s, "t": float(z)})[0]["t"] for z in zs for s in ("a", "b")]
    assert mixed[0::2] == pytest.approx(want) and mixed[1::2] == pytest.approx(want)
    assert keyed({"s": "a", "t": None}) == [{"s": "a", "t": None}]
    with pytest.raises(ValueError):
        KalmanFilter(["t"], process_noise=0, sensor_noise=0)


def test_sliding_linear_regression_against_scipy_linregress(taxi, sys_items):
    task = SimpleLinearRegression(["trip_time_in_secs"], train_window=10, predict_horizon=10)
    ys = [t["trip_time_in_secs"] for t in taxi[:120]]
    outs = [task(t) for t in taxi[:120]]
    assert all(o == [] for o in outs[:10]) and all(len(o) == 1 for o in outs[10:])
    for n in range(11, 121):
        out = outs[n - 1][0]
        xs = np.arange(n - 9, n + 1)
        fit = stats.linregress(xs, ys[n - 10:n])
        want = fit.intercept + fit.slope * np.arange(n + 1, n + 11)
        got = [float(v) for v in out["trip_time_in_secs_predictions"].split("#")]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-6)
        assert out["trip_time_in_secs_prediction"] == pytest.approx(want.mean(), abs=1e-6)
        assert out["trip_time_in_secs_actual"] == ys[n - 1]
    # per sensor (RIoTBench's bolt keys by SENSORID + OBSTYPE): SYS sources repeat
    keyed = SimpleLinearRegression(["humidity"], 4, 2, key_field="source")
    outs = run(keyed, sys_items)
    counts: dict = {}
    for item in sys_items:
        counts[item["source"]] = counts.get(item["source"], 0) + 1
    assert len(outs) == sum(max(0, c - 4) for c in counts.values())
    with pytest.raises(ValueError):
        SimpleLinearRegression(["a"], train_window=1)


def test_fit_sample_through_the_stats_tasks():
    props = props_of("FIT")
    items = _parsed("FIT_sample_data_senml.csv")
    assert len(items) == 45 and items[0]["subjectId"] == "subject8"
    range_filter = configure("RangeFilter", props, "FIT")
    for item, out in zip(items, run(range_filter, items)):
        for field, (lo, hi) in range_filter.ranges.items():
            inside = np.float32(lo) <= np.float32(item[field]) <= np.float32(hi)
            assert (out[field] is not None) == inside
    kalman = configure("KalmanFilter", props, "FIT")
    assert kalman.key_field == "subjectId" and len(kalman.fields) == 11
    outs = run(kalman, items)
    for field in kalman.fields:
        x, p = 0.0, 30.0
        for item, out in zip(items, outs):
            p += 0.125
            k = p / (p + 0.32)
            x += k * (item[field] - x)
            p *= 1 - k
            assert out[field] == pytest.approx(x, rel=1e-12, abs=1e-12)
    average = configure("BlockWindowAverage", props, "FIT")
    outs = run(average, items)
    assert len(outs) == 4
    ecg = np.array([i["ecg_lead_1"] for i in items[:40]]).reshape(4, 10).mean(axis=1)
    assert [o["ecg_lead_1_average"] for o in outs] == pytest.approx(ecg)
    # back to SenML with FIT's string base time
    to_senml = CsvToSenML.from_schema_text((DATA / "mhealth_schema.csv").read_text(),
                                           string_bt=True)
    for line, item in zip(_lines("FIT_sample_data_senml.csv"), items):
        record = json.loads(to_senml(item)[0]["senml"])
        assert record["bt"] == line.split(",", 1)[0]
        assert senml.parse_line(f"{record['bt']},{json.dumps(record)}") == senml.parse_line(line)


def _surprise_reference(values, max_size):
    """RIoTBench's formula from scratch: sum over max_size slots of n (2 f - 1) / distinct."""
    freq: dict = {}
    out = []
    for n, v in enumerate(values, 1):
        freq[v] = freq.get(v, 0) + 1
        slots = list(freq.values()) + [0] * (max_size - len(freq))
        out.append(sum(n * (2 * f - 1) for f in slots) / len(freq))
    return out


def test_second_order_moment_is_riotbenchs_surprise_number(taxi):
    values = [t["fare_amount"] for t in taxi[:300]]
    task = SecondOrderMoment(["fare_amount"], max_map_size=1000)
    got = [o["fare_amount_moment"] for o in run(task, taxi[:300])]
    assert got == pytest.approx(_surprise_reference(values, 1000), rel=1e-12)
    assert got[0] == (2 * 1 - 1000) / 1  # RIoTBench's empty slots make it negative
    # full map: a random slot is replaced; the sketch stays consistent
    small = SecondOrderMoment(["fare_amount"], max_map_size=5, seed=42)
    for item in taxi[:300]:
        value = small(item)[0]["fare_amount_moment"]
        (sketch,) = small.sketches.values()
        assert len(sketch["items"]) <= 5 and sketch["total"] == sum(sketch["freq"])
        assert value == sketch["n"] * (2 * sketch["total"] - 5) / len(sketch["items"])
    assert len(sketch["items"]) == 5 and sketch["total"] < 300


def _loglog_reference(values, k):
    digests = b"".join(hashlib.sha1(v.encode()).digest()[:4] for v in values)
    x = np.frombuffer(digests, dtype="<i4").astype(np.int64)
    j = x & ((1 << k) - 1)
    y = x >> k
    lowest = y & -y
    rank = np.where(y == 0, 31, np.log2(np.where(lowest == 0, 1, lowest)).astype(np.int64))
    maxima = np.zeros(1 << k, dtype=np.int64)
    out = []
    for b, r in zip(j, rank):
        maxima[b] = max(maxima[b], r)
        out.append(int(0.79402 * (1 << k) * 2.0 ** (maxima.sum() / (1 << k))))
    return out


def test_distinct_approx_count_is_riotbenchs_loglog(taxi):
    task = configure("DistinctApproxCount", props_of("TAXI"), "TAXI")
    ids = [t["taxi_identifier"] for t in taxi]
    got = [o["taxi_identifier_distinctCount"] for o in run(task, taxi)]
    assert got == _loglog_reference(ids, 10)
    many = DistinctApproxCount("k", buckets_log2=10)
    keys = [f"key-{i}" for i in range(30_000)]
    last = run(many, [{"k": key} for key in keys] + [{"k": keys[0]}])[-1]["k_distinctCount"]
    assert last == _loglog_reference(keys, 10)[-1]
    assert abs(last / 30_000 - 1) < 0.15  # LogLog's error is about 1.3 / sqrt(m) = 4%
    assert many({"other": 1}) == []
    with pytest.raises(ValueError):
        DistinctApproxCount("k", buckets_log2=40)


def test_accumulator_windows_and_plot_series():
    acc = Accumulator(window=3, key_field="s")
    records = [{"_id": 1, "s": "a", "timestamp": 30.0, "avg": 1.0},
               {"_id": 2, "s": "a", "timestamp": 10.0, "avg": 2.0, "p_predictions": "5#6"},
               {"_id": 3, "s": "b", "timestamp": 20.0, "avg": 3.0, "label": "x"}]
    assert acc(records[0]) == [] and acc(records[1]) == []
    out = acc(records[2])
    assert [(o["sensor"], o["obs_type"], o["timestamps"], o["values"]) for o in out] == [
        ("a", "avg", "10#30", "2#1"), ("a", "p_predictions", "10#10", "5#6"),
        ("b", "avg", "20", "3")]
    assert all(o["_id"] == 3 and o["window"] == 1.0 for o in out)
    assert acc.series == {} and acc.count == 0
    plot = Plot()
    series = run(plot, out)
    assert series[0]["x"] == "0#20" and series[0]["y"] == "2#1"
    assert [p["obs_type"] for p in plot.points()] == ["avg", "p_predictions", "avg"]
    assert plot({"window": 2.0, "timestamps": "1", "values": "x"}) == []


# ============================================================================== TRAIN

def test_percentile_is_commons_math_legacy_and_labels_follow_riotbench(taxi):
    rng = np.random.default_rng(5)
    for n in (2, 3, 11, 300):
        values = sorted(rng.normal(size=n).tolist())
        for p in (25, 50, 75, 100):
            assert percentile(values, p) == pytest.approx(
                np.percentile(values, p, method="weibull"), rel=1e-12)
    assert percentile([4.0], 50) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)
    # hand-worked: 1..8 -> Q25 = 2.25, Q50 = 4.5, Q75 = 6.75, Q100 = 8
    label = AnnotateDTClass.labeller(range(1, 9))
    assert [label(v) for v in range(1, 9)] == ["BAD"] * 4 + ["GOOD"] * 2 + ["VERYGOOD"] + [
        "EXCELLENT"]
    # equal quantiles: the later label overwrites the earlier one (a Java TreeMap)
    # ([1, 1, 1, 1, 1, 5]: Q25 = Q50 = 1 -> GOOD, Q75 = 2, Q100 = 5; nothing is BAD)
    label = AnnotateDTClass.labeller([1, 1, 1, 1, 1, 5])
    assert [label(v) for v in (0.5, 1, 3, 5)] == ["GOOD", "GOOD", "VERYGOOD", "EXCELLENT"]
    task = AnnotateDTClass("total_amount", batch_size=300)
    outs = run(task, taxi)
    assert len(outs) == 900 and len(task.batch) == 100
    for start in (0, 300, 600):
        batch = outs[start:start + 300]
        v = np.array([o["total_amount"] for o in batch])
        q = np.percentile(v, [25, 50, 75, 100], method="weibull")
        want = np.where(v < q[1], "BAD", np.where(v < q[2], "GOOD",
                                                  np.where(v < q[3], "VERYGOOD", "EXCELLENT")))
        assert [o["classified_class"] for o in batch] == want.tolist()
    assert task({"total_amount": None}) == [] and task.skipped == 1


def test_decision_tree_entropy_agrees_with_scikit_learn(taxi):
    from sklearn.tree import DecisionTreeClassifier

    features = TRAIN_COLUMNS["TAXI"]
    labelled = run(AnnotateDTClass("total_amount", batch_size=len(taxi)), taxi)
    x = np.array([[o[f] for f in features] for o in labelled])
    y = np.array([o["classified_class"] for o in labelled])
    train, test = slice(0, 700), slice(700, None)
    for depth in (1, 2, 3, 5, None):
        model = train_tree(x[train].tolist(), y[train].tolist(), features, "entropy",
                           max_depth=depth)
        ref = DecisionTreeClassifier(criterion="entropy", max_depth=depth, random_state=0)
        ref.fit(x[train], y[train])
        assert model["tree"]["feature"] == features[ref.tree_.feature[0]]
        assert model["tree"]["threshold"] == pytest.approx(ref.tree_.threshold[0], rel=1e-6)

        def accuracy(rows, labels, model=model):
            return np.mean([classify(model, dict(zip(features, r))) == c
                            for r, c in zip(rows, labels)])
        assert accuracy(x[train], y[train]) == pytest.approx(ref.score(x[train], y[train]))
        assert abs(accuracy(x[test], y[test]) - ref.score(x[test], y[test])) <= 0.02


def test_decision_tree_gain_ratio_hand_worked_c45_example():
    # 4 A / 4 B.  u splits 4|4: (3A 1B | 1A 3B), gain 1 - H(1/4) = 0.1887, ratio 0.1887.
    # v splits 1|7: (1A | 3A 4B), gain 1 - 7/8 H(3/7) = 0.1379, split info H(1/8) =
    # 0.5436, ratio 0.2537.  w splits 3|5: (2A 1B | 2A 3B), gain 0.0488.  Average gain
    # 0.1251: u and v qualify; entropy takes u, C4.5's gain ratio takes v.
    rows = [(0, 0, 0), (0, 1, 0), (0, 1, 1), (0, 1, 0), (1, 1, 1), (1, 1, 1), (1, 1, 1),
            (1, 1, 1)]
    labels = ["A", "A", "A", "B", "A", "B", "B", "B"]

    def h(*counts):
        n = sum(counts)
        return -sum(c / n * math.log2(c / n) for c in counts if c)
    assert 1 - h(3, 1) == pytest.approx(0.18872, abs=1e-5)
    assert (1 - 7 / 8 * h(3, 4)) / h(1, 7) == pytest.approx(0.25374, abs=1e-5)
    gain_ratio = train_tree(rows, labels, ["u", "v", "w"], "gain_ratio")
    entropy = train_tree(rows, labels, ["u", "v", "w"], "entropy")
    assert (gain_ratio["tree"]["feature"], gain_ratio["tree"]["threshold"]) == ("v", 0.5)
    assert (entropy["tree"]["feature"], entropy["tree"]["threshold"]) == ("u", 0.5)
    assert gain_ratio["tree"]["le"] == {"leaf": "A", "counts": {"A": 1}}
    assert classify(gain_ratio, {"u": 0, "v": 0, "w": 0}) == "A"
    assert classify(gain_ratio, {"u": 0}) is None  # a feature missing
    constant = train_tree([(1, 0), (1, 1)], ["A", "B"], ["c", "x"], min_samples_leaf=1)
    assert constant["tree"]["feature"] == "x"  # a constant column is never split on
    leaf = train_tree([(1,), (1,)], ["A", "B"], ["u"])  # no split possible
    assert leaf["tree"] == {"leaf": "A", "counts": {"A": 1, "B": 1}}
    with pytest.raises(ValueError):
        train_tree([], [], ["u"])


def test_decision_tree_train_batches_and_notifies(taxi):
    labelled = run(AnnotateDTClass("total_amount", batch_size=300), taxi)
    task = configure("DecisionTreeTrain", props_of("TAXI"), "TAXI")
    outs = run(task, labelled)
    assert len(outs) == 3 and task.version == 3
    note = outs[-1]
    assert note["analytic_type"] == "DTC" and note["rows"] == 300.0
    model = json.loads(note["model"])
    assert model == task.model and model["target"] == "classified_class"
    last = labelled[600:900]
    right = sum(classify(model, o) == o["classified_class"] for o in last)
    assert right / 300 > 0.9
    assert task({"trip_time_in_secs": 1.0}) == [] and task.skipped == 1


def test_multilinear_regression_against_numpy_lstsq(taxi):
    task = configure("MultiLinearRegressionTrain", props_of("TAXI"), "TAXI")
    outs = run(task, taxi)
    assert [o["model_version"] for o in outs] == [1.0, 2.0, 3.0]
    for o, start in zip(outs, (0, 300, 600)):
        model = json.loads(o["model"])
        batch = taxi[start:start + 300]
        a = np.array([[t["trip_time_in_secs"], t["trip_distance"], 1.0] for t in batch])
        b = np.array([t["fare_amount"] for t in batch])
        ref = np.linalg.lstsq(a, b, rcond=None)[0]
        assert model["weights"] + [model["intercept"]] == pytest.approx(ref, rel=1e-9)
        assert model["dropped"] == []
    # singular: a constant column and a copy of another: still least squares
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    a = np.column_stack([x[:, 0], np.full(50, 3.0), x[:, 1], 2 * x[:, 0]])
    b = 1.5 * x[:, 0] - 2 * x[:, 1] + 0.1 * rng.normal(size=50)
    weights, intercept, dropped = fit_ols(a.tolist(), b.tolist())
    assert dropped == [1, 3]
    ref = np.linalg.lstsq(np.column_stack([a, np.ones(50)]), b, rcond=None)[0]
    fitted = a @ np.array(weights) + intercept
    assert fitted == pytest.approx(np.column_stack([a, np.ones(50)]) @ ref, rel=1e-9)
    assert fit_ols([[1.0, 2.0]], [5.0]) == ([0.0, 0.0], 5.0, [0, 1])  # one row
    with pytest.raises(ValueError):
        fit_ols([], [])


# =============================================================================== PRED

def test_predictors_take_model_updates_from_train_and_residuals(taxi):
    train = MultiLinearRegressionTrain(TRAIN_COLUMNS["TAXI"][:2], "fare_amount", 100)
    notes = run(train, taxi[:200])
    predict = MultiLinearRegressionPredict()
    assert predict(taxi[0]) == [] and predict.skipped == 1  # no model yet
    assert predict(notes[0]) == [] and predict.updates == 1  # a notification updates
    (out,) = predict(taxi[300])
    model = json.loads(notes[0]["model"])
    t = taxi[300]
    want = model["intercept"] + model["weights"][0] * t["trip_time_in_secs"] + \
        model["weights"][1] * t["trip_distance"]
    assert out == {"_id": 300, "predict": pytest.approx(want), "actual": t["fare_amount"]}
    assert predict({**notes[1], "model": "{broken"}) == [] and predict.bad_updates == 1
    assert predict.model == json.loads(notes[0]["model"])  # a broken update keeps the model
    predict.update_model(notes[1]["model"])
    assert predict.model == json.loads(notes[1]["model"]) and predict.updates == 2
    labelled = run(AnnotateDTClass("total_amount", 100), taxi[:100])
    dtc_note = run(DecisionTreeTrain(TRAIN_COLUMNS["TAXI"], batch_size=100), labelled)[0]
    classify_task = DecisionTreeClassify()
    assert classify_task(taxi[5]) == []
    classify_task(dtc_note)
    assert classify_task(taxi[5]) == [{"_id": 5, "classified_class":
                                       classify(json.loads(dtc_note["model"]), taxi[5])}]
    assert classify_task({"fare_amount": 3.0}) == []  # features missing
    residual = ResidualError("fare_amount_average")
    assert residual({"fare_amount_average": 0.0}) == []
    (r,) = residual({"_id": 1, "predict": 10.0, "actual": 12.5})
    assert r["residual"] == 2.5 and r["error"] is None  # no nonzero average yet
    residual({"fare_amount_average": 5.0})
    assert residual({"predict": 10.0, "actual": 12.5})[0]["error"] == 0.5
    with pytest.raises(ValueError):
        MultiLinearRegressionPredict(model={"no": "type"})


# ===================================================================== snapshots

PROGRAM = """
import json
from runtime.riot.task import make
CONFIG = json.loads({config!r})
TASK = make(CONFIG["name"], **CONFIG["kwargs"])
if "model_hex" in CONFIG:
    TASK.update_model(bytes.fromhex(CONFIG["model_hex"]))
def on_item(topic, item):
    if item == "state?":
        things.publish("out", {{"state": repr(sorted(vars(TASK).items()))}})
        return
    for out in TASK(item):
        things.publish("out", out)
things.subscribe("in", on_item)
"""


def _run_program(config: dict, items: list, snapshot_at: int | None) -> tuple[list, int]:
    outputs: list = []

    def publish(topic: str, data: bytes) -> None:
        outputs.append(json.loads(data))
    clock = VirtualClock()
    host = ProgramHost(PROGRAM.format(config=json.dumps(config)), clock=clock,
                       code_name="riot", publish=publish)
    host.start()
    clock.run()
    before = 0
    for i, item in enumerate(items + ["state?"]):
        if i == snapshot_at:
            before = len(outputs)
            data = dumps(host.snapshot())
            assert f'"riot.{config["name"]}"'.encode() in data
            clock = VirtualClock()
            host = ProgramHost.restore(loads(data), clock=clock, publish=publish)
        host.deliver("in", json.dumps(item).encode())
        clock.run()
    assert host.error is None, host.error
    return outputs, before


def _snapshot_cases() -> list:
    taxi = _parsed("TAXI_sample_data_senml.csv")[:60]
    lines = _lines("TAXI_sample_data_senml.csv")[:60]
    numbers = {f: [t[f] for t in taxi] for f in TAXI_NUMBERS}
    holes = [{**t, "trip_distance": None} if i % 4 == 3 else t for i, t in enumerate(taxi)]
    ranges = props_of("TAXI")["FILTER.RANGE_FILTER.VALID_RANGE"]
    bloom = BloomFilterTrain("taxi_identifier", 40, 0.01)
    run(bloom, taxi[:30])
    split = SenMLParse(split=True, meta_fields=["timestamp", "pickup_datetime"],
                       id_field="taxi_identifier")
    tuples = [t for i, line in enumerate(lines[:8]) for t in split({"payload": line, "_id": i})]
    stats_records = run(SimpleLinearRegression(["fare_amount", "tip_amount"], 4, 3), taxi)
    accumulated = run(Accumulator(window=4), stats_records)
    labelled = run(AnnotateDTClass("total_amount", 20), taxi)
    mlr_notes = run(MultiLinearRegressionTrain(["trip_time_in_secs", "trip_distance"],
                                               "fare_amount", 20), taxi)
    dtc_notes = run(DecisionTreeTrain(TRAIN_COLUMNS["TAXI"], batch_size=20), labelled)
    predicted = run(MultiLinearRegressionPredict(mlr_notes[0]["model"]), taxi)
    averages = run(BlockWindowAverage(["fare_amount"], 5), taxi)
    residual_stream = [r for pair in zip(predicted, averages * 12) for r in pair]
    assert numbers["fare_amount"] and len(dtc_notes) == 3
    table = {t["taxi_identifier"]: "co,dr,city" for t in taxi[::3]}
    schema = _lines("taxi-schema_with_annotation.csv")
    return [
        ("SenMLParse", {}, [{"payload": line, "_id": i} for i, line in enumerate(lines)], 30),
        ("SenMLParse", {"split": True, "meta_fields": ["timestamp"]},
         [{"payload": line} for line in lines[:10]], 5),
        ("RangeFilter", {"ranges": ranges}, taxi, 30),
        ("BloomFilterTrain", {"field": "taxi_identifier", "expected_insertions": 40,
                              "false_positive_ratio": 0.01}, taxi, 30),
        ("BloomFilterCheck", {"field": "taxi_identifier", "model_hex": bloom.model().hex()},
         taxi, 30),
        ("Interpolation", {"fields": ["trip_distance"], "window": 3}, holes, 30),
        ("Join", {"schema": ["timestamp", "pickup_datetime", "taxi_identifier", "fare_amount"],
                  "max_count": 17}, tuples, len(tuples) // 2 + 3),
        ("Annotate", {"key_field": "taxi_identifier", "names": ["a", "b", "c"],
                      "table": table}, taxi, 30),
        ("CsvToSenML", {"names": schema[0].split(","), "units": schema[1].split(","),
                        "kinds": schema[2].split(",")}, taxi, 30),
        ("BlockWindowAverage", {"fields": TAXI_NUMBERS, "window": 7}, taxi, 25),
        ("KalmanFilter", {"fields": TAXI_NUMBERS, "process_noise": 0.125,
                          "sensor_noise": 0.32, "estimated_error": 30}, taxi, 30),
        ("SimpleLinearRegression", {"fields": ["fare_amount"], "train_window": 5,
                                    "predict_horizon": 3}, taxi, 30),
        ("SecondOrderMoment", {"fields": ["fare_amount", "mta_tax"], "max_map_size": 5,
                               "seed": 9}, taxi, 30),
        ("DistinctApproxCount", {"field": "taxi_identifier", "buckets_log2": 6}, taxi, 30),
        ("Accumulator", {"window": 4}, stats_records, 22),
        ("Plot", {}, accumulated, len(accumulated) // 2),
        ("AnnotateDTClass", {"field": "total_amount", "batch_size": 20}, taxi, 30),
        ("DecisionTreeTrain", {"features": TRAIN_COLUMNS["TAXI"], "batch_size": 20},
         labelled, 30),
        ("MultiLinearRegressionTrain", {"features": ["trip_time_in_secs", "trip_distance"],
                                        "target": "fare_amount", "batch_size": 20}, taxi, 30),
        ("DecisionTreeClassify", {"model": dtc_notes[0]["model"]},
         taxi[:25] + [dtc_notes[1]] + taxi[25:], 20),
        ("MultiLinearRegressionPredict", {"model": mlr_notes[0]["model"]},
         taxi[:25] + [mlr_notes[1]] + taxi[25:], 30),
        ("ResidualError", {"average_field": "fare_amount_average"}, residual_stream, 31),
    ]


def test_every_task_survives_a_snapshot_mid_window():
    cases = _snapshot_cases()
    assert {c[0] for c in cases} == set(TASKS)
    for name, kwargs, items, split in cases:
        config = {"name": name, "kwargs": kwargs}
        if "model_hex" in kwargs:
            config["model_hex"] = kwargs.pop("model_hex")
        plain, _ = _run_program(config, items, None)
        moved, before = _run_program(config, items, split)
        assert moved == plain, name
        assert plain[-1]["state"] == moved[-1]["state"], name
        assert 0 < split < len(items), name
        if name not in ("BloomFilterTrain",):
            assert len(plain) > 1, name
