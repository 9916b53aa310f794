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


def provision(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEPLOY / "provision.sh"), *args, "--dry-run"],
                          capture_output=True, text=True, timeout=30)


def written_config(text: str) -> dict:
    """The worker.json a dry run shows (``+ write /etc/thingssim/worker.json (...): {...}``)."""
    start = text.index("+ write /etc/thingssim/worker.json")
    config, _ = json.JSONDecoder().raw_decode(text, text.index("{", start))
    return config


def test_provision_dry_run_writes_a_valid_worker_config(tmp_path):
    key_file = tmp_path / "fleet.key"
    out = provision("--broker", "mqtt://10.0.0.5:1883", "--id", "bbb-1", "--device",
                    "beaglebone-black", "--username", "bbb-1", "--password", "s3cret",
                    "--snapshot-key-file", str(key_file))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    parsed = WorkerConfig.from_dict(written_config(text))
    assert (parsed.id, parsed.username, parsed.on_shutdown) == ("bbb-1", "bbb-1", "migrate")
    assert "systemctl enable --now thingssim-worker" in text
    assert "/opt/thingssim/bin/pip install" in text
    # signing on by default: a new random fleet key (256 bits), the config readable by the
    # worker's user only; a dry run writes nothing
    assert re.fullmatch(r"[0-9a-f]{64}", parsed.snapshot_key)
    assert parsed.accepted_migrate_peers() is None  # signatures authenticate the sender
    assert f"+ write {key_file} (a new fleet snapshot key, mode 0600)" in text
    assert "worker.json (mode 0600, owner thingssim)" in text
    assert not key_file.exists()
    again = WorkerConfig.from_dict(written_config(provision(
        "--broker", "mqtt://h", "--id", "a", "--snapshot-key-file", str(key_file)).stdout))
    assert again.snapshot_key != parsed.snapshot_key  # random


def test_provision_uses_the_fleet_key_file(tmp_path):
    key_file = tmp_path / "fleet.key"
    key_file.write_text("ab" * 32 + "\n")
    out = provision("--broker", "mqtt://h", "--id", "pi-2", "--snapshot-key-file", str(key_file),
                    "--migrate-peers", "bbb-1,pi-3")
    assert out.returncode == 0, out.stderr
    config = WorkerConfig.from_dict(written_config(out.stdout))
    assert config.snapshot_key == "ab" * 32 and "new fleet snapshot key" not in out.stdout
    assert config.accepted_migrate_peers() == ["bbb-1", "pi-3"]
    key_file.write_text("too short\n")
    out = provision("--broker", "mqtt://h", "--id", "pi-2", "--snapshot-key-file", str(key_file))
    assert out.returncode == 1 and "at least 32 characters" in out.stderr


def test_provision_without_signing_refuses_migrations_unless_peers_are_named(tmp_path):
    out = provision("--broker", "mqtt://h", "--id", "a", "--no-snapshot-key")
    assert out.returncode == 0, out.stderr
    config = WorkerConfig.from_dict(written_config(out.stdout))
    assert config.snapshot_key is None and config.migrate_peers == []
    assert config.accepted_migrate_peers() == []
    assert "refuses every migration" in out.stderr and "fleet.key" not in out.stdout
    out = provision("--broker", "mqtt://h", "--id", "a", "--no-snapshot-key",
                    "--migrate-peers", "w2,w3")
    config = WorkerConfig.from_dict(written_config(out.stdout))
    assert config.snapshot_key is None and config.accepted_migrate_peers() == ["w2", "w3"]


def test_who_a_worker_accepts_migrations_from():
    def peers(**config):
        return WorkerConfig.from_dict({"pubsub_url": "mqtt://h", "id": "a", **config}) \
            .accepted_migrate_peers()

    assert peers() == []  # no key, no peers named: an unsigned snapshot could be anything
    assert peers(migrate_peers=["w2"]) == ["w2"]
    assert peers(snapshot_key="k" * 64) is None  # any engine holding the fleet's key
    assert peers(snapshot_key="k" * 64, migrate_peers=["w2"]) == ["w2"]


@pytest.mark.parametrize(("args", "message"), [
    ([], "--broker and --id are required"),
    (["--broker", "mqtt://x", "--id", "a/b"], "must not contain"),
    (["--frobnicate"], "unknown option"),
    (["--broker", "mqtt://x", "--id", "a", "--migrate-peers", "w2,a/b"],
     "--migrate-peers is a comma-separated list of engine ids"),
])
def test_provision_rejects_bad_arguments(args, message):
    out = provision(*args)
    assert out.returncode != 0 and message in out.stderr


def test_shipped_example_config_and_unit_are_consistent():
    example = WorkerConfig.from_dict(json.loads((DEPLOY / "worker.example.json").read_text()))
    assert example.device == "beaglebone-black"
    unit = (DEPLOY / "thingssim-worker.service").read_text()
    assert "ExecStart=/opt/thingssim/bin/python -m runtime.worker /etc/thingssim/worker.json" \
        in unit and "KillSignal=SIGTERM" in unit
    acl = (DEPLOY / "mosquitto-thingssim.acl").read_text()
    assert "pattern read %u/cmd" in acl and "write +/cmd" not in acl
    # migration steps: only as oneself (the target learns who is asking from the topic)
    rules = sorted(line.strip() for line in acl.splitlines()
                   if "migrate" in line and not line.startswith("#"))
    assert rules == ["pattern read %u/migrate/+", "pattern write +/migrate/%u"]


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
