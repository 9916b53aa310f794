"""Placement policies compared: time, balance, cross-board traffic, migrations, optimality gap.

    python experiments/scheduling.py --seed 1 --out results/scheduling           # ~2 min
    python experiments/scheduling.py --seed 1 --out /tmp/sched --quick           # ~10 s

Writes ``policies.csv`` and ``policies.png`` (+ ``.pdf``) in ``--out``.  Three scenarios:

- ``scale``: 10 to 1,000 boards and 10 to 10,000 instances, each policy placing everything
  from scratch: placement time, balance (maximum utilisation; coefficient of variation
  over boards), cross-board traffic (bytes/s, and its share of all traffic), violations;
- ``join``: the same applications placed worst-fit on 80% of the boards, then the other
  20% join and each policy places again from that placement: migrations, their seconds
  of disruption, and balance before and after;
- ``gap``: small instances (3 to 8 boards, 8 to 24 instances, links of different speeds)
  solved exactly by the MILP (``exact.py``, HiGHS, time limit ``--time-limit``), and each
  heuristic's gap: ``max_util / optimum - 1`` for balance, and for traffic the link load
  above the optimum as a share of the link load if every pair crossed the slowest link.

Boards are drawn from the profiles of ``thingssim/sim/boards.py`` (memory, cores,
device name; a fifth carry a ``camera``; each has 0-10% of its memory used by others).
Applications are pipelines (3-6 stages, 1-3 instances each, flows between stages) and
fan-outs (a source, 2-8 workers, a sink), components of 5-50 MB, 0.01-0.1 cores and
1 kB-10 MB of state; a fifth of the components carry a constraint (a device type, the
``camera`` capability, anti-affinity, or a pin to a board: one instance), drawn from
the boards present before the join.  At scale links are uniform (10 Mbit/s,
the model's default), so traffic and link load are proportional; the gap instances give
each pair the slower of the two boards' interfaces.

Everything is seeded: the CSV is the same on every run except ``time_s`` (wall time).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.scheduler import metrics  # noqa: E402
from runtime.scheduler.exact import Exact, objective_value  # noqa: E402
from runtime.scheduler.model import (  # noqa: E402
    Application,
    BoardView,
    Component,
    Flow,
    Link,
    Problem,
    Unplaceable,
)
from runtime.scheduler.policies import get_policy  # noqa: E402
from runtime.scheduler.problem import problem_for  # noqa: E402
from thingssim.experiment import stats  # noqa: E402
from thingssim.experiment.spec import Experiment  # noqa: E402
from thingssim.sim.boards import PROFILES  # noqa: E402

HEURISTICS = ["thingsjs", "first-fit", "best-fit", "worst-fit", "network-aware", "rebalance"]
#: profile -> share of boards
MIX = {"beaglebone-black": 0.3, "pocketbeagle": 0.15, "raspberry-pi-3": 0.3,
       "raspberry-pi-zero": 0.2, "desktop-vm": 0.05}
SCALE = [(10, 10), (10, 100), (100, 100), (100, 1000), (1000, 1000), (1000, 10000)]
SCALE_QUICK = [(10, 10), (10, 100), (100, 100), (100, 1000)]
GAP = [(b, c) for b in (3, 5, 8) for c in (8, 16, 24)]
GAP_SEEDS, GAP_SEEDS_QUICK = 5, 1


def make_boards(n: int, rnd: random.Random, first: int = 0) -> list[BoardView]:
    names, weights = list(MIX), list(MIX.values())
    out = []
    for i in range(first, first + n):
        prof = PROFILES[rnd.choices(names, weights)[0]]
        caps = {"camera"} if rnd.random() < 0.2 else set()
        if prof.name != "desktop-vm":
            caps.add("gpio")
        out.append(BoardView(f"b{i:04d}", memory_mb=float(prof.memory_mb),
                             cpu=float(prof.cores), device=prof.name,
                             capabilities=frozenset(caps),
                             used_memory_mb=round(prof.memory_mb * rnd.uniform(0, 0.1), 1)))
    return out


def _component(rnd: random.Random, name: str, count: int, boards: list[BoardView],
               code: str = "") -> Component:
    """One component; a fifth are constrained (to the boards present from the start)."""
    kw: dict[str, Any] = {}
    if rnd.random() < 0.2:
        kind = rnd.choice(["device", "capability", "anti", "pin"])
        if kind == "device":
            kw["device"] = rnd.choice(sorted({b.device for b in boards if b.device}))
        elif kind == "capability" and any("camera" in b.capabilities for b in boards):
            kw["capabilities"] = frozenset({"camera"})
        elif kind == "anti" and count <= len(boards):
            kw["anti_affinity"] = True
        elif kind == "pin":
            kw["pin"] = rnd.choice(boards).id
            count = 1
    return Component(name=name, source=code, count=count,
                     memory_mb=float(rnd.choice([5, 10, 20, 30, 50])),
                     cpu=rnd.choice([0.01, 0.02, 0.05, 0.1]),
                     state_bytes=rnd.choice([1_000, 10_000, 100_000, 1_000_000, 10_000_000]),
                     **kw)


def make_apps(n_instances: int, boards: list[BoardView], rnd: random.Random) -> list[Application]:
    """Pipelines and fan-outs until ``n_instances`` instances (the last one trimmed)."""
    apps: list[Application] = []
    total = 0
    while total < n_instances:
        name = f"app{len(apps):04d}"
        if rnd.random() < 0.6:
            stages = [_component(rnd, f"s{i}", rnd.randint(1, 3), boards)
                      for i in range(rnd.randint(3, 6))]
        else:
            stages = [_component(rnd, "source", 1, boards),
                      _component(rnd, "work", rnd.randint(2, 8), boards),
                      _component(rnd, "sink", 1, boards)]
        kept, left = [], n_instances - total
        for c in stages:
            if left <= 0:
                break
            count = min(c.count, left)
            kept.append(Component(**{**c.__dict__, "count": count}))
            left -= count
        flows = tuple(Flow(a.name, b.name, f"{name}/{a.name}", rate=float(rnd.randint(1, 20)),
                           size=rnd.choice([100, 300, 1000, 2000]))
                      for a, b in zip(kept, kept[1:]))
        apps.append(Application(name, tuple(kept), flows))
        total += sum(c.count for c in kept)
    return apps


def links_by_profile(boards: list[BoardView]) -> dict[tuple[str, str], Link]:
    """Each pair at the slower of the two boards' interfaces (bytes/s)."""
    speed = {b.id: PROFILES[b.device].bandwidth / 8 for b in boards if b.device}
    return {(a.id, b.id): Link(bandwidth=min(speed[a.id], speed[b.id]))
            for i, a in enumerate(boards) for b in boards[i + 1:]}


def timed(policy: str, problem: Problem, **options: Any) -> tuple[Any, float, str]:
    start = time.perf_counter()
    try:
        placement = get_policy(policy, **options).place(problem)
        status = "ok"
    except Unplaceable:
        placement, status = None, "unplaceable"
    return placement, time.perf_counter() - start, status


def measures(problem: Problem, placement: Any) -> dict[str, Any]:
    if placement is None:
        return {}
    s = metrics.score(problem, placement)
    total = sum(t.bytes_per_s for t in problem.traffic)
    return {"max_util": round(s.max_utilisation, 6), "imbalance_cv": round(s.imbalance, 6),
            "cross_traffic_Bps": round(s.cross_traffic, 3),
            "cross_share": round(s.cross_traffic / total, 6) if total else 0.0,
            "link_load": round(s.link_load, 9), "migrations": s.migrations,
            "migration_s": round(s.migration_seconds, 6), "violations": s.violations}


def scale_rows(n_boards: int, n_instances: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(f"scale-{seed}-{n_boards}-{n_instances}")
    boards = make_boards(n_boards, rnd)
    joined = max(1, n_boards // 5)
    first = boards[:n_boards - joined]
    apps = make_apps(n_instances, first, rnd)
    rows = []
    fresh = problem_for(apps, boards)
    for policy in HEURISTICS:
        placement, seconds, status = timed(policy, fresh)
        rows.append({"scenario": "scale", "boards": n_boards, "instances": n_instances,
                     "seed": seed, "policy": policy, "status": status, "time_s": seconds,
                     **measures(fresh, placement)})
    # every policy starts from the same placement (worst fit on the first 80%)
    before, _, status = timed("worst-fit", problem_for(apps, first))
    if before is None:
        return rows + [{"scenario": "join", "boards": n_boards, "instances": n_instances,
                        "seed": seed, "policy": p, "status": "unplaceable-before"}
                       for p in HEURISTICS]
    after = problem_for(apps, boards, current=before)
    for policy in HEURISTICS:
        placement, seconds, status = timed(policy, after)
        rows.append({"scenario": "join", "boards": n_boards, "instances": n_instances,
                     "seed": seed, "policy": policy, "status": status, "time_s": seconds,
                     "max_util_before": round(metrics.max_utilisation(after, before), 6),
                     "imbalance_cv_before": round(metrics.imbalance(after, before), 6),
                     **measures(after, placement)})
    return rows


def gap_rows(n_boards: int, n_instances: int, seed: int,
             time_limit: float) -> list[dict[str, Any]]:
    rnd = random.Random(f"gap-{seed}-{n_boards}-{n_instances}")
    boards = make_boards(n_boards, rnd)
    apps = make_apps(n_instances, boards, rnd)
    problem = problem_for(apps, boards, links=links_by_profile(boards))
    slowest = min((lk.bandwidth for lk in problem.links.values()),
                  default=problem.default_link.bandwidth)
    every_pair = sum(t.bytes_per_s for t in problem.traffic) / slowest
    base = {"scenario": "gap", "boards": n_boards, "instances": n_instances, "seed": seed}
    optimum: dict[str, float] = {}
    rows = []
    for objective in ("balance", "traffic"):
        start = time.perf_counter()
        try:
            sol = Exact(objective=objective, time_limit=time_limit).solve(problem)
        except Unplaceable:
            return [{**base, "policy": "exact", "status": "infeasible"}]
        seconds = time.perf_counter() - start
        if sol.optimal:
            optimum[objective] = sol.objective
        rows.append({**base, "policy": f"exact-{objective}",
                     "status": "optimal" if sol.optimal else "time-limit", "time_s": seconds,
                     **measures(problem, sol.placement)})
    for policy in HEURISTICS:
        placement, seconds, status = timed(policy, problem)
        row = {**base, "policy": policy, "status": status, "time_s": seconds,
               **measures(problem, placement)}
        if placement is not None and row["violations"] == 0:
            if "balance" in optimum:
                row["gap_balance"] = round(
                    objective_value(problem, placement, "balance") / optimum["balance"] - 1, 6)
            if "traffic" in optimum and every_pair > 0:
                row["gap_traffic"] = round(
                    (objective_value(problem, placement, "traffic") - optimum["traffic"])
                    / every_pair, 6)
        rows.append(row)
    return rows


COLUMNS = ["scenario", "boards", "instances", "seed", "policy", "status", "time_s",
           "max_util", "imbalance_cv", "cross_traffic_Bps", "cross_share", "link_load",
           "migrations", "migration_s", "violations", "max_util_before",
           "imbalance_cv_before", "gap_balance",
           "gap_traffic"]


def plot(df: pd.DataFrame, out: Path, stem: str = "policies") -> list[Path]:
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    scale = df[(df.scenario == "scale") & (df.status == "ok")]
    sizes = sorted({(b, i) for b, i in zip(scale.boards, scale.instances)})
    labels = [f"{b}b\n{i}i" for b, i in sizes]
    pos = {s: k for k, s in enumerate(sizes)}
    for policy in HEURISTICS:
        sub = scale[scale.policy == policy]
        x = [pos[(b, i)] for b, i in zip(sub.boards, sub.instances)]
        axes[0, 0].plot(x, sub.time_s * 1000, marker="o", label=policy)
        axes[0, 1].plot(x, sub.max_util, marker="o", label=policy)
        axes[0, 2].plot(x, sub.cross_share, marker="o", label=policy)
    for ax, title in ((axes[0, 0], "placement time (ms, log)"),
                      (axes[0, 1], "max utilisation (lower = balanced)"),
                      (axes[0, 2], "share of traffic crossing boards")):
        ax.set_xticks(range(len(sizes)), labels, fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    join = df[(df.scenario == "join") & (df.status == "ok")]
    biggest = join[join.instances == join.instances.max()]
    biggest = biggest[biggest.boards == biggest.boards.max()]
    ax = axes[1, 0]
    ax.bar(biggest.policy, biggest.migrations)
    ax.set_title(f"20% boards join: migrations ({biggest.boards.max()} boards, "
                 f"{biggest.instances.max()} instances)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax = axes[1, 1]
    ax.bar(biggest.policy, biggest.imbalance_cv_before, alpha=0.4, label="before")
    ax.bar(biggest.policy, biggest.imbalance_cv, alpha=0.8, label="after")
    ax.set_title("... imbalance (CV of utilisation) before and after")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=8)
    gap = df[(df.scenario == "gap") & df.policy.isin(HEURISTICS)]
    ax = axes[1, 2]
    data_b = [gap[gap.policy == p].gap_balance.dropna() for p in HEURISTICS]
    data_t = [gap[gap.policy == p].gap_traffic.dropna() for p in HEURISTICS]
    at = range(len(HEURISTICS))
    ax.boxplot(data_b, positions=[k - 0.2 for k in at], widths=0.35,
               patch_artist=True, boxprops={"facecolor": "tab:blue", "alpha": 0.5})
    ax.boxplot(data_t, positions=[k + 0.2 for k in at], widths=0.35,
               patch_artist=True, boxprops={"facecolor": "tab:orange", "alpha": 0.5})
    ax.set_xticks(list(at), HEURISTICS, rotation=30, fontsize=8)
    ax.set_title("optimality gap (blue: balance, relative; orange: traffic, share)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    fig.savefig(out / f"{stem}.pdf", metadata={"CreationDate": None})
    plt.close(fig)
    return [out / f"{stem}.png", out / f"{stem}.pdf"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "scheduling")
    parser.add_argument("--quick", action="store_true", help="small sizes only (~10 s)")
    parser.add_argument("--time-limit", type=float, default=20.0,
                        help="the exact solver's limit per instance, seconds")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scale = SCALE_QUICK if args.quick else SCALE
    seeds = GAP_SEEDS_QUICK if args.quick else GAP_SEEDS
    jobs: list[tuple[str, tuple]] = [("scale", (b, i, args.seed)) for b, i in scale]
    jobs += [("gap", (b, i, args.seed * 100 + s, args.time_limit))
             for b, i in GAP for s in range(seeds)]
    rows: list[dict[str, Any]] = []
    for kind, job in tqdm(jobs, disable=args.no_progress, desc="scheduling"):
        rows += scale_rows(*job) if kind == "scale" else gap_rows(*job)
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "policies.csv", index=False, float_format="%.6g")
    plot(df, args.out)
    summary = df[df.scenario == "scale"].pivot_table(
        index=["boards", "instances"], columns="policy", values="time_s")
    print((summary * 1000).round(1).to_string())
    gaps = df[df.scenario == "gap"].groupby("policy")[["gap_balance", "gap_traffic"]].mean()
    print(gaps.round(4).to_string())
    print(f"run time: {time.perf_counter() - started:.1f} s; wrote {args.out}/policies.csv, "
          f"policies.png, policies.pdf")
    return 0


# ---------------------------------------------------------------- the framework's view
#: ``thingssim experiment scheduling [--quick]``: the script's studies as points (a
#: ``scale`` point also yields its ``join`` rows), each seed a replication (the script
#: is seed 1 of it); rows keep their own ``scenario`` and ``policy``
KEYS = ["study", "boards", "instances"]
METRICS = ["time_s", "max_util", "imbalance_cv", "cross_share", "link_load", "migrations",
           "migration_s", "violations", "max_util_before", "gap_balance", "gap_traffic"]
PARAMS: dict[str, Any] = {"scale": SCALE, "gap": GAP, "time_limit": 20.0}


def design(params: Any) -> list[dict[str, Any]]:
    return [{"study": "scale", "boards": b, "instances": i,
             "time_limit": params["time_limit"]} for b, i in params["scale"]] + \
        [{"study": "gap", "boards": b, "instances": i, "time_limit": params["time_limit"]}
         for b, i in params["gap"]]


def trial(point: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    if point["study"] == "scale":
        rows = scale_rows(point["boards"], point["instances"], seed)
    else:
        rows = gap_rows(point["boards"], point["instances"], seed, point["time_limit"])
    return [{k: v for k, v in row.items() if k != "seed"} for row in rows]


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Per scenario (scale, join, gap), size and policy: a point holds every policy."""
    return stats.ci_summary(trials, ["scenario", "boards", "instances", "policy"], METRICS)


def figures(trials: pd.DataFrame, summary: pd.DataFrame, out: Path) -> list[Path]:
    """The script's figure: scale and join at the first seed, the gaps over all."""
    first = trials[(trials.scenario == "gap") | (trials.seed == trials.seed.min())]
    return plot(first, out, "fig_policies")


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """After 20% of the boards join (the largest size): balance and moves per policy."""
    table = stats.wide(summary, ["scenario", "boards", "instances", "policy"])
    join = table[table.scenario == "join"]
    if join.empty:
        return join
    join = join[join.instances == join.instances.max()]
    join = join[join.boards == join.boards.max()]
    return pd.DataFrame({"policy": join.policy, "boards": join.boards,
                         "instances": join.instances,
                         "max util before": join.max_util_before,
                         "max util after": join.max_util,
                         "imbalance (CV)": join.imbalance_cv,
                         "migrations": join.migrations}).reset_index(drop=True)


EXPERIMENT = Experiment(
    name="scheduling",
    title="Placement policies: time, balance, traffic, migrations, optimality gap",
    description="\n\n".join(__doc__.split("\n\n")[1:3]),
    params=PARAMS,
    seeds=range(1, 4),
    presets={"quick": {"scale": SCALE_QUICK, "gap": GAP[:3], "time_limit": 10.0,
                       "seeds": range(1, 3)},
             "tiny": {"scale": SCALE_QUICK[:2], "gap": GAP[:1], "time_limit": 5.0,
                      "seeds": [1]}},
    keys=KEYS,
    metrics=METRICS,
    design=design,
    trial=trial,
    figures=figures,
    headline=headline,
    summarise=summarise,
    deterministic=False,  # time_s is wall time; every other column is seeded
)


if __name__ == "__main__":
    raise SystemExit(main())
