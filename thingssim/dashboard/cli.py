"""``thingssim dashboard [URL] [--results DIR]``: serve the dashboard until Ctrl-C.

The broker options (``-u/-p``, TLS) are the other commands' own: :func:`build_command`
takes their decorators from ``thingssim.cli`` so that they stay one definition.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click

__all__ = ["build_command", "serve"]

PASSWORD_ENV = "THINGSSIM_DASHBOARD_PASSWORD"


async def open_live(url: str, *, username: Optional[str] = None,
                    password: Optional[str] = None, tls: Optional[dict] = None,
                    timeout: float = 30.0, scheduler_id: str = "things-scheduler",
                    gfs_id: str = "gfs") -> Any:
    """A :class:`~thingssim.dashboard.live.Live` on a Dispatcher connected as
    ``thingssim dispatch`` connects (:func:`thingssim.remote.connect`)."""
    from ..remote import connect
    from .live import Live
    from .state import Fleet

    d = await connect(url, username=username, password=password, tls=tls, timeout=timeout)
    fleet = Fleet()
    fleet.set_connected(d.transport.connected, url=url)
    return Live(d, fleet, scheduler_id=scheduler_id, gfs_id=gfs_id, timeout=timeout)


def serve(app: Any, host: str, port: int, before: Optional[Callable[[], Any]] = None) -> None:
    """Run ``app`` with uvicorn on this thread's new loop (``before`` is awaited first,
    on that loop)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=2,
                            proxy_headers=False, server_header=False)

    class StreamsEndingServer(uvicorn.Server):
        """Ends the pages' event streams at Ctrl-C, so that the server need not wait
        for them (uvicorn waits for open connections before it stops)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            hub = getattr(getattr(app, "state", None), "hub", None)
            if hub is not None and loop is not None:
                loop.call_soon_threadsafe(hub.close)
            super().handle_exit(sig, frame)

    server = StreamsEndingServer(config)
    loop: Optional[asyncio.AbstractEventLoop] = None

    async def main() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        if before is not None:
            await before()
        await server.serve()

    asyncio.run(main())


def build_command(broker_url: Callable, auth_options: Callable,
                  tls_options: Callable, tls_dict: Callable) -> click.Command:
    """The click command, with the CLI's shared broker-option decorators."""

    @click.command("dashboard")
    @click.argument("url", required=False, callback=lambda c, p, v: None if v is None
                    else broker_url(c, p, v))
    @click.option("--results", type=click.Path(file_okay=False, path_type=Path),
                  default=None, help="A results folder to explore (thingssim sim --out, "
                  "an experiment's, or a sweep's).")
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to serve on; anything but loopback needs a password.")
    @click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
    @click.option("--dashboard-password", "dash_password", default=None, envvar=PASSWORD_ENV,
                  help=f"Require a login with this password (or {PASSWORD_ENV}, which "
                       "keeps it out of the process list).")
    @click.option("--scheduler-id", default="things-scheduler", show_default=True,
                  help="The scheduler the Applications view talks to.")
    @click.option("--gfs-id", default="gfs", show_default=True,
                  help="The file service the Files view talks to.")
    @click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
                  show_default=True, help="Seconds to wait for each reply.")
    @auth_options
    @tls_options
    def dashboard(url: Optional[str], results: Optional[Path], host: str, port: int,
                  dash_password: Optional[str], scheduler_id: str, gfs_id: str,
                  timeout: float, username: Optional[str], password: Optional[str],
                  ca_certs: Optional[str], certfile: Optional[str], keyfile: Optional[str],
                  tls_insecure: bool) -> None:
        """A web page to watch and steer the fleet on broker URL, and to explore a
        results folder (--results DIR), on http://127.0.0.1:8080 by default.

        \b
        -u/-p and the TLS options are the broker's, as for `thingssim dispatch`;
        --dashboard-password (or THINGSSIM_DASHBOARD_PASSWORD) guards the page.
        """
        try:
            from .app import create_app
        except ImportError as exc:
            raise click.ClickException(f"the dashboard needs {exc.name}: pip install "
                                       f"'thingssim[dashboard]'") from None
        from .auth import Auth, is_loopback
        from .results import ResultsError, load_results

        if url is None and results is None:
            raise click.UsageError("give a broker URL, --results DIR, or both")
        if not is_loopback(host) and not dash_password:
            raise click.UsageError(
                f"refusing to serve on {host} without a password: anyone who reaches it "
                f"could run code on the fleet. Give --dashboard-password or set "
                f"{PASSWORD_ENV} (or serve on 127.0.0.1)")
        if results is not None:
            try:
                load_results(results)
            except ResultsError as exc:
                raise click.ClickException(str(exc)) from None
        tls = tls_dict(ca_certs, certfile, keyfile, tls_insecure)
        made: dict[str, Any] = {}

        async def connect() -> None:
            if url is not None:
                made["live"] = await open_live(url, username=username, password=password,
                                               tls=tls, timeout=timeout,
                                               scheduler_id=scheduler_id, gfs_id=gfs_id)

        async def factory() -> Any:
            return made["live"]

        app = create_app(factory if url is not None else None, results=results,
                         auth=Auth(dash_password))
        shown = f"[{host}]" if ":" in host else host
        what = ", ".join(x for x in (f"broker {url}" if url else "",
                                     f"results {results}" if results else "") if x)
        click.echo(f"thingssim dashboard on http://{shown}:{port}/ ({what}"
                   f"{', login required' if dash_password else ''}); Ctrl-C stops it",
                   err=True)
        try:
            serve(app, host, port, before=connect)
        except OSError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:  # pragma: no cover - uvicorn handles Ctrl-C itself
            sys.exit(130)

    return dashboard
