"""Property-based tests: random object graphs with sharing and cycles survive snapshots."""

from __future__ import annotations

import math
import types

from harness import Run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROGRAM = """
class Node:
    pass
class Slotted:
    __slots__ = ("a", "b")
def make_box():
    value = None
    def get():
        return value
    def put(v):
        nonlocal value
        value = v
    return get, put
things.subscribe("keep/alive", print)
"""

atoms = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.binary(max_size=8), st.complex_numbers(allow_nan=False, max_magnitude=1e6))
hashable_atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6))
KINDS = ["list", "dict", "node", "slotted", "tuple", "set", "frozenset", "box"]


@st.composite
def graphs(draw):
    """A list of node specs; children are ("ref", i) or ("atom", value)."""
    n = draw(st.integers(min_value=1, max_value=12))
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(n)]
    specs = []
    for i, kind in enumerate(kinds):
        if kind in ("set", "frozenset"):
            specs.append((kind, draw(st.lists(hashable_atoms, max_size=5))))
            continue
        # tuples may point at earlier tuples, and at any mutable node (cycles through those)
        targets = [j for j in range(n) if kinds[j] != "tuple" or j < i] if kind == "tuple" \
            else list(range(n))
        child = st.one_of(atoms.map(lambda a: ("atom", a)),
                          st.sampled_from(targets).map(lambda j: ("ref", j))) if targets \
            else atoms.map(lambda a: ("atom", a))
        size = 1 if kind == "box" else (2 if kind == "slotted" else
                                        draw(st.integers(min_value=0, max_value=4)))
        specs.append((kind, [draw(child) for _ in range(size)]))
    return specs


def build(specs, g):
    objs: list = [None] * len(specs)
    for i, (kind, _) in enumerate(specs):  # mutable shells first
        if kind == "list":
            objs[i] = []
        elif kind == "dict":
            objs[i] = {}
        elif kind == "node":
            objs[i] = g["Node"]()
        elif kind == "slotted":
            objs[i] = g["Slotted"]()
        elif kind == "box":
            objs[i] = g["make_box"]()
        elif kind in ("set", "frozenset"):
            objs[i] = (set if kind == "set" else frozenset)(specs[i][1])

    def val(c):
        return c[1] if c[0] == "atom" else objs[c[1]]

    for i, (kind, children) in enumerate(specs):  # tuples in order: they only look back
        if kind == "tuple":
            objs[i] = tuple(val(c) for c in children)
    for i, (kind, children) in enumerate(specs):
        if kind in ("set", "frozenset", "tuple"):
            continue
        values = [val(c) for c in children]
        if kind == "list":
            objs[i].extend(values)
        elif kind == "dict":
            objs[i].update({f"k{n}": v for n, v in enumerate(values)})
            objs[i][n_key(i)] = values[0] if values else None
        elif kind == "node":
            for n, v in enumerate(values):
                setattr(objs[i], f"f{n}", v)
        elif kind == "slotted":
            objs[i].a, objs[i].b = values
        elif kind == "box":
            objs[i][1](values[0])
    return objs


def n_key(i):
    return (i, "tuple-key")


def assert_isomorphic(a, b):
    """Same shape, same atoms, and the identity map between the two graphs is a bijection."""
    seen: dict[int, int] = {}
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, float):
            assert type(y) is float and (math.isnan(x) and math.isnan(y) or
                                         (x == y and math.copysign(1, x) == math.copysign(1, y)))
            continue
        if x is None or isinstance(x, (bool, int, str, bytes, complex)):
            assert type(x) is type(y) and x == y
            continue
        if id(x) in seen:
            assert seen[id(x)] == id(y), "sharing broken"
            continue
        assert id(y) not in seen.values(), "two objects merged into one"
        seen[id(x)] = id(y)
        assert type(x).__name__ == type(y).__name__
        if isinstance(x, (list, tuple)):
            assert len(x) == len(y)
            stack.extend(zip(x, y))
        elif isinstance(x, dict):
            assert list(x) == list(y)
            stack.extend(zip(x.values(), y.values()))
        elif isinstance(x, (set, frozenset)):
            assert x == y
        elif isinstance(x, types.FunctionType):
            assert x.__code__.co_name == y.__code__.co_name
            stack.extend(zip(x.__closure__ or (), y.__closure__ or ()))
        elif isinstance(x, types.CellType):
            stack.append((x.cell_contents, y.cell_contents))
        elif hasattr(x, "__slots__"):
            stack.extend((getattr(x, s), getattr(y, s)) for s in ("a", "b"))
        else:
            assert list(vars(x)) == list(vars(y))
            stack.extend(zip(vars(x).values(), vars(y).values()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(min_value=1, max_value=3))
def test_random_graphs_round_trip(specs, hops):
    run = Run(PROGRAM).start()
    g = run.host.globals
    g["graph"] = build(specs, g)
    original = g["graph"]
    for hop in range(hops):
        run.migrate(compress=bool(hop % 2))
    restored = run.host.globals["graph"]
    assert_isomorphic(original, restored)
    for i, (kind, _) in enumerate(specs):  # closures still share their cell
        if kind == "box":
            get, put = restored[i]
            put("marker")
            assert get() == "marker"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=False), min_size=8, max_size=40),
       st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=8, max_size=40))
def test_packed_number_lists_are_exact(floats, ints):
    run = Run(PROGRAM).start()
    run.host.globals["data"] = [floats, ints, ints + [2**64]]
    run.migrate()
    data = run.host.globals["data"]
    assert [x.hex() for x in data[0]] == [x.hex() for x in floats]
    assert data[1] == ints and data[2] == ints + [2**64]
