"""pytest fixtures for tests on a real MQTT broker (``from mqtt_fixtures import *``).

- ``broker``: a fresh Mosquitto (or amqtt when Mosquitto is missing) on a free loopback
  port, one per test module; skips with the reason if neither is installed.
- ``broker_factory``: ``broker_factory(config={...})`` starts more brokers (e.g. with
  persistence, for restart tests); all are stopped after the test.  Without Mosquitto,
  a config that amqtt cannot serve (passwords, ACLs, persistence, extra lines) skips.
- ``needs_mosquitto(why)``: a mark for tests of what only Mosquitto does; without it they
  skip with one line naming what to install and why (``AMQTT_*`` below say why).
- ``auth_broker``: Mosquitto with passwords and an ACL (anonymous clients refused):
  ``dispatcher`` may publish anywhere, including the command topics ``+/cmd`` and
  ``+/+/cmd``; ``engine`` may read everything and publish the engines' reports, replies,
  consoles, resources and migration steps as itself (``+/migrate/engine``, what
  ``pattern write +/migrate/%u`` grants a worker); ``guest`` may read
  everything and publish only ``sensors/#``.
  ``auth_broker.users`` maps each user to its password; ``auth_broker.acl_file`` and
  ``.password_file`` are the files, for brokers of one's own.
- ``event_loop_thread``: an asyncio loop running in a background thread
  (``.run(coro, timeout)``, ``.call(fn, *args)``, ``.loop``), for tests that need a
  loop while the test body blocks; most tests simply use ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from thingssim.broker import (
    MOSQUITTO_ONLY,
    BrokerError,
    BrokerHandle,
    amqtt_available,
    find_mosquitto,
    make_password_file,
    start_broker,
)

__all__ = ["AMQTT_NO_KEEPALIVE", "AMQTT_NO_OFFLINE_QUEUE", "AMQTT_ONE_COPY_PER_FILTER",
           "AUTH_ACL", "AUTH_USERS", "EventLoopThread", "auth_broker", "broker",
           "broker_factory", "event_loop_thread", "mosquitto_reason", "needs_mosquitto",
           "require_broker", "require_mosquitto"]

INSTALL_MOSQUITTO = "apt-get install mosquitto"
# What the amqtt fallback (0.12) does differently, checked against its source and on it:
#: MQTT 3.1.1 lets a broker send a copy per matching subscription; Mosquitto sends one
AMQTT_ONE_COPY_PER_FILTER = ("amqtt delivers one copy per overlapping subscription "
                             "(Mosquitto: one per client)")
#: amqtt's broker ignores keepalive timeouts: only a closed socket ends a connection
AMQTT_NO_KEEPALIVE = "amqtt never drops a silent client, so a frozen client's will never comes"
#: with anonymous access allowed, amqtt counts every session as anonymous and queues nothing
AMQTT_NO_OFFLINE_QUEUE = "amqtt queues no QoS 1 messages for offline anonymous sessions"

AUTH_USERS = {"dispatcher": "dispatcher-secret", "engine": "engine-secret",
              "guest": "guest-secret"}

AUTH_ACL = """\
# anonymous clients (only where allow_anonymous is true): read only
topic read #

user dispatcher
topic readwrite #

user engine
topic read #
topic write engine-registry
topic write engine-registry/#
topic write program-monitor
topic write program-monitor/#
topic write +/reply
topic write +/reply/engine
topic write program-owner/+
topic write +/migrate/engine
topic write +/console
topic write +/resource
topic write +/+/console
topic write +/+/resource
topic write +/+/snapshots

user guest
topic read #
topic write sensors/#
"""


def require_broker() -> None:
    if find_mosquitto() is None and not amqtt_available():
        pytest.skip(f"no MQTT broker: install Mosquitto ({INSTALL_MOSQUITTO}) or amqtt "
                    "(pip install amqtt)")


_WHAT = {"password_file": "password files", "acl_file": "ACLs", "persistence": "persistence",
         "extra": "Mosquitto config lines"}


def mosquitto_reason(why: str) -> str:
    return f"needs Mosquitto ({INSTALL_MOSQUITTO}): {why}"


def require_mosquitto(why: str = "the amqtt fallback has no password files, ACLs or "
                                 "persistence") -> None:
    if find_mosquitto() is None:
        pytest.skip(mosquitto_reason(why))


def needs_mosquitto(why: str) -> pytest.MarkDecorator:
    """Mark a test of something only Mosquitto does: skipped, saying why, without it."""
    return pytest.mark.skipif(find_mosquitto() is None, reason=mosquitto_reason(why))


def _start(**kwargs: Any) -> BrokerHandle:
    try:
        return start_broker(**kwargs)
    except BrokerError as exc:
        pytest.skip(f"could not start an MQTT broker: {exc}")


@pytest.fixture(scope="module")
def broker():
    require_broker()
    handle = _start()
    yield handle
    handle.stop()


@pytest.fixture()
def broker_factory():
    started: list[BrokerHandle] = []

    def make(**kwargs: Any) -> BrokerHandle:
        only = [_WHAT[key] for key in MOSQUITTO_ONLY if (kwargs.get("config") or {}).get(key)]
        if only:
            require_mosquitto(f"the amqtt fallback has no {' or '.join(only)}")
        else:
            require_broker()
        handle = _start(**kwargs)
        started.append(handle)
        return handle

    yield make
    for handle in started:
        handle.stop()


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory):
    require_mosquitto("the amqtt fallback has no password files or ACLs")
    folder: Path = tmp_path_factory.mktemp("mqtt-auth")
    password_file = make_password_file(folder / "passwords", AUTH_USERS)
    acl_file = folder / "acl"
    acl_file.write_text(AUTH_ACL)
    handle = _start(config={"allow_anonymous": False, "password_file": str(password_file),
                            "acl_file": str(acl_file)})
    handle.users = dict(AUTH_USERS)
    handle.password_file = password_file
    handle.acl_file = acl_file
    yield handle
    handle.stop()


class EventLoopThread:
    """An asyncio loop running in a daemon thread until ``stop()``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="test-event-loop",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Call ``fn(*args)`` on the loop thread and wait for its result."""
        async def wrapper() -> Any:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@pytest.fixture()
def event_loop_thread():
    runner = EventLoopThread()
    yield runner
    runner.stop()
