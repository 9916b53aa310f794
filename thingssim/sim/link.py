"""Links and packets: what crosses the simulated network and how long it takes.

Modelling choices this module owns (see :mod:`thingssim.sim.network` for the others):

- **Topology.** One broker; each board has one access :class:`Link` with two directions
  (uplink board->broker, downlink broker->board); several clients may share a link.
- **Link timing.** Each direction is a FIFO serialisation queue: a packet starts when the
  direction is free, takes ``wire_bytes * 8 / bandwidth`` to transmit, then ``latency`` plus
  a jitter drawn uniformly from ``[0, jitter)``.  A packet never arrives before the one sent
  before it in the same direction (jitter cannot reorder, like netem with a rate limit).
  Bandwidth is MQTT goodput: TCP/IP framing is not counted.  Nothing here is a SimPy
  process: a direction keeps the time it is next free (``free_at``), so sending a packet
  is arithmetic and its arrival is one scheduled callback.
- **Wire size.** A PUBLISH is ``len(topic as UTF-8) + len(payload) + PUBLISH_OVERHEAD``
  bytes (7: fixed header byte, 2-byte remaining length, 2-byte topic length, 2-byte
  packet id).  PUBACK is 4 bytes; CONNECT/CONNACK/SUBSCRIBE/UNSUBSCRIBE/DISCONNECT have
  the small sizes below.
- **Loss, as TCP sees it.** MQTT runs over TCP, which never loses or reorders bytes: a
  lost segment is retransmitted, and it and everything behind it in the same direction
  arrive later.  A packet of ``k`` segments (:data:`MSS` bytes each) contains a lost
  segment with probability ``1 - (1 - loss)**k``; a lone segment then waits for the
  retransmission timer, :data:`RTO` (Linux's 200 ms minimum), a longer one for a fast
  retransmit, one more round trip (``2 * latency + jitter``).  This is the board lab's
  relay's rule (:class:`thingssim.lab._Shaper`), so the two agree; messages (QoS 0
  included) are lost only to faults: cut links, crashes, broker outages.
- **Cuts.** :meth:`Link.down` loses every packet in flight on the link (its ``epoch``
  moves on; a packet carries the epoch it was sent in) and flushes the interface queue.
- **Randomness.** Each link direction has its own ``random.Random`` seeded from
  ``(seed, link name, direction)``: the same seed gives identical traces, and adding a
  link does not change the other links' streams.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.transport import Message

if TYPE_CHECKING:
    from .network import Network

#: bytes added to topic + payload for a PUBLISH (fixed header 1, remaining length 2,
#: topic length 2, packet id 2)
PUBLISH_OVERHEAD = 7
PUBACK_BYTES = 4
CONNECT_OVERHEAD = 14  # fixed header, protocol name/level, flags, keepalive, id length
CONNACK_BYTES = 4
SUBSCRIBE_OVERHEAD = 5  # + 3 per filter (length, options) + the filter
UNSUBSCRIBE_OVERHEAD = 5
DISCONNECT_BYTES = 2

#: TCP payload bytes per segment at MTU 1500 (the lab relay's too)
MSS = 1448
#: the delay of a lost lone segment: Linux's minimum retransmission timeout (s)
RTO = 0.2

#: what :meth:`Direction.send` returns instead of an arrival time on a cut link
DOWN = -2.0


@dataclass(frozen=True)
class LinkProfile:
    """One access link, the same in both directions.

    ``latency``: one-way propagation (s); ``bandwidth``: bits per second; ``jitter``: extra
    delay uniform in ``[0, jitter)`` s (never reorders); ``loss``: probability that a TCP
    segment is lost on this hop (and retransmitted: see the module docstring).
    """

    latency: float = 0.001
    bandwidth: float = 100e6
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        if not self.bandwidth > 0:
            raise ValueError("bandwidth must be > 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")


class Packet:
    """One application message as published (copies and retransmissions share it)."""

    __slots__ = ("id", "topic", "payload", "qos", "retain", "t0", "wire", "seen", "m0", "m1")

    def __init__(self, msg_id: int, topic: str, payload: bytes, qos: int, retain: bool,
                 t0: float, wire: int) -> None:
        self.id = msg_id
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.t0 = t0
        self.wire = wire  # bytes on the wire (see the module docstring)
        # clients that got a copy: only QoS 1 can be duplicated
        self.seen: set[str] | None = set() if qos else None
        self.m0: Message | None = None  # the Message handed to subscribers, made once
        self.m1: Message | None = None


class Direction:
    """One direction of a link: a FIFO serialisation queue with its own random stream."""

    __slots__ = ("link", "up", "free_at", "last_arrival", "rng", "latency", "bandwidth",
                 "jitter", "loss", "bytes_sent", "losses")

    def __init__(self, link: Link, rng: random.Random) -> None:
        self.link = link
        self.up = True  # the link's is_up, kept here too: send() then reads no other object
        self.rng = rng
        self.free_at = 0.0
        self.last_arrival = 0.0
        self.bytes_sent = 0
        self.losses = 0  # packets delayed by a retransmission

    def send(self, now: float, nbytes: int) -> float:
        """Put a packet on this direction at ``now``: its arrival time, or DOWN."""
        if not self.up:
            return DOWN
        free_at = self.free_at
        end = (free_at if free_at > now else now) + nbytes * 8.0 / self.bandwidth
        self.free_at = end
        self.bytes_sent += nbytes
        arrival = end + self.latency
        if self.jitter:
            arrival += self.rng.random() * self.jitter
        loss = self.loss
        if loss:  # a lost segment is retransmitted: later, never lost (module docstring)
            segments = -(-nbytes // MSS) or 1
            if self.rng.random() < 1.0 - (1.0 - loss) ** segments:
                self.losses += 1
                arrival += RTO if segments == 1 else 2 * self.latency + self.jitter
        if arrival < self.last_arrival:
            arrival = self.last_arrival
        self.last_arrival = arrival
        return arrival

    def flush(self, now: float) -> None:
        """The interface queue is emptied (the link went down)."""
        self.free_at = min(self.free_at, now)
        self.last_arrival = min(self.last_arrival, now)


class Link:
    """A board's access link (made by :meth:`Network.add_link`)."""

    # slotted: a world of thousands of boards reads each of these once a second, most
    # of them out of the CPU cache; a slot is one read where an instance dict is two
    __slots__ = ("up_dir", "epoch", "down_dir", "is_up", "network", "name", "profile",
                 "clients")

    def __init__(self, network: Network, name: str, profile: LinkProfile) -> None:
        self.network = network
        self.name = name
        self.up_dir = Direction(self, random.Random(f"thingssim:{network.seed}:{name}:up"))
        self.down_dir = Direction(self, random.Random(f"thingssim:{network.seed}:{name}:down"))
        self.profile = profile
        self.set_profile(profile)
        self.is_up = True
        self.epoch = 0  # +1 at each down(): packets in flight then are lost
        self.clients: list = []  # the SimTransports on this link

    def set_profile(self, profile: LinkProfile) -> None:
        """Change the link's characteristics from now on (packets in flight keep theirs)."""
        self.profile = profile
        for d in (self.up_dir, self.down_dir):
            d.latency = profile.latency
            d.bandwidth = float(profile.bandwidth)
            d.jitter = profile.jitter
            d.loss = profile.loss

    def down(self) -> None:
        """Cut the link: nothing crosses, packets in flight are lost."""
        if not self.is_up:
            return
        now = self.network.env.now
        self.is_up = self.up_dir.up = self.down_dir.up = False
        self.epoch += 1
        self.up_dir.flush(now)
        self.down_dir.flush(now)
        self.network._link_down(self)

    def up(self) -> None:
        """Restore the link; clients that have not noticed the outage carry on."""
        if self.is_up:
            return
        self.is_up = self.up_dir.up = self.down_dir.up = True
        self.network._link_up(self)

    @property
    def bytes_sent(self) -> int:
        return self.up_dir.bytes_sent + self.down_dir.bytes_sent

    def __repr__(self) -> str:
        return f"<Link {self.name} {'up' if self.is_up else 'down'}>"


__all__ = ["CONNACK_BYTES", "CONNECT_OVERHEAD", "DISCONNECT_BYTES", "DOWN", "MSS",
           "PUBACK_BYTES", "RTO", "PUBLISH_OVERHEAD", "SUBSCRIBE_OVERHEAD", "UNSUBSCRIBE_OVERHEAD",
           "Direction", "Link", "LinkProfile", "Packet"]
