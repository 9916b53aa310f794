"""The broker tests on a machine without Mosquitto: each passes (on amqtt) or skips with
one line naming what to install -- never fails.

Mosquitto is really hidden, not just left off PATH (``thingssim.broker`` also looks in
``/usr/sbin`` and friends): pytest runs in a private mount namespace (``unshare``) where
an empty, non-executable file is bind-mounted over every ``mosquitto*`` program, so
neither this code, the workers it starts, nor ``shutil.which`` can find or run them.

The subset, to keep this near 20 s: all of test_mqtt_transport.py (the transport on
amqtt, and every kind of Mosquitto-only skip: overlapping subscriptions, keepalive,
offline queues, persistence, passwords and ACLs), one real-worker scenario plus the two
real-worker tests that need Mosquitto (persistence, its command-line clients), and the
ACL test of test_worker_hardening.py (a plain skipif).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from thingssim import broker as broker_mod

ROOT = Path(__file__).resolve().parent.parent
SUBSET = ["tests/test_mqtt_transport.py",
          "tests/test_real_workers.py::test_run_pause_resume_migrate_spawn_kill_across_"
          "worker_processes",
          "tests/test_real_workers.py::test_broker_restart_reconnects_everyone_and_no_"
          "command_is_lost_or_repeated",
          "tests/test_real_workers.py::test_interoperability_with_mosquitto_command_line_"
          "clients",
          "tests/test_worker_hardening.py::test_authentication_and_the_shipped_acl"]
#: what amqtt serves: these must pass, not skip
MUST_PASS = ["test_engines_and_dispatcher_on_real_mqtt_migrate_a_counter[thread]",
             "test_tls[asyncio]", "test_will_published_when_a_client_process_is_killed",
             "test_retained_messages_on_subscribe_go_to_the_new_handler_only[thread-#]",
             "test_run_pause_resume_migrate_spawn_kill_across_worker_processes"]
#: what only Mosquitto does: these must skip, saying so
MUST_SKIP = ["test_will_published_when_a_client_process_is_frozen",
             "test_wildcards_several_handlers_each_once_on_the_loop_thread[thread]",
             "test_fresh_session_drops_what_an_earlier_life_left",
             "test_broker_restart_reconnects_everyone_and_no_command_is_lost_or_repeated",
             "test_authentication_and_the_shipped_acl"]


def _mosquitto_programs() -> list[str]:
    """Every mosquitto* program where a shell or thingssim.broker would look."""
    folders = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    found: dict[Path, None] = {}
    for folder in [*folders, *broker_mod._SBIN]:
        for path in sorted(Path(folder).glob("mosquitto*")):
            if path.is_file():
                found[path.resolve()] = None
                found[path] = None
    return [str(p) for p in found]


def _namespace_command() -> list[str] | None:
    """``unshare`` with a private mount namespace (as root, or in a user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for command in ([unshare, "-m"], [unshare, "-r", "-m"]):
        probe = subprocess.run([*command, "true"], capture_output=True)
        if probe.returncode == 0:
            return command
    return None


def test_broker_tests_pass_or_skip_with_a_reason_without_mosquitto(tmp_path):
    if not broker_mod.amqtt_available():
        pytest.skip("needs amqtt, the fallback broker (pip install amqtt)")
    report = tmp_path / "report.xml"
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  f"--basetemp={tmp_path / 'inner'}", f"--junitxml={report}", *SUBSET]
    check = ("import sys; from thingssim.broker import find_mosquitto as f; "
             "sys.exit(3 if f() or f('mosquitto_pub') else 0)")
    programs = _mosquitto_programs()
    if programs:
        namespace = _namespace_command()
        if namespace is None:
            pytest.skip("hiding Mosquitto needs a private mount namespace: unshare(1) "
                        "(util-linux), as root or with unprivileged user namespaces")
        empty = tmp_path / "not-mosquitto"
        empty.write_text("")
        empty.chmod(0o644)  # not executable, even for root
        script = "set -e\n" + "".join(
            f"mount --bind {shlex.quote(str(empty))} {shlex.quote(p)}\n" for p in programs)
        script += (f"{shlex.join([sys.executable, '-c', check])}\n"
                   f"exec {shlex.join(pytest_cmd)}\n")
        command = [*namespace, "sh", "-c", script]
    else:  # a machine without Mosquitto already
        command = pytest_cmd
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode != 3, "Mosquitto was still found: " + output
    assert report.exists(), output

    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kind, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind, message = child.tag, child.get("message", "")
        outcomes[case.get("name")] = (kind, message)
    failed = {n: m for n, (k, m) in outcomes.items() if k in ("failure", "error")}
    assert not failed, f"failed without Mosquitto: {sorted(failed)}\n{output}"
    assert done.returncode == 0, output
    for name, (kind, message) in outcomes.items():
        if kind == "skipped":  # one line naming what to install
            assert "install" in message and "\n" not in message.strip(), (name, message)
    assert all(outcomes.get(n, ("missing",))[0] == "passed" for n in MUST_PASS), outcomes
    for name in MUST_SKIP:
        kind, message = outcomes.get(name, ("missing", ""))
        assert kind == "skipped" and "needs Mosquitto" in message, (name, kind, message)
