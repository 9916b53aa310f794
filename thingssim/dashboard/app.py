"""The dashboard's HTTP layer: a Starlette application over :mod:`.live` and :mod:`.state`.

Routes (JSON unless said; every error is ``{"error": {"code", "message"}}``):

- ``GET /`` the page; ``GET /login``, ``POST /login``, ``POST /logout``.
- ``GET /api/session``: mode (live, results), whether a login is needed, the CSRF token.
- ``GET /api/state?since=N``: :meth:`Fleet.delta`; ``GET /api/events``: the same as
  server-sent events, one message per batch of changes (``id`` is the sequence number,
  so a reconnecting ``EventSource`` resumes where it stopped).
- ``POST /api/programs`` ``{engine, source | gfs_path, code_name?}``: run;
  ``POST /api/programs/ID/pause|resume|kill``, ``/migrate {target}``,
  ``/spawn {targets}``; ``GET /api/actions/N``.
- ``GET /api/apps``, ``POST /api/apps`` (the application file's text, ``?name=``),
  ``POST /api/apps/TOKEN/pause|resume|kill``.
- ``GET /api/files?path=``, ``GET /api/files/download?path=``, ``PUT /api/files?path=``
  (the bytes), ``POST /api/files/mkdir {path}``, ``DELETE /api/files?path=``.
- ``GET /api/results[?run=SUB]``, ``GET /api/results/figures/NAME[?run=SUB]``.

The Dispatcher runs on the server's own asyncio loop (started in the lifespan), so the
state, the actions and the event streams share one thread and need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import COOKIE, CSRF_HEADER, SAFE_METHODS, Auth, Identity
from .live import ActionError, Live
from .results import ResultsError, figure_path, load_results, run_folder

STATIC = Path(__file__).parent / "static"
#: requests that need no login (the login page and what it loads)
PUBLIC = ("/login", "/static/style.css", "/static/login.js", "/favicon.ico")
MAX_UPLOAD = 64 * 1024 * 1024
#: every response: only our own scripts and styles, no framing (clickjacking of actions)
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                                 b"style-src 'self'; script-src 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
MAX_JSON = 8 * 1024 * 1024


class Hub:
    """Wakes the event streams after a change (each waits on the current Event)."""

    def __init__(self) -> None:
        self._event: Optional[asyncio.Event] = None
        self.closing = False

    def current(self) -> asyncio.Event:
        if self._event is None or self._event.is_set():
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        if self._event is not None and not self._event.is_set():
            self._event.set()

    def close(self) -> None:
        self.closing = True
        self.notify()


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _with_headers(send: Send) -> Send:
    async def send_with_headers(message: Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
        await send(message)
    return send_with_headers


class Guard:
    """ASGI middleware: the rules of :mod:`.auth` before any route runs."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = self.auth
        send = _with_headers(send)
        host = request.headers.get("host")
        path = scope["path"]
        if not auth.host_allowed(host):
            await error(403, "forbidden", f"this dashboard answers only to localhost "
                        f"names without a password, not Host {host!r}")(scope, receive, send)
            return
        identity = auth.identify(request.cookies, request.headers.get("authorization"))
        if identity is None and not (path in PUBLIC or path.startswith("/static/login")):
            if path.startswith("/api/"):
                response: Response = error(401, "unauthorized", "log in first (or send "
                                           "HTTP basic credentials)")
            else:
                response = RedirectResponse("/login", status_code=303)
            await response(scope, receive, send)
            return
        if request.method not in SAFE_METHODS:
            if not Auth.same_origin(request.headers.get("origin"), host):
                await error(403, "forbidden", "cross-site request refused")(
                    scope, receive, send)
                return
            if path not in ("/login",) and not (
                    identity is not None and Auth.csrf_ok(identity,
                                                          request.headers.get(CSRF_HEADER))):
                await error(403, "csrf", "missing or wrong X-CSRF-Token header (the page "
                            "gets it from /api/session)")(scope, receive, send)
                return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)


def _identity(request: Request) -> Optional[Identity]:
    return request.scope.get("state", {}).get("identity")


async def _json(request: Request) -> dict:
    body = await request.body()
    if len(body) > MAX_JSON:
        raise ActionError(413, "too_large", f"request body over {MAX_JSON} bytes")
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise ActionError(400, "bad_request", f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ActionError(400, "bad_request", "the body must be a JSON object")
    return value


async def _body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ActionError(413, "too_large", f"upload over {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ActionError(413, "too_large", f"upload over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _since(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise ActionError(400, "bad_request", f"since must be a whole number, not {raw!r}") \
            from None


def create_app(live_factory: Optional[Callable[[], Awaitable[Live]]] = None, *,
               results: Optional[str | Path] = None, auth: Optional[Auth] = None,
               batch_s: float = 0.05, heartbeat_s: float = 15.0,
               max_upload: int = MAX_UPLOAD, title: str = "thingssim") -> Starlette:
    """The dashboard for a live fleet (``live_factory``, awaited at startup on the
    server's loop), a results folder, or both."""
    auth = auth or Auth()
    hub = Hub()
    holder: dict[str, Any] = {"live": None}
    results_dir = None if results is None else Path(results)

    def live() -> Live:
        if holder["live"] is None:
            raise ActionError(404, "not_found", "this dashboard follows no broker (it was "
                              "started with --results only)")
        return holder["live"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if live_factory is not None:
            instance = await live_factory()
            bind = getattr(instance, "bind", None)
            if bind is not None:  # fed from another thread (thingssim sim --dashboard)
                bind(hub.notify, asyncio.get_running_loop())
            else:
                instance.fleet.on_change = hub.notify
            holder["live"] = instance
        try:
            yield
        finally:
            hub.close()
            if holder["live"] is not None:
                holder["live"].close()

    def endpoint(fn: Callable[[Request], Awaitable[Any]]) -> Callable:
        async def wrapped(request: Request) -> Response:
            try:
                value = await fn(request)
            except ActionError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except ResultsError as exc:
                return error(404, "not_found", str(exc))
            return value if isinstance(value, Response) else JSONResponse(value)
        return wrapped

    # ---------------------------------------------------------------- pages and login
    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login_page(request: Request) -> Response:
        if not auth.required:
            return RedirectResponse("/", status_code=303)
        return FileResponse(STATIC / "login.html")

    async def login(request: Request) -> Response:
        body = (await request.body()).decode("utf-8", "replace")
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                given = str(json.loads(body).get("password", ""))
            except (ValueError, AttributeError):
                given = ""
        else:
            given = (parse_qs(body).get("password") or [""])[0]
        token = auth.login(given) if auth.required else None
        if token is None:
            if auth.required and auth.fail_delay:
                await asyncio.sleep(auth.fail_delay)
            if request.headers.get("accept", "").startswith("application/json"):
                return error(401, "unauthorized", "wrong password")
            return RedirectResponse("/login?failed=1", status_code=303)
        response: Response = RedirectResponse("/", status_code=303)
        if request.headers.get("accept", "").startswith("application/json"):
            response = JSONResponse({"ok": True})
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            max_age=int(auth.session_s), path="/")
        return response

    async def logout(request: Request) -> Response:
        auth.logout(request.cookies.get(COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    async def session(request: Request) -> Any:
        identity = _identity(request)
        instance = holder["live"]
        sim = getattr(instance, "session", None)
        return {"csrf": identity.csrf if identity and identity.csrf else "basic",
                "login": auth.required, "how": identity.how if identity else None,
                "title": title, "live": instance is not None,
                "results": results_dir is not None,
                "broker": None if instance is None else instance.fleet.broker.get("url"),
                "scheduler": None if instance is None else instance.scheduler_id,
                "gfs": None if instance is None else instance.gfs_id,
                "read_only": bool(getattr(instance, "read_only", False)),
                "sim": sim() if sim is not None else None}

    # ---------------------------------------------------------------- fleet state
    def delta_text(instance: Any, since: int) -> tuple[int, str]:
        """The delta after ``since`` as JSON: under the fleet's lock if it is fed from
        another thread (it is serialized there too, so nothing changes under it)."""
        lock = getattr(instance, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            delta = instance.fleet.delta(since)
            return delta["seq"], json.dumps(delta, separators=(',', ':'))

    async def state(request: Request) -> Any:
        return Response(delta_text(live(), _since(request))[1],
                        media_type="application/json")

    async def events(request: Request) -> Response:
        instance = live()
        fleet = instance.fleet
        since = _since(request)

        async def stream() -> AsyncIterator[str]:
            nonlocal since
            yield "retry: 1000\n\n"
            first = True
            while not hub.closing:
                # taken before the delta: a change from here on sets it, even while the
                # message is being sent
                wake = hub.current()
                if first or fleet.seq > since:
                    first = False
                    since, text = delta_text(instance, since)
                    yield f"id: {since}\ndata: {text}\n\n"
                try:
                    await asyncio.wait_for(wake.wait(), heartbeat_s)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if batch_s:
                    await asyncio.sleep(batch_s)  # one message for a burst of changes

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- program actions
    async def run(request: Request) -> Any:
        body = await _json(request)
        return await live().run(body.get("engine"), source=body.get("source"),
                                code_name=body.get("code_name") or None,
                                gfs_path=body.get("gfs_path") or None)

    async def program_op(request: Request) -> Any:
        iid, op = request.path_params["iid"], request.path_params["op"]
        if op == "migrate":
            body = await _json(request)
            return await live().migrate(iid, body.get("target"))
        if op == "spawn":
            body = await _json(request)
            return await live().spawn(iid, body.get("targets"))
        return await live().program_action(iid, op)

    async def action(request: Request) -> Any:
        try:
            number = int(request.path_params["n"])
        except ValueError:
            raise ActionError(400, "bad_request", "an action number is a whole number") \
                from None
        record = live().fleet.action(number)
        if record is None:
            raise ActionError(404, "not_found", f"no action {number} (the last "
                              f"{live().fleet.actions.maxlen} are kept)")
        return record

    # ---------------------------------------------------------------- applications
    async def apps(request: Request) -> Any:
        if request.method == "POST":
            text = (await _body(request, MAX_JSON)).decode("utf-8", "replace")
            name = request.query_params.get("name") or "application.toml"
            return await live().submit(text, name)
        return await live().apps_status()

    async def app_op(request: Request) -> Any:
        return await live().app_action(request.path_params["token"],
                                       request.path_params["op"])

    # ---------------------------------------------------------------- files
    def _path(request: Request) -> str:
        path = request.query_params.get("path")
        if not path:
            raise ActionError(400, "bad_request", "give ?path=")
        return path

    async def files(request: Request) -> Any:
        if request.method == "PUT":
            data = await _body(request, max_upload)
            return await live().write_file(_path(request), data)
        if request.method == "DELETE":
            return await live().remove(_path(request))
        return await live().list_files(request.query_params.get("path") or "/")

    async def download(request: Request) -> Response:
        path = _path(request)
        spool = tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024)  # noqa: SIM115
        try:
            await live().read_file(path, spool)
        except BaseException:
            spool.close()
            raise
        size = spool.tell()
        spool.seek(0)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    piece = spool.read(256 * 1024)
                    if not piece:
                        return
                    yield piece
            finally:
                spool.close()

        name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
            "Content-Length": str(size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"})

    async def mkdir(request: Request) -> Any:
        body = await _json(request)
        path = body.get("path")
        if not isinstance(path, str) or not path:
            raise ActionError(400, "bad_request", "give {\"path\": ...}")
        return await live().mkdir(path)

    # ---------------------------------------------------------------- results
    def _results_dir(request: Request) -> Path:
        if results_dir is None:
            raise ActionError(404, "not_found", "no results folder (start the dashboard "
                              "with --results DIR)")
        sub = request.query_params.get("run")
        if not sub:
            return results_dir
        folder = run_folder(results_dir, sub)
        if folder is None:
            raise ActionError(404, "not_found", f"no run folder {sub!r} in {results_dir}")
        return folder

    async def results_view(request: Request) -> Any:
        folder = _results_dir(request)
        return await asyncio.get_running_loop().run_in_executor(None, load_results, folder)

    async def figure(request: Request) -> Response:
        path = figure_path(_results_dir(request), request.path_params["name"])
        if path is None:
            raise ActionError(404, "not_found", f"no figure {request.path_params['name']!r}")
        return FileResponse(path)

    routes = [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/session", endpoint(session)),
        Route("/api/state", endpoint(state)),
        Route("/api/events", endpoint(events)),
        Route("/api/programs", endpoint(run), methods=["POST"]),
        Route("/api/programs/{iid}/{op}", endpoint(program_op), methods=["POST"]),
        Route("/api/actions/{n}", endpoint(action)),
        Route("/api/apps", endpoint(apps), methods=["GET", "POST"]),
        Route("/api/apps/{token}/{op}", endpoint(app_op), methods=["POST"]),
        Route("/api/files", endpoint(files), methods=["GET", "PUT", "DELETE"]),
        Route("/api/files/download", endpoint(download)),
        Route("/api/files/mkdir", endpoint(mkdir), methods=["POST"]),
        Route("/api/results", endpoint(results_view)),
        Route("/api/results/figures/{name}", endpoint(figure)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(Guard, auth=auth)
    app.state.hub = hub
    app.state.holder = holder
    app.state.auth = auth
    return app
