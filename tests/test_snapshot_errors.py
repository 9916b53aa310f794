"""Every failure of capture and restore: a clear error, and nothing lost or run."""

from __future__ import annotations

import copy
import gzip
import json

import pytest
from harness import Run

from runtime import ProgramHost, VirtualClock
from runtime.snapshot import CaptureError, RestoreError, SnapshotError, dumps, loads

TICKER = """
things.set_interval(lambda: print("tick", things.now()), 1.0)
"""


def _capture_fails(setup: str) -> CaptureError:
    """Run ``setup`` + a ticker, fail to snapshot, and check the program is untouched."""
    run = Run(setup + TICKER)
    run.run(until=2.0)
    before = run.output
    with pytest.raises(CaptureError) as info:
        run.host.snapshot()
    run.clock.run(until=4.0)  # the program goes on as if nothing happened
    assert run.output == before + "tick 3.0\ntick 4.0\n"
    assert run.host.status.value == "Running"
    return info.value


def test_live_generator_is_named_by_its_path():
    err = _capture_fails("""
class Feed:
    pass
feed = Feed()
feed.gen = (x for x in range(10))
""")
    assert err.path == "globals['feed'].gen" and err.what == "generator"
    assert str(err).startswith("cannot snapshot globals['feed'].gen: generator")


@pytest.mark.parametrize(("setup", "path", "what"), [
    ("import threading\nlocks = [threading.Lock()]", "globals['locks'][0]", "_thread.lock"),
    ("import threading\nt = {'worker': threading.Thread(target=print)}",
     "globals['t']['worker']", None),
    ("f = open(__import__('os').devnull)", "globals['f']", "_io.TextIOWrapper"),
    ("import socket\ns = socket.socket()", "globals['s']", None),
    ("async def c(): pass\nco = c()", "globals['co']", "coroutine"),
    ("def make():\n  g = (i for i in [1])\n  return lambda: g\nfn = make()",
     "globals['fn'].<closure 'g'>", "generator"),
    ("ns = {}\nexec('def f(): pass', ns)\nf = ns['f']", "globals['f']", "function"),
])
@pytest.mark.filterwarnings("ignore:coroutine 'c' was never awaited")
def test_uncapturable_objects_fail_with_their_path(setup, path, what):
    err = _capture_fails(setup)
    assert err.path.startswith(path)
    if what:
        assert what in err.what


def test_uncapturable_timer_argument_is_named():
    err = _capture_fails("things.set_timeout(print, 100, iter([1, 2]))")
    assert err.path.startswith("timers[") and ".args" in err.path


def test_corpus_negative_program_generator_feed():
    """Reads tests/programs/uncapturable/generator_feed.py (project test data)."""
    from harness import PROGRAMS

    run = Run((PROGRAMS / "uncapturable" / "generator_feed.py").read_text())
    run.run(until=1.0)
    with pytest.raises(CaptureError, match=r"globals\['feed'\]\.gen: generator"):
        run.host.snapshot()


def test_snapshot_only_between_callbacks_and_only_while_alive():
    """An environment hook (here: publish) that tries to snapshot mid-callback is refused."""
    errors: list[str] = []
    clock = VirtualClock()
    host: ProgramHost

    def publish(topic: str, data: bytes) -> None:
        try:
            host.snapshot()
            errors.append("no error")
        except SnapshotError as exc:
            errors.append(str(exc))

    host = ProgramHost("things.set_timeout(things.publish, 1, 'a', 1)", clock=clock,
                       publish=publish)
    host.start()
    clock.run()
    assert errors == ["a snapshot can only be taken between two callbacks"]
    with pytest.raises(SnapshotError, match="has ended"):
        host.snapshot()


# ----------------------------------------------------------------------------- restore
@pytest.fixture()
def good_snapshot() -> dict:
    run = Run("state = {'n': [1, 2, 3]}\n" + TICKER)
    run.run(until=1.5)
    return run.host.snapshot()


def _restore_fails(doc_or_bytes, match: str) -> None:
    console: list[str] = []
    statuses: list[str] = []
    clock = VirtualClock()
    with pytest.raises(RestoreError, match=match):
        ProgramHost.restore(doc_or_bytes, clock=clock, console=console.append,
                            on_status=lambda h: statuses.append(h.status.value))
    clock.run(until=100)
    assert console == [] and statuses == [] and clock.pending() == 0  # nothing ran


def test_truncated_and_garbage_snapshots(good_snapshot):
    data = dumps(good_snapshot)
    _restore_fails(data[: len(data) // 2], "truncated")
    _restore_fails(b"\x00\x01garbage", "invalid JSON")
    _restore_fails(gzip.compress(data)[:40], "compressed")
    _restore_fails(b"[1, 2]", "not a thingssim snapshot")


def test_tampered_source_is_detected(good_snapshot):
    bad = copy.deepcopy(good_snapshot)
    bad["program"]["source"] += "\nimport os; os.system('echo pwned')"
    _restore_fails(bad, "tampered")
    _restore_fails(dumps(bad), "tampered")


def test_unknown_version_and_missing_fields(good_snapshot):
    future = dict(good_snapshot, version=99)
    _restore_fails(future, "unsupported snapshot version 99")
    for field in ("timers", "objects", "program", "globals"):
        broken = {k: v for k, v in good_snapshot.items() if k != field}
        _restore_fails(broken, f"field '{field}'")


def _put(doc: dict, value) -> None:
    """Add a global ``x = value`` to a snapshot document."""
    entry = doc["objects"][doc["globals"]["@"]]
    doc["shapes"].append(doc["shapes"][entry["k"]] + ["x"])
    entry["k"] = len(doc["shapes"]) - 1
    entry["v"].append(value)


def _put_new(doc: dict, entry: dict) -> None:
    doc["objects"].append(entry)
    _put(doc, {"@": len(doc["objects"]) - 1})


@pytest.mark.parametrize("mutate", [
    lambda d: _put_new(d, {"t": "martian"}),
    lambda d: _put(d, {"@": 10**6}),
    lambda d: _put(d, {"weird": 1}),
    lambda d: d["objects"][d["globals"]["@"]]["v"].pop(),
    lambda d: d["timers"][0].update(callback={"@": -5}),
    lambda d: d["timers"][0].pop("due"),
    lambda d: d["objects"].__setitem__(0, {"t": "list", "v": []}),
    lambda d: _put_new(d, {"t": "codec", "codec": "no.such", "args": None}),
    lambda d: _put_new(d, {"t": "func", "site": "nowhere@99"}),
    lambda d: _put_new(d, {"t": "module", "name": "no_such_module_xyz"}),
    lambda d: _put_new(d, {"t": "tuple", "v": [{"@": len(d["objects"])}]}),
    lambda d: _put_new(d, {"t": "list", "f8": "not base64!"}),
    lambda d: d["subscriptions"].append({"filter": "a/#/b", "callback": None}),
    lambda d: d["messages"].append({"due": 0, "seq": 1, "topic": "x"}),
])
def test_corrupt_tables_fail_cleanly(good_snapshot, mutate):
    bad = json.loads(json.dumps(good_snapshot))
    mutate(bad)
    _restore_fails(bad, "corrupt snapshot|needs module")


def test_a_good_snapshot_restores(good_snapshot):
    console: list[str] = []
    clock = VirtualClock()
    host = ProgramHost.restore(loads(dumps(good_snapshot, compress=True)), clock=clock,
                               console=console.append)
    clock.run(until=1.0)
    assert console == ["tick 2.0\n"] and host.globals["state"] == {"n": [1, 2, 3]}
