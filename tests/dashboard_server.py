"""A dashboard served by uvicorn on a free loopback port in a background thread, for
tests that need a real HTTP server (event streams, the browser)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``with Server(app) as s:`` serves ``app`` on ``s.url`` until the block ends."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=1)
        self.app = app
        self.loop: Any = None
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def _run(self) -> None:
        import asyncio

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(serve())

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        hub = getattr(self.app.state, "hub", None)
        loop = self.loop
        if hub is not None and loop is not None:  # end the event streams first
            loop.call_soon_threadsafe(hub.close)
        self.server.should_exit = True
        self.thread.join(15)
