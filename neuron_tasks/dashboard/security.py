"""Access token, Host and Origin checks, per-session CSRF tokens and security headers for the
dashboard."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp

SESSION_COOKIE = "nt_session"
AUTH_COOKIE = "nt_auth"
TOKEN_HEADER = "x-neuron-tasks-token"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>neuron_tasks: token needed</title>
</head><body><h1>neuron_tasks dashboard</h1><p>This dashboard needs its access token
(NEURON_TASKS_DASHBOARD_TOKEN or --token).</p><form method="get" action="/">
<label>token <input type="password" name="token" autocomplete="current-password"></label>
<button type="submit">Sign in</button></form></body></html>"""


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _mac(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header (or allow-list entry) as (lowercase name without brackets, port or None);
    None when malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@?#\\ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    name = name.rstrip(".")
    return (name, int(rest[1:]) if rest else None) if name else None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which Host headers the dashboard answers to: against DNS rebinding, a page of another
    name must not reach it even when that name resolves to this machine.

    Allowed: 127.0.0.1, localhost and [::1]; the bound address when it is a specific one; an
    IP address equal to the local address the connection arrived on; each of those with the port
    the connection arrived on (or none, meaning 80 / 443). And every `allowed` entry: a name
    (any port), name:port, [v6]:port, or "*" (any Host: only behind a proxy that checks it).
    """

    def __init__(self, bind_host: str = "127.0.0.1", allowed: Iterable[str] = ()) -> None:
        bind = bind_host.strip().lower().strip("[]")
        self.names = set(LOOPBACK_NAMES)
        if bind not in WILDCARDS:
            self.names.add(bind)
        self.any = False
        self.entries: set[tuple[str, int | None]] = set()
        for entry in allowed:
            if entry.strip() == "*":
                self.any = True
                continue
            parsed = split_host(entry)
            if parsed is not None:
                self.entries.add(parsed)

    @classmethod
    def from_settings(cls, settings: Any) -> HostPolicy:
        return cls(str(getattr(settings, "dashboard_host", "127.0.0.1")),
                   list(getattr(settings, "dashboard_allowed_hosts", []) or []))

    def allows(self, host: str | None, scope: Mapping[str, Any]) -> bool:
        if self.any:
            return True
        parsed = split_host(host or "")
        if parsed is None:
            return False
        name, port = parsed
        if (name, None) in self.entries or (name, port) in self.entries:
            return True
        server = scope.get("server")
        local_ip = _ip(str(server[0])) if server else None
        name_ip = _ip(name)
        if name not in self.names and not (name_ip is not None and local_ip is not None and name_ip == local_ip):
            return False
        if not server or server[1] is None:
            return True  # a unix socket: no port to compare
        implied = 443 if scope.get("scheme") == "https" else 80
        return (port if port is not None else implied) == int(server[1])

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        """Does an Origin header (scheme://host[:port]) name the same host and port as Host?"""
        scheme, sep, rest = origin.strip().lower().partition("://")
        if not sep or scheme not in ("http", "https"):
            return False
        theirs, ours = split_host(rest), split_host(host or "")
        if theirs is None or ours is None:
            return False
        implied = 443 if scheme == "https" else 80
        return theirs[0] == ours[0] and (theirs[1] or implied) == (ours[1] or implied)


class Guard:
    """Checks the access token (when one is set) and issues / verifies CSRF tokens."""

    def __init__(self, token: str | None, *, secure_cookies: bool = False, hosts: HostPolicy | None = None) -> None:
        self.token = token or None
        self.secret = secrets.token_bytes(32)
        self.secure_cookies = secure_cookies
        self.hosts = hosts  # None: taken from the app's dashboard settings on the first request
        self._auth_value = _mac(token.encode(), "neuron-tasks-dashboard-auth") if token else ""

    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("authorization", "")
        offered = [request.headers.get(TOKEN_HEADER, ""), auth[7:] if auth.lower().startswith("bearer ") else ""]
        if any(o and hmac.compare_digest(o.encode(), self.token.encode()) for o in offered):
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._auth_value.encode())

    def sign_in(self, response: Response) -> None:
        """Set the cookie that stands for the token on later requests of this browser."""
        self.cookie(response, AUTH_COOKIE, self._auth_value)

    def csrf_token(self, session: str) -> str:
        return _mac(self.secret, "csrf:" + session)

    def csrf_ok(self, request: Request, offered: str | None) -> bool:
        session = request.cookies.get(SESSION_COOKIE, "")
        if not session or not offered:
            return False
        origin = request.headers.get("origin")
        if origin and origin != "null" and not HostPolicy.same_origin(origin, request.headers.get("host")):
            return False
        return hmac.compare_digest(offered.encode(), self.csrf_token(session).encode())

    def cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict", secure=self.secure_cookies, path="/")


class GuardMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        super().__init__(app)
        self.guard = guard

    def _hosts(self, request: Request) -> HostPolicy:
        if self.guard.hosts is None:
            dashboard = getattr(request.app.state, "dashboard", None)
            settings = getattr(dashboard, "settings", None)
            self.guard.hosts = HostPolicy.from_settings(settings) if settings is not None else HostPolicy()
        return self.guard.hosts

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        guard = self.guard
        host = request.headers.get("host")
        if not self._hosts(request).allows(host, request.scope):
            return self._harden(Response(
                f"Host {(host or '')[:100]!r} is not one this dashboard answers to; add it to "
                "NEURON_TASKS_DASHBOARD_ALLOWED_HOSTS (or --allowed-host) if it is yours\n",
                status_code=400, media_type="text/plain"))
        origin = request.headers.get("origin")
        if (request.method in UNSAFE_METHODS and origin and origin != "null"
                and not HostPolicy.same_origin(origin, host)):
            return self._harden(Response("cross-origin request refused\n", status_code=403, media_type="text/plain"))
        offered = request.query_params.get("token")
        if guard.token is not None and offered is not None:
            if hmac.compare_digest(offered.encode(), guard.token.encode()):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + ("?" + urlencode(rest) if rest else "")
                response: Response = RedirectResponse(target, status_code=303)
                guard.sign_in(response)
                return self._harden(response)
            return self._harden(HTMLResponse(LOGIN_PAGE, status_code=401))
        if not guard.authorised(request):
            if request.url.path in ("/metrics", "/healthz") or request.url.path.startswith("/static/"):
                return self._harden(Response("token required\n", status_code=401, media_type="text/plain"))
            return self._harden(HTMLResponse(LOGIN_PAGE, status_code=401))
        session = request.cookies.get(SESSION_COOKIE)
        new_session = session is None or len(session) != 43
        if new_session:
            session = secrets.token_urlsafe(32)
        request.state.session = session
        request.state.csrf = guard.csrf_token(session or "")
        response = await call_next(request)
        if new_session and session:
            guard.cookie(response, SESSION_COOKIE, session)
        return self._harden(response)

    @staticmethod
    def _harden(response: Response) -> Response:
        h = response.headers
        h.setdefault("content-security-policy", CSP)
        h.setdefault("x-content-type-options", "nosniff")
        h.setdefault("x-frame-options", "DENY")
        h.setdefault("referrer-policy", "no-referrer")
        h.setdefault("cache-control", "no-store")
        return response
