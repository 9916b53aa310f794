"""Pub/sub chain: a four-stage message pipeline inside one program.

source (interval) -> parser -> enricher -> aggregator -> controller, with a
monitor on the side.  The source publishes binary records as bytes (a 0xFE
marker makes them invalid UTF-8, so they arrive as bytes) and control
messages as UTF-8 JSON text in bytes (so they arrive decoded, as dicts); it
also publishes a burst of messages in one callback (queued, delivered in
order on later loop turns).  Stages are connected by topics using `+` and
`#` filters; the aggregator publishes flush requests to a topic it
subscribes to itself; the monitor subscribes to `#`, then unsubscribes
midway and subscribes to a narrower filter; a heartbeat publishes to a
topic nobody listens to after that.  The source interval is stopped with
clear_timer; the controller ends the program with things.exit(0) while a
heartbeat interval and all subscriptions are still live.
Migration features: queued in-flight messages, subscription tables with
wildcards, module-level functions and bound methods as subscribers,
struct/json modules, bytes payloads, dicts with int keys (JSON turns them
into strings), exit with live timers.
"""

import json
import struct

SENSORS = ("alpha", "beta", "gamma")
RECORDS = 40
source = {"k": 0, "timer": None, "burst_seen": []}


def emit():
    k = source["k"]
    sensor = SENSORS[k % 3]
    value = ((k * 37) % 101) / 10.0
    things.publish(f"pipe/raw/{sensor}", b"\xfe" + struct.pack(">Hd", k, value))
    if k % 10 == 9:
        things.publish("pipe/raw/control", json.dumps({"cmd": "mark", "k": k}).encode())
    if k == 24:
        for j in range(8):   # a burst: eight messages queued in one callback
            things.publish(f"pipe/raw/{SENSORS[j % 3]}",
                           b"\xfe" + struct.pack(">Hd", 1000 + j, 5.0 + j))
    source["k"] = k + 1
    if source["k"] == RECORDS:
        things.clear_timer(source["timer"])
        things.publish("pipe/raw/control", b'{"cmd": "eof", "records": 40}')


def parser(topic, payload):
    sensor = topic.rsplit("/", 1)[1]
    if isinstance(payload, bytes):
        k, v = struct.unpack(">Hd", payload[1:])
        things.publish(f"pipe/parsed/{sensor}", {"k": k, "v": v})
    else:
        things.publish(f"pipe/ctl/{payload['cmd']}", payload)


class Enricher:
    def __init__(self, threshold):
        self.threshold = threshold
        self.stats = {}      # sensor -> [n, sum]
        self.dropped = []

    def on_parsed(self, topic, msg):
        sensor = topic.split("/")[2]
        if msg["v"] < self.threshold:
            self.dropped.append(msg["k"])
            return
        st = self.stats.setdefault(sensor, [0, 0.0])
        st[0] += 1
        st[1] += msg["v"]
        things.publish(f"pipe/agg/{sensor}/value",
                       {"k": msg["k"], "v": msg["v"], "avg": st[1] / st[0]})


class Aggregator:
    BATCH = 6

    def __init__(self):
        self.batch = []
        self.batches = {}    # batch number -> summary (int keys)
        self.order_ok = True
        self.last_k = {}

    def on_value(self, topic, msg):
        sensor = topic.split("/")[2]
        stream = f"{sensor}/{'burst' if msg['k'] >= 1000 else 'main'}"
        if msg["k"] <= self.last_k.get(stream, -1):   # per-stream FIFO order must hold
            self.order_ok = False
        self.last_k[stream] = msg["k"]
        self.batch.append((sensor, msg["k"], msg["v"]))
        if len(self.batch) >= self.BATCH:
            things.publish("pipe/agg/self/flush", {"why": "full", "batches": self.batches})

    def on_flush(self, topic, msg):     # receives what this object published itself
        if not self.batch:
            return
        n = len(self.batches) + 1
        vals = [v for _, _, v in self.batch]
        self.batches[n] = {"size": len(vals), "mean": round(sum(vals) / len(vals), 4)}
        print(f"t={things.now():.2f} flush #{n} ({msg['why']}, {len(msg['batches'])} before): "
              f"{[f'{s[0]}{k}' for s, k, _ in self.batch]} mean={self.batches[n]['mean']}")
        self.batch = []


class Monitor:
    def __init__(self):
        self.counts = {}
        things.subscribe("#", self.on_any)

    def on_any(self, topic, payload):
        key = "/".join(topic.split("/")[:2])
        self.counts[key] = self.counts.get(key, 0) + 1

    def narrow(self):
        things.unsubscribe("#", self.on_any)
        things.subscribe("pipe/ctl/+", self.on_any)
        print(f"t={things.now():.2f} monitor narrows to pipe/ctl/+ after "
              f"{sum(self.counts.values())} messages: {sorted(self.counts.items())}")


def heartbeat():
    things.publish("pipe/hb", {"t": round(things.now(), 2)})


def controller(topic, msg):
    cmd = topic.rsplit("/", 1)[1]
    if cmd == "mark":
        print(f"t={things.now():.2f} mark at record {msg['k']}: dropped so far "
              f"{len(enricher.dropped)}")
    elif cmd == "eof":
        things.publish("pipe/agg/self/flush", {"why": "eof", "batches": aggregator.batches})
        things.publish("pipe/ctl/done", {"records": msg["records"]})
    elif cmd == "done":
        stats = {s: (n, round(total / n, 4)) for s, (n, total) in enricher.stats.items()}
        print(f"enricher: {stats}, dropped {enricher.dropped}")
        print(f"monitor (narrowed): {sorted(monitor.counts.items())}")
        sizes = [b["size"] for b in aggregator.batches.values()]
        print(f"result: {msg['records']} records, {len(aggregator.batches)} batches {sizes}, "
              f"order {'ok' if aggregator.order_ok else 'BROKEN'}")
        things.exit(0)


enricher = Enricher(threshold=2.0)
aggregator = Aggregator()
monitor = Monitor()
things.subscribe("pipe/raw/+", parser)
things.subscribe("pipe/parsed/#", enricher.on_parsed)
things.subscribe("pipe/agg/+/value", aggregator.on_value)
things.subscribe("pipe/agg/self/flush", aggregator.on_flush)
things.subscribe("pipe/ctl/+", controller)
source["timer"] = things.set_interval(emit, 0.1)
things.set_interval(heartbeat, 0.45)
things.set_timeout(monitor.narrow, 2.05)
