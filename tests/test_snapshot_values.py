"""Snapshot/restore of every kind of value a program can hold (issue 2, section 3)."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from harness import Run, run_plain, run_with_migrations

from runtime.snapshot import register_encoder


def migrated(source: str, hops: int = 1, compress: bool = False) -> Run:
    import textwrap

    run = Run(textwrap.dedent(source) + "\nthings.subscribe('keep/alive', print)").start()
    for hop in range(hops):
        run.migrate(compress=compress and hop % 2 == 1)
    return run


def same_output_when_migrated(source: str, points=(1, 2, 3)) -> str:
    plain, _ = run_plain(source)
    moved, _ = run_with_migrations(source, points)
    assert moved == plain
    return plain


def test_atoms_and_containers_round_trip_exactly():
    g = migrated("""
        values = [None, True, False, 0, -7, 2**200, 1.5, float("nan"), float("inf"),
                  -float("inf"), -0.0, "text \\u00e9\\n\\"q\\"", b"\\x00\\xff", bytearray(b"ab"),
                  (1, (2, 3)), {1: "a", (2, 3): "b", "k": None}, {1, 2, 3}, frozenset({4}),
                  3 + 4j, [0.1] * 20, list(range(50)), [2**70] * 10, range(2, 9, 3),
                  slice(1, None, 2)]
    """).host.globals
    v = g["values"]
    assert v[:7] == [None, True, False, 0, -7, 2**200, 1.5]
    assert math.isnan(v[7]) and v[8] == math.inf and v[9] == -math.inf
    assert math.copysign(1, v[10]) == -1.0
    assert v[11] == 'text \u00e9\n"q"' and v[12] == b"\x00\xff" and v[13] == bytearray(b"ab")
    assert v[14] == (1, (2, 3)) and v[15] == {1: "a", (2, 3): "b", "k": None}
    assert v[16] == {1, 2, 3} and v[17] == frozenset({4}) and v[18] == 3 + 4j
    assert v[19] == [0.1] * 20 and v[20] == list(range(50)) and v[21] == [2**70] * 10
    assert v[22] == range(2, 9, 3) and v[23] == slice(1, None, 2)
    assert [type(x) for x in v] == [type(x) for x in eval(repr(v[:7]))] + \
        [type(x) for x in v[7:]]


def test_identity_sharing_and_cycles_survive():
    g = migrated("""
        shared = [1, 2]
        a = {"x": shared, "y": shared}
        cyc = [1]
        cyc.append(cyc)
        d = {}
        d["self"] = d
        t = (shared, shared)
        class Node:
            pass
        n1, n2 = Node(), Node()
        n1.next, n2.next = n2, n1
    """, hops=3).host.globals
    assert g["a"]["x"] is g["a"]["y"] is g["shared"] is g["t"][0] is g["t"][1]
    assert g["cyc"][1] is g["cyc"] and g["d"]["self"] is g["d"]
    assert g["n1"].next is g["n2"] and g["n2"].next is g["n1"]


def test_closures_sharing_a_cell_still_share_it():
    out = same_output_when_migrated("""
        def make():
            count = 0
            def inc():
                nonlocal count
                count += 1
                return count
            def get():
                return count
            return inc, get
        inc, get = make()
        def outer(a):
            def middle(b):
                def inner(c):
                    return a + b + c
                return inner
            return middle
        deep = outer(1)(10)
        def step(n):
            inc()
            print(get(), deep(n), fact(n))
            if n < 5:
                things.set_timeout(step, 1, n + 1)
        def make_fact():
            def fact(n):
                return 1 if n <= 1 else n * fact(n - 1)
            return fact
        fact = make_fact()
        things.set_timeout(step, 1, 1)
    """, points=(1, 2, 3, 4))
    assert out.splitlines()[-1] == "5 16 120"


def test_defaults_kwdefaults_attributes_partials_and_lambdas():
    out = same_output_when_migrated("""
        import functools
        def acc(x, bucket=[]):
            bucket.append(x)
            return list(bucket)
        def kw(*, scale=2, offset=lambda v: v + 1):
            return offset(scale)
        acc.calls = 0
        half = functools.partial(pow, 2, 3)
        def tick(i):
            acc.calls += 1
            print(acc(i), kw(), acc.calls, half(), (lambda q: q * i)(3))
        for i in range(4):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[-1] == "[0, 1, 2, 3] 3 4 8 9"


def test_classes_slots_class_attributes_bound_methods_and_super():
    run = Run("""
        class Base:
            registry = []
            def __init__(self, name):
                self.name = name
                Base.registry.append(name)
            def hello(self):
                return "base " + self.name
        class Child(Base):
            __slots__ = ("extra",)
            kind = "child"
            def hello(self):
                return super().hello() + " child"
            @property
            def upper(self):
                return self.name.upper()
            @staticmethod
            def st(x):
                return x * 2
            @classmethod
            def make(cls, n):
                return cls(n)
        c = Child.make("c1")
        c.extra = 42
        Child.kind = "changed"
        callback = c.hello
        def factory(k):
            class Local:
                def value(self):
                    return k
            return Local()
        local = factory(99)
        things.subscribe("keep/alive", print)
    """).start()
    run.migrate()
    g = run.host.globals
    c = g["c"]
    assert type(c) is g["Child"] and isinstance(c, g["Base"])
    assert c.extra == 42 and c.hello() == "base c1 child" and c.upper == "C1"
    assert g["Child"].kind == "changed" and g["Child"].st(4) == 8
    assert g["Base"].registry == ["c1"] and g["callback"]() == "base c1 child"
    assert g["callback"].__self__ is c
    assert g["local"].value() == 99
    assert g["Child"].make("c2").name == "c2" and g["Base"].registry == ["c1", "c2"]


def test_namedtuple_dataclass_enum_hash_eq_objects():
    out = same_output_when_migrated("""
        from collections import namedtuple
        from dataclasses import dataclass, field
        import enum
        Point = namedtuple("Point", "x y", defaults=(0,))
        @dataclass
        class Reading:
            sensor: str
            value: float = 0.0
            tags: list = field(default_factory=list)
        @dataclass(frozen=True)
        class Key:
            a: int
            b: int
        class Color(enum.Enum):
            RED = 1
        seen = {Key(1, 2): "k"}
        points = {Point(1), Point(2, 3)}
        r = Reading("s1", 2.5)
        sign = math_sign = __import__("math").copysign
        def tick():
            r.tags.append(len(r.tags))
            print(r, Key(1, 2) in seen, Point(1) in points, Point(5), Reading("z"),
                  sorted(points), sign(1, -0.0))
        things.set_timeout(tick, 1)
        things.set_timeout(tick, 2)
    """)
    assert "Reading(sensor='s1', value=2.5, tags=[0, 1]) True True Point(x=5, y=0)" in out


def test_collections_datetime_decimal_fraction_random_regex():
    out = same_output_when_migrated("""
        import collections, datetime as dt, decimal, fractions, random, re
        dq = collections.deque([1, 2, 3], maxlen=3)
        od = collections.OrderedDict([("b", 1), ("a", 2)])
        dd = collections.defaultdict(list)
        cnt = collections.Counter("hello")
        when = dt.datetime(2026, 11, 30, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
        day, span, tm = dt.date(2020, 2, 29), dt.timedelta(days=1, microseconds=3), dt.time(1, 2)
        money, frac = decimal.Decimal("1.10"), fractions.Fraction(1, 3)
        rng = random.Random(7)
        pat = re.compile(r"(\\d+)-x", re.I)
        def tick(i):
            dq.append(i); od.move_to_end("b"); dd[i % 2].append(i); cnt[str(i)] += 1
            print(list(dq), list(od), dict(dd), cnt.most_common(2), when + span * i,
                  day, tm, money * i, frac * i, rng.random(), pat.match(f"{i}-X").group(1))
        for i in range(4):
            things.set_timeout(tick, i + 1, i)
    """)
    assert "2026-12-03 12:00:00.000014+01:00" in out


def test_numpy_arrays_scalars_and_generators():
    out = same_output_when_migrated("""
        import numpy as np
        grid = np.arange(12, dtype=np.float32).reshape(3, 4)
        ints = np.array([[1, 2], [3, 4]], dtype=">i2")
        flags = np.zeros(5, dtype=bool)
        rec = np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])
        scalar = np.float64(2.5)
        gen = np.random.default_rng(123)
        ufunc = np.sqrt
        def tick(i):
            grid[:, i % 4] += gen.random(3).astype(np.float32)
            rec["a"] += i
            print(grid.dtype, grid.shape, f"{grid.sum():.5f}", ints.dtype.str, ints.sum(),
                  flags.any(), rec["a"].tolist(), scalar * i, ufunc(16.0), gen.integers(100))
        for i in range(4):
            things.set_timeout(tick, i + 1, i)
    """)
    assert ">i2 10" in out


def test_module_references_and_imported_functions():
    g = migrated("""
        import math, os.path, json as J
        from collections import OrderedDict
        fn, cls, mod, meth = math.sqrt, OrderedDict, os.path, "x".join
        dumps = J.dumps
        lst = []
        push = lst.append
    """).host.globals
    import os.path

    assert g["fn"] is math.sqrt and g["mod"] is os.path and g["J"] is json
    assert g["dumps"] is json.dumps
    g["push"](5)
    assert g["lst"] == [5]
    assert g["meth"](["a", "b"]) == "axb"


def test_runtime_state_timers_subscriptions_queue_and_clock_survive():
    run = Run("""
        got = []
        def on(t, p): got.append((t, p, things.now()))
        things.subscribe("in/#", on)
        things.set_timeout(lambda: print("once", things.now()), 2.5)
        iv = things.set_interval(lambda tag: print(tag, things.now()), 1.0, "iv")
    """)
    run.run(until=1.2)
    run.host.pause()
    run.host.deliver("in/a", b"[1]")
    doc = run.migrate()
    assert doc["status"] == "Paused" and doc["time"] == pytest.approx(1.2)
    assert len(doc["timers"]) == 2 and len(doc["messages"]) == 1
    assert [s["filter"] for s in doc["subscriptions"]] == ["in/#"]
    run.clock.run(until=0.3)  # the restored clock starts at 0, the program's at 1.2
    assert run.host.globals["got"] == [("in/a", [1], 1.2)]
    assert run.output.splitlines() == ["iv 1.0"]
    run.clock.run(until=1.9)
    assert run.output.splitlines() == ["iv 1.0", "iv 2.0", "once 2.5", "iv 3.0"]


def test_register_encoder_for_user_types():
    class Opaque:  # a "C-extension-like" type: has no __dict__ the encoder understands
        __slots__ = ("secret",)

        def __init__(self, secret):
            self.secret = secret

    register_encoder(Opaque, lambda o: {"secret": o.secret}, lambda s: Opaque(s["secret"]),
                     name="tests.Opaque")
    run = Run("box = {}\nthings.subscribe('keep/alive', print)")
    run.start()
    run.host.globals["box"]["o"] = Opaque([1, 2])
    run.migrate()
    restored = run.host.globals["box"]["o"]
    assert type(restored) is Opaque and restored.secret == [1, 2]


def test_restored_program_keeps_its_identity_and_multi_hop_snapshots_are_stable():
    run = Run("x = [1, 2, {'a': (3, 4)}]\nthings.set_interval(print, 1, 'x')",
              instance_id="p.1").start()
    first = run.migrate()
    second = run.migrate()
    assert run.host.instance_id == "p.1"
    assert first["objects"] == second["objects"]
    assert first["program"] == second["program"]


@pytest.mark.parametrize("value", [dt.datetime(2020, 1, 1), np.int64(3), (1, [2])])
def test_host_level_values_injected_into_globals(value):
    run = Run("v = None\nthings.subscribe('keep/alive', print)").start()
    run.host.globals["v"] = value
    run.migrate()
    restored = run.host.globals["v"]
    assert restored == value and type(restored) is type(value)
