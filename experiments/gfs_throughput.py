"""Read, write and append throughput and latency of the global file system, three ways.

    python experiments/gfs_throughput.py --seed 1 --out results
    python experiments/gfs_throughput.py --quick             # 1 KB to 1 MB only

For files of 1 KB, 64 KB, 1 MB, 10 MB and 100 MB (``--sizes``), the same seeded bytes
go through:

- ``service``: :class:`~runtime.gfs.remote.GfsClient` -> loopback MQTT broker (Mosquitto,
  else amqtt, started here by ``thingssim.broker``) -> a ``python -m runtime.gfs.server``
  process -> SQLite (``synchronous=FULL``): what a program or ``thingssim fs`` gets;
- ``sqlite``: :class:`~runtime.gfs.sqlite.SqliteStorage` alone in this process, called as
  the service calls it (one write up to a chunk, else chunks staged and committed; reads
  in 1 MiB pieces of one version): the storage's share, without the network;
- ``disk``: plain files in the same folder (write + fsync, read, append + fsync): the
  limit.  Every path is durable per operation, as the service is (SQLite FULL syncs each
  commit), and every read comes from the OS's page cache (files just written).

``write`` replaces the whole file, ``read`` reads it whole, ``append`` adds 1 KB records
to a file of that size (so the table also shows whether an append costs more in a large
file).  Throughput is bytes moved / total time (MB = 10^6 bytes); latency p50/p95 are per
operation (a whole-file write or read, one append).  Measured on this machine, so it
differs from run to run.  Writes ``OUT/gfs_throughput.csv`` (one row per way, operation
and size) and ``OUT/gfs_throughput.png``, prints the table and its run time.

It also writes ``OUT/gfs_cost_model.csv``: for each operation and size, the storage time
the simulator's cost model (:class:`thingssim.sim.gfs.StorageCost`, its measured
``vm-disk`` defaults) charges for the requests the service makes, beside the ``sqlite``
p50 measured here, and the model's error in percent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.gfs.remote import GfsClient, connect  # noqa: E402
from runtime.gfs.server import parse_state, state_topic  # noqa: E402
from runtime.gfs.service import MAX_PIECE  # noqa: E402
from runtime.gfs.sqlite import SqliteStorage  # noqa: E402
from runtime.gfs.storage import CHUNK_SIZE  # noqa: E402
from thingssim.broker import start_broker  # noqa: E402
from thingssim.sim.gfs import StorageCost  # noqa: E402

SIZES = [1_000, 64_000, 1_000_000, 10_000_000, 100_000_000]
QUICK = SIZES[:3]
RECORD = 1_000  # bytes per append
APPENDS = 100  # appends per size and way
WAYS = ("service", "sqlite", "disk")
SERVICE_ID = "bench-gfs"


def repeats(size: int) -> int:
    """Whole-file writes and reads per size: many small ones, a couple of 100 MB."""
    return max(2, min(100, 30_000_000 // max(size, 1)))


# ---------------------------------------------------------------- the three ways
class Disk:
    """Plain files (the limit): write + fsync, read, append + fsync."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def write(self, name: str, data: bytes) -> None:
        with open(self.folder / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    async def read(self, name: str) -> bytes:
        with open(self.folder / name, "rb") as f:
            return f.read()

    async def append(self, name: str, data: bytes) -> None:
        with open(self.folder / name, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        pass


class Sqlite:
    """SqliteStorage alone, called the way the service calls it."""

    def __init__(self, path: Path) -> None:
        self.storage = SqliteStorage(path)
        self.uploads = 0

    async def write(self, name: str, data: bytes) -> None:
        now = time.time()
        if len(data) <= CHUNK_SIZE:
            self.storage.write(f"/{name}", data, "w", now)
            return
        self.uploads += 1
        upload = f"bench/{self.uploads}"
        for start in range(0, len(data), CHUNK_SIZE):
            self.storage.stage(upload, start, data[start:start + CHUNK_SIZE], now)
        self.storage.commit_upload(upload, f"/{name}", "w", now)

    async def read(self, name: str) -> bytes:
        first, entry = self.storage.read(f"/{name}", 0, MAX_PIECE)
        parts = [first]
        for offset in range(len(first), entry.size, MAX_PIECE):
            parts.append(self.storage.read(f"/{name}", offset, MAX_PIECE, entry.version)[0])
        return b"".join(parts)

    async def append(self, name: str, data: bytes) -> None:
        self.storage.write(f"/{name}", data, "a", time.time())

    def close(self) -> None:
        self.storage.close()


class Service:
    """The GFS service in its own process, reached over the broker."""

    def __init__(self, client: GfsClient) -> None:
        self.client = client

    async def write(self, name: str, data: bytes) -> None:
        await self.client.write_file(f"/{name}", data)

    async def read(self, name: str) -> bytes:
        return await self.client.read_file(f"/{name}")

    async def append(self, name: str, data: bytes) -> None:
        await self.client.write(f"/{name}", data, "a")

    def close(self) -> None:
        self.client.close()


def start_service(url: str, db: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runtime.gfs.server", "--broker", url,
                             "--db", str(db), "--id", SERVICE_ID],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


async def service_client(url: str, proc: subprocess.Popen) -> GfsClient:
    """A client, once the service process says (on its retained state topic) it is up."""
    client = await connect(url, service_id=SERVICE_ID, timeout=600.0)
    states: list[dict] = []
    client.transport.subscribe(state_topic(SERVICE_ID),
                               lambda m: states.append(parse_state(m.payload) or {}))
    deadline = time.monotonic() + 30
    while not any(s.get("status") == "up" and s.get("pid") == proc.pid for s in states):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the GFS service did not start")
        await asyncio.sleep(0.02)
    return client


# ---------------------------------------------------------------- measuring
async def timed(call: Callable[..., Awaitable[Any]], *args: Any) -> tuple[float, Any]:
    """``(seconds, result)`` of one awaited call."""
    started = time.perf_counter()
    result = await call(*args)
    return time.perf_counter() - started, result


async def measure(way: str, target: Any, sizes: list[int], seed: int, bar: tqdm) -> list[dict]:
    rows = []
    rng = random.Random(seed)
    record = random.Random(seed + 1).randbytes(RECORD)
    for _ in range(3):  # warm up: connections, caches, the first transaction
        await target.write("warmup", record)
        await target.read("warmup")
    for size in sizes:
        data = rng.randbytes(size)  # the same bytes for every way (same seed)
        name = f"file-{size}"
        n = repeats(size)
        lat: dict[str, list[float]] = {"write": [], "read": [], "append": []}
        for _ in range(n):
            lat["write"].append((await timed(target.write, name, data))[0])
            bar.update()
        for _ in range(n):
            seconds, got = await timed(target.read, name)
            if got != data:
                raise AssertionError(f"{way}: {name} read back differently")
            lat["read"].append(seconds)
            bar.update()
        for _ in range(APPENDS):
            lat["append"].append((await timed(target.append, name, record))[0])
            bar.update()
        for op, times in lat.items():
            moved = (RECORD if op == "append" else size) * len(times)
            total = sum(times)
            rows.append({"way": way, "op": op, "size_bytes": size, "count": len(times),
                         "mb_per_s": moved / total / 1e6,
                         "p50_ms": np.percentile(times, 50) * 1e3,
                         "p95_ms": np.percentile(times, 95) * 1e3, "total_s": total})
    return rows


async def run_all(url: str, folder: Path, sizes: list[int], seed: int,
                  proc: subprocess.Popen) -> list[dict]:
    per_way = sum(2 * repeats(s) + APPENDS for s in sizes)
    bar = tqdm(total=per_way * len(WAYS), unit="op", desc="gfs operations")
    rows: list[dict] = []
    for way in WAYS:
        bar.set_postfix_str(way)
        if way == "service":
            target: Any = Service(await service_client(url, proc))
        elif way == "sqlite":
            target = Sqlite(folder / "alone.db")
        else:
            target = Disk(folder / "files")
        try:
            rows += await measure(way, target, sizes, seed, bar)
        finally:
            target.close()
    bar.close()
    return rows


def size_label(size: int) -> str:
    return f"{size / 1e6:g} MB" if size >= 1_000_000 else f"{size / 1e3:g} KB"


def plot(df: pd.DataFrame, figure: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=False)
    for ax, op in zip(axes, ("write", "read", "append")):
        part = df[df.op == op].pivot(index="size_bytes", columns="way", values="mb_per_s")
        part = part[[w for w in WAYS if w in part.columns]]
        part.index = [size_label(s) for s in part.index]
        part.plot.bar(ax=ax, rot=0, logy=True, legend=False)
        title = "append (1 KB records to a file of that size)" if op == "append" else op
        ax.set(title=title, xlabel="file size", ylabel="MB/s (log scale)")
        ax.grid(axis="y", alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    names = {"service": "GFS service over loopback MQTT", "sqlite": "SQLite alone",
             "disk": "local disk (the limit)"}
    fig.legend(handles, [names.get(label, label) for label in labels], loc="lower center",
               ncol=3, frameon=False)
    fig.suptitle("GFS throughput (MB = 10^6 bytes; every write and append durable)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(figure, dpi=120)
    plt.close(fig)


def model_seconds(cost: StorageCost, op: str, size: int) -> float:
    """What the simulated service charges for one operation, request by request: a write
    up to a chunk is one ``write``, a larger one its staged pieces and a ``commit``; a
    read takes 1 MiB pieces; an append is one 1 KB ``write``."""
    if op == "append":
        return cost("write", RECORD)
    if op == "read":
        return sum(cost("read", min(MAX_PIECE, size - start))
                   for start in range(0, size, MAX_PIECE))
    if size <= CHUNK_SIZE:
        return cost("write", size)
    return sum(cost("stage", min(CHUNK_SIZE, size - start))
               for start in range(0, size, CHUNK_SIZE)) + cost("commit", 0)


def cost_model_table(df: pd.DataFrame) -> pd.DataFrame:
    """The cost model's charge beside SQLite's measured p50, per operation and size."""
    cost = StorageCost()
    rows = []
    for row in df[df["way"] == "sqlite"].itertuples():
        model_ms = model_seconds(cost, row.op, row.size_bytes) * 1e3
        rows.append({"op": row.op, "size_bytes": row.size_bytes,
                     "sqlite_p50_ms": row.p50_ms, "model_ms": round(model_ms, 4),
                     "error_pct": round((model_ms - row.p50_ms) / row.p50_ms * 100, 1)})
    return pd.DataFrame(rows)


def main() -> int:
    wall_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=None,
                        help="file sizes in bytes (default 1e3 64e3 1e6 1e7 1e8)")
    parser.add_argument("--quick", action="store_true", help="1 KB, 64 KB and 1 MB only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the files and databases go (default: a temporary "
                             "folder; the disk measured is that folder's)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes] if args.sizes else (QUICK if args.quick else SIZES)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, start_broker() as broker:
        folder = Path(tmp)
        proc = start_service(broker.url, folder / "service.db")
        try:
            rows = asyncio.run(run_all(broker.url, folder, sizes, args.seed, proc))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        print(f"broker: {broker.kind}; files in {folder} ({_fs_type(folder)})")
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "gfs_throughput.csv"
    df.to_csv(csv, index=False, float_format="%.4f", lineterminator="\n")
    table = df.pivot_table(index=["op", "size_bytes"], columns="way",
                           values=["mb_per_s", "p50_ms", "p95_ms"])
    table = table.reindex(columns=[(v, w) for v in ("mb_per_s", "p50_ms", "p95_ms")
                                   for w in WAYS])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    model = cost_model_table(df)
    model.to_csv(args.out / "gfs_cost_model.csv", index=False, lineterminator="\n")
    print(model.to_string(index=False))
    figure = args.out / "gfs_throughput.png"
    plot(df, figure)
    print(f"written: {csv}, {figure}")
    print(f"run time: {time.perf_counter() - wall_start:.1f} s")
    return 0


def _fs_type(folder: Path) -> str:
    """The file system type of ``folder`` (from /proc/mounts; "?" elsewhere)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    best = max((m for m in mounts if str(folder.resolve()).startswith(m[1])),
               key=lambda m: len(m[1]), default=None)
    return best[2] if best else "?"


if __name__ == "__main__":
    sys.exit(main())
