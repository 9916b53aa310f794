"""The snapshot document: versioned, self-describing JSON carrying the program's source.

Layout (version 1)::

    {"format": "thingssim-snapshot", "version": 1,
     "created_by": {"thingssim": ..., "python": ..., "machine": ...},
     "program": {"code_name", "instance_id", "filename", "source", "source_sha256"},
     "status": "Running" | "Paused", "time": <program clock>,
     "loop": {"next_seq", "next_timer_id", "events_run"[, "cpu_time"]},
     "globals": <ref>, "timers": [...], "subscriptions": [...], "messages": [...],
     "shapes": [[key, ...], ...], "objects": [<entry>, ...],
     "modules": {"random": {"seed": <int> | "state": <ref>, "changed": {...},
                            "removed": [...]}}}

``modules`` (optional) is the hidden state of the program's own copies of stateful
standard modules (see ``modules.py``); a snapshot without it restores as before.

Files may be gzip-compressed; ``loads`` recognises both.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import math
import platform
from typing import Any

from .errors import RestoreError

FORMAT = "thingssim-snapshot"
VERSION = 1
#: what a snapshot can say about its program: only live programs are captured
STATUSES = ("Running", "Paused")
_REQUIRED = {"program": dict, "time": (int, float), "loop": dict, "globals": dict,
             "timers": list, "subscriptions": list, "messages": list, "shapes": list,
             "objects": list}


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def producer() -> dict:
    from .. import __version__

    return {"thingssim": __version__, "python": platform.python_version(),
            "machine": platform.machine()}


def dumps(doc: dict, compress: bool = False) -> bytes:
    """Serialise a snapshot document (compact JSON, optionally gzip)."""
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def loads(data: bytes | str) -> dict:
    """Parse and validate a snapshot; raises RestoreError with a clear reason."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RestoreError(f"corrupt or truncated compressed snapshot: {exc}") from exc
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RestoreError(f"not a snapshot, or truncated: invalid JSON ({exc})") from exc
    validate(doc)
    return doc


def validate(doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RestoreError(f"not a thingssim snapshot (missing \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if version != VERSION:
        raise RestoreError(f"unsupported snapshot version {version!r}: this thingssim reads "
                           f"version {VERSION}")
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind):
            raise RestoreError(f"corrupt snapshot: field {key!r} is missing or malformed")
    if doc.get("status") not in STATUSES:
        raise RestoreError(f"corrupt snapshot: status must be {' or '.join(map(repr, STATUSES))}"
                           f", not {doc.get('status')!r}")
    time = doc["time"]
    if isinstance(time, bool) or not math.isfinite(time) or time < 0:
        raise RestoreError(f"corrupt snapshot: time (the program clock) must be a finite "
                           f"number >= 0, not {time!r}")
    for key in ("next_seq", "next_timer_id", "events_run"):
        value = doc["loop"].get(key, 0 if key == "events_run" else None)  # that one: optional
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RestoreError(f"corrupt snapshot: loop.{key} must be an integer >= 0, "
                               f"not {value!r}")
    cpu = doc["loop"].get("cpu_time", 0.0)  # optional: programs that read things.cpu_time()
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu) \
            or cpu < 0:
        raise RestoreError(f"corrupt snapshot: loop.cpu_time must be a finite number >= 0, "
                           f"not {cpu!r}")
    program = doc["program"]
    for key in ("code_name", "instance_id", "source", "source_sha256"):
        if not isinstance(program.get(key), str):
            raise RestoreError(f"corrupt snapshot: program.{key} is missing or malformed")
    if source_hash(program["source"]) != program["source_sha256"]:
        raise RestoreError("tampered snapshot: the program source does not match its "
                           "recorded SHA-256")


def _signed_bytes(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign(doc: dict, key: bytes) -> dict:
    """The document with ``signature``: HMAC-SHA256 (shared key) over its canonical JSON.

    A restoring engine with the same key accepts only signed snapshots, so a client that
    can reach an engine's topics still cannot make it run code of its own.
    """
    digest = hmac.new(key, _signed_bytes(doc), hashlib.sha256).hexdigest()
    return {**doc, "signature": {"alg": "hmac-sha256", "value": digest}}


def verify(doc: dict, key: bytes) -> None:
    """Raise RestoreError unless ``doc`` carries a valid signature for ``key``."""
    signature = doc.get("signature")
    if not isinstance(signature, dict) or signature.get("alg") != "hmac-sha256" \
            or not isinstance(signature.get("value"), str):
        raise RestoreError("unsigned snapshot: this engine only restores signed snapshots")
    expected = hmac.new(key, _signed_bytes(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature["value"]):
        raise RestoreError("bad snapshot signature: tampered, or signed with another key")
