"""A simulated MQTT network on SimPy: boards on access links around one broker.

It implements :class:`runtime.transport.Transport` (``SimTransport``) so the
transport-independent core runs unchanged on simulated boards.  Nothing here is a SimPy
process: queue timing is computed analytically (a ``free_at`` time per link direction and
for the broker) and each hop is one scheduled callback, so 10,000 clients publishing once
a second for 10 simulated minutes is feasible.

Modelling choices (what an experiment can rely on):

- **Topology.** One broker; each board has one access :class:`Link` with two directions
  (uplink board->broker, downlink broker->board); several clients may share a link.
- **Link timing.** Each direction is a FIFO serialisation queue: a packet starts when the
  direction is free, takes ``wire_bytes * 8 / bandwidth`` to transmit, then ``latency`` plus
  a jitter drawn uniformly from ``[0, jitter)``.  A packet never arrives before the one sent
  before it in the same direction (jitter cannot reorder, like netem with a rate limit).
  Bandwidth is MQTT goodput: TCP/IP framing is not counted.
- **Wire size.** A PUBLISH is ``len(topic as UTF-8) + len(payload) + PUBLISH_OVERHEAD``
  bytes (7: fixed header byte, 2-byte remaining length, 2-byte topic length, 2-byte
  packet id).  PUBACK is 4 bytes; CONNECT/CONNACK/SUBSCRIBE/UNSUBSCRIBE/DISCONNECT have
  the small sizes below.
- **Loss.** Each PUBLISH or PUBACK transmission is lost with the link's ``loss``
  probability (it still occupies the link).  Control packets (CONNECT, SUBSCRIBE...) are
  never lost at random (TCP would retry them); they are lost only to faults.
- **Broker.** A FIFO single server: every inbound packet (PUBLISH, PUBACK, CONNECT,
  SUBSCRIBE...) costs ``service_time``; routing and fan-out happen when service ends.
  The fan-out itself costs nothing extra.
- **Routing.** ``runtime.topics.topic_matches`` wildcards.  One copy per client however
  many of its filters match (MQTT 3.1.1 allows it), at QoS ``min(publish qos, highest
  matching subscription qos)``; the client calls the handlers of every matching filter,
  each handler once.  Publishers receive their own messages if subscribed.  Per-topic
  FIFO from one publisher to one subscriber holds while nothing is lost (a lost QoS 1
  message is retransmitted after later ones); on reconnect, unacknowledged QoS 1
  messages are resent in the order first sent (MQTT 3.1.1 section 4.6).
- **QoS.** QoS 0: at most once, lost on a lossy hop, a fault, or when the receiver is
  disconnected.  QoS 1: the sender (client on the uplink, broker on the downlink) keeps
  the message until its PUBACK arrives and retransmits it every ``retry_interval``
  (default 5 s) while connected, and on reconnect; a lost PUBACK therefore gives the
  receiver a duplicate (at least once).  The broker forwards every copy it receives.
  Deliveries are traced as ``deliver`` (first copy to that client) or ``duplicate``.
  QoS 2 is not modelled.
- **Sessions.** An explicit ``connect()`` starts a clean session; it survives connection
  losses (link faults, keepalive timeouts, broker outages with persistence) and ends at
  ``disconnect()`` or the next explicit ``connect()`` (MQTT 5 clean start with an unlimited
  session expiry).  While its client is offline the broker queues QoS 1 messages for it
  (at most ``max_queued``, default 1000 like Mosquitto; more are dropped) and drops
  QoS 0.  On every (re)connect the client re-sends its whole subscription set (filters
  unsubscribed while offline are removed), receives the matching retained messages again,
  retransmits its unacknowledged QoS 1 and then sends the QoS 1 it queued while offline;
  the broker resends its unacknowledged and queued QoS 1.  SUBACK and PINGREQ are not
  simulated (nothing waits for them).
- **Retained.** A retained PUBLISH replaces the topic's retained message (an empty payload
  clears it) and is forwarded as a normal message (retain flag cleared).  Each
  ``subscribe()`` call gets the matching retained messages with ``retain=True``, handed
  only to the handler it registered (a re-subscription on reconnect: to that filter's
  handlers); they are traced as ``deliver`` with detail ``retained``, never as duplicates.
- **Keepalive and wills.** A live, connected client is assumed to be heard continuously
  (its PINGREQs are not simulated).  It goes silent when it vanishes, disconnects over a
  dead link, or its link goes down.  The broker closes a silent connection ``1.5 *
  keepalive`` after it last heard from it and then publishes the will (a reconnect first
  cancels it).  A client notices a dead link after ``keepalive`` seconds of continuous
  outage (a shorter blip is ridden out; QoS 0 sent meanwhile is lost), and a broker crash
  one downlink latency later (the connection is reset; ``keepalive`` if its link is down).
  It then tells its listeners ``False`` and retries connecting every
  ``reconnect_interval`` (default 1 s); an attempt fails at once when the link or broker is
  down.  A clean ``disconnect()`` publishes no will.
- **Broker outage.** ``broker_down()`` loses everything in flight to or queued inside the
  broker and every connection; no wills are published for them.  With
  ``persistence=True`` sessions (subscriptions, queued and unacknowledged QoS 1) and
  retained messages survive, like Mosquitto with persistence, so QoS 1 is never lost;
  with ``persistence=False`` the broker restarts empty.
- **Fault injection** (for protocol testing; :meth:`Network.intercept`).  An interceptor
  sees every PUBLISH as it leaves its client (``uplink``), as the broker forwards it to a
  subscriber (``downlink``, wills included) and as a retained message is handed out on
  subscribe (``retained``), and decides that copy's fate: deliver, drop (lost for good),
  duplicate, or delay by some seconds (later messages overtake it: a reordering).  Every
  decision other than deliver is traced.  Without an interceptor the hot paths pay one
  ``is None`` test.
- **Frozen clients** (:meth:`SimTransport.freeze`/``thaw``: a SIGSTOPped process).  A
  frozen client neither sends nor handles anything; what reaches it waits (unacknowledged)
  in its socket, and what it is asked to send leaves at ``thaw()``.  The broker hears
  nothing from it, so after ``1.5 * keepalive`` it closes the connection and publishes the
  will; a thawed client finds its connection closed and reconnects (its session, with the
  unacknowledged QoS 1, survives).  Partitions are :meth:`Link.down`/:meth:`Link.up`.
- **Randomness.** Each link direction has its own ``random.Random`` seeded from
  ``(seed, link name, direction)``: the same seed gives identical traces, and adding a
  link does not change the other links' streams.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from heapq import heappush
from itertools import count
from typing import Any, Callable

import simpy

from runtime.topics import topic_matches, validate_filter, validate_topic
from runtime.transport import ConnectionListener, Message, MessageHandler

from .clock import SimPyClock, _Call

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

#: bytes added to topic + payload for a PUBLISH (fixed header 1, remaining length 2,
#: topic length 2, packet id 2)
PUBLISH_OVERHEAD = 7
PUBACK_BYTES = 4
CONNECT_OVERHEAD = 14  # fixed header, protocol name/level, flags, keepalive, id length
CONNACK_BYTES = 4
SUBSCRIBE_OVERHEAD = 5  # + 3 per filter (length, options) + the filter
UNSUBSCRIBE_OVERHEAD = 5
DISCONNECT_BYTES = 2

#: columns of :meth:`Network.messages_frame`
TRACE_COLUMNS = ("time", "event", "client", "topic", "bytes", "qos", "msg_id", "latency",
                 "detail")

_NORMAL = 1  # simpy.events.NORMAL
_LOST = -1.0  # _tx results
_DOWN = -2.0
_ROUTE_CACHE_LIMIT = 100_000

#: interceptor actions (see :meth:`Network.intercept`); ``delay(seconds)`` is the fourth
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


def _action(action: Any) -> tuple[str, float]:
    if action is None or action == DELIVER:
        return DELIVER, 0.0
    if action == DROP:
        return DROP, 0.0
    if action == DUPLICATE:
        return DUPLICATE, 0.0
    if isinstance(action, tuple) and len(action) == 2 and action[0] == "delay":
        return "delay", float(action[1])
    raise ValueError(f"interceptor returned {action!r}; expected None, {DELIVER!r}, "
                     f"{DROP!r}, {DUPLICATE!r} or delay(seconds)")


# client states
IDLE = "idle"
CONNECTING = "connecting"
CONNECTED = "connected"
LOST = "lost"
VANISHED = "vanished"


@dataclass(frozen=True)
class LinkProfile:
    """One access link, the same in both directions.

    ``latency``: one-way propagation (s); ``bandwidth``: bits per second; ``jitter``: extra
    delay uniform in ``[0, jitter)`` s (never reorders); ``loss``: probability that a
    PUBLISH or PUBACK is lost on this hop.
    """

    latency: float = 0.001
    bandwidth: float = 100e6
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        if not self.bandwidth > 0:
            raise ValueError("bandwidth must be > 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")


@dataclass(frozen=True)
class BrokerProfile:
    """The broker: ``service_time`` s of CPU per inbound packet (FIFO single server; 0 is
    an infinitely fast broker; ~50e-6 matches Mosquitto's ~20k msg/s on the development
    machine), and whether sessions and retained messages survive an outage."""

    service_time: float = 0.0
    persistence: bool = True

    def __post_init__(self) -> None:
        if self.service_time < 0:
            raise ValueError("service_time must be >= 0")


class _Pub:
    """One application message as published (copies and retransmissions share it)."""

    __slots__ = ("id", "topic", "payload", "qos", "retain", "t0", "publisher", "wire",
                 "seen", "m0", "m1")

    def __init__(self, msg_id: int, topic: str, payload: bytes, qos: int, retain: bool,
                 t0: float, publisher: str) -> None:
        self.id = msg_id
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.t0 = t0
        self.publisher = publisher
        self.wire = len(topic.encode()) + len(payload) + PUBLISH_OVERHEAD
        # clients that got a copy: only QoS 1 can be duplicated
        self.seen: set[str] | None = set() if qos else None
        self.m0: Message | None = None
        self.m1: Message | None = None


class _Direction:
    """One direction of a link: a FIFO serialisation queue with its own random stream."""

    __slots__ = ("link", "free_at", "last_arrival", "rng", "latency", "bandwidth",
                 "jitter", "loss")

    def __init__(self, link: Link, rng: random.Random) -> None:
        self.link = link
        self.rng = rng
        self.free_at = 0.0
        self.last_arrival = 0.0


class Link:
    """A board's access link (made by :meth:`Network.add_link`)."""

    def __init__(self, network: Network, name: str, profile: LinkProfile) -> None:
        self.network = network
        self.name = name
        self.up_dir = _Direction(self, random.Random(f"thingssim:{network.seed}:{name}:up"))
        self.down_dir = _Direction(self, random.Random(f"thingssim:{network.seed}:{name}:down"))
        self.profile = profile
        self.set_profile(profile)
        self.is_up = True
        self.epoch = 0  # +1 at each down(): packets in flight then are lost
        self.clients: list[SimTransport] = []

    def set_profile(self, profile: LinkProfile) -> None:
        """Change the link's characteristics from now on (packets in flight keep theirs)."""
        self.profile = profile
        for d in (self.up_dir, self.down_dir):
            d.latency = profile.latency
            d.bandwidth = float(profile.bandwidth)
            d.jitter = profile.jitter
            d.loss = profile.loss

    def down(self) -> None:
        """Cut the link: nothing crosses, packets in flight are lost."""
        if not self.is_up:
            return
        net = self.network
        now = net.env._now
        self.is_up = False
        self.epoch += 1
        for d in (self.up_dir, self.down_dir):  # the interface queue is flushed
            d.free_at = min(d.free_at, now)
            d.last_arrival = min(d.last_arrival, now)
        net._row("link_down", None, None, None, None, None, None, self.name)
        for client in list(self.clients):
            if client._state is CONNECTED:
                net._at(now + client.keepalive, client._check_link, client._conn, self.epoch)
                net._client_silent(client, client._conn)

    def up(self) -> None:
        """Restore the link; clients that have not noticed the outage carry on."""
        if self.is_up:
            return
        net = self.network
        self.is_up = True
        net._row("link_up", None, None, None, None, None, None, self.name)
        for client in list(self.clients):
            if client._state is CONNECTED and not client._frozen:
                net._client_heard(client)

    def __repr__(self) -> str:
        return f"<Link {self.name} {'up' if self.is_up else 'down'}>"


class _Session:
    """The broker's state for one client id."""

    __slots__ = ("client_id", "client", "online", "token", "will", "keepalive", "subs",
                 "inflight", "queue", "next_pid", "last_heard", "silent_since", "retry_at")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.client: SimTransport | None = None
        self.online = False
        self.token = 0
        self.will: Message | None = None
        self.keepalive = 10.0
        self.subs: dict[str, int] = {}
        # pid -> [pub, qos, target, last sent]; ordered by last send
        self.inflight: dict[int, list] = {}
        self.queue: deque = deque()  # (pub, qos, target) while offline
        self.next_pid = 1
        self.last_heard = 0.0
        self.silent_since: float | None = None
        self.retry_at: float | None = None


class Network:
    """One broker, access links and clients in a SimPy environment.

    Faults: :meth:`Link.down`/:meth:`Link.up`, :meth:`SimTransport.vanish`,
    :meth:`SimTransport.freeze`/``thaw``, :meth:`broker_down`/:meth:`broker_up`,
    callable at any simulated time, and message-level faults through :meth:`intercept`.
    """

    def __init__(self, env: simpy.Environment, *, seed: int,
                 broker: BrokerProfile = BrokerProfile(), trace: bool = True,
                 retry_interval: float = 5.0, reconnect_interval: float = 1.0,
                 max_queued: int = 1000) -> None:
        if retry_interval <= 0 or reconnect_interval <= 0:
            raise ValueError("retry_interval and reconnect_interval must be > 0")
        self.env = env
        self.seed = seed
        self.broker = broker
        self.retry_interval = float(retry_interval)
        self.reconnect_interval = float(reconnect_interval)
        self.max_queued = max_queued
        self.clock = SimPyClock(env)
        self._queue = env._queue
        self._eid = env._eid
        self.links: dict[str, Link] = {}
        self.clients: dict[str, SimTransport] = {}
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Pub] = {}
        self._exact: dict[str, dict[_Session, int]] = {}
        #: wildcard filters by their first level ("" for those starting with + or #), so
        #: routing a topic scans only the filters that can match it (e.g. the thousands of
        #: engines' "<engine>/migrate/+" are never scanned for "sensors/t")
        self._wild: dict[str, dict[str, dict[_Session, int]]] = {}
        self._routes: dict[str, list[tuple[_Session, int]]] = {}
        self._broker_up = True
        self._broker_epoch = 0
        self._broker_free_at = 0.0
        self._service = float(broker.service_time)
        self._ids = count(1)
        self._tokens = count(1)
        self._rows: list[tuple] | None = [] if trace else None
        self._interceptor: Interceptor | None = None
        # cheap counters, kept even without a trace
        self.published = 0  # publish() calls accepted
        self.delivered = 0  # first copies handed to a client (incl. retained)
        self.duplicates = 0  # further copies of a QoS 1 message
        self.dropped = 0  # PUBLISH copies lost (loss, faults, offline, queue full)
        self.retransmits = 0  # QoS 1 resends (client and broker)
        self.acks_lost = 0  # PUBACKs lost
        self.wills = 0  # wills published
        self.bytes_sent = 0  # wire bytes put on any link direction
        self.bytes_delivered = 0  # wire bytes of delivered copies (incl. duplicates)

    # ------------------------------------------------------------------ building
    def add_link(self, name: str, profile: LinkProfile = LinkProfile()) -> Link:
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
        return self._broker_up

    def broker_down(self) -> None:
        """Crash the broker (see the module docstring for what survives)."""
        if not self._broker_up:
            return
        now = self.env._now
        self._broker_up = False
        self._broker_epoch += 1  # invalidates in-flight packets, timers, service queue
        self._broker_free_at = now
        self._row("broker_down", None, None, None, None, None, None, None)
        for session in self._sessions.values():
            session.online = False
            session.silent_since = None
            session.retry_at = None
        if not self.broker.persistence:
            self._sessions.clear()
            self._retained.clear()
            self._exact.clear()
            self._wild.clear()
            self._routes.clear()
        for client in self.clients.values():
            if client._state is CONNECTED:
                link = client.link
                delay = link.down_dir.latency if link.is_up else client.keepalive
                self._at(now + delay, client._check_broker, client._conn)

    def broker_up(self) -> None:
        """Restart the broker; clients reconnect by themselves."""
        if self._broker_up:
            return
        self._broker_up = True
        self._row("broker_up", None, None, None, None, None, None, None)

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

    def _intercept_row(self, client_id: str, pub: _Pub, detail: str) -> None:
        rows = self._rows
        if rows is not None:
            rows.append((self.env._now, "intercept", client_id, pub.topic, pub.wire, pub.qos,
                         pub.id, None, detail))

    def _intercept_up(self, client: SimTransport, pub: _Pub) -> None:
        """``publish()`` with an interceptor installed."""
        kind, seconds = _action(self._interceptor("uplink", client.client_id, pub.topic,
                                                  pub.payload, pub.qos))
        if kind is DELIVER:
            client._post(pub, True)
        elif kind is DROP:
            self._row("publish", client.client_id, pub.topic, pub.wire, pub.qos, pub.id,
                      None, None)
            self._drop(client.client_id, pub, "intercept:uplink")
        elif kind is DUPLICATE:
            client._post(pub, True)
            self._intercept_row(client.client_id, pub, "duplicate:uplink")
            client._post(pub, False)
        else:
            self._row("publish", client.client_id, pub.topic, pub.wire, pub.qos, pub.id,
                      None, None)
            self._intercept_row(client.client_id, pub, f"delay:uplink:{seconds:g}")
            self._at(self.env._now + seconds, self._release_up, client, pub, client._life)

    def _release_up(self, client: SimTransport, pub: _Pub, life: int) -> None:
        if client._life != life:
            self._drop(client.client_id, pub, "vanished")
        else:
            client._post(pub, False)

    def _intercept_down(self, stage: str, session: _Session, pub: _Pub, qos: int,
                        target: Any) -> None:
        """``_forward`` with an interceptor installed."""
        kind, seconds = _action(self._interceptor(stage, session.client_id, pub.topic,
                                                  pub.payload, qos))
        if kind is DELIVER:
            self._forward(session, pub, qos, target)
        elif kind is DROP:
            self._drop(session.client_id, pub, f"intercept:{stage}")
        elif kind is DUPLICATE:
            self._forward(session, pub, qos, target)
            self._intercept_row(session.client_id, pub, f"duplicate:{stage}")
            self._forward(session, pub, qos, target)
        else:
            self._intercept_row(session.client_id, pub, f"delay:{stage}:{seconds:g}")
            self._at(self.env._now + seconds, self._release_down, session, pub, qos, target,
                     self._broker_epoch)

    def _release_down(self, session: _Session, pub: _Pub, qos: int, target: Any,
                      epoch: int) -> None:
        if epoch != self._broker_epoch:
            self._drop(session.client_id, pub, "broker_down")
        elif self._sessions.get(session.client_id) is not session:
            self._drop(session.client_id, pub, "session_ended")
        else:
            self._forward(session, pub, qos, target)

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
        ``duplicate``, ``retransmit``, ``drop`` (detail: ``loss``, ``link_down``,
        ``broker_down``, ``offline``, ``disconnected``, ``queue_full``), ``ack_lost``,
        ``will``, ``connect``, ``connection_lost``, ``timeout`` (the broker gave up on a
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
            rows.append((self.env._now, event, client, topic, nbytes, qos, msg_id, latency,
                         detail))

    def _at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        heappush(self._queue, (when, _NORMAL, next(self._eid), _Call(fn, args)))

    def _tx(self, d: _Direction, nbytes: int, lossy: bool) -> float:
        """Put a packet on a link direction: its arrival time, or _LOST / _DOWN."""
        if not d.link.is_up:
            return _DOWN
        now = self.env._now
        start = d.free_at if d.free_at > now else now
        end = start + nbytes * 8.0 / d.bandwidth
        d.free_at = end
        self.bytes_sent += nbytes
        arrival = end + d.latency
        if d.jitter:
            arrival += d.rng.random() * d.jitter
        if lossy and d.loss and d.rng.random() < d.loss:
            return _LOST
        if arrival < d.last_arrival:
            arrival = d.last_arrival
        d.last_arrival = arrival
        return arrival

    def _drop(self, client_id: str, pub: _Pub, reason: str) -> None:
        self.dropped += 1
        rows = self._rows
        if rows is not None:
            rows.append((self.env._now, "drop", client_id, pub.topic, pub.wire, pub.qos,
                         pub.id, None, reason))

    def _ack_lost(self, client_id: str, pub: _Pub, reason: str) -> None:
        self.acks_lost += 1
        rows = self._rows
        if rows is not None:
            rows.append((self.env._now, "ack_lost", client_id, pub.topic, PUBACK_BYTES, 1,
                         pub.id, None, reason))

    def _control_up(self, client: SimTransport, nbytes: int, fn: Callable[..., Any],
                    args: tuple, fail: Callable[[], Any] | None) -> None:
        """A control packet to the broker: ``fn(*args)`` when served, else ``fail()``."""
        link = client.link
        arrival = self._tx(link.up_dir, nbytes, False)
        if arrival < 0:
            if fail is not None:
                fail()
            return
        self._at(arrival, self._control_arrive, client, link.epoch, fn, args, fail)

    def _control_arrive(self, client: SimTransport, epoch: int, fn: Callable[..., Any],
                        args: tuple, fail: Callable[[], Any] | None) -> None:
        if client.link.epoch != epoch or not self._broker_up:
            if fail is not None:
                fail()
            return
        if self._service:
            now = self.env._now
            done = (self._broker_free_at if self._broker_free_at > now else now) + self._service
            self._broker_free_at = done
            self._at(done, self._control_served, self._broker_epoch, fn, args, fail)
        else:
            fn(*args)

    def _control_served(self, epoch: int, fn: Callable[..., Any], args: tuple,
                        fail: Callable[[], Any] | None) -> None:
        if epoch != self._broker_epoch:
            if fail is not None:
                fail()
            return
        fn(*args)

    def _control_down(self, client: SimTransport, nbytes: int, fn: Callable[..., Any],
                      args: tuple, fail: Callable[[], Any]) -> None:
        link = client.link
        arrival = self._tx(link.down_dir, nbytes, False)
        if arrival < 0:
            fail()
            return
        self._at(arrival, self._control_land, client, link.epoch, fn, args, fail)

    @staticmethod
    def _control_land(client: SimTransport, epoch: int, fn: Callable[..., Any], args: tuple,
                      fail: Callable[[], Any]) -> None:
        if client.link.epoch != epoch:
            fail()
        else:
            fn(*args)

    # ------------------------------------------------------------------ broker: publish
    def _up_publish(self, client: SimTransport, pub: _Pub, epoch: int) -> None:
        """A PUBLISH reaches the end of the uplink."""
        if client.link.epoch != epoch:
            self._drop(client.client_id, pub, "link_down")
            return
        if not self._broker_up:
            self._drop(client.client_id, pub, "broker_down")
            return
        if self._service:
            now = self.env._now
            done = (self._broker_free_at if self._broker_free_at > now else now) + self._service
            self._broker_free_at = done
            heappush(self._queue, (done, _NORMAL, next(self._eid), _Call(
                self._broker_publish, (client, pub, self._broker_epoch))))
        else:
            self._broker_publish(client, pub, self._broker_epoch)

    def _broker_publish(self, client: SimTransport, pub: _Pub, epoch: int) -> None:
        """The broker has served a PUBLISH: store, route, acknowledge."""
        if epoch != self._broker_epoch:
            self._drop(client.client_id, pub, "broker_down")
            return
        session = self._sessions.get(client.client_id)
        if session is not None:
            session.last_heard = self.env._now
        self._route(pub)
        if pub.qos:
            link = client.link
            arrival = self._tx(link.down_dir, PUBACK_BYTES, True)
            if arrival < 0:
                self._ack_lost(client.client_id, pub, "loss" if arrival == _LOST else "link_down")
            else:
                self._at(arrival, client._on_puback, pub, link.epoch)

    def _route(self, pub: _Pub) -> None:
        topic = pub.topic
        if pub.retain:
            if pub.payload:
                self._retained[topic] = pub
            else:
                self._retained.pop(topic, None)
        targets = self._routes.get(topic)
        if targets is None:
            targets = self._compute_routes(topic)
        qos = pub.qos
        if self._interceptor is not None:
            for session, sub_qos in targets:
                self._intercept_down("downlink", session, pub,
                                     sub_qos if sub_qos < qos else qos, None)
            return
        for session, sub_qos in targets:
            self._forward(session, pub, sub_qos if sub_qos < qos else qos, None)

    def _compute_routes(self, topic: str) -> list[tuple[_Session, int]]:
        best: dict[_Session, int] = {}
        exact = self._exact.get(topic)
        if exact:
            best.update(exact)
        wild = self._wild
        for group in (wild.get(topic.split("/", 1)[0]), wild.get("")):
            if not group:
                continue
            for topic_filter, subs in group.items():
                if topic_matches(topic_filter, topic):
                    for session, qos in subs.items():
                        if best.get(session, -1) < qos:
                            best[session] = qos
        routes = list(best.items())
        if len(self._routes) >= _ROUTE_CACHE_LIMIT:
            self._routes.clear()
        self._routes[topic] = routes
        return routes

    def _forward(self, session: _Session, pub: _Pub, qos: int, target: Any) -> None:
        """Send one copy to a session (or queue/drop it if the session is offline)."""
        if not session.online:
            if qos:
                if len(session.queue) < self.max_queued:
                    session.queue.append((pub, qos, target))
                else:
                    self._drop(session.client_id, pub, "queue_full")
            else:
                self._drop(session.client_id, pub, "offline")
            return
        if qos:
            pid = session.next_pid
            session.next_pid = pid + 1
            session.inflight[pid] = [pub, qos, target, self.env._now]
            if session.retry_at is None:
                self._arm_session_retry(session)
        else:
            pid = 0
        self._send_down(session, pub, qos, pid, target)

    def _send_down(self, session: _Session, pub: _Pub, qos: int, pid: int,
                   target: Any) -> None:
        client = session.client
        link = client.link
        arrival = self._tx(link.down_dir, pub.wire, True)
        if arrival < 0:
            self._drop(session.client_id, pub, "loss" if arrival == _LOST else "link_down")
            return
        heappush(self._queue, (arrival, _NORMAL, next(self._eid), _Call(
            client._on_publish, (pub, qos, pid, target, session, session.token, link.epoch))))

    def _up_puback(self, client: SimTransport, session: _Session, pid: int, pub: _Pub,
                   epoch: int) -> None:
        if client.link.epoch != epoch:
            self._ack_lost(client.client_id, pub, "link_down")
            return
        if not self._broker_up:
            self._ack_lost(client.client_id, pub, "broker_down")
            return
        if self._service:
            now = self.env._now
            done = (self._broker_free_at if self._broker_free_at > now else now) + self._service
            self._broker_free_at = done
            self._at(done, self._broker_puback, client, session, pid, pub, self._broker_epoch)
        else:
            self._broker_puback(client, session, pid, pub, self._broker_epoch)

    def _broker_puback(self, client: SimTransport, session: _Session, pid: int, pub: _Pub,
                       epoch: int) -> None:
        if epoch != self._broker_epoch:
            self._ack_lost(client.client_id, pub, "broker_down")
            return
        session.last_heard = self.env._now
        session.inflight.pop(pid, None)

    def _arm_session_retry(self, session: _Session) -> None:
        if session.retry_at is not None or not session.inflight:
            return
        first = next(iter(session.inflight.values()))
        session.retry_at = at = first[3] + self.retry_interval
        self._at(at, self._session_retry, session, self._broker_epoch)

    def _session_retry(self, session: _Session, epoch: int) -> None:
        if epoch != self._broker_epoch or self._sessions.get(session.client_id) is not session:
            return
        session.retry_at = None
        if not session.online:
            return  # resent on reconnect
        now = self.env._now
        due = []
        for pid, entry in session.inflight.items():
            if entry[3] + self.retry_interval > now:
                break
            due.append((pid, entry))
        for pid, entry in due:
            self._resend_down(session, pid, entry)
        self._arm_session_retry(session)

    def _resend_down(self, session: _Session, pid: int, entry: list) -> None:
        inflight = session.inflight
        del inflight[pid]
        entry[3] = self.env._now
        inflight[pid] = entry
        pub = entry[0]
        self.retransmits += 1
        rows = self._rows
        if rows is not None:
            rows.append((self.env._now, "retransmit", session.client_id, pub.topic, pub.wire,
                         entry[1], pub.id, None, "broker"))
        self._send_down(session, pub, entry[1], pid, entry[2])

    # ------------------------------------------------------------------ broker: sessions
    def _broker_connect(self, client: SimTransport, token: int, clean: bool,
                        will: Message | None, keepalive: float) -> None:
        cid = client.client_id
        session = self._sessions.get(cid)
        if session is not None and clean:
            self._end_session(session)
            session = None
        if session is None:
            session = self._sessions[cid] = _Session(cid)
        now = self.env._now
        session.client = client
        session.online = True
        session.token = token
        session.will = will
        session.keepalive = keepalive
        session.last_heard = now
        session.silent_since = None
        session.retry_at = None
        self._control_down(client, CONNACK_BYTES, client._on_connack, (token,),
                           lambda: client._attempt_failed(token))
        if client._frozen:  # it sent CONNECT and froze: the keepalive clock runs
            self._client_silent(client, token)
        # MQTT 3.1.1 section 4.6: resent in the order first sent (pids grow), whatever
        # retransmissions in between reordered
        for pid, entry in sorted(session.inflight.items()):
            self._resend_down(session, pid, entry)
        queue = session.queue
        while queue and session.online:
            pub, qos, target = queue.popleft()
            self._forward(session, pub, qos, target)
        self._arm_session_retry(session)

    def _end_session(self, session: _Session) -> None:
        for topic_filter in list(session.subs):
            self._unindex(session, topic_filter)
        session.online = False
        session.will = None
        session.queue.clear()
        session.inflight.clear()
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]

    def _table(self, topic_filter: str, create: bool) -> dict | None:
        """The index a filter lives in: exact topics, or wildcards by first level."""
        if "+" not in topic_filter and "#" not in topic_filter:
            return self._exact
        root = topic_filter.split("/", 1)[0]
        root = "" if root in ("+", "#") else root
        return self._wild.setdefault(root, {}) if create else self._wild.get(root)

    def _index(self, session: _Session, topic_filter: str, qos: int) -> None:
        self._table(topic_filter, True).setdefault(topic_filter, {})[session] = qos
        session.subs[topic_filter] = qos
        self._routes.clear()

    def _unindex(self, session: _Session, topic_filter: str) -> None:
        session.subs.pop(topic_filter, None)
        table = self._table(topic_filter, False)
        subs = table.get(topic_filter) if table is not None else None
        if subs is not None:
            subs.pop(session, None)
            if not subs:
                del table[topic_filter]
        self._routes.clear()

    def _live_session(self, client: SimTransport, token: int) -> _Session | None:
        session = self._sessions.get(client.client_id)
        if session is None or session.token != token or not session.online:
            return None
        session.last_heard = self.env._now
        return session

    def _broker_subscribe(self, client: SimTransport, token: int,
                          entries: list[tuple[str, int]], target: Any, replace: bool) -> None:
        session = self._live_session(client, token)
        if session is None:
            return  # a stale connection: the client re-subscribes on reconnect
        if replace:
            keep = {f for f, _ in entries}
            for topic_filter in [f for f in session.subs if f not in keep]:
                self._unindex(session, topic_filter)
        for topic_filter, qos in entries:
            self._index(session, topic_filter, qos)
        for topic_filter, qos in entries:
            if "+" in topic_filter or "#" in topic_filter:
                matching = [p for t, p in self._retained.items()
                            if topic_matches(topic_filter, t)]
            else:
                pub = self._retained.get(topic_filter)
                matching = [pub] if pub is not None else []
            for pub in matching:
                if self._interceptor is not None:
                    self._intercept_down("retained", session, pub, min(pub.qos, qos),
                                         target if target is not None else topic_filter)
                    continue
                self._forward(session, pub, min(pub.qos, qos),
                              target if target is not None else topic_filter)

    def _broker_unsubscribe(self, client: SimTransport, token: int, topic_filter: str) -> None:
        session = self._live_session(client, token)
        if session is not None:
            self._unindex(session, topic_filter)

    def _broker_disconnect(self, client: SimTransport, token: int) -> None:
        session = self._sessions.get(client.client_id)
        if session is not None and session.token == token:
            self._end_session(session)

    def _client_silent(self, client: SimTransport, token: int | None) -> None:
        """The client stopped talking on its connection: the broker's keepalive runs."""
        session = self._sessions.get(client.client_id)
        if (session is None or not session.online or session.client is not client
                or (token is not None and session.token != token)):
            return
        now = self.env._now
        if session.silent_since is None:
            session.silent_since = now
        self._at(max(now, session.silent_since + 1.5 * session.keepalive), self._will_check,
                 session, session.token, self._broker_epoch)

    def _client_heard(self, client: SimTransport) -> None:
        session = self._sessions.get(client.client_id)
        if session is not None and session.client is client and session.token == client._conn:
            session.silent_since = None

    def _will_check(self, session: _Session, token: int, epoch: int) -> None:
        if (epoch != self._broker_epoch or self._sessions.get(session.client_id) is not session
                or session.token != token or not session.online
                or session.silent_since is None):
            return
        now = self.env._now
        heard = max(session.silent_since, session.last_heard)
        deadline = heard + 1.5 * session.keepalive
        if deadline > now:
            self._at(deadline, self._will_check, session, token, epoch)
            return
        session.online = False
        self._row("timeout", session.client_id, None, None, None, None, None, None)
        will, session.will = session.will, None
        if will is not None:
            pub = _Pub(next(self._ids), will.topic, bytes(will.payload), will.qos,
                       will.retain, now, session.client_id)
            self.wills += 1
            rows = self._rows
            if rows is not None:
                rows.append((now, "will", session.client_id, pub.topic, pub.wire, pub.qos,
                             pub.id, None, None))
            self._route(pub)


class SimTransport:
    """One MQTT client in the simulated network (the :class:`Transport` interface).

    Besides the interface: ``vanish()`` (crash without a clean disconnect),
    ``freeze()``/``thaw()`` (a stopped process), ``state``, ``frozen`` and ``link``.
    """

    def __init__(self, network: Network, client_id: str, link: Link) -> None:
        self.network = network
        self.client_id = client_id
        self.link = link
        self.keepalive = 10.0
        self._state = IDLE
        self._conn = 0  # token of the live connection (0: none)
        self._token = 0  # token of the current connect attempt
        self._attempt_no = 0
        self._clean = True
        self._will: Message | None = None
        self._filters: dict[str, int] = {}
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._dispatch: dict[str, tuple[MessageHandler, ...]] = {}
        self._listeners: list[ConnectionListener] = []
        self._inflight: dict[int, list] = {}  # pub id -> [pub, last sent], by last send
        self._outbox: deque[_Pub] = deque()  # QoS 1 published while disconnected
        self._retry_at: float | None = None
        self._retry_gen = 0
        self._life = 0  # +1 at each vanish(): delayed messages die with their client
        self._frozen = False
        self._held: list[tuple[str, tuple]] = []  # what waits for thaw(), in order

    # ------------------------------------------------------------------ Transport
    @property
    def connected(self) -> bool:
        return self._state is CONNECTED

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``connected``, ``lost`` (reconnecting) or ``vanished``."""
        return self._state

    def connect(self, will: Message | None = None, keepalive: float = 10.0) -> None:
        """Start a clean session (asynchronously; listeners get True when connected)."""
        if self._state in (CONNECTING, CONNECTED, LOST):
            raise RuntimeError(f"{self.client_id}: already {self._state}")
        if self.network.clients.get(self.client_id) is not self:
            raise RuntimeError(f"{self.client_id}: replaced by a newer transport")
        if not keepalive > 0:
            raise ValueError("keepalive must be > 0")
        if will is not None:
            validate_topic(will.topic)
        self._will = will
        self.keepalive = float(keepalive)
        self._clean = True
        self._state = CONNECTING
        self._attempt()

    def disconnect(self) -> None:
        """Close cleanly: the broker ends the session and publishes no will.

        (If the connection is already dead, e.g. its link is down, the DISCONNECT cannot
        reach the broker, which then times the client out and publishes the will.)
        """
        state = self._state
        if state is IDLE or state is VANISHED:
            return
        token = self._conn
        self._state = IDLE
        self._conn = 0
        self._token = 0
        self._attempt_no += 1
        self.network._row("disconnect", self.client_id, None, None, None, None, None, None)
        if state is CONNECTED:
            net = self.network
            net._control_up(self, DISCONNECT_BYTES, net._broker_disconnect, (self, token),
                            lambda: net._client_silent(self, token))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if self._state is VANISHED:
            return
        if qos != 0 and qos != 1:
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        validate_topic(topic)
        if type(payload) is not bytes:
            payload = bytes(payload)
        net = self.network
        now = net.env._now
        pub = _Pub(next(net._ids), topic, payload, qos, bool(retain), now, self.client_id)
        net.published += 1
        if net._interceptor is not None:
            net._intercept_up(self, pub)
            return
        rows = net._rows
        if self._state is CONNECTED:
            if rows is not None:
                rows.append((now, "publish", self.client_id, topic, pub.wire, qos, pub.id,
                             None, None))
            self._send(pub)
        elif qos:
            if rows is not None:
                rows.append((now, "publish", self.client_id, topic, pub.wire, qos, pub.id,
                             None, "queued"))
            self._outbox.append(pub)
        else:
            if rows is not None:
                rows.append((now, "publish", self.client_id, topic, pub.wire, qos, pub.id,
                             None, None))
            net._drop(self.client_id, pub, "offline")

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        validate_filter(topic_filter)
        if qos != 0 and qos != 1:
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        handlers = self._handlers.setdefault(topic_filter, [])
        if handler not in handlers:
            handlers.append(handler)
        self._filters[topic_filter] = qos
        self._dispatch.clear()
        if self._state is CONNECTED:
            net = self.network
            net._control_up(self, SUBSCRIBE_OVERHEAD + 3 + len(topic_filter.encode()),
                            net._broker_subscribe,
                            (self, self._conn, [(topic_filter, qos)], handler, False), None)

    def unsubscribe(self, topic_filter: str, handler: MessageHandler | None = None) -> None:
        handlers = self._handlers.get(topic_filter)
        if not handlers:
            return
        if handler is None:
            handlers.clear()
        else:
            handlers[:] = [h for h in handlers if h != handler]
        self._dispatch.clear()
        if handlers:
            return
        del self._handlers[topic_filter]
        self._filters.pop(topic_filter, None)
        if self._state is CONNECTED:
            net = self.network
            net._control_up(self, UNSUBSCRIBE_OVERHEAD + 2 + len(topic_filter.encode()),
                            net._broker_unsubscribe, (self, self._conn, topic_filter), None)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ faults
    def vanish(self) -> None:
        """Die without a clean disconnect (a board crash): the broker publishes the will
        ``1.5 * keepalive`` after it last heard from the client.

        All client state (subscriptions, handlers, listeners, queued and unacknowledged
        messages) is forgotten.  Until ``connect()`` is called again (a reboot) nothing
        reaches the network and publishes are ignored (a dead program's leftover timers
        cannot leak messages); subscriptions and listeners registered meanwhile are kept
        for the new life, like on a never-connected client.  A fresh
        ``network.client(same_id, link)`` works too."""
        if self._state is VANISHED:
            return
        net = self.network
        net._row("vanish", self.client_id, None, None, None, None, None, None)
        self._state = VANISHED
        self._conn = 0
        self._token = 0
        self._attempt_no += 1
        self._retry_gen += 1
        self._retry_at = None
        self._will = None
        self._filters.clear()
        self._handlers.clear()
        self._dispatch.clear()
        self._listeners.clear()
        self._inflight.clear()
        self._outbox.clear()
        self._life += 1
        self._frozen = False
        self._held.clear()
        self.__dict__.pop("publish", None)
        net._client_silent(self, None)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Stop the client's process (SIGSTOP; see the module docstring).

        Until :meth:`thaw` nothing is handled (incoming PUBLISHes, CONNACKs, QoS 1
        retries, keepalive checks and reconnect attempts wait, unacknowledged) and nothing
        is sent (``publish()`` calls wait).  The broker stops hearing from the client."""
        if self._frozen or self._state is VANISHED:
            return
        net = self.network
        self._frozen = True
        self.publish = self._hold_publish  # the class's publish() keeps no frozen test
        net._row("freeze", self.client_id, None, None, None, None, None, None)
        if self._state is CONNECTED:
            net._client_silent(self, self._conn)

    def thaw(self) -> None:
        """Resume the process: if the broker closed the connection meanwhile (keepalive
        timeout, broker restart) the client notices now and reconnects; then what waited
        is handled in order (a closed connection drops what reached it on that connection:
        the broker resends its QoS 1 on reconnect), and the waiting publishes are sent."""
        if not self._frozen:
            return
        net = self.network
        self._frozen = False
        self.__dict__.pop("publish", None)
        net._row("thaw", self.client_id, None, None, None, None, None, None)
        if self._state is CONNECTED:
            session = net._sessions.get(self.client_id)
            if (session is None or not session.online or session.client is not self
                    or session.token != self._conn or not net._broker_up):
                self._lose("frozen")
            elif self.link.is_up:
                net._client_heard(self)
        held, self._held = self._held, []
        for name, args in held:
            getattr(self, name)(*args)

    def _hold_publish(self, topic: str, payload: bytes, qos: int = 0,
                      retain: bool = False) -> None:
        self._held.append(("publish", (topic, payload, qos, retain)))

    def _hold(self, name: str, args: tuple) -> None:
        self._held.append((name, args))

    def _post(self, pub: _Pub, traced: bool) -> None:
        """The rest of ``publish()`` for an intercepted message (``traced``: write its
        ``publish`` row)."""
        net = self.network
        rows = net._rows if traced else None
        if self._state is VANISHED:
            net._drop(self.client_id, pub, "vanished")
        elif self._state is CONNECTED:
            if rows is not None:
                rows.append((net.env._now, "publish", self.client_id, pub.topic, pub.wire,
                             pub.qos, pub.id, None, None))
            self._send(pub)
        elif pub.qos:
            if rows is not None:
                rows.append((net.env._now, "publish", self.client_id, pub.topic, pub.wire,
                             pub.qos, pub.id, None, "queued"))
            self._outbox.append(pub)
        else:
            if rows is not None:
                rows.append((net.env._now, "publish", self.client_id, pub.topic, pub.wire,
                             pub.qos, pub.id, None, None))
            net._drop(self.client_id, pub, "offline")

    # ------------------------------------------------------------------ connecting
    def _attempt(self) -> None:
        net = self.network
        self._token = token = next(net._tokens)
        if not self.link.is_up or not net._broker_up:
            self._attempt_failed(token)
            return
        will = self._will
        nbytes = CONNECT_OVERHEAD + len(self.client_id.encode())
        if will is not None:
            nbytes += 4 + len(will.topic.encode()) + len(will.payload)
        net._control_up(self, nbytes, net._broker_connect,
                        (self, token, self._clean, will, self.keepalive),
                        lambda: self._attempt_failed(token))

    def _attempt_failed(self, token: int) -> None:
        if self._token == token and (self._state is CONNECTING or self._state is LOST):
            self._schedule_attempt()

    def _schedule_attempt(self) -> None:
        self._attempt_no += 1
        net = self.network
        net._at(net.env._now + net.reconnect_interval, self._maybe_attempt, self._attempt_no)

    def _maybe_attempt(self, attempt_no: int) -> None:
        if self._frozen:
            return self._hold("_maybe_attempt", (attempt_no,))
        if attempt_no == self._attempt_no and (self._state is CONNECTING
                                               or self._state is LOST):
            self._attempt()

    def _on_connack(self, token: int) -> None:
        if self._frozen:
            return self._hold("_on_connack", (token,))
        net = self.network
        if self._token != token or not (self._state is CONNECTING or self._state is LOST):
            if self._state is IDLE or self._state is VANISHED:
                net._client_silent(self, token)  # gave up meanwhile: the socket just closes
            return
        self._state = CONNECTED
        self._conn = token
        self._clean = False
        net._row("connect", self.client_id, None, None, None, None, None, None)
        if self._filters:
            entries = list(self._filters.items())
            nbytes = SUBSCRIBE_OVERHEAD + sum(3 + len(f.encode()) for f, _ in entries)
            net._control_up(self, nbytes, net._broker_subscribe,
                            (self, token, entries, None, True), None)
        for entry in sorted(self._inflight.values(), key=_first_sent):  # MQTT 4.6 order
            self._resend(entry)
        outbox = self._outbox
        while outbox and self._state is CONNECTED:
            self._send(outbox.popleft())
        for listener in list(self._listeners):
            listener(True)

    def _lose(self, reason: str) -> None:
        """The client notices its connection is dead."""
        token = self._conn
        self._state = LOST
        self._conn = 0
        self._token = 0
        net = self.network
        net._row("connection_lost", self.client_id, None, None, None, None, None, reason)
        net._client_silent(self, token)
        self._schedule_attempt()
        for listener in list(self._listeners):
            listener(False)

    def _check_link(self, conn: int, epoch: int) -> None:
        if self._frozen:
            return self._hold("_check_link", (conn, epoch))
        link = self.link
        if (self._state is CONNECTED and self._conn == conn and not link.is_up
                and link.epoch == epoch):
            self._lose("keepalive")

    def _check_broker(self, conn: int) -> None:
        if self._frozen:
            return self._hold("_check_broker", (conn,))
        if self._state is CONNECTED and self._conn == conn:
            self._lose("broker")

    # ------------------------------------------------------------------ publishing
    def _send(self, pub: _Pub) -> None:
        net = self.network
        if pub.qos:
            self._inflight[pub.id] = [pub, net.env._now]
            if self._retry_at is None:
                self._arm_retry()
        link = self.link
        arrival = net._tx(link.up_dir, pub.wire, True)
        if arrival < 0:
            net._drop(self.client_id, pub, "loss" if arrival == _LOST else "link_down")
            return
        heappush(net._queue, (arrival, _NORMAL, next(net._eid), _Call(
            net._up_publish, (self, pub, link.epoch))))

    def _resend(self, entry: list) -> None:
        pub = entry[0]
        del self._inflight[pub.id]
        net = self.network
        net.retransmits += 1
        rows = net._rows
        if rows is not None:
            rows.append((net.env._now, "retransmit", self.client_id, pub.topic, pub.wire,
                         pub.qos, pub.id, None, "client"))
        self._send(pub)

    def _arm_retry(self) -> None:
        if self._retry_at is not None or not self._inflight:
            return
        net = self.network
        first = next(iter(self._inflight.values()))
        self._retry_at = at = first[1] + net.retry_interval
        net._at(at, self._on_retry, self._retry_gen)

    def _on_retry(self, gen: int) -> None:
        if gen != self._retry_gen:
            return
        if self._frozen:
            return self._hold("_on_retry", (gen,))
        self._retry_at = None
        if self._state is not CONNECTED:
            return  # resent on reconnect
        net = self.network
        now = net.env._now
        interval = net.retry_interval
        due = []
        for entry in self._inflight.values():
            if entry[1] + interval > now:
                break
            due.append(entry)
        for entry in due:
            self._resend(entry)
        self._arm_retry()

    def _on_puback(self, pub: _Pub, epoch: int) -> None:
        if self.link.epoch != epoch:
            self.network._ack_lost(self.client_id, pub, "link_down")
            return
        if self._state is not VANISHED:
            self._inflight.pop(pub.id, None)

    # ------------------------------------------------------------------ receiving
    def _on_publish(self, pub: _Pub, qos: int, pid: int, target: Any, session: _Session,
                    token: int, epoch: int) -> None:
        """A PUBLISH reaches the end of the downlink."""
        if self._frozen:
            return self._hold("_on_publish", (pub, qos, pid, target, session, token, epoch))
        net = self.network
        link = self.link
        if link.epoch != epoch:
            net._drop(self.client_id, pub, "link_down")
            return
        if token != self._conn:  # sent on another connection, or we are disconnected
            net._drop(self.client_id, pub, "disconnected")
            return
        if qos:
            arrival = net._tx(link.up_dir, PUBACK_BYTES, True)
            if arrival < 0:
                net._ack_lost(self.client_id, pub, "loss" if arrival == _LOST else "link_down")
            else:
                net._at(arrival, net._up_puback, self, session, pid, pub, link.epoch)
        now = net.env._now
        event = "deliver"
        detail = None
        if target is None:
            seen = pub.seen
            if seen is not None:
                if self.client_id in seen:
                    event = "duplicate"
                else:
                    seen.add(self.client_id)
            if qos:
                msg = pub.m1
                if msg is None:
                    msg = pub.m1 = Message(pub.topic, pub.payload, 1, False)
            else:
                msg = pub.m0
                if msg is None:
                    msg = pub.m0 = Message(pub.topic, pub.payload, 0, False)
            handlers = self._dispatch.get(pub.topic)
            if handlers is None:
                handlers = self._handlers_for(pub.topic)
        else:
            detail = "retained"
            msg = Message(pub.topic, pub.payload, qos, True)
            handlers = self._target_handlers(target)
        if event == "deliver":
            net.delivered += 1
        else:
            net.duplicates += 1
        net.bytes_delivered += pub.wire
        rows = net._rows
        if rows is not None:
            rows.append((now, event, self.client_id, pub.topic, pub.wire, qos, pub.id,
                         now - pub.t0, detail))
        for handler in handlers:
            handler(msg)

    def _handlers_for(self, topic: str) -> tuple[MessageHandler, ...]:
        found: list[MessageHandler] = []
        for topic_filter, handlers in self._handlers.items():
            if topic_matches(topic_filter, topic):
                for handler in handlers:
                    if handler not in found:
                        found.append(handler)
        result = self._dispatch[topic] = tuple(found)
        return result

    def _target_handlers(self, target: Any) -> tuple[MessageHandler, ...]:
        if isinstance(target, str):
            return tuple(self._handlers.get(target, ()))
        for handlers in self._handlers.values():
            if target in handlers:
                return (target,)
        return ()

    def __repr__(self) -> str:
        return f"<SimTransport {self.client_id} {self._state} on {self.link.name}>"


def _first_sent(entry: list) -> int:
    """Publish ids grow with time: sorting by them restores the original send order."""
    return entry[0].id
