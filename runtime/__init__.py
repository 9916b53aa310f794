"""thingssim runtime: what runs on a board.

Depends only on the standard library (plus paho-mqtt for the real transport).  The
core never touches a socket or a loop: time comes from an injected :class:`Clock`.
"""

__version__ = "0.1.0"

from .clock import AsyncioClock, Clock, VirtualClock  # noqa: E402
from .program import ProgramHost, ProgramStatus  # noqa: E402
from .snapshot import CaptureError, RestoreError, SnapshotError, register_encoder  # noqa: E402

__all__ = ["AsyncioClock", "CaptureError", "Clock", "ProgramHost", "ProgramStatus",
           "RestoreError", "SnapshotError", "VirtualClock", "__version__", "register_encoder"]
