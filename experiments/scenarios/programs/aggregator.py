"""Averages every room's temperature over a sliding window and publishes the house mean.

Subscribes with a wildcard (home/+/temp); the windows (deques) and counts migrate with it.
"""

from collections import deque

windows = {}
received = 0


def on_reading(topic, reading):
    global received
    received += 1
    window = windows.setdefault(reading["room"], deque(maxlen=10))
    window.append(reading["t"])
    if received % 10 == 0:
        means = {room: sum(w) / len(w) for room, w in sorted(windows.items())}
        house = sum(means.values()) / len(means)
        things.publish("home/mean", {"mean": round(house, 3), "rooms": len(means)})
        print(f"{things.now():.1f} house mean {house:.3f} over {len(means)} rooms "
              f"({received} readings)")


things.subscribe("home/+/temp", on_reading)
