"""The simulated MQTT broker: sessions, routing, retained messages, wills and outages.

Modelling choices this module owns (see :mod:`thingssim.sim.network` for the others):

- **Service.** A FIFO single server: every inbound packet (PUBLISH, PUBACK, CONNECT,
  SUBSCRIBE...) costs ``service_time``; routing and fan-out happen when service ends.
  The fan-out itself costs nothing extra.
- **Routing.** ``runtime.topics.topic_matches`` wildcards.  One copy per client however
  many of its filters match (MQTT 3.1.1 allows it), at QoS ``min(publish qos, highest
  matching subscription qos)``.  Publishers receive their own messages if subscribed.
  Per-topic FIFO from one publisher to one subscriber holds while nothing is lost (a lost
  QoS 1 message is retransmitted after later ones).  Filters are indexed (exact topics in
  a dict, wildcard filters by their first level) and each topic's subscriber list is
  cached until a subscription changes, so routing costs the same with 10 or 10,000
  clients subscribed to their own topics.
- **QoS 1 downlink.** The broker keeps each copy until its PUBACK arrives and retransmits
  it every ``retry_interval`` while the client is connected, and on reconnect in the order
  first sent (MQTT 3.1.1 section 4.6).  It forwards every copy it receives (a duplicate
  from the publisher reaches subscribers as a duplicate).  QoS 2 is not modelled.
- **Sessions.** An explicit ``connect()`` starts a clean session; it survives connection
  losses (link faults, keepalive timeouts, broker outages with persistence) and ends at
  ``disconnect()`` or the next explicit ``connect()`` (MQTT 5 clean start with an unlimited
  session expiry).  While its client is offline the broker queues QoS 1 messages for it
  (at most ``max_queued``, default 1000 like Mosquitto; more are dropped) and drops
  QoS 0.  On reconnect it resends its unacknowledged and then its queued QoS 1.
  SUBACK and PINGREQ are not simulated (nothing waits for them).
- **Retained.** A retained PUBLISH replaces the topic's retained message (an empty payload
  clears it) and is forwarded as a normal message (retain flag cleared).  Each
  subscription gets the matching retained messages with ``retain=True``, handed only to
  the handler it registered (a re-subscription on reconnect: to that filter's handlers);
  they are traced as ``deliver`` with detail ``retained``, never as duplicates.  Retained
  messages are indexed by their topic's first level, so a subscription scans only those
  it can match.
- **Keepalive and wills.** A live, connected client is assumed to be heard continuously
  (its PINGREQs are not simulated).  Once it goes silent (vanished, frozen, link down,
  a DISCONNECT lost on a dead link) the broker closes the connection ``1.5 * keepalive``
  after it last heard from it and then publishes the will (a reconnect first cancels it).
  A clean ``disconnect()`` publishes no will.
- **Outage.** :meth:`Broker.crash` loses everything in flight to or queued inside the
  broker and every connection; no wills are published for them.  With
  ``persistence=True`` sessions (subscriptions, queued and unacknowledged QoS 1) and
  retained messages survive, like Mosquitto with persistence, so QoS 1 is never lost;
  with ``persistence=False`` the broker restarts empty.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING, Any

from runtime.topics import topic_matches
from runtime.transport import Message

from .clock import _Call
from .intercept import DELIVER, DROP, DUPLICATE, action
from .link import CONNACK_BYTES, PUBACK_BYTES, Packet

if TYPE_CHECKING:
    from .client import SimTransport
    from .network import Network, TopicInfo

_ROUTE_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class BrokerProfile:
    """The broker: ``service_time`` s of CPU per inbound packet (FIFO single server; 0 is
    an infinitely fast broker; ~50e-6 matches Mosquitto's ~20k msg/s on the development
    machine), and whether sessions and retained messages survive an outage.

    A silent client's will fires ``will_factor * keepalive + will_offset`` after the
    broker last heard from it (MQTT says 1.5 x keepalive: the default), or with
    ``will_check_interval`` > 0 at the first of the broker's keepalive checks, every that
    many seconds of simulated time, after that deadline: Mosquitto 2.0 checks its
    clients' keepalives only every ~6 s, so a frozen board's will comes 0-6 s late
    (``thingssim calibrate --from-lab`` measures it)."""

    service_time: float = 0.0
    persistence: bool = True
    will_factor: float = 1.5
    will_offset: float = 0.0
    will_check_interval: float = 0.0

    def __post_init__(self) -> None:
        if self.service_time < 0:
            raise ValueError("service_time must be >= 0")
        if not self.will_factor > 0 or self.will_offset < 0 or self.will_check_interval < 0:
            raise ValueError("will_factor must be > 0, will_offset and will_check_interval "
                             ">= 0")

    def will_due(self, heard: float, keepalive: float) -> float:
        """When the will of a client silent since ``heard`` goes out."""
        due = heard + (self.will_factor * keepalive + self.will_offset)
        interval = self.will_check_interval
        return math.ceil(due / interval) * interval if interval else due


class Session:
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


def _first_level(name: str) -> str:
    """The index key of a topic or filter: its first level ("" for a wildcard one)."""
    root = name.split("/", 1)[0]
    return "" if root == "+" or root == "#" else root


class Broker:
    """The broker of a :class:`~thingssim.sim.network.Network` (see the module docstring)."""

    def __init__(self, network: Network, profile: BrokerProfile, max_queued: int) -> None:
        self.network = network
        self.profile = profile
        self.max_queued = max_queued
        self.env = network.env
        self._call_at = network.env.call_at
        self.sessions: dict[str, Session] = {}
        #: retained messages by first topic level, then topic; and each retained topic's
        #: rank in the order topics were (last) first retained, the order subscribers get
        #: them in
        self._retained: dict[str, dict[str, Packet]] = {}
        self._retained_rank: dict[str, int] = {}
        self._ranks = count()
        self._exact: dict[str, dict[Session, int]] = {}
        #: wildcard filters by their first level ("" for those starting with + or #), so
        #: routing a topic scans only the filters that can match it (e.g. the thousands of
        #: engines' "<engine>/migrate/+" are never scanned for "sensors/t")
        self._wild: dict[str, dict[str, dict[Session, int]]] = {}
        self._routes: dict[str, list[tuple[Session, int]]] = {}
        #: +1 whenever cached routes are dropped (a subscription changed, the cache was
        #: flushed): a topic seen without subscribers in this generation still has none
        #: (``TopicInfo.quiet``, so the hot path need not look its routes up)
        self.routes_gen = 0
        self.is_up = True
        self.epoch = 0  # +1 at each crash: invalidates in-flight packets, timers, service
        self._free_at = 0.0
        self._service = float(profile.service_time)
        #: held arrivals (see :meth:`hold`) by the first level of their topic
        self._held: dict[str, deque] = {}
        #: hold arrivals nobody can receive (:meth:`hold`); switching it off changes
        #: nothing but speed (tests/test_held_arrivals.py compares the two)
        self.holds = True

    # ------------------------------------------------------------------ held arrivals
    @property
    def can_hold(self) -> bool:
        return self.holds and self.is_up and not self._service

    def hold(self, root: str, entry: tuple) -> None:
        """Hold a QoS 0 PUBLISH in flight to a topic nobody subscribes to, instead of
        queueing its arrival: at its arrival it would only tell the broker that its client
        was heard.  ``entry`` is ``(arrival, priority, seq, client, topic, payload, wire
        bytes, message id, publish time, link epoch)``: the queue key it was given when
        sent, then what makes its :class:`Packet` if it is ever needed.  Whatever could
        change its fate turns held arrivals back into queued ones with that key
        (:meth:`materialize`), so the order of everything stays exactly as if they had
        been queued: a subscription that matches one, its link going down, the broker
        crashing.  Those that have arrived are forgotten after marking their client heard
        (a few in flight per link, so this stays small); a keepalive check first looks at
        those of its client.

        Marking the client heard writes the arrival time on the client
        (``SimTransport._heard_at``), not on its session: the client is in the CPU cache
        (it just published), its session, one of thousands, is not.  The keepalive check
        (:meth:`_will_check`), the only reader, takes the later of the two.  (A session's
        ``last_heard`` is reset to the present at each connect, which comes after every
        held arrival of its client: the client's link is FIFO; so the client's older
        arrivals never count for a newer session, as if they had gone to the session.)"""
        pending = self._held.get(root)
        if pending is None:
            pending = self._held[root] = deque()
        elif pending[0] < self.env._entry:
            past = self.env._entry
            while pending and pending[0] < past:
                gone = pending.popleft()  # it has arrived: its client was heard then
                client = gone[3]
                if client._heard_at < gone[0]:
                    client._heard_at = gone[0]
        pending.append(entry)

    def _heard(self, entry: tuple) -> None:
        """A held arrival has happened: what its arrival did to the session."""
        session = self.sessions.get(entry[3].client_id)
        if session is not None and session.last_heard < entry[0]:
            session.last_heard = entry[0]

    def materialize(self, wanted: Any, root: str | None = None) -> None:
        """Queue the held arrivals ``wanted(client, topic)`` picks (of topics under
        ``root``, or all), with their original keys; forget those that have arrived."""
        env = self.env
        roots = list(self._held) if root is None else [root] if root in self._held else []
        for key in roots:
            keep: deque = deque()
            for entry in self._held[key]:
                if env.is_past(entry):
                    self._heard(entry)
                elif wanted(entry[3], entry[4]):
                    pub = Packet(entry[7], entry[4], entry[5], 0, False, entry[8], entry[6])
                    env._push((entry[0], entry[1], entry[2], _Call(
                        self.arrive_publish, (entry[3], pub, entry[9]))))
                else:
                    keep.append(entry)
            if keep:
                self._held[key] = keep
            else:
                del self._held[key]

    def _heard_held(self, client_id: str) -> None:
        """Before a keepalive check: the held arrivals of ``client_id`` that happened."""
        is_past = self.env.is_past
        for pending in self._held.values():
            for entry in pending:
                if entry[3].client_id == client_id and is_past(entry):
                    self._heard(entry)

    # ------------------------------------------------------------------ outage
    def crash(self) -> None:
        self.materialize(_everything)  # in flight: they will be lost
        now = self.env._time
        self.is_up = False
        self.epoch += 1
        self._free_at = now
        for session in self.sessions.values():
            session.online = False
            session.silent_since = None
            session.retry_at = None
        if not self.profile.persistence:
            self.sessions.clear()
            self._retained.clear()
            self._retained_rank.clear()
            self._exact.clear()
            self._wild.clear()
            self._routes.clear()
            self.routes_gen += 1

    def restart(self) -> None:
        self.is_up = True

    def retained_count(self) -> int:
        return sum(len(group) for group in self._retained.values())

    # ------------------------------------------------------------------ service queue
    def _serve(self, fn: Any, *args: Any) -> None:
        """``fn(*args, epoch)`` once the broker has served this packet."""
        if self._service:
            now = self.env._time
            done = (self._free_at if self._free_at > now else now) + self._service
            self._free_at = done
            self._call_at(done, fn, *args, self.epoch)
        else:
            fn(*args, self.epoch)

    def arrive_control(self, client: SimTransport, epoch: int, fn: Any, args: tuple,
                       fail: Any) -> None:
        """A control packet reaches the broker: ``fn(*args)`` when served, else ``fail()``."""
        if client.link.epoch != epoch or not self.is_up:
            if fail is not None:
                fail()
            return
        if self._service:
            self._serve(self._control_served, fn, args, fail)
        else:
            fn(*args)

    def _control_served(self, fn: Any, args: tuple, fail: Any, epoch: int) -> None:
        if epoch != self.epoch:
            if fail is not None:
                fail()
            return
        fn(*args)

    # ------------------------------------------------------------------ publish
    def arrive_publish(self, client: SimTransport, pub: Packet, epoch: int) -> None:
        """A PUBLISH reaches the end of the uplink."""
        if client.link.epoch != epoch:
            self.network._drop(client.client_id, pub, "link_down")
            return
        if not self.is_up:
            self.network._drop(client.client_id, pub, "broker_down")
            return
        if self._service:
            now = self.env._time
            done = (self._free_at if self._free_at > now else now) + self._service
            self._free_at = done
            self._call_at(done, self._publish_served, client, pub, self.epoch)
            return
        # served at once (an infinitely fast broker): _publish_served, inlined for the
        # common case of a QoS 0 message to a topic whose subscribers are known
        session = self.sessions.get(client.client_id)
        if session is not None:
            session.last_heard = self.env._time
        if pub.qos or pub.retain:
            self.route(pub)
            if pub.qos:
                self._acknowledge(client, pub)
            return
        targets = self._routes.get(pub.topic)
        if targets is None or targets:
            self.route(pub)

    def _publish_served(self, client: SimTransport, pub: Packet, epoch: int) -> None:
        """The broker has served a PUBLISH: store, route, acknowledge."""
        if epoch != self.epoch:
            self.network._drop(client.client_id, pub, "broker_down")
            return
        session = self.sessions.get(client.client_id)
        if session is not None:
            session.last_heard = self.env._time
        self.route(pub)
        if pub.qos:
            self._acknowledge(client, pub)

    def _acknowledge(self, client: SimTransport, pub: Packet) -> None:
        link = client.link
        arrival = link.down_dir.send(self.env._time, PUBACK_BYTES)
        if arrival < 0:
            self.network._ack_lost(client.client_id, pub,
                                   "link_down")
        else:
            self._call_at(arrival, client._on_puback, pub, link.epoch)

    def route(self, pub: Packet) -> None:
        """Store a retained message; send a copy to every subscribed session."""
        topic = pub.topic
        if pub.retain:
            self._retain(topic, pub)
        targets = self._routes.get(topic)
        if targets is None:
            targets = self._compute_routes(topic)
        if not targets:
            return
        qos = pub.qos
        if self.network._interceptor is not None:
            for session, sub_qos in targets:
                self._intercept_down("downlink", session, pub,
                                     sub_qos if sub_qos < qos else qos, None)
            return
        for session, sub_qos in targets:
            self.forward(session, pub, sub_qos if sub_qos < qos else qos, None)

    def _retain(self, topic: str, pub: Packet) -> None:
        if pub.payload:
            self._retained.setdefault(_first_level(topic), {})[topic] = pub
            if topic not in self._retained_rank:
                self._retained_rank[topic] = next(self._ranks)
        else:
            group = self._retained.get(_first_level(topic))
            if group is not None and group.pop(topic, None) is not None:
                del self._retained_rank[topic]

    def _compute_routes(self, topic: str) -> list[tuple[Session, int]]:
        best: dict[Session, int] = {}
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
            self.routes_gen += 1
        self._routes[topic] = routes
        return routes

    def forward(self, session: Session, pub: Packet, qos: int, target: Any) -> None:
        """Send one copy to a session (or queue/drop it if the session is offline)."""
        if not session.online:
            if qos:
                if len(session.queue) < self.max_queued:
                    session.queue.append((pub, qos, target))
                else:
                    self.network._drop(session.client_id, pub, "queue_full")
            else:
                self.network._drop(session.client_id, pub, "offline")
            return
        if qos:
            pid = session.next_pid
            session.next_pid = pid + 1
            session.inflight[pid] = [pub, qos, target, self.env._time]
            if session.retry_at is None:
                self._arm_session_retry(session)
        else:
            pid = 0
        self._send_down(session, pub, qos, pid, target)

    def _send_down(self, session: Session, pub: Packet, qos: int, pid: int,
                   target: Any) -> None:
        client = session.client
        link = client.link
        arrival = link.down_dir.send(self.env._time, pub.wire)
        if arrival < 0:
            self.network._drop(session.client_id, pub,
                               "link_down")
            return
        self._call_at(arrival, client._on_publish, pub, qos, pid, target, session,
                      session.token, link.epoch)

    def arrive_puback(self, client: SimTransport, session: Session, pid: int, pub: Packet,
                      epoch: int) -> None:
        if client.link.epoch != epoch:
            self.network._ack_lost(client.client_id, pub, "link_down")
            return
        if not self.is_up:
            self.network._ack_lost(client.client_id, pub, "broker_down")
            return
        self._serve(self._puback_served, client, session, pid, pub)

    def _puback_served(self, client: SimTransport, session: Session, pid: int, pub: Packet,
                       epoch: int) -> None:
        if epoch != self.epoch:
            self.network._ack_lost(client.client_id, pub, "broker_down")
            return
        session.last_heard = self.env._time
        session.inflight.pop(pid, None)

    def _arm_session_retry(self, session: Session) -> None:
        if session.retry_at is not None or not session.inflight:
            return
        first = next(iter(session.inflight.values()))
        session.retry_at = at = first[3] + self.network.retry_interval
        self._call_at(at, self._session_retry, session, self.epoch)

    def _session_retry(self, session: Session, epoch: int) -> None:
        if epoch != self.epoch or self.sessions.get(session.client_id) is not session:
            return
        session.retry_at = None
        if not session.online:
            return  # resent on reconnect
        now = self.env._time
        interval = self.network.retry_interval
        due = []
        for pid, entry in session.inflight.items():
            if entry[3] + interval > now:
                break
            due.append((pid, entry))
        for pid, entry in due:
            self._resend_down(session, pid, entry)
        self._arm_session_retry(session)

    def _resend_down(self, session: Session, pid: int, entry: list) -> None:
        inflight = session.inflight
        del inflight[pid]
        now = self.env._time
        entry[3] = now
        inflight[pid] = entry
        pub = entry[0]
        net = self.network
        net.retransmits += 1
        rows = net._rows
        if rows is not None:
            rows.append((now, "retransmit", session.client_id, pub.topic, pub.wire,
                         entry[1], pub.id, None, "broker"))
        self._send_down(session, pub, entry[1], pid, entry[2])

    # ------------------------------------------------------------------ interception
    def _intercept_down(self, stage: str, session: Session, pub: Packet, qos: int,
                        target: Any) -> None:
        """``forward`` with an interceptor installed."""
        net = self.network
        kind, seconds = action(net._interceptor(stage, session.client_id, pub.topic,
                                                pub.payload, qos))
        if kind is DELIVER:
            self.forward(session, pub, qos, target)
        elif kind is DROP:
            net._drop(session.client_id, pub, f"intercept:{stage}")
        elif kind is DUPLICATE:
            self.forward(session, pub, qos, target)
            net._intercept_row(session.client_id, pub, f"duplicate:{stage}")
            self.forward(session, pub, qos, target)
        else:
            net._intercept_row(session.client_id, pub, f"delay:{stage}:{seconds:g}")
            self._call_at(self.env._time + seconds, self._release_down, session, pub, qos,
                          target, self.epoch)

    def _release_down(self, session: Session, pub: Packet, qos: int, target: Any,
                      epoch: int) -> None:
        if epoch != self.epoch:
            self.network._drop(session.client_id, pub, "broker_down")
        elif self.sessions.get(session.client_id) is not session:
            self.network._drop(session.client_id, pub, "session_ended")
        else:
            self.forward(session, pub, qos, target)

    # ------------------------------------------------------------------ sessions
    def connect(self, client: SimTransport, token: int, clean: bool, will: Message | None,
                keepalive: float) -> None:
        cid = client.client_id
        session = self.sessions.get(cid)
        if session is not None and clean:
            self._end_session(session)
            session = None
        if session is None:
            session = self.sessions[cid] = Session(cid)
        now = self.env._time
        session.client = client
        session.online = True
        session.token = token
        session.will = will
        session.keepalive = keepalive
        session.last_heard = now
        session.silent_since = None
        session.retry_at = None
        self.network._control_down(client, CONNACK_BYTES, client._on_connack, (token,),
                                   lambda: client._attempt_failed(token))
        if client._frozen:  # it sent CONNECT and froze: the keepalive clock runs
            self.client_silent(client, token)
        # MQTT 3.1.1 section 4.6: resent in the order first sent (pids grow), whatever
        # retransmissions in between reordered
        for pid, entry in sorted(session.inflight.items()):
            self._resend_down(session, pid, entry)
        queue = session.queue
        while queue and session.online:
            pub, qos, target = queue.popleft()
            self.forward(session, pub, qos, target)
        self._arm_session_retry(session)

    def _end_session(self, session: Session) -> None:
        for topic_filter in list(session.subs):
            self._unindex(session, topic_filter)
        session.online = False
        session.will = None
        session.queue.clear()
        session.inflight.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _table(self, topic_filter: str, create: bool) -> dict | None:
        """The index a filter lives in: exact topics, or wildcards by first level."""
        if "+" not in topic_filter and "#" not in topic_filter:
            return self._exact
        root = _first_level(topic_filter)
        return self._wild.setdefault(root, {}) if create else self._wild.get(root)

    def _index(self, session: Session, topic_filter: str, qos: int) -> None:
        self._table(topic_filter, True).setdefault(topic_filter, {})[session] = qos
        session.subs[topic_filter] = qos
        self._routes_changed(topic_filter)
        if self._held:  # what is in flight to it now has a subscriber
            root = _first_level(topic_filter)
            self.materialize(lambda client, topic: topic_matches(topic_filter, topic),
                             root or None)

    def _unindex(self, session: Session, topic_filter: str) -> None:
        session.subs.pop(topic_filter, None)
        table = self._table(topic_filter, False)
        subs = table.get(topic_filter) if table is not None else None
        if subs is not None:
            subs.pop(session, None)
            if not subs:
                del table[topic_filter]
        self._routes_changed(topic_filter)

    def _routes_changed(self, topic_filter: str) -> None:
        """Forget the cached routes a subscription change can affect: one topic's for an
        exact filter (thousands of engines subscribing to their own topics do not flush
        each other's routes), all of them for a wildcard."""
        self.routes_gen += 1
        if "+" in topic_filter or "#" in topic_filter:
            self._routes.clear()
        else:
            self._routes.pop(topic_filter, None)

    def _quiet(self, topic: str, info: TopicInfo) -> bool:
        """Whether ``topic`` is known to have no subscriber (its cached routes are
        empty); remembered in ``info`` for this generation of the routes."""
        routes = self._routes.get(topic)
        if routes is not None and not routes:
            info.quiet = self.routes_gen
            return True
        return False

    def _live_session(self, client: SimTransport, token: int) -> Session | None:
        session = self.sessions.get(client.client_id)
        if session is None or session.token != token or not session.online:
            return None
        session.last_heard = self.env._time
        return session

    def _retained_matching(self, topic_filter: str) -> list[Packet]:
        """The retained messages a new subscription to ``topic_filter`` gets, in the order
        they were first retained."""
        root = _first_level(topic_filter)
        if "+" not in topic_filter and "#" not in topic_filter:
            pub = self._retained.get(root, {}).get(topic_filter)
            return [pub] if pub is not None else []
        groups = [self._retained.get(root, {})] if root else list(self._retained.values())
        found = [p for group in groups for t, p in group.items()
                 if topic_matches(topic_filter, t)]
        if len(groups) > 1:
            rank = self._retained_rank
            found.sort(key=lambda p: rank[p.topic])
        return found

    def subscribe(self, client: SimTransport, token: int, entries: list[tuple[str, int]],
                  target: Any, replace: bool) -> None:
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
            for pub in self._retained_matching(topic_filter):
                if self.network._interceptor is not None:
                    self._intercept_down("retained", session, pub, min(pub.qos, qos),
                                         target if target is not None else topic_filter)
                    continue
                self.forward(session, pub, min(pub.qos, qos),
                             target if target is not None else topic_filter)

    def unsubscribe(self, client: SimTransport, token: int, topic_filter: str) -> None:
        session = self._live_session(client, token)
        if session is not None:
            self._unindex(session, topic_filter)

    def disconnect(self, client: SimTransport, token: int) -> None:
        session = self.sessions.get(client.client_id)
        if session is not None and session.token == token:
            self._end_session(session)

    # ------------------------------------------------------------------ keepalive, wills
    def client_silent(self, client: SimTransport, token: int | None) -> None:
        """The client stopped talking on its connection: the broker's keepalive runs."""
        session = self.sessions.get(client.client_id)
        if (session is None or not session.online or session.client is not client
                or (token is not None and session.token != token)):
            return
        now = self.env._time
        if session.silent_since is None:
            session.silent_since = now
        self._call_at(max(now, self.profile.will_due(session.silent_since, session.keepalive)),
                      self._will_check, session, session.token, self.epoch)

    def client_heard(self, client: SimTransport) -> None:
        session = self.sessions.get(client.client_id)
        if session is not None and session.client is client and session.token == client._conn:
            session.silent_since = None

    def _will_check(self, session: Session, token: int, epoch: int) -> None:
        if (epoch != self.epoch or self.sessions.get(session.client_id) is not session
                or session.token != token or not session.online
                or session.silent_since is None):
            return
        if self._held:
            self._heard_held(session.client_id)
        now = self.env._time
        heard = max(session.silent_since, session.last_heard)
        client = session.client
        if client is not None and client._heard_at > heard:
            heard = client._heard_at  # a held arrival (see hold())
        deadline = self.profile.will_due(heard, session.keepalive)
        if deadline > now:
            self._call_at(deadline, self._will_check, session, token, epoch)
            return
        session.online = False
        net = self.network
        net._row("timeout", session.client_id, None, None, None, None, None, None)
        will, session.will = session.will, None
        if will is not None:
            payload = bytes(will.payload)
            pub = Packet(next(net._ids), will.topic, payload, will.qos, will.retain, now,
                         net._wire(will.topic, payload))
            net.wills += 1
            rows = net._rows
            if rows is not None:
                rows.append((now, "will", session.client_id, pub.topic, pub.wire, pub.qos,
                             pub.id, None, None))
            self.route(pub)


def _everything(client: Any, topic: str) -> bool:
    return True


__all__ = ["Broker", "BrokerProfile", "Session"]
