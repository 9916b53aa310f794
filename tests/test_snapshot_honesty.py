"""Snapshot honesty (issue 7, item 7): what captures also restores, and nothing is lost silently.

Each round trip goes capture -> dumps -> loads -> restore (tests/harness.py) and must print
exactly what an unmigrated run prints; each refusal must say what and where.
"""

from __future__ import annotations

import textwrap

from harness import run_plain, run_with_migrations

from runtime import ProgramStatus


def same_at_every_split(source: str, hops: int = 3) -> str:
    """The unmigrated output; asserts a migration after any event, and many hops at every
    event, print exactly the same."""
    source = textwrap.dedent(source)
    plain, run = run_plain(source)
    assert run.host.status is ProgramStatus.EXITED and run.host.exit_code == 0, run.host.error
    events = run.host.events_run
    for point in range(1, events):
        moved, moved_run = run_with_migrations(source, [point])
        assert moved == plain, f"migrated after event {point}"
        assert moved_run.host.error is None
    moved, _ = run_with_migrations(source, range(1, events), hops_per_point=hops,
                                   compress=True)
    assert moved == plain, f"{hops} hops after every event"
    return plain


# ============================================================ 1. classes: super(), hooks
def test_super_and_class_cell_in_every_kind_of_method():
    """Zero-argument super() and __class__ in classmethod, staticmethod, property getter,
    setter and deleter, plain methods and nested functions (kept as closures too)."""
    out = same_at_every_split("""
        class Base:
            @classmethod
            def make(cls, n):
                return cls(n)
            def __init__(self, n):
                self._n = n
            @property
            def n(self):
                return self._n
            @n.setter
            def n(self, value):
                self._n = value
            @n.deleter
            def n(self):
                self._n = 0
            def describe(self):
                return "base"
            @staticmethod
            def kind():
                return "base-kind"

        class Child(Base):
            @classmethod
            def make(cls, n):
                made = super().make(n * 10)
                made.via = __class__.__name__
                return made
            @property
            def n(self):
                return super().n + 1
            @n.setter
            def n(self, value):
                super(Child, type(self)).n.fset(self, value * 2)
            @n.deleter
            def n(self):
                super(Child, type(self)).n.fdel(self)
                self.deleted = True
            def describe(self):
                def nested():
                    return __class__.__name__ + ">" + super(__class__, self).describe()
                return nested()
            @staticmethod
            def kind():
                return "child of " + super(__class__, __class__).kind()
            def keeper(self):
                return lambda: __class__.__name__ + ":" + str(self.n)

        c = Child.make(1)
        remember = c.keeper()

        def tick(i):
            c.n = i
            print(i, c.n, c.via, c.describe(), Child.kind(), remember(), Child.make(i).n)
            if i == 3:
                del c.n
                print(c.n, c.deleted)

        for i in range(5):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0] == "0 1 Child Child>base child of base-kind Child:1 1"
    assert "1 True" in out.splitlines()  # deleted through super()'s deleter


def test_super_in_classmethod_of_a_class_made_by_a_function():
    out = same_at_every_split("""
        def make_pair(tag):
            class A:
                @classmethod
                def name(cls):
                    return tag
            class B(A):
                @classmethod
                def name(cls):
                    return super().name() + "+b"
                @property
                def p(self):
                    return __class__.name() + "!"
            return B
        B1, B2 = make_pair("one"), make_pair("two")
        def tick(i):
            print(i, B1.name(), B2().p)
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0] == "0 one+b two+b!"


INIT_SUBCLASS_REGISTRY = """
    class Plugin:
        registry = {}
        order = []
        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)
            Plugin.registry[cls.__name__] = cls
            Plugin.order.append(cls.__name__)
            print("registered", cls.__name__)

    class Audio(Plugin):
        pass

    class Video(Plugin):
        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)
            cls.codec = cls.__name__.lower()

    class H264(Video):
        pass

    def tick(i):
        if i == 2:
            class Late(H264):  # made after a migration: the real hooks must be back
                pass
        print(i, sorted(Plugin.registry), Plugin.order, H264.codec,
              Plugin.registry["H264"] is H264, getattr(Plugin.registry.get("Late"), "codec", "-"))

    for i in range(5):
        things.set_timeout(tick, i + 1, i)
"""


def test_init_subclass_registering_into_the_base_runs_once():
    """The registry and the order come from the snapshot; restore does not run the hook
    again (no second "registered" line, no duplicate in ``order``), and a class defined
    after a migration still goes through it."""
    out = same_at_every_split(INIT_SUBCLASS_REGISTRY)
    lines = out.splitlines()
    assert lines[:3] == ["registered Audio", "registered Video", "registered H264"]
    assert lines.count("registered Late") == 1
    assert lines[-1] == ("4 ['Audio', 'H264', 'Late', 'Video'] "
                         "['Audio', 'Video', 'H264', 'Late'] h264 True late")


def test_init_subclass_setting_class_attributes_from_class_keywords():
    out = same_at_every_split("""
        class Shape:
            made = 0
            def __init_subclass__(cls, sides=0, **kwargs):
                super().__init_subclass__(**kwargs)
                cls.sides = sides
                cls.label = f"{cls.__name__.lower()}/{sides}"
                Shape.made += 1
        class Triangle(Shape, sides=3):
            pass
        class Square(Shape, sides=4):
            label = "overridden later"
        class Tile(Square):
            pass
        def tick(i):
            Square.sides += 1
            print(i, Triangle.label, Square.sides, Square.label, Tile.sides, Shape.made,
                  "sides" in Tile.__dict__)
        for i in range(4):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0] == "0 triangle/3 5 square/4 0 3 True"


def test_program_metaclass_is_not_run_again_at_restore():
    out = same_at_every_split("""
        made = []
        class Meta(type):
            def __new__(mcls, name, bases, ns):
                cls = super().__new__(mcls, name, bases, ns)
                made.append(name)
                print("made", name)
                return cls
            def describe(cls):
                return cls.__name__ + " via " + type(cls).__name__
        class A(metaclass=Meta):
            pass
        class B(A):
            pass
        def tick(i):
            print(i, made, B.describe(), type(B) is Meta)
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.count("made A") == 1 and out.count("made B") == 1


def test_abstract_methods_and_registered_virtual_subclasses_survive():
    """ABCMeta computes __abstractmethods__ from the methods it is made with, and keeps
    ``register()``ed classes outside the class dict: both must come back."""
    out = same_at_every_split("""
        import abc
        class Sensor(abc.ABC):
            @abc.abstractmethod
            def read(self): ...
            @property
            @abc.abstractmethod
            def unit(self): ...
        class Thermo(Sensor):
            def read(self):
                return 21
            @property
            def unit(self):
                return "C"
        class Legacy:
            pass
        Sensor.register(Legacy)
        Sensor.register(dict)
        def tick(i):
            try:
                Sensor()
                abstract = False
            except TypeError:
                abstract = True
            print(i, abstract, sorted(Sensor.__abstractmethods__), Thermo().read(),
                  Thermo().unit, isinstance(Legacy(), Sensor), issubclass(dict, Sensor),
                  issubclass(list, Sensor))
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0] == "0 True ['read', 'unit'] 21 C True True False"


def test_typing_namedtuple_keeps_its_methods_and_class_attributes():
    out = same_at_every_split("""
        from typing import NamedTuple
        class Point(NamedTuple):
            x: int
            y: int = 0
            origin_name = "O"
            def norm1(self):
                return abs(self.x) + abs(self.y)
            def __repr__(self):
                return f"<{self.x},{self.y}>"
        p = Point(3, -4)
        def tick(i):
            print(i, p, p.norm1(), Point(i), Point.origin_name, p._replace(x=i))
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0] == "0 <3,-4> 7 <0,0> O <0,-4>"


def test_flag_combinations_and_cached_property():
    out = same_at_every_split("""
        import enum, functools
        class Perm(enum.Flag):
            R = 4
            W = 2
            X = 1
        rw = Perm.R | Perm.W
        none = Perm(0)
        class Reading:
            def __init__(self, raw):
                self.raw = raw
            @functools.cached_property
            def calibrated(self):
                print("calibrating", self.raw)
                return self.raw * 2 + super().__hash__() * 0
        r = Reading(5)
        r.calibrated
        def tick(i):
            print(i, rw, Perm.W in rw, none, rw | Perm.X, r.calibrated, Reading(i).calibrated)
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.count("calibrating 5") == 1
