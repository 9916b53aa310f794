"""Board profiles: how fast a simulated board runs Python and how its network link behaves.

A profile turns measurements on the *reference machine* (the development machine,
``cpu_factor = 1.0``) into times on a board: Python work that takes ``t`` seconds on the
reference takes ``t / cpu_factor`` on the board. ``thingssim calibrate`` measures a real
board's factor with the same workload that defines the reference (:mod:`thingssim.calibrate`),
so the estimates below can be replaced by measurements.

Link numbers describe the board's interface to a broker on the same local network:
``latency`` is one-way propagation plus stack delay in seconds, ``bandwidth`` is the TCP
goodput in bits/s (a byte is 8 bits; goodput, not the nominal line rate, because MQTT runs
over TCP), ``jitter`` is a typical deviation of the one-way delay in seconds, and ``loss`` is
the probability that a packet is lost and must be retransmitted.

Standard library only: boards and workers import this too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["PROFILES", "BoardProfile", "get_profile"]


@dataclass(frozen=True)
class BoardProfile:
    """One kind of board: CPU speed relative to the reference machine, memory, default link.

    Frozen so a profile can be shared by many simulated boards; scenarios derive variants
    with :meth:`with_overrides`. Every instance is validated when it is made.
    """

    name: str
    description: str
    cpu_factor: float
    """Speed of one core running CPython relative to the reference machine (= 1.0)."""
    cores: int
    memory_mb: int
    """RAM usable by programs (total RAM minus GPU split and an idle headless OS)."""
    latency: float
    """One-way delay to a broker on the local network, seconds."""
    bandwidth: float
    """TCP goodput of the network interface, bits/s."""
    jitter: float = 0.0
    """Typical deviation of the one-way delay, seconds."""
    loss: float = 0.0
    """Probability that a packet is lost, in [0, 1)."""
    sources: str = ""
    """Where each number comes from (SoC, clock, benchmarks, NIC specs)."""

    def __post_init__(self) -> None:
        _validate(self)

    def with_overrides(self, **changes: Any) -> BoardProfile:
        """A copy with some fields changed (e.g. a slower link for one scenario), validated."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown BoardProfile field(s) {', '.join(unknown)}; "
                             f"expected some of: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def compute_time(self, reference_seconds: float) -> float:
        """Seconds one core of this board needs for work taking ``reference_seconds`` here."""
        return reference_seconds / self.cpu_factor

    def transfer_time(self, nbytes: int) -> float:
        """Mean one-way time for ``nbytes`` over the default link (no jitter, no loss)."""
        return self.latency + nbytes * 8 / self.bandwidth


def _number(profile: BoardProfile, field: str, *, positive: bool, finite: bool = True) -> None:
    value = getattr(profile, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{profile.name}: {field} must be a number, got {value!r}")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{profile.name}: {field} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{profile.name}: {field} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise ValueError(f"{profile.name}: {field} must be >= 0, got {value!r}")


def _validate(profile: BoardProfile) -> None:
    """Reject profiles that would make the simulation silently wrong (e.g. divide by zero)."""
    if not isinstance(profile.name, str) or not profile.name.strip():
        raise ValueError(f"board profile name must be a non-empty string, got {profile.name!r}")
    for field in ("description", "sources"):
        if not isinstance(getattr(profile, field), str):
            raise ValueError(f"{profile.name}: {field} must be a string")
    _number(profile, "cpu_factor", positive=True)
    if isinstance(profile.cores, bool) or not isinstance(profile.cores, int) or profile.cores < 1:
        raise ValueError(f"{profile.name}: cores must be an integer >= 1, got {profile.cores!r}")
    _number(profile, "memory_mb", positive=True)
    _number(profile, "latency", positive=False)
    _number(profile, "bandwidth", positive=True, finite=False)  # inf: an ideal link
    _number(profile, "jitter", positive=False)
    _number(profile, "loss", positive=False)
    if not profile.loss < 1:
        raise ValueError(f"{profile.name}: loss must be in [0, 1), got {profile.loss!r}")


# How the cpu_factor estimates were made (the reference is a 2-core AMD EPYC cloud VM
# running CPython 3.11; `thingssim calibrate` on a board replaces an estimate):
# - Anchor: the benchmarks-game n-body program takes 1.34 s for 500,000 steps on the
#   reference (measured 2026-11-30); a published Raspberry Pi 4 run (Cortex-A72 1.5 GHz,
#   performance governor; chaitanyamehta.github.io, "Performance Analysis of Languages on
#   Raspberry Pi"; CPython version not stated, likely 3.7) took 158 s for 5 M steps, i.e.
#   ~12x slower, ~9x after allowing ~1.3x for the CPython 3.11 speed-up. Geekbench
#   single-core puts the Pi 4 at ~1/5 of such a server core, so CPython's interpreter
#   loop (branchy, cache-hungry) loses about 2x more than generic benchmarks on small ARM
#   cores.
# - Per-clock ratios between the small cores (ARM DMIPS/MHz: ARM11 1.25, Cortex-A8 2.0,
#   Cortex-A53 2.3) plus cache sizes and memory buses then place the older boards.
_REFERENCE_NOTE = ("cpu_factor relative to the reference machine (AMD EPYC cloud VM, "
                   "CPython 3.11, = 1.0); estimate, replace with `thingssim calibrate` "
                   "run on the board.")

PROFILES: dict[str, BoardProfile] = {p.name: p for p in (
    BoardProfile(
        name="beaglebone-black",
        description="BeagleBone Black: TI AM3358 (1 GHz Cortex-A8), 512 MB DDR3L, "
                    "10/100 Ethernet",
        cpu_factor=0.035,
        cores=1,
        memory_mb=400,
        latency=0.00025,
        bandwidth=94e6,
        jitter=0.0001,
        loss=0.0,
        sources=(
            "SoC: TI Sitara AM3358, one Cortex-A8 at 1 GHz (ARMv7, in-order dual issue, "
            "256 KB L2, VFPLite non-pipelined double-precision FPU), 512 MB DDR3L on a 16-bit "
            "bus (BeagleBoard.org BBB System Reference Manual). cpu_factor 0.035 (~29x slower "
            "than the reference): ~1.5x slower than the Pi 3's Cortex-A53 at 1.2 GHz "
            "(0.05) from clock (1.0 vs 1.2 GHz), DMIPS/MHz (2.0 vs 2.3) and half the L2; "
            "within the commonly quoted 15-30x gap between a 1 GHz Cortex-A8 and a "
            "modern x86 core for CPython (boards compared in digitalpeer.com 2015, 'A "
            "Language Speed Test Comparing Embedded Linux Boards', Python 2.7). "
            + _REFERENCE_NOTE + " memory_mb: 512 MB minus ~110 MB for "
            "kernel, CMA and an idle Debian IoT image. Link: on-chip CPSW 10/100 MAC + "
            "LAN8710A PHY, 100BASE-TX; 94 Mbit/s is TCP goodput at MTU 1500 "
            "(1448/1538 of 100 Mbit/s); one-way 0.25 ms to a broker on a switched LAN "
            "(typical ping RTT 0.4-0.6 ms, kernel stack on a slow core), jitter 0.1 ms, "
            "wired loss ~0."),
    ),
    BoardProfile(
        name="pocketbeagle",
        description="PocketBeagle: OSD3358 SiP (AM3358, 1 GHz Cortex-A8), 512 MB, "
                    "networking over USB (RNDIS/CDC-ECM gadget) through a host",
        cpu_factor=0.035,
        cores=1,
        memory_mb=420,
        latency=0.0006,
        bandwidth=80e6,
        jitter=0.0002,
        loss=0.0,
        sources=(
            "SoC: Octavo OSD3358-SM system-in-package = TI AM3358 Cortex-A8 at 1 GHz with "
            "512 MB DDR3 inside (PocketBeagle System Reference Manual); same CPU as the "
            "BeagleBone Black, so the same cpu_factor 0.035 (~29x slower). "
            + _REFERENCE_NOTE + " memory_mb: 512 MB minus ~90 MB (no HDMI/framebuffer). "
            "Link: no Ethernet on board; the usual setup is the USB 2.0 gadget "
            "(RNDIS/CDC-ECM, 480 Mbit/s signalling) to a host that routes to the LAN. "
            "Goodput is bounded by the 1 GHz CPU and the MUSB controller, estimated 80 "
            "Mbit/s; one-way 0.6 ms = USB microframe scheduling (125 us) + host forwarding "
            "+ one LAN hop; jitter 0.2 ms; loss ~0 (wired USB)."),
    ),
    BoardProfile(
        name="raspberry-pi-3",
        description="Raspberry Pi 3 Model B: Broadcom BCM2837 (4x Cortex-A53 1.2 GHz), "
                    "1 GB LPDDR2, 10/100 Ethernet over USB 2.0",
        cpu_factor=0.05,
        cores=4,
        memory_mb=800,
        latency=0.0003,
        bandwidth=94e6,
        jitter=0.0001,
        loss=0.0,
        sources=(
            "SoC: Broadcom BCM2837, four Cortex-A53 (ARMv8, in-order dual issue, 512 KB "
            "shared L2) at 1.2 GHz, 1 GB LPDDR2 (raspberrypi.com product brief). cpu_factor "
            "0.05 (~20x slower per core): the Pi 4 (Cortex-A72 1.5 GHz) runs the "
            "benchmarks-game n-body in CPython ~9-12x slower than the reference, and the "
            "Pi 3 is roughly 2-2.5x slower than the Pi 4 single-threaded (Geekbench "
            "single-core; Roy Longbottom's Raspberry Pi benchmarks). " + _REFERENCE_NOTE
            + " memory_mb: "
            "1024 MB minus the 76 MB default GPU split and ~150 MB for an idle Raspberry Pi "
            "OS Lite. Link: SMSC LAN9514 USB 2.0 hub + 10/100 Ethernet; 94 Mbit/s TCP "
            "goodput (iperf on a Pi 3B reaches ~94); one-way 0.3 ms to a broker on a "
            "switched LAN (USB adds ~0.1 ms to the ping RTT of ~0.5 ms), jitter 0.1 ms, "
            "wired loss ~0."),
    ),
    BoardProfile(
        name="raspberry-pi-zero",
        description="Raspberry Pi Zero W: Broadcom BCM2835 (1 GHz ARM1176JZF-S), 512 MB "
                    "LPDDR2, 2.4 GHz 802.11n Wi-Fi",
        cpu_factor=0.024,
        cores=1,
        memory_mb=380,
        latency=0.002,
        bandwidth=20e6,
        jitter=0.002,
        loss=0.002,
        sources=(
            "SoC: Broadcom BCM2835, one ARM1176JZF-S (ARMv6, single issue, 16 KB L1, "
            "128 KB L2 shared with the VideoCore GPU) at 1 GHz, 512 MB LPDDR2 "
            "(raspberrypi.com Zero W brief: '40% faster than Raspberry Pi 1'). cpu_factor "
            "0.024 (~40x slower): ARM11 does 1.25 DMIPS/MHz vs 2.0 for the Cortex-A8 at "
            "the same 1 GHz, partly offset by the branch-heavy interpreter loop gaining "
            "less from dual issue: ~1.4x slower than the BeagleBone Black (0.035). "
            + _REFERENCE_NOTE + " memory_mb: 512 MB minus the 64 MB GPU split and ~70 MB "
            "for an idle Raspberry Pi OS Lite. Link: Cypress/Broadcom BCM43438, 1x1 "
            "802.11n at 2.4 GHz, 20 MHz channel, 72.2 Mbit/s max PHY rate, over SDIO; "
            "TCP goodput typically 15-25 Mbit/s, use 20 Mbit/s; one-way 2 ms with Wi-Fi "
            "power management off (ping RTT 3-5 ms; with it on, 100 ms+ spikes), jitter "
            "2 ms, residual packet loss after 802.11 MAC retries ~0.2%."),
    ),
    BoardProfile(
        name="desktop-vm",
        description="A cloud or desktop VM (4 vCPUs of a current x86-64 server), 8 GB, "
                    "gigabit Ethernet",
        cpu_factor=1.0,
        cores=4,
        memory_mb=7168,
        latency=0.0001,
        bandwidth=941e6,
        jitter=0.00005,
        loss=0.0,
        sources=(
            "CPU: the reference machine is itself such a VM (AMD EPYC, CPython 3.11), so "
            "cpu_factor 1.0 by definition; bare-metal desktops with higher boost clocks "
            "run ~1.2-1.5x faster. 4 cores, 8 GB RAM minus ~1 GB for the OS. Link: gigabit "
            "Ethernet (or a virtio NIC with a GbE cap); 941 Mbit/s is TCP goodput at MTU "
            "1500; one-way 0.1 ms to a broker in the same LAN/availability zone (ping RTT "
            "0.1-0.3 ms), jitter 0.05 ms, loss ~0."),
    ),
)}


def get_profile(name: str) -> BoardProfile:
    """The profile called ``name``; a ``KeyError`` naming the known ones if there is none."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown board profile {name!r}; known profiles: "
                       f"{', '.join(sorted(PROFILES))}") from None
