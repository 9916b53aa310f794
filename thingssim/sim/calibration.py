"""A calibration: the simulator's parameters fitted to lab measurements, in one JSON file.

``thingssim calibrate --from-lab`` (:mod:`thingssim.labcalibrate`) measures the emulated
board lab and writes this file; scenarios (``[cost] from = "calibration.json"``, likewise
``[broker]``) and :class:`~thingssim.sim.world.World` (``calibration=``) load it.  Nothing
loads one by default, so the defaults, the golden trace and the committed results stay
what they are unless a calibration is named.

The file: ``{"format": "thingssim-calibration/1", "cost": {CostModel fields},
"broker": {BrokerProfile fields}, "fit": {...}, "measurements": {...}, "machine": {...}}``;
only ``cost`` and ``broker`` are read here, the rest is the record of how they were found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .broker import BrokerProfile

__all__ = ["FORMAT", "Calibration", "CalibrationError", "load_calibration"]

FORMAT = "thingssim-calibration/1"


class CalibrationError(ValueError):
    """A calibration file that cannot be used (missing, not JSON, unknown fields)."""


@dataclass(frozen=True)
class Calibration:
    """Fitted ``cost`` (:class:`~thingssim.sim.world.CostModel` fields) and ``broker``
    (:class:`BrokerProfile` fields), with the record of the fit."""

    cost: dict[str, Any]
    broker: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def cost_model(self, **overrides: Any) -> Any:
        from .world import CostModel  # world imports the engine; keep this module light

        return CostModel(**{**self.cost, **overrides})

    def broker_profile(self, **overrides: Any) -> BrokerProfile:
        return BrokerProfile(**{**self.broker, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "cost": self.cost, "broker": self.broker, **self.record}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")
        return path


def load_calibration(path: str | Path) -> Calibration:
    """Read and check a calibration file (unknown cost or broker fields are errors)."""
    from .world import CostModel

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"calibration {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"calibration {path}: not a {FORMAT} file")
    cost, broker = data.get("cost", {}), data.get("broker", {})
    for name, table, kind in (("cost", cost, CostModel), ("broker", broker, BrokerProfile)):
        known = {f.name for f in fields(kind)}
        if not isinstance(table, dict):
            raise CalibrationError(f"calibration {path}: [{name}] must be a table")
        if set(table) - known:
            raise CalibrationError(f"calibration {path}: [{name}] has unknown fields "
                                   f"{sorted(set(table) - known)}")
        try:
            kind(**table)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration {path}: [{name}]: {exc}") from None
    record = {k: v for k, v in data.items() if k not in ("format", "cost", "broker")}
    return Calibration(cost=dict(cost), broker=dict(broker), record=record, path=str(path))
