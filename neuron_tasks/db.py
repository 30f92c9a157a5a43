"""Connections: a psycopg 3 pool per process; an embedded PostgreSQL when no URL is set.

Pools reconnect quickly after an outage (a new attempt every quarter second at most, not
psycopg_pool's doubling back-off), so workers resume within about a second of PostgreSQL
accepting connections again; `within` bounds how long a caller waits for the database.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from neuron_tasks import embedded
from neuron_tasks.config import Settings
from neuron_tasks.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

URL_ENV = "NEURON_TASKS_DATABASE_URL"

#: The errors that mean PostgreSQL could not be reached or did not answer (PoolTimeout included).
UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, DatabaseUnavailable)

#: A pool tries to replace a lost connection at most this long after its previous try.
RECONNECT_EVERY_S = 0.25
CONNECT_TIMEOUT_S = 5
#: psycopg_pool logs every failed reconnection attempt; one line per pool this often is enough.
POOL_COMPLAINT_EVERY_S = 30.0


class _QuietReconnects(logging.Filter):
    """Lets one "error connecting" warning per pool through every POOL_COMPLAINT_EVERY_S (pools
    retry four times a second during an outage; the threads that wait for them log the outage)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("error connecting in")):
            return True
        name = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        now = time.monotonic()
        if now - self._last.get(name, -POOL_COMPLAINT_EVERY_S) < POOL_COMPLAINT_EVERY_S:
            return False
        self._last[name] = now
        return True


_pool_log = logging.getLogger("psycopg.pool")
if not any(isinstance(f, _QuietReconnects) for f in _pool_log.filters):
    _pool_log.addFilter(_QuietReconnects())


def resolve_url(settings: Settings, *, export: bool = False) -> str:
    """The database URL: the configured one, else the embedded server's (started on first use).

    With `export`, the URL is put in the environment so child processes use the same server.
    """
    url = settings.database_url or embedded.start(settings.embedded_dir)
    if export:
        os.environ[URL_ENV] = url
    return url


class _QuickAttempt(AttemptWithBackoff):
    """psycopg_pool's reconnection attempt, with its delay capped at RECONNECT_EVERY_S."""

    INITIAL_DELAY = 0.05

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_EVERY_S)


class Pool(ConnectionPool):
    """A ConnectionPool that replaces lost connections every RECONNECT_EVERY_S at most, instead of
    backing off to many seconds: after an outage it serves again as soon as the server does."""

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _QuickAttempt(timeout=self.reconnect_timeout), growing=growing)


def make_pool(
    url: str,
    *,
    max_size: int = 16,
    name: str = "neuron_tasks",
    durable: bool = True,
    statement_timeout_ms: int = 0,
    idle_in_transaction_timeout_ms: int = 0,
    open_timeout_s: float = 15.0,
    read_only: bool = False,
) -> ConnectionPool:
    """An autocommit pool; connections identify themselves in pg_stat_activity.

    `durable=False` commits without waiting for the WAL flush (synchronous_commit=off): for soft
    state a crash may roll back by a fraction of a second (topic slots, token buckets).
    `read_only=True`: every transaction is read-only (the pool of `make_read_pool`).
    Raises DatabaseUnavailable when no connection is made within `open_timeout_s`.
    """
    # JIT compiles our small OLTP statements for ~1 s when their estimates look big: off.
    options = "-c jit=off" + ("" if durable else " -c synchronous_commit=off")
    # Connection hygiene: no statement of ours runs forever, no transaction is left open.
    options += f" -c statement_timeout={int(statement_timeout_ms)}"
    options += f" -c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_ms)}"
    if read_only:  # a replica's pool: a write fails at once, wherever it is sent
        options += " -c default_transaction_read_only=on"
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name, "options": options,
                              **connection_hygiene()}
    if Settings().session_url:
        # database_url is a transaction-mode pooler: a server-side prepared statement would not
        # follow the next transaction to its server connection.
        kwargs["prepare_threshold"] = None
    pool = Pool(url, min_size=1, max_size=max_size, kwargs=kwargs, name=name, open=False, reconnect_timeout=60)
    try:
        pool.open(wait=True, timeout=max(open_timeout_s, 0.1))
    except Exception as exc:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
    return pool


def make_read_pool(settings: Settings, primary: ConnectionPool, *, name: str, max_size: int = 4) -> ConnectionPool:
    """The pool for reads that tolerate replication lag: on `settings.read_url` (a replica) when it
    is set, its sessions read-only, else `primary` itself. The caller closes it when it is not
    `primary`. Claims, acks, leases, enqueues, unique-job checks, admin actions and anything read
    in order to write stay on the primary."""
    if not settings.read_url:
        return primary
    return make_pool(settings.read_url, max_size=max_size, name=f"{name}-read", read_only=True)


def session_url(url: str) -> str:
    """The URL of a connection that needs a session of its own (LISTEN, a session advisory lock):
    NEURON_TASKS_SESSION_URL when set (`url` is then a transaction-mode pooler), else `url`."""
    return Settings().session_url or url


def connection_hygiene() -> dict[str, Any]:
    """libpq options of every long-lived connection: a bounded connect, and TCP keepalives so a
    server that vanished without closing the socket is noticed in about 20 s, not hours."""
    return {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 10,
            "keepalives_interval": 5, "keepalives_count": 2}


_SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "pwd", "sig", "signature", "auth", "credential")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs.

    A PostgreSQL URL or conninfo comes back as sorted key=value pairs without the password; any
    other URL (http://user:password@host/...) keeps its form, with the password shown as ***
    (a bare user name, often a token, as ***) and the values of query parameters that look
    secret (api_key, token, ...) as ***.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme and scheme not in ("postgres", "postgresql"):
        return _redact_url(url)
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable url>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(info.items()))


def _redact_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep else f"***@{host}"
    query = "&".join(
        f"{name}=***" if sep and any(word in name.lower() for word in _SECRET_PARAMS) else f"{name}{sep}{value}"
        for name, sep, value in (item.partition("=") for item in parts.query.split("&"))
    ) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def retrying(fn: Callable[[], T], *, what: str, attempts: int = 6, first_delay: float = 0.05) -> T:
    """Run `fn`, retrying on lost connections (server restart, pg_terminate_backend).

    Callers pass idempotent work or accept at-least-once on the rare lost commit reply.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except psycopg.OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("%s: lost the database connection (%s); retrying in %.2fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 3, 2.0)
    raise AssertionError("unreachable")


def within(fn: Callable[[float], T], *, timeout_s: float, what: str, where: str = "") -> T:
    """Run `fn(seconds_left)`, retrying lost connections, for at most `timeout_s` seconds; then
    raise DatabaseUnavailable. `fn` passes the seconds left to `pool.connection(timeout=...)`.

    Callers pass idempotent work or accept at-least-once on the rare lost commit reply.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            return fn(max(deadline - time.monotonic(), 0.01))
        except UNAVAILABLE as exc:
            left = deadline - time.monotonic()
            if left <= delay:
                at = f" at {where}" if where else ""
                raise DatabaseUnavailable(
                    f"{what}: PostgreSQL{at} did not answer within {timeout_s:.1f}s ({one_line(exc)}); "
                    "check that the server is up and reachable"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_EVERY_S)


class Outage:
    """The lost-connection episodes of one thread's loop: logs when one starts (once, then every
    `repeat_s` while it lasts) and when it ends, and says how long to wait before trying again
    (short: the pool reconnects on its own, so the next try succeeds soon after the server is back)."""

    def __init__(self, logger: logging.Logger, what: str, *, first_delay_s: float = 0.02,
                 max_delay_s: float = RECONNECT_EVERY_S, repeat_s: float = 30.0) -> None:
        self.log = logger
        self.what = what
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.repeat_s = repeat_s
        self.since: float | None = None
        self._delay = first_delay_s
        self._logged_at = 0.0
        self.failures = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns the seconds to wait before the next try."""
        now = time.monotonic()
        self.failures += 1
        if self.since is None:
            self.since = now
            self._delay = self.first_delay_s
            self._logged_at = now
            self.log.warning("%s: lost the database (%s); retrying", self.what, one_line(exc))
        elif now - self._logged_at >= self.repeat_s:
            self._logged_at = now
            self.log.warning("%s: the database is still unavailable after %.0fs (%s); retrying",
                             self.what, now - self.since, one_line(exc))
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay_s)
        return delay

    def recovered(self) -> None:
        if self.since is not None:
            self.log.info("%s: the database answers again after %.1fs", self.what, time.monotonic() - self.since)
        self.since = None
        self.failures = 0


def one_line(exc: BaseException) -> str:
    """An exception as one short line (libpq's messages span several)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
