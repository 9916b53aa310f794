"""A simulated MQTT network on SimPy: boards on access links around one broker.

The model is split by what each part owns, each module listing its modelling choices:

- :mod:`thingssim.sim.link`: topology, link timing (FIFO serialisation, latency, jitter
  that never reorders), wire sizes, loss, cuts, per-link random streams;
- :mod:`thingssim.sim.broker`: the broker's service queue, routing, QoS 1 downlink,
  sessions and offline queues, retained messages, keepalive and wills, outages;
- :mod:`thingssim.sim.client`: the client (``SimTransport``, the core's
  :class:`runtime.transport.Transport`): QoS 1 uplink, reconnection, handlers, crashes,
  frozen clients.

This module ties them together (:class:`Network`): it makes links and clients, injects
faults (:meth:`Link.down`/:meth:`Link.up`, :meth:`SimTransport.vanish`,
:meth:`SimTransport.freeze`/``thaw``, :meth:`Network.broker_down`/``broker_up``, and
message-level faults through :meth:`Network.intercept`), and keeps the trace and the
counters.  Nothing is a SimPy process: queue timing is computed analytically and each hop
is one scheduled callback (:meth:`thingssim.sim.clock.SimEnvironment.call_at`), so
10,000 clients publishing several times a second for 10 simulated minutes is feasible.

- **Fault injection** (for protocol testing; :meth:`Network.intercept`).  An interceptor
  sees every PUBLISH as it leaves its client (``uplink``), as the broker forwards it to a
  subscriber (``downlink``, wills included) and as a retained message is handed out on
  subscribe (``retained``), and decides that copy's fate: deliver, drop (lost for good),
  duplicate, or delay by some seconds (later messages overtake it: a reordering).  Every
  decision other than deliver is traced.  Without an interceptor the hot paths pay one
  ``is None`` test.
- **Trace.** With ``trace=True`` every packet event is a row (:data:`TRACE_COLUMNS`,
  :meth:`Network.messages_frame`); the counters are kept either way.  Same seed, same
  trace, byte for byte.
"""

from __future__ import annotations

import sys
from itertools import count
from typing import Any, Callable

from runtime.topics import validate_topic

from .broker import Broker, BrokerProfile, Session
from .client import CONNECTED, IDLE, VANISHED, SimTransport
from .clock import SimEnvironment, SimPyClock
from .intercept import DELIVER, DROP, DUPLICATE, Interceptor, delay
from .link import PUBACK_BYTES, PUBLISH_OVERHEAD, Link, LinkProfile, Packet

__all__ = [
    "DELIVER",
    "DROP",
    "DUPLICATE",
    "BrokerProfile",
    "Interceptor",
    "Link",
    "LinkProfile",
    "Network",
    "SimTransport",
    "PUBLISH_OVERHEAD",
    "TRACE_COLUMNS",
    "delay",
]

#: columns of :meth:`Network.messages_frame`
TRACE_COLUMNS = ("time", "event", "client", "topic", "bytes", "qos", "msg_id", "latency",
                 "detail")
_TOPIC_CACHE_LIMIT = 200_000
_BROKER = BrokerProfile()
_LINK = LinkProfile()


class TopicInfo:
    """What the network keeps about a topic published to, so that publishing a QoS 0
    message costs one dictionary lookup: its PUBLISH size without the payload
    (``wire``), its first level (``root``, the broker's index key), and ``quiet``: the
    broker's :attr:`~thingssim.sim.broker.Broker.routes_gen` when the topic was last
    seen to have no subscriber (it still has none while that generation lasts; -1:
    not known)."""

    __slots__ = ("wire", "root", "quiet")

    def __init__(self, wire: int, root: str) -> None:
        self.wire = wire
        self.root = root
        self.quiet = -1


class Network:
    """One broker, access links and clients in a :class:`SimEnvironment`.

    Faults: :meth:`Link.down`/:meth:`Link.up`, :meth:`SimTransport.vanish`,
    :meth:`SimTransport.freeze`/``thaw``, :meth:`broker_down`/:meth:`broker_up`,
    callable at any simulated time, and message-level faults through :meth:`intercept`.
    """

    def __init__(self, env: SimEnvironment, *, seed: int,
                 broker: BrokerProfile = _BROKER, trace: bool = True,
                 retry_interval: float = 5.0, reconnect_interval: float = 1.0,
                 max_queued: int = 1000) -> None:
        if retry_interval <= 0 or reconnect_interval <= 0:
            raise ValueError("retry_interval and reconnect_interval must be > 0")
        self.clock = SimPyClock(env)  # checks env is a SimEnvironment
        self.env = env
        self.seed = seed
        self.retry_interval = float(retry_interval)
        self.reconnect_interval = float(reconnect_interval)
        self._call_at = env.call_at
        self.links: dict[str, Link] = {}
        self.clients: dict[str, SimTransport] = {}
        self._ids = count(1)
        self._tokens = count(1)
        self._rows: list[tuple] | None = [] if trace else None
        self._interceptor: Interceptor | None = None
        #: validated topics published to (the hot path's one lookup per message)
        self._topics: dict[str, TopicInfo] = {}
        #: (time, client, topic, error) of every message handler that raised
        self.handler_errors: list[tuple[float, str, str, str]] = []
        self.broker = Broker(self, broker, max_queued)
        self._arrive_publish = self.broker.arrive_publish  # bound once: the hot path
        # cheap counters, kept even without a trace
        self.published = 0  # publish() calls accepted
        self.delivered = 0  # first copies handed to a client (incl. retained)
        self.duplicates = 0  # further copies of a QoS 1 message
        self.dropped = 0  # PUBLISH copies lost (loss, faults, offline, queue full)
        self.retransmits = 0  # QoS 1 resends (client and broker)
        self.acks_lost = 0  # PUBACKs lost
        self.wills = 0  # wills published
        self.bytes_delivered = 0  # wire bytes of delivered copies (incl. duplicates)

    @property
    def bytes_sent(self) -> int:
        """Wire bytes put on any link direction."""
        return sum(link.bytes_sent for link in self.links.values())

    # ------------------------------------------------------------------ building
    def add_link(self, name: str, profile: LinkProfile = _LINK) -> Link:
        """A new access link named ``name`` (the name seeds its random streams)."""
        if name in self.links:
            raise ValueError(f"link {name!r} exists")
        link = Link(self, name, profile)
        self.links[name] = link
        return link

    def client(self, client_id: str, link: Link | str) -> SimTransport:
        """A client on ``link``; ``connect()`` it.  An id can be reused once its previous
        transport vanished or disconnected (a rebooted board)."""
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        if isinstance(link, str):
            link = self.links[link]
        old = self.clients.get(client_id)
        if old is not None:
            if old._state not in (IDLE, VANISHED):
                raise ValueError(f"client {client_id!r} is still connected")
            old.link.clients.remove(old)
        transport = SimTransport(self, client_id, link)
        self.clients[client_id] = transport
        link.clients.append(transport)
        return transport

    # ------------------------------------------------------------------ faults
    @property
    def broker_is_up(self) -> bool:
        return self.broker.is_up

    def broker_down(self) -> None:
        """Crash the broker (see :mod:`thingssim.sim.broker` for what survives)."""
        if not self.broker.is_up:
            return
        now = self.env._time
        self.broker.crash()
        self._row("broker_down", None, None, None, None, None, None, None)
        for client in self.clients.values():
            if client._state is CONNECTED:
                link = client.link
                wait = link.down_dir.latency if link.is_up else client.keepalive
                self._call_at(now + wait, client._check_broker, client._conn)

    def broker_up(self) -> None:
        """Restart the broker; clients reconnect by themselves."""
        if self.broker.is_up:
            return
        self.broker.restart()
        self._row("broker_up", None, None, None, None, None, None, None)

    def _link_down(self, link: Link) -> None:
        """Its clients go silent; each notices after its keepalive."""
        now = self.env._time
        self.broker.materialize(lambda client, topic: client.link is link)  # to be lost
        self._row("link_down", None, None, None, None, None, None, link.name)
        for client in list(link.clients):
            if client._state is CONNECTED:
                self._call_at(now + client.keepalive, client._check_link, client._conn,
                              link.epoch)
                self.broker.client_silent(client, client._conn)

    def _link_up(self, link: Link) -> None:
        self._row("link_up", None, None, None, None, None, None, link.name)
        for client in list(link.clients):
            if client._state is CONNECTED and not client._frozen:
                self.broker.client_heard(client)

    # ------------------------------------------------------------------ fault injection
    def intercept(self, fn: Interceptor | None) -> Interceptor | None:
        """Install the message-level fault injector ``fn`` (None removes it); returns the
        previous one.

        ``fn(stage, client_id, topic, payload, qos)`` is called for every PUBLISH copy:

        - ``"uplink"``: when client ``client_id`` publishes it (once per ``publish()``
          call, also while the client is offline; not for QoS 1 retransmissions);
        - ``"downlink"``: when the broker routes it to subscriber ``client_id``, at the
          QoS of that copy (once per routed copy, wills included; not for retransmissions
          or for copies queued while the subscriber was offline, which were decided when
          they were routed);
        - ``"retained"``: when the broker hands a retained message to ``client_id`` on
          subscribe.

        It returns that copy's fate:

        - ``None`` or :data:`DELIVER`: as usual;
        - :data:`DROP`: lost for good, never retransmitted (the sender believes it was
          delivered, as with a broker that acknowledges and discards, e.g. an ACL denial);
          traced as ``drop`` with detail ``intercept:<stage>``;
        - :data:`DUPLICATE`: sent twice (on the uplink the broker routes both copies; a
          subscriber sees the second QoS 1 copy as a ``duplicate``); traced as
          ``intercept`` with detail ``duplicate:<stage>``;
        - :func:`delay` ``(seconds)``: sent that much later, so messages sent meanwhile
          overtake it (a reordering); the usual rules apply then (an offline client
          queues or drops it, a broker restart loses it).  A delayed uplink message dies
          with a client that vanishes meanwhile.  Traced as ``intercept`` with detail
          ``delay:<stage>:<seconds>``.

        ``fn`` runs inside the simulation and must not change it (to inject a crash,
        schedule it); it must be deterministic (e.g. its own seeded ``random.Random``) for
        the trace to stay reproducible.  Without an interceptor the hot paths pay one
        ``is None`` test.
        """
        previous, self._interceptor = self._interceptor, fn
        return previous

    def _intercept_row(self, client_id: str, pub: Packet, detail: str) -> None:
        rows = self._rows
        if rows is not None:
            rows.append((self.env._time, "intercept", client_id, pub.topic, pub.wire, pub.qos,
                         pub.id, None, detail))

    # ------------------------------------------------------------------ results
    def counters(self) -> dict[str, int]:
        """The always-kept counters."""
        return {name: getattr(self, name) for name in (
            "published", "delivered", "duplicates", "dropped", "retransmits", "acks_lost",
            "wills", "bytes_sent", "bytes_delivered")}

    def trace_rows(self) -> list[dict[str, Any]]:
        """The trace as dicts (rows are stored as tuples, in :data:`TRACE_COLUMNS` order)."""
        return [dict(zip(TRACE_COLUMNS, row)) for row in self._rows or ()]

    def messages_frame(self) -> Any:
        """The trace as a pandas DataFrame (empty without ``trace=True``).

        Events: ``publish`` (detail ``queued`` if made while disconnected), ``deliver``
        (latency = now - publish time; detail ``retained`` on subscribe),
        ``duplicate``, ``retransmit``, ``drop`` (detail: ``link_down``,
        ``broker_down``, ``offline``, ``disconnected``, ``queue_full``), ``ack_lost``,
        ``will``, ``handler_error`` (a client's message handler raised; detail: the error),
        ``connect``, ``connection_lost``, ``timeout`` (the broker gave up on a
        silent client), ``vanish``, ``disconnect``, ``link_down``/``link_up`` (detail: the
        link), ``broker_down``/``broker_up``, ``freeze``/``thaw`` (a client), and
        ``intercept`` (an interceptor's duplicate or delay; its drops are ``drop`` rows
        with detail ``intercept:<stage>``; drops also say ``vanished`` or
        ``session_ended`` for delayed copies whose client is gone).
        """
        import pandas as pd

        frame = pd.DataFrame.from_records(self._rows or [], columns=list(TRACE_COLUMNS))
        return frame.astype({"bytes": "Int64", "qos": "Int64", "msg_id": "Int64",
                             "latency": "float64"})

    # ------------------------------------------------------------------ plumbing
    def _row(self, event: str, client: str | None, topic: str | None, nbytes: int | None,
             qos: int | None, msg_id: int | None, latency: float | None,
             detail: str | None) -> None:
        rows = self._rows
        if rows is not None:
            rows.append((self.env._time, event, client, topic, nbytes, qos, msg_id, latency,
                         detail))

    def _handler_failed(self, client: str, message: Any, exc: Exception) -> None:
        """A client's message handler raised (its subscription table logged it)."""
        now = self.env._time
        error = f"{type(exc).__name__}: {exc}"
        self.handler_errors.append((now, client, message.topic, error))
        self._row("handler_error", client, message.topic, None, None, None, None, error)

    def _topic_info(self, topic: str) -> TopicInfo:
        """Validate a topic to publish to; what the network keeps about it (cached)."""
        validate_topic(topic)
        # the root interned: the broker finds its held arrivals by identity, not by
        # comparing strings (one of thousands, out of the CPU cache)
        info = TopicInfo(len(topic.encode()) + PUBLISH_OVERHEAD,
                         sys.intern(topic.split("/", 1)[0]))
        if len(self._topics) < _TOPIC_CACHE_LIMIT:
            self._topics[topic] = info
        return info

    def _wire(self, topic: str, payload: bytes) -> int:
        info = self._topics.get(topic)
        return (info if info is not None else self._topic_info(topic)).wire + len(payload)

    def _drop(self, client_id: str, pub: Packet, reason: str) -> None:
        self.dropped += 1
        rows = self._rows
        if rows is not None:
            rows.append((self.env._time, "drop", client_id, pub.topic, pub.wire, pub.qos,
                         pub.id, None, reason))

    def _ack_lost(self, client_id: str, pub: Packet, reason: str) -> None:
        self.acks_lost += 1
        rows = self._rows
        if rows is not None:
            rows.append((self.env._time, "ack_lost", client_id, pub.topic, PUBACK_BYTES, 1,
                         pub.id, None, reason))

    def _control_up(self, client: SimTransport, nbytes: int, fn: Callable[..., Any],
                    args: tuple, fail: Callable[[], Any] | None) -> None:
        """A control packet to the broker: ``fn(*args)`` when served, else ``fail()``."""
        link = client.link
        arrival = link.up_dir.send(self.env._time, nbytes)
        if arrival < 0:
            if fail is not None:
                fail()
            return
        self._call_at(arrival, self.broker.arrive_control, client, link.epoch, fn, args, fail)

    def _control_down(self, client: SimTransport, nbytes: int, fn: Callable[..., Any],
                      args: tuple, fail: Callable[[], Any]) -> None:
        link = client.link
        arrival = link.down_dir.send(self.env._time, nbytes)
        if arrival < 0:
            fail()
            return
        self._call_at(arrival, _control_land, client, link.epoch, fn, args, fail)


def _control_land(client: SimTransport, epoch: int, fn: Callable[..., Any], args: tuple,
                  fail: Callable[[], Any]) -> None:
    if client.link.epoch != epoch:
        fail()
    else:
        fn(*args)


# the session type, for code that inspects the broker
__all__ += ["Session"]
