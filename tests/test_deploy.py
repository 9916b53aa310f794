"""Deployment files and worker configs: what a user touches when setting up boards."""

from __future__ import annotations

import json
import re
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
    ({"pubsub_url": "http://h:1883", "id": "a"}, "unsupported broker URL scheme 'http'"),
    ({"pubsub_url": "mqtt://h:99999", "id": "a"}, "bad port in broker URL"),
    ({"pubsub_url": "mqtt://h", "idd": "a", "id": "a"},
     "unknown key(s) idd (did you mean 'id'?)"),
    ({"pubsub_url": "mqtt://h", "id": "a", "isolate": "no"},
     "isolate must be true or false, not 'no'"),
    ({"pubsub_url": "mqtt://h", "id": "a", "max_callback_s": -1},
     "max_callback_s must be a positive number or null, not -1"),
    ({"pubsub_url": "mqtt://h", "id": "a", "keepalive": float("nan")}, "not nan"),
    ({"pubsub_url": "mqtt://h", "id": "a", "tls": "yes"}, "tls must be an object"),
    ({"pubsub_url": "mqtt://h", "id": "a", "tls": {"ca_certs": "/nonexistent/ca.pem"}},
     "tls.ca_certs: no such file /nonexistent/ca.pem"),
    ({"pubsub_url": "mqtt://h", "id": "a", "tls": {"ca_cert": "x"}}, "unknown tls key(s)"),
    ({"pubsub_url": "mqtt://h", "id": "a", "snapshot_key": 1}, "snapshot_key must be a"),
    ({"pubsub_url": "mqtt://h", "id": "a", "migrate_peers": "w2"},
     "migrate_peers must be a list of engine ids"),
    ({"pubsub_url": "mqtt://h", "id": "a", "migrate_peers": ["w2", "x/y"]},
     "migrate_peers must be a non-empty string without"),
])
def test_bad_worker_configs_are_one_line_errors(config, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        WorkerConfig.from_dict(config)


def test_worker_command_reports_a_bad_config_without_a_traceback(tmp_path):
    bad = tmp_path / "w.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "runtime.worker", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "not valid JSON" in out.stderr
    assert "Traceback" not in out.stderr


def test_good_config_values_are_kept(tmp_path):
    config = WorkerConfig.from_dict({"pubsub_url": "mqtts://h:8883", "id": "a",
                                     "migrate_peers": ["w2", "w3"], "snapshot_key": "s3",
                                     "resource_period": None, "isolate": False})
    assert config.migrate_peers == ["w2", "w3"] and config.snapshot_key == "s3"
    assert WorkerConfig.from_dict({"pubsub_url": "mqtt://h", "id": "a"}).migrate_peers \
        is None


def test_tls_files_must_load(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"tls.ca_certs {junk}: not a PEM certificate"):
        WorkerConfig.from_dict({"pubsub_url": "mqtts://h", "id": "a",
                                "tls": {"ca_certs": str(junk)}})
    with pytest.raises(ConfigError, match="tls.certfile .* not a PEM certificate and its "
                                          "private key"):
        WorkerConfig.from_dict({"pubsub_url": "mqtts://h", "id": "a",
                                "tls": {"certfile": str(junk)}})
