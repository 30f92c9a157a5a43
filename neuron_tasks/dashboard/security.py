"""Access token, per-session CSRF tokens and security headers for the dashboard."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
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


def _mac(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


class Guard:
    """Checks the access token (when one is set) and issues / verifies CSRF tokens."""

    def __init__(self, token: str | None, *, secure_cookies: bool = False) -> None:
        self.token = token or None
        self.secret = secrets.token_bytes(32)
        self.secure_cookies = secure_cookies
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
        if origin and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host", ""):
            return False
        return hmac.compare_digest(offered.encode(), self.csrf_token(session).encode())

    def cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict", secure=self.secure_cookies, path="/")


class GuardMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        super().__init__(app)
        self.guard = guard

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        guard = self.guard
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
