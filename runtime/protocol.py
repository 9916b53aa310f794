"""The ThingsJS wire protocol: topic names, message encoding, requests, replies, errors.

Requests are ``{ctrl, kwargs, request_id, reply_to}``; replies are
``{reply_id, payload}`` or, added by thingssim, ``{reply_id, error: {code, message}}``.
All payloads are single-encoded UTF-8 JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .wirejson import to_json

# ---------------------------------------------------------------- topics
ENGINE_REGISTRY = "engine-registry"
ENGINE_REGISTRY_BCAST = "engine-registry/bcast"
#: retained, one per engine; also the engine's last-will topic
ENGINE_STATE_PREFIX = "engine-registry/state/"
PROGRAM_MONITOR = "program-monitor"
PROGRAM_MONITOR_BCAST = "program-monitor/bcast"
#: retained, one per instance: ``{engine, epoch, code_name}`` of the copy that owns it
OWNER_PREFIX = "program-owner/"
#: the ``eventName`` of a program report whose program ended because its engine was shutting
#: down (``Exited``, not a user's kill nor the program's own end): a scheduler re-places it
STOPPED_BY_ENGINE = "engine-stop"


def engine_state_topic(engine_id: str) -> str:
    return ENGINE_STATE_PREFIX + engine_id


def engine_topic(engine_id: str, leaf: str) -> str:
    """``<engine>/cmd``, ``<engine>/resource``, ``<engine>/console``."""
    return f"{engine_id}/{leaf}"


def migrate_topic(target: str, source: str) -> str:
    """``<target>/migrate/<source>``: migration steps, from one engine to another."""
    return f"{target}/migrate/{source}"


def owner_topic(instance_id: str) -> str:
    return OWNER_PREFIX + instance_id


def program_topic(code_name: str, instance_id: str, leaf: str) -> str:
    """``<code>/<instance>/cmd|console|resource|snapshots``."""
    return f"{code_name}/{instance_id}/{leaf}"


def check_name(kind: str, name: Any) -> str:
    """Ids and code names become topic levels: no '/', '+', '#' or NUL."""
    if not isinstance(name, str) or not name or any(c in name for c in "/+#\0"):
        raise ProtocolError(BAD_REQUEST, f"{kind} must be a non-empty string without "
                            f"'/', '+', '#': {name!r}")
    return name


# ---------------------------------------------------------------- errors
BAD_REQUEST = "bad_request"
UNKNOWN_CTRL = "unknown_ctrl"
NOT_FOUND = "not_found"
BAD_STATE = "bad_state"
BAD_PROGRAM = "bad_program"
PROGRAM_CRASHED = "program_crashed"
SNAPSHOT_FAILED = "snapshot_failed"
RESTORE_FAILED = "restore_failed"
MIGRATION_FAILED = "migration_failed"
NO_RESOURCES = "no_resources"
MIGRATING = "migrating"  # the instance is in a migration: ask again when it has ended
STALE_EPOCH = "stale_epoch"  # the command names an epoch this copy does not have
FORBIDDEN = "forbidden"  # the sender may not do this here (migrate_peers)
TIMEOUT = "timeout"
INTERNAL = "internal"


class ProtocolError(Exception):
    """A failure to report to the requester as ``{code, message}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------- encoding


def encode(value: Any) -> bytes:
    return to_json(value).encode("utf-8")


class StampedEncoder:
    """Encodes ``{"timestamp": t, **body}`` byte for byte as :func:`encode` would, but
    re-encodes ``body`` only when it differs from the previous one: a resource report
    repeats the same body second after second, and with thousands of boards encoding
    them was the largest single cost of a simulation."""

    __slots__ = ("_body", "_tail")

    def __init__(self) -> None:
        self._body: dict | None = None
        self._tail = b"}"

    def encode(self, timestamp: Any, body: dict) -> bytes:
        if type(timestamp) is not float or not math.isfinite(timestamp) or "timestamp" in body:
            return encode({"timestamp": timestamp, **body})
        if body is not self._body and (body != self._body or self._body is None):
            self._body = body
            self._tail = b"," + encode(body)[1:] if body else b"}"
        return b'{"timestamp":' + float.__repr__(timestamp).encode() + self._tail


def decode(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(BAD_REQUEST, f"payload is not UTF-8 JSON: {exc}") from None
    except RecursionError:  # hostile nesting: [[[[...]]]]
        raise ProtocolError(BAD_REQUEST, "payload is nested too deeply") from None


@dataclass
class Request:
    ctrl: str
    kwargs: dict = field(default_factory=dict)
    request_id: str | None = None
    reply_to: str | None = None


def parse_request(data: bytes) -> Request:
    """Validate a command message; raises ProtocolError(bad_request) with the reason."""
    msg = decode(data)
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, "a command must be a JSON object")
    ctrl = msg.get("ctrl")
    if not isinstance(ctrl, str) or not ctrl:
        raise ProtocolError(BAD_REQUEST, "missing or non-string 'ctrl'")
    kwargs = msg.get("kwargs")
    if kwargs is None:
        kwargs = {}
    request_id, reply_to = msg.get("request_id"), msg.get("reply_to")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(BAD_REQUEST, "'request_id' must be a string")
    if reply_to is not None and (not isinstance(reply_to, str) or not reply_to
                                 or "+" in reply_to or "#" in reply_to):
        raise ProtocolError(BAD_REQUEST, "'reply_to' must be a topic name")
    if not isinstance(kwargs, dict):
        raise ProtocolError(BAD_REQUEST, "'kwargs' must be an object")
    return Request(ctrl, kwargs, request_id, reply_to)


def reply(request_id: str, payload: Any) -> dict:
    return {"reply_id": request_id, "payload": payload}


def error_reply(request_id: str | None, code: str, message: str) -> dict:
    return {"reply_id": request_id, "error": {"code": code, "message": message}}


def require(kwargs: dict, key: str, kind: type | tuple = str) -> Any:
    """A mandatory command argument of the right type, or a bad_request error."""
    value = kwargs.get(key)
    if value is None or not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError(BAD_REQUEST, f"missing or malformed argument {key!r}")
    return value
