"""``GfsClient`` (runtime/gfs/remote.py), the admin client of the file service.

First on the in-process broker and a virtual clock (every operation, its errors, whole
files in pieces, a file replaced while it is read, a lost reply retried), then on a real
broker against ``python -m runtime.gfs.server`` processes: the service is SIGKILLed at
random moments while a client writes, appends and uploads several MB in a loop, restarted
on the same SQLite file, and every acknowledged change must be there, whole, with the
change in flight applied exactly once after the client's retry (same client and seq).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import mqtt_fixtures
import pytest
from waiting import until

from runtime.clock import VirtualClock
from runtime.gfs.paths import Namespaces
from runtime.gfs.remote import GfsClient, connect, drive
from runtime.gfs.server import parse_state, state_topic
from runtime.gfs.service import MAX_PIECE, GfsService, command_topic
from runtime.gfs.sqlite import SqliteStorage
from runtime.gfs.storage import CHUNK_SIZE
from runtime.memory import MemoryBroker
from runtime.rpc import RemoteError, RequestTimeout

ROOT = Path(__file__).resolve().parent.parent
broker = mqtt_fixtures.broker


class Bench:
    """A service (SQLite in memory) and a client on the in-process broker."""

    def __init__(self, grants: tuple = (), **client: Any) -> None:
        self.clock = VirtualClock()
        self.broker = MemoryBroker(self.clock)
        self.storage = SqliteStorage(":memory:")
        transport = self.broker.client("gfs")
        transport.connect()
        self.service = GfsService(transport, self.clock, self.storage,
                                  namespaces=Namespaces(grants)).start()
        self.client = self.new_client(**client)

    def new_client(self, **options: Any) -> GfsClient:
        transport = self.broker.client(f"c{len(self.broker.clients)}")
        transport.connect()
        options.setdefault("timeout", 5.0)
        return GfsClient(transport, self.clock, **options)

    def wait(self, future: Any, seconds: float = 30.0) -> Any:
        """The future's result (its exception raised), running the clock until it is done."""
        deadline = self.clock.now() + seconds
        while not future.done() and self.clock.now() < deadline and self.clock.step():
            pass
        assert future.done(), "no answer"
        return future.result()

    def error(self, future: Any) -> BaseException:
        with pytest.raises(Exception) as info:
            self.wait(future)
        return info.value


@pytest.fixture
def bench() -> Bench:
    return Bench()


def test_every_operation(bench: Bench) -> None:
    c, wait = bench.client, bench.wait
    assert wait(c.listdir("/")) == ["apps", "codes", "programs", "shared"]
    entry = wait(c.write("/notes.txt", b"one\n"))
    assert (entry.path, entry.kind, entry.size) == ("/notes.txt", "file", 4)
    assert wait(c.append("notes.txt", b"two\n")).size == 8  # relative = from the root
    assert wait(c.read("/notes.txt")) == (b"one\ntwo\n", wait(c.stat("/notes.txt")))
    assert wait(c.read("/notes.txt", offset=4, size=2))[0] == b"tw"
    assert wait(c.exists("/notes.txt")) and not wait(c.exists("/nothing"))
    assert wait(c.check("/new.txt", "x")) is None
    assert wait(c.check("/notes.txt")).size == 8
    assert wait(c.mkdir("/a/b/c", parents=True)).is_dir
    assert wait(c.mkdir("/a/b", exist_ok=True)).is_dir
    moved = wait(c.rename("/notes.txt", "/a/b/notes.txt"))
    assert (moved.path, moved.size) == ("/a/b/notes.txt", 8)
    assert [e.path for e in wait(c.list_entries("/a/b"))] == ["/a/b/c", "/a/b/notes.txt"]
    wait(c.remove("/a/b/notes.txt"))
    wait(c.rmdir("/a/b/c"))
    assert wait(c.listdir("/a/b")) == []
    upload = "manual"
    assert wait(c.stage(upload, 0, b"abc")) == 3
    assert wait(c.stage(upload, 3, b"def")) == 6
    assert wait(c.commit(upload, "/a/up.bin")).size == 6
    wait(c.stage("dropped", 0, b"x"))
    wait(c.discard("dropped"))
    assert wait(c.commit("dropped", "/a/empty.bin")).size == 0  # never staged: empty
    wait(c.remove_tree("/a"))
    assert not wait(c.exists("/a"))
    assert c.seq == 10  # one number per change, none for queries and upload pieces


def test_errors_are_pythons_with_the_path(bench: Bench) -> None:
    c, wait, error = bench.client, bench.wait, bench.error
    wait(c.mkdir("/d"))
    wait(c.write("/d/f", b"x"))
    cases = [
        (c.read("/missing"), FileNotFoundError, "/missing"),
        (c.stat("/missing/deeper"), FileNotFoundError, "/missing/deeper"),
        (c.read_file("/d"), IsADirectoryError, "/d"),
        (c.write("/d", b"x"), IsADirectoryError, "/d"),
        (c.write("/d/f", b"x", "x"), FileExistsError, "/d/f"),
        (c.mkdir("/d"), FileExistsError, "/d"),
        (c.mkdir("/no/such"), FileNotFoundError, "/no/such"),
        (c.listdir("/d/f"), NotADirectoryError, "/d/f"),
        (c.remove("/d"), IsADirectoryError, "/d"),
        (c.rmdir("/d"), OSError, "/d"),
        (c.remove("/missing"), FileNotFoundError, "/missing"),
        (c.rename("/missing", "/elsewhere"), FileNotFoundError, "/missing"),
        (c.write_file("/no/dir/big", b"x" * (CHUNK_SIZE + 1)), FileNotFoundError,
         "/no/dir/big"),
    ]
    for future, kind, path in cases:
        exc = error(future)
        assert type(exc) is kind and exc.filename == path, (exc, kind, path)
    assert error(c.rmdir("/d")).errno == errno.ENOTEMPTY
    unknown = error(c.request("format_disk", {}))
    assert isinstance(unknown, RemoteError) and unknown.code == "unknown_ctrl"
    bad = error(c.write("/d/g", b"x", mode="q"))
    assert isinstance(bad, RemoteError) and bad.code == "bad_request"
    with pytest.raises(PermissionError):  # refused before anything is sent
        c.stat("/../etc")
    assert wait(c.exists("/d/f"))  # the client goes on after errors


def test_a_programs_view() -> None:
    bench = Bench(grants=("riot-*:/shared/models:/models:r",), as_program="riot-train")
    c, wait = bench.client, bench.wait
    admin = bench.new_client()
    assert wait(admin.stat("/shared/models")).is_dir  # the service makes grant targets
    wait(admin.write("/shared/models/m1", b"weights"))
    wait(c.write("/log.txt", b"hello"))
    assert bench.storage.read("/programs/riot-train/log.txt")[0] == b"hello"
    assert wait(c.listdir("/")) == ["log.txt", "models"]
    assert wait(c.read_file("/models/m1")) == b"weights"
    exc = bench.error(c.write("/models/m2", b"x"))
    assert isinstance(exc, PermissionError) and exc.filename == "/models/m2"


def test_whole_files_in_pieces_from_bytes_files_and_iterables(bench: Bench) -> None:
    c, wait = bench.client, bench.wait
    rng = random.Random(1)
    data = bytes(range(256)) * 4096 + rng.randbytes(3 * MAX_PIECE + 17)  # 4 MiB and more
    assert wait(c.write_file("/big.bin", data)).size == len(data)
    assert wait(c.read_file("/big.bin")) == data
    assert wait(c.write_file("/from-file.bin", io.BytesIO(data))).version > 0
    assert wait(c.read_file("/from-file.bin")) == data
    pieces = [data[i:i + 1000] for i in range(0, 600_000, 1000)]
    wait(c.write_file("/from-pieces.bin", iter(pieces)))
    assert wait(c.read_file("/from-pieces.bin")) == data[:600_000]
    sink = io.BytesIO(b"old content that must go")
    assert wait(c.read_file("/big.bin", into=sink)) == len(data)
    assert sink.getvalue() == data
    wait(c.write_file("/big.bin", data[:CHUNK_SIZE * 2 + 1], "a"))  # an appended upload
    assert wait(c.read_file("/big.bin")) == data + data[:CHUNK_SIZE * 2 + 1]
    wait(c.write_file("/empty", b""))
    assert wait(c.read_file("/empty")) == b""
    assert bench.storage.listdir("/") == ["apps", "big.bin", "codes", "empty",
                                          "from-file.bin", "from-pieces.bin", "programs",
                                          "shared"]


def test_a_file_replaced_while_read_is_read_again_never_mixed(bench: Bench) -> None:
    c = bench.client
    old, new = b"A" * (3 * MAX_PIECE), b"B" * (2 * MAX_PIECE + 5)
    bench.wait(c.write_file("/f", old))
    reading = c.read_file("/f")
    for _ in range(2):  # the request, then the first piece (and its version) arrive
        bench.clock.step()
    bench.storage.write("/f", new, "w", bench.clock.now())  # replaced between pieces
    errors = bench.service.errors
    assert bench.wait(reading) == new
    assert bench.service.errors > errors  # the old version's next pieces were refused


def test_a_lost_reply_is_retried_and_the_change_applied_once(bench: Bench) -> None:
    client = bench.new_client(timeout=1.0, retries=2)
    transport = bench.service.transport
    publish, dropped = transport.publish, []

    def lossy(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if topic.startswith(client.client_id) and not dropped:
            dropped.append(payload)  # the first reply never arrives
            return
        publish(topic, payload, qos, retain)

    transport.publish = lossy
    first = client.append("/log", b"record 1\n")
    second = client.append("/log", b"record 2\n")  # queued behind the first
    assert bench.wait(second).size == 18 and first.result().size == 9
    assert dropped and bench.service.duplicates == 1
    assert bench.storage.read("/log")[0] == b"record 1\nrecord 2\n"
    lost = bench.new_client(timeout=1.0)  # without retries: the timeout is raised
    transport.publish = lambda *args, **kwargs: None
    assert isinstance(bench.error(lost.stat("/log")), RequestTimeout)


def test_close_fails_what_is_pending(bench: Bench) -> None:
    c = bench.client
    futures = [c.write("/a", b"1"), c.write("/b", b"2"), c.stat("/a")]
    c.close("gone")
    for future in futures:
        exc = bench.error(future)
        assert isinstance(exc, RemoteError) and exc.message == "gone"


def test_drive_continues_done_futures_in_a_loop() -> None:
    clock = VirtualClock()

    def steps() -> Any:
        total = 0
        for n in range(20_000):  # far deeper than the recursion limit
            future = clock.create_future()
            future.set_result(n)
            total += yield future
        failed = clock.create_future()
        failed.set_exception(KeyError("x"))
        try:
            yield failed
        except KeyError:
            return total

    out = drive(clock, steps())
    assert out.result() == sum(range(20_000))


def test_in_the_simulated_world_with_simpy_futures() -> None:
    """The same client on the simulated network: whole files go through SimPy events."""
    from thingssim.sim.boards import get_profile
    from thingssim.sim.world import World, link_profile

    world = World(seed=1)
    world.add_gfs()
    transport = world.network.client("admin", world.network.add_link(
        "admin", link_profile(get_profile("desktop-vm"))))
    transport.connect()
    client = GfsClient(transport, world.clock)
    world.run(1.0)
    data = bytes(range(256)) * 10_000  # 2.5 MB: staged in pieces, read in pieces
    started = world.env.now
    assert world.wait(client.write_file("/codes/x.bin", data)).size == len(data)
    assert world.wait(client.read_file("/codes/x.bin")) == data
    assert world.env.now > started  # the transfers took simulated time
    with pytest.raises(FileNotFoundError):
        world.wait(client.read_file("/codes/none"))


# ================================================================ on a real broker
class Service:
    """``python -m runtime.gfs.server`` on one SQLite file (or ``thingssim gfs`` with
    ``cli``; ``storage``: other storage options), started and killed at will."""

    def __init__(self, url: str, db: Path, log: Path, service_id: str = "gfs", *,
                 cli: bool = False, storage: Optional[list[str]] = None) -> None:
        self.url, self.db, self.log, self.id = url, db, log, service_id
        self.proc: Optional[subprocess.Popen] = None
        self.lives = 0
        self.program = ["thingssim.cli", "gfs"] if cli else ["runtime.gfs.server"]
        self.storage = storage or ["--db", str(db)]

    def start(self) -> None:
        self.lives += 1
        with open(self.log, "a") as log:
            log.write(f"--- life {self.lives}\n")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.program, "--broker", self.url, *self.storage,
                 "--id", self.id, "--keepalive", "2"], stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def start_and_wait(self) -> None:
        """Start, and return once its state on the broker says this life is up."""
        self.start()

        async def main() -> None:
            client = await connect(self.url, service_id=self.id)
            try:
                await wait_up(client, self)
            finally:
                client.close()

        asyncio.run(main())

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


async def wait_up(client: GfsClient, service: Service, timeout: float = 20.0) -> None:
    """Until the service's retained state says it is up (its pid: this life's)."""
    states: list[dict] = []
    client.transport.subscribe(state_topic(service.id),
                               lambda m: states.append(parse_state(m.payload) or {}))
    await until(lambda: any(s.get("status") == "up" and s.get("pid") == service.proc.pid
                            for s in states), timeout, "the GFS service up")
    client.transport.unsubscribe(state_topic(service.id))


def sealed(body: bytes) -> bytes:
    """Content that shows whether it is whole: its SHA-256, then itself."""
    return hashlib.sha256(body).digest() + body


def whole(content: bytes) -> bool:
    return hashlib.sha256(content[32:]).digest() == content[:32]


def record(number: int) -> bytes:
    head = b"%08d" % number
    return head + hashlib.sha256(head).hexdigest().encode()[:23] + b"\n"  # 32 bytes


class Workload:
    """Writes, uploads and appends in a loop, one change at a time, keeping what the
    service acknowledged (``acked``) and the change in flight (``current``)."""

    def __init__(self, client: GfsClient, seed: int) -> None:
        self.client, self.rng = client, random.Random(seed)
        self.acked: dict[str, bytes] = {}
        self.records = 0  # appended and acknowledged
        self.current: Optional[tuple[str, str, bytes]] = None  # (kind, path, content)
        self.gate = asyncio.Event()
        self.gate.set()
        self.idle = asyncio.Event()
        self.done = 0
        self.kinds: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.gate.is_set():
                self.idle.set()
                await self.gate.wait()
                self.idle.clear()
            kind = self.rng.choice(["write", "write", "upload", "append", "append"])
            if kind == "append":
                path, content = "/log/records", record(self.records)
            elif kind == "write":
                path = f"/w/{self.rng.randrange(3)}"
                content = sealed(self.rng.randbytes(self.rng.randrange(1, 200_000)))
            else:
                path = f"/up/{self.rng.randrange(2)}"
                content = sealed(self.rng.randbytes(self.rng.randrange(CHUNK_SIZE * 4,
                                                                        3_000_000)))
            self.current = (kind, path, content)
            if kind == "append":
                await self.client.write_file(path, content, "a")
                self.records += 1
            else:
                await self.client.write_file(path, content)
                self.acked[path] = content
            self.current = None
            self.done += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def log(self) -> bytes:
        return b"".join(record(n) for n in range(self.records))


async def check_files(reader: GfsClient, work: Workload, exact: bool) -> str:
    """Every acknowledged change is there and whole; the change in flight (unless
    ``exact``: there must be none) is there whole or not at all.  Returns what became of
    it: ``applied``, ``not yet`` or ``none`` (nothing was in flight)."""
    current = None if exact else work.current
    outcome = "none" if current is None else "not yet"
    paths = set(work.acked)
    if current is not None and current[0] != "append":
        paths.add(current[1])
    for path in sorted(paths):
        allowed = [work.acked.get(path)]  # None: absent
        if current is not None and current[1] == path:
            allowed.append(current[2])
        try:
            got: Optional[bytes] = await reader.read_file(path)
        except FileNotFoundError:
            got = None
        assert got is None or whole(got), f"{path} is torn ({len(got)} bytes)"
        assert got in allowed, f"{path}: neither acknowledged nor in flight"
        if current is not None and current[1] == path and got == current[2]:
            outcome = "applied"
    if work.records or (current is not None and current[0] == "append"):
        expected = work.log()
        try:
            log = await reader.read_file("/log/records")
        except FileNotFoundError:
            log = b""
        if current is not None and current[0] == "append" and log == expected + current[2]:
            return "applied"
        assert log == expected, f"the log has {len(log)} bytes, expected {len(expected)}"
    return outcome


async def reply_lost_then_killed(client: GfsClient, reader: GfsClient, work: Workload,
                                 service: Service) -> tuple[str, str]:
    """An append the service applied and answered, its answer lost, the service killed:
    the client's resend (same client and seq) to the next life must not append again."""
    work.gate.clear()
    await asyncio.wait_for(work.idle.wait(), 30)
    replies = client._requester
    client.transport.unsubscribe(replies.reply_topic)  # the answers go nowhere
    work.current = ("append", "/log/records", record(work.records))
    appending = client.write_file("/log/records", work.current[2], "a")
    deadline = time.monotonic() + 10
    while await check_files(reader, work, exact=False) != "applied":
        assert time.monotonic() < deadline, "the append was never applied"
        await asyncio.sleep(0.01)
    service.kill()
    client.transport.subscribe(replies.reply_topic, replies._on_reply, qos=1)
    service.start()
    await wait_up(reader, service)
    await asyncio.wait_for(appending, 30)  # answered from what the service remembered
    work.records += 1
    work.current = None
    assert await check_files(reader, work, exact=True) == "none"  # appended once
    work.gate.set()
    return ("append, its reply lost", "applied")


def test_sigkill_mid_write_loses_no_acknowledged_change_and_applies_retries_once(
        broker, tmp_path) -> None:
    service = Service(broker.url, tmp_path / "gfs.db", tmp_path / "service.log")
    rounds, outcomes = 5, []

    async def main() -> None:
        service.start()
        client = await connect(broker.url, timeout=1.5, retries=1000)
        reader = await connect(broker.url, timeout=1.5, retries=1000)
        await wait_up(reader, service)
        for folder in ("/w", "/up", "/log"):
            await client.mkdir(folder, exist_ok=True)
        work = Workload(client, seed=7)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(work.run(stop))
        rng = random.Random(11)
        try:
            for n in range(rounds):
                if n == 2:
                    outcomes.append(await reply_lost_then_killed(client, reader, work,
                                                                 service))
                    continue
                if n % 2:  # aim at an upload in progress
                    await until(lambda: work.current and work.current[0] == "upload", 20,
                                "an upload")
                    await asyncio.sleep(rng.uniform(0.0, 0.15))
                else:
                    await asyncio.sleep(rng.uniform(0.2, 0.8))
                work.gate.clear()  # no new change after the one in flight
                service.kill()
                service.start()
                await wait_up(reader, service)
                in_flight = work.current[0] if work.current else "nothing"
                outcomes.append((in_flight, await check_files(reader, work, exact=False)))
                await asyncio.wait_for(work.idle.wait(), 30)  # the retry got its answer
                assert await check_files(reader, work, exact=True) == "none"
                work.gate.set()
        finally:
            stop.set()
            work.gate.set()
            await asyncio.wait_for(task, 30)
            client.close()
            reader.close()
        assert set(work.kinds) == {"write", "upload", "append"}, work.kinds
        print(f"changes acknowledged: {work.kinds}; killed with in flight (kind, "
              f"seen after the restart): {outcomes}")

    try:
        asyncio.run(main())
    finally:
        assert service.stop() == 0, service.log.read_text()[-3000:]
    assert len(outcomes) == rounds
    assert service.log.read_text().count("Traceback") == 0


def test_on_a_real_broker_with_the_state_topic(broker, tmp_path) -> None:
    service = Service(broker.url, tmp_path / "gfs.db", tmp_path / "service.log", "files")

    async def main() -> None:
        service.start()
        client = await connect(broker.url, service_id="files", timeout=5.0)
        await wait_up(client, service)
        data = bytes(range(256)) * 5000
        assert (await client.write_file("/codes/data/blob", data)).size == len(data)
        assert await client.read_file("/codes/data/blob") == data
        with pytest.raises(FileNotFoundError):
            await client.read_file("/codes/none")
        entry = await client.stat("/codes/data/blob")
        assert abs(entry.mtime - time.time()) < 60  # wall-clock time, not the loop's
        states: list[dict] = []
        client.transport.subscribe(state_topic("files"),
                                   lambda m: states.append(parse_state(m.payload)))
        assert service.stop() == 0
        await until(lambda: states and states[-1]["status"] == "stopped", 10, "stopped")
        client.close()

    asyncio.run(main())
    assert "serving sqlite:" in service.log.read_text()


def test_connect_to_nothing_is_an_oserror() -> None:
    from thingssim.broker import free_port

    async def main() -> None:
        with pytest.raises(OSError, match="cannot connect"):
            await connect(f"mqtt://127.0.0.1:{free_port()}", connect_timeout=1.0)

    asyncio.run(main())
    assert command_topic("x") == "x/cmd"


def test_a_100_mb_file_through_the_service_on_a_real_broker(broker, tmp_path) -> None:
    """100 MB up and down through a service process, in 256 KiB pieces, byte for byte
    (about 4 s here: the measurement is experiments/gfs_throughput.py)."""

    service = Service(broker.url, tmp_path / "gfs.db", tmp_path / "service.log", "big")
    data = random.Random(100).randbytes(100_000_000)

    async def main() -> None:
        service.start()
        client = await connect(broker.url, service_id="big", timeout=60.0)
        await wait_up(client, service)
        entry = await client.write_file("/shared/big.bin", data)
        assert entry.size == len(data)
        back = await client.read_file("/shared/big.bin")
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        client.close()
        assert service.stop() == 0

    asyncio.run(main())
