"""Every task of RIoTBench's ETL, STATS, TRAIN and PRED dataflows (standard library only).

Each class follows one RIoTBench task (``dream-lab/riot-bench``,
``modules/tasks/.../tasks/<package>/<Class>.java``) and the Storm bolt that drives it in
the dataflow's topology; its docstring names both and says where this code departs from
RIoTBench or from ThingsJS's port (``thingsjs.md`` section 7).  Conventions:

* Items are flat dicts: numbers ``float``, strings ``str``, ``None`` for a null value
  (RIoTBench's ``"null"`` string).  Fields whose name starts with ``_`` are the
  **envelope** the program layer adds (``_id`` message id, ``_ts`` source stamp...): every
  task copies the envelope of the item it is handling into what it outputs, so a window's
  output carries the envelope of the message that closed it.
* RIoTBench keeps one filter/window per *sensor and field* (its bolts key their task maps
  by ``SENSORID + OBSTYPE``, the sensor id being ``PARSE.ID_FIELD_SCHEMA``: the taxi, the
  SYS ``source``, the FIT ``subjectId``).  Tasks with a ``key_field`` do the same;
  ``key_field=None`` gives one state per field (ThingsJS's port).
* RIoTBench's ETL splits each message into one tuple per observed field and joins them
  back (:class:`SenMLParse` with ``split=True``, :class:`Join`).  A split tuple is a flat
  dict holding the meta fields, one observed field and the sensor id under ``_sensor``;
  the per-field tasks work the same on split tuples and on whole messages.
* A task never raises on bad data in the stream: it drops or passes the item and counts
  it (``errors``, ``skipped``), so one bad line does not crash a running dataflow.  Bad
  configuration raises ``ValueError`` at construction.

``from_properties(props, dataset, read=None, **overrides)`` builds a task from a
RIoTBench properties dict (``thingssim.riot.datasets.load_properties`` reads the
``tasks_*.properties`` files); ``read(path) -> bytes`` loads the files a property names
(schemas, metadata, models), since tasks never touch files themselves.
:func:`configure` does it by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from . import senml
from .task import TASKS, Task, task

__all__ = [
    "Accumulator", "Annotate", "AnnotateDTClass", "BlockWindowAverage", "BloomFilterCheck",
    "BloomFilterTrain", "CsvToSenML", "DecisionTreeClassify", "DecisionTreeTrain",
    "DistinctApproxCount", "Interpolation", "Join", "KalmanFilter",
    "MultiLinearRegressionPredict", "MultiLinearRegressionTrain", "Plot", "RangeFilter",
    "ResidualError", "SecondOrderMoment", "SenMLParse", "SimpleLinearRegression",
    "TRAIN_COLUMNS", "bloom_size", "classify", "configure", "fit_ols", "murmur3_x64_128",
    "percentile", "predict_ols", "train_tree",
]

#: the sensor id in a split tuple (an envelope field, so every task carries it along)
SENSOR = "_sensor"

#: the columns RIoTBench's TRAIN dataflow reads per dataset, the label/target last
#: (``storm/bolts/TRAIN/<DATASET>/AzureTableRangeQueryBolt.java``)
TRAIN_COLUMNS: dict[str, list[str]] = {
    "TAXI": ["trip_time_in_secs", "trip_distance", "fare_amount"],
    "SYS": ["temperature", "humidity", "light", "dust", "airquality_raw"],
    "FIT": ["acc_ankle_x", "acc_ankle_y", "acc_ankle_z", "acc_arm_x", "acc_arm_y",
            "acc_arm_z", "acc_chest_x", "acc_chest_y", "acc_chest_z", "ecg_lead_1"],
}

Item = dict[str, Any]
Reader = Callable[[str], bytes]


# --------------------------------------------------------------------------- helpers

def _envelope(item: Mapping[str, Any]) -> Item:
    return {k: v for k, v in item.items() if k.startswith("_")}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    """A value as RIoTBench's string tuples spell it: integral numbers without ``.0``."""
    if isinstance(value, str):
        return value
    if _is_number(value):
        value = float(value)
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def _f32(value: float) -> float:
    """``value`` rounded to a Java ``float`` (RIoTBench parses numbers with parseFloat)."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _sensor(item: Mapping[str, Any], key_field: str | None) -> str | None:
    if key_field is None:
        return ""
    value = item.get(key_field)
    if value is None:
        value = item.get(SENSOR)
    return None if value is None else _text(value)


def _key(sensor: str, field: str) -> str:
    return f"{sensor}\x00{field}"


def _record(item: Mapping[str, Any], key_field: str | None, values: Item) -> Item:
    """An output record: envelope, sensor id and ``timestamp`` of ``item``, then ``values``."""
    out = _envelope(item)
    if key_field is not None and item.get(key_field) is not None:
        out[key_field] = item[key_field]
    if "timestamp" in item:
        out["timestamp"] = item["timestamp"]
    out.update(values)
    return out


def _join_numbers(values: Iterable[float]) -> str:
    return "#".join(_text(v) for v in values)


def _split_numbers(text: str) -> list[float] | None:
    try:
        return [float(part) for part in text.split("#") if part != ""]
    except ValueError:
        return None


def _fields(fields: Iterable[str] | str) -> list[str]:
    if isinstance(fields, str):
        fields = fields.split(",")
    out = [f.strip() for f in fields if f and f.strip()]
    if not out:
        raise ValueError("no field names given")
    return out


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{what} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, not {value!r}")
    return int(value)


# ------------------------------------------------------------------ properties

def _prop(props: Mapping[str, str], key: str, default: str | None = None) -> str | None:
    value = props.get(key)
    return default if value is None else str(value).strip()


def _int_prop(props: Mapping[str, str], key: str, default: int) -> int:
    value = _prop(props, key)
    if value is None or value == "":
        return default
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"property {key}: not an integer: {value!r}") from None


def _float_prop(props: Mapping[str, str], key: str, default: float) -> float:
    value = _prop(props, key)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"property {key}: not a number: {value!r}") from None


def _field_list(props: Mapping[str, str], *keys: str) -> list[str] | None:
    """The first of ``keys`` that holds a list of field names (not a number like ``0``)."""
    for key in keys:
        value = _prop(props, key)
        if not value:
            continue
        names = [v.strip() for v in value.split(",") if v.strip()]
        if names and not all(_looks_numeric(n) for n in names):
            return names
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_text(props: Mapping[str, str], key: str, read: Reader | None) -> str:
    path = _prop(props, key)
    if not path:
        raise ValueError(f"property {key} is not set")
    if read is None:
        raise ValueError(f"property {key} names a file ({path}); pass read= to load it")
    return read(path).decode("utf-8")


def _schema_rows(text: str) -> list[list[str]]:
    return [line.rstrip("\r\n").split(",") for line in text.splitlines() if line.strip()]


def _dataset(name: str) -> str:
    key = name.upper()
    key = "SYS" if key == "CITY" else key
    if key not in TRAIN_COLUMNS:
        raise ValueError(f"unknown dataset {name!r}: TAXI, SYS (CITY) or FIT")
    return key


def _id_field(props: Mapping[str, str]) -> str | None:
    return _prop(props, "PARSE.ID_FIELD_SCHEMA") or None


def _stat_fields(props: Mapping[str, str]) -> list[str] | None:
    return _field_list(
        props, "STATISTICS.KALMAN_FILTER.USE_MSG_FIELDLIST",
        "STATISTICS.KALMAN_FILTER.USE_MSG_FIELD_LIST", "AGGREGATE.BLOCK_AVERAGE.USE_MSG_FIELD",
        "STATISTICS.INTERPOLATION.USE_MSG_FIELD_LIST", "STATISTICS.INTERPOLATION.USE_MSG_FIELD")


def configure(name: str, props: Mapping[str, str], dataset: str, read: Reader | None = None,
              **overrides: Any) -> Task:
    """The task called ``name`` built from RIoTBench properties (see each ``from_properties``)."""
    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"unknown RIoTBench task {name!r}; known: {', '.join(sorted(TASKS))}")
    return cls.from_properties(props, dataset, read, **overrides)  # type: ignore[attr-defined]


class _Configurable(Task):
    """Tasks that RIoTBench's properties configure."""

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {}

    @classmethod
    def from_properties(cls, props: Mapping[str, str], dataset: str, read: Reader | None = None,
                        **overrides: Any) -> Task:
        """Built from a RIoTBench properties dict; ``overrides`` replace any argument."""
        kwargs = cls._from_props(props, _dataset(dataset), read)
        kwargs.update(overrides)
        return cls(**kwargs)


# ====================================================================== ETL / parse

@task
class SenMLParse(_Configurable):
    """RIoTBench ``parse.SenMLParse`` (+ ``SenMLParseBolt``): a SenML line to a flat tuple.

    Reads the line from ``item[payload_field]``; the tuple gets ``timestamp`` (the base
    time, as RIoTBench's map has it) and every ``e`` entry (``v`` as float, ``sv`` as
    str).  With ``split=True`` it emits RIoTBench's ETL form: one tuple per observed field
    (a field not in ``meta_fields``), carrying the meta fields and the sensor id
    (``_sensor``) so :class:`Join` can put the message back together.  A line that does not
    parse is dropped and counted in ``errors`` (RIoTBench prints the stack trace and its
    bolt re-emits the previous message).
    """

    name: ClassVar[str] = "SenMLParse"

    def __init__(self, payload_field: str = "payload", split: bool = False,
                 meta_fields: Sequence[str] = (), id_field: str | None = None) -> None:
        self.payload_field = payload_field
        self.split = bool(split)
        self.meta_fields = list(meta_fields)
        self.id_field = id_field
        self.errors = 0
        self.last_error = ""

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"meta_fields": _field_list(props, "PARSE.META_FIELD_SCHEMA") or [],
                "id_field": _id_field(props)}

    def __call__(self, item: Item) -> list[Item]:
        line = item.get(self.payload_field)
        try:
            if not isinstance(line, str):
                raise ValueError(f"no string field {self.payload_field!r} in the item")
            timestamp, fields = senml.parse_line(line)
        except ValueError as exc:
            self.errors += 1
            self.last_error = str(exc)
            return []
        env = _envelope(item)
        record: Item = {"timestamp": float(timestamp), **fields}
        if not self.split:
            return [{**env, **record}]
        meta = {m: record.get(m) for m in self.meta_fields}
        sensor = record.get(self.id_field) if self.id_field else None
        if sensor is not None:
            env[SENSOR] = sensor
        return [{**env, **meta, name: value}
                for name, value in record.items() if name not in meta]


@task
class RangeFilter(_Configurable):
    """RIoTBench ``filter.RangeFilterCheck`` (+ ``RangeFilterBolt``): values outside
    ``[min, max]`` (inclusive) become null.

    Follows RIoTBench over ThingsJS: the bolt replaces an out-of-range *value* by
    ``"null"`` and the message goes on (for :class:`Interpolation` to fill); ThingsJS's
    port drops the whole tuple.  Values and bounds compare as Java ``float`` s, as
    ``Float.parseFloat`` makes them.  Non-numeric values are left alone.
    """

    name: ClassVar[str] = "RangeFilter"

    def __init__(self, ranges: Mapping[str, Sequence[float]] | str) -> None:
        if isinstance(ranges, str):
            ranges = self.parse_ranges(ranges)
        self.ranges: dict[str, list[float]] = {}
        for field, bounds in ranges.items():
            lo, hi = (float(b) for b in bounds)
            self.ranges[field] = [_f32(lo), _f32(hi)]
        if not self.ranges:
            raise ValueError("RangeFilter needs at least one field range")
        self.nulled = 0

    @staticmethod
    def parse_ranges(text: str) -> dict[str, list[float]]:
        """``"field:min:max,field:min:max"`` (``FILTER.RANGE_FILTER.VALID_RANGE``)."""
        ranges: dict[str, list[float]] = {}
        for entry in text.split(","):
            entry = entry.strip()
            if not entry:
                continue
            parts = entry.split(":")
            if len(parts) != 3:
                raise ValueError(f"range entry {entry!r} is not field:min:max")
            try:
                ranges[parts[0].strip()] = [float(parts[1]), float(parts[2])]
            except ValueError:
                raise ValueError(f"range entry {entry!r}: bounds are not numbers") from None
        return ranges

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"ranges": _prop(props, "FILTER.RANGE_FILTER.VALID_RANGE", "")}

    def __call__(self, item: Item) -> list[Item]:
        out = dict(item)
        for field, (lo, hi) in self.ranges.items():
            value = out.get(field)
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    continue
            if not _is_number(value):
                continue
            x = _f32(value)
            if x < lo or x > hi:
                out[field] = None
                self.nulled += 1
        return [out]


# ----------------------------------------------------------------------- Bloom filter

_M64 = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_x64_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3_x64_128 (Appleby's reference, Guava's ``Hashing.murmur3_128(seed)``).

    Returns ``(h1, h2)`` as unsigned 64-bit ints; Guava's ``asBytes()`` is ``h1`` then
    ``h2``, each little-endian.
    """
    h1 = h2 = seed & 0xFFFFFFFF
    n = len(data)
    end = n - n % 16
    for i in range(0, end, 16):
        k1 = int.from_bytes(data[i:i + 8], "little")
        k2 = int.from_bytes(data[i + 8:i + 16], "little")
        h1 ^= (_rotl64((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 = (((_rotl64(h1, 27) + h2) & _M64) * 5 + 0x52DCE729) & _M64
        h2 ^= (_rotl64((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 = (((_rotl64(h2, 31) + h1) & _M64) * 5 + 0x38495AB5) & _M64
    tail = data[end:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl64((k2 * _C2) & _M64, 33) * _C1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl64((k1 * _C1) & _M64, 31) * _C2) & _M64
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix64(h1)
    h2 = _fmix64(h2)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    return h1, h2


def bloom_size(expected_insertions: int, fpp: float) -> tuple[int, int]:
    """``(bits, k)`` as Guava's ``BloomFilter.create(funnel, n, p)`` sizes a filter.

    ``m = (long)(-n ln p / (ln 2)^2)``, ``k = max(1, Math.round(m / n * ln 2))``, and the
    bit array holds ``ceil(m / 64)`` longs, so ``bits`` is ``m`` rounded up to a multiple
    of 64 (at least 64).  thingsjs.md 7.5's ceilings give the same ``k`` (7 for n=100,
    p=0.01) and ``m`` within a word.
    """
    if not 0.0 < fpp < 1.0:
        raise ValueError(f"false positive ratio must be in (0, 1), not {fpp!r}")
    n = max(1, int(expected_insertions))
    m = int(-n * math.log(fpp) / (math.log(2) ** 2))
    k = max(1, math.floor(m / n * math.log(2) + 0.5))
    words = max(1, -(-m // 64))
    return words * 64, k


def _bloom_indexes(value: str, k: int, bit_size: int) -> Iterable[int]:
    h1, h2 = murmur3_x64_128(value.encode("utf-8"))
    combined = h1
    for _ in range(k):
        yield (combined & 0x7FFFFFFFFFFFFFFF) % bit_size
        combined = (combined + h2) & _M64


def _to_guava(bits: bytearray, k: int) -> bytes:
    words = len(bits) // 8
    body = b"".join(bits[8 * i:8 * i + 8][::-1] for i in range(words))
    return struct.pack(">bBi", 1, k, words) + body


def _from_guava(data: bytes) -> tuple[bytearray, int]:
    if len(data) < 6:
        raise ValueError("Bloom filter model too short")
    strategy, k, words = struct.unpack(">bBi", data[:6])
    if strategy != 1:
        raise ValueError(f"Bloom filter strategy {strategy} is not MURMUR128_MITZ_64 (1)")
    if words <= 0 or len(data) != 6 + 8 * words:
        raise ValueError(f"Bloom filter model of {len(data)} bytes does not hold {words} longs")
    body = data[6:]
    bits = bytearray(b"".join(body[8 * i:8 * i + 8][::-1] for i in range(words)))
    return bits, k


class _Bloom(_Configurable):
    bits: bytearray
    num_hashes: int

    def _might_contain(self, value: str) -> bool:
        size = len(self.bits) * 8
        return all(self.bits[i >> 3] >> (i & 7) & 1
                   for i in _bloom_indexes(value, self.num_hashes, size))

    def model(self) -> bytes:
        """The filter in Guava's ``BloomFilter.writeTo`` form (RIoTBench's model files)."""
        return _to_guava(self.bits, self.num_hashes)

    def expected_fpp(self) -> float:
        """Guava's ``expectedFpp()``: (set bits / bits) ** k."""
        if not self.bits:
            return 0.0
        ones = sum(bin(b).count("1") for b in self.bits)
        return (ones / (len(self.bits) * 8)) ** self.num_hashes


@task
class BloomFilterTrain(_Bloom):
    """RIoTBench ``filter.BloomFilterTrain``: insert a field's values into a Bloom filter.

    Guava's filter exactly (``BloomFilter.create(funnel, n, p)`` with the
    ``MURMUR128_MITZ_64`` strategy): the value's UTF-8 bytes are hashed with
    :func:`murmur3_x64_128` (seed 0), ``h1``/``h2`` its two halves; bit ``i`` of ``k`` is
    ``((h1 + i*h2) mod 2^64 & (2^63-1)) mod bits``; sizes by :func:`bloom_size`.  Bit
    ``b`` lives in ``bits[b >> 3]`` at ``1 << (b & 7)`` (Guava's longs, little-endian),
    and :meth:`model` writes Guava's serialised form, so RIoTBench's model files and
    ours are interchangeable.  Numbers are hashed as :func:`_text` spells them.  Emits
    nothing (RIoTBench writes the model at teardown); read :meth:`model`.  Java's
    defaults: 20,000,000 insertions (a 24 MB filter), p = 0.1.
    """

    name: ClassVar[str] = "BloomFilterTrain"

    def __init__(self, field: str, expected_insertions: int = 20_000_000,
                 false_positive_ratio: float = 0.1) -> None:
        size, self.num_hashes = bloom_size(expected_insertions, false_positive_ratio)
        self.field = field
        self.bits = bytearray(size // 8)
        self.inserted = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"field": (_field_list(props, "FILTER.MULTI_BLOOM_FILTER.USE_MSG_FIELD_LIST")
                          or [_id_field(props)])[0],
                "expected_insertions": _int_prop(
                    props, "FILTER.BLOOM_FILTER_TRAIN.EXPECTED_INSERTIONS", 20_000_000),
                "false_positive_ratio": _float_prop(
                    props, "FILTER.BLOOM_FILTER_TRAIN.FALSEPOSITIVE_RATIO", 0.1)}

    def put(self, value: Any) -> None:
        size = len(self.bits) * 8
        for i in _bloom_indexes(_text(value), self.num_hashes, size):
            self.bits[i >> 3] |= 1 << (i & 7)
        self.inserted += 1

    def __call__(self, item: Item) -> list[Item]:
        value = item.get(self.field)
        if value is not None:
            self.put(value)
        return []


@task
class BloomFilterCheck(_Bloom):
    """RIoTBench ``filter.MultipleBloomFilterCheck`` (+ ETL ``BloomFilterCheckBolt``).

    A value of ``field`` that the filter has not seen becomes null (RIoTBench's bolt;
    ThingsJS drops the tuple).  ``model`` is a filter in Guava's serialised form
    (:meth:`BloomFilterTrain.model`, or a RIoTBench model file); :meth:`update_model`
    swaps it.  Without a model the check passes everything (RIoTBench cannot start
    without one).  ``active=False`` passes everything too: RIoTBench's bolt checks only
    when ``FILTER.BLOOM_FILTER_CHECK.USE_MSG_FIELD`` > 0, which none of its
    TAXI/SYS/FIT properties files sets, and :meth:`from_properties` keeps that.
    """

    name: ClassVar[str] = "BloomFilterCheck"

    def __init__(self, field: str, model: bytes | None = None, active: bool = True) -> None:
        self.field = field
        self.active = bool(active)
        self.bits = bytearray()
        self.num_hashes = 0
        self.rejected = 0
        if model is not None:
            self.update_model(model)

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "field": (_field_list(props, "FILTER.MULTI_BLOOM_FILTER.USE_MSG_FIELD_LIST")
                      or [_id_field(props)])[0],
            "active": _int_prop(props, "FILTER.BLOOM_FILTER_CHECK.USE_MSG_FIELD", 0) > 0}
        path = _prop(props, "FILTER.MULTI_BLOOM_FILTER.MODEL_PATH_LIST")
        if kwargs["active"] and path and read is not None:
            kwargs["model"] = read(path.split(",")[0].strip())
        return kwargs

    def update_model(self, model: bytes) -> None:
        self.bits, self.num_hashes = _from_guava(bytes(model))

    def __call__(self, item: Item) -> list[Item]:
        value = item.get(self.field)
        if not self.active or not self.bits or value is None:
            return [dict(item)]
        if self._might_contain(_text(value)):
            return [dict(item)]
        self.rejected += 1
        return [{**item, self.field: None}]


# ----------------------------------------------------------------------- interpolation

@task
class Interpolation(_Configurable):
    """RIoTBench ``statistics.Interpolation`` (+ ``InterpolationBolt``): fill nulls.

    Per sensor and field it keeps the last ``window`` values; a null (``None`` or NaN)
    becomes their mean and is not added to the window.  ``window=0`` passes everything
    through (RIoTBench: "no interpolation needed"), as does a tuple without a sensor id
    when ``key_field`` is set.  Departures: a null with no history stays null (RIoTBench
    falls through to ``return 0.0f`` and emits a made-up 0.0); an absent field stays
    absent (a split tuple holds one field).  :meth:`from_properties` reads
    ``STATISTICS.INTERPOLATION.USE_MSG_FIELD_LIST`` when present, as ThingsJS does:
    RIoTBench reads only ``USE_MSG_FIELD``, which the TAXI and FIT files set to ``0``, so
    its runs interpolate no field there.
    """

    name: ClassVar[str] = "Interpolation"

    def __init__(self, fields: Sequence[str] | str, window: int = 0,
                 key_field: str | None = None) -> None:
        self.fields = _fields(fields)
        self.window = _positive_int(window, "window", 0)
        self.key_field = key_field
        self.history: dict[str, list[float]] = {}
        self.filled = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"fields": _field_list(props, "STATISTICS.INTERPOLATION.USE_MSG_FIELD_LIST",
                                      "STATISTICS.INTERPOLATION.USE_MSG_FIELD") or ["-"],
                "window": _int_prop(props, "STATISTICS.INTERPOLATION.WINDOW_SIZE", 0),
                "key_field": _id_field(props)}

    def __call__(self, item: Item) -> list[Item]:
        if self.window == 0:
            return [dict(item)]
        sensor = _sensor(item, self.key_field)
        if sensor is None:
            return [dict(item)]
        out = dict(item)
        for field in self.fields:
            if field not in out:
                continue
            value = out[field]
            key = _key(sensor, field)
            if _is_missing(value):
                past = self.history.get(key)
                if past:
                    out[field] = sum(past) / len(past)
                    self.filled += 1
            elif _is_number(value):
                past = self.history.setdefault(key, [])
                if len(past) >= self.window:
                    del past[0]
                past.append(float(value))
        return [out]


# ------------------------------------------------------------------------------- join

@task
class Join(_Configurable):
    """RIoTBench ETL ``JoinBolt``: put a message split by field back together.

    Tuples are grouped by ``item[id_field]`` (RIoTBench's ``MSGID``); their non-envelope
    fields are merged, and when the merged message holds ``max_count`` fields
    (``JOIN.MAX_COUNT_VALUE``, default: the schema's length) it is emitted with the
    ``schema`` columns in order, an absent one as null (RIoTBench writes ``"null"``), and
    the first tuple's envelope.  RIoTBench's CITY file sets 5 where a SYS message has 9
    fields, so its join emits partial messages; that is reproduced, not fixed.
    """

    name: ClassVar[str] = "Join"

    def __init__(self, schema: Sequence[str] | str, max_count: int | None = None,
                 id_field: str = "_id") -> None:
        self.schema = _fields(schema)
        self.max_count = _positive_int(len(self.schema) if max_count is None else max_count,
                                       "max_count")
        self.id_field = id_field
        self.pending: dict[str, dict[str, Item]] = {}
        self.errors = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        rows = _schema_rows(_read_text(props, "JOIN.SCHEMA_FILE_PATH", read))
        return {"schema": rows[0],
                "max_count": _int_prop(props, "JOIN.MAX_COUNT_VALUE", len(rows[0]))}

    def __call__(self, item: Item) -> list[Item]:
        msg_id = item.get(self.id_field)
        if msg_id is None:
            self.errors += 1
            return []
        key = _text(msg_id)
        entry = self.pending.get(key)
        if entry is None:
            env = _envelope(item)
            env.pop(SENSOR, None)
            entry = self.pending[key] = {"env": env, "fields": {}}
        fields = entry["fields"]
        for name, value in item.items():
            if not name.startswith("_"):
                fields[name] = value
        if len(fields) < self.max_count:
            return []
        del self.pending[key]
        return [{**entry["env"], **{c: fields.get(c) for c in self.schema}}]


# --------------------------------------------------------------------------- annotate

@task
class Annotate(_Configurable):
    """RIoTBench ``annotate.Annotate`` (+ ``AnnotationBolt``): add static metadata.

    ``table`` maps an id to ``"a,b,c"`` (the lines ``<id>:<a>,<b>,<c>`` of
    ``ANNOTATE.ANNOTATE_FILE_PATH``, see :meth:`parse_table`); the values of
    ``item[key_field]`` found there add ``names`` (the annotated schema's extra columns:
    ``taxi_company, drivername, taxi_city`` for TAXI, ``location, type`` for SYS).  An id
    not in the table passes unannotated (``misses`` counts it); RIoTBench's task then
    leaves its previous result in place, so its bolt re-emits the previous message.  The
    table is task state, so it travels in snapshots (about 0.5 MB for TAXI).
    """

    name: ClassVar[str] = "Annotate"

    def __init__(self, key_field: str, names: Sequence[str] | str,
                 table: Mapping[str, str] | str) -> None:
        self.key_field = key_field
        self.names = _fields(names)
        self.table = self.parse_table(table) if isinstance(table, str) else dict(table)
        self.misses = 0

    @staticmethod
    def parse_table(text: str) -> dict[str, str]:
        table: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"annotation line {line!r} is not <id>:<values>")
            table[key] = value.rstrip("\r")
        return table

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        plain = _schema_rows(_read_text(props, "JOIN.SCHEMA_FILE_PATH", read))[0]
        full = _schema_rows(_read_text(
            props, "PARSE.CSV_SCHEMA_WITH_ANNOTATEDFIELDS_FILEPATH", read))[0]
        index = _int_prop(props, "ANNOTATE.ANNOTATE_MSG_USE_FIELD", 0)
        if not 0 <= index < len(plain):
            raise ValueError(f"ANNOTATE.ANNOTATE_MSG_USE_FIELD={index} is outside the schema")
        return {"key_field": plain[index], "names": [c for c in full if c not in plain],
                "table": _read_text(props, "ANNOTATE.ANNOTATE_FILE_PATH", read)}

    def __call__(self, item: Item) -> list[Item]:
        value = item.get(self.key_field)
        annotation = None if value is None else self.table.get(_text(value))
        if annotation is None:
            self.misses += 1
            return [dict(item)]
        out = dict(item)
        out.update(zip(self.names, annotation.split(",")))
        return [out]


# ------------------------------------------------------------------------ CSV to SenML

@task
class CsvToSenML(_Configurable):
    """RIoTBench ``parse.CsvToSenMLParse`` (+ ``CsvToSenMLBolt``): a tuple back to SenML.

    Emits ``{"senml": <JSON>}`` (with the envelope): ``bt`` from ``timestamp`` and one
    ``{n, u, v|sv}`` entry per schema column present, in schema order, written by
    :func:`senml.to_senml`.  Departures: a null value is left out (RIoTBench writes
    ``"v": "null"``), fields the schema does not know are ignored, and numbers are written
    in their shortest form (the schema file carries no decimals).  A tuple without a
    ``timestamp`` is dropped and counted in ``errors``.
    """

    name: ClassVar[str] = "CsvToSenML"

    def __init__(self, names: Sequence[str], units: Sequence[str], kinds: Sequence[str],
                 string_bt: bool = False) -> None:
        if not len(names) == len(units) == len(kinds):
            raise ValueError(f"{len(names)} names, {len(units)} units, {len(kinds)} kinds")
        self.names = [n.strip() for n in names]
        self.units = list(units)
        self.kinds = [k.strip() for k in kinds]
        self.string_bt = bool(string_bt)
        self._schema()  # validates the kinds
        self.errors = 0

    @classmethod
    def from_schema_text(cls, text: str, string_bt: bool = False) -> CsvToSenML:
        """From a RIoTBench schema file's text: names, units, kinds lines."""
        rows = _schema_rows(text)
        if len(rows) < 3:
            raise ValueError(f"a schema needs 3 lines (names, units, kinds), got {len(rows)}")
        return cls(rows[0], rows[1], rows[2], string_bt)

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        rows = _schema_rows(_read_text(
            props, "PARSE.CSV_SCHEMA_WITH_ANNOTATEDFIELDS_FILEPATH", read))
        if len(rows) < 3:
            raise ValueError("the annotated schema file needs names, units and kinds lines")
        return {"names": rows[0], "units": rows[1], "kinds": rows[2],
                "string_bt": dataset == "FIT"}

    def _schema(self) -> senml.Schema:
        return senml.Schema(tuple(senml.Field(n, u, k) for n, u, k in
                                  zip(self.names, self.units, self.kinds)), self.string_bt)

    def __call__(self, item: Item) -> list[Item]:
        timestamp = item.get(senml.TIMESTAMP)
        fields = {k: v for k, v in item.items()
                  if k in self.names and k != senml.TIMESTAMP and v is not None}
        try:
            if not _is_number(timestamp):
                raise ValueError("no numeric timestamp")
            record = senml.to_senml(fields, self._schema(), int(timestamp))
        except ValueError:
            self.errors += 1
            return []
        return [{**_envelope(item), "senml": json.dumps(record, separators=(",", ":"))}]


# ============================================================================== STATS

@task
class BlockWindowAverage(_Configurable):
    """RIoTBench ``aggregate.BlockWindowAverage`` (+ STATS ``BlockWindowAverageBolt``).

    Per sensor and field, the mean of each tumbling block of ``window`` values, emitted as
    ``<field>_average`` when the block closes (ThingsJS's name; RIoTBench's obs type
    ``AVG``).  Nulls are skipped.  ThingsJS's port divides 11 values by 10; this does not.
    Computed in double precision (RIoTBench sums Java floats).
    """

    name: ClassVar[str] = "BlockWindowAverage"

    def __init__(self, fields: Sequence[str] | str, window: int = 10,
                 key_field: str | None = None) -> None:
        self.fields = _fields(fields)
        self.window = _positive_int(window, "window")
        self.key_field = key_field
        self.blocks: dict[str, list[float]] = {}

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"fields": _field_list(props, "AGGREGATE.BLOCK_AVERAGE.USE_MSG_FIELD",
                                      "AGGREGATE.BLOCK_COUNT.USE_MSG_FIELD_LIST")
                or _stat_fields(props) or ["-"],
                "window": _int_prop(props, "AGGREGATE.BLOCK_COUNT.WINDOW_SIZE", 10),
                "key_field": _id_field(props)}

    def __call__(self, item: Item) -> list[Item]:
        sensor = _sensor(item, self.key_field) or ""
        values: Item = {}
        for field in self.fields:
            value = item.get(field)
            if not _is_number(value) or math.isnan(value):
                continue
            block = self.blocks.setdefault(_key(sensor, field), [0, 0.0])
            block[0] += 1
            block[1] += float(value)
            if block[0] >= self.window:
                values[f"{field}_average"] = block[1] / block[0]
                block[0], block[1] = 0, 0.0
        return [_record(item, self.key_field, values)] if values else []


@task
class KalmanFilter(_Configurable):
    """RIoTBench ``statistics.KalmanFilter`` (+ ``KalmanFilterBolt``): scalar Kalman filter.

    Per sensor and field: ``P <- P + Q``; ``K = P / (P + R)``; ``x <- x + K (z - x)``;
    ``P <- (1 - K) P``, from ``x = 0`` and ``P = estimated_error``; each value is replaced
    by its estimate.  RIoTBench's parameters and Java defaults: ``PROCESS_NOISE`` Q = 0.1,
    ``SENSOR_NOISE`` R = 0.1, ``ESTIMATED_ERROR`` P0 = 1 (TAXI: 0.125, 0.32, 30).
    Double precision (RIoTBench computes in Java floats: the 7th digit differs).  Nulls
    pass untouched (RIoTBench's parseFloat would throw).
    """

    name: ClassVar[str] = "KalmanFilter"

    def __init__(self, fields: Sequence[str] | str, process_noise: float = 0.1,
                 sensor_noise: float = 0.1, estimated_error: float = 1.0,
                 key_field: str | None = None) -> None:
        self.fields = _fields(fields)
        self.q = float(process_noise)
        self.r = float(sensor_noise)
        self.p0 = float(estimated_error)
        if min(self.q, self.r, self.p0) < 0 or not (self.q > 0 or self.r > 0):
            raise ValueError("Kalman noises must be >= 0, and Q or R > 0 (else K = 0/0)")
        self.key_field = key_field
        self.state: dict[str, list[float]] = {}

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"fields": _stat_fields(props) or ["-"],
                "process_noise": _float_prop(props, "STATISTICS.KALMAN_FILTER.PROCESS_NOISE", 0.1),
                "sensor_noise": _float_prop(props, "STATISTICS.KALMAN_FILTER.SENSOR_NOISE", 0.1),
                "estimated_error": _float_prop(
                    props, "STATISTICS.KALMAN_FILTER.ESTIMATED_ERROR", 1.0),
                "key_field": _id_field(props)}

    def __call__(self, item: Item) -> list[Item]:
        sensor = _sensor(item, self.key_field) or ""
        out = dict(item)
        for field in self.fields:
            z = out.get(field)
            if not _is_number(z) or math.isnan(z):
                continue
            state = self.state.setdefault(_key(sensor, field), [0.0, self.p0])
            p = state[1] + self.q
            gain = p / (p + self.r)
            x = state[0] + gain * (float(z) - state[0])
            state[0], state[1] = x, (1.0 - gain) * p
            out[field] = x
        return [out]


@task
class SimpleLinearRegression(_Configurable):
    """RIoTBench ``predict.SimpleLinearRegressionPredictor`` (+ its STATS bolt).

    A sliding-window forecast per sensor and field: the ``n``-th value is the point
    ``(n, value)``; the regression is fitted (least squares with intercept, commons-math
    ``SimpleRegression``) on the last ``train_window`` points, and from the
    ``train_window + 1``-th value on it predicts points ``n+1 .. n+predict_horizon``.
    Emits ``<field>_predictions`` (``#``-joined, RIoTBench's wire form),
    ``<field>_prediction`` (their mean, what RIoTBench's task returns) and
    ``<field>_actual``.  Follows RIoTBench over ThingsJS, whose port regresses tip on trip
    time with fixed coefficients.  Recomputes the fit exactly on each step (commons-math
    adds and removes points incrementally, with rounding drift).
    """

    name: ClassVar[str] = "SimpleLinearRegression"

    def __init__(self, fields: Sequence[str] | str, train_window: int = 10,
                 predict_horizon: int = 10, key_field: str | None = None) -> None:
        self.fields = _fields(fields)
        self.train_window = _positive_int(train_window, "train_window", 2)
        self.predict_horizon = _positive_int(predict_horizon, "predict_horizon")
        self.key_field = key_field
        self.series: dict[str, list] = {}

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"fields": _stat_fields(props) or ["-"],
                "train_window": _int_prop(
                    props, "PREDICT.SIMPLE_LINEAR_REGRESSION.WINDOW_SIZE_TRAIN", 10),
                "predict_horizon": _int_prop(
                    props, "PREDICT.SIMPLE_LINEAR_REGRESSION.WINDOW_SIZE_PREDICT", 10),
                "key_field": _id_field(props)}

    def __call__(self, item: Item) -> list[Item]:
        sensor = _sensor(item, self.key_field) or ""
        values: Item = {}
        for field in self.fields:
            y = item.get(field)
            if not _is_number(y) or math.isnan(y):
                continue
            series = self.series.setdefault(_key(sensor, field), [0, []])
            series[0] += 1
            window = series[1]
            window.append(float(y))
            if series[0] <= self.train_window:
                continue
            del window[0]
            predictions = self._forecast(series[0], window)
            values[f"{field}_actual"] = float(y)
            values[f"{field}_prediction"] = sum(predictions) / len(predictions)
            values[f"{field}_predictions"] = _join_numbers(predictions)
        return [_record(item, self.key_field, values)] if values else []

    def _forecast(self, last_x: int, ys: list[float]) -> list[float]:
        n = len(ys)
        x_mean = last_x - (n - 1) / 2.0
        y_mean = sum(ys) / n
        sxx = sxy = 0.0
        for i, y in enumerate(ys):
            dx = (last_x - n + 1 + i) - x_mean
            sxx += dx * dx
            sxy += dx * (y - y_mean)
        slope = sxy / sxx
        intercept = y_mean - slope * x_mean
        return [intercept + slope * (last_x + j) for j in range(1, self.predict_horizon + 1)]


_MASK64 = (1 << 64) - 1


@task
class SecondOrderMoment(_Configurable):
    """RIoTBench ``statistics.SecondOrderMoment`` (+ its bolt): the "surprise number".

    Matches RIoTBench's ``doMomentOp`` per sensor and field: up to ``max_map_size``
    distinct values (Java floats) keep a frequency; a new value when full replaces a
    random one (frequency 1); the output ``<field>_moment`` is
    ``sum over all max_map_size slots of n*(2 f_i - 1) / distinct``, ``n`` being the
    values seen so far, empty slots counting ``f_i = 0`` as RIoTBench's ``int[]`` does,
    i.e. ``n * (2 * sum(f) - max_map_size) / distinct``.  Departures: RIoTBench advances
    its next free slot on every value, repeats included, and then indexes past its array
    (or picks an empty slot to evict) and throws; here slots fill in order.  The random
    choice is a seeded splitmix64 (RIoTBench: ``ThreadLocalRandom``).  Double precision.
    """

    name: ClassVar[str] = "SecondOrderMoment"

    def __init__(self, fields: Sequence[str] | str, max_map_size: int = 100_000,
                 key_field: str | None = None, seed: int = 0) -> None:
        self.fields = _fields(fields)
        self.max_map_size = _positive_int(max_map_size, "max_map_size")
        self.key_field = key_field
        self.rng = int(seed) & _MASK64
        self.sketches: dict[str, dict[str, Any]] = {}

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"fields": _stat_fields(props) or ["-"],
                "max_map_size": _int_prop(props, "STATISTICS.MOMENT.MAX_HASHMAPSIZE", 100_000),
                "key_field": _id_field(props)}

    def _next_int(self, bound: int) -> int:
        self.rng = (self.rng + 0x9E3779B97F4A7C15) & _MASK64
        z = self.rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (z ^ (z >> 31)) % bound

    def __call__(self, item: Item) -> list[Item]:
        sensor = _sensor(item, self.key_field) or ""
        values: Item = {}
        for field in self.fields:
            value = item.get(field)
            if not _is_number(value) or math.isnan(value):
                continue
            sketch = self.sketches.setdefault(
                _key(sensor, field), {"n": 0, "total": 0, "items": [], "freq": [], "index": {}})
            values[f"{field}_moment"] = self._update(sketch, _f32(float(value)))
        return [_record(item, self.key_field, values)] if values else []

    def _update(self, sketch: dict[str, Any], value: float) -> float:
        sketch["n"] += 1
        items, freq, index = sketch["items"], sketch["freq"], sketch["index"]
        slot = index.get(repr(value))
        if slot is not None:
            freq[slot] += 1
            sketch["total"] += 1
        elif len(items) < self.max_map_size:
            index[repr(value)] = len(items)
            items.append(value)
            freq.append(1)
            sketch["total"] += 1
        else:
            slot = self._next_int(self.max_map_size)
            del index[repr(items[slot])]
            index[repr(value)] = slot
            items[slot] = value
            sketch["total"] += 1 - freq[slot]
            freq[slot] = 1
        n = sketch["n"]
        return n * (2 * sketch["total"] - self.max_map_size) / len(items)


@task
class DistinctApproxCount(_Configurable):
    """RIoTBench ``aggregate.DistinctApproxCount``: Durand-Flajolet LogLog, exactly.

    ``x`` = the first 4 bytes of SHA-1(UTF-8 of the value) as a little-endian signed int
    (Guava's ``HashCode.asInt()``); bucket ``j = x & (m - 1)`` (the low ``k`` bits,
    ``m = 2^k``); ``M[j] = max(M[j], rho(x >> k))`` with ``>>`` arithmetic and ``rho(y)``
    the number of trailing zero bits of ``y`` (RIoTBench's ``p_countTrailZeros``, no +1:
    Durand-Flajolet's rank is that plus one), 31 when ``y`` is 0; estimate
    ``E = (int)(0.79402 * m * 2^(sum M / m))``, emitted as ``<field>_distinctCount`` for
    every value.  ThingsJS's port parses the hash into a double and collapses to one
    bucket; this does not.  :meth:`from_properties` counts the sensor id, as RIoTBench's
    bolt does (its ``USE_MSG_FIELD_LIST=source`` in the TAXI file never matches).
    """

    name: ClassVar[str] = "DistinctApproxCount"
    ALPHA: ClassVar[float] = 0.79402

    def __init__(self, field: str, buckets_log2: int = 10) -> None:
        self.field = field
        self.k = _positive_int(buckets_log2, "buckets_log2", 0)
        if self.k > 24:
            raise ValueError("buckets_log2 above 24 (16 M buckets) does not fit a board")
        self.m = 1 << self.k
        self.maxima = [0] * self.m
        self.total = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"field": _id_field(props) or "-",
                "buckets_log2": _int_prop(props, "AGGREGATE.DISTINCT_APPROX_COUNT.BUCKETS", 10)}

    def add(self, value: Any) -> int:
        digest = hashlib.sha1(_text(value).encode("utf-8")).digest()
        x = int.from_bytes(digest[:4], "little", signed=True)
        j = x & (self.m - 1)
        y = x >> self.k
        rank = 31 if y == 0 else (y & -y).bit_length() - 1
        if rank > self.maxima[j]:
            self.total += rank - self.maxima[j]
            self.maxima[j] = rank
        return self.estimate()

    def estimate(self) -> int:
        e = self.ALPHA * self.m * 2.0 ** (self.total / self.m)
        return min(int(e), 2**31 - 1)

    def __call__(self, item: Item) -> list[Item]:
        value = item.get(self.field)
        if value is None:
            return []
        estimate = self.add(value)
        return [_record(item, None, {f"{self.field}_distinctCount": float(estimate)})]


@task
class Accumulator(_Configurable):
    """RIoTBench ``aggregate.AccumlatorTask`` (inside ``MultiLinePlotBolt``): tuple window.

    Collects, per sensor and observation (every numeric field of the incoming statistics
    records but the sensor id and ``timestamp``), ``(timestamp, value)`` points; a
    ``#``-joined string (``<field>_predictions``) adds one point per number, RIoTBench's
    ``MULTIVALUE_OBSTYPE``.  Every ``window`` records (``AGGREGATE.ACCUMLATOR.
    TUPLE_WINDOW_SIZE``) it emits one record per series, points in timestamp order:
    ``{window, sensor, obs_type, timestamps, values, count}`` (``#``-joined), and starts
    over.  RIoTBench counts single-observation tuples; a record here may carry several.
    A record without a timestamp uses its position in the window.
    """

    name: ClassVar[str] = "Accumulator"

    def __init__(self, window: int = 10, key_field: str | None = None,
                 timestamp_field: str = "timestamp") -> None:
        self.window = _positive_int(window, "window")
        self.key_field = key_field
        self.timestamp_field = timestamp_field
        self.count = 0
        self.windows = 0
        self.series: dict[str, list[list[float]]] = {}

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        meta = _field_list(props, "PARSE.META_FIELD_SCHEMA") or ["timestamp"]
        index = _int_prop(props, "AGGREGATE.ACCUMLATOR.META_TIMESTAMP_FIELD", 1)
        return {"window": _int_prop(props, "AGGREGATE.ACCUMLATOR.TUPLE_WINDOW_SIZE", 10),
                "key_field": _id_field(props),
                "timestamp_field": meta[index] if 0 <= index < len(meta) else "timestamp"}

    def __call__(self, item: Item) -> list[Item]:
        self.count += 1
        ts = item.get(self.timestamp_field)
        ts = float(ts) if _is_number(ts) else float(self.count)
        sensor = _sensor(item, self.key_field) or ""
        for name, value in item.items():
            if name.startswith("_") or name in (self.key_field, self.timestamp_field):
                continue
            if _is_number(value):
                points = [float(value)]
            elif isinstance(value, str) and "#" in value:
                points = _split_numbers(value) or []
            else:
                continue
            series = self.series.setdefault(_key(sensor, name), [])
            series.extend([ts, v] for v in points)
        if self.count < self.window:
            return []
        self.windows += 1
        out = []
        for key, points in self.series.items():
            sensor, _, obs_type = key.partition("\x00")
            points = sorted(points, key=lambda p: p[0])
            out.append({**_envelope(item), "window": float(self.windows), "sensor": sensor,
                        "obs_type": obs_type, "timestamps": _join_numbers(p[0] for p in points),
                        "values": _join_numbers(p[1] for p in points),
                        "count": float(len(points))})
        self.count = 0
        self.series = {}
        return out


@task
class Plot(_Configurable):
    """The data part of RIoTBench ``visualize.XChartMultiLinePlotTask``: chart series.

    Takes :class:`Accumulator` records and turns each into a line series as XChart draws
    it: ``x`` = milliseconds since the series' first point, ``y`` = the values
    (``#``-joined); keeps the latest window's series (:meth:`points`) for a PNG or a live
    page, which the program layer renders (RIoTBench writes SVGs into a zip).
    """

    name: ClassVar[str] = "Plot"

    def __init__(self) -> None:
        self.window: float | None = None
        self.charts: dict[str, dict[str, Any]] = {}

    def points(self) -> list[dict[str, Any]]:
        """The latest window's series: ``{sensor, obs_type, x: [...], y: [...]}``."""
        return [dict(c, x=list(c["x"]), y=list(c["y"])) for c in self.charts.values()]

    def __call__(self, item: Item) -> list[Item]:
        ts = _split_numbers(str(item.get("timestamps", "")))
        ys = _split_numbers(str(item.get("values", "")))
        if not ts or ys is None or len(ts) != len(ys):
            return []
        window = item.get("window")
        if window != self.window:
            self.window = window
            self.charts = {}
        sensor, obs_type = str(item.get("sensor", "")), str(item.get("obs_type", ""))
        xs = [t - ts[0] for t in ts]
        self.charts[_key(sensor, obs_type)] = {"sensor": sensor, "obs_type": obs_type,
                                               "x": xs, "y": ys}
        return [{**_envelope(item), "window": window, "sensor": sensor, "obs_type": obs_type,
                 "x": _join_numbers(xs), "y": _join_numbers(ys)}]


# ============================================================================== TRAIN

def percentile(sorted_values: Sequence[float], p: float) -> float:
    """commons-math ``Percentile.evaluate(p)`` (LEGACY estimation, RIoTBench's).

    ``pos = p (n + 1) / 100``; below 1 the minimum, from ``n`` the maximum, else linear
    between the ``floor(pos)``-th and next values (numpy's ``method="weibull"``).
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if n == 1:
        return float(sorted_values[0])
    pos = p * (n + 1) / 100.0
    if pos < 1:
        return float(sorted_values[0])
    if pos >= n:
        return float(sorted_values[-1])
    lower = sorted_values[int(pos) - 1]
    upper = sorted_values[int(pos)]
    return float(lower + (pos - math.floor(pos)) * (upper - lower))


@task
class AnnotateDTClass(_Configurable):
    """RIoTBench ``annotate.AnnotateDTClass`` (TRAIN): label a batch by quantiles.

    Every ``batch_size`` rows, the 25/50/75/100th percentiles of ``field`` in the batch
    (:func:`percentile`) become a ``TreeMap`` ``{Q25: BAD, Q50: GOOD, Q75: VERYGOOD,
    Q100: EXCELLENT}`` (an equal quantile overwrites the earlier label) and each row gets
    the label of the greatest quantile <= its value, the first one below all of them:
    BAD below the median, GOOD up to Q75, VERYGOOD below the maximum, EXCELLENT at it.
    This is RIoTBench's rule; ThingsJS's port labels BAD below Q1 ... EXCELLENT from Q3,
    writes ``VERY GOOD``, and uses batches of 11.  The labelled rows are emitted together.
    :meth:`from_properties` takes ``field`` as RIoTBench does, column
    ``ANNOTATE.ANNOTATE_MSG_USE_FIELD`` of the training columns (TAXI: trip_time_in_secs,
    where ThingsJS uses total_amount), batches of ``MODEL_UPDATE_FREQUENCY``.
    """

    name: ClassVar[str] = "AnnotateDTClass"
    LABELS: ClassVar[tuple[str, ...]] = ("BAD", "GOOD", "VERYGOOD", "EXCELLENT")

    def __init__(self, field: str, batch_size: int = 300,
                 label_field: str = "classified_class") -> None:
        self.field = field
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.label_field = label_field
        self.batch: list[Item] = []
        self.skipped = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        columns = TRAIN_COLUMNS[dataset]
        index = _int_prop(props, "ANNOTATE.ANNOTATE_MSG_USE_FIELD", 0)
        return {"field": columns[index] if 0 <= index < len(columns) else columns[0],
                "batch_size": _int_prop(
                    props, "CLASSIFICATION.DECISION_TREE.TRAIN.MODEL_UPDATE_FREQUENCY", 300)}

    @classmethod
    def labeller(cls, values: Sequence[float]) -> Callable[[float], str]:
        """RIoTBench's labelling function for a batch of ``values``."""
        data = sorted(float(v) for v in values)
        table: dict[float, str] = {}
        for p, label in zip((25, 50, 75, 100), cls.LABELS):
            table[percentile(data, p)] = label
        keys = sorted(table)

        def label(value: float) -> str:
            floor = None
            for key in keys:
                if key <= value:
                    floor = key
            return table[keys[0] if floor is None else floor]
        return label

    def __call__(self, item: Item) -> list[Item]:
        value = item.get(self.field)
        if not _is_number(value) or math.isnan(value):
            self.skipped += 1
            return []
        self.batch.append(dict(item))
        if len(self.batch) < self.batch_size:
            return []
        batch, self.batch = self.batch, []
        label = self.labeller([row[self.field] for row in batch])
        return [{**row, self.label_field: label(row[self.field])} for row in batch]


# ------------------------------------------------------------------- decision trees

def _entropy(counts: Iterable[int], total: int) -> float:
    h = 0.0
    for c in counts:
        if c:
            q = c / total
            h -= q * math.log2(q)
    return h


def _majority(counts: Mapping[str, int]) -> str:
    return min(counts, key=lambda c: (-counts[c], c))


def train_tree(rows: Sequence[Sequence[float]], labels: Sequence[str],
               features: Sequence[str], criterion: str = "gain_ratio",
               max_depth: int | None = None, min_samples_split: int = 2,
               min_samples_leaf: int = 1) -> dict[str, Any]:
    """A binary decision tree on numeric features, as nested dicts.

    Splits are ``feature <= threshold`` with thresholds halfway between consecutive
    distinct values, each side holding at least ``min_samples_leaf`` rows.
    ``criterion="entropy"`` takes the split of largest information gain (CART with
    entropy, scikit-learn's ``DecisionTreeClassifier(criterion="entropy")``; ties go to
    the earlier feature, then the lower threshold).  ``"gain_ratio"`` is C4.5's split
    rule (release 8, which Weka's J48 implements): per feature the threshold of largest
    gain, less the MDL penalty ``log2(candidate thresholds) / n``; among features whose
    gain is at least the average, the largest gain ratio.  A node becomes a leaf when
    pure, smaller than ``min_samples_split``, at ``max_depth``, or when no split gains.
    Not J48: no error-based pruning, and J48 also wants each side of a numeric split to
    hold 10% of the node's rows per class (clamped to 2..25).  Nodes: ``{"leaf": label,
    "counts": {...}}`` or ``{"feature", "threshold", "le", "gt", "counts"}``.
    """
    if criterion not in ("gain_ratio", "entropy"):
        raise ValueError(f"criterion must be 'gain_ratio' or 'entropy', not {criterion!r}")
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    if not rows:
        raise ValueError("cannot train a decision tree on no rows")
    if any(len(r) != len(features) for r in rows):
        raise ValueError(f"every row needs {len(features)} values")
    min_samples_leaf = max(1, int(min_samples_leaf))
    min_samples_split = max(2, int(min_samples_split), 2 * min_samples_leaf)
    data = [[float(v) for v in r] for r in rows]
    ys = [str(y) for y in labels]

    def build(indexes: list[int], depth: int) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for i in indexes:
            counts[ys[i]] = counts.get(ys[i], 0) + 1
        node: dict[str, Any] = {"leaf": _majority(counts), "counts": dict(sorted(counts.items()))}
        n = len(indexes)
        if (len(counts) == 1 or n < min_samples_split
                or (max_depth is not None and depth >= max_depth)):
            return node
        split = _best_split(data, ys, indexes, counts, criterion, min_samples_leaf)
        if split is None:
            return node
        f, threshold = split
        left = [i for i in indexes if data[i][f] <= threshold]
        right = [i for i in indexes if data[i][f] > threshold]
        return {"feature": features[f], "threshold": threshold, "counts": node["counts"],
                "le": build(left, depth + 1), "gt": build(right, depth + 1)}

    classes = sorted(set(ys))
    return {"type": "decision_tree", "criterion": criterion, "features": list(features),
            "classes": classes, "tree": build(list(range(len(data))), 0)}


def _best_split(data: list[list[float]], ys: list[str], indexes: list[int],
                counts: dict[str, int], criterion: str,
                min_leaf: int) -> tuple[int, float] | None:
    n = len(indexes)
    parent = _entropy(counts.values(), n)
    candidates = []  # (feature, gain, threshold, n_left, penalised gain)
    for f in range(len(data[0])):
        order = sorted(indexes, key=lambda i: data[i][f])
        left: dict[str, int] = {}
        right = dict(counts)
        best: tuple[float, float, int] | None = None
        thresholds = 0
        for pos in range(n - 1):
            i = order[pos]
            label = ys[i]
            left[label] = left.get(label, 0) + 1
            right[label] -= 1
            a, b = data[i][f], data[order[pos + 1]][f]
            if a == b:
                continue
            n_left = pos + 1
            if n_left < min_leaf or n - n_left < min_leaf:
                continue
            thresholds += 1
            child = (n_left * _entropy(left.values(), n_left)
                     + (n - n_left) * _entropy(right.values(), n - n_left)) / n
            gain = parent - child
            if best is None or gain > best[0] + 1e-12:
                threshold = (a + b) / 2.0
                if threshold == b:  # a and b adjacent floats: keep a on the left
                    threshold = a
                best = (gain, threshold, n_left)
        if best is None:
            continue
        penalised = best[0] - (math.log2(thresholds) / n if thresholds > 1 else 0.0)
        candidates.append((f, best[0], best[1], best[2], penalised))
    if not candidates:
        return None
    if criterion == "entropy":
        f, gain, threshold, _, _ = max(candidates, key=lambda c: (c[1] > 1e-12, c[1], -c[0]))
        return (f, threshold) if gain > 1e-12 else None
    useful = [c for c in candidates if c[4] > 1e-12]
    if not useful:
        return None
    average = sum(c[4] for c in useful) / len(useful)
    best_ratio, choice = -1.0, None
    for f, _, threshold, n_left, gain in useful:
        if gain < average - 1e-3:
            continue
        split_info = _entropy((n_left, n - n_left), n)
        ratio = gain / split_info if split_info > 0 else 0.0
        if ratio > best_ratio + 1e-12:
            best_ratio, choice = ratio, (f, threshold)
    return choice


def classify(model: Mapping[str, Any], item: Mapping[str, Any]) -> str | None:
    """The label :func:`train_tree`'s ``model`` gives ``item`` (None if a feature is missing)."""
    node = model["tree"]
    while "feature" in node:
        value = item.get(node["feature"])
        if not _is_number(value) or math.isnan(value):
            return None
        node = node["le"] if value <= node["threshold"] else node["gt"]
    return node["leaf"]


def _load_model(model: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    if isinstance(model, (str, bytes)):
        model = json.loads(model)
    if not isinstance(model, Mapping) or "type" not in model:
        raise ValueError("not a model (a dict with a 'type')")
    return dict(model)


class _Trainer(_Configurable):
    """Batches rows of numeric features and a target, trains, notifies."""

    analytic_type: ClassVar[str] = ""
    features: list[str]
    target: str
    batch_size: int
    rows: list[list[Any]]
    model: dict[str, Any] | None
    version: int
    skipped: int

    def _fit(self, rows: list[list[Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def _target_ok(self, value: Any) -> bool:
        return _is_number(value) and not math.isnan(value)

    def __call__(self, item: Item) -> list[Item]:
        row = [item.get(f) for f in self.features] + [item.get(self.target)]
        if (not all(_is_number(v) and not math.isnan(v) for v in row[:-1])
                or not self._target_ok(row[-1])):
            self.skipped += 1
            return []
        self.rows.append(row)
        if len(self.rows) < self.batch_size:
            return []
        rows, self.rows = self.rows, []
        self.model = self._fit(rows)
        self.version += 1
        return [{**_envelope(item), "analytic_type": self.analytic_type,
                 "model_version": float(self.version), "rows": float(len(rows)),
                 "model": json.dumps(self.model, separators=(",", ":"))}]


@task
class DecisionTreeTrain(_Trainer):
    """RIoTBench ``predict.DecisionTreeTrainBatched`` (TRAIN): a tree per batch.

    Every ``batch_size`` labelled rows (``MODEL_UPDATE_FREQUENCY``) it trains
    :func:`train_tree` on ``features`` -> ``target`` and emits the model-updated
    notification ``{analytic_type: "DTC", model_version, rows, model: <JSON>}``, which
    :class:`DecisionTreeClassify` takes as a model update.  RIoTBench trains Weka's J48
    (C4.5 with pruning); this is the unpruned C4.5 split rule with ``min_samples_leaf=2``
    (J48's ``minNumObj``).
    """

    name: ClassVar[str] = "DecisionTreeTrain"
    analytic_type: ClassVar[str] = "DTC"

    def __init__(self, features: Sequence[str] | str, target: str = "classified_class",
                 batch_size: int = 300, criterion: str = "gain_ratio",
                 max_depth: int | None = None, min_samples_split: int = 2,
                 min_samples_leaf: int = 2) -> None:
        self.features = _fields(features)
        self.target = target
        self.batch_size = _positive_int(batch_size, "batch_size")
        if criterion not in ("gain_ratio", "entropy"):
            raise ValueError(f"criterion must be 'gain_ratio' or 'entropy', not {criterion!r}")
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.rows = []
        self.model = None
        self.version = 0
        self.skipped = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"features": TRAIN_COLUMNS[dataset],
                "batch_size": _int_prop(
                    props, "CLASSIFICATION.DECISION_TREE.TRAIN.MODEL_UPDATE_FREQUENCY", 300)}

    def _target_ok(self, value: Any) -> bool:
        return isinstance(value, str) and value != ""

    def _fit(self, rows: list[list[Any]]) -> dict[str, Any]:
        model = train_tree([r[:-1] for r in rows], [r[-1] for r in rows], self.features,
                           self.criterion, self.max_depth, self.min_samples_split,
                           self.min_samples_leaf)
        model["target"] = self.target
        return model


def fit_ols(rows: Sequence[Sequence[float]], targets: Sequence[float],
            tolerance: float = 1e-10) -> tuple[list[float], float, list[int]]:
    """Least squares with intercept: ``(weights, intercept, dropped columns)``.

    Columns are standardised, the normal equations solved by Gauss-Jordan elimination
    with partial pivoting.  A constant column, or one (nearly) a combination of earlier
    ones (pivot below ``tolerance * n``), gets weight 0 and is listed as dropped; the fit
    is still a least-squares fit (as Weka's ``LinearRegression`` drops colinear
    attributes).  ValueError on no rows.
    """
    n = len(rows)
    if n == 0 or n != len(targets):
        raise ValueError(f"need rows and as many targets ({n} rows, {len(targets)} targets)")
    p = len(rows[0])
    cols = [[float(r[j]) for r in rows] for j in range(p)]
    y = [float(t) for t in targets]
    y_mean = sum(y) / n
    means = [sum(c) / n for c in cols]
    scales = [math.sqrt(sum((v - m) ** 2 for v in c) / n) for c, m in zip(cols, means)]
    live = [j for j in range(p) if scales[j] > 1e-300 and
            scales[j] > 1e-12 * max(1.0, abs(means[j]))]
    z = [[(v - means[j]) / scales[j] for v in cols[j]] for j in live]
    dy = [v - y_mean for v in y]
    q = len(live)
    a = [[sum(zi * zk for zi, zk in zip(z[i], z[k])) for k in range(q)]
         + [sum(zi * d for zi, d in zip(z[i], dy))] for i in range(q)]
    solution = [0.0] * q
    pivot_row_of: dict[int, int] = {}
    used: set[int] = set()
    for col in range(q):
        best = max((r for r in range(q) if r not in used), key=lambda r: abs(a[r][col]),
                   default=None)
        if best is None or abs(a[best][col]) <= tolerance * n:
            continue
        used.add(best)
        pivot_row_of[col] = best
        piv = a[best][col]
        a[best] = [v / piv for v in a[best]]
        for r in range(q):
            if r != best and a[r][col] != 0.0:
                factor = a[r][col]
                a[r] = [v - factor * w for v, w in zip(a[r], a[best])]
    for col, r in pivot_row_of.items():
        solution[col] = a[r][q]
    weights = [0.0] * p
    for i, j in enumerate(live):
        weights[j] = solution[i] / scales[j]
    dropped = [j for j in range(p) if j not in live] + [live[c] for c in range(q)
                                                         if c not in pivot_row_of]
    intercept = y_mean - sum(w * m for w, m in zip(weights, means))
    return weights, intercept, sorted(dropped)


def predict_ols(model: Mapping[str, Any], item: Mapping[str, Any]) -> float | None:
    """``intercept + sum(w * x)`` for a :class:`MultiLinearRegressionTrain` model."""
    total = float(model["intercept"])
    for name, w in zip(model["features"], model["weights"]):
        value = item.get(name)
        if not _is_number(value) or math.isnan(value):
            return None
        total += w * float(value)
    return total


@task
class MultiLinearRegressionTrain(_Trainer):
    """RIoTBench ``predict.LinearRegressionTrainBatched`` (TRAIN): OLS per batch.

    Every ``batch_size`` rows it fits ``target ~ features`` with intercept
    (:func:`fit_ols`) and emits ``{analytic_type: "MLR", model_version, rows, model}``;
    the model is ``{"features", "target", "weights": [...], "intercept", "dropped"}``.
    RIoTBench trains Weka's ``LinearRegression``, whose default M5 attribute selection
    may drop useful attributes and which adds a 1e-8 ridge; this is plain least squares
    (ThingsJS's port: ``ml-regression-multivariate-linear``).
    """

    name: ClassVar[str] = "MultiLinearRegressionTrain"
    analytic_type: ClassVar[str] = "MLR"

    def __init__(self, features: Sequence[str] | str, target: str,
                 batch_size: int = 300) -> None:
        self.features = _fields(features)
        self.target = target
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.rows = []
        self.model = None
        self.version = 0
        self.skipped = 0

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        columns = TRAIN_COLUMNS[dataset]
        return {"features": columns[:-1], "target": columns[-1],
                "batch_size": _int_prop(
                    props, "PREDICT.LINEAR_REGRESSION.TRAIN.MODEL_UPDATE_FREQUENCY", 300)}

    def _fit(self, rows: list[list[Any]]) -> dict[str, Any]:
        weights, intercept, dropped = fit_ols([r[:-1] for r in rows], [r[-1] for r in rows])
        return {"type": "linear_regression", "features": list(self.features),
                "target": self.target, "weights": weights, "intercept": intercept,
                "dropped": [self.features[j] for j in dropped]}


# =============================================================================== PRED

class _Predictor(_Configurable):
    analytic_type: ClassVar[str] = ""
    model: dict[str, Any] | None
    updates: int
    bad_updates: int

    def __init__(self, model: Mapping[str, Any] | str | None = None) -> None:
        self.model = None
        self.updates = 0
        self.bad_updates = 0
        self.skipped = 0
        if model is not None:
            self.update_model(model)

    def update_model(self, model: Mapping[str, Any] | str | bytes) -> None:
        """Use ``model`` (a dict, or its JSON) from now on."""
        self.model = _load_model(model)
        self.updates += 1

    def __call__(self, item: Item) -> list[Item]:
        """A model notification updates the model; any other tuple is predicted on (or
        ``skipped``, without a model or with a feature missing)."""
        if self._is_update(item):
            return []
        out = None if self.model is None else self._predict(self.model, item)
        if out is None:
            self.skipped += 1
            return []
        return [{**_envelope(item), **out}]

    def _predict(self, model: dict[str, Any], item: Item) -> Item | None:
        raise NotImplementedError

    def _is_update(self, item: Item) -> bool:
        if item.get("analytic_type") == self.analytic_type and "model" in item:
            try:
                self.update_model(item["model"])
            except (TypeError, ValueError):
                self.bad_updates += 1  # keep the current model
            return True
        return False


@task
class DecisionTreeClassify(_Predictor):
    """RIoTBench ``predict.DecisionTreeClassify`` (+ PRED ``DecisionTreeClassifyBolt``).

    Classifies each tuple with the current :func:`train_tree` model and emits
    ``{<target>: label}`` (``classified_class``).  A TRAIN notification (``analytic_type``
    ``"DTC"``) arriving on the same input replaces the model, as RIoTBench's bolt takes
    ``modelupdate`` tuples; :meth:`update_model` does it directly.  Without a model, or
    with a feature missing, a tuple gives nothing (``skipped``).
    """

    name: ClassVar[str] = "DecisionTreeClassify"
    analytic_type: ClassVar[str] = "DTC"

    def _predict(self, model: dict[str, Any], item: Item) -> Item | None:
        label = classify(model, item)
        return None if label is None else {model.get("target", "classified_class"): label}


@task
class MultiLinearRegressionPredict(_Predictor):
    """RIoTBench ``predict.LinearRegressionPredictor`` (+ PRED bolt): apply the MLR model.

    Emits ``{predict, actual}`` (thingsjs.md 7.8's names; ``actual`` when the tuple has
    the target).  RIoTBench truncates the prediction to an ``int``; this does not.  Model
    updates as :class:`DecisionTreeClassify` (``analytic_type`` ``"MLR"``).
    """

    name: ClassVar[str] = "MultiLinearRegressionPredict"
    analytic_type: ClassVar[str] = "MLR"

    def _predict(self, model: dict[str, Any], item: Item) -> Item | None:
        prediction = predict_ols(model, item)
        if prediction is None:
            return None
        out: Item = {"predict": prediction}
        actual = item.get(model["target"])
        if _is_number(actual):
            out["actual"] = float(actual)
        return out


@task
class ResidualError(_Configurable):
    """RIoTBench PRED ``ErrorEstimationBolt``: how far predictions are off.

    Remembers the latest ``average_field`` it receives (from :class:`BlockWindowAverage`
    of the target) and, for each ``{predict, actual}`` record, emits ``residual = actual -
    predict`` (ThingsJS's ResidualError) and ``error = residual / average`` (RIoTBench's
    ``errval``), null while no nonzero average has arrived (RIoTBench divides by its
    initial ``"0"``: its TAXI average bolt never matches a field, so it emits only
    infinities).
    """

    name: ClassVar[str] = "ResidualError"

    def __init__(self, average_field: str = "fare_amount_average") -> None:
        self.average_field = average_field
        self.average: float | None = None

    @classmethod
    def _from_props(cls, props: Mapping[str, str], dataset: str,
                    read: Reader | None) -> dict[str, Any]:
        return {"average_field": f"{TRAIN_COLUMNS[dataset][-1]}_average"}

    def __call__(self, item: Item) -> list[Item]:
        average = item.get(self.average_field)
        if _is_number(average):
            self.average = float(average)
        predict, actual = item.get("predict"), item.get("actual")
        if not (_is_number(predict) and _is_number(actual)):
            return []
        residual = float(actual) - float(predict)
        error = residual / self.average if self.average else None
        return [{**_envelope(item), "actual": float(actual), "predict": float(predict),
                 "residual": residual, "error": error}]
