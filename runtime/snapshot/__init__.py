"""Portable snapshots of running programs: capture, document format, restore."""

from .codecs import Codec, register_codec, register_encoder
from .document import FORMAT, VERSION, dumps, loads
from .errors import CaptureError, RestoreError, SnapshotError

__all__ = ["FORMAT", "VERSION", "Codec", "CaptureError", "RestoreError", "SnapshotError",
           "dumps", "loads", "register_codec", "register_encoder"]
