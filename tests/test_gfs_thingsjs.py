"""ThingsJS's GFS tests (``GFS-test.js``, thingsjs.md section 8.1), corrected, against a
``python -m runtime.gfs.server`` process on a real broker (Mosquitto, else amqtt;
skipped, saying why, without either).

ThingsJS ran them on MongoDB through its ``GFS`` module and a REST server.  Here the same
steps go through :class:`~runtime.gfs.remote.GfsClient`, the REST part through the
service's ``fs_get``/``fs_post``/``fs_delete``.  Where ThingsJS's behaviour was a defect
(thingsjs.md 9.5) the test asks for the fix: appends go at the end (ThingsJS prepended),
``rmdir`` and DELETE of a folder really remove it, bytes survive (ThingsJS kept text
only), and concurrent appends lose nothing (ThingsJS's tree document lost updates).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Awaitable, Callable

import mqtt_fixtures
import pytest
from test_gfs_remote import Service

from runtime.gfs.remote import GfsClient, connect

broker = mqtt_fixtures.broker


@pytest.fixture(scope="module")
def service(broker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gfs-thingsjs")
    gfs = Service(broker.url, folder / "gfs.db", folder / "service.log")
    gfs.start_and_wait()
    yield gfs
    assert gfs.stop() == 0, gfs.log.read_text()[-2000:]


def with_client(service: Service, test: Callable[[GfsClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = await connect(service.url, timeout=10.0)
        try:
            await client.mkdir("/test", exist_ok=True)
            return await test(client)
        finally:
            await client.remove_tree("/test")
            client.close()

    return asyncio.run(main())


def test_write_then_read_returns_the_bytes(service) -> None:
    async def test(fs: GfsClient) -> None:
        await fs.write_file("/test/hello.txt", b"Hello World")
        content = await fs.read_file("/test/hello.txt")
        assert content == b"Hello World" and isinstance(content, bytes)  # a Buffer there

    with_client(service, test)


def test_reading_a_missing_file_is_an_error(service) -> None:
    async def test(fs: GfsClient) -> None:
        with pytest.raises(FileNotFoundError) as info:
            await fs.read_file("/test/does-not-exist.txt")
        assert info.value.filename == "/test/does-not-exist.txt"

    with_client(service, test)


def test_overwrite(service) -> None:
    async def test(fs: GfsClient) -> None:
        first = await fs.write_file("/test/over.txt", b"first version, longer")
        second = await fs.write_file("/test/over.txt", b"second")
        assert await fs.read_file("/test/over.txt") == b"second"
        assert second.version > first.version and second.size == 6

    with_client(service, test)


def test_mkdir_readdir_rmdir_and_the_folder_is_really_gone(service) -> None:
    async def test(fs: GfsClient) -> None:
        await fs.mkdir("/test/folder")
        assert await fs.listdir("/test") == ["folder"]
        await fs.rmdir("/test/folder")
        assert await fs.listdir("/test") == []  # ThingsJS reported success, kept it
        assert not await fs.exists("/test/folder")
        with pytest.raises(FileNotFoundError):
            await fs.rmdir("/test/folder")

    with_client(service, test)


def test_five_appends_each_add_one_token_at_the_end(service) -> None:
    async def test(fs: GfsClient) -> None:
        await fs.write_file("/test/append.txt", b"start")
        for n in range(5):
            before = (await fs.read_file("/test/append.txt")).split(b"*")
            await fs.append("/test/append.txt", b"*token%d" % n)
            after = (await fs.read_file("/test/append.txt")).split(b"*")
            assert len(after) == len(before) + 1
            assert after[-1] == b"token%d" % n and after[:-1] == before  # ThingsJS prepended
        assert await fs.read_file("/test/append.txt") == \
            b"start*token0*token1*token2*token3*token4"

    with_client(service, test)


def test_unlink_of_a_missing_file_is_an_error_then_unlink(service) -> None:
    async def test(fs: GfsClient) -> None:
        with pytest.raises(FileNotFoundError):
            await fs.remove("/test/missing.txt")
        await fs.write_file("/test/doomed.txt", b"bye")
        await fs.remove("/test/doomed.txt")
        assert not await fs.exists("/test/doomed.txt")
        with pytest.raises(FileNotFoundError):
            await fs.read_file("/test/doomed.txt")

    with_client(service, test)


def test_rest_get_root_post_get_delete(service) -> None:
    async def test(fs: GfsClient) -> None:
        root = await fs.fs_get("/")
        assert root["type"] == "directory" and root["name"] == "/"
        assert {"codes", "apps", "test"} <= set(root["content"])  # ThingsJS's layout
        assert root["content"]["codes"]["type"] == "directory"
        posted = await fs.fs_post("/test", "rest.txt", "file", "REST content")
        assert posted == {"type": "file", "name": "rest.txt", "content": "REST content"}
        assert await fs.fs_get("/test/rest.txt") == posted
        deleted = await fs.fs_delete("/test/rest.txt")
        assert deleted == {"type": "file", "path": "/test/rest.txt"}
        with pytest.raises(FileNotFoundError):
            await fs.fs_get("/test/rest.txt")

    with_client(service, test)


def test_rest_folders_bytes_and_deleting_a_folder(service) -> None:
    async def test(fs: GfsClient) -> None:
        made = await fs.fs_post("/test", "models", "directory")
        assert made == {"type": "directory", "name": "models", "content": {}}
        blob = bytes(range(256))
        await fs.fs_post("/test/models", "weights.bin", "file", blob)
        await fs.fs_post("/test/models", "notes.txt", "file", "v1")
        await fs.fs_post("/test/models", "notes.txt", "file", "+v2", append=True)
        tree = await fs.fs_get("/test", depth=2)
        files = tree["content"]["models"]["content"]
        assert base64.b64decode(files["weights.bin"]["content_b64"]) == blob
        assert files["notes.txt"]["content"] == "v1+v2"
        shallow = await fs.fs_get("/test", depth=0)
        assert shallow == {"type": "directory", "name": "test", "content": {}}
        with pytest.raises(OSError) as info:  # a non-empty folder needs recursive
            await fs.fs_delete("/test/models")
        assert info.value.strerror == "Directory not empty"
        assert await fs.fs_delete("/test/models", recursive=True) == {
            "type": "directory", "path": "/test/models"}
        assert await fs.listdir("/test") == []  # really gone (ThingsJS kept it)

    with_client(service, test)


def test_concurrent_appends_from_several_clients_lose_nothing(service) -> None:
    """ThingsJS's behaviour scripts appended from several processes at once and lost
    updates; here 5 clients append 20 records each, side by side."""
    async def main() -> None:
        clients = [await connect(service.url, timeout=10.0) for _ in range(5)]
        try:
            await clients[0].mkdir("/test", exist_ok=True)

            async def appender(n: int, fs: GfsClient) -> None:
                for k in range(20):
                    await fs.append("/test/shared.log", b"client %d record %02d\n" % (n, k))

            await asyncio.gather(*(appender(n, c) for n, c in enumerate(clients)))
            lines = (await clients[0].read_file("/test/shared.log")).splitlines()
            assert len(lines) == 100
            for n in range(5):  # each client's records whole and in its order
                assert [line for line in lines if line.startswith(b"client %d " % n)] == \
                    [b"client %d record %02d" % (n, k) for k in range(20)]
            await clients[0].remove_tree("/test")
        finally:
            for client in clients:
                client.close()

    asyncio.run(main())
