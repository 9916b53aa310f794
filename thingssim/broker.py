"""Start an MQTT broker for users and tests: Mosquitto, or amqtt when it is missing.

    with start_broker() as broker:            # a free loopback port
        transport = MqttTransport(broker.url, client_id="e1")
        ...
        broker.restart()                      # same port: a broker outage

Mosquitto (``apt install mosquitto``) runs as a subprocess with a generated config file;
when it is not installed, amqtt (``pip install amqtt``) runs in a subprocess instead,
with the same :class:`BrokerHandle` API.  ``thingssim broker`` runs one in the
foreground.

``config`` keys:

- ``allow_anonymous`` (default: True unless a ``password_file`` is given);
- ``password_file``: Mosquitto's format (see :func:`make_password_file`);
- ``acl_file``: Mosquitto's ACL format;
- ``certfile``, ``keyfile`` (PEM): the listener speaks TLS (``mqtts://``);
- ``persistence`` (default False): sessions, queued QoS 1 and retained messages survive
  :meth:`BrokerHandle.restart` (Mosquitto saves them on a clean stop);
- ``max_queued_messages`` (Mosquitto's default 1000): QoS 1 kept per offline session;
- ``extra``: further Mosquitto config lines.

amqtt supports ``allow_anonymous``, ``certfile`` and ``keyfile`` (it ignores
``max_queued_messages``); the other keys (:data:`MOSQUITTO_ONLY`) raise
:class:`BrokerError`.  amqtt 0.12 also differs from Mosquitto where MQTT 3.1.1 leaves
brokers a choice or where it falls short: it sends a client one copy of a message per
matching subscription (Mosquitto: one per client), never disconnects a silent client
(so the will of a frozen one never comes), and, while anonymous clients are allowed
(every session then counts as anonymous), queues nothing for offline sessions.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["MOSQUITTO_ONLY", "BrokerError", "BrokerHandle", "broker_command",
           "find_mosquitto", "make_password_file", "start_broker"]

_CONFIG_KEYS = {"allow_anonymous", "password_file", "acl_file", "persistence",
                "max_queued_messages", "certfile", "keyfile", "extra"}
#: config keys only Mosquitto supports (the amqtt fallback refuses them)
MOSQUITTO_ONLY = ("password_file", "acl_file", "persistence", "extra")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/bin", "/usr/local/bin")
_LIVE: set[BrokerHandle] = set()


class BrokerError(RuntimeError):
    """A broker could not be started (or is not installed)."""


def find_mosquitto(name: str = "mosquitto") -> str | None:
    """Path of a Mosquitto executable (``/usr/sbin`` is often not on PATH), or None."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def amqtt_available() -> bool:
    return importlib.util.find_spec("amqtt") is not None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BrokerHandle:
    """A running broker: ``url``, ``host``, ``port``, ``kind``; ``stop()``, ``restart()``,
    ``kill()`` (SIGKILL: nothing is saved); a context manager that stops it."""

    def __init__(self, kind: str, host: str, port: int, config: dict) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.config = dict(config)
        self.dir = Path(tempfile.mkdtemp(prefix=f"thingssim-{kind}-"))
        self.log_path = self.dir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        return f"<BrokerHandle {self.kind} {self.url} {'running' if self.running else 'stopped'}>"

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ control
    def start(self, timeout: float = 10.0) -> BrokerHandle:
        if self.running:
            return self
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
        command = self._mosquitto_command() if self.kind == "mosquitto" else \
            self._amqtt_command()
        with open(self.log_path, "ab") as log_file:
            self._log_start = log_file.tell()
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, cwd=self.dir,
                                         start_new_session=True)
        _LIVE.add(self)
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = 5.0, *, keep_state: bool = False) -> None:
        """Stop cleanly (SIGTERM: Mosquitto saves its persistence file) and delete the
        broker's directory, unless ``keep_state``: then ``start()`` resumes from what the
        broker saved (sessions, queued QoS 1, retained messages), as ``restart()`` does."""
        self._stop_process(signal.SIGTERM, timeout)
        if keep_state:
            return
        _LIVE.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """Crash the broker (SIGKILL: nothing is saved); ``restart()`` brings it back."""
        self._stop_process(signal.SIGKILL, 5.0)

    def restart(self, down_for: float = 0.0, timeout: float = 10.0) -> BrokerHandle:
        """Stop (cleanly) and start again on the same port, after ``down_for`` seconds."""
        self._stop_process(signal.SIGTERM, 5.0)
        if down_for > 0:
            time.sleep(down_for)
        deadline = time.monotonic() + timeout
        while True:  # the port may linger for a moment after the old process
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _log_since_start(self) -> bytes:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_start)
                return log_file.read()
        except OSError:
            return b""

    def _stop_process(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _wait_ready(self, timeout: float) -> None:
        """Until the broker says it runs (its log) and its port accepts connections (a
        probe alone could reach some other program on that port)."""
        deadline = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        marker = b" running" if self.kind == "mosquitto" else b"amqtt broker started"
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise BrokerError(f"{self.kind} exited with code {code} before accepting "
                                  f"connections on {self.host}:{self.port}; its log:\n"
                                  f"{self.log_tail()}")
            if marker in self._log_since_start():
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.settimeout(0.2)
                    if probe.connect_ex((self.host, self.port)) == 0:
                        return
            if time.monotonic() > deadline:
                self._stop_process(signal.SIGKILL, 1.0)
                raise BrokerError(f"{self.kind} did not accept connections on "
                                  f"{self.host}:{self.port} within {timeout:g} s; its log:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.01)

    # ------------------------------------------------------------------ configs
    def _mosquitto_command(self) -> list[str]:
        cfg = self.config
        anonymous = cfg.get("allow_anonymous", not cfg.get("password_file"))
        lines = [f"listener {self.port} {self.host}",
                 f"allow_anonymous {'true' if anonymous else 'false'}",
                 "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice",
                 "log_type information",
                 f"max_queued_messages {int(cfg.get('max_queued_messages', 1000))}",
                 # Nagle on the broker's sockets holds back the second of two quick
                 # messages to a client for a delayed ACK (~40 ms on Linux)
                 "set_tcp_nodelay true"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else Mosquitto drops to 'mosquitto': no access here
        for key in ("password_file", "acl_file", "certfile", "keyfile"):
            if cfg.get(key):
                path = Path(cfg[key]).resolve()
                if not path.is_file():
                    raise BrokerError(f"{key} {path} does not exist")
                lines.append(f"{key} {path}")
        if cfg.get("persistence"):
            lines += ["persistence true", f"persistence_location {self.dir}{os.sep}",
                      "persistence_file mosquitto.db", "autosave_interval 0"]
        lines += [str(line) for line in cfg.get("extra", [])]
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [find_mosquitto() or "mosquitto", "-c", str(conf)]

    def _amqtt_command(self) -> list[str]:
        cfg = self.config
        unsupported = sorted(k for k in MOSQUITTO_ONLY if cfg.get(k))
        if unsupported:
            raise BrokerError(f"the amqtt fallback does not support {', '.join(unsupported)}; "
                              f"install Mosquitto (apt install mosquitto)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        listener: dict[str, Any] = {"type": "tcp", "bind": f"{host}:{self.port}"}
        if cfg.get("certfile") or cfg.get("keyfile"):
            for key in ("certfile", "keyfile"):
                path = Path(cfg.get(key) or "").resolve()
                if not cfg.get(key) or not path.is_file():
                    raise BrokerError(f"{key} {cfg.get(key)!r} does not exist")
                listener[key] = str(path)
            listener["ssl"] = True
        amqtt_config = {
            "listeners": {"default": listener},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": bool(cfg.get("allow_anonymous", True))}},
        }
        return [sys.executable, "-c", _AMQTT_MAIN, json.dumps(amqtt_config)]


_AMQTT_MAIN = """
import asyncio, json, logging, sys
from amqtt.broker import Broker
logging.basicConfig(level=logging.WARNING)
async def main():
    broker = Broker(json.loads(sys.argv[1]))
    await broker.start()
    print('amqtt broker started', flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start_broker(port: int = 0, host: str = "127.0.0.1", *, config: dict | None = None,
                 prefer: str = "mosquitto", timeout: float = 10.0) -> BrokerHandle:
    """Start a broker on ``host:port`` (``port=0``: a free one) and wait until it accepts
    connections.  ``prefer``: ``"mosquitto"`` or ``"amqtt"``; the other is the fallback.
    Raises :class:`BrokerError` (with the broker's log) if neither can be started."""
    if prefer not in ("mosquitto", "amqtt"):
        raise ValueError(f"prefer must be 'mosquitto' or 'amqtt', got {prefer!r}")
    config = dict(config or {})
    unknown = set(config) - _CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown broker config key(s) {sorted(unknown)}; known: "
                         f"{', '.join(sorted(_CONFIG_KEYS))}")
    available = {"mosquitto": find_mosquitto() is not None, "amqtt": amqtt_available()}
    order = [prefer] + [k for k in ("mosquitto", "amqtt") if k != prefer]
    kind = next((k for k in order if available[k]), None)
    if kind is None:
        raise BrokerError("no MQTT broker available: install Mosquitto (apt install "
                          "mosquitto) or amqtt (pip install amqtt)")
    attempts = 3 if port == 0 else 1
    for attempt in range(attempts):
        handle = BrokerHandle(kind, host, port or free_port(host), config)
        try:
            return handle.start(timeout)
        except BrokerError as exc:
            shutil.rmtree(handle.dir, ignore_errors=True)
            _LIVE.discard(handle)
            # only a port taken between free_port() and the bind is worth another try
            if attempt == attempts - 1 or "already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def make_password_file(path: str | os.PathLike, users: dict[str, str]) -> Path:
    """Write a Mosquitto password file for ``{user: password}`` (``mosquitto_passwd -b``
    when installed, else the same PBKDF2-SHA512 ``$7$`` hashes computed here)."""
    path = Path(path)
    for user in users:
        if not user or ":" in user:
            raise ValueError(f"bad user name {user!r}: non-empty, without ':'")
    path.write_text("")
    tool = find_mosquitto("mosquitto_passwd")
    if tool is not None:
        for user, password in users.items():
            done = subprocess.run([tool, "-b", str(path), user, password],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed for {user!r}: "
                                  f"{(done.stderr or done.stdout).strip()}")
    else:
        lines = []
        for user, password in users.items():
            salt = os.urandom(12)
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
            lines.append(f"{user}:$7$101${base64.b64encode(salt).decode()}$"
                         f"{base64.b64encode(digest).decode()}")
        path.write_text("\n".join(lines) + "\n")
    with contextlib.suppress(OSError):
        path.chmod(0o600)
    return path


@atexit.register
def _stop_all() -> None:
    for handle in list(_LIVE):
        with contextlib.suppress(Exception):
            handle.stop(timeout=2.0)


def _in_use(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use (another broker?): stop it, or "
            "choose another --port")


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a broker could not listen on ``host:port`` (None: a test bind worked), so the
    user gets one line instead of the broker's own log or traceback."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"--host {host}: not an address to listen on ({exc.strerror})"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the brokers do: connections in TIME_WAIT do not block a new listener
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return _in_use(host, port)
            return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


@click.command("broker")
@click.option("--port", type=click.IntRange(0, 65535), default=1883, show_default=True,
              help="TCP port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--amqtt", "use_amqtt", is_flag=True,
              help="Use the embedded amqtt broker even if Mosquitto is installed.")
def broker_command(port: int, host: str, use_amqtt: bool) -> None:
    """Run an MQTT broker in the foreground until Ctrl-C (or SIGTERM), printing its URL."""
    problem = _cannot_listen(host, port)
    if problem:
        raise click.ClickException(problem)
    # SIGTERM (kill, systemd, a test harness) and SIGHUP (the terminal went away) stop it
    # like Ctrl-C: the broker runs in its own session, so it would outlive us otherwise
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.default_int_handler)
    try:
        handle = start_broker(port, host, prefer="amqtt" if use_amqtt else "mosquitto")
    except BrokerError as exc:
        if "already in use" in str(exc).lower():  # taken since _cannot_listen looked
            raise click.ClickException(_in_use(host, port)) from None
        raise click.ClickException(str(exc)) from None
    try:
        click.echo(f"{handle.kind} broker listening on {handle.url} (Ctrl-C to stop)")
        while handle.running:
            time.sleep(0.5)
        click.echo(f"the broker exited; its log:\n{handle.log_tail()}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        handle.stop()
