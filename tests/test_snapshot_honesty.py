"""Snapshot honesty (issue 7, item 7): what captures also restores, and nothing is lost silently.

Each round trip goes capture -> dumps -> loads -> restore (tests/harness.py) and must print
exactly what an unmigrated run prints; each refusal must say what and where.
"""

from __future__ import annotations

import decimal
import random
import textwrap

import pytest
from harness import PROGRAMS, Run, run_plain, run_with_migrations

from runtime import ProgramHost, ProgramStatus, VirtualClock
from runtime.snapshot import CaptureError, dumps, loads


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


def test_descriptor_set_name_is_not_run_again_at_restore():
    out = same_at_every_split("""
        class Field:
            declared = []
            def __set_name__(self, owner, name):
                self.name = name
                Field.declared.append(f"{owner.__name__}.{name}")
                print("declared", name)
            def __get__(self, obj, owner=None):
                return self if obj is None else obj.__dict__.get(self.name, 0) * 10
            def __set__(self, obj, value):
                obj.__dict__[self.name] = value
        class Model:
            x = Field()
            y = Field()
        m = Model()
        def tick(i):
            m.x = i
            print(i, m.x, m.y, Field.declared, Model.x.name)
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[:2] == ["declared x", "declared y"] and out.count("declared") == 2


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


# ============================================================ 2. module state: random
RANDOM_PROGRAM = """
    import random
    from random import randint, gauss as bell
    import random as rnd
    random.seed(2024)
    pick = random.choice  # a bound function of the program's generator, in a global

    def tick(i, sample=random.sample):
        deck = list(range(8))
        random.shuffle(deck)
        print(i, random.random(), randint(1, 6), bell(0, 1), pick("abcdef"), deck,
              sample(range(100), 3), rnd.uniform(-1, 1), random.getrandbits(40),
              random.choices("xyz", k=4), random.randrange(0, 1000, 7))
        if i == 3:
            random.seed(i)  # re-seeding in the middle is state too

    for i in range(7):
        things.set_timeout(tick, i + 1, i)
"""


def test_module_random_sequence_is_identical_at_every_split():
    """random.gauss keeps a cached second value (gauss_next): it must travel too."""
    out = same_at_every_split(RANDOM_PROGRAM)
    assert len(out.splitlines()) == 7


def test_module_random_survives_many_hops():
    source = textwrap.dedent(RANDOM_PROGRAM)
    plain, _ = run_plain(source)
    for points in ([1], [2, 5], [1, 2, 3, 4, 5, 6, 7]):
        assert run_with_migrations(source, points, hops_per_point=10, compress=True)[0] == plain


def test_corpus_program_dice_league_at_every_split():
    """Reads tests/programs/dice_league.py (project test data)."""
    out = same_at_every_split((PROGRAMS / "dice_league.py").read_text(), hops=2)
    assert out.splitlines()[-1].startswith("final: ")


def test_restored_program_does_not_use_the_interpreters_generator():
    """The interpreter's random module is neither used nor disturbed by programs, so
    whatever happens to it between capture and restore changes nothing."""
    source = textwrap.dedent(RANDOM_PROGRAM)
    plain, _ = run_plain(source)
    before = random.getstate()
    run = Run(source).start()
    run.clock.step()
    run.clock.step()
    assert random.getstate() == before  # the program seeded and drew from its own
    data = dumps(run.host.snapshot())
    random.seed(999)  # another program, or another process: a different global state
    random.random()
    restored = Run("things.exit()")
    restored.host = ProgramHost.restore(loads(data), clock=restored.clock,
                                        console=run.console.append)
    restored.clock.run()
    assert run.output == plain


def test_programs_in_one_interpreter_have_their_own_generators():
    source = textwrap.dedent(RANDOM_PROGRAM)
    alone, _ = run_plain(source)
    first, second = Run(source).start(), Run(source).start()
    while first.clock.step() | second.clock.step():  # interleaved, one event each
        pass
    assert first.output == second.output == alone


def test_unseeded_generator_state_is_captured_not_reseeded():
    """Two restores of one snapshot of an unseeded program draw the same numbers."""
    run = Run("""
        import random
        def tick():
            print(random.random(), random.randint(0, 10**9))
        things.set_interval(tick, 1)
    """).start()
    run.clock.run(until=2.0)
    doc = loads(dumps(run.host.snapshot()))
    outputs = []
    for _ in range(2):
        console: list[str] = []
        clock = VirtualClock()
        ProgramHost.restore(doc, clock=clock, console=console.append)
        clock.run(until=5.0)
        outputs.append(console)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 5
    assert len(set(outputs[0])) == 5


def test_every_way_of_reaching_random_shares_one_generator_after_restore():
    source = """
        from random import *
        import random
        import random as r2
        from random import random as draw, randint
        def later():
            import random as inner  # an import run after the restore
            return inner
        seed(7)
        def tick(i, fn):
            print(i, fn(), draw(), randint(1, 9), r2.random(), later().random(), uniform(0, 1))
        for i in range(5):
            things.set_timeout(tick, i + 1, i, random.random)
        things.subscribe("keep/alive", print)
    """
    plain, _ = run_plain(source.replace('things.subscribe("keep/alive", print)', ""))
    moved, _ = run_with_migrations(source.replace('things.subscribe("keep/alive", print)', ""),
                                   [1, 2, 3, 4, 5])
    assert moved == plain
    run = Run(source).start()
    run.migrate()
    g = run.host.globals
    own = run.host.modules.get("random")
    assert g["random"] is g["r2"] is own is not random and g["later"]() is own
    assert g["draw"].__self__ is g["randint"].__self__ is g["seed"].__self__ is own._inst
    assert run.host._timers[1].args[1].__self__ is own._inst  # a timer's argument too


def test_program_changes_to_its_random_module_are_kept():
    out = same_at_every_split("""
        import random
        random.random = lambda: 0.25
        random.label = "patched"
        del random.choice
        random.seed(1)
        def tick(i):
            print(i, random.random(), random.label, hasattr(random, "choice"),
                  random.randint(1, 100))
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0].startswith("0 0.25 patched False ")


def test_a_generator_still_in_its_first_state_travels_as_its_seed():
    """Programs that only use random.Random(seed) do not carry 3 kB of unused state, and
    two restores of one snapshot still draw the same numbers from it afterwards."""
    run = Run("""
        import random
        rng = random.Random(3)
        def tick():
            print(random.random())
        things.set_timeout(tick, 5)
    """).start()
    doc = loads(dumps(run.host.snapshot()))
    assert list(doc["modules"]["random"]) == ["seed"]
    outputs = []
    for _ in range(2):
        console: list[str] = []
        clock = VirtualClock()
        host = ProgramHost.restore(doc, clock=clock, console=console.append)
        assert list(host.snapshot()["modules"]["random"]) == ["seed"]
        clock.run()
        outputs.append(console)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 1
    assert "modules" not in Run("things.subscribe('a', print)").start().host.snapshot()


def test_snapshot_naming_the_random_module_restores_to_the_programs_own():
    """Snapshots written before programs had their own random module name the module
    itself; restoring one gives the program its own module, which then migrates."""
    run = Run("""
        import random
        things.subscribe("keep/alive", print)
    """).start()
    doc = loads(dumps(run.host.snapshot()))
    doc.pop("modules")
    index = next(i for i, e in enumerate(doc["objects"]) if e == {"t": "rt", "name": "random"})
    doc["objects"][index] = {"t": "module", "name": "random"}
    host = ProgramHost.restore(doc, clock=VirtualClock())
    assert host.globals["random"] is host.modules.get("random") is not random
    assert "random" in host.snapshot()["modules"]


def test_system_random_and_decimal_context_objects_are_captured():
    out = same_at_every_split("""
        import decimal, random
        sysrand = random.SystemRandom()
        sysrand.gauss(0, 1)  # leaves a cached value behind
        cached = sysrand.gauss_next
        ctx = decimal.Context(prec=6, rounding=decimal.ROUND_DOWN, traps=[decimal.Overflow])
        def tick(i):
            print(i, ctx.divide(decimal.Decimal(2), 3), ctx.prec, ctx.rounding,
                  sysrand.gauss_next == cached, 0 <= sysrand.random() < 1)
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
    assert out.splitlines()[0] == "0 0.666666 6 ROUND_DOWN True True"


# ============================================================ 3. refusals: never silently
TICKER = "\nthings.set_interval(lambda: print('tick', things.now()), 1.0)\n"


def _capture_fails(setup: str) -> CaptureError:
    """Run ``setup`` + a ticker, fail to snapshot, and check the program is untouched."""
    run = Run(textwrap.dedent(setup) + TICKER)
    run.run(until=2.0)
    before = run.output
    with pytest.raises(CaptureError) as info:
        run.host.snapshot()
    run.clock.run(until=4.0)
    assert run.output == before + "tick 3.0\ntick 4.0\n"
    return info.value


@pytest.mark.parametrize(("setup", "path", "what"), [
    ("import importlib\nr = importlib.import_module('random')",
     "globals['r']", "the interpreter's random module"),
    ("import importlib\nr = importlib.import_module('random').random",
     "globals['r'].__self__", "the interpreter's random generator (random._inst)"),
    ("import sys\nfns = [sys.modules['random'].randint]",
     "globals['fns'][0].__self__", "the interpreter's random generator (random._inst)"),
    ("import numpy as np\nnoise = np.random.rand",
     "globals['noise'].__self__", "NumPy's global RandomState"),
    ("import random\nrandom.log = open(__import__('os').devnull)",
     "modules['random'].log", "_io.TextIOWrapper"),
    ("import itertools\nids = itertools.count(1)", "globals['ids']", "itertools.count"),
    ("import functools\n@functools.lru_cache\ndef f(x):\n    return x",
     "globals['f']", "functools._lru_cache_wrapper"),
    ("import hashlib\nh = hashlib.sha256()", "globals['h']", "_hashlib.HASH"),
    ("import io\nbuf = io.StringIO()", "globals['buf']", "_io.StringIO"),
])
def test_state_a_snapshot_cannot_carry_is_refused_with_what_and_where(setup, path, what):
    err = _capture_fails(setup)
    assert err.path == path and what in err.what, str(err)
    assert str(err).startswith(f"cannot snapshot {path}: ")


def test_interpreter_random_refusal_says_what_to_do():
    err = _capture_fails("import importlib\nr = importlib.import_module('random')")
    assert "use `import random`" in str(err) and "random.Random(seed)" in str(err)


@pytest.fixture
def decimal_context():
    """Programs run on this thread: put its decimal context back afterwards."""
    saved = decimal.getcontext().copy()
    yield
    decimal.setcontext(saved)


def test_a_changed_decimal_context_is_refused(decimal_context):
    err = _capture_fails("""
        import decimal
        decimal.getcontext().prec = 6
        third = decimal.Decimal(1) / 3
    """)
    assert err.path == "decimal.getcontext()" and "prec=6" in err.what
    assert "decimal.localcontext()" in str(err)


def test_an_unchanged_decimal_context_or_a_local_one_is_fine(decimal_context):
    same_at_every_split("""
        import decimal
        def tick(i):
            with decimal.localcontext() as ctx:
                ctx.prec = 4
                print(i, decimal.Decimal(i + 1) / 7)
            print(decimal.Decimal(1) / 7)
        for i in range(3):
            things.set_timeout(tick, i + 1, i)
    """)
