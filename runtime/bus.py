"""LocalBus: in-process publish/subscribe between program hosts (no broker).

Used by standalone runs (``thingssim run``) and tests.  Messages are delivered as bytes,
exactly as over MQTT, so a receiver never shares objects with the sender.
"""

from __future__ import annotations

from .program import ProgramHost


class LocalBus:
    def __init__(self) -> None:
        self.hosts: list[ProgramHost] = []
        self.published = 0

    def attach(self, host: ProgramHost) -> ProgramHost:
        self.hosts.append(host)
        return host

    def publish(self, topic: str, data: bytes) -> None:
        self.published += 1
        for host in list(self.hosts):
            host.deliver(topic, data)
