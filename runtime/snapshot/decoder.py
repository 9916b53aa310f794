"""Graph decoder: the flat table of a snapshot -> live objects, in two phases.

Phase 1 *creates* every object in dependency order (a tuple needs its items, a bound
method its function and instance, a class its bases and methods); mutable objects are
created empty, so cycles through them need no special care.  Phase 2 *fills* them:
cells, function attributes, instance state, list items, and last the hashed containers
(dicts and sets), so keys are hashed only once their own state is in place.  Both phases
are iterative: deep linked structures do not hit the recursion limit.
"""

from __future__ import annotations

import abc
import base64
import collections
import dataclasses
import importlib
import sys
import types
from array import array
from typing import Any, Callable

from .codecs import DESCRIPTOR_CODECS, codec_by_name
from .encoder import PACKED, PROGRAM_MODULE, is_program_class, resolve, solid_base
from .errors import RestoreError
from .sites import SiteIndex

_MISSING = object()
_EMPTY = {"list": list, "dict": dict, "set": set, "cell": types.CellType}
_FILLED = frozenset({"list", "dict", "set", "cell", "func", "class", "obj", "exception"})
_HASHED = frozenset({"dict", "set"})
_FUNC_FILLED = ("defaults", "kwdefaults", "dict", "annotations", "doc", "module")
_NATIVE_LITTLE = sys.byteorder == "little"
_FLOATS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
#: library names a newer Python writes, as an older one knows them
_OLDER_NAMES = {("enum", "EnumType"): ("enum", "EnumMeta")}


class _CreationCycle(RestoreError):
    """An object is needed to create itself."""


def _skip_init_subclass(cls: type, **kwargs: Any) -> None:
    """Stands in for a program's ``__init_subclass__`` while its subclasses are rebuilt."""


def unpack_array(text: str, typecode: str) -> list:
    packed = array(typecode)
    packed.frombytes(base64.b64decode(text.encode("ascii"), validate=True))
    if not _NATIVE_LITTLE:  # pragma: no cover
        packed.byteswap()
    return packed.tolist()


def _ref_index(value: Any) -> int | None:
    if type(value) is dict:
        index = value.get("@")
        if type(index) is int:
            return index
    return None


class GraphDecoder:
    """Rebuild the objects of a snapshot table."""

    def __init__(
        self,
        entries: list,
        sites: SiteIndex,
        program_globals: dict,
        runtime_objects: dict[str, Any],
        presets: dict[int, Any] | None = None,
        shapes: list[list[str]] | None = None,
        own_module: Callable[[str], Any] | None = None,
    ) -> None:
        if not isinstance(entries, list):
            raise RestoreError("corrupt snapshot: 'objects' is not a list")
        self.entries = entries
        self.sites = sites
        self.globals = program_globals
        self.runtime_objects = runtime_objects
        #: the program's own copy of a module (e.g. random), for snapshots that name it
        self.own_module = own_module
        self.objects: list[Any] = [_MISSING] * len(entries)
        self._filled = [False] * len(entries)
        self._materializing: set[int] = set()
        self._creating: set[int] = set()
        self.shapes = shapes or []
        self.presets = presets or {}
        #: (class, its captured ``__init_subclass__``), installed once every class exists
        self._init_subclass: list[tuple[type, Any]] = []
        self._registered: list[tuple[type, list]] = []  # ABCs and their register()ed classes
        for index, obj in self.presets.items():
            self.objects[index] = obj

    # ---------------------------------------------------------------- public
    def decode(self) -> None:
        objects = self.objects
        for index, entry in enumerate(self.entries):
            if objects[index] is _MISSING:
                maker = _EMPTY.get(entry.get("t")) if type(entry) is dict else None
                if maker is not None:
                    objects[index] = maker()  # the common case: an empty container
                else:
                    self._create_with_deps(index)
        self._fill_all(range(len(self.entries)))
        for cls, hook in self._init_subclass:
            type.__setattr__(cls, "__init_subclass__", hook)
        for cls, registered in self._registered:
            for sub in registered:
                abc.ABCMeta.register(cls, self.value(sub))

    def _fill_all(self, indices: Any) -> None:
        late = []
        entries, filled, objects = self.entries, self._filled, self.objects
        for index in indices:
            if filled[index]:
                continue
            entry = entries[index]
            t = entry["t"]
            if t not in _FILLED and not (t == "codec" and "state" in entry):
                filled[index] = True
            elif t in _HASHED or (t == "codec" and "state" in entry and
                                  codec_by_name(entry["codec"]).hashes_state):
                late.append(index)  # hashes its items: after every other fill
            else:
                filled[index] = True
                self._guard(index, entry, self._fill_entry, objects[index])
        for index in late:
            if not filled[index]:
                filled[index] = True
                self._guard(index, entries[index], self._fill_entry, objects[index])

    def _materialize(self, value: Any) -> None:
        """Create *and fill* everything reachable from ``value`` (a codec's arguments), so
        the codec's ``create`` sees complete values, whatever they contain."""
        start = _ref_index(value)
        if start is None or self._filled[start]:
            return
        reach, seen, stack = [], {start}, [start]
        while stack:
            index = stack.pop()
            if index in self._materializing:
                raise RestoreError(f"corrupt snapshot: codec arguments of objects[{index}] "
                                   "refer back to the object itself")
            reach.append(index)
            for dep in _all_refs(self._entry(index)):
                if not 0 <= dep < len(self.entries):
                    raise RestoreError(f"corrupt snapshot: objects[{index}] refers to {dep}")
                if dep not in seen and not self._filled[dep]:
                    seen.add(dep)
                    stack.append(dep)
        for index in reach:
            if self.objects[index] is _MISSING:
                self._create_with_deps(index)
        self._fill_all(reach)

    def value(self, v: Any) -> Any:
        """An inline value of the table -> its object (atoms, floats and references)."""
        if type(v) is dict:
            index = v.get("@")
            if type(index) is int:
                if not 0 <= index < len(self.objects):
                    raise RestoreError(f"corrupt snapshot: reference to missing object {index}")
                obj = self.objects[index]
                if obj is _MISSING:
                    raise RestoreError(f"corrupt snapshot: object {index} used before it exists")
                return obj
            special = v.get("f")
            if special in _FLOATS and len(v) == 1:
                return _FLOATS[special]
            raise RestoreError(f"corrupt snapshot: unknown inline value {v!r:.80}")
        if type(v) is list:
            raise RestoreError("corrupt snapshot: bare list where a value was expected")
        return v

    def _keyed(self, node: dict) -> dict:
        """``{"k": shape, "v": [values]}`` -> a dict of the shape's keys."""
        keys = self.shapes[node["k"]]
        values = node["v"]
        if len(keys) != len(values):
            raise RestoreError(f"corrupt snapshot: shape {node['k']} has {len(keys)} keys, "
                               f"got {len(values)} values")
        value = self.value
        return {k: value(v) for k, v in zip(keys, values)}

    # ---------------------------------------------------------------- phase 1
    def _create_with_deps(self, root: int) -> None:
        state = {root: 0}  # 0: deps pending, 1: deps pushed
        stack = [root]
        while stack:
            index = stack[-1]
            if self.objects[index] is not _MISSING:
                stack.pop()
                continue
            entry = self._entry(index)
            if state.get(index) == 1:
                stack.pop()
                if entry["t"] != "class" and entry["t"] != "codec":
                    self.objects[index] = self._guard(index, entry, self._create)
                    continue
                # classes and codecs prepare parts of theirs first, which may need others
                if index in self._creating:  # reached again while preparing its own parts
                    raise _CreationCycle(f"corrupt snapshot: creation cycle at objects[{index}]")
                self._creating.add(index)
                try:
                    if entry["t"] == "codec" and entry.get("codec") in DESCRIPTOR_CODECS:
                        self._prepare_wrapped(entry.get("args"))
                    elif entry["t"] == "codec":
                        self._materializing.add(index)
                        try:
                            self._materialize(entry.get("args"))
                        finally:
                            self._materializing.discard(index)
                    self.objects[index] = self._guard(index, entry, self._create)
                finally:
                    self._creating.discard(index)
                continue
            state[index] = 1
            for dep in self._creation_deps(entry):
                if not 0 <= dep < len(self.entries):
                    raise RestoreError(f"corrupt snapshot: objects[{index}] refers to {dep}")
                if self.objects[dep] is _MISSING:
                    if state.get(dep) == 1:
                        raise RestoreError(f"corrupt snapshot: creation cycle at objects[{dep}]")
                    state[dep] = 0
                    stack.append(dep)

    def _prepare_wrapped(self, args: Any) -> None:
        """Fill the functions a classmethod/staticmethod/property wraps (not their cells).

        The wrapper copies its function's name, doc and annotations when it is made, so
        the function must be filled first.
        """
        start = _ref_index(args)
        if start is None:
            return
        wrapped = [start]
        if self._entry(start)["t"] == "tuple":  # property: (fget, fset, fdel, doc)
            wrapped = [_ref_index(v) for v in self._entry(start).get("v", [])]
        self._fill_functions(wrapped)

    def _fill_functions(self, indices: list[int | None]) -> None:
        """Fill these function entries now (defaults, attributes...), but not their cells.

        Functions a class is made with must be complete, as they were in the class body
        (e.g. ``__isabstractmethod__`` for ABCMeta); their closure cells wait for phase 2,
        because a ``super()``/``__class__`` cell refers to the class being made.
        """
        for index in indices:
            if index is None:
                continue
            entry = self._entry(index)
            if entry["t"] != "func" or self._filled[index]:
                continue
            parts = [entry[k] for k in _FUNC_FILLED if k in entry]
            try:
                for dep in _all_refs(parts) if parts else ():
                    if not 0 <= dep < len(self.entries):
                        raise RestoreError(f"corrupt snapshot: objects[{index}] refers to "
                                           f"{dep}")
                    if self.objects[dep] is _MISSING:
                        self._create_with_deps(dep)
            except _CreationCycle:
                continue  # its attributes need the class itself: filled in phase 2 instead
            self._filled[index] = True
            self._guard(index, entry, self._fill_entry, self.objects[index])

    def _entry(self, index: int) -> dict:
        entry = self.entries[index]
        if type(entry) is not dict or type(entry.get("t")) is not str:
            raise RestoreError(f"corrupt snapshot: objects[{index}] is not an entry")
        return entry

    def _guard(self, index: int, entry: dict, step: Any, *args: Any) -> Any:
        try:
            return step(entry, *args)
        except RestoreError:
            raise
        except Exception as exc:
            raise RestoreError(f"corrupt snapshot: objects[{index}] ({entry.get('t')}): "
                               f"{type(exc).__name__}: {exc}") from exc

    def _creation_deps(self, entry: dict) -> list[int]:
        t = entry["t"]
        values: list[Any] = []
        if t in ("tuple", "frozenset"):
            values = entry.get("v", [])
        elif t == "func":
            values = entry.get("closure", [])
        elif t == "method":
            values = [entry["func"], entry["self"]]
        elif t == "getattr":
            values = [entry["obj"]]
        elif t == "codec":
            values = [entry["args"]]
        elif t in ("obj", "enum", "exception"):
            values = [entry["cls"], entry.get("args")]
            value = entry.get("value")
            values.extend(value if type(value) is list else [value])
        elif t == "class":
            values = list(entry.get("bases", [])) + [entry.get("meta")]
            values.extend(v for k, v in entry.get("attrs", {}).items()
                          if self._is_creation_attr(k, v))
            nt = entry.get("namedtuple")
            if nt:
                values.append(nt["defaults"])
            values.extend(member[1] for member in entry.get("enum", []))
            for field in entry.get("dataclass", {}).get("fields", []):
                values.extend(field.get(k) for k in ("default", "factory", "hash"))
        deps = []
        for v in values:
            index = _ref_index(v)
            if index is not None:
                deps.append(index)
        return deps

    def _is_creation_attr(self, name: str, value: Any) -> bool:
        """Methods and descriptors go into the class namespace when the class is made."""
        index = _ref_index(value)
        if index is None or not 0 <= index < len(self.entries):
            return False
        target = self.entries[index]
        if type(target) is not dict:
            return False
        return target.get("t") == "func" or (
            target.get("t") == "codec" and target.get("codec") in DESCRIPTOR_CODECS)

    def _create(self, entry: dict) -> Any:
        t = entry["t"]
        value = self.value
        if t == "list":
            return []
        if t == "dict":
            return {}
        if t == "set":
            return set()
        if t == "tuple":
            numbers = _unpacked(entry)
            return tuple(value(v) for v in entry["v"]) if numbers is None else tuple(numbers)
        if t == "frozenset":
            return frozenset(value(v) for v in entry["v"])
        if t == "bytes":
            return base64.b64decode(entry["b64"].encode("ascii"), validate=True)
        if t == "cell":
            return types.CellType()
        if t == "func":
            code = self.sites.code_at(entry["site"])
            closure = tuple(value(c) for c in entry.get("closure", ()))
            if len(closure) != len(code.co_freevars):
                raise RestoreError(f"corrupt snapshot: function at {entry['site']} needs "
                                   f"{len(code.co_freevars)} closure cells, got {len(closure)}")
            return types.FunctionType(code, self.globals, entry.get("name", code.co_name),
                                      None, closure or None)
        if t == "method":
            return types.MethodType(value(entry["func"]), value(entry["self"]))
        if t == "getattr":
            return getattr(value(entry["obj"]), entry["name"])
        if t == "module":
            own = self.own_module(entry["name"]) if self.own_module is not None else None
            return own if own is not None else _import_module(entry["name"])
        if t == "import":
            _import_module(entry["module"])
            obj = resolve(entry["module"], entry["qualname"])
            if obj is None and (entry["module"], entry["qualname"]) in _OLDER_NAMES:
                obj = resolve(*_OLDER_NAMES[entry["module"], entry["qualname"]])
            if obj is None:
                raise RestoreError(f"{entry['module']}.{entry['qualname']} is needed by the "
                                   "snapshot but does not exist here")
            return obj
        if t == "rt":
            return self.runtime_objects[entry["name"]]
        if t == "codec":
            return codec_by_name(entry["codec"]).create(value(entry["args"]))
        if t == "enum":
            if "value" in entry:  # a Flag combination
                return value(entry["cls"])(value(entry["value"]))
            return value(entry["cls"])[entry["name"]]
        if t == "exception":
            cls, args = value(entry["cls"]), value(entry["args"])
            return cls.__new__(cls, *args)
        if t == "obj":
            return self._create_instance(entry)
        if t == "class":
            return self._create_class(entry)
        raise RestoreError(f"corrupt snapshot: unknown entry type {t!r}")

    def _create_instance(self, entry: dict) -> Any:
        cls = self.value(entry["cls"])
        base = solid_base(cls)
        if base is None:
            raise RestoreError(f"cannot rebuild an instance of {cls.__qualname__}")
        if base in (tuple, frozenset):
            return base.__new__(cls, [self.value(v) for v in entry["value"]])
        if base in (int, float, complex, str, bytes):
            return base.__new__(cls, self.value(entry["value"]))
        if base is BaseException:
            return cls.__new__(cls)
        return base.__new__(cls)

    def _create_class(self, entry: dict) -> type:
        value = self.value
        nt = entry.get("namedtuple")
        attrs = entry.get("attrs", {})
        made_with = [(name, v) for name, v in attrs.items() if self._is_creation_attr(name, v)]
        self._fill_functions([_ref_index(v) for _, v in made_with])
        if nt is not None:
            cls = collections.namedtuple(entry["name"], nt["fields"],
                                         defaults=value(nt["defaults"]) or None,
                                         module=PROGRAM_MODULE)
            cls.__qualname__ = entry["qualname"]
            for name, v in made_with:  # methods written in a typing.NamedTuple body
                setattr(cls, name, value(v))
            return cls
        bases = tuple(value(b) for b in entry.get("bases", ()))
        meta = value(entry["meta"]) if "meta" in entry else type
        # Class creation runs no program code at restore: what the program's metaclass and
        # ``__init_subclass__`` did is already in the snapshot (class attributes,
        # registries), and running them again would repeat their side effects.
        native = meta if meta is type else next(m for m in meta.__mro__
                                                if not is_program_class(m))
        ns = native.__prepare__(entry["name"], bases)  # e.g. the member table of an Enum
        ns["__module__"] = PROGRAM_MODULE
        ns["__qualname__"] = entry["qualname"]
        for name, member_value in entry.get("enum", []):
            ns[name] = value(member_value)
        if "slots" in entry:
            ns["__slots__"] = tuple(entry["slots"])
        hook = None
        for name, v in made_with:
            if name == "__init_subclass__":
                hook = value(v)
                ns[name] = classmethod(_skip_init_subclass)  # until every class exists
            else:
                ns[name] = value(v)
        spec = entry.get("dataclass")
        if spec is not None:
            annotations = {}
            for field in spec["fields"]:
                kwargs = {k: field[k] for k in ("init", "repr", "compare")}
                kwargs["hash"] = value(field["hash"])
                if "default" in field:
                    kwargs["default"] = value(field["default"])
                if "factory" in field:
                    kwargs["default_factory"] = value(field["factory"])
                if field.get("kw_only"):
                    kwargs["kw_only"] = True
                ns[field["name"]] = dataclasses.field(**kwargs)
                annotations[field["name"]] = Any
            ns["__annotations__"] = annotations
        if native is meta:
            cls = meta(entry["name"], bases, ns)
        else:  # a program metaclass: only the library metaclass under it runs
            cls = native.__new__(meta, entry["name"], bases, ns)
            native.__init__(cls, entry["name"], bases, ns)
        if spec is not None:
            cls = dataclasses.dataclass(**spec["params"])(cls)
        if hook is not None:
            self._init_subclass.append((cls, hook))
        if "registered" in entry:
            self._registered.append((cls, entry["registered"]))
        return cls

    # ---------------------------------------------------------------- phase 2
    def _fill_entry(self, entry: dict, obj: Any) -> None:
        t = entry["t"]
        value = self.value
        if t == "list":
            numbers = _unpacked(entry)
            obj.extend(value(v) for v in entry["v"]) if numbers is None else obj.extend(numbers)
        elif t == "dict":
            if "k" in entry:
                obj.update(self._keyed(entry))
            else:
                flat = entry["kv"]
                for j in range(0, len(flat), 2):
                    obj[value(flat[j])] = value(flat[j + 1])
        elif t == "set":
            obj.update(value(v) for v in entry["v"])
        elif t == "cell":
            if "v" in entry:
                obj.cell_contents = value(entry["v"])
        elif t == "func":
            obj.__qualname__ = entry["qualname"]
            if "defaults" in entry:
                obj.__defaults__ = value(entry["defaults"])
            if "kwdefaults" in entry:
                obj.__kwdefaults__ = value(entry["kwdefaults"])
            for k, v in entry.get("dict", {}).items():
                obj.__dict__[k] = value(v)
            if "annotations" in entry:
                obj.__annotations__ = value(entry["annotations"])
            if "doc" in entry:
                obj.__doc__ = value(entry["doc"])
            if "module" in entry:
                obj.__module__ = value(entry["module"])
        elif t == "class":
            for name, v in entry.get("attrs", {}).items():
                if not self._is_creation_attr(name, v):
                    setattr(obj, name, value(v))
        elif t in ("obj", "exception"):
            self._fill_instance(entry, obj)
        elif t == "codec":
            codec = codec_by_name(entry["codec"])
            if codec.fill is None:
                raise RestoreError(f"codec {codec.name} has no state to fill")
            self._materialize(entry["state"])
            codec.fill(obj, value(entry["state"]))

    def _fill_instance(self, entry: dict, obj: Any) -> None:
        value = self.value
        if "dict" in entry:
            obj.__dict__.update(self._keyed(entry["dict"]) if "k" in entry["dict"]
                                else {k: value(v) for k, v in entry["dict"].items()})
        if "slots" in entry:
            for k, v in self._keyed(entry["slots"]).items():
                object.__setattr__(obj, k, v)
        if "items" in entry:
            items = [value(v) for v in entry["items"]]
            if isinstance(obj, list):
                list.extend(obj, items)
            else:
                set.update(obj, items)
        if "kv" in entry:
            flat = entry["kv"]
            for j in range(0, len(flat), 2):
                dict.__setitem__(obj, value(flat[j]), value(flat[j + 1]))
        if "args" in entry:
            obj.args = value(entry["args"])


def _unpacked(entry: dict) -> list | None:
    for key, (code, _, _) in PACKED.items():
        if key in entry:
            return unpack_array(entry[key], code)
    return None


def _all_refs(node: Any) -> list[int]:
    """Every reference inside one table entry (entries are small and shallow)."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            index = item.get("@")
            if type(index) is int and len(item) == 1:
                found.append(index)
            else:
                stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return found


def _import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise RestoreError(f"the snapshot needs module {name!r}, which cannot be imported "
                           f"here: {exc}") from exc
