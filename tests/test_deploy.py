"""Deployment files and worker configs: what a user touches when setting up boards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.worker import ConfigError, WorkerConfig

DEPLOY = Path(__file__).resolve().parent.parent / "runtime" / "deploy"


def test_provision_dry_run_writes_a_valid_worker_config():
    out = subprocess.run(["bash", str(DEPLOY / "provision.sh"), "--broker",
                          "mqtt://10.0.0.5:1883", "--id", "bbb-1", "--device",
                          "beaglebone-black", "--username", "bbb-1", "--password", "s3cret",
                          "--dry-run"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    config = json.loads(text[text.index("worker.json: ") + len("worker.json: "):
                             text.index("}", text.index("worker.json: ")) + 1])
    parsed = WorkerConfig.from_dict(config)
    assert (parsed.id, parsed.username, parsed.on_shutdown) == ("bbb-1", "bbb-1", "migrate")
    assert "systemctl enable --now thingssim-worker" in text
    assert "/opt/thingssim/bin/pip install" in text


@pytest.mark.parametrize(("args", "message"), [
    ([], "--broker and --id are required"),
    (["--broker", "mqtt://x", "--id", "a/b"], "must not contain"),
    (["--frobnicate"], "unknown option"),
])
def test_provision_rejects_bad_arguments(args, message):
    out = subprocess.run(["bash", str(DEPLOY / "provision.sh"), *args, "--dry-run"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and message in out.stderr


def test_shipped_example_config_and_unit_are_consistent():
    example = WorkerConfig.from_dict(json.loads((DEPLOY / "worker.example.json").read_text()))
    assert example.device == "beaglebone-black"
    unit = (DEPLOY / "thingssim-worker.service").read_text()
    assert "ExecStart=/opt/thingssim/bin/python -m runtime.worker /etc/thingssim/worker.json" \
        in unit and "KillSignal=SIGTERM" in unit
    acl = (DEPLOY / "mosquitto-thingssim.acl").read_text()
    assert "pattern read %u/cmd" in acl and "write +/cmd" not in acl


@pytest.mark.parametrize(("config", "message"), [
    ({}, "missing pubsub_url, id"),
    ({"pubsub_url": "localhost", "id": "a"}, "mqtt://host:1883"),
    ({"pubsub_url": "mqtt://h", "id": "a/b"}, "without '/'"),
    ({"pubsub_url": "mqtt://h", "id": "a", "keepalive": -1}, "keepalive must be"),
    ({"pubsub_url": "mqtt://h", "id": "a", "on_shutdown": "explode"}, "on_shutdown"),
    ([1, 2], "JSON object"),
])
def test_bad_worker_configs_are_one_line_errors(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        WorkerConfig.from_dict(config)


def test_worker_command_reports_a_bad_config_without_a_traceback(tmp_path):
    bad = tmp_path / "w.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "runtime.worker", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    assert "Traceback" not in out.stderr
