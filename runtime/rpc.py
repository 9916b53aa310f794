"""Request/reply over publish/subscribe, with correlation ids and timeouts.

One :class:`Requester` per client: it listens on one reply topic and matches replies to
pending requests by id.  ``request()`` returns the clock's native future (see
:mod:`runtime.future`), completed with the reply's payload, a :class:`RemoteError` for an
error reply, or a :class:`RequestTimeout`.  Duplicate or late replies (QoS 1 may deliver
twice) are ignored.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

from . import protocol
from .clock import Clock
from .future import FutureLike, settle
from .transport import Message, Transport

log = logging.getLogger(__name__)


class RequestTimeout(Exception):
    """No reply arrived in time (the peer may be slow, dead or partitioned)."""

    def __init__(self, topic: str, ctrl: str, timeout: float) -> None:
        super().__init__(f"no reply to {ctrl!r} on {topic!r} within {timeout:g} s")
        self.topic, self.ctrl, self.timeout = topic, ctrl, timeout


class RemoteError(Exception):
    """The peer answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def random_ids() -> Callable[[], str]:
    return lambda: uuid.uuid4().hex[:16]


class Requester:
    """``peers=True`` also takes replies on ``<reply_topic>/<peer>``: a request made with
    ``peer=X`` asks for its reply there and accepts it from nowhere else, so a broker ACL
    granting each client ``+/reply/%u`` only makes replies unforgeable between peers."""

    def __init__(self, transport: Transport, clock: Clock, reply_topic: str,
                 new_id: Callable[[], str] | None = None, timeout: float = 30.0,
                 peers: bool = False) -> None:
        self.transport = transport
        self.clock = clock
        self.reply_topic = reply_topic
        self.timeout = timeout
        self._new_id = new_id or random_ids()
        self._pending: dict[str, tuple[FutureLike, Any, str, str, str | None]] = {}
        transport.subscribe(reply_topic, self._on_reply, qos=1)
        if peers:
            transport.subscribe(reply_topic + "/+", self._on_reply, qos=1)

    def request(self, topic: str, ctrl: str, kwargs: dict | None = None,
                timeout: float | None = None, peer: str | None = None) -> FutureLike:
        request_id = self._new_id()
        future = self.clock.create_future()
        wait = self.timeout if timeout is None else timeout
        timer = self.clock.call_at(self.clock.now() + wait,
                                   lambda: self._expire(request_id, wait))
        self._pending[request_id] = (future, timer, topic, ctrl, peer)
        reply_to = self.reply_topic if peer is None else f"{self.reply_topic}/{peer}"
        self.transport.publish(topic, protocol.encode(
            {"ctrl": ctrl, "kwargs": kwargs or {}, "request_id": request_id,
             "reply_to": reply_to}), qos=1)
        return future

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _expire(self, request_id: str, wait: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            settle(entry[0], error=RequestTimeout(entry[2], entry[3], wait))

    def _on_reply(self, message: Message) -> None:
        try:
            msg = protocol.decode(message.payload)
        except protocol.ProtocolError as exc:
            log.warning("malformed reply on %s: %s", message.topic, exc)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("reply_id"), str):
            log.warning("reply without reply_id on %s", message.topic)
            return
        entry = self._pending.get(msg["reply_id"])
        if entry is None:
            return  # a duplicate, or the answer to a request that already timed out
        sender = message.topic[len(self.reply_topic) + 1:] or None
        if entry[4] != sender:
            log.warning("ignored a reply to %s on %s: expected it from %s", entry[3],
                        message.topic, entry[4] or "the base reply topic")
            return
        del self._pending[msg["reply_id"]]
        future, timer = entry[0], entry[1]
        self.clock.cancel(timer)
        error = msg.get("error")
        if isinstance(error, dict):
            settle(future, error=RemoteError(str(error.get("code", protocol.INTERNAL)),
                                             str(error.get("message", ""))))
        else:
            settle(future, msg.get("payload"))

    def close(self, reason: str = "requester closed") -> None:
        for request_id in list(self._pending):
            future, timer, topic, ctrl, _ = self._pending.pop(request_id)
            self.clock.cancel(timer)
            settle(future, error=RemoteError(protocol.INTERNAL, reason))
