"""Codecs: how library types are taken apart and rebuilt, plus ``register_encoder`` for users.

A codec turns an object into ``(args, state)``: ``args`` are needed to create the object,
``state`` is filled in afterwards (so cycles through mutable objects work).  Both are
ordinary values, encoded by the same graph encoder, so they may hold any capturable
object.  Codecs are found by exact type; numpy codecs are registered only once numpy is
imported, so a board without numpy never needs it.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import decimal
import fractions
import functools
import random
import re
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Codec:
    """How one exact type is captured and rebuilt."""

    name: str  # stable name written into snapshots
    type: type
    reduce: Callable[[Any], tuple[Any, Any]]  # obj -> (args, state)
    create: Callable[[Any], Any]  # args -> new object
    fill: Optional[Callable[[Any, Any], None]] = None  # (obj, state) -> None
    hashes_state: bool = False  # fill hashes the state's items: run after other fills


_BY_TYPE: dict[type, Codec] = {}
_BY_NAME: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    _BY_TYPE[codec.type] = codec
    _BY_NAME[codec.name] = codec
    return codec


def register_encoder(
    cls: type,
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    name: str | None = None,
) -> Codec:
    """Teach snapshots a type of your own.

    ``encode(obj)`` returns any capturable value (it may contain other objects);
    ``decode(value)`` rebuilds the object from it.  ``name`` (default ``module.qualname``)
    is what the snapshot records, so it must be registered on the restoring side too.
    """
    codec_name = name or f"{cls.__module__}.{cls.__qualname__}"
    return register_codec(Codec(codec_name, cls, lambda o: (encode(o), None), decode))


def codec_for_type(cls: type) -> Codec | None:
    codec = _BY_TYPE.get(cls)
    if codec is None and "numpy" in sys.modules and cls.__module__.startswith("numpy"):
        _register_numpy()
        codec = _BY_TYPE.get(cls)
    return codec


def codec_by_name(name: str) -> Codec:
    codec = _BY_NAME.get(name)
    if codec is None and name.startswith("numpy"):
        _register_numpy()
        codec = _BY_NAME.get(name)
    if codec is None:
        raise KeyError(f"no codec named {name!r} is registered here (register_encoder?)")
    return codec


def _simple(name: str, cls: type, reduce: Callable[[Any], Any], create: Callable[[Any], Any]):
    register_codec(Codec(name, cls, lambda o: (reduce(o), None), create))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# --- collections -------------------------------------------------------------------
def _fill_extend(obj: Any, items: list) -> None:
    obj.extend(items)


def _fill_pairs(obj: Any, pairs: list) -> None:
    for key, value in pairs:
        obj[key] = value


register_codec(Codec("collections.deque", collections.deque, lambda d: (d.maxlen, list(d)),
                     lambda maxlen: collections.deque(maxlen=maxlen), _fill_extend))
register_codec(Codec("collections.OrderedDict", collections.OrderedDict,
                     lambda d: (None, [(k, v) for k, v in d.items()]),
                     lambda _: collections.OrderedDict(), _fill_pairs, hashes_state=True))
register_codec(Codec("collections.defaultdict", collections.defaultdict,
                     lambda d: (d.default_factory, [(k, v) for k, v in d.items()]),
                     collections.defaultdict, _fill_pairs, hashes_state=True))
register_codec(Codec("collections.Counter", collections.Counter,
                     lambda d: (None, [(k, v) for k, v in d.items()]),
                     lambda _: collections.Counter(), _fill_pairs, hashes_state=True))

# --- numbers, text, ranges -----------------------------------------------------------
_simple("complex", complex, lambda c: [c.real, c.imag], lambda a: complex(a[0], a[1]))
_simple("bytearray", bytearray, lambda b: _b64(bytes(b)), lambda s: bytearray(_unb64(s)))
_simple("decimal.Decimal", decimal.Decimal, str, decimal.Decimal)
_simple("fractions.Fraction", fractions.Fraction, lambda f: [f.numerator, f.denominator],
        lambda a: fractions.Fraction(a[0], a[1]))
_simple("range", range, lambda r: [r.start, r.stop, r.step], lambda a: range(*a))
_simple("slice", slice, lambda s: (s.start, s.stop, s.step), lambda a: slice(*a))
_simple("re.Pattern", re.Pattern, lambda p: [p.pattern, p.flags], lambda a: re.compile(*a))


def _context_state(c: decimal.Context) -> dict:
    return {"prec": c.prec, "rounding": c.rounding, "Emin": c.Emin, "Emax": c.Emax,
            "capitals": c.capitals, "clamp": c.clamp,
            "flags": [s.__name__ for s, on in c.flags.items() if on],
            "traps": [s.__name__ for s, on in c.traps.items() if on]}


def _context(state: dict) -> decimal.Context:
    signals = {k: [getattr(decimal, name) for name in state[k]] for k in ("flags", "traps")}
    return decimal.Context(**{**state, **signals})


_simple("decimal.Context", decimal.Context, _context_state, _context)

# --- datetime ------------------------------------------------------------------------
_simple("datetime.timedelta", dt.timedelta, lambda d: [d.days, d.seconds, d.microseconds],
        lambda a: dt.timedelta(days=a[0], seconds=a[1], microseconds=a[2]))
_simple("datetime.timezone", dt.timezone, lambda z: (z.utcoffset(None), z.tzname(None)),
        lambda a: dt.timezone.utc if a[0] == dt.timedelta(0) and a[1] == "UTC"
        else dt.timezone(a[0], a[1]))
_simple("datetime.date", dt.date, lambda d: d.isoformat(), dt.date.fromisoformat)
_simple("datetime.time", dt.time,
        lambda t: (t.replace(tzinfo=None).isoformat(), t.tzinfo, t.fold),
        lambda a: dt.time.fromisoformat(a[0]).replace(tzinfo=a[1], fold=a[2]))
_simple("datetime.datetime", dt.datetime,
        lambda d: (d.replace(tzinfo=None).isoformat(), d.tzinfo, d.fold),
        lambda a: dt.datetime.fromisoformat(a[0]).replace(tzinfo=a[1], fold=a[2]))
try:  # Python 3.9+
    import zoneinfo

    _simple("zoneinfo.ZoneInfo", zoneinfo.ZoneInfo, lambda z: z.key, zoneinfo.ZoneInfo)
except ImportError:  # pragma: no cover
    pass

# --- functions and descriptors -------------------------------------------------------
register_codec(Codec(
    "functools.partial", functools.partial,
    lambda p: ((p.func, p.args, p.keywords), dict(p.__dict__) or None),
    lambda a: functools.partial(a[0], *a[1], **a[2]),
    lambda p, state: p.__dict__.update(state)))
_simple("property", property, lambda p: (p.fget, p.fset, p.fdel, p.__doc__),
        lambda a: property(*a))
_simple("staticmethod", staticmethod, lambda s: s.__func__, staticmethod)
_simple("classmethod", classmethod, lambda c: c.__func__, classmethod)


def _cached_property(args: Any) -> functools.cached_property:
    func, attrname, doc = args
    made = functools.cached_property(func)
    made.attrname, made.__doc__ = attrname, doc  # attrname: normally set by __set_name__
    return made


_simple("functools.cached_property", functools.cached_property,
        lambda c: (c.func, c.attrname, c.__doc__), _cached_property)
register_codec(Codec("types.SimpleNamespace", types.SimpleNamespace,
                     lambda n: (None, dict(vars(n))), lambda _: types.SimpleNamespace(),
                     lambda n, state: n.__dict__.update(state)))

# --- random ------------------------------------------------------------------------------
register_codec(Codec("random.Random", random.Random, lambda r: (None, r.getstate()),
                     lambda _: random.Random(), lambda r, state: r.setstate(state)))


def _system_random(gauss_next: float | None) -> random.SystemRandom:
    made = random.SystemRandom()
    made.gauss_next = gauss_next  # its only state: the second value of the last gauss()
    return made


_simple("random.SystemRandom", random.SystemRandom, lambda r: r.gauss_next, _system_random)

#: codecs whose objects carry functions made at class-creation time (see decoder)
DESCRIPTOR_CODECS = frozenset({"property", "staticmethod", "classmethod",
                               "functools.cached_property"})


# --- numpy (registered lazily) ---------------------------------------------------------
def _register_numpy() -> None:
    if "numpy.ndarray" in _BY_NAME:
        return
    import numpy as np

    def reduce_array(a: Any) -> tuple[Any, Any]:
        if a.dtype.hasobject:
            # object arrays hold references: capture them element by element
            return ("O", list(a.shape), a.ravel().tolist()), None
        data = np.ascontiguousarray(a)
        return (a.dtype.descr if a.dtype.names else a.dtype.str, list(a.shape),
                _b64(data.tobytes())), None

    def create_array(args: Any) -> Any:
        dtype, shape, data = args
        if dtype == "O":
            out = np.empty(len(data), dtype=object)
            out[:] = data
            return out.reshape(shape)
        if isinstance(dtype, list):
            dtype = [tuple(field) for field in dtype]
        return np.frombuffer(_unb64(data), dtype=np.dtype(dtype)).reshape(shape).copy()

    register_codec(Codec("numpy.ndarray", np.ndarray, reduce_array, create_array))

    def reduce_scalar(s: Any) -> tuple[Any, Any]:
        return (s.dtype.str, _b64(s.tobytes())), None

    def create_scalar(args: Any) -> Any:
        return np.frombuffer(_unb64(args[1]), dtype=np.dtype(args[0]))[0]

    for scalar_type in {np.dtype(c).type for c in "?bBhHiIlLqQefdgFDG"}:
        register_codec(Codec(f"numpy.{scalar_type.__name__}", scalar_type,
                             reduce_scalar, create_scalar))
    register_codec(Codec("numpy.dtype", type(np.dtype("f8")), lambda d: (d.str, None),
                         np.dtype))
    for dtype_class in {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGUSV"}:
        _BY_TYPE.setdefault(dtype_class, _BY_NAME["numpy.dtype"])

    def reduce_generator(g: Any) -> tuple[Any, Any]:
        state = g.bit_generator.state
        return state["bit_generator"], state

    def create_generator(name: str) -> Any:
        return np.random.Generator(getattr(np.random, name)())

    def fill_generator(g: Any, state: Any) -> None:
        g.bit_generator.state = state

    register_codec(Codec("numpy.random.Generator", np.random.Generator, reduce_generator,
                         create_generator, fill_generator))
    register_codec(Codec("numpy.random.RandomState", np.random.RandomState,
                         lambda r: (None, r.get_state(legacy=False)),
                         lambda _: np.random.RandomState(),
                         lambda r, state: r.set_state(state)))
