"""SenML lines as RIoTBench writes them, parsed into flat tuples and written back.

RIoTBench's inputs are CSV lines ``<base timestamp ms>,<SenML JSON>``; the JSON is
``{"e": [{"n": name, "u": unit, "v": "<number>"} | {"n", "u", "sv": "<string>"}, ...],
"bt": <base timestamp>}``.  :func:`parse_line` turns one into ``(timestamp, fields)``
with ``v`` values as ``float`` (they are numeric strings in the files) and ``sv`` values
as ``str``; an entry without ``n`` takes the record's ``bn``, as RIoTBench's
``SenMLParse`` and ThingsJS's parse stage do (thingsjs.md 7.4).  Unlike ``SenMLParse``,
the base timestamp is returned beside the fields, not as a ``"timestamp"`` field: a
caller that wants RIoTBench's map adds ``fields["timestamp"] = ts`` itself.

:func:`format_line` is the inverse, written the way RIoTBench's ``CsvToSenMLParse``
(json-simple) writes the sample files, so that a parsed sample line formats back to the
same bytes when the :class:`Schema` was inferred from the sample:

* numbers as JSON strings: with the field's fixed number of decimals when the schema has
  one (the TAXI dollar amounts and distances are always written ``"29.00"``), otherwise
  integral values without a fraction (``"1440"``) and others in Python's shortest
  round-tripping form (``repr``: ``"9.08"``, ``"0.0054617"``); a value that the fixed
  decimals would change is written in the shortest form, so ``parse_line(format_line(
  ...))`` always gives back the same dict;
* entry keys in json-simple's order (``u, n, sv`` and ``v, u, n``), ``e`` before ``bt``,
  ``/`` escaped as ``\\/``, and ``bt`` as a string when the schema says so (the FIT
  sample does that).

Standard library only: this module runs on boards.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["Field", "Schema", "format_line", "parse_line", "to_senml"]

#: the schema column that carries the record's base time (``bt``), not an ``e`` entry
TIMESTAMP = "timestamp"


def parse_line(line: str) -> tuple[int, dict[str, Any]]:
    """``"<ts>,<SenML JSON>"`` -> ``(ts, {name: float | str})``; ValueError names the fault.

    The prefix before the first ``{`` must be the integer timestamp and a comma; a line
    that is bare SenML JSON takes its timestamp from ``bt``.  Entry times ``t`` and units
    are not part of the tuple (RIoTBench drops them too).
    """
    text = line.strip()
    brace = text.find("{")
    if brace < 0:
        raise ValueError(f"no SenML JSON object in line {_clip(text)!r}")
    prefix = text[:brace].strip()
    try:
        record = json.loads(text[brace:])
    except json.JSONDecodeError as exc:
        column = brace + exc.pos + 1
        raise ValueError(f"invalid SenML JSON ({exc.msg} at column {column})") from None
    if not isinstance(record, dict):
        raise ValueError("SenML JSON is not an object")
    if prefix:
        if not prefix.endswith(","):
            raise ValueError(f"expected '<timestamp>,' before the JSON, got {_clip(prefix)!r}")
        timestamp = _int_or_error(prefix[:-1].strip(), "timestamp")
    elif "bt" in record:
        timestamp = _int_or_error(record["bt"], "bt")
    else:
        raise ValueError("line has neither a timestamp prefix nor a 'bt'")
    entries = record.get("e")
    if not isinstance(entries, list):
        raise ValueError("SenML record has no 'e' list")
    base_name = record.get("bn")
    fields: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {index} of 'e' is not an object")
        name = entry.get("n", base_name)
        if not isinstance(name, str) or not name:
            raise ValueError(f"entry {index} of 'e' has no name ('n', nor 'bn' in the record)")
        if "v" in entry:
            fields[name] = _number_or_error(entry["v"], name)
        elif "sv" in entry or "vs" in entry:
            value = entry.get("sv", entry.get("vs"))
            if not isinstance(value, str):
                raise ValueError(f"string value of {name!r} is not a string: {value!r}")
            fields[name] = value
        else:
            raise ValueError(f"entry {name!r} has no value ('v' or 'sv')")
    return timestamp, fields


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _int_or_error(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} is not an integer: {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not an integer: {_clip(str(value))!r}") from None


def _number_or_error(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"value of {name!r} is not a number: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"value of {name!r} is not a number: {_clip(str(value))!r}")


@dataclass(frozen=True)
class Field:
    """One column: name, unit (as written in ``u``), kind ``"v"`` (number) or ``"sv"``.

    ``decimals`` fixes how many digits a number is written with (``None``: shortest).
    """

    name: str
    unit: str
    kind: str
    decimals: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("v", "sv"):
            raise ValueError(f"field {self.name!r}: kind must be 'v' or 'sv', not {self.kind!r}")


@dataclass(frozen=True)
class Schema:
    """The columns of a dataset in order, and whether ``bt`` is written as a string.

    A column named ``timestamp`` (RIoTBench's schema files have one) is the record's base
    time: it is never written as an ``e`` entry.
    """

    fields: tuple[Field, ...]
    string_bt: bool = False

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        """The column called ``name`` (KeyError if there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def unit(self, name: str) -> str:
        return self.field(name).unit

    def kind(self, name: str) -> str:
        return self.field(name).kind

    @classmethod
    def load(cls, path: str) -> Schema:
        """Read a RIoTBench schema file: three comma-separated lines, names, units, kinds.

        Blank lines are skipped (``sys-schema-with-annotationfields.txt`` starts with
        one); units are kept as written, trailing spaces included (the FIT ``label``
        column's unit is ``"number "`` in both the schema and the data).
        """
        with open(path, encoding="utf-8") as f:
            rows = [line.rstrip("\r\n") for line in f if line.strip()]
        if len(rows) < 3:
            raise ValueError(
                f"{path}: a schema needs 3 lines (names, units, kinds), got {len(rows)}"
            )
        names, units, kinds = (row.split(",") for row in rows[:3])
        if not len(names) == len(units) == len(kinds):
            raise ValueError(
                f"{path}: {len(names)} names, {len(units)} units and {len(kinds)} kinds"
            )
        return cls(tuple(Field(n.strip(), u, k.strip()) for n, u, k in zip(names, units, kinds)))

    @classmethod
    def infer(cls, lines: Iterable[str]) -> Schema:
        """The schema of SenML lines: names in first-seen order, units, kinds, decimals.

        A numeric field gets fixed ``decimals`` when every value has the same number of
        fraction digits and at least one has a trailing zero that the shortest form would
        drop (so "29.00" comes back as "29.00", while "-9.2997" stays shortest).
        """
        units: dict[str, str] = {}
        kinds: dict[str, str] = {}
        digits: dict[str, set[int]] = {}
        padded: set[str] = set()
        string_bt = False
        count = 0
        for line in lines:
            if not line.strip():
                continue
            count += 1
            text = line.strip()
            parse_line(text)  # validates the line with the same messages
            record = json.loads(text[text.find("{") :])
            string_bt = string_bt or isinstance(record.get("bt"), str)
            for entry in record["e"]:
                name = entry.get("n", record.get("bn"))
                kind = "v" if "v" in entry else "sv"
                if kinds.setdefault(name, kind) != kind:
                    raise ValueError(f"field {name!r} is both 'v' and 'sv'")
                units.setdefault(name, entry.get("u", record.get("bu", "")))
                if kind == "v":
                    raw = str(entry["v"])
                    digits.setdefault(name, set()).add(
                        len(raw.split(".", 1)[1]) if "." in raw else 0
                    )
                    if _shortest(float(raw)) != raw:
                        padded.add(name)
        if not count:
            raise ValueError("no SenML lines to infer a schema from")
        fields = []
        for name, kind in kinds.items():
            seen = digits.get(name, set())
            fixed = next(iter(seen)) if len(seen) == 1 and name in padded else None
            fields.append(Field(name, units[name], kind, fixed or None))
        return cls(tuple(fields), string_bt)


def _shortest(value: float) -> str:
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def _number_text(value: float, decimals: int | None) -> str:
    if decimals is not None and math.isfinite(value):
        text = f"{value:.{decimals}f}"
        if float(text) == value:
            return text
    return _shortest(value)


def to_senml(fields: dict[str, Any], schema: Schema, timestamp: int) -> dict[str, Any]:
    """The SenML record of a tuple: one entry per schema column present in ``fields``.

    Columns absent from ``fields`` are left out (an annotated schema serves tuples not
    yet annotated); a field the schema does not know is a ValueError (it has no unit),
    except ``timestamp``, which is the base time.
    """
    unknown = [n for n in fields if n != TIMESTAMP and n not in schema.names]
    if unknown:
        raise ValueError(f"fields not in the schema: {', '.join(unknown)}")
    entries: list[dict[str, str]] = []
    for col in schema.fields:
        if col.name == TIMESTAMP or col.name not in fields:
            continue
        value = fields[col.name]
        if col.kind == "v":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                value = _number_or_error(value, col.name)
            entries.append(
                {"v": _number_text(float(value), col.decimals), "u": col.unit, "n": col.name}
            )
        else:
            entries.append({"u": col.unit, "n": col.name, "sv": str(value)})
    return {"e": entries, "bt": str(timestamp) if schema.string_bt else int(timestamp)}


def format_line(timestamp: int, fields: dict[str, Any], schema: Schema) -> str:
    """``"<ts>,<SenML JSON>"`` for a tuple, in the sample files' own spelling."""
    body = json.dumps(to_senml(fields, schema, timestamp), separators=(",", ":"))
    return f"{int(timestamp)},{body.replace('/', chr(92) + '/')}"
