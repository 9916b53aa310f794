"""The transport interface: MQTT-shaped publish/subscribe, the only way the core talks.

A ``Transport`` is one client connection (of an engine, a dispatcher...).  The core calls
nothing else: no sockets, no threads, no SimPy.  Implementations:

- ``thingssim.sim.network.SimTransport``: a board's client in the SimPy network;
- ``runtime.memory.MemoryTransport``: instant in-process delivery, for unit tests;
- ``runtime.mqtt.MqttTransport``: paho-mqtt on a real broker.

Every callback (message handlers, connection listeners) is invoked on the thread/loop
that drives the core's :class:`~runtime.clock.Clock`, never concurrently.  Which handlers
a message goes to, in which order, and what a raising handler does are the rules of
:mod:`runtime.subscriptions` (``SimTransport`` lets a raising handler's exception through
until it adopts that table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class Message:
    """One MQTT application message."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


MessageHandler = Callable[[Message], None]
ConnectionListener = Callable[[bool], None]  # True: (re)connected, False: connection lost


class Transport(Protocol):
    """One client connection to a broker."""

    client_id: str

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up."""

    def connect(self, will: Message | None = None, keepalive: float = 10.0) -> None:
        """Start connecting (asynchronously); ``will`` is published by the broker if this
        client vanishes without ``disconnect()`` (no packet within 1.5 x ``keepalive``).
        Listeners get ``True`` once connected.  After a lost connection the transport
        reconnects by itself and re-subscribes every filter."""

    def disconnect(self) -> None:
        """Close cleanly: the will is *not* published."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Send a message.  QoS 1 is delivered at least once (kept and retried across
        reconnects); QoS 0 at most once (dropped while disconnected or on loss)."""

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Call ``handler(message)`` for every message matching ``topic_filter``
        (``+``/``#`` wildcards), once per message however many of its filters match.
        Retained messages matching it are delivered first."""

    def unsubscribe(self, topic_filter: str, handler: MessageHandler | None = None) -> None:
        """Remove one handler from ``topic_filter``, or all of them."""

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Be told about every connect (True) and connection loss (False)."""
