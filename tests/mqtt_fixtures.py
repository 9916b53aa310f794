"""pytest fixtures for tests on a real MQTT broker (``from mqtt_fixtures import *``).

- ``broker``: a fresh Mosquitto (or amqtt when Mosquitto is missing) on a free loopback
  port, one per test module; skips with the reason if neither is installed.
- ``broker_factory``: ``broker_factory(config={...})`` starts more brokers (e.g. with
  persistence, for restart tests); all are stopped after the test.
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
    BrokerError,
    BrokerHandle,
    amqtt_available,
    find_mosquitto,
    make_password_file,
    start_broker,
)

__all__ = ["AUTH_ACL", "AUTH_USERS", "EventLoopThread", "auth_broker", "broker",
           "broker_factory", "event_loop_thread", "require_broker", "require_mosquitto"]

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
        pytest.skip("no MQTT broker: install Mosquitto (apt install mosquitto) or amqtt "
                    "(pip install amqtt)")


def require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("needs Mosquitto (apt install mosquitto): the amqtt fallback has no "
                    "password files, ACLs or persistence")


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
        if kwargs.get("config"):
            require_mosquitto()
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
    require_mosquitto()
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
