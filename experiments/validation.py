"""E6: the simulator against the emulated board lab, scenario by scenario.

    thingssim calibrate --from-lab --out results/validation/calibration.json   # the fit
    thingssim experiment validation --out results/validation                    # root
    thingssim experiment validation --preset tiny                               # seconds

Each scenario runs in the simulation (a fresh `World` per seed, with the costs and
broker fitted by `thingssim calibrate --from-lab`) and in the board lab (`thingssim
lab`: real workers in network namespaces behind shaped links, their CPUs and memory
limited by cgroups to the boards' speeds; one lab for the whole run, each seed one
repetition). Migrations of a program holding a ring buffer of a given size between two
boards give the phases (snapshot, transfer, restore, commit, total); a two-stage pipeline
(host -> relay on one board -> relay on another -> host, 20 messages 0.25 s apart) gives
the end-to-end message latency. In both, the boards first ran (and ended) a program, so
their next program process is warm, as it is after the lab's warm-up.

Scenarios marked `fit` are the ones the calibration measured (BeagleBone Black -> Pi
Zero at 16, 128 and 512 KB; the event cost from a relay on a BeagleBone); `validate` ones
were not used for fitting (other board pairs, other sizes, a pipeline through a Pi
Zero). The summary gives, per scenario and metric, the mean and p95 in each environment
(and the migrations that failed: in the lab a cold target can miss the 60 s step) and
the errors sim/lab - 1, every one of them, against the goal of 10%. Without root,
iproute2 or Mosquitto (or with THINGSSIM_NO_LAB set) the lab half is skipped, saying so,
and the lab columns are blank.
"""

from __future__ import annotations

import atexit
import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from thingssim.experiment import Experiment
from thingssim.experiment.style import save, style
from thingssim.labcalibrate import (
    CALIBRATION_PROFILES,
    TICK,
    WARM_SOURCE,
    LabSession,
    buffer_program,
    lab_unavailable,
    relay_program,
)
from thingssim.sim.boards import get_profile
from thingssim.sim.calibration import load_calibration
from thingssim.sim.world import World, link_profile

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("role", "kind", "source", "target", "state_kb", "env")
SCENARIO_KEYS = KEYS[:-1]
PHASES = ("snapshot", "transfer", "restore", "commit", "total")
METRICS = (*(f"{p}_ms" for p in PHASES), "latency_ms")
GOAL = 0.10
BBB, ZERO, VM = CALIBRATION_PROFILES

#: (role, kind, source, target, state KB): fit = what the calibration measured
SCENARIOS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("fit", "migration", BBB, ZERO, 16.0),
    ("fit", "migration", BBB, ZERO, 128.0),
    ("fit", "migration", BBB, ZERO, 512.0),
    ("fit", "pipeline", BBB, VM, None),
    ("validate", "migration", ZERO, BBB, 64.0),
    ("validate", "migration", ZERO, BBB, 256.0),
    ("validate", "migration", VM, ZERO, 128.0),
    ("validate", "migration", BBB, VM, 1024.0),
    ("validate", "pipeline", ZERO, BBB, None),
)

PARAMS: dict[str, Any] = {
    "scenarios": [list(s) for s in SCENARIOS],
    "env": ["sim", "lab"],
    "calibration": "results/validation/calibration.json",
    "run_s": 2.0,
    "messages": 20,
    "period_s": 0.25,
}


def lab_reason() -> str | None:
    """Why the lab half cannot run here (None: it can)."""
    if os.environ.get("THINGSSIM_NO_LAB"):
        return "THINGSSIM_NO_LAB is set"
    return lab_unavailable()


def design(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every scenario in every environment; the lab ones only where the lab can run."""
    envs = list(params["env"])
    reason = lab_reason() if "lab" in envs else None
    if reason:
        print(f"validation: skipping the lab half: {reason}; the lab columns stay blank",
              file=sys.stderr)
        envs.remove("lab")
    fixed = {k: v for k, v in params.items() if k not in ("scenarios", "env")}
    return [{**fixed, "role": role, "kind": kind, "source": source, "target": target,
             "state_kb": state_kb, "env": env}
            for role, kind, source, target, state_kb in params["scenarios"] for env in envs]


# ------------------------------------------------------------------------ simulation
def _world(point: Mapping[str, Any], seed: int) -> World:
    path = ROOT / point["calibration"]
    return World(seed=seed, trace=False, calibration=path if path.exists() else None)


def _warm(world: World, dispatcher: Any, board: str) -> None:
    iid = world.wait(dispatcher.run_code(board, "warm", WARM_SOURCE))["id"]
    world.wait(dispatcher.kill_code(iid))


def sim_migration(point: Mapping[str, Any], seed: int) -> dict[str, Any]:
    world = _world(point, seed)
    world.add_board("source", point["source"])
    world.add_board("target", point["target"])
    d = world.add_dispatcher()
    world.run(1.0)
    for board in ("source", "target"):
        _warm(world, d, board)
    iid = world.wait(d.run_code("source", "buffer", buffer_program(point["state_kb"])))["id"]
    offset = random.Random(f"{seed}:migrate-at").uniform(0.0, TICK)
    world.run(world.clock.now() + point["run_s"] + offset)
    moved = world.wait(d.move_code("source", "target", "buffer", iid), timeout=3600.0)
    return dict(moved.get("migration") or {})


def sim_pipeline(point: Mapping[str, Any], seed: int) -> list[float]:
    world = _world(point, seed)
    world.add_board("first", point["source"])
    world.add_board("second", point["target"])
    d = world.add_dispatcher()
    net = world.network
    host = net.client("host", net.add_link("host", link_profile(get_profile("desktop-vm"))))
    host.connect()
    world.run(1.0)
    topics = ["e6/in", "e6/mid", "e6/out"]
    for board, (inp, out) in (("first", topics[:2]), ("second", topics[1:])):
        world.wait(d.run_code(board, "stage", relay_program(inp, out)))
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    clock = world.clock

    def on_out(message: Any) -> None:
        import json

        got[json.loads(message.payload)["seq"]] = clock.now()

    host.subscribe(topics[2], on_out, qos=0)
    world.run(clock.now() + 2.0)
    start = clock.now()
    for seq in range(point["messages"]):
        def send(seq: int = seq) -> None:
            sent[seq] = clock.now()
            host.publish(topics[0], b'{"seq": %d}' % seq, qos=0)
        world.at(start + seq * point["period_s"], send)
    world.run(start + point["messages"] * point["period_s"] + 30.0)
    return [got[s] - sent[s] for s in sorted(got)]


# ------------------------------------------------------------------------ the lab
_SESSION: LabSession | None = None


def _machine_factor(point: Mapping[str, Any]) -> float | None:
    """The machine factor the calibration's lab used: the validation lab's quotas must be
    the same, or the two labs emulate different boards (a factor measured at a busy
    moment makes every quota larger)."""
    path = ROOT / point["calibration"]
    if not path.exists():
        return None
    return load_calibration(path).record.get("machine", {}).get("machine_factor")


def _session(point: Mapping[str, Any]) -> LabSession:
    """One lab for the whole run (its workers: CALIBRATION_PROFILES), closed at exit."""
    global _SESSION
    if _SESSION is None:
        _SESSION = LabSession(CALIBRATION_PROFILES, machine_factor=_machine_factor(point))
        atexit.register(_SESSION.close)
    return _SESSION


def _worker(session: LabSession, profile: str) -> str:
    return session.names[session.profiles.index(profile)]


# ------------------------------------------------------------------------ trials
def _migration_row(m: Mapping[str, Any]) -> dict[str, Any]:
    row = {"ok": bool(m.get("ok")), "error": m.get("error") or "",
           "snapshot_kb": m.get("snapshot_bytes", 0) / 1024}
    row.update({f"{p}_ms": m[f"{p}_s"] * 1e3 for p in PHASES if m.get(f"{p}_s") is not None})
    return row


def trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One migration, or one pipeline run of ``messages`` messages, in ``point['env']``."""
    lab = point["env"] == "lab"
    if point["kind"] == "migration":
        if lab:
            s = _session(point)
            source, target = _worker(s, point["source"]), _worker(s, point["target"])
            try:
                m = s.migrate(source, target, point["state_kb"], run_s=point["run_s"])
            except Exception as exc:  # noqa: BLE001 - a failed migration is a result too
                s.settle(source)
                s.settle(target)
                return [{"ok": False, "error": f"{type(exc).__name__}: {exc}"}]
        else:
            m = sim_migration(point, seed)
        row = _migration_row(m)
        if lab:
            row["machine_factor"] = s.lab.cpu_emulation.get("machine_factor")
        return [row]
    if lab:
        s = _session(point)
        latencies = s.pipeline(_worker(s, point["source"]), _worker(s, point["target"]),
                               point["messages"], point["period_s"])
    else:
        latencies = sim_pipeline(point, seed)
    factor = s.lab.cpu_emulation.get("machine_factor") if lab else None
    return [{"message": i, "latency_ms": t * 1e3, "machine_factor": factor}
            for i, t in enumerate(latencies)]


# ------------------------------------------------------------------------ summary
def _stats(values: pd.Series) -> tuple[int, float, float]:
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if not x.size:
        return 0, float("nan"), float("nan")
    return int(x.size), float(x.mean()), float(np.percentile(x, 95))


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and metric: n, mean and p95 in each environment, and the errors
    sim/lab - 1 of the mean and of the p95 (blank where the lab did not run)."""
    rows = []
    keys = list(SCENARIO_KEYS)
    for key, group in trials.groupby(keys, sort=False, dropna=False):
        for metric in METRICS:
            if metric not in group or group[metric].notna().sum() == 0:
                continue
            row = dict(zip(keys, key))
            row["metric"] = metric
            for env in ("sim", "lab"):
                rows_env = group[group["env"] == env]
                n, mean, p95 = _stats(rows_env[metric])
                failed = int((rows_env["ok"] == False).sum()) if "ok" in rows_env else 0  # noqa: E712
                row.update({f"{env}_n": n, f"{env}_failed": failed, f"{env}_mean": mean,
                            f"{env}_p95": p95})
            for stat in ("mean", "p95"):
                lab = row[f"lab_{stat}"]
                err = row[f"sim_{stat}"] / lab - 1 if lab and lab == lab else float("nan")
                row[f"err_{stat}"] = err
            rows.append(row)
    return pd.DataFrame(rows)


def _label(row: Mapping[str, Any]) -> str:
    short = {BBB: "BBB", ZERO: "Zero", VM: "VM", "raspberry-pi-3": "Pi3"}
    pair = f"{short.get(row['source'], row['source'])}→{short.get(row['target'], row['target'])}"
    size = "" if pd.isna(row["state_kb"]) else f" {row['state_kb']:g}KB"
    return f"{row['role'][0].upper()} {pair}{size}"


def figures(trials: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    """The error of every phase's (and the latency's) mean and p95, per scenario, with
    the 10% goal shaded; and the phase means side by side."""
    paths: list[Path] = []
    if summary.empty or summary["err_mean"].isna().all():
        return paths
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True, layout="constrained")
        labels = [_label(r) for _, r in summary.drop_duplicates(list(SCENARIO_KEYS)).iterrows()]
        y = np.arange(len(labels))
        metrics = [m for m in METRICS if m in set(summary["metric"])]
        width = 0.8 / len(metrics)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, stat in zip(axes, ("mean", "p95")):
            ax.axvspan(-100 * GOAL, 100 * GOAL, color="0.9", zorder=0)
            for k, metric in enumerate(metrics):
                sub = summary[summary["metric"] == metric]
                index = [labels.index(_label(r)) for _, r in sub.iterrows()]
                ax.barh(np.array(index) + k * width - 0.4 + width / 2,
                        100 * sub[f"err_{stat}"].to_numpy(), height=width,
                        color=colours[k % len(colours)], label=metric.removesuffix("_ms"))
            ax.set(xlabel=f"error of the {stat}: sim / lab − 1 (%)", xscale="symlog")
            ax.axvline(0, color="black", lw=0.6)
        axes[0].set_yticks(y, labels)
        axes[0].invert_yaxis()
        axes[1].legend(fontsize=7, loc="lower right")
        fig.suptitle("Simulator vs board lab (F: fitting scenario, V: validation); "
                     "grey: the ±10% goal", fontsize=9)
        paths += save(fig, out / "fig_errors")
    return paths


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Every scenario and metric: lab and sim mean and p95 (ms), the errors (%)."""
    if summary.empty:
        return summary
    table = pd.DataFrame({
        "scenario": [_label(r) for _, r in summary.iterrows()],
        "metric": summary["metric"].str.removesuffix("_ms"),
        "lab mean": summary["lab_mean"], "sim mean": summary["sim_mean"],
        "err mean (%)": 100 * summary["err_mean"],
        "lab p95": summary["lab_p95"], "sim p95": summary["sim_p95"],
        "err p95 (%)": 100 * summary["err_p95"]})
    return table.reset_index(drop=True)


EXPERIMENT = Experiment(
    name="validation",
    title="Simulator vs emulated board lab (E6)",
    description="\n\n".join(__doc__.split("\n\n")[1:4]),
    params=PARAMS,
    seeds=range(1, 6),
    presets={
        "quick": {"scenarios": [list(SCENARIOS[1]), list(SCENARIOS[3]), list(SCENARIOS[4])],
                  "seeds": range(1, 3)},
        "tiny": {"scenarios": [list(SCENARIOS[1]), list(SCENARIOS[8])], "messages": 5,
                 "seeds": range(1, 3)},
    },
    keys=KEYS,
    metrics=METRICS,
    design=design,
    trial=trial,
    figures=figures,
    headline=headline,
    summarise=summarise,
    deterministic=False,
)
