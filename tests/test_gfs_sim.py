"""The global file system as a node of the simulated world (``thingssim.sim.gfs``).

Programs on simulated boards use ``things.fs`` against a GFS node with its own link and a
storage cost model: every operation and error through a program; many programs appending
to one shared file, also over lossy links; a logging program migrated at random moments
(requests and replies in flight); a file being read across migrations; the GFS node
crashing mid-run; scenarios with a ``[gfs]`` table (validation, ``gfs.csv``,
reproducibility); and generated schedules checked for exactly-once, in-order appends.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.program import ProgramHost
from runtime.rpc import RemoteError
from thingssim.sim.gfs import STORAGE_PROFILES, GfsNode, StorageCost
from thingssim.sim.scenario import Scenario, ScenarioError, _Runner
from thingssim.sim.world import World

SCENARIOS = Path(__file__).resolve().parent.parent / "experiments" / "scenarios"
SHARED = "*:/shared:rw"  # every program may read and write the global /shared


class Sim:
    """A world of boards, a GFS node and a dispatcher, with helpers to run programs."""

    def __init__(self, seed: int = 0, boards: int = 3, profile: str = "raspberry-pi-3",
                 grants: tuple = (SHARED,), cost: StorageCost | None = None,
                 files: dict | None = None, **board: Any) -> None:
        self.world = World(seed)
        self.boards = [f"b{i}" for i in range(boards)]
        for name in self.boards:
            self.world.add_board(name, profile, **board)
        self.world.add_gfs(grants=grants, cost=cost, files=files or {})
        self.d = self.world.add_dispatcher()
        self.run(1.0)
        self.until(lambda: set(self.d.engines) == set(self.boards), 60)  # lossy links: later

    @property
    def node(self) -> GfsNode:
        return self.world.gfs["gfs"]

    @property
    def now(self) -> float:
        return self.world.env.now

    def run(self, seconds: float) -> None:
        if seconds > 0:
            self.world.run(self.now + seconds)

    def start(self, source: str, name: str, board: str = "b0") -> str:
        return self.world.wait(self.d.run_code(board, name, textwrap.dedent(source)))["id"]

    def move(self, iid: str, to: str | None = None) -> dict:
        """Migrate ``iid`` to ``to`` (default: the next board)."""
        source = self.d.programs[iid].engine
        if to is None:
            to = self.boards[(self.boards.index(source) + 1) % len(self.boards)]
        return self.world.wait(self.d.move_code(source, to, self.d.programs[iid].code_name,
                                                iid))

    def console(self, iid: str) -> list[str]:
        return list(self.d.programs[iid].console)

    def until(self, done: Any, limit: float, step: float = 1.0) -> None:
        """Run until ``done()`` or ``limit`` more simulated seconds."""
        end = self.now + limit
        while not done() and self.now < end:
            self.run(step)
        assert done(), f"not done after {limit} simulated seconds"

    def file(self, path: str) -> bytes:
        return self.node.storage.read(path)[0]


# ====================================================================== operations
OPERATIONS = """
    def show(label):
        def cb(err, value):
            print(f"{label}: {type(err).__name__ if err else 'ok'} {value!r}")
        return cb

    fs = things.fs
    fs.mkdir("data", show("mkdir"))
    fs.mkdir("data", show("mkdir again"))
    fs.mkdir("data", show("mkdir exist_ok"), exist_ok=True)
    fs.mkdir("a/b/c", show("mkdir parents"), parents=True)
    fs.mkdir("x/y", show("mkdir no parent"))
    fs.write_file("data/x.txt", "hello\\n", show("write_file"))
    fs.append_file("data/x.txt", "world\\n", show("append_file"))
    fs.read_file("data/x.txt", show("read_file"))
    fs.stat("data/x.txt", lambda err, st: print("stat:", st.st_size, st.is_dir))
    fs.listdir("data", show("listdir"))
    fs.listdir("/", show("listdir root"))
    fs.isdir("a/b", show("isdir"))
    fs.isfile("a/b", show("isfile"))
    fs.exists("nothing", show("exists"))

    def lines(err, f):
        print("open r:", type(err).__name__ if err else "ok")
        for line in f:
            print("line:", line.rstrip())
        f.seek(0)
        print("seek/read:", f.read(5), f.tell())
        f.close()
    fs.open("data/x.txt", "r", lines)

    out = fs.open("data/y.bin", "wb")
    out.write(bytes(range(5)))
    out.write(b"\\xff")
    out.close(show("close wb"))
    fs.read_file("data/y.bin", show("read bytes"), binary=True)
    with fs.open("data/w.txt", "w") as w:
        w.write("from a with block")
    fs.read_file("data/w.txt", show("read after with"))
    fs.open("data/y.bin", "x", show("open x existing"))
    fs.rename("data/x.txt", "data/z.txt", show("rename"))
    fs.exists("data/x.txt", show("exists old"))
    fs.read_file("data/z.txt", show("read renamed"))
    fs.remove("data/z.txt", show("remove"))
    fs.remove("data/z.txt", show("remove again"))
    fs.open("missing.txt", "r", show("open missing"))
    fs.open("data", "r", show("open a folder"))
    fs.remove("data", show("remove a folder"))
    fs.rmdir("a", show("rmdir not empty"))
    fs.rmdir("a/b/c", show("rmdir"))
    fs.listdir("data/y.bin", show("listdir a file"))
    fs.write_file("/config/new.json", "{}", show("write read-only"))
    fs.read_file("/config/settings.json", show("read preloaded"))
    fs.append_file("/shared/common.txt", "mine\\n", show("append shared"))
    try:
        fs.listdir("../../elsewhere", show("never"))
    except PermissionError as exc:
        print("escape:", type(exc).__name__, exc.filename)
    fs.listdir("/", lambda err, names: print("end", names))
"""

EXPECTED = [
    "escape: PermissionError ../../elsewhere",  # refused at the call, before any reply
    "mkdir: ok None",
    "mkdir again: FileExistsError None",
    "mkdir exist_ok: ok None",
    "mkdir parents: ok None",
    "mkdir no parent: FileNotFoundError None",
    "write_file: ok None",
    "append_file: ok None",
    "read_file: ok 'hello\\nworld\\n'",
    "stat: 12 False",
    "listdir: ok ['x.txt']",
    "listdir root: ok ['a', 'config', 'data', 'shared']",
    "isdir: ok True",
    "isfile: ok False",
    "exists: ok False",
    "open r: ok",
    "line: hello",
    "line: world",
    "seek/read: hello 5",
    "close wb: ok None",
    "read bytes: ok b'\\x00\\x01\\x02\\x03\\x04\\xff'",
    "read after with: ok 'from a with block'",
    "open x existing: FileExistsError None",
    "rename: ok None",
    "exists old: ok False",
    "read renamed: ok 'hello\\nworld\\n'",
    "remove: ok None",
    "remove again: FileNotFoundError None",
    "open missing: FileNotFoundError None",
    "open a folder: IsADirectoryError None",
    "remove a folder: IsADirectoryError None",
    "rmdir not empty: OSError None",
    "rmdir: ok None",
    "listdir a file: NotADirectoryError None",
    "write read-only: PermissionError None",
    "read preloaded: ok '{\"period\": 0.5}'",
    "append shared: ok None",
    "end ['a', 'config', 'data', 'shared']",
]


def test_every_operation_and_error_through_a_program():
    sim = Sim(grants=(SHARED, "*:/codes/data:/config:r"),
              files={"/codes/data/settings.json": b'{"period": 0.5}'})
    iid = sim.start(OPERATIONS, "ops")
    sim.until(lambda: any(line.startswith("end") for line in sim.console(iid)), 30)
    assert sim.console(iid) == EXPECTED
    # the program's files are in its namespace of the global tree, the shared one in /shared
    assert sim.file("/programs/ops/data/y.bin") == b"\x00\x01\x02\x03\x04\xff"
    assert sim.file("/shared/common.txt") == b"mine\n"
    assert sim.node.storage.stat("/codes/data/new.json") is None
    frame = sim.node.frame()
    assert set(frame["client"]) == {iid}
    assert {"ok", "EEXIST", "ENOENT", "EACCES", "EISDIR", "ENOTDIR", "ENOTEMPTY"} \
        <= set(frame["outcome"])
    writes = frame[frame["op"] == "write"]
    assert (writes["service_s"] >= StorageCost().commit_latency).all()
    assert (frame["reply_at"] >= frame["time"] + frame["service_s"] - 1e-12).all()


# ====================================================================== appends
def appender(count: int, period: float, handle: bool, path: str = "/shared/all.log") -> str:
    """Append ``count`` records ``NAME SEQ SIZE BODY`` (BODY: SIZE copies of one letter)."""
    return f"""
import random
NAME, COUNT, PATH = things.code_name, {count}, {path!r}
seq = 0
log = things.fs.open(PATH, "a") if {handle!r} else None

def finished(err, _):
    print("done", err)

def tick():
    global seq
    size = random.choice([1, 7, 60, 500, 3000, 20000])
    record = f"{{NAME}} {{seq}} {{size}} {{chr(97 + seq % 26) * size}}\\n"
    last = seq == COUNT - 1
    if log is not None:
        log.write(record)
        log.flush(finished if last else None)
    else:
        things.fs.append_file(PATH, record, finished if last else None)
    seq += 1
    if last:
        things.clear_timer(timer)

timer = things.set_interval(tick, {period!r})
"""


def check_records(data: bytes, counts: dict[str, int]) -> None:
    """Every program's records exactly once, in order, each whole on its own line."""
    seen: dict[str, list[int]] = {name: [] for name in counts}
    for line in data.decode().split("\n")[:-1]:
        name, seq, size, body = line.split(" ")
        seq_n = int(seq)
        assert len(body) == int(size) and body == chr(97 + seq_n % 26) * int(size), \
            f"a torn or mixed record: {line[:80]!r}"
        seen[name].append(seq_n)
    assert data.endswith(b"\n") or not data
    for name, count in counts.items():
        assert seen[name] == list(range(count)), (name, seen[name])


@pytest.mark.parametrize("drop", [0.0, 0.05])
def test_ten_programs_on_three_boards_append_to_one_file(drop):
    """Lossy links only delay MQTT (TCP retransmits), so lost requests and replies are
    made by an interceptor that drops 5% of the file service's messages."""
    sim = Sim(seed=3, loss=0.01)
    if drop:
        rng = random.Random(3)
        sim.world.network.intercept(
            lambda stage, client, topic, payload, qos:
            "drop" if (topic.startswith("gfs/") or topic.endswith("/fs"))
            and rng.random() < drop else None)
    counts, iids = {}, []
    for i in range(10):
        name = f"app{i}"
        counts[name] = 25
        iids.append(sim.start(appender(25, 0.05 + 0.01 * i, handle=i % 2 == 0), name,
                              sim.boards[i % 3]))
    sim.until(lambda: all("done None" in sim.console(iid) for iid in iids), 600)
    check_records(sim.file("/shared/all.log"), counts)
    frame = sim.node.frame()
    assert set(frame["outcome"]) <= {"ok", "duplicate", "ignored"}
    if drop:  # requests and replies were lost and retried; retries were not applied twice
        assert (frame["outcome"] == "duplicate").any()
        assert sim.world.network.dropped > 0


# ====================================================================== migrations
LOGGER = """
n = 0
things.fs.mkdir("logs", exist_ok=True)  # done before the open's check: one queue
log = things.fs.open("logs/app.log", "a")

def tick():
    global n
    log.write(f"{n}\\n")
    log.flush()
    n += 1
    if n == COUNT:
        things.clear_timer(timer)
        log.close(lambda err, _: print("closed", err))

timer = things.set_interval(tick, 0.05)
"""


def test_a_logging_program_migrates_ten_times_with_requests_in_flight(monkeypatch):
    # slow links (15 ms one way) and disk (20 ms a commit): an append logged every 50 ms is
    # in flight most of the time, its request or its reply on the wire
    sim = Sim(seed=11, cost=StorageCost(commit_latency=0.02), latency=0.015)
    moments: list[tuple[str, int]] = []  # what was in flight when each snapshot was taken
    snapshot = ProgramHost.snapshot

    def spy(host: ProgramHost) -> dict:
        ops = host.fs._ops
        if ops and ops[0].seq is not None:
            applied = sim.node.storage.recall(host.instance_id)
            done = applied is not None and applied[0] == ops[0].seq
            moments.append(("reply" if done else "request", len(ops)))
        else:
            moments.append(("idle", len(ops)))
        return snapshot(host)

    monkeypatch.setattr(ProgramHost, "snapshot", spy)
    iid = sim.start(LOGGER.replace("COUNT", "400"), "logger")
    start, rng = sim.now, random.Random(2024)
    for k, at in enumerate(sorted(rng.uniform(0.5, 18.0) for _ in range(10))):
        sim.run(start + at - sim.now)
        assert sim.move(iid, sim.boards[(k + 1) % 3])["engine"] == sim.boards[(k + 1) % 3]
    sim.until(lambda: "closed None" in sim.console(iid), 120)
    assert len(moments) == 10
    kinds = {kind for kind, _ in moments}
    assert {"request", "reply"} <= kinds, moments  # both moments of an append in flight
    lines = sim.file("/programs/logger/logs/app.log").decode().split("\n")
    assert lines[-1] == ""
    assert [int(x) for x in lines[:-1]] == list(range(400))  # no gap, no duplicate
    # a reply in flight at a snapshot reaches the new copy with the commit (the late
    # messages) or its own subscription; it resends only what is still unanswered when it
    # resumes: at most once per move
    assert (sim.node.frame()["outcome"] == "duplicate").sum() <= 10


READER = """
f = None

def tick():
    line = f.readline()
    if not line:
        things.clear_timer(timer)
        f.close()
        print("eof")
        return
    print(line.rstrip("\\n"))

def opened(err, file):
    global f, timer
    f = file
    timer = things.set_interval(tick, 0.1)

things.fs.open("/input/lines.txt", "r", opened)
"""


def test_a_file_being_read_migrates_and_continues_at_its_line():
    text = "".join(f"line {i} {'.' * (i % 7)}\n" for i in range(60)).encode()
    sim = Sim(seed=5, grants=("*:/codes/data:/input:r",),
              files={"/codes/data/lines.txt": text})
    iid = sim.start(READER, "reader")
    for k, pause in enumerate((1.23, 0.77, 1.5, 0.35)):
        sim.run(pause)
        sim.move(iid, sim.boards[(k + 1) % 3])
    sim.until(lambda: "eof" in sim.console(iid), 30)
    assert sim.console(iid) == text.decode().splitlines() + ["eof"]


def test_the_gfs_node_crashes_mid_run_and_nothing_is_lost_or_repeated():
    sim = Sim(seed=8, cost=STORAGE_PROFILES["sd-card"])
    counts, iids = {}, []
    for i in range(4):
        counts[f"w{i}"] = 40
        iids.append(sim.start(appender(40, 0.1, handle=i % 2 == 1), f"w{i}", sim.boards[i % 3]))
    sim.run(2.0)
    before = sim.file("/shared/all.log")
    assert before  # something was committed before the crash
    sim.node.crash()
    sim.run(3.0)
    hosts = [h for b in sim.world.boards.values() for h in b.engine.programs.values()]
    assert any(h.fs.pending for h in hosts)  # programs wait for the GFS meanwhile
    sim.node.reboot()
    sim.until(lambda: all("done None" in sim.console(iid) for iid in iids), 200)
    data = sim.file("/shared/all.log")
    assert data.startswith(before)  # what was committed survived the crash
    check_records(data, counts)
    frame = sim.node.frame()
    assert [f["fault"] for f in sim.world.faults] == ["crash", "reboot"]
    # changes applied when the node crashed lost their replies; each was sent again and
    # answered from the remembered result, not applied twice (check_records above)
    lost = frame[frame["outcome"] == "lost"]
    assert len(lost) >= 1
    for row in lost.itertuples():
        again = frame[(frame["client"] == row.client) & (frame["time"] > row.time)]
        assert again.iloc[0]["outcome"] == "duplicate", again.head()


# ====================================================================== scenarios
def test_example_scenario_is_reproducible_and_writes_gfs_csv(tmp_path):
    scenario = Scenario.from_toml(SCENARIOS / "gfs_logger.toml")
    runner = _Runner(scenario, scenario.seed)
    first = runner.run(None)
    storage = runner.world.gfs["gfs"].storage
    for name, count in (("logger-a", 150), ("logger-b", 150), ("logger-c", None)):
        lines = storage.read(f"/programs/{name}/logs/app.log")[0].decode().splitlines()
        numbers = [int(line.split()[2]) for line in lines]
        assert numbers == list(range(count or len(numbers))), name  # the migrating one too
    assert 0 < len(numbers) < 150  # logger-c died with its board, its log up to then
    assert first.actions["ok"].all(), first.actions
    assert first.migrations["ok"].all() and len(first.migrations) >= 4
    assert {"crash", "reboot"} <= set(first.faults["fault"])
    a = first.save(tmp_path / "a")
    assert [p.name for p in a][-1] == "gfs.csv"
    b = scenario.run().save(tmp_path / "b")
    for x, y in zip(a, b):  # same seed: every CSV byte for byte, gfs.csv included
        assert x.read_bytes() == y.read_bytes(), x.name
    scenario.run(seed=scenario.seed + 1).save(tmp_path / "c")
    assert (tmp_path / "c" / "gfs.csv").read_bytes() != (tmp_path / "a" / "gfs.csv").read_bytes()
    gfs = first.gfs
    assert list(gfs.columns) == ["time", "service", "client", "op", "path", "bytes",
                                 "outcome", "service_s", "reply_at"]
    assert (gfs["outcome"] == "ok").sum() > 100


def test_a_scenario_without_gfs_writes_the_six_csvs_only(tmp_path):
    results = Scenario.from_toml(SCENARIOS / "migration_chain.toml").run()
    assert results.gfs is None
    assert sorted(p.name for p in results.save(tmp_path)) == sorted(
        f"{n}.csv" for n in ("messages", "migrations", "programs", "boards", "actions",
                             "faults"))


def _scenario(gfs: Any, **extra: Any) -> dict:
    return {"duration": 1.0, "boards": [{"name": "a"}], "gfs": gfs, **extra}


@pytest.mark.parametrize(("gfs", "message"), [
    ({"profle": "desktop-vm"}, "[gfs]: unknown key(s) profle (did you mean 'profile'?)"),
    ({"profile": "cray-1"}, "[gfs]: unknown profile 'cray-1'"),
    ({"storage": "tape"}, "[gfs]: unknown storage 'tape'; known: sd-card, vm-disk"),
    ({"commit_latency": -1}, "[gfs]: StorageCost.commit_latency must be a finite number"),
    ({"loss": 2}, "[gfs]: "),
    ({"grants": "*:/shared"}, "[gfs]: grants must be a list"),
    ({"grants": ["*:/a:/b:rwx"]}, "[gfs]: grants entry 1: grant mode must be 'r' or 'rw'"),
    ({"grants": ["*:/a", "x"]}, "[gfs]: grants entry 2: grant 'x'"),
    ({"files": {"/a/b": "no-such-file.json"}}, "[gfs]: files '/a/b': cannot read"),
    ({"files": {"/a/../../b": "x"}}, "[gfs]: files '/a/../../b': "),
    ({"files": {"/": "x"}}, "[gfs]: files '/': a file cannot be the root"),
    ({"name": "a"}, "[gfs]: name 'a' is taken by a board or the dispatcher"),
    ({"name": "bad/name"}, "[gfs]: name"),
    ("gfs", "'gfs' must be a table ([gfs])"),
])
def test_gfs_table_mistakes_are_one_line_errors(gfs, message, tmp_path):
    with pytest.raises(ScenarioError) as info:
        Scenario.from_dict(_scenario(gfs), base_dir=tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_gfs_table_in_a_toml_file_names_the_file(tmp_path):
    (tmp_path / "s.toml").write_text('duration = 1\n[gfs]\nstorage = "floppy"\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: \[gfs\]: unknown storage 'floppy'"):
        Scenario.from_toml(tmp_path / "s.toml")


def test_faults_may_name_the_gfs_node_and_overrides_reach_it(tmp_path):
    (tmp_path / "conf.json").write_text("{}")
    scenario = Scenario.from_dict(_scenario(
        {"storage": "sd-card", "commit_latency": 0.5, "latency": 0.02,
         "files": {"/codes/data/conf.json": "conf.json"}},
        faults=[{"at": 0.2, "type": "crash", "board": "gfs", "duration": 0.3},
                {"at": 0.6, "type": "link_down", "board": "gfs", "duration": 0.1}]),
        base_dir=tmp_path)
    assert scenario.gfs.storage_cost() == STORAGE_PROFILES["sd-card"].with_overrides(
        commit_latency=0.5)
    results = scenario.run()
    assert list(results.faults["fault"]) == ["crash", "reboot", "link_down", "link_up"]
    assert set(results.faults["target"]) == {"gfs"}
    assert results.gfs is not None and results.gfs.empty


# ====================================================================== the cost model
def test_storage_cost_charges_commits_and_reads():
    cost = StorageCost(commit_latency=1e-3, read_latency=1e-4, write_per_byte=1e-8,
                       read_per_byte=1e-9)
    assert cost("write", 1000) == pytest.approx(1e-3 + 1e-5)
    assert cost("stage", 0) == cost("mkdir", 0) == cost("rename", 0) == 1e-3
    assert cost("read", 1000) == pytest.approx(1e-4 + 1e-6)
    assert cost("stat", 0) == cost("listdir", 0) == 1e-4
    with pytest.raises(ValueError, match="read_latency"):
        StorageCost(read_latency=float("nan"))
    with pytest.raises(ValueError, match="unknown StorageCost field"):
        cost.with_overrides(fsync=1)
    sd, vm = STORAGE_PROFILES["sd-card"], STORAGE_PROFILES["vm-disk"]
    assert sd("write", 4096) > 5 * vm("write", 4096)


def test_measure_times_sqlite_on_a_file(tmp_path):
    cost = StorageCost.measure(tmp_path / "cal.db", rounds=6, big=1 << 16)
    assert 0 < cost.read_latency < 0.1 and 0 < cost.commit_latency < 1.0
    assert cost.write_per_byte >= 0 and cost.read_per_byte >= 0
    assert list(tmp_path.iterdir()) == []  # the database and its WAL are gone


# ====================================================================== generated schedules
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), loss=st.sampled_from([0.0, 0.02, 0.1]),
       moves=st.lists(st.floats(0.1, 4.5), max_size=4),
       crash=st.one_of(st.none(), st.tuples(st.floats(0.1, 5.0), st.floats(0.1, 3.0))))
def test_appends_are_exactly_once_and_in_order_under_generated_schedules(seed, loss, moves,
                                                                         crash):
    """Whatever the loss, migrations and GFS crash: every program's records appear once,
    in order, whole."""
    sim = Sim(seed=seed, loss=loss, cost=StorageCost(commit_latency=0.01))
    # 12 records 0.4 s apart: both programs still run at the last move
    iids = [sim.start(appender(12, 0.4, handle=i == 0), f"p{i}", sim.boards[i])
            for i in range(2)]
    world, start = sim.world, sim.now
    if crash is not None:
        world.at(start + crash[0], sim.node.crash)
        world.at(start + crash[0] + crash[1], sim.node.reboot)
    for k, at in enumerate(sorted(moves)):
        sim.run(start + at - sim.now)
        try:
            sim.move(iids[k % 2])
        except RemoteError:  # a lossy link may fail a migration: the program stays put
            pass
    sim.until(lambda: all("done None" in sim.console(iid) for iid in iids), 900, step=5.0)
    check_records(sim.file("/shared/all.log"), {"p0": 12, "p1": 12})
