"""Collections zoo: one of every container and value type, mutated over time.

A periodic "event log" program whose state is spread over many built-in and
standard-library types, all mutated in timer callbacks and printed
deterministically (sets sorted, floats via repr).
Migration features: deque(maxlen), OrderedDict (with move_to_end),
defaultdict(list) and defaultdict with a program-defined factory, Counter,
a namedtuple and a dataclass (one frozen, used as a dict key) defined in the
program, datetime/date/timedelta/timezone (UTC and a named fixed offset),
frozenset, set, tuple, range, bytes, bytearray, complex, nan/inf/-0.0
floats, shared references (one list reachable from two containers, mutated
later: both must see it), self-referential cycles (a list containing itself,
a dict containing itself, two objects pointing at each other).
"""

import math
from collections import Counter, OrderedDict, defaultdict, deque, namedtuple
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

Reading = namedtuple("Reading", ["sensor", "value", "unit"])


@dataclass
class Device:
    name: str
    kind: str
    tags: list = field(default_factory=list)
    readings: int = 0


@dataclass(frozen=True)
class Key:
    site: str
    floor: int


def make_bucket():
    return {"n": 0, "sum": 0.0}


UTC = timezone.utc
CEST = timezone(timedelta(hours=2), "CEST")
EPOCH = datetime(2024, 3, 30, 23, 59, 0, tzinfo=UTC)

recent = deque(maxlen=5)
lru = OrderedDict()
by_sensor = defaultdict(list)
buckets = defaultdict(make_bucket)
kinds = Counter()
devices = {
    "t1": Device("t1", "thermo", ["indoor"]),
    "h1": Device("h1", "hygro"),
    "c1": Device("c1", "co2", ["indoor", "kitchen"]),
}
floors = {Key("home", 0): "ground", Key("home", 1): "first"}
seen_units = set()
known_kinds = frozenset({"thermo", "hygro", "co2"})
window = range(0, 40, 5)
raw = bytearray(b"LOG:")
signature = bytes([0, 1, 2, 254, 255])
impedance = complex(1.5, -2.0)
specials = [math.nan, math.inf, -math.inf, -0.0, 1e-300]

shared = [0]                      # one list in two places
holder_a = {"ref": shared}
holder_b = (shared, "tuple keeps the same list")

loop_list = [1, 2]
loop_list.append(loop_list)       # a list containing itself
loop_dict = {"name": "root"}
loop_dict["self"] = loop_dict     # a dict containing itself


class Node:
    def __init__(self, name):
        self.name = name
        self.peer = None


ping, pong = Node("ping"), Node("pong")
ping.peer, pong.peer = pong, ping
state = {"tick": 0, "stamps": []}

SENSORS = [("t1", "C"), ("h1", "%"), ("c1", "ppm")]


def tick():
    state["tick"] += 1
    k = state["tick"]
    name, unit = SENSORS[k % 3]
    value = round(20 + 3 * math.sin(k / 3.0) + (k % 5) * 0.5, 3)
    r = Reading(name, value, unit)
    recent.append(r)
    lru[name] = k
    lru.move_to_end(name)
    if len(lru) > 2:
        lru.popitem(last=False)
    by_sensor[name].append(value)
    b = buckets[unit]
    b["n"] += 1
    b["sum"] += value
    dev = devices[name]
    dev.readings += 1
    kinds[dev.kind] += 1
    seen_units.add(unit)
    shared.append(k)              # visible through holder_a and holder_b
    raw.extend(f"{name}={value};".encode())
    stamp = EPOCH + timedelta(seconds=round(things.now() * 20, 3))
    state["stamps"].append(stamp)
    if k in window:
        dev.tags.append(f"w{k}")
        loop_list.append(k)
        loop_dict[f"k{k}"] = r._replace(value=-value)
    if k % 6 == 0:
        local = stamp.astimezone(CEST)
        print(f"tick {k:2d} {stamp.isoformat()} = {local.isoformat()} ({local.tzname()}) "
              f"day {local.date().isoformat()} | last={recent[-1]} lru={list(lru.items())}")
    if k == 36:
        things.clear_timer(timer)
        things.set_timeout(finish, 0.1)


def finish():
    global impedance
    impedance = impedance * 1j + complex(0.25, 0.0)
    print(f"recent (maxlen {recent.maxlen}): {list(recent)}")
    print(f"by_sensor: {dict(by_sensor)}")
    print(f"buckets: {[(u, b['n'], round(b['sum'], 3)) for u, b in buckets.items()]} "
          f"factory={buckets.default_factory.__name__}")
    print(f"kinds: {kinds.most_common()} known={sorted(known_kinds)} "
          f"unseen={sorted(known_kinds - set(kinds))}")
    print(f"devices: {list(devices.values())}")
    print(f"floors: {[(k.site, k.floor, v) for k, v in floors.items()]} "
          f"lookup={floors[Key('home', 1)]}")
    print(f"units: {sorted(seen_units)} window={window} {list(window)}")
    print(f"raw: {len(raw)} bytes, head {bytes(raw[:24])!r} tail {bytes(raw[-12:])!r}")
    print(f"signature: {signature!r} hex={signature.hex()}")
    print(f"impedance: {impedance!r} abs={abs(impedance):.6f}")
    print(f"specials: {specials!r} nan==nan: {specials[0] == specials[0]}")
    span = state["stamps"][-1] - state["stamps"][0]
    print(f"stamps: {len(state['stamps'])} over {span} ({span.total_seconds()} s), "
          f"first {state['stamps'][0]!r}")
    print(f"dates: {date(2024, 3, 31) - EPOCH.date()} "
          f"weekday={state['stamps'][-1].astimezone(CEST).strftime('%A %Y-%m-%d %H:%M %Z')}")
    same = holder_a["ref"] is holder_b[0] is shared
    print(f"shared: {holder_a['ref'][-5:]} {holder_b[0][-5:]} same-object={same}")
    print(f"loop_list: {loop_list!r} self-contained={loop_list[2] is loop_list}")
    print(f"loop_dict keys: {list(loop_dict)} self-contained={loop_dict['self'] is loop_dict}")
    print(f"loop_dict k10: {loop_dict['k10']!r}")
    print(f"cycle: {ping.peer.peer is ping} {ping.peer.name}")
    print(f"result: {state['tick']} ticks, {sum(kinds.values())} readings, "
          f"{len(shared)} shared items")


timer = things.set_interval(tick, 0.2)
