"""MqttTransport: the :class:`~runtime.transport.Transport` on a real MQTT broker.

paho-mqtt 2.x, MQTT 3.1.1, standard library otherwise::

    transport = MqttTransport("mqtt://user:pass@broker:1883", client_id="bbb-1",
                              loop=clock.loop)
    engine = CodeEngine(transport, clock, engine_id="bbb-1").start()   # connects

**Threads** (``io="thread"``, the default).  paho runs its network loop in its own
thread (``loop_start()``).  Every incoming message and every connection change is handed
to the asyncio loop the core runs on through one FIFO queue, drained on the loop (only
the first event of a burst wakes the loop with ``loop.call_soon_threadsafe``), so
handlers and listeners run on the loop thread, one at a time, in the order paho read the
packets.  The core calls ``publish``/``subscribe``/``unsubscribe`` on the loop thread.
What that relies on in paho 2.x: ``Client.publish``, ``subscribe`` and ``unsubscribe``
append the packet to a ``deque`` (atomic under the GIL), guard QoS > 0 state with
``_out_message_mutex`` and wake the network thread through its socket pair; the network
thread does all socket reads and writes.  The subscription table
(:class:`runtime.subscriptions.SubscriptionTable`) is touched only on the loop thread;
the network thread re-subscribes on reconnect from a copy of its filters and their QoS,
kept under a lock here.

**No thread** (``io="asyncio"``).  paho's socket is driven by the asyncio loop itself
(``add_reader``/``add_writer`` and a 1 s ``loop_misc`` timer, paho's documented
external-loop mode): handlers run directly as packets are read, with no thread hand-off
and no GIL contention, about twice as fast per request/reply.  Only the blocking part of
a (re)connection (TCP connect, TLS handshake, session purge) runs in the loop's default
executor; the back-off between attempts is the same.  A loop blocked for longer than
1.5 x keepalive (a callback that never returns) gets its connection dropped by the
broker; the threaded mode keeps answering pings meanwhile.

**Connections.**  ``connect()`` sets the will and starts connecting (``connect_async`` +
``loop_start``, or an executor attempt with ``io="asyncio"``) and returns at once; after a
lost connection it reconnects by itself, waiting ``reconnect_min`` doubling up to
``reconnect_max`` seconds between attempts.  On every successful CONNACK it
re-subscribes every filter at its QoS (before paho re-sends the QoS 1 messages it kept);
once the broker has acknowledged them all (an UNSUBSCRIBE of an unused filter serves as
the barrier), ``connected`` turns True and listeners are told ``True``: whatever is
published to this client from then on reaches it, and what this client publishes from
then on goes out after the QoS 1 messages kept from before.  On a
lost connection listeners are told ``False`` (not after a clean ``disconnect()``).  A
refusal that retrying cannot fix (bad user name or password, not authorised, identifier
rejected, protocol version) is logged once as an error, kept in
:attr:`MqttTransport.connect_error`, and stops the retries: listeners are never told
anything, ``state`` is ``"failed"``, and :meth:`MqttTransport.wait_connected` raises
:class:`MqttConnectError`.  An unreachable broker is retried forever (``connect_error``
says why meanwhile).

**Sessions.**  With ``clean_session=False`` (the default) the broker keeps the session
(subscriptions, QoS 1 messages for this client) across connection losses.  Each explicit
``connect()`` starts a *fresh* persistent session (``fresh_session=True``): before the first
connection a short clean-session connection with the same client id discards whatever an
earlier life of this client id left on the broker, so a restarted engine does not replay
commands queued for its previous life.  The real connection waits (at most 1 s) until the
broker has closed that purge connection: a broker still closing it would take the session
over from it (amqtt then stops delivering to the new connection).  (This is the
simulator's model: a session lives from ``connect()`` to ``disconnect()``.)

**Delivery.**  QoS 1 is kept by paho until the broker acknowledges it, across connection
losses, and is (re)sent after the re-subscriptions on reconnect; QoS 1 published before
``connect()`` or while disconnected waits in paho's queue (at most ``max_queued``
messages: more are dropped, counted in :attr:`MqttTransport.dropped`, and logged).  QoS 0
published while disconnected, or queued in the socket when the connection breaks, is
dropped.  QoS 1 keeps its order across reconnects: paho re-sends what it kept in
publish order, before anything published once listeners heard True (see the barrier
above; one published during the reconnection handshake itself may overtake them); a
message sent but not acknowledged before the break may arrive twice.

**Dispatch.** The broker sends one copy per client however many of its filters match
(Mosquitto; amqtt sends one per matching filter, and each copy is dispatched as below,
so overlapping filters there call handlers once per copy); each incoming message calls
every handler whose filter matches (:func:`runtime.topics.topic_matches`), each handler
once (filters in the order they were first subscribed, then handlers in the order they
were added) -- the rules of :mod:`runtime.subscriptions`, shared with the simulator and
the memory transport. Retained copies (``retain=True``, sent only because of a SUBSCRIBE)
go only to handlers that have not yet received any message on that topic since they
subscribed (or since the last reconnect): a second handler subscribing to a filter gets
the retained messages, the handlers already there do not get them twice.  A handler
that raises is logged (logger ``runtime.subscriptions``, with its traceback); the other
handlers still get the message.

TCP_NODELAY is set on the socket (paho does not).  Payloads up to MQTT's 256 MB limit
work; keepalive is rounded up to whole seconds (MQTT's unit), at least 1.

**Brokers.**  Mosquitto leaves Nagle's algorithm on for its own sockets unless
``set_tcp_nodelay true``: then the second of two quick messages to a client waits for a
delayed ACK, about 40 ms per request/reply on Linux (``thingssim.broker`` sets it).
Mosquitto 2.0 scans keepalives only every few seconds: the will of a client that went
silent (not one whose socket closed) comes 5-6 s after it fell silent for a 1 s
keepalive and about 11 s for 4-7 s, not at 1.5 x keepalive.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import ssl
import threading
from collections import deque
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .subscriptions import SubscriptionTable
from .topics import validate_topic
from .transport import ConnectionListener, Message, MessageHandler

log = logging.getLogger(__name__)

__all__ = ["MqttTransport", "MqttConnectError", "parse_broker_url"]

#: URL scheme -> (TLS, default port)
SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883),
           "ssl": (True, 8883)}
#: MQTT 5 reason codes (paho maps 3.1.1 CONNACK codes onto them) that retrying cannot fix
_PERMANENT = {0x84: "unsupported protocol version", 0x85: "client identifier rejected",
              0x86: "bad user name or password", 0x87: "not authorised"}
_SUBSCRIBE_CHUNK = 64  # filters per SUBSCRIBE packet when re-subscribing
_BARRIER = "thingssim/connect-barrier"  # unsubscribed on connect; never subscribed
#: topics whose last delivery is remembered to keep retained copies single (beyond it
#: the oldest is forgotten: its next retained copy reaches every matching handler again)
_SEEN_LIMIT = 65_536


class _DemoteExpected(logging.Filter):
    """paho logs expected events (a clean disconnect, a broker going away) as errors;
    we report those ourselves, so its versions go to DEBUG."""

    EXPECTED = ("Client is not connected", "failed to receive on socket",
                "failed to send on socket", "Connection failed, retrying")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.EXPECTED):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_PAHO_LOG = logging.getLogger(__name__ + ".paho")
_PAHO_LOG.addFilter(_DemoteExpected())

IDLE, CONNECTING, CONNECTED, LOST, FAILED = "idle", "connecting", "connected", "lost", "failed"


class MqttConnectError(ConnectionError):
    """The broker refused the connection for good (credentials, authorisation...)."""


def parse_broker_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """``mqtt://user:pass@host:1883`` -> ``(host, port, username, password, tls)``.

    Schemes: ``mqtt``/``tcp`` (port 1883 by default) and ``mqtts``/``ssl`` (TLS, 8883).
    A bare ``host`` or ``host:port`` means ``mqtt://``.  User name and password are
    percent-decoded; IPv6 hosts go in brackets (``mqtt://[::1]:1883``).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"broker URL must be a non-empty string, got {url!r}")
    text = url.strip()
    if "://" not in text:
        text = "mqtt://" + text
    parts = urlsplit(text)
    shown = _redact(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported broker URL scheme {parts.scheme!r} in {shown!r}: "
                         f"use mqtt://host[:port] or mqtts://host[:port]")
    tls, default_port = SCHEMES[scheme]
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"bad port in broker URL {shown!r}: it must be 1-65535") from None
    if not host:
        raise ValueError(f"no host in broker URL {shown!r}")
    if port == 0:
        raise ValueError(f"bad port in broker URL {shown!r}: it must be 1-65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {shown!r} must not have a path, query or fragment")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise ValueError(f"broker URL {shown!r} has a password but no user name")
    return host, port or default_port, username, password, tls


def _redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    if not isinstance(url, str) or "@" not in url:
        return url
    head, _, tail = url.rpartition("@")
    scheme, sep, userinfo = head.rpartition("://")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}@{tail}"


class MqttTransport:
    """One MQTT client connection (see the module docstring for the guarantees).

    Besides the Transport interface: ``close()``, ``await wait_connected(timeout)``,
    ``state``, ``connect_error``, ``session_present``, ``dropped``, ``url``.
    """

    def __init__(
        self,
        url_or_host: str,
        port: int = 1883,
        *,
        client_id: str,
        loop: asyncio.AbstractEventLoop | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: dict | None = None,
        clean_session: bool = False,
        reconnect_min: float = 0.5,
        reconnect_max: float = 5.0,
        fresh_session: bool = True,
        max_queued: int = 10_000,
        max_inflight: int = 100,
        connect_timeout: float = 5.0,
        io: str = "thread",
    ) -> None:
        if not isinstance(client_id, str) or not client_id:
            raise ValueError(f"client_id must be a non-empty string, got {client_id!r}")
        if "://" in str(url_or_host):
            host, port, url_user, url_password, url_tls = parse_broker_url(url_or_host)
            username = username if username is not None else url_user
            password = password if password is not None else url_password
            if url_tls and tls is None:
                tls = {}
        else:
            host = str(url_or_host)
            if not host:
                raise ValueError("broker host must not be empty")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"broker port must be 1-65535, got {port!r}")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if io not in ("thread", "asyncio"):
            raise ValueError(f"io must be 'thread' or 'asyncio', got {io!r}")
        if tls is not None:
            unknown = set(tls) - {"ca_certs", "certfile", "keyfile", "insecure"}
            if unknown:
                raise ValueError(f"unknown tls option(s) {sorted(unknown)}; known: ca_certs, "
                                 f"certfile, keyfile, insecure")
        self.client_id = client_id
        self.host, self.port = host, port
        self.username, self._password = username, password
        self.tls = None if tls is None else dict(tls)
        self.clean_session = bool(clean_session)
        self.fresh_session = bool(fresh_session)
        self.reconnect_min, self.reconnect_max = float(reconnect_min), float(reconnect_max)
        self.max_queued, self.max_inflight = int(max_queued), int(max_inflight)
        self.connect_timeout = float(connect_timeout)
        self.io = io
        scheme = "mqtts" if self.tls is not None else "mqtt"
        netloc = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{username + '@' if username else ''}{netloc}:{port}"
        self._loop = loop
        self.keepalive = 10
        self.connect_error: str | None = None
        self.session_present = False
        self.dropped = 0  # QoS 1 publishes refused because paho's queue was full
        self._state = IDLE
        self._connected = False
        self._closing = False
        self._gen = 0  # bumped by connect()/disconnect(): stale thread events are ignored
        self._purge_pending = False
        self._listeners: list[ConnectionListener] = []
        self._waiters: list[asyncio.Future] = []
        self._subs = SubscriptionTable(owner=client_id)  # loop thread only
        self._lock = threading.Lock()
        self._qos: dict[str, int] = {}  # _subs.filters(), for the network thread
        # Retained copies go to handlers with no message on the topic since they
        # subscribed: a stamp counts subscribe() calls; _since[(filter, id(handler as
        # held by _subs))] is the stamp of that handler's last subscribe() of that
        # filter, _seen[topic] the stamp when a message on topic was last handed out.
        self._stamp = 0
        self._since: dict[tuple[str, int], int] = {}
        self._seen: dict[str, int] = {}  # emptied on reconnect
        self._reported_unreachable = False
        self._delay = self.reconnect_min  # asyncio mode: next back-off
        self._timer: asyncio.TimerHandle | None = None  # asyncio mode: misc or retry
        self._dispatching = 0
        # io="thread": events from the network thread, in order, for the loop (_post)
        self._posted: deque[tuple[Callable[..., None], tuple]] = deque()
        self._posted_lock = threading.Lock()
        self._drain_due = False
        self._barrier: int | None = None  # UNSUBACK awaited before listeners hear True
        self._client = self._new_client(self.clean_session)
        self._wire(self._client)

    # ------------------------------------------------------------------ Transport
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``connected``, ``lost`` (reconnecting) or ``failed``."""
        return self._state

    def connect(self, will: Message | None = None, keepalive: float = 10.0) -> None:
        if self._state in (CONNECTING, CONNECTED, LOST):
            raise RuntimeError(f"{self.client_id}: already {self._state}")
        if not keepalive > 0:
            raise ValueError("keepalive must be > 0")
        if self._loop is None:
            self._loop = _current_loop()
        if self._closing or self._state == FAILED:  # a network thread may be ending
            self._join_thread(self.connect_timeout + 1.0)
        client = self._client
        if will is not None:
            validate_topic(will.topic)
            client.will_set(will.topic, bytes(will.payload), _check_qos(will.qos),
                            bool(will.retain))
        else:
            client.will_clear()
        self.keepalive = max(1, math.ceil(keepalive))
        self._gen += 1
        self._closing = False
        self.connect_error = None
        self._reported_unreachable = False
        self._purge_pending = self.fresh_session and not self.clean_session
        self._state = CONNECTING
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        if self.io == "asyncio":
            self._delay = self.reconnect_min
            self._loop.call_soon(self._aio_attempt, self._gen)
        elif client.loop_start() != mqtt.MQTT_ERR_SUCCESS:  # pragma: no cover - joined above
            raise RuntimeError(f"{self.client_id}: the previous network thread is still running")

    def disconnect(self) -> None:
        """Close cleanly (the broker does not publish the will) and stop the network
        thread (waits at most ``connect_timeout`` + 1 s for it)."""
        if self._state == IDLE and not self._closing:
            return
        self._closing = True
        self._gen += 1
        self._connected = False
        self._state = IDLE
        self._client.disconnect()
        if self.io == "asyncio":
            self._cancel_timer()
            if not self._dispatching:
                self._client.loop_write()  # send DISCONNECT now: the loop may stop next
        else:
            self._join_thread(self.connect_timeout + 1.0)
            if self._client.socket() is not None:  # the thread was mid-(re)connect
                self._client.disconnect()  # no thread now: paho writes it at once
        self._fail_waiters(MqttConnectError(f"{self.client_id}: disconnected"))

    close = disconnect

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        validate_topic(topic)
        if type(payload) is not bytes:
            payload = bytes(payload)
        info = self._client.publish(topic, payload, _check_qos(qos), bool(retain))
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%s: paho's queue is full (%d QoS 1 messages waiting): dropped "
                            "a publish to %s (%d dropped so far)", self.client_id,
                            self.max_queued, topic, self.dropped)

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        qos = _check_qos(qos)
        subs = self._subs
        subs.add(topic_filter, handler, qos)  # (validates the filter)
        self._stamp += 1
        for held in subs.handlers_of(topic_filter):
            if held is handler or held == handler:
                # subscribing (again): it gets the retained messages (again)
                self._since[(topic_filter, id(held))] = self._stamp
                break
        qos = subs.qos(topic_filter)
        with self._lock:
            self._qos[topic_filter] = qos
        # always sent, even for a filter already held: the broker then sends the retained
        # messages, which only the new handler takes (see _fresh); offline, paho refuses
        # it and the next CONNACK re-subscribes everything
        self._client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str, handler: MessageHandler | None = None) -> None:
        subs = self._subs
        for held in subs.handlers_of(topic_filter):
            if handler is None or held is handler or held == handler:
                self._since.pop((topic_filter, id(held)), None)
        if not subs.remove(topic_filter, handler):
            return
        with self._lock:
            self._qos.pop(topic_filter, None)
        self._client.unsubscribe(topic_filter)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ extras
    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; raise :class:`MqttConnectError` if the broker refused
        the connection for good, ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        if self._connected:
            return
        if self._state == FAILED:
            raise MqttConnectError(self.connect_error or "connection refused")
        if self._loop is None:
            self._loop = _current_loop()
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            why = f" (last error: {self.connect_error})" if self.connect_error else ""
            raise asyncio.TimeoutError(f"{self.client_id}: not connected to {self.url} "
                                       f"within {timeout:g} s{why}") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def __enter__(self) -> MqttTransport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MqttTransport {self.client_id} {self.url} {self._state}>"

    # ------------------------------------------------------------------ paho setup
    def _new_client(self, clean_session: bool) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean_session)
        client.suppress_exceptions = True  # a bug in a callback is logged, never kills I/O
        if _PAHO_LOG.isEnabledFor(logging.DEBUG):  # paho logs every packet: ~10% of a
            client.enable_logger(_PAHO_LOG)  # round trip even when nobody listens
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self.tls is not None:
            insecure = bool(self.tls.get("insecure"))
            client.tls_set(ca_certs=self.tls.get("ca_certs"), certfile=self.tls.get("certfile"),
                           keyfile=self.tls.get("keyfile"),
                           cert_reqs=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED)
            client.tls_insecure_set(insecure)
        client.connect_timeout = self.connect_timeout
        client.on_socket_open = _set_nodelay
        return client

    def _wire(self, client: mqtt.Client) -> None:
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(self.max_queued)
        client.reconnect_delay_set(self.reconnect_min, self.reconnect_max)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        if self.io == "asyncio":
            client.on_socket_open = self._aio_socket_open
            client.on_socket_close = self._aio_socket_close
            client.on_socket_register_write = self._aio_want_write
            client.on_socket_unregister_write = self._aio_unwant_write

    def _join_thread(self, timeout: float) -> None:
        """Stop paho's network thread (paho's ``loop_stop`` joins without a timeout)."""
        if self.io == "asyncio":
            return
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True,
                                   name=f"mqtt-stop-{self.client_id}")
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning("%s: the MQTT network thread did not stop within %g s",
                        self.client_id, timeout)

    # ------------------------------------------------------------------ network thread
    # These run on paho's thread: they only read the filter table (under the lock), call
    # paho, set plain attributes and hand everything else to the loop.
    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if self.io == "asyncio":
            if _running_loop() is loop:
                fn(*args)  # already on the loop thread (paho called back from loop_read)
                return
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass
            return
        # The network thread: every event goes through one FIFO, drained on the loop.
        # Only the first event of a burst wakes the loop (call_soon_threadsafe writes to
        # its self-pipe), not every message.
        with self._posted_lock:
            self._posted.append((fn, args))
            if self._drain_due:
                return
            self._drain_due = True
        try:
            loop.call_soon_threadsafe(self._drain_posted)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _drain_posted(self) -> None:
        """On the loop: run the events posted so far, in order; later ones in the next
        loop iteration, so a flood of messages does not starve the loop's other work."""
        posted = self._posted
        try:
            for _ in range(len(posted)):
                fn, args = posted.popleft()
                fn(*args)
        finally:
            with self._posted_lock:
                if posted:
                    self._loop.call_soon(self._drain_posted)
                else:
                    self._drain_due = False

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if self._purge_pending and not self._closing:
            self._purge_pending = not self._purge_session()

    def _purge_session(self) -> bool:
        """Connect once with a clean session and leave: the broker forgets this client
        id's old session.  Returns False if the broker could not be reached."""
        temp = self._new_client(clean_session=True)
        answer: list[Any] = []
        temp.on_connect = lambda c, u, flags, reason, props: answer.append(reason)
        try:
            temp.connect(self.host, self.port, keepalive=max(5, self.keepalive))
            deadline = _monotonic() + self.connect_timeout
            while not answer and _monotonic() < deadline:
                if temp.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            if answer and not answer[0].is_failure:
                # paho closes its socket as soon as DISCONNECT is written: keep our own
                # descriptor of the connection and wait for the broker to close it, i.e.
                # to have processed the DISCONNECT.  Connecting again before that makes
                # the broker take over a session it is still closing (amqtt then marks
                # the new connection disconnected and stops delivering to it).
                watch = _dup(temp.socket())
                temp.disconnect()
                if watch is not None:
                    _wait_eof(watch, min(1.0, self.connect_timeout))
                return True
            return bool(answer)  # refused: the real connection will say why
        except OSError as exc:
            log.debug("%s: session purge failed: %s", self.client_id, exc)
            return False
        finally:
            try:
                temp.loop_stop()
                sock = temp.socket()
                if sock is not None:
                    sock.close()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        gen = self._gen
        if reason.is_failure:
            code = getattr(reason, "value", None)
            why = _PERMANENT.get(code)
            if why is not None:
                self.connect_error = (f"broker {self.url} refused client {self.client_id!r}: "
                                      f"{why} ({reason}); not retrying")
                self._state = FAILED
                client.disconnect()  # stop paho's retries: they cannot succeed
                self._post(self._on_refused, gen, self.connect_error)
            else:
                self.connect_error = f"broker {self.url} refused the connection: {reason}"
                log.warning("%s: %s (retrying)", self.client_id, self.connect_error)
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        with self._lock:
            filters = list(self._qos.items())
        self._post(self._on_session, gen)  # before any message of this connection
        for i in range(0, len(filters), _SUBSCRIBE_CHUNK):
            client.subscribe(filters[i:i + _SUBSCRIBE_CHUNK])
        # A barrier: the broker acknowledges packets in order, so its UNSUBACK for this
        # (held by nobody) filter comes after every SUBACK above -- and after paho, which
        # calls us before it re-queues the QoS 1 messages it kept, has re-queued them.
        # Only then do listeners hear True: new publishes cannot overtake the old ones.
        rc, mid = client.unsubscribe(_BARRIER)
        self._barrier = mid if rc == mqtt.MQTT_ERR_SUCCESS else None

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        refused = [r for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.warning("%s: the broker refused %d subscription(s) (not authorised?)",
                        self.client_id, len(refused))

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                        properties: Any) -> None:
        if mid is not None and mid == self._barrier:
            self._barrier = None
            self._post(self._on_up, self._gen)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.connect_error = f"cannot reach the broker at {self.host}:{self.port}"
        if not self._reported_unreachable:
            self._reported_unreachable = True
            log.warning("%s: %s; retrying every %g-%g s", self.client_id, self.connect_error,
                        self.reconnect_min, self.reconnect_max)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._post(self._on_down, self._gen)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(self._deliver, self._gen,
                   Message(msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    # ------------------------------------------------------------------ loop thread
    def _on_session(self, gen: int) -> None:
        if gen != self._gen or self._closing:
            return
        self._seen.clear()  # re-subscribed: the retained messages come again, for everyone

    def _on_up(self, gen: int) -> None:
        if gen != self._gen or self._closing:
            return
        self._connected = True
        self._state = CONNECTED
        self.connect_error = None
        self._reported_unreachable = False
        self._delay = self.reconnect_min
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._tell(True)

    def _on_down(self, gen: int) -> None:
        if gen != self._gen or self._closing or self._state == FAILED:
            return
        was = self._connected
        self._connected = False
        self._state = LOST
        if self.io == "asyncio":
            self._aio_retry_later(gen)
        if was:
            log.info("%s: connection to %s lost; reconnecting", self.client_id, self.url)
            self._tell(False)

    def _on_refused(self, gen: int, error: str) -> None:
        if gen != self._gen:
            return
        self._connected = False
        self._state = FAILED
        log.error("%s: %s", self.client_id, error)
        self._fail_waiters(MqttConnectError(error))

    def _fail_waiters(self, error: Exception) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _tell(self, up: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:  # noqa: BLE001 - one bad listener must not stop the others
                log.exception("%s: connection listener %r failed", self.client_id, listener)

    def _deliver(self, gen: int, message: Message) -> None:
        if gen != self._gen:
            return
        topic = message.topic
        subs = self._subs
        handlers = self._fresh(topic) if message.retain else subs.handlers_for(topic)
        if not handlers:
            return
        seen = self._seen
        seen[topic] = self._stamp
        if len(seen) > _SEEN_LIMIT:
            del seen[next(iter(seen))]
        subs.deliver(message, handlers)

    def _fresh(self, topic: str) -> tuple[MessageHandler, ...]:
        """The handlers a retained copy on ``topic`` is for: those holding a matching
        filter that they subscribed (to) after the last message on ``topic``."""
        subs = self._subs
        last = self._seen.get(topic)
        since = self._since
        found: list[MessageHandler] = []
        for topic_filter in subs.filters_for(topic):
            for handler in subs.handlers_of(topic_filter):
                if (last is None or since.get((topic_filter, id(handler)), 0) > last) \
                        and handler not in found:
                    found.append(handler)
        return tuple(found)

    # ------------------------------------------------------------------ io="asyncio"
    # All on the loop thread, except the socket callbacks paho makes from the executor
    # while it (re)connects: those hop to the loop.
    def _aio_attempt(self, gen: int) -> None:
        if gen != self._gen or self._closing or self._state == FAILED:
            return
        self._cancel_timer()
        client = self._client
        sock = client.socket()
        if sock is not None:  # unhook the old socket here: paho closes it in the executor
            self._aio_unhook(sock)
        attempt = self._loop.run_in_executor(None, client.reconnect)
        attempt.add_done_callback(lambda fut: self._aio_attempted(gen, fut))

    def _aio_attempted(self, gen: int, fut: asyncio.Future) -> None:
        error = fut.exception() if not fut.cancelled() else None
        if self._closing and error is None and self._client.socket() is not None:
            self._client.disconnect()  # disconnect() came while this attempt was under way
            self._client.loop_write()
        if gen != self._gen or self._closing:
            return
        if error is not None:
            self.connect_error = f"cannot reach the broker at {self.host}:{self.port}: {error}"
            if not self._reported_unreachable:
                self._reported_unreachable = True
                log.warning("%s: %s; retrying every %g-%g s", self.client_id,
                            self.connect_error, self.reconnect_min, self.reconnect_max)
            self._aio_retry_later(gen)
        else:
            self._aio_misc_later(gen)

    def _aio_retry_later(self, gen: int) -> None:
        self._cancel_timer()
        delay, self._delay = self._delay, min(self._delay * 2, self.reconnect_max)
        self._timer = self._loop.call_later(delay, self._aio_attempt, gen)

    def _aio_misc_later(self, gen: int) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(min(1.0, self.keepalive / 2), self._aio_misc, gen)

    def _aio_misc(self, gen: int) -> None:
        """paho's keepalive: PINGREQ when idle, drop the connection without PINGRESP."""
        self._timer = None
        if gen != self._gen or self._closing:
            return
        if self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            self._aio_misc_later(gen)
        elif self._state != FAILED and self._timer is None:
            self._aio_retry_later(gen)  # the connection went away meanwhile

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _aio_read(self) -> None:
        self._dispatching += 1
        try:
            client = self._client
            client.loop_read()
            # TLS: bytes already decrypted into the SSL object wake no selector
            sock = client.socket()
            while sock is not None and getattr(sock, "pending", None) and sock.pending():
                client.loop_read()
                sock = client.socket()
        finally:
            self._dispatching -= 1

    def _aio_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        _set_nodelay(client, userdata, sock)
        self._on_loop(self._aio_hook, sock)

    def _aio_hook(self, sock: Any) -> None:
        if sock is self._client.socket() and sock.fileno() != -1:
            self._loop.add_reader(sock, self._aio_read)

    def _aio_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if _running_loop() is self._loop:  # (from the executor: unhooked before already)
            self._aio_unhook(sock)

    def _aio_unhook(self, sock: Any) -> None:
        if sock.fileno() != -1:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _aio_want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._aio_writer, sock)

    def _aio_writer(self, sock: Any) -> None:
        if sock is self._client.socket() and sock.fileno() != -1:
            self._loop.add_writer(sock, self._client.loop_write)

    def _aio_unwant_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if _running_loop() is self._loop and sock.fileno() != -1:
            self._loop.remove_writer(sock)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if _running_loop() is self._loop:
            fn(*args)
        else:
            try:
                self._loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed
                pass


def _check_qos(qos: int) -> int:
    if qos != 0 and qos != 1:
        raise ValueError(f"qos must be 0 or 1, got {qos!r}")
    return int(qos)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho does not disable Nagle; small request/reply messages need it off."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a Unix socket)
        pass


def _dup(sock: Any) -> socket.socket | None:
    """A plain socket on a new descriptor of ``sock``'s connection (TLS or not), or None."""
    try:
        return socket.socket(fileno=os.dup(sock.fileno()))
    except (OSError, AttributeError, ValueError):
        return None


def _wait_eof(sock: socket.socket, timeout: float) -> None:
    """Read and discard until the peer closes the connection (at most ``timeout`` s)."""
    deadline = _monotonic() + timeout
    try:
        while True:
            left = deadline - _monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:  # timed out or reset: either way, done waiting
        pass
    finally:
        sock.close()


def _current_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _monotonic() -> float:
    import time

    return time.monotonic()
