"""The simulated MQTT client: a board's (or dispatcher's) connection, as a Transport.

``SimTransport`` implements :class:`runtime.transport.Transport`, so the
transport-independent core runs unchanged on simulated boards.

Modelling choices this module owns (see :mod:`thingssim.sim.network` for the others):

- **QoS.** QoS 0: at most once, lost to a fault (a cut link, a crash) or when the client
  is disconnected; a lossy hop only delays it (TCP, :mod:`thingssim.sim.link`).  QoS 1:
  the client keeps what it published until the PUBACK arrives and
  retransmits it every ``retry_interval`` (default 5 s) while connected, and on reconnect
  in the order first sent (MQTT 3.1.1 section 4.6); QoS 1 published while disconnected
  waits in an outbox and leaves after those.  A lost PUBACK gives the receiver a
  duplicate (at least once).  Deliveries are traced as ``deliver`` (first copy to that
  client) or ``duplicate``.
- **Handlers.** One copy per matching message reaches the client however many of its
  filters match; the client hands it to its :class:`runtime.subscriptions.SubscriptionTable`,
  the same table (and rules) as the memory and MQTT transports: every matching handler
  once, in subscription order; a handler that raises is logged, traced
  (``handler_error``) and counted, and the others still get the message.
- **Reconnection.** On every (re)connect the client re-sends its whole subscription set
  (filters unsubscribed while offline are removed) and so receives the matching retained
  messages again.  It notices a dead link after ``keepalive`` seconds of continuous
  outage (a shorter blip is ridden out; QoS 0 sent meanwhile is lost), and a broker crash
  one downlink latency later (the connection is reset; ``keepalive`` if its link is
  down).  It then tells its listeners ``False`` and retries connecting every
  ``reconnect_interval`` (default 1 s); an attempt fails at once when the link or broker
  is down.
- **The board's CPU.** With ``gate`` set (a board's ``cores``, as the world does), a
  message leaves only once core 0, the engine's thread that relays every message, is
  free: a migration's transfer starts after its snapshot has been taken.
- **Crashes.** :meth:`SimTransport.vanish` is a board losing power: all client state is
  forgotten, the broker publishes the will after ``1.5 * keepalive``.
- **Frozen clients** (:meth:`SimTransport.freeze`/``thaw``: a SIGSTOPped process).  A
  frozen client neither sends nor handles anything; what reaches it waits (unacknowledged)
  in its socket, and what it is asked to send leaves at ``thaw()``.  The broker hears
  nothing from it, so after ``1.5 * keepalive`` it closes the connection and publishes the
  will; a thawed client finds its connection closed and reconnects (its session, with the
  unacknowledged QoS 1, survives).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

from runtime.subscriptions import SubscriptionTable
from runtime.topics import validate_filter, validate_topic
from runtime.transport import ConnectionListener, Message, MessageHandler

from .clock import NORMAL, _Call
from .intercept import DELIVER, DROP, DUPLICATE, action
from .link import (
    CONNECT_OVERHEAD,
    DISCONNECT_BYTES,
    PUBACK_BYTES,
    SUBSCRIBE_OVERHEAD,
    UNSUBSCRIBE_OVERHEAD,
    Link,
    Packet,
)

if TYPE_CHECKING:
    from .broker import Session
    from .network import Network

# client states
IDLE = "idle"
CONNECTING = "connecting"
CONNECTED = "connected"
LOST_CONN = "lost"
VANISHED = "vanished"


class SimTransport:
    """One MQTT client in the simulated network (the :class:`Transport` interface).

    Besides the interface: ``vanish()`` (crash without a clean disconnect),
    ``freeze()``/``thaw()`` (a stopped process), ``state``, ``frozen`` and ``link``.
    """

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("network", "gate", "charge", "_state", "link", "_life", "_conn",
                 "client_id", "_subs", "_frozen", "keepalive", "_token", "_attempt_no",
                 "_clean", "_will", "_listeners", "_inflight", "_outbox", "_retry_at",
                 "_retry_gen", "_held", "_heard_at", "__dict__")

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
        #: when each core of the board is next free (``Board.cores``): messages leave
        #: once core 0, the engine's thread that relays them, is free; None: at once
        self.gate: Sequence[float] | None = None
        #: called with each message's payload size, sent or received: when the
        #: engine's thread has handled it (it takes the thread); None: messages cost
        #: no CPU
        self.charge: Callable[[int], float] | None = None
        self._subs = SubscriptionTable(
            lambda handler, message, exc: network._handler_failed(client_id, message, exc),
            owner=client_id)
        self._listeners: list[ConnectionListener] = []
        self._inflight: dict[int, list] = {}  # pub id -> [pub, last sent], by last send
        self._outbox: deque[Packet] = deque()  # QoS 1 published while disconnected
        self._retry_at: float | None = None
        self._retry_gen = 0
        self._life = 0  # +1 at each vanish(): delayed messages die with their client
        self._frozen = False
        self._held: list[tuple[str, tuple]] = []  # what waits for thaw(), in order
        #: the latest arrival of this client's PUBLISHes the broker held and has
        #: forgotten (:meth:`Broker.hold`): when the broker last heard from it through them
        self._heard_at = float("-inf")

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
        if self._state in (CONNECTING, CONNECTED, LOST_CONN):
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
        net = self.network
        net._row("disconnect", self.client_id, None, None, None, None, None, None)
        if state is CONNECTED:
            broker = net.broker
            net._control_up(self, DISCONNECT_BYTES, broker.disconnect, (self, token),
                            lambda: broker.client_silent(self, token))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        net = self.network
        if self.charge is not None:  # the engine's thread handles it first
            at = self.charge(len(payload))
            if at > net.env._time:
                net._call_at(at, self._publish_late, self._life, topic, payload, qos, retain)
                return
        gate = self.gate
        if gate is not None and gate[0] > net.env._time:  # the board's relay is busy
            net._call_at(gate[0], self._publish_late, self._life, topic, payload, qos, retain)
            return
        self._publish(topic, payload, qos, retain)

    def _publish_late(self, life: int, topic: str, payload: bytes, qos: int,
                      retain: bool) -> None:
        if life == self._life:  # not if the board crashed meanwhile
            self._publish(topic, payload, qos, retain)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """``publish`` once the board's CPU has let the message go."""
        net = self.network
        if (self._state is CONNECTED and qos == 0 and not retain and type(payload) is bytes
                and net._interceptor is None):
            info = net._topics.get(topic)
            if info is not None:  # the hot path: a known topic, QoS 0, connected
                env = net.env
                now = env._time
                msg_id = next(net._ids)
                wire = info.wire + len(payload)
                net.published += 1
                rows = net._rows
                if rows is not None:
                    rows.append((now, "publish", self.client_id, topic, wire, 0, msg_id,
                                 None, None))
                link = self.link
                arrival = link.up_dir.send(now, wire)
                broker = net.broker
                if (arrival >= 0 and broker.holds and broker.is_up and not broker._service
                        and (info.quiet == broker.routes_gen or broker._quiet(topic, info))):
                    # nobody subscribes: the broker holds it instead of queueing its
                    # arrival (the Packet is made only if it is ever needed)
                    broker.hold(info.root, (arrival, NORMAL, next(env._seq), self, topic,
                                            payload, wire, msg_id, now, link.epoch))
                    return
                pub = Packet(msg_id, topic, payload, 0, False, now, wire)
                if arrival < 0:
                    net._drop(self.client_id, pub, "link_down")
                    return
                env._push((arrival, NORMAL, next(env._seq), _Call(
                    net._arrive_publish, (self, pub, link.epoch))))
                return
        if self._state is VANISHED:
            return
        if qos != 0 and qos != 1:
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        info = net._topics.get(topic)
        if info is None:
            info = net._topic_info(topic)  # validates it
        base = info.wire
        if type(payload) is not bytes:
            payload = bytes(payload)
        now = net.env._time
        pub = Packet(next(net._ids), topic, payload, qos, bool(retain), now,
                     base + len(payload))
        net.published += 1
        if net._interceptor is not None:
            self._intercept_up(pub)
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
        self._subs.add(topic_filter, handler, qos)
        if self._state is CONNECTED:  # every call: it brings the retained messages
            net = self.network
            net._control_up(self, SUBSCRIBE_OVERHEAD + 3 + len(topic_filter.encode()),
                            net.broker.subscribe,
                            (self, self._conn, [(topic_filter, self._subs.qos(topic_filter))],
                             handler, False), None)

    def unsubscribe(self, topic_filter: str, handler: MessageHandler | None = None) -> None:
        if not self._subs.remove(topic_filter, handler):
            return  # the filter still has handlers (or was never held)
        if self._state is CONNECTED:
            net = self.network
            net._control_up(self, UNSUBSCRIBE_OVERHEAD + 2 + len(topic_filter.encode()),
                            net.broker.unsubscribe, (self, self._conn, topic_filter), None)

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
        self._subs.clear()
        self._listeners.clear()
        self._inflight.clear()
        self._outbox.clear()
        self._life += 1
        self._frozen = False
        self._held.clear()
        self.__dict__.pop("_publish", None)
        net.broker.client_silent(self, None)

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
        self._publish = self._hold_publish  # the class's _publish() keeps no frozen test
        net._row("freeze", self.client_id, None, None, None, None, None, None)
        if self._state is CONNECTED:
            net.broker.client_silent(self, self._conn)

    def thaw(self) -> None:
        """Resume the process: if the broker closed the connection meanwhile (keepalive
        timeout, broker restart) the client notices now and reconnects; then what waited
        is handled in order (a closed connection drops what reached it on that connection:
        the broker resends its QoS 1 on reconnect), and the waiting publishes are sent."""
        if not self._frozen:
            return
        net = self.network
        broker = net.broker
        self._frozen = False
        self.__dict__.pop("_publish", None)
        net._row("thaw", self.client_id, None, None, None, None, None, None)
        if self._state is CONNECTED:
            session = broker.sessions.get(self.client_id)
            if (session is None or not session.online or session.client is not self
                    or session.token != self._conn or not broker.is_up):
                self._lose("frozen")
            elif self.link.is_up:
                broker.client_heard(self)
        held, self._held = self._held, []
        for name, args in held:
            getattr(self, name)(*args)

    def _hold_publish(self, topic: str, payload: bytes, qos: int = 0,
                      retain: bool = False) -> None:
        self._held.append(("_publish", (topic, payload, qos, retain)))

    def _hold(self, name: str, args: tuple) -> None:
        self._held.append((name, args))

    # ------------------------------------------------------------------ interception
    def _intercept_up(self, pub: Packet) -> None:
        """``publish()`` with an interceptor installed."""
        net = self.network
        kind, seconds = action(net._interceptor("uplink", self.client_id, pub.topic,
                                                pub.payload, pub.qos))
        if kind is DELIVER:
            self._post(pub, True)
        elif kind is DROP:
            net._row("publish", self.client_id, pub.topic, pub.wire, pub.qos, pub.id,
                     None, None)
            net._drop(self.client_id, pub, "intercept:uplink")
        elif kind is DUPLICATE:
            self._post(pub, True)
            net._intercept_row(self.client_id, pub, "duplicate:uplink")
            self._post(pub, False)
        else:
            net._row("publish", self.client_id, pub.topic, pub.wire, pub.qos, pub.id,
                     None, None)
            net._intercept_row(self.client_id, pub, f"delay:uplink:{seconds:g}")
            net._call_at(net.env._time + seconds, self._release_up, pub, self._life)

    def _release_up(self, pub: Packet, life: int) -> None:
        if self._life != life:
            self.network._drop(self.client_id, pub, "vanished")
        else:
            self._post(pub, False)

    def _post(self, pub: Packet, traced: bool) -> None:
        """The rest of ``publish()`` for an intercepted message (``traced``: write its
        ``publish`` row)."""
        net = self.network
        rows = net._rows if traced else None
        if self._state is VANISHED:
            net._drop(self.client_id, pub, "vanished")
        elif self._state is CONNECTED:
            if rows is not None:
                rows.append((net.env._time, "publish", self.client_id, pub.topic, pub.wire,
                             pub.qos, pub.id, None, None))
            self._send(pub)
        elif pub.qos:
            if rows is not None:
                rows.append((net.env._time, "publish", self.client_id, pub.topic, pub.wire,
                             pub.qos, pub.id, None, "queued"))
            self._outbox.append(pub)
        else:
            if rows is not None:
                rows.append((net.env._time, "publish", self.client_id, pub.topic, pub.wire,
                             pub.qos, pub.id, None, None))
            net._drop(self.client_id, pub, "offline")

    # ------------------------------------------------------------------ connecting
    def _attempt(self) -> None:
        net = self.network
        self._token = token = next(net._tokens)
        if not self.link.is_up or not net.broker.is_up:
            self._attempt_failed(token)
            return
        will = self._will
        nbytes = CONNECT_OVERHEAD + len(self.client_id.encode())
        if will is not None:
            nbytes += 4 + len(will.topic.encode()) + len(will.payload)
        net._control_up(self, nbytes, net.broker.connect,
                        (self, token, self._clean, will, self.keepalive),
                        lambda: self._attempt_failed(token))

    def _attempt_failed(self, token: int) -> None:
        if self._token == token and (self._state is CONNECTING or self._state is LOST_CONN):
            self._schedule_attempt()

    def _schedule_attempt(self) -> None:
        self._attempt_no += 1
        net = self.network
        net._call_at(net.env._time + net.reconnect_interval, self._maybe_attempt,
                     self._attempt_no)

    def _maybe_attempt(self, attempt_no: int) -> None:
        if self._frozen:
            return self._hold("_maybe_attempt", (attempt_no,))
        if attempt_no == self._attempt_no and (self._state is CONNECTING
                                               or self._state is LOST_CONN):
            self._attempt()

    def _on_connack(self, token: int) -> None:
        if self._frozen:
            return self._hold("_on_connack", (token,))
        net = self.network
        if self._token != token or not (self._state is CONNECTING
                                        or self._state is LOST_CONN):
            if self._state is IDLE or self._state is VANISHED:
                net.broker.client_silent(self, token)  # gave up: the socket just closes
            return
        self._state = CONNECTED
        self._conn = token
        self._clean = False
        net._row("connect", self.client_id, None, None, None, None, None, None)
        if len(self._subs):
            entries = list(self._subs.filters().items())
            nbytes = SUBSCRIBE_OVERHEAD + sum(3 + len(f.encode()) for f, _ in entries)
            net._control_up(self, nbytes, net.broker.subscribe,
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
        self._state = LOST_CONN
        self._conn = 0
        self._token = 0
        net = self.network
        net._row("connection_lost", self.client_id, None, None, None, None, None, reason)
        net.broker.client_silent(self, token)
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
    def _send(self, pub: Packet) -> None:
        net = self.network
        now = net.env._time
        if pub.qos:
            self._inflight[pub.id] = [pub, now]
            if self._retry_at is None:
                self._arm_retry()
        link = self.link
        arrival = link.up_dir.send(now, pub.wire)
        if arrival < 0:
            net._drop(self.client_id, pub, "link_down")
            return
        net._call_at(arrival, net._arrive_publish, self, pub, link.epoch)

    def _resend(self, entry: list) -> None:
        pub = entry[0]
        del self._inflight[pub.id]
        net = self.network
        net.retransmits += 1
        rows = net._rows
        if rows is not None:
            rows.append((net.env._time, "retransmit", self.client_id, pub.topic, pub.wire,
                         pub.qos, pub.id, None, "client"))
        self._send(pub)

    def _arm_retry(self) -> None:
        if self._retry_at is not None or not self._inflight:
            return
        net = self.network
        first = next(iter(self._inflight.values()))
        self._retry_at = at = first[1] + net.retry_interval
        net._call_at(at, self._on_retry, self._retry_gen)

    def _on_retry(self, gen: int) -> None:
        if gen != self._retry_gen:
            return
        if self._frozen:
            return self._hold("_on_retry", (gen,))
        self._retry_at = None
        if self._state is not CONNECTED:
            return  # resent on reconnect
        net = self.network
        now = net.env._time
        interval = net.retry_interval
        due = []
        for entry in self._inflight.values():
            if entry[1] + interval > now:
                break
            due.append(entry)
        for entry in due:
            self._resend(entry)
        self._arm_retry()

    def _on_puback(self, pub: Packet, epoch: int) -> None:
        if self.link.epoch != epoch:
            self.network._ack_lost(self.client_id, pub, "link_down")
            return
        if self._state is not VANISHED:
            self._inflight.pop(pub.id, None)

    # ------------------------------------------------------------------ receiving
    def _on_publish(self, pub: Packet, qos: int, pid: int, target: Any, session: Session,
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
        now = net.env._time
        if qos:
            arrival = link.up_dir.send(now, PUBACK_BYTES)
            if arrival < 0:
                net._ack_lost(self.client_id, pub, "link_down")
            else:
                net._call_at(arrival, net.broker.arrive_puback, self, session, pid, pub,
                             link.epoch)
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
            handlers = self._subs.handlers_for(pub.topic)
        else:
            detail = "retained"
            msg = Message(pub.topic, pub.payload, qos, True)
            handlers = (self._subs.handlers_of(target) if isinstance(target, str) else
                        (target,) if target in self._subs.handlers_for(pub.topic) else ())
        if event == "deliver":
            net.delivered += 1
        else:
            net.duplicates += 1
        net.bytes_delivered += pub.wire
        rows = net._rows
        if rows is not None:
            rows.append((now, event, self.client_id, pub.topic, pub.wire, qos, pub.id,
                         now - pub.t0, detail))
        if self.charge is not None:  # the engine's thread parses it first
            at = self.charge(len(pub.payload))
            if handlers and at > now:
                net._call_at(at, self._deliver_late, self._life, msg, handlers)
                return
        if handlers:
            self._subs.deliver(msg, handlers)

    def _deliver_late(self, life: int, msg: Message, handlers: Any) -> None:
        """A message the engine's thread has now handled (see ``charge``)."""
        if self._frozen:
            return self._hold("_deliver_late", (life, msg, handlers))
        if life == self._life and self._state is not VANISHED:
            self._subs.deliver(msg, handlers)

    def __repr__(self) -> str:
        return f"<SimTransport {self.client_id} {self._state} on {self.link.name}>"


def _first_sent(entry: list) -> int:
    """Publish ids grow with time: sorting by them restores the original send order."""
    return entry[0].id


__all__ = ["CONNECTED", "CONNECTING", "IDLE", "LOST_CONN", "VANISHED", "SimTransport"]
