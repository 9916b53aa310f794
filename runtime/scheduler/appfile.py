"""Application files: an application read from TOML, or from the same document as JSON.

A TOML file (``thingssim schedule URL submit APP.toml``)::

    name = "etl"                        # the application's name
    description = "parse, filter, store"  # optional, ignored

    [[components]]
    name = "parse"                      # a program name: no '/', '+', '#', NUL
    source = "parse.py"                 # a file, relative to this TOML file ...
    # code = '''...'''                  # ... or the program inline (exactly one of the two)
    count = 2                           # instances (>= 0; default 1)
    memory_mb = 30                      # per instance (>= 0; default 40, ThingsJS's figure)
    cpu = 0.2                           # cores per instance (>= 0; default 0.1)
    device = "beaglebone-black"         # only on boards of this type (a board profile)
    capabilities = ["camera"]           # only on boards having all of these
    pin = "b3"                          # only on this engine id
    anti_affinity = true                # no two instances of this component on one board
    state_bytes = 20000                 # expected snapshot size: the cost of moving it

    [[flows]]                           # messages between components (optional)
    source = "parse"                    # the sending component
    target = "filter"                   # the receiving component (may be the same one)
    topic = "etl/parsed"                # a topic to publish on: no '+' or '#'
    rate = 10                           # messages per second per source instance (>= 0)
    size = 300                          # bytes per message (>= 0; default 256)

A source instance's ``rate * size`` bytes/s are shared evenly by the target's instances
(other than itself): a stage's instances split its input, as replicas of one stage do.

The same document as a JSON object (the scheduler's command topic) gives programs inline
with ``code``; ``source`` names a file only where a base directory is known.  ThingsJS's
document is accepted too: ``{"name": ..., "components": {<code_name>: {"source": <the
program>, "count": n, "required_memory": mb}}}`` (its ``source`` is the program itself).

Every error is a :class:`SchedulerError` naming the file (or ``application``), the field
and what is allowed.  Standard library only, plus ``tomli`` before Python 3.11.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from .model import Application, Component, Flow, SchedulerError

APP_KEYS = frozenset({"name", "description", "components", "flows"})
COMPONENT_KEYS = frozenset({"name", "source", "code", "count", "memory_mb", "cpu", "device",
                            "capabilities", "pin", "anti_affinity", "state_bytes"})
FLOW_KEYS = frozenset({"source", "target", "topic", "rate", "size"})
THINGSJS_COMPONENT_KEYS = frozenset({"code_name", "source", "count", "required_memory"})


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise SchedulerError("reading TOML on Python < 3.11 needs tomli: "
                                 "pip install 'thingssim[scheduler]'") from exc
    return tomllib.loads(text)


def load_application(path: str | Path) -> Application:
    """The application in the TOML file ``path`` (sources relative to its folder)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SchedulerError(f"{path}: cannot read the application file: "
                             f"{exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SchedulerError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        doc = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise SchedulerError(f"{path}: not valid TOML: {exc}") from exc
    return application_from_dict(doc, base=path.parent, origin=str(path))


def application_from_dict(doc: Any, *, base: Optional[Path] = None,
                          origin: str = "application") -> Application:
    """The application in ``doc`` (a TOML/JSON document, or ThingsJS's shape)."""
    if not isinstance(doc, Mapping):
        raise SchedulerError(f"{origin}: an application must be a table/object, "
                             f"got {type(doc).__name__}")
    _no_unknown(doc, APP_KEYS, origin)
    name = _name(doc.get("name"), f"{origin}: name")
    raw = doc.get("components")
    if isinstance(raw, Mapping):
        raw = [_from_thingsjs(code_name, spec, origin) for code_name, spec in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise SchedulerError(f"{origin}: components must be a non-empty list of tables "
                             f"([[components]])")
    components: list[Component] = []
    seen: set[str] = set()
    for i, spec in enumerate(raw):
        c = _component(spec, base, f"{origin}: components[{i}]")
        if c.name in seen:
            raise SchedulerError(f"{origin}: components[{i}].name: duplicate component "
                                 f"name {c.name!r}")
        seen.add(c.name)
        components.append(c)
    flows_raw = doc.get("flows", [])
    if not isinstance(flows_raw, list):
        raise SchedulerError(f"{origin}: flows must be a list of tables ([[flows]])")
    flows = tuple(_flow(spec, seen, f"{origin}: flows[{i}]") for i, spec in enumerate(flows_raw))
    return Application(name=name, components=tuple(components), flows=flows)


def application_to_dict(app: Application) -> dict[str, Any]:
    """The JSON document of ``app`` (programs inline): what the command topic carries."""
    comps = []
    for c in app.components:
        spec: dict[str, Any] = {"name": c.name, "code": c.source, "count": c.count,
                                "memory_mb": c.memory_mb, "cpu": c.cpu}
        if c.device is not None:
            spec["device"] = c.device
        if c.capabilities:
            spec["capabilities"] = sorted(c.capabilities)
        if c.pin is not None:
            spec["pin"] = c.pin
        if c.anti_affinity:
            spec["anti_affinity"] = True
        if c.state_bytes:
            spec["state_bytes"] = c.state_bytes
        comps.append(spec)
    doc: dict[str, Any] = {"name": app.name, "components": comps}
    if app.flows:
        doc["flows"] = [{"source": f.source, "target": f.target, "topic": f.topic,
                         "rate": f.rate, "size": f.size} for f in app.flows]
    return doc


# ---------------------------------------------------------------------------- parts
def _from_thingsjs(code_name: Any, spec: Any, origin: str) -> dict[str, Any]:
    where = f"{origin}: components.{code_name}"
    if not isinstance(spec, Mapping):
        raise SchedulerError(f"{where} must be an object {{source, count, required_memory}}")
    _no_unknown(spec, THINGSJS_COMPONENT_KEYS, where)
    if "code_name" in spec and spec["code_name"] != code_name:
        raise SchedulerError(f"{where}.code_name {spec['code_name']!r} differs from its key")
    out: dict[str, Any] = {"name": code_name, "code": spec.get("source")}
    if "count" in spec:
        out["count"] = spec["count"]
    if "required_memory" in spec:
        out["memory_mb"] = spec["required_memory"]
    return out


def _component(spec: Any, base: Optional[Path], where: str) -> Component:
    if not isinstance(spec, Mapping):
        raise SchedulerError(f"{where} must be a table, got {type(spec).__name__}")
    _no_unknown(spec, COMPONENT_KEYS, where)
    name = _name(spec.get("name"), f"{where}.name")
    where = f"{where} ({name!r})"
    source = _program(spec, base, where)
    caps = spec.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) and c for c in caps):
        raise SchedulerError(f"{where}.capabilities must be a list of non-empty strings, "
                             f"got {caps!r}")
    device = spec.get("device")
    if device is not None and (not isinstance(device, str) or not device):
        raise SchedulerError(f"{where}.device must be a board type name, got {device!r}")
    pin = spec.get("pin")
    if pin is not None:
        _name(pin, f"{where}.pin")
    anti = spec.get("anti_affinity", False)
    if not isinstance(anti, bool):
        raise SchedulerError(f"{where}.anti_affinity must be true or false, got {anti!r}")
    return Component(
        name=name, source=source,
        count=int(_number(spec, "count", 1, where, integer=True)),
        memory_mb=_number(spec, "memory_mb", 40.0, where),
        cpu=_number(spec, "cpu", 0.1, where),
        device=device, capabilities=frozenset(caps), pin=pin, anti_affinity=anti,
        state_bytes=int(_number(spec, "state_bytes", 0, where, integer=True)))


def _program(spec: Mapping[str, Any], base: Optional[Path], where: str) -> str:
    """The program's source: inline ``code`` or the file ``source`` names."""
    has_code, has_source = "code" in spec, "source" in spec
    if has_code == has_source:
        raise SchedulerError(f"{where}: give exactly one of source (a file) and "
                             f"code (the program inline)")
    if has_code:
        code = spec["code"]
        if not isinstance(code, str):
            raise SchedulerError(f"{where}.code must be the program's text, got "
                                 f"{type(code).__name__}")
        return code
    rel = spec["source"]
    if not isinstance(rel, str) or not rel:
        raise SchedulerError(f"{where}.source must be a file name, got {rel!r}")
    if base is None:
        raise SchedulerError(f"{where}.source names a file ({rel!r}), but this document has "
                             f"no folder to find it in: give the program inline as code")
    path = base / rel
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SchedulerError(f"{where}.source: no such file {str(path)!r}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SchedulerError(f"{where}.source: cannot read {str(path)!r}: {exc}") from exc


def _flow(spec: Any, components: set[str], where: str) -> Flow:
    if not isinstance(spec, Mapping):
        raise SchedulerError(f"{where} must be a table, got {type(spec).__name__}")
    _no_unknown(spec, FLOW_KEYS, where)
    ends = []
    for end in ("source", "target"):
        value = spec.get(end)
        if value not in components:
            raise SchedulerError(f"{where}.{end}: {value!r} is not a component of this "
                                 f"application (components: {', '.join(sorted(components))})")
        ends.append(value)
    topic = spec.get("topic")
    if not isinstance(topic, str) or not topic or any(c in topic for c in "+#\0"):
        raise SchedulerError(f"{where}.topic must be a non-empty topic without '+', '#' "
                             f"(a topic to publish on), got {topic!r}")
    return Flow(source=ends[0], target=ends[1], topic=topic,
                rate=_number(spec, "rate", 1.0, where),
                size=int(_number(spec, "size", 256, where, integer=True)))


def _no_unknown(spec: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in spec if k not in allowed)
    if unknown:
        raise SchedulerError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "/+#\0"):
        raise SchedulerError(f"{what} must be a non-empty name without '/', '+', "
                             f"'#' (it becomes a topic level), got {value!r}")
    return value


def _number(spec: Mapping[str, Any], field: str, default: float, where: str, *,
            integer: bool = False) -> float:
    value = spec.get(field, default)
    kind = "a whole number" if integer else "a number"
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (integer and not float(value).is_integer())
            or not math.isfinite(value) or value < 0):
        raise SchedulerError(f"{where}.{field} must be {kind} >= 0, got {value!r}")
    return float(value)
