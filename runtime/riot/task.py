"""What a RIoTBench task is here, and how its state travels in snapshots.

A task is a small stateful function: ``task(item) -> list of outputs``, where ``item``
and every output are flat ``dict``\\ s of field name -> value (numbers as ``float``,
strings as ``str``), the tuples of RIoTBench.  A windowed task returns ``[]`` until its
window closes.  Tasks never publish, sleep or read files themselves: the program that
hosts one (see :mod:`thingssim.riot`) does the I/O, so a task is unit-testable and
behaves the same in the simulation and on a board.

State lives in plain instance attributes (numbers, strings, lists, dicts), and every
task class is registered with :func:`task` so the snapshot encoder captures instances by
their attributes and rebuilds them without calling ``__init__``: a task migrates in the
middle of a window and continues it.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, TypeVar

from ..snapshot.codecs import Codec, register_codec

#: every task class by its RIoTBench name (e.g. "KalmanFilter")
TASKS: dict[str, type[Task]] = {}

T = TypeVar("T", bound="type[Task]")


class Task:
    """Base class: subclasses set ``name`` and implement ``__call__``."""

    name: ClassVar[str] = ""

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} task>"


def task(cls: T) -> T:
    """Register a task class: by name in :data:`TASKS`, and with the snapshot encoder."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} needs a RIoTBench name (class attribute 'name')")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"two task classes are named {cls.name!r}")
    TASKS[cls.name] = cls
    register_codec(Codec(f"riot.{cls.name}", cls, _reduce, _creator(cls), _fill))
    return cls


def _reduce(obj: Task) -> tuple[Any, Any]:
    return (None, dict(vars(obj)))


def _creator(cls: type[Task]) -> Callable[[Any], Task]:
    return lambda _args: cls.__new__(cls)


def _fill(obj: Task, state: dict) -> None:
    obj.__dict__.update(state)


def make(name: str, **config: Any) -> Task:
    """A task by its RIoTBench name, configured by keyword (ValueError for an unknown one)."""
    from . import tasks  # noqa: F401  (registers every task; imported late: it imports us)

    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"unknown RIoTBench task {name!r}; known: {', '.join(sorted(TASKS))}")
    return cls(**config)
