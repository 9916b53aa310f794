"""The RIoTBench datasets shipped with thingssim: samples, schemas, metadata, parameters.

Three workloads: ``TAXI`` (NYC taxi trips, 2013), ``SYS`` (Sense-your-City, called
``CITY`` in RIoTBench's parameter files) and ``FIT`` (MHEALTH).  The files are small
copies from RIoTBench and ThingsJS (``data/README.md`` says where each comes from), so
the project runs with no external file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from runtime.riot.senml import Schema

DATA_DIR = Path(__file__).resolve().parent / "data"

DATASETS = ("TAXI", "SYS", "FIT")

_SAMPLES = {
    "TAXI": "TAXI_sample_data_senml.csv",
    "SYS": "SYS_sample_data_senml.csv",
    "FIT": "FIT_sample_data_senml.csv",
}
_PROPERTIES = {
    "TAXI": "tasks_TAXI.properties",
    "SYS": "tasks_CITY.properties",
    "FIT": "tasks_FIT.properties",
}
# RIoTBench's schema files, (without, with) the annotation fields; None: not shipped by it
_SCHEMA_FILES = {
    "TAXI": (None, "taxi-schema_with_annotation.csv"),
    "SYS": ("sys-schema_without_annotationfields.txt", "sys-schema-with-annotationfields.txt"),
    "FIT": ("mhealth_schema.csv", None),
}
_METADATA = {"TAXI": "taxi-metadata-fulldataset.txt", "SYS": "city-metadata.txt"}


def dataset_name(dataset: str) -> str:
    """The canonical name: case-insensitive, ``CITY`` is ``SYS`` (ValueError if unknown)."""
    name = dataset.upper()
    name = "SYS" if name == "CITY" else name
    if name not in DATASETS:
        raise ValueError(f"unknown RIoTBench dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return name


def sample_path(dataset: str) -> Path:
    """The dataset's SenML sample (TAXI 1,000 lines, SYS 1,000, FIT 45)."""
    return DATA_DIR / _SAMPLES[dataset_name(dataset)]


@functools.cache
def schema(dataset: str) -> Schema:
    """The schema of the dataset's SenML lines, inferred from the sample.

    Fields in the sample's order with its units and number spelling, so generated lines
    look like the sample's (RIoTBench's own schema files differ in small ways: TAXI's
    ``pickup_datetime`` unit is ``timestamp`` there and ``time`` in the data).
    """
    with open(sample_path(dataset), encoding="utf-8") as f:
        return Schema.infer(f)


def schema_file(dataset: str, annotated: bool = False) -> Path:
    """RIoTBench's schema CSV (names, units, kinds), with or without annotation fields."""
    name = dataset_name(dataset)
    file = _SCHEMA_FILES[name][1 if annotated else 0]
    if file is None:
        kind = "annotated" if annotated else "plain"
        raise ValueError(f"RIoTBench ships no {kind} schema file for {name}")
    return DATA_DIR / file


def metadata_path(dataset: str) -> Path:
    """The annotation metadata, ``<id>:<v1>,<v2>,...`` per line (TAXI and SYS only)."""
    name = dataset_name(dataset)
    if name not in _METADATA:
        raise ValueError(f"RIoTBench ships no annotation metadata for {name}")
    return DATA_DIR / _METADATA[name]


@functools.cache
def load_metadata(dataset: str) -> dict[str, tuple[str, ...]]:
    """The annotation map id -> values (TAXI: company, driver, city; SYS: location, type).

    Cached and shared between callers: read it, do not change it.
    """
    table: dict[str, tuple[str, ...]] = {}
    with open(metadata_path(dataset), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            key, sep, values = line.partition(":")
            if not sep:
                raise ValueError(f"{metadata_path(dataset)}:{number}: no ':' in {line!r}")
            table[key] = tuple(values.split(","))
    return table


def properties_path(dataset: str) -> Path:
    """RIoTBench's task parameters for the dataset (``tasks_<TAXI|CITY|FIT>.properties``)."""
    return DATA_DIR / _PROPERTIES[dataset_name(dataset)]


def load_properties(dataset: str | Path) -> dict[str, str]:
    """RIoTBench's parameters for a dataset name, or any Java ``.properties`` file's.

    Read as ``java.util.Properties.load`` reads them, since RIoTBench's files rely on it:
    ``#``/``!`` comments, the key ending at the first unescaped ``=``, ``:`` or blank
    (spaces around the separator dropped, trailing spaces of the value kept), ``\\`` line
    continuations and escapes, the last of repeated keys winning.  Note what Java makes of
    ``tasks_FIT.properties``: ``FILTER.RANGE_FILTER.VALID_RANGE`` is broken over two lines
    without a ``\\``, so RIoTBench's FIT range filter gets only the chest and ECG ranges
    (with a trailing comma) and the second line becomes a key ``acc_ankle_x``.
    """
    if isinstance(dataset, str) and dataset.upper() in (*DATASETS, "CITY"):
        path = properties_path(dataset)
    else:
        path = Path(dataset)
    with open(path, encoding="latin-1") as f:  # Java's Properties.load(InputStream) charset
        return parse_properties(f.read())


def parse_properties(text: str) -> dict[str, str]:
    """The key -> value map of a Java ``.properties`` text (see :func:`load_properties`)."""
    props: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip(" \t\f")
            i += 1
        if _continues(line):
            line = line[:-1]
        key, value = _split_entry(line)
        props[_unescape(key)] = _unescape(value)
    return props


def _continues(line: str) -> bool:
    """A line ending in an odd number of backslashes continues on the next one."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split_entry(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:]
    rest = rest.lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 >= len(text):
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u":
            code = text[i + 2 : i + 6]
            if len(code) < 4 or any(ch not in "0123456789abcdefABCDEF" for ch in code):
                raise ValueError(f"malformed \\uxxxx escape in {text!r}")
            out.append(chr(int(code, 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    return "".join(out)


#: annotation columns RIoTBench's annotated schemas add to the plain ones
_ANNOTATION_COLUMNS = {"TAXI": ("taxi_company", "drivername", "taxi_city"),
                       "SYS": ("location", "type"), "FIT": ()}


def resolve_file(dataset: str, path: str) -> bytes:
    """The content of a file RIoTBench's properties name, from the shipped copies.

    The properties hold paths on the authors' machines; the file is found by its name in
    ``thingssim/riot/data``.  Two are not shipped by RIoTBench and are derived: TAXI's
    plain schema (``taxi-schema-without-annotation.csv``: the annotated one without its
    annotation columns) and FIT's annotated schema (FIT has no annotation columns: the
    plain ``mhealth_schema.csv``).
    """
    ds = dataset_name(dataset)
    name = os.path.basename(path.replace("\\", "/"))
    local = DATA_DIR / name
    if local.is_file():
        return local.read_bytes()
    if name == "taxi-schema-without-annotation.csv":
        rows = [line.split(",") for line in
                (DATA_DIR / "taxi-schema_with_annotation.csv").read_text().splitlines()
                if line.strip()]
        keep = [i for i, n in enumerate(rows[0]) if n not in _ANNOTATION_COLUMNS["TAXI"]]
        return "".join(",".join(r[i] for i in keep) + "\n" for r in rows).encode()
    if ds == "FIT" and name == "mhealth_schema_with_annoted_fields.csv":
        return (DATA_DIR / "mhealth_schema.csv").read_bytes()
    raise FileNotFoundError(f"{path}: RIoTBench's {ds} properties name a file that "
                            f"thingssim does not ship ({name})")
