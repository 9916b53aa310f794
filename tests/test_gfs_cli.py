"""``thingssim gfs`` and ``thingssim fs`` end to end: a ``thingssim gfs`` process on a real
broker (Mosquitto, else amqtt; skipped, saying why, without either), and every ``fs``
subcommand against it, for people and with ``--json``, its errors in one line with exit
code 1, and a binary file of a few MB through put and get byte for byte.  The option
errors of ``thingssim gfs`` need no broker; ``--postgres`` needs a PostgreSQL server
(``pg_fixtures``: skipped, saying why, without one)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mqtt_fixtures
import pg_fixtures
import pytest
from click.testing import CliRunner
from test_gfs_remote import ROOT, Service
from waiting import until

from runtime.gfs.remote import connect
from runtime.gfs.server import parse_state, state_topic
from thingssim.cli import main

broker = mqtt_fixtures.broker
pg_server = pg_fixtures.pg_server
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def service(broker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gfs-cli")
    gfs = Service(broker.url, folder / "db" / "gfs.db", folder / "service.log", cli=True)
    gfs.start_and_wait()  # (the folder of --db is made too)
    yield gfs
    assert gfs.stop() == 0, gfs.log.read_text()[-2000:]


def wait_for_state(url: str, service_id: str, status: str) -> None:
    """Until the service's retained state on the broker is ``status``."""
    async def main() -> None:
        states: list = []
        client = await connect(url, service_id=service_id)
        client.transport.subscribe(state_topic(service_id),
                                   lambda m: states.append(parse_state(m.payload)))
        try:
            await until(lambda: states and states[-1]["status"] == status, 10, status)
        finally:
            client.close()

    asyncio.run(main())


def fs(service: Service, *args: str, input: bytes | None = None):  # noqa: A002 - click's
    """``thingssim fs URL ARGS...`` in this process; the click Result."""
    return CliRunner().invoke(main, ["fs", service.url, *args], input=input)


def ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def error_line(result) -> str:
    """The one line a failed command prints (exit code 1, nothing on stdout)."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_every_subcommand_for_people_and_with_json(service, tmp_path) -> None:
    assert ok(fs(service, "ls")).split() == ["apps", "codes", "programs", "shared"]
    assert ok(fs(service, "mkdir", "/t", "/t/docs")) == ""
    assert ok(fs(service, "mkdir", "-p", "/t/deep/er/est")) == ""
    made = json.loads(ok(fs(service, "mkdir", "-p", "/t/deep", "/t/new", "--json")))
    assert [m["path"] for m in made] == ["/t/deep", "/t/new"]
    local = tmp_path / "hello.txt"
    local.write_text("hello world\n")
    assert ok(fs(service, "put", str(local), "/t/docs/")) == \
        f"{local} -> /t/docs/hello.txt (12 bytes)\n"
    assert ok(fs(service, "put", str(local), "/t/docs")).endswith("-> /t/docs/hello.txt "
                                                                  "(12 bytes)\n")
    assert ok(fs(service, "put", "-", "/t/docs/hello.txt", "-a", input=b"again\n")) == \
        "- appended to /t/docs/hello.txt (18 bytes)\n"
    assert ok(fs(service, "cat", "/t/docs/hello.txt")) == "hello world\nagain\n"
    assert json.loads(ok(fs(service, "cat", "/t/docs/hello.txt", "--json"))) == {
        "path": "/t/docs/hello.txt", "size": 18, "content": "hello world\nagain\n"}
    listing = ok(fs(service, "ls", "-l", "/t")).splitlines()
    assert [line.split()[-1] for line in listing] == ["deep/", "docs/", "new/"]
    assert all(re.fullmatch(r"dir  -  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  \w+/", line)
               for line in listing), listing
    files = ok(fs(service, "ls", "-l", "/t/docs"))
    assert re.fullmatch(r"file  18 B  \S+ \S+  hello.txt\n", files), files
    assert ok(fs(service, "ls", "/t/docs/hello.txt")) == "hello.txt\n"  # ls FILE
    assert json.loads(ok(fs(service, "ls", "/t", "--json"))) == ["deep", "docs", "new"]
    before_url = CliRunner().invoke(main, ["fs", "--json", service.url, "ls", "-l", "/t/docs"])
    entries = json.loads(ok(before_url))
    assert [(e["path"], e["kind"], e["size"]) for e in entries] == [
        ("/t/docs/hello.txt", "file", 18)]
    stat = ok(fs(service, "stat", "/t/docs/hello.txt")).splitlines()
    assert stat[:3] == ["path:    /t/docs/hello.txt", "kind:    file", "size:    18 bytes"]
    assert stat[3].startswith("mtime:   20") and stat[4].startswith("version: ")
    entry = json.loads(ok(fs(service, "stat", "/t/docs", "--json")))
    assert (entry["kind"], entry["size"]) == ("dir", 0) and abs(entry["mtime"] - time.time()) < 60
    assert ok(fs(service, "mv", "/t/docs/hello.txt", "/t/new/hi.txt")) == ""
    moved = json.loads(ok(fs(service, "mv", "/t/new/hi.txt", "/t/hi.txt", "--json")))
    assert (moved["path"], moved["size"]) == ("/t/hi.txt", 18)
    back = tmp_path / "back.txt"
    assert ok(fs(service, "get", "/t/hi.txt", str(back))) == \
        f"/t/hi.txt -> {back} (18 bytes)\n"
    assert back.read_text() == "hello world\nagain\n"
    assert ok(fs(service, "get", "/t/hi.txt", str(tmp_path))).endswith("hi.txt (18 bytes)\n")
    assert (tmp_path / "hi.txt").read_bytes() == back.read_bytes()
    assert ok(fs(service, "get", "/t/hi.txt", "-", "--json")) == "hello world\nagain\n"
    assert ok(fs(service, "rm", "/t/hi.txt")) == ""
    assert json.loads(ok(fs(service, "rm", "-r", "/t/deep", "--json"))) == {
        "removed": ["/t/deep"]}
    assert ok(fs(service, "rm", "-r", "/t")) == ""
    assert "t" not in ok(fs(service, "ls")).split()


def test_errors_are_one_line_with_exit_code_1(service, tmp_path) -> None:
    assert ok(fs(service, "mkdir", "-p", "/e/full/sub", "/e/other/inside")) == ""
    assert ok(fs(service, "put", "-", "/e/file", input=b"x")) != ""
    cases = [
        (("cat", "/x"), "thingssim fs: /x: No such file or directory"),
        (("get", "/x", str(tmp_path / "x")), "thingssim fs: /x: No such file or directory"),
        (("stat", "/e/nothing"), "thingssim fs: /e/nothing: No such file or directory"),
        (("ls", "/x"), "thingssim fs: /x: No such file or directory"),
        (("rm", "/e/full"), "thingssim fs: /e/full: Is a directory"),
        (("rm", "/x"), "thingssim fs: /x: No such file or directory"),
        (("mkdir", "/e/full"), "thingssim fs: /e/full: File exists"),
        (("mkdir", "/x/y"), "thingssim fs: /x/y: No such file or directory"),
        (("mv", "/e/other", "/e/full"),
         "thingssim fs: /e/other -> /e/full: Directory not empty"),
        (("mv", "/e/file", "/e/full"), "thingssim fs: /e/file -> /e/full: Is a directory"),
        (("cat", "/e"), "thingssim fs: /e: Is a directory"),
        (("put", str(tmp_path / "absent"), "/e/y"),
         f"thingssim fs: {tmp_path / 'absent'}: No such file or directory"),
        (("put", "-", "/x/y"), "thingssim fs: /x/y: No such file or directory"),
        (("cat", "/../x"), "thingssim fs: /../x: Permission denied (the path climbs above "
                           "its root)"),
    ]
    for args, line in cases:
        assert error_line(fs(service, *args, input=b"")) == line, args
    assert not (tmp_path / "x").exists()  # a failed get leaves nothing behind
    assert [p.name for p in tmp_path.iterdir()] == []
    # rm goes on after an error, as rm does, and still says what failed
    both = fs(service, "rm", "/x", "/e/file")
    assert both.exit_code == 1 and both.stderr.splitlines() == [
        "thingssim fs: /x: No such file or directory"]
    assert ok(fs(service, "ls", "/e")).split() == ["full", "other"]
    # nothing left where it was refused
    assert ok(fs(service, "ls", "/e/full")).split() == ["sub"]
    assert ok(fs(service, "rm", "-r", "/e")) == ""
    # usage errors are click's (exit 2)
    assert fs(service, "frobnicate").exit_code == 2
    assert fs(service, "mv", "/only-one").exit_code == 2
    assert CliRunner().invoke(main, ["fs", "mqtt://host:99999", "ls"]).exit_code == 2


def test_a_binary_file_of_a_few_mb_byte_for_byte(service, tmp_path) -> None:
    rng = random.Random(3)
    data = bytes(range(256)) * 4096 + rng.randbytes(2_000_000) + bytes(range(255, -1, -1))
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    assert ok(fs(service, "put", str(local), "/blob.bin")) == \
        f"{local} -> /blob.bin ({len(data):,} bytes)\n"
    entry = json.loads(ok(fs(service, "stat", "/blob.bin", "--json")))
    assert entry["size"] == len(data)
    out = tmp_path / "out.bin"
    ok(fs(service, "get", "/blob.bin", str(out)))
    assert out.read_bytes() == data
    result = fs(service, "cat", "/blob.bin")
    assert result.exit_code == 0 and result.stdout_bytes == data
    result = fs(service, "put", "-", "/blob2.bin", input=data)  # stdin, in pieces
    assert ok(result) == f"- -> /blob2.bin ({len(data):,} bytes)\n"
    assert fs(service, "get", "/blob2.bin", "-").stdout_bytes == data
    ok(fs(service, "rm", "/blob.bin", "/blob2.bin"))


def test_as_a_program_and_another_service(service, broker, tmp_path) -> None:
    assert ok(fs(service, "put", "-", "/state.json", "--as", "counter", input=b"{}")) == \
        "- -> /state.json (2 bytes)\n"
    assert ok(fs(service, "ls", "/programs/counter")) == "state.json\n"
    as_before_url = CliRunner().invoke(main, ["fs", "--as", "counter", service.url, "cat",
                                              "state.json"])
    assert ok(as_before_url) == "{}"
    assert error_line(fs(service, "cat", "/programs/x", "--as", "counter")) == \
        "thingssim fs: /programs/x: No such file or directory"  # its own view
    assert fs(service, "ls", "--as", "bad/name").exit_code == 2
    ok(fs(service, "rm", "-r", "/programs/counter"))
    # a service that never ran: a timeout, in one line
    started = time.monotonic()
    line = error_line(fs(service, "ls", "--service", "nobody", "--timeout", "0.3"))
    assert line == ("thingssim fs: no answer from the GFS service 'nobody' within 0.3 s (is "
                    "`thingssim gfs --id nobody` running on this broker?)")
    assert time.monotonic() - started < 10
    # a service that stopped: said at once, from its retained state
    other = Service(broker.url, tmp_path / "other.db", tmp_path / "other.log", "other",
                    cli=True)
    other.start_and_wait()
    assert ok(fs(service, "mkdir", "/x", "--service", "other")) == ""
    assert other.stop() == 0
    started = time.monotonic()
    line = error_line(fs(service, "ls", "--service", "other"))
    assert line == ("thingssim fs: the GFS service 'other' is not running (its state on the "
                    "broker: stopped)")
    assert time.monotonic() - started < 10  # not the 30 s timeout
    other.start_and_wait()  # the same database: what it had is there
    assert ok(fs(service, "ls", "--service", "other")).split() == [
        "apps", "codes", "programs", "shared", "x"]
    assert other.stop() == 0


@mqtt_fixtures.needs_mosquitto("amqtt publishes a killed client's retained will but does "
                               "not keep it retained")
def test_a_killed_service_is_reported_at_once_from_its_will(service, broker, tmp_path) -> None:
    other = Service(broker.url, tmp_path / "killed.db", tmp_path / "killed.log", "killed",
                    cli=True)
    other.start_and_wait()
    other.proc.send_signal(signal.SIGKILL)  # the will: dead
    other.proc.wait(10)
    wait_for_state(broker.url, "killed", "dead")
    started = time.monotonic()
    assert error_line(fs(service, "ls", "--service", "killed")) == (
        "thingssim fs: the GFS service 'killed' is not running (its state on the broker: "
        "dead)")
    assert time.monotonic() - started < 10


def test_real_processes_pipes_and_exit_codes(service, tmp_path) -> None:
    data = bytes(range(256)) * 3000
    command = [sys.executable, "-m", "thingssim.cli", "fs", service.url]
    put = subprocess.run([*command, "put", "-", "/piped.bin"], input=data,
                         capture_output=True, env=ENV, timeout=60)
    assert put.returncode == 0 and put.stdout.endswith(b"(768,000 bytes)\n"), put.stderr
    get = subprocess.run([*command, "get", "/piped.bin", "-"], capture_output=True, env=ENV,
                         timeout=60)
    assert get.returncode == 0 and get.stdout == data and get.stderr == b""
    missing = subprocess.run([*command, "cat", "/missing"], capture_output=True, env=ENV,
                             timeout=60)
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        1, b"", b"thingssim fs: /missing: No such file or directory\n")
    ok(fs(service, "rm", "/piped.bin"))


def test_gfs_refuses_bad_options_before_connecting(tmp_path) -> None:
    url = "mqtt://127.0.0.1:1"  # nothing listens: the errors must come first
    runner = CliRunner()

    def gfs(*args: str):
        return runner.invoke(main, ["gfs", "--broker", url, *args])

    for args, words in [((), "give --db PATH"),
                        (("--db", "a.db", "--postgres", "dbname=x"), "one of them"),
                        (("--db", "a.db", "--grant", "nonsense"), "--grant"),
                        (("--db", "a.db", "--grant", "x:/a:/:rw"), "--grant"),
                        (("--db", "a.db", "--id", "a/b"), "--id"),
                        (("--db", "a.db", "--keepalive", "0"), "--keepalive")]:
        result = gfs(*args)
        assert result.exit_code == 2 and words in result.stderr, (args, result.stderr)
    bad_url = runner.invoke(main, ["gfs", "--broker", "mqtt://h:99999", "--db", "a.db"])
    assert bad_url.exit_code == 2 and "--broker" in bad_url.stderr
    folder = gfs("--db", str(tmp_path))
    assert (folder.exit_code, folder.stderr) == (
        1, f"error: --db {tmp_path}: is a directory, not a database file\n")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not SQLite" * 100)
    bad_db = gfs("--db", str(garbage))
    assert bad_db.exit_code == 1 and bad_db.stderr.startswith(
        f"error: --db {garbage}: not a usable SQLite database")
    no_ca = gfs("--db", str(tmp_path / "g.db"), "--ca-certs", str(tmp_path / "ca.pem"))
    assert (no_ca.exit_code, no_ca.stderr) == (
        1, f"error: --ca-certs: no such file {tmp_path / 'ca.pem'}\n")
    # the board's way (runtime only): the same checks, argparse's usage errors
    module = [sys.executable, "-m", "runtime.gfs.server", "--broker", url]
    usage = subprocess.run(module, capture_output=True, env=ENV, timeout=60)
    assert usage.returncode == 2 and b"--db" in usage.stderr
    bad = subprocess.run([*module, "--db", str(tmp_path)], capture_output=True, env=ENV,
                         timeout=60)
    assert (bad.returncode, bad.stderr.decode()) == (
        1, f"error: --db {tmp_path}: is a directory, not a database file\n")


def test_on_postgresql(broker, pg_server, tmp_path) -> None:
    schema_free = pg_server.dsn  # the service uses schema "gfs" of this database
    gfs = Service(broker.url, tmp_path / "unused", tmp_path / "pg.log", "pg", cli=True,
                  storage=["--postgres", schema_free])
    gfs.start_and_wait()
    try:
        data = bytes(range(256)) * 2048 + b"tail"
        local = tmp_path / "f.bin"
        local.write_bytes(data)
        assert ok(fs(gfs, "put", str(local), "/codes/f.bin", "--service", "pg")).endswith(
            f"({len(data):,} bytes)\n")
        assert fs(gfs, "cat", "/codes/f.bin", "--service", "pg").stdout_bytes == data
        assert "postgres" in Path(gfs.log).read_text()
        ok(fs(gfs, "rm", "/codes/f.bin", "--service", "pg"))
    finally:
        assert gfs.stop() == 0, gfs.log.read_text()[-2000:]
