"""A tiny PNG writer and line chart for the STATS plot stage (standard library only).

Boards have no matplotlib, and RIoTBench's plot task writes an image per window; so the
plot program draws its series here, a line per series scaled to its own range, on a
palette image (one byte a pixel), and writes the PNG through the global file system.
``zlib`` and ``struct`` are all it needs; the files open in any viewer.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Sequence

__all__ = ["PALETTE", "encode", "line_chart"]

#: background, axes, then one colour per series (cycled)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255), (96, 96, 96),
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode(width: int, height: int, pixels: bytes | bytearray,
           palette: Sequence[tuple[int, int, int]] = PALETTE) -> bytes:
    """An 8-bit palette PNG from ``pixels`` (``width * height`` palette indexes, rows top
    to bottom)."""
    if len(pixels) != width * height:
        raise ValueError(f"{len(pixels)} pixels for a {width}x{height} image")
    raw = b"".join(b"\x00" + bytes(pixels[y * width:(y + 1) * width]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    plte = b"".join(bytes(c) for c in palette)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def line_chart(series: Sequence[Sequence[float]], size: Sequence[int] = (320, 160),
               margin: int = 6) -> bytes:
    """A PNG with one polyline per series over its points' index, each scaled to its own
    minimum and maximum (the window's shape, not its units); non-finite points skipped."""
    width, height = int(size[0]), int(size[1])
    pixels = bytearray(width * height)
    left, right, top, bottom = margin, width - 1 - margin, margin, height - 1 - margin
    for x in range(left, right + 1):  # x axis
        pixels[bottom * width + x] = 1
    for y in range(top, bottom + 1):  # y axis
        pixels[y * width + left] = 1
    for k, ys in enumerate(series):
        points = [(i, float(v)) for i, v in enumerate(ys)
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        if not points:
            continue
        low = min(v for _, v in points)
        high = max(v for _, v in points)
        span_x = max(1, len(ys) - 1)
        span_y = (high - low) or 1.0
        colour = 2 + k % (len(PALETTE) - 2)
        xy = [(left + round(i * (right - left) / span_x),
               bottom - round((v - low) * (bottom - top) / span_y)) for i, v in points]
        if len(xy) == 1:
            xy = xy * 2
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            _line(pixels, width, x0, y0, x1, y1, colour)
    return encode(width, height, pixels)


def _line(pixels: bytearray, width: int, x0: int, y0: int, x1: int, y1: int,
          colour: int) -> None:
    """Bresenham's line."""
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        pixels[y0 * width + x0] = colour
        if x0 == x1 and y0 == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy
