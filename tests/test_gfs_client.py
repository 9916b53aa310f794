"""``things.fs`` from inside programs: the API, its errors, views, and files that migrate.

Programs run on real CodeEngines with a Dispatcher and a GfsService (SQLite in memory) on
the in-process broker; the protocol under faults (loss, duplicates, delays, migrations
at any moment) is checked over generated schedules at the end.
"""

from __future__ import annotations

import errno
import json
import random
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.clock import VirtualClock
from runtime.dispatcher import Dispatcher
from runtime.engine import CodeEngine
from runtime.gfs.paths import Namespaces
from runtime.gfs.service import GfsService, command_topic
from runtime.gfs.sqlite import SqliteStorage
from runtime.memory import MemoryBroker
from runtime.program import ProgramHost
from runtime.snapshot import dumps, loads
from runtime.transport import Message


class Lab:
    """Two engines, a dispatcher and a GFS service on the in-process broker."""

    def __init__(self, grants: tuple = ()) -> None:
        self.clock = VirtualClock()
        self.broker = MemoryBroker(self.clock)
        self.storage = SqliteStorage(":memory:")
        gfs = self.broker.client("gfs")
        gfs.connect()
        self.service = GfsService(gfs, self.clock, self.storage,
                                  namespaces=Namespaces(grants)).start()
        self.engines = {n: CodeEngine(self.broker.client(n), self.clock, engine_id=n,
                                      resource_period=None).start() for n in ("a", "b")}
        self.dispatcher = Dispatcher(self.broker.client("d"), self.clock, {"id": "d"}).start()
        self.console: dict[str, list[str]] = {}
        spy = self.broker.client("spy")
        spy.connect()
        spy.subscribe("+/+/console", self._on_console)
        self.run(0.5)

    def _on_console(self, message: Message) -> None:
        iid = message.topic.split("/")[1]
        self.console.setdefault(iid, []).extend(json.loads(message.payload))

    def run(self, seconds: float) -> None:
        self.clock.run(until=self.clock.now() + seconds)

    def start(self, source: str, name: str = "prog", engine: str = "a") -> str:
        fut = self.dispatcher.run_code(engine, name, textwrap.dedent(source))
        self.run(0.2)
        return fut.result()["id"]

    def move(self, iid: str, name: str = "prog") -> None:
        engine = self.dispatcher.programs[iid].engine
        target = "b" if engine == "a" else "a"
        fut = self.dispatcher.move_code(engine, target, name, iid)
        self.run(0.3)
        assert fut.result()["engine"] == target

    def file(self, path: str) -> bytes:
        data, _ = self.storage.read(path)
        return data

    def status(self, iid: str) -> str:
        return self.dispatcher.programs[iid].status


@pytest.fixture
def lab() -> Lab:
    return Lab()


def test_write_read_and_bytes(lab: Lab) -> None:
    iid = lab.start("""
        blob = bytes(range(256)) * 3
        def got_bytes(err, data):
            print("bytes", err, data == blob)
        def got_text(err, text):
            print("text", err, repr(text))
            things.fs.read_file("b.bin", got_bytes, binary=True)
        def written(err, _):
            things.fs.read_file("t.txt", got_text)
        things.fs.write_file("t.txt", "héllo\\nworld\\n")
        things.fs.write_file("b.bin", blob, written)
    """)
    lab.run(1)
    assert lab.console[iid] == ["text None 'héllo\\nworld\\n'", "bytes None True"]
    assert lab.file("/programs/prog/t.txt") == "héllo\nworld\n".encode()
    assert lab.status(iid) == "Exited"


def test_open_modes_like_python(lab: Lab) -> None:
    iid = lab.start("""
        def step3(err, f):
            with f:
                print("lines", [line for line in f])
                f.seek(0)
                print("read", repr(f.read(5)), f.tell())
                print("readline", repr(f.readline()))
        def step2(err, f):
            print("x on existing", type(err).__name__, err.filename, err.errno)
            things.fs.open("notes.txt", "r", step3)
        def closed(err, _):
            print("closed", err)
            things.fs.open("notes.txt", "x", step2)
        def before_close(err, content):
            print("before close", type(err).__name__)
        f = things.fs.open("notes.txt", "w")
        print("write returns", f.write("one\\r\\ntwo\\n"), f.writable(), f.readable())
        f.write("three")
        things.fs.read_file("notes.txt", before_close)
        f.close(closed)
    """)
    lab.run(1)
    assert lab.console[iid] == [
        "write returns 9 True False",
        "before close FileNotFoundError",  # a file written with "w" appears whole at close
        "closed None",
        "x on existing FileExistsError /notes.txt 17",
        "lines ['one\\n', 'two\\n', 'three']",  # universal newlines, as Python's text mode
        "read 'one\\nt' 6",
        "readline 'wo\\n'",
    ]


def test_errors_are_pythons_with_the_path(lab: Lab) -> None:
    iid = lab.start("""
        def show(what):
            return lambda err, result: print(what, type(err).__name__,
                                             getattr(err, "filename", None), result)
        things.fs.read_file("missing.txt", show("read missing"))
        things.fs.mkdir("d", show("mkdir"))
        things.fs.mkdir("d", show("mkdir again"))
        things.fs.mkdir("x/y/z", show("mkdir no parent"))
        things.fs.mkdir("x/y/z", show("mkdir parents"), parents=True)
        things.fs.write_file("d/f", "1")
        things.fs.rmdir("d", show("rmdir non-empty"))
        things.fs.remove("d", show("remove dir"))
        things.fs.listdir("d/f", show("listdir file"))
        things.fs.open("d", "r", show("open dir"))
        things.fs.write_file("d/f/g", "1", show("under a file"))
        things.fs.remove("nope", show("remove missing"))
        things.fs.rename("d", "x/y/z", show("rename onto empty dir"))
        things.fs.listdir("/", show("listdir"))
        things.fs.listdir("x/y/z", show("moved"))
    """)
    lab.run(1)
    assert lab.console[iid] == [
        "read missing FileNotFoundError /missing.txt None",
        "mkdir NoneType None None",
        "mkdir again FileExistsError /d None",
        "mkdir no parent FileNotFoundError /x/y/z None",
        "mkdir parents NoneType None None",
        "rmdir non-empty OSError /d None",
        "remove dir IsADirectoryError /d None",
        "listdir file NotADirectoryError /d/f None",
        "open dir IsADirectoryError /d None",
        "under a file NotADirectoryError /d/f/g None",
        "remove missing FileNotFoundError /nope None",
        "rename onto empty dir NoneType None None",
        "listdir NoneType None ['x']",
        "moved NoneType None ['f']",
    ]


def test_bad_arguments_raise_at_the_call(lab: Lab) -> None:
    iid = lab.start("""
        for call in (lambda: things.fs.open("../../etc/passwd", "r", print),
                     lambda: things.fs.open("a", "r"),
                     lambda: things.fs.open("a", "r+", print),
                     lambda: things.fs.open("a", "rb", print, encoding="utf-8"),
                     lambda: things.fs.listdir("/"),
                     lambda: things.fs.write_file("a", 3),
                     lambda: things.fs.open(b"a", "w")):
            try:
                call()
            except Exception as exc:
                print(type(exc).__name__)
    """)
    lab.run(0.5)
    assert lab.console[iid] == ["PermissionError", "TypeError", "ValueError", "ValueError",
                                "TypeError", "TypeError", "TypeError"]


def test_stat_exists_isdir(lab: Lab) -> None:
    iid = lab.start("""
        def show(what):
            return lambda err, value: print(what, err, value)
        things.fs.write_file("f.txt", "12345")
        things.fs.stat("f.txt", lambda err, s: print("stat", s.st_size, s.is_dir, s.version >= 1))
        things.fs.exists("f.txt", show("exists"))
        things.fs.exists("g.txt", show("exists g"))
        things.fs.isdir("/", show("isdir root"))
        things.fs.isfile("f.txt", show("isfile"))
        things.fs.stat("g.txt", lambda err, s: print("stat g", type(err).__name__))
    """)
    lab.run(1)
    assert lab.console[iid] == ["stat 5 False True", "exists None True", "exists g None False",
                                "isdir root None True", "isfile None True",
                                "stat g FileNotFoundError"]


def test_views_and_grants() -> None:
    lab = Lab(grants=("writer:/shared/models:/models:rw", "reader:/shared/models:/models:r"))
    writer = lab.start("""
        things.fs.write_file("/models/m.json", "{}", lambda err, _: print("model", err))
        things.fs.write_file("/own.txt", "mine", lambda err, _: print("own", err))
        things.fs.listdir("/", lambda err, names: print("root", names))
    """, name="writer")
    lab.run(1)
    reader = lab.start("""
        things.fs.read_file("/models/m.json", lambda err, t: print("read", err, t))
        things.fs.write_file("/models/m.json", "x", lambda err, _: print("write",
                             type(err).__name__))
        things.fs.read_file("/own.txt", lambda err, t: print("other's", type(err).__name__))
        things.fs.read_file("/programs/writer/own.txt",
                            lambda err, t: print("global path", type(err).__name__))
    """, name="reader")
    lab.run(1)
    assert lab.console[writer] == ["model None", "own None", "root ['models', 'own.txt']"]
    assert lab.console[reader] == ["read None {}", "write PermissionError",
                                   "other's FileNotFoundError", "global path FileNotFoundError"]
    assert lab.file("/shared/models/m.json") == b"{}"
    assert lab.file("/programs/writer/own.txt") == b"mine"


def test_an_open_log_survives_ten_migrations(lab: Lab) -> None:
    iid = lab.start("""
        n = 0
        log = things.fs.open("app.log", "a")
        def tick():
            global n
            log.write(f"line {n}\\n")   # a flush every other line: the rest travels unflushed
            if n % 2:
                log.flush()
            n += 1
            if n == 150:
                log.close(lambda err, _: print("closed", err))
                things.clear_timer(timer)
        timer = things.set_interval(tick, 0.05)
    """)
    for _ in range(10):
        lab.run(0.27)
        lab.move(iid)
    lab.run(3)
    assert lab.console[iid] == ["closed None"]
    assert lab.file("/programs/prog/app.log").decode().splitlines() == \
        [f"line {i}" for i in range(150)]
    assert lab.status(iid) == "Exited"


def test_a_file_being_read_migrates_and_continues_at_its_line(lab: Lab) -> None:
    lab.storage.mkdir("/programs/prog", 0.0, parents=True)
    lab.storage.write("/programs/prog/in.txt", "".join(f"{i}\n" for i in range(100)).encode(),
                      "w", 0.0)
    iid = lab.start("""
        src = None
        def tick():
            line = src.readline()
            if not line:
                things.clear_timer(timer)
                src.close()
                return
            print(line.strip(), src.tell())
        def opened(err, f):
            global src, timer
            src = f
            timer = things.set_interval(tick, 0.05)
        things.fs.open("in.txt", "r", opened)
    """)
    for _ in range(4):
        lab.run(0.33)
        lab.move(iid)
    lab.run(3)
    lines = lab.console[iid]
    assert [int(line.split()[0]) for line in lines] == list(range(100))
    assert lab.status(iid) == "Exited"


def test_a_large_write_migrates_half_uploaded(lab: Lab) -> None:
    iid = lab.start("""
        import random
        rng = random.Random(7)
        out = things.fs.open("big.bin", "wb")
        parts = 0
        def tick():
            global parts
            out.write(rng.randbytes(100_000))
            parts += 1
            if parts == 30:       # 3 MB in 30 writes; flushed in 64 KiB buffers as it goes
                things.clear_timer(timer)
                out.close(lambda err, _: print("closed", err))
        timer = things.set_interval(tick, 0.1)
    """)
    lab.run(0.6)
    lab.move(iid)
    lab.run(0.6)
    lab.move(iid)
    lab.run(3)
    assert lab.console[iid] == ["closed None"]
    rng = random.Random(7)
    assert lab.file("/programs/prog/big.bin") == b"".join(rng.randbytes(100_000)
                                                          for _ in range(30))


def test_a_failed_open_is_raised_by_the_next_write(lab: Lab) -> None:
    iid = lab.start("""
        f = things.fs.open("no/such/dir/x.txt", "w")
        def later():
            try:
                f.write("x")
            except FileNotFoundError as exc:
                print("raised", exc.filename)
        things.set_timeout(later, 0.5)
    """)
    lab.run(1)
    assert lab.console[iid] == [
        "things.fs: open failed: [Errno 2] No such file or directory (its folder does not "
        "exist): '/no/such/dir/x.txt'", "raised /no/such/dir/x.txt"]


def test_exclusive_create_checked_again_at_close(lab: Lab) -> None:
    iid = lab.start("""
        f = things.fs.open("once.txt", "x", lambda err, _: print("open", err))
        f.write("mine")
        def later():
            f.close(lambda err, _: print("close", type(err).__name__, err.filename))
        things.set_timeout(later, 0.5)
    """)
    lab.run(0.2)
    other = lab.start("""
        things.fs.write_file("once.txt", "theirs", lambda err, _: print("other", err))
    """)
    lab.run(1)
    assert lab.console[iid] == ["open None", "close FileExistsError /once.txt"]
    assert lab.console[other] == ["other None"]
    assert lab.file("/programs/prog/once.txt") == b"theirs"


def test_line_buffering_and_the_writers_limits(lab: Lab) -> None:
    iid = lab.start("""
        import io
        f = things.fs.open("lines.txt", "w", buffering=1)
        f.write("partial")
        print("pending", len(f._pending))
        f.write(" line\\n")
        print("pending after newline", len(f._pending), f.tell())
        for call in (lambda: f.seek(0), lambda: f.read()):
            try:
                call()
            except io.UnsupportedOperation as exc:
                print("unsupported")
        f.close()
        try:
            f.write("x")
        except ValueError as exc:
            print(exc)
    """)
    lab.run(0.5)
    assert lab.console[iid] == ["pending 7", "pending after newline 0 13", "unsupported",
                                "unsupported", "I/O operation on closed file."]
    assert lab.file("/programs/prog/lines.txt") == b"partial line\n"


def test_a_reader_never_mixes_two_versions() -> None:
    """A 2 MB file (eight pieces) read again and again while another program replaces it;
    delays interleave the reader's pieces with the writer's commits."""
    world = FaultyWorld(3, 0.0, 0.0, 0.02, grants=("*:/shared/data:/data:rw",))
    size = 2_000_000
    world.storage.write("/shared/data/f.bin", bytes(size), "w", 0.0)
    reader = world.program("reader", f"""
        got = []
        def read_it():
            things.fs.read_file("/data/f.bin", done, binary=True)
        def done(err, data):
            got.append(len(set(data)) == 1 and len(data) == {size})
            if len(got) < 10:
                read_it()
            else:
                print(got.count(True), "of", len(got), "whole")
        read_it()
    """)
    console: list[str] = []
    reader._console_hook = console.append
    world.program("writer", f"""
        k = 0
        def rewrite(err=None, _=None):
            global k
            k += 1
            if k < 30:
                things.fs.write_file("/data/f.bin", bytes([k]) * {size}, rewrite)
        rewrite()
    """)
    world.clock.run(until=100)
    assert console == ["10 of 10 whole\n"]
    restarts = world.service.errors  # pieces refused because the file changed meanwhile
    assert restarts > 0
    assert world.storage.read("/shared/data/f.bin")[0] == bytes([29]) * size


def test_reading_before_the_callback_would_block(lab: Lab) -> None:
    iid = lab.start("""
        f = things.fs.open("x", "r", lambda err, f: print("cb", type(err).__name__))
        try:
            f.read()
        except BlockingIOError as exc:
            print("blocking", exc.errno)
    """)
    lab.run(0.5)
    assert lab.console[iid] == [f"blocking {errno.EAGAIN}", "cb FileNotFoundError"]


def test_the_program_waits_for_its_last_operation_then_ends(lab: Lab) -> None:
    iid = lab.start("""
        things.fs.append_file("a.txt", "last words")
    """)
    lab.run(0.5)
    assert lab.status(iid) == "Exited"
    assert lab.file("/programs/prog/a.txt") == b"last words"


def test_thingsjs_layout_exists(lab: Lab) -> None:
    assert lab.storage.listdir("/") == ["apps", "codes", "programs", "shared"]
    assert lab.storage.listdir("/codes") == ["data"]


def test_service_reports_bad_requests_and_keeps_serving(lab: Lab) -> None:
    client = lab.broker.client("raw")
    client.connect()
    replies: list[dict] = []
    client.subscribe("raw/reply", lambda m: replies.append(json.loads(m.payload)))
    for body in (b"not json", b"[]", json.dumps({"ctrl": "explode", "reply_to": "raw/reply",
                                                 "request_id": "1"}).encode(),
                 json.dumps({"ctrl": "read", "kwargs": {"path": 3}, "reply_to": "raw/reply",
                             "request_id": "2"}).encode(),
                 json.dumps({"ctrl": "write", "kwargs": {"path": "/x", "data": "!!"},
                             "reply_to": "raw/reply", "request_id": "3"}).encode(),
                 json.dumps({"ctrl": "listdir", "kwargs": {"path": "/"},
                             "reply_to": "raw/reply", "request_id": "4"}).encode()):
        client.publish(command_topic(), body)
    lab.run(0.5)
    assert [r["error"]["code"] for r in replies[:3]] == ["unknown_ctrl", "bad_request",
                                                         "bad_request"]
    assert replies[3]["payload"] == ["apps", "codes", "programs", "shared"]


# ============================================================ the protocol under faults
PROGRAM = """
n = 0
log = things.fs.open("log", "a")
def tick():
    global n
    log.write(f"{n}\\n")
    log.flush()
    n += 1
    if n == RECORDS:
        things.clear_timer(timer)
        log.close()
timer = things.set_interval(tick, 0.1)
"""


class FaultyWorld:
    """One program and the service joined by a channel that loses, duplicates and delays
    messages (delays past the client's retry time reorder them), with migrations at
    arbitrary moments: snapshot, a window where both copies are alive (the old one paused,
    still retrying what it had in flight), then the old copy is dropped."""

    def __init__(self, seed: int, loss: float, dup: float, max_delay: float,
                 records: int = 0, grants: tuple = ()) -> None:
        self.rng = random.Random(seed)
        self.loss, self.dup, self.max_delay = loss, dup, max_delay
        self.clock = VirtualClock()
        self.storage = SqliteStorage(":memory:")
        self.service = GfsService(self, self.clock, self.storage,
                                  namespaces=Namespaces(grants)).start()
        self.hosts: list[ProgramHost] = []  # the migrating program's live copies
        self.others: list[ProgramHost] = []
        if records:
            self._host(self.program("p", PROGRAM.replace("RECORDS", str(records)), False))

    def program(self, name: str, source: str, other: bool = True) -> ProgramHost:
        host = ProgramHost(textwrap.dedent(source), clock=self.clock, code_name=name,
                           instance_id=f"{name}.1", publish=self._to_service)
        if other:
            self.others.append(host)
        host.start()
        return host

    # the service's transport
    client_id = "gfs"
    connected = True

    def subscribe(self, topic: str, handler: Any, qos: int = 1) -> None:
        self._service_handler = handler

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self._channel(lambda: [h.deliver(topic, payload) for h in self.hosts + self.others])

    def _to_service(self, topic: str, payload: bytes) -> None:
        self._channel(lambda: self._service_handler(Message(topic, payload, 1)))

    def _channel(self, deliver: Any) -> None:
        copies = 0 if self.rng.random() < self.loss else 1 + (self.rng.random() < self.dup)
        for _ in range(copies):
            self.clock.call_at(self.clock.now() + self.rng.uniform(0, self.max_delay), deliver)

    def _host(self, host: ProgramHost) -> ProgramHost:
        self.hosts.append(host)
        return host

    def migrate(self, overlap: float) -> None:
        old = self.hosts[-1]
        if not old.alive or len(self.hosts) > 1:
            return  # ended, or already migrating (the engines refuse a second migration)
        old.pause()
        doc = loads(dumps(old.snapshot()))
        new = self._host(ProgramHost.restore(doc, clock=self.clock, paused=True,
                                             publish=self._to_service))

        def commit() -> None:
            old.kill()
            self.hosts.remove(old)
            new.resume()

        self.clock.call_at(self.clock.now() + overlap, commit)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.1, 0.3]),
       dup=st.sampled_from([0.0, 0.2]), max_delay=st.sampled_from([0.01, 1.0, 8.0]),
       moves=st.lists(st.tuples(st.floats(0.0, 6.0), st.floats(0.0, 3.0)), max_size=6))
def test_appends_exactly_once_and_in_order_under_faults(seed, loss, dup, max_delay, moves):
    world = FaultyWorld(seed, loss, dup, max_delay, records=40)
    for at, overlap in sorted(moves):
        world.clock.run(until=at)
        world.migrate(overlap)
    world.clock.run(until=2000)
    final = world.hosts[-1]
    assert final.status.value == "Exited", final.error
    data, _ = world.storage.read("/programs/p/log")
    assert data.decode().splitlines() == [str(i) for i in range(40)]


@pytest.mark.parametrize("path", ["..", "../other/secret", "/../other", "a/../../b",
                                  "/models/../../x", "./../../programs/other"])
def test_paths_cannot_escape_a_programs_root(path: str) -> None:
    lab = Lab(grants=("prog:/shared/models:/models:r",))
    lab.storage.mkdir("/programs/other", 0.0, parents=True)
    lab.storage.write("/programs/other/secret", b"s", "w", 0.0)
    client = lab.broker.client("raw")
    client.connect()
    replies: list[dict] = []
    client.subscribe("raw/reply", lambda m: replies.append(json.loads(m.payload)))
    for n, ctrl in enumerate(("read", "listdir", "stat", "remove")):
        client.publish(command_topic(), json.dumps(
            {"ctrl": ctrl, "kwargs": {"path": path, "as": "prog"}, "reply_to": "raw/reply",
             "request_id": str(n)}).encode())
    lab.run(0.5)
    assert [r["error"]["code"] for r in replies] == ["EACCES"] * 4
    assert all(r["error"]["path"] == path for r in replies)
    assert lab.file("/programs/other/secret") == b"s"


def test_a_program_cannot_bypass_its_view_by_publishing(lab: Lab) -> None:
    iid = lab.start("""
        try:
            things.publish("gfs/cmd", {"ctrl": "listdir", "kwargs": {"path": "/"}})
        except PermissionError as exc:
            print("refused")
    """)
    lab.run(0.5)
    assert lab.console[iid] == ["refused"]


def test_rename_errors_name_both_paths(lab: Lab) -> None:
    iid = lab.start("""
        things.fs.mkdir("full")
        things.fs.write_file("full/x", "1")
        things.fs.write_file("f", "1")
        things.fs.rename("f", "full", lambda err, _: print(type(err).__name__, err.filename,
                                                          err.filename2))
    """)
    lab.run(0.5)
    assert lab.console[iid] == ["IsADirectoryError /f /full"]


def test_a_failing_database_is_reported_and_the_service_goes_on(lab: Lab) -> None:
    import sqlite3

    real_write = lab.storage.write
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_write(*args, **kwargs)

    lab.storage.write = flaky
    iid = lab.start("""
        def second(err, _):
            print("second", err)
        def first(err, _):
            print("first", type(err).__name__, err)
            things.fs.append_file("log", "b", second)
        things.fs.append_file("log", "a", first)
    """)
    lab.run(0.5)
    assert lab.console[iid] == ["first OSError [Errno 5] internal: OperationalError: "
                                "database or disk is full", "second None"]
    assert lab.file("/programs/prog/log") == b"b"
