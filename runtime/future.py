"""Futures: how a request's outcome reaches whoever waits for it, in either world.

The core only needs ``set_result``, ``set_exception``, ``done``, ``result``,
``exception`` and ``add_done_callback``; each :class:`~runtime.clock.Clock` makes futures
that fit its world via ``create_future()``:

- ``AsyncioClock``: an ``asyncio.Future`` (``await`` it, or wait from another thread);
- ``thingssim``'s SimPy clock: a SimPy event (a SimPy process can ``yield`` it);
- ``VirtualClock``: :class:`Future` below (poll it, or add callbacks).

Callbacks may run later than ``set_result`` (SimPy and asyncio schedule them), never
earlier.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

_PENDING = object()


class FutureLike(Protocol):
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...
    def done(self) -> bool: ...
    def result(self) -> Any: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...


class InvalidStateError(RuntimeError):
    """The future is not done yet, or was already completed."""


class Future:
    """A minimal single-threaded future (callbacks run synchronously on completion)."""

    __slots__ = ("_value", "_exception", "_callbacks")

    def __init__(self) -> None:
        self._value: Any = _PENDING
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] = []

    def done(self) -> bool:
        return self._value is not _PENDING or self._exception is not None

    def set_result(self, value: Any) -> None:
        if self.done():
            raise InvalidStateError("future already completed")
        self._value = value
        self._run_callbacks()

    def set_exception(self, exc: BaseException) -> None:
        if self.done():
            raise InvalidStateError("future already completed")
        self._exception = exc
        self._run_callbacks()

    def result(self) -> Any:
        if self._exception is not None:
            raise self._exception
        if self._value is _PENDING:
            raise InvalidStateError("result is not ready yet")
        return self._value

    def exception(self) -> BaseException | None:
        if not self.done():
            raise InvalidStateError("result is not ready yet")
        return self._exception

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        if self.done():
            fn(self)
        else:
            self._callbacks.append(fn)

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)


def settle(future: FutureLike, value: Any = None, error: BaseException | None = None) -> bool:
    """Complete ``future`` unless it already is (timeouts race with replies)."""
    if future.done():
        return False
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return True


def gather(create_future: Callable[[], Any], futures: list[Any]) -> Any:
    """A future of ``[(ok, value_or_exception), ...]`` once every input is done.

    Never fails: each outcome is reported, so callers can say which parts succeeded.
    """
    out = create_future()
    results: list[Any] = [None] * len(futures)
    remaining = [len(futures)]
    if not futures:
        out.set_result([])
        return out

    def done(index: int, fut: Any) -> None:
        error = fut.exception()
        results[index] = (error is None, fut.result() if error is None else error)
        remaining[0] -= 1
        if remaining[0] == 0:
            settle(out, results)

    for index, fut in enumerate(futures):
        fut.add_done_callback(lambda f, i=index: done(i, f))
    return out


def then(create_future: Callable[[], Any], future: Any,
         fn: Callable[[Any], Any]) -> Any:
    """A future of ``fn(result)``; errors (of ``future`` or ``fn``) pass through."""
    out = create_future()

    def done(fut: Any) -> None:
        error = fut.exception()
        if error is not None:
            settle(out, error=error)
            return
        try:
            settle(out, fn(fut.result()))
        except Exception as exc:  # noqa: BLE001 - handed to the waiter
            settle(out, error=exc)

    future.add_done_callback(done)
    return out
