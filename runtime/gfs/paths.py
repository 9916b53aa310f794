"""Paths and who may touch them: a program's view of the tree, and the errors' wire form.

A program sees a tree of its own: ``/`` (and every relative path) is its namespace,
``/programs/<code name>`` in the global tree, shared by all instances of that code, so a
log or a model follows the program from board to board.  Folders granted to it appear
at their mount point in its view (``/shared/models`` -> global ``/shared/models``,
read-only or read-write).  ``..`` cannot climb out of the view (PermissionError) and
there are no symbolic links, so nothing escapes.  A client that names no program (the
CLI, a dispatcher) sees the global tree.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from dataclasses import dataclass
from typing import Any, Iterable

PROGRAMS_ROOT = "/programs"
#: ThingsJS's conventional layout (its ``reset-db``), plus our programs' namespaces
LAYOUT = ("/codes", "/codes/data", "/apps", PROGRAMS_ROOT, "/shared")


def os_error(code: int, path: str, detail: str | None = None) -> OSError:
    """Python's own exception for ``errno`` ``code`` (FileNotFoundError for ENOENT...)."""
    message = os.strerror(code) + (f" ({detail})" if detail else "")
    return OSError(code, message, path)  # OSError picks the subclass from the errno


def normalize(path: Any, what: str = "path") -> str:
    """An absolute path without ``.``, ``..``, empty parts or a trailing slash.

    Relative paths start at the root.  ``..`` above the root is refused (PermissionError),
    as are NUL characters and non-strings (ValueError / TypeError, as ``open`` does).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a string, not {type(path).__name__}")
    if "\0" in path:
        raise ValueError(f"embedded null character in {what}")
    if not path:
        raise os_error(errno.ENOENT, path, "empty path")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise os_error(errno.EACCES, path, "the path climbs above its root")
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def join(base: str, rest: str) -> str:
    """``base`` + normalised ``rest`` (``rest`` is under ``base``)."""
    return base if rest == "/" else (base.rstrip("/") + rest)


def is_under(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder + "/")


@dataclass(frozen=True)
class Grant:
    """Programs whose code name matches ``programs`` (a glob) see global ``target`` at
    ``mount`` in their view, read-only (``"r"``) or read-write (``"rw"``)."""

    programs: str
    target: str
    mount: str
    mode: str = "r"

    @classmethod
    def parse(cls, spec: str | dict) -> Grant:
        """``{"programs", "target", "mount", "mode"}`` or ``"PROGRAMS:TARGET[:MOUNT][:MODE]"``
        (mount defaults to the target's path, mode to ``r``)."""
        if isinstance(spec, str):
            parts = spec.split(":")
            if not 2 <= len(parts) <= 4:
                raise ValueError(f"grant {spec!r}: expected PROGRAMS:TARGET[:MOUNT][:MODE]")
            if len(parts) == 3 and parts[2] in ("r", "rw"):
                parts.insert(2, parts[1])
            spec = dict(zip(("programs", "target", "mount", "mode"), parts))
        if not isinstance(spec, dict):
            raise ValueError(f"a grant is a string or a table, not {spec!r}")
        unknown = set(spec) - {"programs", "target", "mount", "mode"}
        if unknown:
            raise ValueError(f"grant: unknown key(s) {sorted(unknown)}")
        mode = spec.get("mode", "r")
        if mode not in ("r", "rw"):
            raise ValueError(f"grant mode must be 'r' or 'rw', got {mode!r}")
        target = normalize(spec.get("target", ""), "grant target")
        mount = normalize(spec.get("mount") or target, "grant mount")
        if mount == "/":
            raise ValueError("a grant cannot be mounted at a program's root")
        programs = spec.get("programs", "*")
        if not isinstance(programs, str) or not programs:
            raise ValueError("grant: 'programs' must be a glob such as 'riot-*'")
        return cls(programs, target, mount, mode)

    def applies_to(self, code_name: str) -> bool:
        return fnmatch.fnmatchcase(code_name, self.programs)


@dataclass(frozen=True)
class Resolved:
    """A path of somebody's view, in the global tree."""

    path: str  # global
    writable: bool
    view: str  # as the client named it (normalised), for error messages


class Namespaces:
    """Maps each client's view to the global tree (see the module docstring)."""

    def __init__(self, grants: Iterable[Grant | str | dict] = ()) -> None:
        self.grants = [g if isinstance(g, Grant) else Grant.parse(g) for g in grants]

    def add(self, grant: Grant) -> None:
        self.grants.append(grant)

    def home(self, code_name: str) -> str:
        return f"{PROGRAMS_ROOT}/{code_name}"

    def mounts(self, code_name: str) -> list[Grant]:
        """The grants a program sees, longest mount point first."""
        return sorted((g for g in self.grants if g.applies_to(code_name)),
                      key=lambda g: -len(g.mount))

    def resolve(self, path: Any, program: str | None) -> Resolved:
        view = normalize(path)
        if program is None:
            return Resolved(view, True, view)
        for grant in self.mounts(program):
            if is_under(view, grant.mount):
                return Resolved(join(grant.target, view[len(grant.mount):] or "/"),
                                grant.mode == "rw", view)
        return Resolved(join(self.home(program), view), True, view)

    def mount_names(self, program: str, view_dir: str) -> list[str]:
        """Mount points that show up as entries of ``view_dir`` (e.g. ``shared``)."""
        names = []
        for grant in self.mounts(program):
            parent, _, name = grant.mount.rpartition("/")
            if (parent or "/") == view_dir:
                names.append(name)
        return names


# ---------------------------------------------------------------- errors on the wire
def error_to_wire(exc: OSError, view_path: str | None = None,
                  view_path2: str | None = None) -> dict[str, Any]:
    """``{code, message, path[, path2]}``: the errno's name, its text, the path(s) as the
    client named them (``path2``: a rename's destination, as ``OSError.filename2``)."""
    code = errno.errorcode.get(exc.errno or 0, "EIO") if exc.errno else "EIO"
    wire = {"code": code, "message": exc.strerror or str(exc),
            "path": view_path if view_path is not None else exc.filename}
    if view_path2 is not None:
        wire["path2"] = view_path2
    return wire


def error_from_wire(error: dict[str, Any]) -> OSError:
    """The exception a client raises for an error reply: Python's class for the errno."""
    code = getattr(errno, str(error.get("code")), None)
    message = str(error.get("message", ""))
    path = error.get("path")
    if not isinstance(code, int):
        return OSError(errno.EIO, f"{error.get('code')}: {message}", path)
    path2 = error.get("path2")
    if path2 is not None:
        return OSError(code, message, path, None, path2)
    return OSError(code, message, path)
