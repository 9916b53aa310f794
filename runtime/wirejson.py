"""Compact JSON, as every payload and command on the wire is encoded: one encoder, built once.

``json.JSONEncoder.encode`` builds a new C encoder object on every call and tracks the ids
of the containers it enters to detect cycles; a simulation encodes millions of small
messages, so here the C encoder is built once and reused, without the cycle tracking.
The output is byte-identical to ``JSONEncoder(separators=(",", ":"), allow_nan=False)``;
errors are the same too: a cycle (which would now recurse until ``RecursionError``) is
re-encoded by the stock encoder, which reports it as ``ValueError("Circular reference
detected")``.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any, Callable

try:
    from json.encoder import c_make_encoder
except ImportError:  # PyPy: no C accelerator (its JIT makes the pure-Python one fast)
    c_make_encoder = None

__all__ = ["to_json"]

_STOCK = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _build() -> Callable[[Any], str]:
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return _STOCK.encode
    encoder = c_make_encoder(None, _STOCK.default, encode_basestring_ascii, None, ":", ",",
                             False, False, False)

    def to_json(value: Any) -> str:
        """``value`` as compact JSON text (nan and infinities refused)."""
        try:
            return "".join(encoder(value, 0))
        except RecursionError:
            return _STOCK.encode(value)  # a cycle: the stock encoder names it

    return to_json


to_json = _build()
