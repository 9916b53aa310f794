"""An engine's durable memory: what must survive a crash and reboot of its board.

Three facts live here: each migration decision the engine took as a target (so a duplicate
commit, an abort or a status query gets the same answer after a reboot), the instances
it owns with their epochs (so a rebooted engine can say which programs died with it:
Lost, not silently gone), and the scheduler's fences: "instance X will be recovered at
epoch E, take no migration of it to an epoch <= E" (a promise that must outlive a reboot,
or a restore and commit still queued for this engine could run X beside the recovered
copy).  Small, flat and rewritten whole: a board runs tens of
programs, not millions.

- :class:`MemoryJournal`: a dict.  The simulator keeps one per board across crashes, as
  a board's flash survives a power loss.
- :class:`FileJournal`: a JSON file replaced atomically (write, fsync, rename) on every
  change, for real workers (``state_dir`` in the worker config).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

#: decisions kept (oldest forgotten first); a source asks within minutes, not days
MAX_DECISIONS = 10_000


class MemoryJournal:
    def __init__(self) -> None:
        self.decisions: OrderedDict[str, str] = OrderedDict()
        self.owned: dict[str, dict] = {}
        self.fences: dict[str, int] = {}

    # -- decisions
    def decide(self, migration_id: str, decision: str) -> None:
        self.decisions[migration_id] = decision
        self.decisions.move_to_end(migration_id)
        while len(self.decisions) > MAX_DECISIONS:
            self.decisions.popitem(last=False)
        self._changed()

    def decision(self, migration_id: str) -> str | None:
        return self.decisions.get(migration_id)

    # -- ownership
    def own(self, instance_id: str, code_name: str, epoch: int) -> None:
        self.owned[instance_id] = {"code_name": code_name, "epoch": epoch}
        self._changed()

    def disown(self, instance_id: str) -> None:
        if self.owned.pop(instance_id, None) is not None:
            self._changed()

    # -- fences (the scheduler's recoveries)
    def fence(self, instance_id: str, epoch: int) -> None:
        if epoch > self.fences.get(instance_id, 0):
            self.fences[instance_id] = epoch
            self._changed()

    def fenced(self, instance_id: str) -> int:
        """The highest epoch a migration of ``instance_id`` may not commit at (0: none)."""
        return self.fences.get(instance_id, 0)

    def _changed(self) -> None:
        """Hook for durable subclasses."""


class FileJournal(MemoryJournal):
    """A :class:`MemoryJournal` saved to ``path`` after every change."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.exists():
            try:
                data: Any = json.loads(self.path.read_text(encoding="utf-8"))
                self.decisions.update(data.get("decisions", {}))
                self.owned.update(data.get("owned", {}))
                self.fences.update(data.get("fences", {}))
            except (OSError, ValueError, AttributeError) as exc:
                raise ValueError(f"{self.path}: unreadable engine journal ({exc}); move it "
                                 f"away to start with an empty one") from None

    def _changed(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"decisions": self.decisions, "owned": self.owned,
                       "fences": self.fences}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
