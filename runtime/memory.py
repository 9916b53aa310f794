"""MemoryTransport: an in-process broker with instant delivery, for unit tests.

It keeps MQTT's semantics that the core relies on (wildcards, retained messages, wills,
per-topic order) but has no network: delivery happens on the next clock turn.  Tests
that claim to test MQTT use a real broker; tests of the simulated world use
``thingssim.sim.network``.

Dispatch follows :mod:`runtime.subscriptions`, like the other transports: each handler
once per message however many of its filters match, and a handler that raises is
logged (and passed to the broker's ``on_error``) without keeping the others from the
message.  A subscription's retained messages go only to the handler it registered, if it
still holds the filter when they arrive.
"""

from __future__ import annotations

from .clock import Clock
from .subscriptions import ErrorCallback, SubscriptionTable
from .topics import topic_matches
from .transport import ConnectionListener, Message, MessageHandler


class MemoryBroker:
    """``on_error(handler, message, exc)``: told about every handler of every client that
    raises (e.g. to fail a test); errors are logged either way."""

    def __init__(self, clock: Clock, on_error: ErrorCallback | None = None) -> None:
        self.clock = clock
        self.on_error = on_error
        self.clients: list[MemoryTransport] = []
        self.retained: dict[str, Message] = {}
        self.log: list[Message] = []

    def route(self, message: Message) -> None:
        self.log.append(message)
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        for client in list(self.clients):
            if client.connected:
                client._deliver(message)

    def client(self, client_id: str) -> MemoryTransport:
        return MemoryTransport(self, client_id)


class MemoryTransport:
    def __init__(self, broker: MemoryBroker, client_id: str) -> None:
        self.broker = broker
        self.client_id = client_id
        self._connected = False
        self._subs = SubscriptionTable(broker.on_error, owner=client_id)
        self._listeners: list[ConnectionListener] = []
        self._will: Message | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self, will: Message | None = None, keepalive: float = 10.0) -> None:
        self._will = will
        self._connected = True
        if self not in self.broker.clients:
            self.broker.clients.append(self)
        for listener in list(self._listeners):
            self.broker.clock.call_at(self.broker.clock.now(), lambda fn=listener: fn(True))

    def disconnect(self) -> None:
        self._connected = False
        self._will = None

    def vanish(self) -> None:
        """Die without a clean disconnect: the broker publishes the will."""
        self._connected = False
        will, self._will = self._will, None
        if will is not None:
            self.broker.clock.call_at(self.broker.clock.now(), lambda: self.broker.route(will))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if not self._connected:
            return
        message = Message(topic, bytes(payload), qos, retain)
        self.broker.clock.call_at(self.broker.clock.now(), lambda: self.broker.route(message))

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self._subs.add(topic_filter, handler, qos)
        clock = self.broker.clock
        for message in list(self.broker.retained.values()):
            if topic_matches(topic_filter, message.topic):
                clock.call_at(clock.now(), lambda m=message: self._retained(topic_filter,
                                                                            handler, m))

    def unsubscribe(self, topic_filter: str, handler: MessageHandler | None = None) -> None:
        self._subs.remove(topic_filter, handler)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    def _deliver(self, message: Message) -> None:
        self._subs.dispatch(message)

    def _retained(self, topic_filter: str, handler: MessageHandler, message: Message) -> None:
        """A retained message for the subscription that ``handler`` made."""
        self._subs.deliver(message, [h for h in self._subs.handlers_of(topic_filter)
                                     if h is handler or h == handler])
