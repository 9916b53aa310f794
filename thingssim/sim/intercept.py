"""Message-level fault injection: what an interceptor may decide for one PUBLISH copy.

See :meth:`thingssim.sim.network.Network.intercept` for where it is consulted; the broker
(downlink, retained) and the client (uplink) apply the decision.
"""

from __future__ import annotations

from typing import Any, Callable

#: interceptor actions; ``delay(seconds)`` is the fourth
DELIVER = "deliver"
DROP = "drop"
DUPLICATE = "duplicate"
#: ``fn(stage, client_id, topic, payload, qos) -> action``
Interceptor = Callable[[str, str, str, bytes, int], Any]


def delay(seconds: float) -> tuple[str, float]:
    """The interceptor action "deliver this copy ``seconds`` later"."""
    seconds = float(seconds)
    if not seconds >= 0:
        raise ValueError(f"delay must be >= 0, got {seconds!r}")
    return ("delay", seconds)


def action(decision: Any) -> tuple[str, float]:
    """An interceptor's return value as ``(kind, seconds)``; a clear error otherwise."""
    if decision is None or decision == DELIVER:
        return DELIVER, 0.0
    if decision == DROP:
        return DROP, 0.0
    if decision == DUPLICATE:
        return DUPLICATE, 0.0
    if isinstance(decision, tuple) and len(decision) == 2 and decision[0] == "delay":
        return "delay", float(decision[1])
    raise ValueError(f"interceptor returned {decision!r}; expected None, {DELIVER!r}, "
                     f"{DROP!r}, {DUPLICATE!r} or delay(seconds)")


__all__ = ["DELIVER", "DROP", "DUPLICATE", "Interceptor", "action", "delay"]
