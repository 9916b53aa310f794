"""Standard modules with hidden state: per-program copies that migrate, and refusals.

The module-level functions of ``random`` (``random.random``, ``randint``, ``seed``...) are
bound methods of one hidden generator.  Programs share the interpreter (the simulator runs
many in one process), so a program's ``import random`` gets a module of its own: the real
module's contents, with those functions bound to the program's own ``random.Random``.
A snapshot carries that generator's state (and any attribute the program changed on its
module), so the sequence goes on exactly across migrations; a generator still in its
first state is carried by its seed alone (a few bytes instead of 3 kB).

State a snapshot cannot carry is refused with a CaptureError instead of being lost:
the interpreter's own ``random`` module and generator when a program reaches them some
other way, NumPy's global RandomState, and a changed ``decimal`` context.
"""

from __future__ import annotations

import os
import random as _random
import sys
import types
from typing import TYPE_CHECKING, Any, Callable

from .errors import CaptureError, RestoreError

if TYPE_CHECKING:
    from .encoder import GraphEncoder

#: names of ``random``'s module-level functions bound to its hidden generator
_RANDOM_FUNCTIONS = {key: value.__name__ for key, value in vars(_random).items()
                     if getattr(value, "__self__", None) is _random._inst}
_RANDOM_HINT = ("every program in this process shares it, so its state cannot be "
                "captured; use `import random` (each program gets its own) or "
                "random.Random(seed)")
_MISSING = object()


class OwnRandom:
    """A program's ``random`` module: the real one's contents, its functions bound to a
    generator of the program's own."""

    def __init__(self, seed: int | None = None) -> None:
        self.module = types.ModuleType("random", _random.__doc__)
        self.module.__dict__.update(vars(_random))
        #: given (reproducible runs), else as unpredictable as random's own
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(32), "big")
        self.generator = _random.Random(self.seed)
        for key, method in _RANDOM_FUNCTIONS.items():
            self.module.__dict__[key] = getattr(self.generator, method)
        self.module.__dict__["_inst"] = self.generator
        self.made = dict(self.module.__dict__)  # to tell what the program changed

    def runtime_objects(self) -> dict[str, Any]:
        return {"random": self.module, "random._inst": self.generator}

    def capture(self, encode: Callable[[Any, str], Any]) -> dict:
        spec: dict[str, Any] = {}
        state = self.generator.getstate()
        if state == _random.Random(self.seed).getstate():
            spec["seed"] = self.seed  # not used yet
        else:
            spec["state"] = encode(state, "modules['random'] state")
        current = self.module.__dict__
        changed = {key: encode(value, f"modules['random'].{key}")
                   for key, value in current.items() if self.made.get(key, _MISSING) is not value}
        if changed:
            spec["changed"] = changed
        removed = [key for key in self.made if key not in current]
        if removed:
            spec["removed"] = removed
        return spec

    def load(self, spec: dict, value: Callable[[Any], Any]) -> None:
        if "seed" in spec:
            if type(spec["seed"]) is not int:
                raise RestoreError("corrupt snapshot: the seed of module random is malformed")
            self.seed = spec["seed"]
            self.generator.seed(self.seed)
        if "state" in spec:
            self.generator.setstate(value(spec["state"]))
        for key, ref in spec.get("changed", {}).items():
            self.module.__dict__[key] = value(ref)
        for key in spec.get("removed", []):
            self.module.__dict__.pop(key, None)


_OWN: dict[str, type[OwnRandom]] = {"random": OwnRandom}


class ProgramModules:
    """The program's own copies of stateful standard modules, made on first import."""

    def __init__(self, seed: int | None = None) -> None:
        self._own: dict[str, OwnRandom] = {}
        self.seed = seed  # the first seed of the program's own random (None: os.urandom)

    def get(self, name: str) -> types.ModuleType | None:
        """The program's own module ``name``, or None to import the real one."""
        own = self._own.get(name)
        if own is None:
            maker = _OWN.get(name)
            if maker is None:
                return None
            own = self._own[name] = maker(self.seed)
        return own.module

    def runtime_objects(self) -> dict[str, Any]:
        """Name -> object for the snapshot's ``rt`` entries (recreated, not captured)."""
        objects: dict[str, Any] = {}
        for own in self._own.values():
            objects.update(own.runtime_objects())
        return objects

    def runtime_refs(self) -> dict[int, str]:
        return {id(obj): name for name, obj in self.runtime_objects().items()}

    def capture(self, encoder: GraphEncoder) -> dict:
        """The snapshot's ``modules`` field: each own module's hidden state.

        Call it once the rest of the program is encoded: it also refuses module state
        the program relies on but a snapshot cannot carry.
        """
        specs = {name: own.capture(encoder.encode_root) for name, own in self._own.items()}
        check_module_state(encoder.modules_used)
        return specs

    def prepare(self, specs: Any) -> None:
        """Before decoding: make the modules the snapshot refers to."""
        if not isinstance(specs, dict):
            raise RestoreError("corrupt snapshot: field 'modules' is malformed")
        for name, spec in specs.items():
            if name not in _OWN or not isinstance(spec, dict):
                raise RestoreError(f"corrupt snapshot: unknown module state {name!r}")
            self.get(name)

    def load(self, specs: dict, value: Callable[[Any], Any]) -> None:
        """After decoding: put the captured state back."""
        for name, spec in specs.items():
            self._own[name].load(spec, value)


# ============================================================ refusals
def interpreter_wide() -> dict[int, tuple[str, str]]:
    """id -> (what, hint) of stateful objects shared by the whole process: a snapshot of
    one program cannot carry them."""
    refused = {
        id(_random): ("the interpreter's random module", _RANDOM_HINT),
        id(_random._inst): ("the interpreter's random generator (random._inst)", _RANDOM_HINT),
    }
    numpy_random = sys.modules.get("numpy.random")  # its functions: one RandomState's
    global_state = getattr(getattr(numpy_random, "rand", None), "__self__", None)
    if global_state is not None and not isinstance(global_state, types.ModuleType):
        refused[id(global_state)] = (
            "NumPy's global RandomState (numpy.random.rand, seed...)",
            "shared by the whole process and not captured; use "
            "numpy.random.default_rng(seed) or numpy.random.RandomState(seed)")
    return refused


_DECIMAL_SETTINGS = ("prec", "rounding", "Emin", "Emax", "capitals", "clamp")


def check_module_state(modules_used: set[str]) -> None:
    """Refuse a snapshot whose program relies on module state that does not migrate."""
    if "decimal" in modules_used and "decimal" in sys.modules:
        import decimal

        # settings only: flags are the sticky status of earlier operations, set by
        # ordinary arithmetic, and a new thread's context starts from DefaultContext
        current, default = decimal.getcontext(), decimal.DefaultContext
        changed = [f"{name}={getattr(current, name)!r}" for name in _DECIMAL_SETTINGS
                   if getattr(current, name) != getattr(default, name)]
        if any(current.traps[s] != default.traps[s] for s in default.traps):
            changed.append("traps")
        if changed:
            raise CaptureError(
                "decimal.getcontext()", f"a changed decimal context ({', '.join(changed)})",
                "the context belongs to the thread, is shared by every program on it and is "
                "not captured; use decimal.localcontext() inside a callback, or a "
                "decimal.Context(...) object and its methods")
