"""The migration channel is not a way in (issue 7 item 8): real workers on a real Mosquitto
over TLS, with the shipped ACL and a password file, and certificates made here.

Migration steps travel on ``<target>/migrate/<source>``.  The shipped ACL lets a worker
publish there only as itself (``pattern write +/migrate/%u``), so the broker authenticates
``<source>``; a worker with a ``snapshot_key`` restores only snapshots signed with it; a
worker without one restores only from the engines in its ``migrate_peers`` (none by
default).  The fleet here:

- ``w1``: no key, ``migrate_peers: ["w2"]`` (trusts w2 by the topic alone);
- ``w2``: no key, no ``migrate_peers``: refuses every migration;
- ``w3``, ``w4``: a shared ``snapshot_key``;
- users ``dispatcher`` (may publish anywhere) and ``mallory`` (a valid certificate and
  password, so, for the ACL, a worker: she may publish on ``+/migrate/mallory`` only).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness import consecutive
from mqtt_fixtures import _start, require_mosquitto
from test_real_workers import COUNTER, Workers

from runtime.clock import AsyncioClock, VirtualClock
from runtime.dispatcher import Dispatcher
from runtime.program import ProgramHost
from runtime.rpc import RemoteError, Requester, RequestTimeout, random_ids
from runtime.snapshot import document
from thingssim.broker import make_password_file

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "runtime" / "deploy" / "mosquitto-thingssim.acl"
KEY = "f00d" * 16
USERS = ("dispatcher", "mallory", "w1", "w2", "w3", "w4")
WORKERS = {"w1": {"snapshot_key": None, "migrate_peers": ["w2"]},
           "w2": {"snapshot_key": None},
           "w3": {"snapshot_key": KEY},
           "w4": {"snapshot_key": KEY}}
#: what an attacker would love to run on a board: it calls home every 50 ms
BEACON = ("def call_home():\n"
          "    things.publish('app/pwned', things.instance_id)\n"
          "things.set_interval(call_home, 0.05)\n")
QUIET = 1.5  # seconds to wait for something that must not happen


# ---------------------------------------------------------------- certificates
def make_pki(folder: Path, users: tuple[str, ...]) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, one client certificate per
    user, and a rogue CA's client certificate (``rogue``): PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files: dict[str, Path] = {}

    def write(name: str, key, cert) -> None:
        files[f"{name}.key"] = folder / f"{name}.key"
        files[f"{name}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        os.chmod(files[f"{name}.key"], 0o600)
        files[f"{name}.crt"] = folder / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def certificate(name: str, key, issuer=None, issuer_key=None, *, ca=False,
                    usage=None, san=None):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(issuer.subject if issuer else subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=not ca, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=not ca,
                       key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       (issuer_key or key).public_key()), critical=False))
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def new_key():
        return ec.generate_private_key(ec.SECP256R1())

    for ca_name in ("ca", "rogue-ca"):
        ca_key = new_key()
        ca_cert = certificate(f"thingssim test {ca_name}", ca_key, ca=True)
        write(ca_name, ca_key, ca_cert)
        if ca_name == "ca":
            server_key = new_key()
            write("server", server_key, certificate(
                "localhost", server_key, ca_cert, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
            for user in users:
                user_key = new_key()
                write(user, user_key, certificate(user, user_key, ca_cert, ca_key,
                                                  usage=ExtendedKeyUsageOID.CLIENT_AUTH))
        else:
            rogue_key = new_key()
            write("rogue", rogue_key, certificate("mallory", rogue_key, ca_cert, ca_key,
                                                  usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    return files


# ---------------------------------------------------------------- the fleet
@dataclass
class Fleet:
    url: str
    port: int
    pki: dict[str, Path]
    passwords: dict[str, str]
    workers: Workers
    broker: object

    def tls(self, user: str) -> dict:
        return {"ca_certs": str(self.pki["ca.crt"]), "certfile": str(self.pki[f"{user}.crt"]),
                "keyfile": str(self.pki[f"{user}.key"])}

    def transport(self, user: str, loop: asyncio.AbstractEventLoop):
        from runtime.mqtt import MqttTransport

        return MqttTransport(self.url, client_id=f"{user}-{os.getpid()}-{time.time_ns()}",
                             loop=loop, username=user, password=self.passwords[user],
                             tls=self.tls(user))

    def logs(self) -> str:
        return "\n".join(f"--- {wid}\n{(self.workers.tmp / f'{wid}.log').read_text()}"
                         for wid in WORKERS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require_mosquitto()
    pytest.importorskip("cryptography", reason="the test certificates are made with the "
                        "cryptography package (pip install cryptography)")
    folder: Path = tmp_path_factory.mktemp("migration-security")
    pki = make_pki(folder, USERS)
    passwords = {user: f"{user}-secret" for user in USERS}
    broker = _start(config={
        "allow_anonymous": False, "acl_file": str(ACL),
        "password_file": str(make_password_file(folder / "passwd", passwords)),
        # TLS on the only listener; a client certificate from our CA is required
        "extra": [f"cafile {pki['ca.crt']}", f"certfile {pki['server.crt']}",
                  f"keyfile {pki['server.key']}", "require_certificate true"]})
    url = f"mqtts://127.0.0.1:{broker.port}"
    workers = Workers(url, folder)
    fleet = Fleet(url, broker.port, pki, passwords, workers, broker)
    try:
        for wid, config in WORKERS.items():
            workers.start(wid, username=wid, password=passwords[wid], tls=fleet.tls(wid),
                          **config)
        yield fleet
    finally:
        workers.stop_all()
        broker.stop()


async def dispatcher(fleet: Fleet, engines=tuple(WORKERS), timeout: float = 20.0) -> Dispatcher:
    loop = asyncio.get_running_loop()
    d = Dispatcher(fleet.transport("dispatcher", loop), AsyncioClock(loop), {"id": "tester"})
    d.start()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(d.engines.get(e) and d.engines[e].status != "dead" for e in engines):
            return d
        await asyncio.sleep(0.05)
    raise AssertionError(f"engines not seen over TLS: {engines}, have {list(d.engines)}\n"
                         f"{fleet.logs()}")


async def client(fleet: Fleet, user: str) -> tuple[object, Requester]:
    """A client logged in as ``user`` and a requester on ``<user>/reply``."""
    loop = asyncio.get_running_loop()
    t = fleet.transport(user, loop)
    rpc = Requester(t, AsyncioClock(loop), f"{user}/reply", random_ids(), 10.0)
    t.connect()
    await t.wait_connected(10)
    return t, rpc


def evil_snapshot(instance_id: str = "evil.1") -> dict:
    host = ProgramHost(BEACON, clock=VirtualClock(), code_name="evil",
                       instance_id=instance_id, publish=lambda topic, data: None)
    host.start()
    return host.snapshot()


async def nothing_ran(d: Dispatcher, beacons: list, instance_ids: list[str]) -> None:
    """No beacon arrived, and no engine holds any of ``instance_ids``."""
    await asyncio.sleep(0.3)
    assert beacons == []
    for wid in WORKERS:
        report = await d._engine_request(wid, "report", {})
        assert not set(instance_ids) & set(report["procs"]), (wid, report["procs"])


async def watch_beacons(d: Dispatcher) -> list:
    beacons: list = []
    d.transport.subscribe("app/pwned", lambda m: beacons.append(m.payload), qos=1)
    await asyncio.sleep(0.3)
    return beacons


# ---------------------------------------------------------------- the tests
def test_migrations_between_peers_work_over_tls(fleet):
    async def main():
        d = await dispatcher(fleet)
        # signed: w3 signs with the fleet key, w4 verifies
        signed = (await d.run_code("w3", "counter", COUNTER))["id"]
        await asyncio.sleep(0.3)
        moved = await d.move_code("w3", "w4", "counter", signed)
        assert moved["engine"] == "w4" and moved["migration"]["ok"], moved
        # unsigned: w1 accepts programs from w2, the broker vouching that it is w2
        peer = (await d.run_code("w2", "counter", COUNTER))["id"]
        await asyncio.sleep(0.3)
        moved = await d.move_code("w2", "w1", "counter", peer)
        assert moved["engine"] == "w1" and moved["migration"]["ok"], moved
        # and back again is refused: w2 has no key and names no peers
        with pytest.raises(RemoteError) as info:
            await d.move_code("w1", "w2", "counter", peer)
        assert info.value.code == "migration_failed" and "'w1'" in info.value.message
        await asyncio.sleep(0.3)
        report = await d._engine_request("w1", "report", {})
        assert report["procs"][peer]["status"] == "Running"  # still here, still running
        assert peer not in (await d._engine_request("w2", "report", {}))["procs"]
        assert await d.kill_code(signed) == "Exited"
        assert await d.kill_code(peer) == "Exited"
        await asyncio.sleep(0.2)
        d.kill()
        return list(d.programs[signed].console), list(d.programs[peer].console)

    for console in asyncio.run(main()):
        assert len(consecutive(console)) > 5  # no gap and no repeat across the moves


def test_the_broker_drops_migration_steps_posing_as_another_engine(fleet):
    """mallory publishes a restore_code on w1/migrate/w2, as if she were w2 (whom w1
    trusts): the ACL drops it, w1 never sees it.  The same message from a user the ACL
    lets write there (the dispatcher, who may do anything) does run: only the ACL stood
    in the way."""
    async def main():
        d = await dispatcher(fleet)
        beacons = await watch_beacons(d)
        mallory, rpc = await client(fleet, "mallory")
        posing = rpc.request("w1/migrate/w2", "restore_code",
                             {"snapshot": evil_snapshot("evil.posing")}, QUIET)
        with pytest.raises(RequestTimeout):  # no reply: the worker never saw it
            await posing
        await nothing_ran(d, beacons, ["evil.posing"])

        admin, admin_rpc = await client(fleet, "dispatcher")
        ran = await admin_rpc.request("w1/migrate/w2", "restore_code",
                                      {"snapshot": evil_snapshot("evil.control")})
        assert ran["id"] == "evil.control"
        for _ in range(100):
            if beacons:
                break
            await asyncio.sleep(0.05)
        assert b'"evil.control"' in beacons  # JSON
        await d._engine_request("w1", "kill_code", {"instance_id": "evil.control"})
        for t in (mallory, admin):
            t.close()
        d.kill()

    asyncio.run(main())


def test_a_sender_outside_migrate_peers_is_forbidden_and_nothing_runs(fleet):
    """mallory may publish on <engine>/migrate/mallory (the ACL: as herself), so the
    engines know it is her: w1 accepts only w2, w2 accepts no one."""
    async def main():
        d = await dispatcher(fleet)
        beacons = await watch_beacons(d)
        mallory, rpc = await client(fleet, "mallory")
        for target in ("w1", "w2"):
            with pytest.raises(RemoteError) as info:
                await rpc.request(f"{target}/migrate/mallory", "restore_code",
                                  {"snapshot": evil_snapshot(f"evil.{target}")})
            assert info.value.code == "forbidden", info.value
            assert "'mallory'" in info.value.message
        await nothing_ran(d, beacons, ["evil.w1", "evil.w2"])
        mallory.close()
        d.kill()

    asyncio.run(main())
    assert "refuses every migration" in (fleet.workers.tmp / "w2.log").read_text()


def test_a_keyed_worker_restores_only_snapshots_signed_with_the_fleet_key(fleet):
    async def main():
        d = await dispatcher(fleet)
        beacons = await watch_beacons(d)
        mallory, rpc = await client(fleet, "mallory")
        attempts = {"unsigned snapshot": evil_snapshot("evil.unsigned"),
                    "bad snapshot signature": document.sign(evil_snapshot("evil.guess"),
                                                            b"a guess")}
        for message, snapshot in attempts.items():
            with pytest.raises(RemoteError) as info:
                await rpc.request("w3/migrate/mallory", "restore_code", {"snapshot": snapshot})
            assert info.value.code == "restore_failed" and message in info.value.message
        await nothing_ran(d, beacons, ["evil.unsigned", "evil.guess"])
        mallory.close()
        d.kill()

    asyncio.run(main())


def test_clients_without_a_valid_certificate_cannot_connect(fleet):
    def connect(user: str = "mallory", password: str | None = None, *, tls: bool = True,
                cert: str | None = "mallory") -> str:
        """``connected``, ``refused: <reason>`` (by MQTT, after TLS) or ``cut: <why>``
        (the connection ended before any MQTT answer: TLS refused it)."""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                        client_id=f"probe-{user}-{cert}-{time.time_ns()}")
        c.username_pw_set(user, password or fleet.passwords[user])
        if tls:
            c.tls_set(ca_certs=str(fleet.pki["ca.crt"]),
                      certfile=str(fleet.pki[f"{cert}.crt"]) if cert else None,
                      keyfile=str(fleet.pki[f"{cert}.key"]) if cert else None)
        answer: list = []
        c.on_connect = lambda cl, ud, flags, rc, props: answer.append(rc)
        try:
            c.connect("127.0.0.1", fleet.port, keepalive=5)
        except OSError as exc:  # ssl.SSLError included: the handshake failed at once
            return f"cut: {exc}"
        deadline = time.monotonic() + 3
        try:
            while not answer and time.monotonic() < deadline:
                error = c.loop(timeout=0.05)
                if error != mqtt.MQTT_ERR_SUCCESS and not answer:
                    return f"cut: {mqtt.error_string(error)}"
            if not answer:
                return "cut: no answer"
            return f"refused: {answer[0]}" if answer[0].is_failure else "connected"
        finally:
            c.disconnect()

    # a certificate from the fleet's CA and the right password
    assert connect() == "connected"
    # TLS refuses: no TLS at all, no client certificate, one from another CA
    for outcome in (connect(tls=False), connect(cert=None), connect(cert="rogue")):
        assert outcome.startswith("cut: "), outcome
    # past TLS, a good certificate does not replace the password
    assert connect(password="guess").startswith("refused: "), connect(password="guess")
