"""No user mistake ends in a traceback or a hang (issue 8).

Each case runs the exact command a user typed and checks the exit code (1: a user
error, 2: bad options) and that stderr ends in one line naming what is at fault.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import PROGRAMS
from mqtt_fixtures import broker  # noqa: F401

from thingssim.cli import main

ROOT = Path(__file__).resolve().parent.parent
COUNTER = PROGRAMS / "counter.py"


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def last_line(err: str) -> str:
    """The one line a user error ends in, without click's ``Error: ``."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    return line.removeprefix("Error: ")


def user_error(*args: object) -> str:
    code, _, err = cli(*args)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err  # one line, nothing else
    return last_line(err)


def bad_option(*args: object) -> str:
    code, _, err = cli(*args)
    assert code == 2, err
    return last_line(err)


def toml(tmp: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp / name
    path.write_text("duration = 1\n" + text)
    return path


# ---------------------------------------------------------------- run / snapshot / restore

@pytest.mark.parametrize("command", [["run", "missing.py"],
                                     ["snapshot", "missing.py", "--after", "1", "-o", "x.json"],
                                     ["restore", "missing.json", "--for", "1"]])
def test_missing_input_file_is_a_user_error(command):
    assert user_error(*command) == f"{command[1]}: no such file"


def test_a_directory_as_program(tmp_path):
    assert user_error("run", tmp_path) == f"{tmp_path}: is a directory, not a file"


@pytest.mark.parametrize(("command", "option"), [
    (["run", COUNTER, "--for", "nan", "--virtual"], "--for"),
    (["run", COUNTER, "--for", "inf", "--virtual"], "--for"),
    (["snapshot", COUNTER, "--after", "nan", "-o", "a.json"], "--after"),
    (["snapshot", COUNTER, "--after", "-1", "-o", "a.json"], "--after"),
    (["restore", "a.json", "--after", "inf", "-o", "b.json"], "--after"),
])
def test_nan_inf_and_negative_times_are_bad_options(command, option):
    """`--for nan` used to spin at 100% CPU forever."""
    message = bad_option(*command)
    assert message.startswith(f"Invalid value for '{option}'")
    assert "not a finite number" in message or "not in the range x>=0" in message


def test_snapshot_output_directory_is_checked_before_running(tmp_path):
    out = tmp_path / "nowhere" / "a.json"
    assert user_error("snapshot", COUNTER, "--after", "1", "-o", out, "--virtual") == \
        f"-o {out}: no directory {out.parent}"


def test_corrupt_snapshot_names_the_file(tmp_path):
    snap = tmp_path / "s.json"
    snap.write_text("{not json")
    assert user_error("restore", snap, "--for", "1").startswith(f"{snap}: not a snapshot")


def test_output_piped_into_head_ends_quietly(tmp_path):
    """`thingssim run P --for 10 | head` used to report the program as crashed."""
    spam = tmp_path / "spam.py"
    spam.write_text("things.set_interval(lambda: print('x' * 100), 0.001)\n")
    for virtual in (["--virtual"], []):
        run = subprocess.Popen([sys.executable, "-m", "thingssim.cli", "run", str(spam),
                                "--for", "10", *virtual], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT)
        assert run.stdout.readline() == b"x" * 100 + b"\n"
        run.stdout.close()  # what head does after its lines
        err = run.stderr.read().decode()
        assert run.wait(timeout=30) == 1 and err == "", err  # like click on a closed pipe


def test_snapshot_is_still_written_when_the_console_pipe_closes(tmp_path):
    spam = tmp_path / "spam.py"
    spam.write_text("things.set_interval(lambda: print('x' * 100), 0.001)\n")
    out = tmp_path / "s.json"
    snap = subprocess.Popen([sys.executable, "-m", "thingssim.cli", "snapshot", str(spam),
                             "--after", "2", "-o", str(out), "--virtual"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    snap.stdout.readline()
    snap.stdout.close()
    err = snap.stderr.read().decode()
    assert snap.wait(timeout=30) == 0, err
    assert err.startswith("snapshot of spam.py.") and out.is_file()


# ---------------------------------------------------------------- sim

def test_sim_board_key_typo_suggests_the_key(tmp_path):
    path = toml(tmp_path, '[[boards]]\nname = "a"\nprofle = "beaglebone-black"\n')
    message = user_error("sim", path)
    assert message.startswith(f"{path}: [[boards]] 'a': unknown key(s) profle "
                              "(did you mean 'profile'?); known: ")
    assert "profile" in message.split("known: ")[1].split(", ")


def test_sim_unknown_profile_lists_the_known_ones(tmp_path):
    path = toml(tmp_path, '[[boards]]\nname = "a"\nprofile = "cray-1"\n')
    assert user_error("sim", path) == (
        f"{path}: [[boards]] 'a': unknown profile 'cray-1'; known profiles: "
        "beaglebone-black, desktop-vm, pocketbeagle, raspberry-pi-3, raspberry-pi-zero")


def test_sim_program_with_a_syntax_error_fails_before_running(tmp_path):
    (tmp_path / "bad.py").write_text("x = 1\ny = (\n")
    path = toml(tmp_path, '[[boards]]\nname = "a"\n[[programs]]\nname = "p"\n'
                'file = "bad.py"\nboard = "a"\n')
    assert user_error("sim", path, "--no-progress") == \
        f"{path}: [[programs]] 'p': {tmp_path / 'bad.py'}:2: syntax error: '(' was never closed"


def test_sim_unwritable_out_is_checked_before_running(tmp_path):
    path = toml(tmp_path, '[[boards]]\nname = "a"\n')
    code, out, err = cli("sim", path, "--out", "/proc/nope", "--no-progress")
    assert code == 1 and out == ""  # nothing ran, no summary
    assert last_line(err) == "--out /proc/nope: cannot create the directory " \
        "(No such file or directory)"


@pytest.mark.parametrize(("text", "message"), [
    ("", "no such file"),
    ("duration = nan\n", "duration must be a finite number > 0, not nan"),
    ('[[boards]]\nname = "a"\ncount = 0\n', "[[boards]] 'a': count must be an integer >= 1"),
    ('[[boards]]\nname = "a/b"\n', "[[boards]] 'a/b': board name must be a non-empty"),
    ('[[boards]]\nname = "a"\nloss = 2.0\n', "loss must be in [0, 1), got 2.0"),
    ('[broker]\nservice_tim = 1\n', "[broker]: unknown key(s) service_tim (did you mean "
                                   "'service_time'?)"),
    ('[dispatcher]\nprofile = "vax"\n', "[dispatcher]: unknown profile 'vax'"),
    ('[[boards]]\nname = "a"\n[[actions]]\ntype = "kill"\nprogram = "p"\n',
     "every entry of [[actions]] needs 'at'"),
    ('[[boards]]\nname = "a"\n[[faults]]\nat = -1\ntype = "crash"\nboard = "a"\n',
     "[[faults]] entry 1: at must be a finite number >= 0, not -1"),
    ("boards = 3\n", "'boards' must be an array of tables ([[boards]])"),
])
def test_sim_bad_values_are_named(tmp_path, text, message):
    path = tmp_path / "s.toml"
    if text:
        path.write_text(text if text.startswith("duration") else "duration = 1\n" + text)
    got = user_error("sim", path)
    assert got.startswith(f"{path}: ") and message in got, got


# ---------------------------------------------------------------- worker config

@pytest.mark.parametrize(("config", "message"), [
    ({"pubsub_url": "http://127.0.0.1:1883", "id": "w1"},
     "pubsub_url: unsupported broker URL scheme 'http' in 'http://127.0.0.1:1883': use "
     "mqtt://host[:port] or mqtts://host[:port]"),
    ({"pubsub_url": "mqtt://127.0.0.1:99999", "id": "w1"},
     "pubsub_url: bad port in broker URL 'mqtt://127.0.0.1:99999': it must be 1-65535"),
    ({"pubsub_url": "mqtts://127.0.0.1", "id": "w1", "tls": {"ca_certs": "ca.pem"}},
     "tls.ca_certs: no such file ca.pem"),
    ({"pubsub_url": "mqtts://127.0.0.1", "id": "w1", "tls": "yes"},
     "tls must be an object with some of ca_certs, certfile, keyfile, insecure (e.g. "
     '{"ca_certs": "/etc/ssl/certs/broker-ca.pem"}), not \'yes\''),
    ({"pubsub_url": "mqtt://127.0.0.1", "idd": "w1", "id": "w1"},
     "unknown key(s) idd (did you mean 'id'?); known: capabilities, cores, device, fence_s, id, "
     "isolate, "
     "keepalive, lease_s, max_callback_s, memory_limit, migrate_peers, on_shutdown, "
     "password, program_memory_limit_mb, program_qos, pubsub_url, request_timeout, "
     "resource_period, "
     "snapshot_key, state_dir, tls, username"),
    ({"pubsub_url": "mqtt://127.0.0.1", "id": "w1", "isolate": "no"},
     "isolate must be true or false, not 'no'"),
    ({"pubsub_url": "mqtt://127.0.0.1", "id": "w1", "max_callback_s": -1},
     "max_callback_s must be a positive number or null, not -1"),
])
def test_worker_bad_config_is_one_line_exit_1(tmp_path, config, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(config))
    code, _, err = cli("worker", path)
    assert code == 1, err
    assert err == f"error: {path}: {message}\n"


def test_worker_missing_config_file(tmp_path):
    code, _, err = cli("worker", tmp_path / "w.json")
    assert (code, err) == (1, f"error: {tmp_path / 'w.json'}: no such file\n")


# ---------------------------------------------------------------- hand-edited snapshots

@pytest.mark.parametrize(("edit", "message"), [
    ({"status": "Sleeping"}, "corrupt snapshot: status must be 'Running' or 'Paused', "
                             "not 'Sleeping'"),
    ({"time": -5}, "corrupt snapshot: time (the program clock) must be a finite number "
                   ">= 0, not -5"),
    ({"loop": {"next_seq": "7", "next_timer_id": 2}},
     "corrupt snapshot: loop.next_seq must be an integer >= 0, not '7'"),
])
def test_hand_edited_snapshot_is_rejected(tmp_path, edit, message):
    snap = tmp_path / "s.json"
    assert cli("snapshot", COUNTER, "--after", "0.35", "-o", snap, "--virtual")[0] == 0
    snap.write_text(json.dumps({**json.loads(snap.read_text()), **edit}))
    assert user_error("restore", snap, "--for", "1", "--virtual") == f"{snap}: {message}"


# ---------------------------------------------------------------- dispatch

@pytest.mark.parametrize(("args", "message"), [
    (["migrate", "counter.py.1", "w2", "w3"],
     "usage: migrate INSTANCE_ID TARGET_ENGINE (got 3 arguments: counter.py.1 w2 w3)"),
    (["status", "--bogus"], "usage: status (got 1 argument: --bogus)"),
    (["kill"], "usage: kill INSTANCE_ID (got 0 arguments)"),
])
def test_dispatch_wrong_arguments_are_usage_errors_before_connecting(args, message):
    # port 1: nothing listens there, and nothing needs to (checked before connecting)
    assert bad_option("dispatch", "mqtt://127.0.0.1:1", *args) == message


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:1883", "unsupported broker URL scheme 'http'"),
    ("mqtt://127.0.0.1:99999", "bad port in broker URL 'mqtt://127.0.0.1:99999'"),
])
def test_dispatch_and_shell_check_the_broker_url(url, message):
    for command in (["dispatch", url, "status"], ["shell", url]):
        got = bad_option(*command)
        assert got.startswith("Invalid value for 'URL': ") and message in got


def test_dispatch_run_with_a_missing_file(tmp_path):
    assert user_error("dispatch", "mqtt://127.0.0.1:1", "run", "w1", tmp_path / "p.py") == \
        f"{tmp_path / 'p.py'}: no such file"


def test_dispatch_prints_readable_text(broker, tmp_path):  # noqa: F811
    """Text for people (tables, sentences), JSON with --json: never Python reprs."""
    program = ROOT / "experiments" / "scenarios" / "programs" / "counter.py"  # forever
    procs = []
    try:
        for wid in ("w1", "w2", "w3"):
            config = tmp_path / f"{wid}.json"
            config.write_text(json.dumps({"pubsub_url": broker.url, "id": wid,
                                          "isolate": False, "keepalive": 2,
                                          "snapshot_key": "fleet-secret"}))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "runtime.worker", str(config)], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(40):
            code, out, _ = cli("dispatch", broker.url, "status", "--json")
            if code == 0 and len(json.loads(out)["engines"]) == 3:
                break
        else:
            pytest.fail("the workers did not register")

        code, out, err = cli("dispatch", broker.url, "run", "w1", program)
        assert code == 0, err
        found = re.fullmatch(r"(counter\.py\.\w+) \(counter\.py\) is Running on w1\n", out)
        assert found, out
        iid = found.group(1)

        code, out, err = cli("dispatch", broker.url, "status")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "engines:" and lines[1].split() == ["id", "status", "device",
                                                               "programs"]
        assert set(lines[2]) <= {"-", " "}  # tabulate's rule under the header
        assert any(line.split()[:2] == [iid, "counter.py"] for line in lines)
        assert "{" not in out and "[" not in out

        code, out, err = cli("dispatch", broker.url, "migrate", iid, "w2")
        assert code == 0, err
        assert re.fullmatch(rf"{re.escape(iid)} moved from w1 to w2 \(Running\) in [\d.]+ s: "
                            r"snapshot [\d.]+ s \([\d,]+ bytes\), transfer [\d.]+ s, "
                            r"restore [\d.]+ s, commit [\d.]+ s\n", out), out

        code, out, err = cli("dispatch", broker.url, "spawn", iid, "w3")
        assert code == 0, err
        header, rule, row = out.splitlines()
        columns = header.split()
        assert columns[:4] == ["engine", "id", "code_name", "status"], out
        assert set(rule) <= {"-", " "} and len(row.split()) == len(columns), out
        assert row.split()[0] == "w3" and row.split()[3] == "Running", out

        code, out, err = cli("dispatch", broker.url, "pause", iid, "--json")
        assert code == 0 and json.loads(out) == "Paused", err
        code, out, err = cli("dispatch", broker.url, "kill", iid)
        assert code == 0 and out.startswith(f"{iid}: "), err
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


# ---------------------------------------------------------------- broker

@pytest.mark.parametrize("kind", [[], ["--amqtt"]])
def test_broker_on_a_busy_port_is_one_line(broker, kind):  # noqa: F811
    """amqtt used to print its own traceback, Mosquitto its log."""
    assert user_error("broker", "--port", broker.port, *kind) == \
        f"port {broker.port} on 127.0.0.1 is already in use (another broker?): stop it, " \
        "or choose another --port"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs Linux /proc to find the broker's child process")
    return [int(child) for child in path.read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigterm_stops_the_broker_and_its_child():
    """SIGTERM to `thingssim broker` used to leave Mosquitto running on the port."""
    from mqtt_fixtures import require_broker

    require_broker()
    proc = subprocess.Popen([sys.executable, "-m", "thingssim.cli", "broker", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        line = proc.stdout.readline()
        found = re.search(r"listening on mqtt://127\.0\.0\.1:(\d+)", line)
        assert found, line + proc.stderr.read()
        port = int(found.group(1))
        children = _children(proc.pid)
        assert children, "the broker runs as a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == "stopping\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(_alive(child) for child in children)
    with socket.socket() as probe:  # nothing listens on the port any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
