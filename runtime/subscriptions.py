"""One subscription table for every transport: which handlers a message goes to.

The memory, MQTT and simulated transports each kept their own table, with three rule
sets (a call per matching filter or per handler; a raising handler stopping the others
or not).  They now share this one, so a program sees the same deliveries in unit tests,
in the simulation and on a real broker:

- a message calls every handler whose filter matches its topic
  (:func:`runtime.topics.topic_matches`: ``+``, ``#``, and ``$`` topics skip wildcards),
  **each handler once** however many of its filters match (handlers are compared with
  ``==``, so ``obj.method`` subscribed twice is one handler);
- **order**: filters in the order first subscribed, then each filter's handlers in the
  order added (unsubscribing a filter's last handler forgets its place);
- a handler that **raises** does not stop the others: the error is logged with its
  traceback (logger ``runtime.subscriptions``) and passed to ``on_error(handler,
  message, exc)`` if the table has one (an ``on_error`` that raises ends the dispatch
  there: a fail-fast mode for tests);
- a handler removed while a message is being dispatched is not called for it, nor is
  one added meanwhile;
- a filter's QoS is the highest any ``add`` asked for while the filter was held.

Lookups are cached per topic (a dict get on the hot path) and the cache is dropped on
every ``add``/``remove``/``clear``.  Not thread-safe: the owning transport touches it
from one thread only (its loop); what another thread needs (MQTT's re-subscription on
reconnect) it must copy out under its own lock.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from .topics import topic_matches, validate_filter
from .transport import Message, MessageHandler

log = logging.getLogger(__name__)

__all__ = ["ErrorCallback", "SubscriptionTable"]

#: ``on_error(handler, message, exc)``
ErrorCallback = Callable[[MessageHandler, Message, Exception], None]


class SubscriptionTable:
    """Filters -> (QoS, ordered handlers) of one client (see the module docstring).

    ``owner`` names the client in log messages; ``cache_limit`` bounds the per-topic
    lookup cache (it is emptied when full).
    """

    __slots__ = ("owner", "_on_error", "_qos", "_handlers", "_cache", "_cache_limit",
                 "_version")

    def __init__(self, on_error: ErrorCallback | None = None, *, owner: str = "",
                 cache_limit: int = 10_000) -> None:
        self.owner = owner
        self._on_error = on_error
        self._qos: dict[str, int] = {}  # filter -> qos, in first-subscribed order
        self._handlers: dict[str, list[MessageHandler]] = {}  # same keys, same order
        self._cache: dict[str, tuple[MessageHandler, ...]] = {}  # topic -> handlers_for
        self._cache_limit = max(1, int(cache_limit))
        self._version = 0  # bumped by every change: a dispatch under way re-checks

    # ------------------------------------------------------------------ changes
    def add(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> bool:
        """Add ``handler`` to ``topic_filter`` (once: an equal handler already there is
        kept in its place).  True if the broker must be sent a SUBSCRIBE for it: the
        filter is new, or its QoS rose."""
        validate_filter(topic_filter)
        handlers = self._handlers.get(topic_filter)
        if handlers is None:
            self._handlers[topic_filter] = [handler]
            self._qos[topic_filter] = qos
            self._changed()
            return True
        if handler not in handlers:  # (``in``: identity, then ==)
            handlers.append(handler)
            self._changed()
        if qos > self._qos[topic_filter]:
            self._qos[topic_filter] = qos
            return True
        return False

    def remove(self, topic_filter: str, handler: MessageHandler | None = None) -> bool:
        """Remove ``handler`` (every handler equal to it) from ``topic_filter``, or all of
        its handlers.  True if the filter is gone now: the broker must be sent an
        UNSUBSCRIBE.  Unknown filters and handlers are ignored (False)."""
        handlers = self._handlers.get(topic_filter)
        if handlers is None:
            return False
        kept = [] if handler is None else \
            [h for h in handlers if not (h is handler or h == handler)]
        if len(kept) == len(handlers):
            return False
        self._changed()
        if kept:
            self._handlers[topic_filter] = kept
            return False
        del self._handlers[topic_filter]
        del self._qos[topic_filter]
        return True

    def clear(self) -> None:
        """Forget every subscription (a crashed client)."""
        self._handlers.clear()
        self._qos.clear()
        self._changed()

    def _changed(self) -> None:
        self._cache.clear()
        self._version += 1

    # ------------------------------------------------------------------ queries
    def filters(self) -> dict[str, int]:
        """A copy of filter -> QoS, in first-subscribed order (to re-subscribe)."""
        return dict(self._qos)

    def qos(self, topic_filter: str) -> int | None:
        """The filter's QoS, or None if it is not held."""
        return self._qos.get(topic_filter)

    def handlers_of(self, topic_filter: str) -> tuple[MessageHandler, ...]:
        """The filter's handlers in the order added (for the retained messages a
        SUBSCRIBE of that filter brings); empty if the filter is not held."""
        return tuple(self._handlers.get(topic_filter, ()))

    def filters_for(self, topic: str) -> tuple[str, ...]:
        """The held filters matching ``topic``, in first-subscribed order (not cached)."""
        return tuple(f for f in self._handlers if topic_matches(f, topic))

    def handlers_for(self, topic: str) -> tuple[MessageHandler, ...]:
        """Every handler a message on ``topic`` goes to, each once, in dispatch order.
        (``handler in table.handlers_for(topic)``: is it still subscribed to it?)"""
        handlers = self._cache.get(topic)
        return handlers if handlers is not None else self._match(topic)

    def _match(self, topic: str) -> tuple[MessageHandler, ...]:
        found: list[MessageHandler] = []
        for topic_filter, handlers in self._handlers.items():
            if topic_matches(topic_filter, topic):
                for handler in handlers:
                    if handler not in found:
                        found.append(handler)
        result = tuple(found)
        cache = self._cache
        if len(cache) >= self._cache_limit:
            cache.clear()
        cache[topic] = result
        return result

    def __len__(self) -> int:
        return len(self._qos)

    def __contains__(self, topic_filter: object) -> bool:
        return topic_filter in self._qos

    def __repr__(self) -> str:
        owner = f" {self.owner}" if self.owner else ""
        return f"<SubscriptionTable{owner}: {len(self._qos)} filters>"

    # ------------------------------------------------------------------ delivery
    def dispatch(self, message: Message) -> int:
        """Call every handler matching ``message.topic`` once; the number called."""
        handlers = self._cache.get(message.topic)
        if handlers is None:
            handlers = self._match(message.topic)
        if not handlers:
            return 0
        return self.deliver(message, handlers)

    def deliver(self, message: Message, handlers: Iterable[MessageHandler]) -> int:
        """Call ``handlers`` (a subset chosen by the transport, e.g. the one handler a
        retained message is for) with the rules above; the number called."""
        version = self._version
        called = 0
        for handler in handlers:
            if self._version != version and handler not in self.handlers_for(message.topic):
                continue  # unsubscribed by an earlier handler of this message
            called += 1
            try:
                handler(message)
            except Exception as exc:  # noqa: BLE001 - the other handlers still get it
                log.exception("%shandler %r failed on %s", _prefix(self.owner), handler,
                              message.topic)
                if self._on_error is not None:
                    self._on_error(handler, message, exc)
        return called


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""
