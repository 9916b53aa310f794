"""Turn a pytest-benchmark JSON of tests/benchmarks into the migration ratio table.

    pytest tests/benchmarks --benchmark-enable --benchmark-json results/benchmarks.json
    python experiments/report_benchmarks.py results/benchmarks.json \
        --out results/migration_benchmarks.csv

Writes ``results/migration_benchmarks.csv`` and prints a Markdown table.  Times are the
median of each benchmark's rounds; ratios compare sides measured in the same run.  These
are measurements: they differ from run to run.  The default paths are in the repository's
``results/``, whatever the current directory.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"test_(?P<test>\w+)\[(?P<params>[^\]]+)\]")


def load(path: Path) -> pd.DataFrame:
    rows = []
    for bench in json.loads(path.read_text())["benchmarks"]:
        match = _NAME.match(bench["name"])
        if not match:
            continue
        params = match["params"].split("-")
        rows.append({"test": match["test"], "params": params,
                     "median_s": bench["stats"]["median"], **bench.get("extra_info", {})})
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> pd.DataFrame:
    out: dict[str, dict] = {}

    def put(program: str, key: str, value: float) -> None:
        out.setdefault(program, {})[key] = value

    for row in df.itertuples():
        p = row.params
        if row.test == "run_program":  # params: program-runner
            put(p[0], f"run_{p[1]}_ms", row.median_s * 1e3)
            if "peak_bytes" in df and row.peak_bytes == row.peak_bytes:  # not NaN
                put(p[0], f"peak_{p[1]}_kb", row.peak_bytes / 1024)
                put(p[0], f"callbacks_{p[1]}_ms", row.callback_s * 1e3)
        elif row.test.startswith("snapshot_"):
            side = row.test.split("_")[1]
            put(p[0], f"snap_{side}_ms", row.median_s * 1e3)
            put(p[0], f"size_{side}", row.bytes)
            put(p[0], f"gz_{side}", row.gzip_bytes)
        elif row.test == "restore_thingssim":  # params: program-cold|warm
            put(p[0], f"restore_{p[1]}_ms", row.median_s * 1e3)
        elif row.test == "restore_cloudpickle":
            put(p[0], "restore_cloudpickle_ms", row.median_s * 1e3)
    t = pd.DataFrame.from_dict(out, orient="index").sort_index()
    t.index.name = "program"
    t["run_overhead_%"] = (t["run_host_ms"] / t["run_plain_ms"] - 1) * 100
    if "peak_host_kb" in t:
        t["callback_overhead_%"] = (t["callbacks_host_ms"] / t["callbacks_plain_ms"] - 1) * 100
        t["memory_overhead_%"] = (t["peak_host_kb"] / t["peak_plain_kb"] - 1) * 100
    t["snap_time_ratio"] = t["snap_thingssim_ms"] / t["snap_cloudpickle_ms"]
    t["restore_cold_ratio"] = t["restore_cold_ms"] / t["restore_cloudpickle_ms"]
    t["restore_warm_ratio"] = t["restore_warm_ms"] / t["restore_cloudpickle_ms"]
    t["size_ratio"] = t["size_thingssim"] / t["size_cloudpickle"]
    t["gz_size_ratio"] = t["gz_thingssim"] / t["gz_cloudpickle"]
    return t


def main() -> None:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="?", default=ROOT / "results" /
                        "benchmarks.json")
    parser.add_argument("--out", type=Path, default=ROOT / "results" /
                        "migration_benchmarks.csv")
    args = parser.parse_args()
    t = table(load(args.json))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t.round(3).to_csv(args.out, lineterminator="\n")
    cols = ["callback_overhead_%", "run_overhead_%", "memory_overhead_%",
            "snap_thingssim_ms", "snap_time_ratio",
            "restore_cold_ms", "restore_warm_ms", "restore_cold_ratio", "restore_warm_ratio",
            "size_thingssim", "size_ratio", "gz_thingssim", "gz_size_ratio"]
    print(t[[c for c in cols if c in t]].round(2).to_markdown())
    print(f"\nwritten: {args.out}")
    print(f"run time: {time.perf_counter() - wall_start:.1f} s")


if __name__ == "__main__":
    main()
