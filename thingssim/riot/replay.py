"""Replay a SenML CSV stream: each line with the time it is due, as RIoTBench's event
generator paces it.

``replay(path, rate=1000)`` yields ``(due_seconds, line)`` with line ``i`` (from 0) due
at ``i / rate``; ``replay(path, speedup=60)`` yields each line at its recorded base
timestamp (the integer before the first comma, in ms) relative to the first line's,
divided by ``speedup`` (60: one recorded minute per second).  The iterator is plain:
it reads the file lazily, one line at a time (any length), and never sleeps or reads a
clock; the caller (a simulated source, or a real one with its own timer) sends each line
when its due time comes.

What this matches of RIoTBench's ``EventGen``/``JsonSplitter``/``SubEventGen``
(``modules/storm/.../genevents`` in dream-lab/riot-bench):

* relative time ``(ts - first_ts) * accFactor`` with the first line at 0: ``speedup``
  is ``1 / accFactor`` (RIoTBench's default ``accFactor`` 0.01 is ``speedup=100``);
* a line stamped earlier than the one before it is due at once, right after it (the
  Java thread sends an event without sleeping when its delay is not positive), so due
  times never decrease;
* ``until`` drops lines due after it, as RIoTBench stops loading at a cut-off
  (``startTs + 90,000 minutes / accFactor``) and ends a run after its duration;
* ``loop=True`` starts the file again when it ends, the new pass's first line due when
  the last line of the previous pass was (RIoTBench restarts from the clock time at
  which its last event went out), until ``until``.

Not matched: RIoTBench skips the first line of a SenML file (it reads it as a CSV
header), splits lines round robin over sender threads (one thread by default), and
sleeps only for delays over 10 ms (catching up later in bursts); here every line is
replayed and exact due times are left to the caller's clock.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Union

__all__ = ["line_timestamp", "replay"]

Source = Union[str, "os.PathLike[str]", Iterable[str]]


def line_timestamp(line: str) -> int:
    """The base timestamp (ms) before the first comma of a SenML CSV line."""
    head, sep, _ = line.partition(",")
    try:
        if not sep:
            raise ValueError
        return int(head)
    except ValueError:
        raise ValueError(
            f"no '<timestamp ms>,' at the start of line {line[:40]!r}"
        ) from None


def replay(
    source: Source,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    loop: bool = False,
    until: float | None = None,
) -> Iterator[tuple[float, str]]:
    """``(due_seconds, line)`` for each non-blank line of ``source``; exactly one of
    ``rate`` (lines per second) or ``speedup`` (recorded seconds per replayed second).

    ``source`` is a file path, or any iterable of lines (for example a generator's
    output; it cannot be looped).  Lines are yielded without their line ending.  With
    ``speedup``, ValueError names the file and line number of a line without a timestamp
    (``rate`` needs none: bare SenML JSON lines replay too).
    """
    if (rate is None) == (speedup is None):
        raise ValueError("give exactly one of rate= (lines per second) or speedup=")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if speedup is not None and speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    is_path = isinstance(source, (str, os.PathLike))
    if loop and not is_path:
        raise ValueError("loop=True needs a file path (an iterable cannot be read twice)")
    if loop and until is None:
        raise ValueError("loop=True needs until= (the stream would never end)")

    scale = 0.0 if speedup is None else 1.0 / (1000.0 * speedup)  # ms recorded -> s replayed
    index = 0  # lines yielded so far, over all passes
    offset = 0.0  # due time of this pass's first line
    due = 0.0
    while True:
        first_ts: int | None = None
        count = 0
        for number, line in _lines(source):
            try:
                if rate is not None:
                    due = index / rate
                else:
                    ts = line_timestamp(line)
                    if first_ts is None:
                        first_ts = ts
                    due = max(due, offset + (ts - first_ts) * scale)
            except ValueError as exc:
                where = f"{os.fspath(source)}:{number}" if is_path else f"line {number}"
                raise ValueError(f"{where}: {exc}") from None
            if until is not None and due > until:
                return
            yield due, line
            index += 1
            count += 1
        if not loop or count == 0:
            return
        offset = due


def _lines(source: Source) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its ending) of every non-blank line."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            yield from _numbered(f)
    else:
        yield from _numbered(source)


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line
