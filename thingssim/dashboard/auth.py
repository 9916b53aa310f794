"""Who may look at the dashboard and act through it.

The dashboard can run any code on the fleet, so it is guarded like the ``dispatcher``
broker user:

- **Loopback by default.** Without a password it serves only on a loopback address, and
  answers only requests whose ``Host`` is a loopback name (``localhost``, ``127.x.x.x``,
  ``[::1]``): a web page elsewhere cannot reach it by DNS rebinding.
- **A password otherwise** (``--password`` or ``THINGSSIM_DASHBOARD_PASSWORD``): a
  login form gives a session cookie (``HttpOnly``, ``SameSite=Strict``); scripts may send
  HTTP basic credentials (any user name, that password) instead.
- **No cross-site actions.** Every request that changes something carries the header
  ``X-CSRF-Token``: the session's token (or, without a password, the server's), which
  only a page of the dashboard's own origin can read from ``/api/session``; with HTTP
  basic any value (a cross-site form cannot set a header, and a cross-site script would
  need a CORS preflight, which the dashboard never grants).  A request whose ``Origin``
  is another site is refused too.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

COOKIE = "thingssim_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (a bind address or a Host)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port (``[::1]:80`` -> ``::1``)."""
    host_header = host_header.strip()
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass
class Identity:
    """An authenticated caller: how, and the CSRF token its changes must carry (None:
    any non-empty value, for HTTP basic)."""

    how: str  # "open" (no password), "session" or "basic"
    csrf: Optional[str]
    session: Optional[str] = None


class Auth:
    """Sessions and checks; ``password`` None means loopback-only, no login."""

    def __init__(self, password: Optional[str] = None, *, session_s: float = 12 * 3600,
                 max_sessions: int = 1000, fail_delay: float = 1.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.password = password or None
        self.session_s = session_s
        self.max_sessions = max_sessions
        #: seconds a wrong password waits before its answer (slows guessing)
        self.fail_delay = fail_delay
        self.now = now
        self.server_csrf = secrets.token_urlsafe(32)
        self.sessions: dict[str, tuple[str, float]] = {}  # token -> (csrf, expiry)

    @property
    def required(self) -> bool:
        return self.password is not None

    def check_password(self, given: str) -> bool:
        return self.password is not None and hmac.compare_digest(
            given.encode("utf-8"), self.password.encode("utf-8"))

    def login(self, given: str) -> Optional[str]:
        """A new session token for the right password, else None."""
        if not self.check_password(given):
            return None
        now = self.now()
        for token, (_, expiry) in list(self.sessions.items()):
            if expiry <= now:
                del self.sessions[token]
        while len(self.sessions) >= self.max_sessions:  # oldest first
            del self.sessions[next(iter(self.sessions))]
        token = secrets.token_urlsafe(32)
        self.sessions[token] = (secrets.token_urlsafe(32), now + self.session_s)
        return token

    def logout(self, token: Optional[str]) -> None:
        if token:
            self.sessions.pop(token, None)

    def identify(self, cookies: dict, authorization: Optional[str]) -> Optional[Identity]:
        """Who the request is, or None when a password is required and not given."""
        if not self.required:
            return Identity("open", self.server_csrf)
        token = cookies.get(COOKIE)
        if token:
            entry = self.sessions.get(token)
            if entry is not None and entry[1] > self.now():
                return Identity("session", entry[0], token)
        if authorization and authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True)
                _, _, given = decoded.decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if self.check_password(given):
                return Identity("basic", None)
        return None

    def host_allowed(self, host_header: Optional[str]) -> bool:
        """Without a password only loopback names may be asked for (DNS rebinding)."""
        if self.required:
            return True
        return bool(host_header) and is_loopback(host_name(host_header))

    @staticmethod
    def same_origin(origin: Optional[str], host_header: Optional[str]) -> bool:
        """False when the request says it comes from another site's page."""
        if not origin:
            return True
        if origin == "null":
            return False
        return urlsplit(origin).netloc.lower() == (host_header or "").lower()

    @staticmethod
    def csrf_ok(identity: Identity, given: Optional[str]) -> bool:
        if not given:
            return False
        if identity.csrf is None:  # HTTP basic: any value (module docstring)
            return True
        return hmac.compare_digest(given.encode("utf-8"), identity.csrf.encode("utf-8"))
