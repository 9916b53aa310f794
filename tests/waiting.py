"""Wait for a condition with a timeout instead of sleeping and then asserting.

``wait_until(predicate, timeout)`` blocks (tests whose body is plain code);
``await until(predicate, timeout)`` yields to the running asyncio loop.  Both return the
predicate's first truthy value and raise ``AssertionError`` naming ``what`` on timeout,
so a slow machine only makes a test slower, never wrong.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               what: str = "the condition", interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def until(predicate: Callable[[], Any], timeout: float = 10.0,
                what: str = "the condition", interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
