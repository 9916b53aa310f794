"""Kalman stats: a RIoTBench-style STATS dataflow over pub/sub.

Port of the RIoTBench statistical-summarisation pipeline (as used in the
ThingsJS evaluation) for two fields of a smart-city sensor stream:
a sensor publishes noisy temperature/humidity readings (random.Random(seed))
on ``riot/sensor/<field>``; a Kalman filter stage (q=0.125, r=0.32, P0=30)
per field republishes smoothed values on ``riot/kalman/<field>``; a sliding
window average (deque, window 10) and a linear-regression predictor
(least squares over the last 10 points, predicting the next one) consume
the smoothed stream; a distinct approximate count (Durand-Flajolet LogLog
with 2^6 buckets over zlib.crc32 of the raw value) consumes the raw stream.
Status lines are printed every 10 samples and a summary at the end.
Migration features: per-field filter objects in dicts, deques with maxlen,
a random.Random instance, lists of ints (LogLog registers), an exact
distinct set compared only by size, module references (zlib, math),
bound-method and function subscribers with `+` and `#` filters.
"""

import math
import random
import zlib
from collections import deque

FIELDS = ("temperature", "humidity")
SAMPLES = 60
WINDOW = 10
rng = random.Random(31337)


class Kalman:
    def __init__(self, q=0.125, r=0.32, p0=30.0, x0=0.0):
        self.q = q
        self.r = r
        self.p = p0
        self.x = x0

    def update(self, z):
        p0 = self.p + self.q
        k = p0 / (p0 + self.r)
        self.x = self.x + k * (z - self.x)
        self.p = (1.0 - k) * p0
        return self.x


class WindowAverage:
    def __init__(self, size):
        self.values = deque(maxlen=size)
        self.total = 0.0

    def add(self, v):
        if len(self.values) == self.values.maxlen:
            self.total -= self.values[0]
        self.values.append(v)
        self.total += v
        return self.total / len(self.values)


class Regression:
    def __init__(self, size):
        self.points = deque(maxlen=size)
        self.n = 0

    def add_and_predict(self, y):
        self.points.append((self.n, y))
        self.n += 1
        m = len(self.points)
        if m < 2:
            return y
        sx = sum(x for x, _ in self.points)
        sy = sum(v for _, v in self.points)
        sxx = sum(x * x for x, _ in self.points)
        sxy = sum(x * v for x, v in self.points)
        slope = (m * sxy - sx * sy) / (m * sxx - sx * sx)
        intercept = (sy - slope * sx) / m
        return intercept + slope * self.n


class LogLog:
    ALPHA = 0.39701

    def __init__(self, bucket_bits):
        self.b = bucket_bits
        self.m = 1 << bucket_bits
        self.registers = [0] * self.m
        self.exact = set()

    def add(self, item):
        key = repr(item).encode()
        self.exact.add(key)
        h = zlib.crc32(key) & 0xFFFFFFFF
        bucket = h & (self.m - 1)
        w = h >> self.b
        rho = 1
        while w & 1 == 0 and rho <= 32 - self.b:
            w >>= 1
            rho += 1
        if rho > self.registers[bucket]:
            self.registers[bucket] = rho

    def estimate(self):
        return self.ALPHA * self.m * 2 ** (sum(self.registers) / self.m)


kalman = {f: Kalman() for f in FIELDS}
averages = {f: WindowAverage(WINDOW) for f in FIELDS}
regressions = {f: Regression(WINDOW) for f in FIELDS}
latest = {f: {} for f in FIELDS}
errors = {f: [] for f in FIELDS}
distinct = LogLog(6)
sensor_state = {"n": 0, "timer": None}


def read_sensor():
    n = sensor_state["n"]
    temp = 22.0 + 4.0 * math.sin(n / 8.0) + rng.gauss(0.0, 0.8)
    hum = 55.0 + 0.3 * n + rng.gauss(0.0, 2.0)
    things.publish("riot/sensor/temperature", {"n": n, "value": round(temp, 1)})
    things.publish("riot/sensor/humidity", {"n": n, "value": round(hum, 1)})
    sensor_state["n"] = n + 1
    if sensor_state["n"] == SAMPLES:
        things.clear_timer(sensor_state["timer"])
        things.set_timeout(finish, 0.05)


def on_raw(topic, msg):
    field = topic.rsplit("/", 1)[1]
    smoothed = kalman[field].update(msg["value"])
    things.publish(f"riot/kalman/{field}", {"n": msg["n"], "raw": msg["value"], "x": smoothed})


def on_raw_distinct(topic, msg):
    distinct.add(msg["value"])


def on_smoothed(topic, msg):
    field = topic.rsplit("/", 1)[1]
    avg = averages[field].add(msg["x"])
    prev = latest[field].get("pred")
    if prev is not None:
        errors[field].append(abs(prev - msg["x"]))
    pred = regressions[field].add_and_predict(msg["x"])
    latest[field] = {"n": msg["n"], "raw": msg["raw"], "x": msg["x"], "avg": avg, "pred": pred}
    if field == FIELDS[-1] and msg["n"] % 10 == 9:
        parts = []
        for f in FIELDS:
            d = latest[f]
            parts.append(f"{f[:4]} raw={d['raw']:.1f} kf={d['x']:.3f} avg={d['avg']:.3f} "
                         f"next={d['pred']:.3f}")
        print(f"n={msg['n']:2d} " + " | ".join(parts) + f" | distinct~{distinct.estimate():.1f}")


def finish():
    for f in FIELDS:
        k = kalman[f]
        e = errors[f]
        print(f"{f}: kalman x={k.x:.4f} P={k.p:.6f}, window avg {averages[f].total / WINDOW:.4f}, "
              f"mean |prediction error| {sum(e) / len(e):.4f} over {len(e)}")
    est = distinct.estimate()
    print(f"loglog registers: {distinct.registers[:16]}...")
    print(f"result: distinct values exact {len(distinct.exact)}, loglog estimate {est:.2f}")
    things.unsubscribe("riot/sensor/+")
    things.unsubscribe("riot/sensor/#", on_raw_distinct)
    things.unsubscribe("riot/kalman/+", on_smoothed)


things.subscribe("riot/sensor/+", on_raw)
things.subscribe("riot/sensor/#", on_raw_distinct)
things.subscribe("riot/kalman/+", on_smoothed)
sensor_state["timer"] = things.set_interval(read_sensor, 0.1)
