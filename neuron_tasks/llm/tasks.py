"""Queue jobs that are not LLM calls: HTTP calls to allowed hosts, SQL tasks from allowed roles.

http_call reaches a host only when its name is on llm_http_call_allow_hosts and every address it
resolves to is public (or explicitly allowed); it connects to the address it checked, under one
total deadline, and stops reading at the size cap, decompressed bytes included.

sql_task runs one statement as the low-privilege role neuron_tasks_sql_runner, through a
SECURITY DEFINER function that role owns (schema/012): SET ROLE is refused inside it, so the
statement cannot take the worker's role back. It is off unless llm_sql_task_enabled, and runs
only messages the database recorded as enqueued by a member of neuron_tasks_sql_submitter.
See docs/security.md.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json as jsonlib
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.db import redact
from neuron_tasks.llm.errors import (
    HostNotAllowed,
    InvalidRequest,
    MalformedReply,
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    ResponseTooLarge,
    SqlTaskTimeout,
)
from neuron_tasks.llm.http import install_log_redaction
from neuron_tasks.llm.pacing import parse_retry_after
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.sql import q

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SUBMITTER_ROLE = "neuron_tasks_sql_submitter"
RUNNER_ROLE = "neuron_tasks_sql_runner"
#: How long after its statement_timeout a statement that ignored the cancel keeps its session.
TERMINATE_GRACE_S = 1.0

install_log_redaction()


class SqlTaskRefused(PermanentError):
    """sql_task is off, or its message was not enqueued by a role allowed to submit SQL."""


class SqlTaskFailed(PermanentError):
    """The statement failed (permission denied, syntax, more than one statement, ...)."""


# -- http_call: the allow-list ----------------------------------------------------------------------
def _canonical(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _address(host: str) -> IP | None:
    """The host as an IP address when it is one (IPv4-mapped IPv6 as IPv4)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_entry(entry: str) -> tuple[str, int | None] | None:
    """An allow-list entry as (host, port or None): host, host:port, *.domain, an IPv4 address,
    an IPv6 address bare (::1) or in brackets ([::1], [::1]:8080). None when malformed."""
    e = entry.strip().lower()
    if not e:
        return None
    if e.startswith("["):
        end = e.find("]")
        if end < 0:
            return None
        host, rest = e[1:end], e[end + 1:]
    elif e.count(":") > 1:
        return _canonical(e), None
    else:
        host, sep, port = e.partition(":")
        rest = sep + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    return _canonical(host), (int(rest[1:]) if rest else None)


def host_allowed(url: str, allow: list[str]) -> bool:
    """Is the URL's host on the allow-list? Entries: host, host:port, *.domain (subdomains),
    IP addresses (IPv6 bare or in brackets, with or without :port)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = _canonical(parts.hostname)
    for entry in allow:
        parsed = parse_entry(entry)
        if parsed is None:
            continue
        name, entry_port = parsed
        if entry_port is not None and entry_port != port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]):
                return True
        elif host == name:
            return True
    return False


def explicitly_allowed(settings: LlmSettings) -> tuple[set[IP], list[Network]]:
    """Non-public addresses http_call may reach: addresses named on the allow-list itself and
    the networks of llm_http_call_allow_networks."""
    listed: set[IP] = set()
    for entry in settings.llm_http_call_allow_hosts:
        parsed = parse_entry(entry)
        addr = _address(parsed[0]) if parsed else None
        if addr is not None:
            listed.add(addr)
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.llm_http_call_allow_networks]
    return listed, networks


def address_allowed(addr: IP, listed: set[IP], networks: Iterable[Network]) -> bool:
    """Public addresses are; private, loopback, link-local and reserved ones only when explicitly
    allowed; unspecified (0.0.0.0, ::) and multicast ones never."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified or addr.is_multicast:
        return False
    if addr in listed or any(addr.version == n.version and addr in n for n in networks):
        return True
    return addr.is_global


# -- http_call: the transport that connects to the address it checked, under a deadline -------------
class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends at the call's total deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("total deadline reached")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


#: Name lookups of http_call, so that each can be waited for no longer than its call's deadline.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="http-call-resolve")


class _CheckedBackend(httpcore.NetworkBackend):
    """Resolves the host once, refuses it unless every address is allowed, connects to those."""

    def __init__(self, settings: LlmSettings, deadline: float) -> None:
        self._inner = httpcore.SyncBackend()
        self._listed, self._networks = explicitly_allowed(settings)
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        # The name lookup counts against the call's deadline too (the system resolver can take
        # far longer); a lookup still running then is left to finish in the resolver's thread.
        lookup = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = lookup.result(timeout=max(self._deadline - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError:
            raise httpcore.ConnectTimeout(f"total deadline reached while resolving {host}") from None
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        refused = [a for a in addresses if not address_allowed(ipaddress.ip_address(a.split("%")[0]),
                                                               self._listed, self._networks)]
        if refused or not addresses:
            raise HostNotAllowed(
                f"http_call: {host} resolves to {', '.join(refused) or 'no address'}: private, loopback, "
                "link-local or otherwise non-public; allow it explicitly with "
                "NEURON_TASKS_LLM_HTTP_CALL_ALLOW_NETWORKS (or list the address itself on the allow-list)")
        error: Exception = httpcore.ConnectError(f"cannot connect to {host}")
        for addr in addresses:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("total deadline reached")
            try:
                stream = self._inner.connect_tcp(addr, port, timeout=min(timeout or left, left),
                                                 local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("http_call does not use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_ssl: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process (loading the CA bundle costs milliseconds)."""
    global _ssl
    if _ssl is None:
        _ssl = httpx.create_ssl_context()
    return _ssl


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that connects through `backend`."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=_ssl_context(), network_backend=backend,
                                             max_connections=1, http1=True, http2=False)


class _Inflater:
    """Decompresses gzip or deflate, never more than the room it is given per call."""

    def __init__(self, encoding: str) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self.raw_tried = False
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> bytes:
        """At most room + 1 bytes (one more than fits tells the caller it overflowed)."""
        out = bytearray()
        while data and len(out) <= room:
            try:
                out += self.d.decompress(data, room + 1 - len(out))
            except zlib.error as exc:
                if self.gzip or self.raw_tried or out:
                    raise MalformedReply(f"http_call: the compressed body is corrupt: {exc}") from None
                self.raw_tried = True  # "deflate" sent as a raw stream (no zlib header)
                self.d = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            data = self.d.unconsumed_tail
            if self.d.eof:
                data = self.d.unused_data
                if not (self.gzip and data):
                    break
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
        return bytes(out)


def _inflater(response: httpx.Response) -> _Inflater | None:
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater(codings[0])
    raise MalformedReply(f"http_call: content-encoding {', '.join(codings)} is not supported (gzip, deflate only)")


def http_call(method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None,
              settings: LlmSettings, timeout_s: float | None = None) -> dict[str, Any]:
    """One HTTP request to an allowed host; returns {status, headers, json | text}.

    429, 5xx, timeouts and connection errors raise transient errors (retried); any other
    status is returned. Redirects are not followed (they could leave the allow-list). The whole
    call, body included, ends at the timeout (a message may only shorten it).
    """
    method = method.upper()
    shown = redact(url)
    if method not in METHODS:
        raise InvalidRequest(f"http_call: method {method!r} is not one of {sorted(METHODS)}")
    if headers is not None and not isinstance(headers, dict):
        raise InvalidRequest("http_call: headers must be an object of names and values")
    if any(str(k).strip().lower() == "host" for k in (headers or {})):
        raise InvalidRequest("http_call: a Host header is not allowed: the URL names the host")
    if not host_allowed(url, settings.llm_http_call_allow_hosts):
        raise HostNotAllowed(
            f"http_call: host of {shown!r} is not allowed; add it to NEURON_TASKS_LLM_HTTP_CALL_ALLOW_HOSTS "
            f"(now: {','.join(settings.llm_http_call_allow_hosts) or 'empty'})"
        )
    timeout = settings.llm_http_call_timeout_s
    if timeout_s is not None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise InvalidRequest("http_call: timeout_s must be a positive number of seconds")
        timeout = min(float(timeout_s), timeout)
    deadline = time.monotonic() + timeout
    cap = settings.llm_http_call_max_bytes
    sent = dict(headers or {})
    if not any(str(k).strip().lower() == "accept-encoding" for k in sent):
        sent["accept-encoding"] = "gzip, deflate"  # what _Inflater decodes within the cap
    transport = _CheckedTransport(_CheckedBackend(settings, deadline))
    try:
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client, \
                client.stream(method, url, json=json, headers=sent) as response:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise ResponseTooLarge(f"http_call: {shown} answered {declared} bytes, over the cap of {cap}")
            inflater = _inflater(response)
            body = bytearray()
            raw = 0
            for chunk in response.iter_raw():
                raw += len(chunk)
                body += inflater.feed(chunk, cap - len(body)) if inflater else chunk
                if len(body) > cap or raw > cap:
                    raise ResponseTooLarge(f"http_call: {shown} answered more than the cap of {cap} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("total deadline reached")
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"http_call: {method} {shown}: no complete answer within {timeout} s") from None
    except httpx.TransportError as exc:
        raise ProviderUnavailable(f"http_call: {method} {shown}: {type(exc).__name__}: {exc}") from None
    except httpx.InvalidURL as exc:
        raise InvalidRequest(f"http_call: invalid URL {shown}: {exc}") from None
    status = response.status_code
    text = body.decode(_encoding(response), "replace")
    if status == 429:
        raise RateLimited(f"http_call: {shown}: 429", retry_after_s=parse_retry_after(response.headers))
    if status >= 500:
        raise ProviderUnavailable(f"http_call: {shown}: {status}: {text[:200]}",
                                  retry_after_s=parse_retry_after(response.headers))
    result: dict[str, Any] = {"status": status, "headers": dict(response.headers)}
    if "json" in response.headers.get("content-type", ""):
        try:
            result["json"] = jsonlib.loads(text)
            return result
        except ValueError:
            pass
    result["text"] = text
    return result


def _encoding(response: httpx.Response) -> str:
    import codecs

    name = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        return "utf-8"
    return name


# -- sql_task ------------------------------------------------------------------------------------------
def sql_task(pool: ConnectionPool, statement: str, params: Any = None, *, settings: LlmSettings,
             row_id: int | None, fetch: int = 0, timeout_ms: int | None = None) -> dict[str, Any]:
    """Run one statement of the message in row `row_id` as neuron_tasks_sql_runner.

    Returns {"rowcount": n} and, with `fetch` > 0 and a statement that returns rows, "rows" (at
    most min(fetch, llm_sql_task_max_rows) rows, and at most llm_sql_task_max_bytes of them),
    "columns" and "truncated". Refused (a dead letter, with the reason) when sql_task is off or
    the message's enqueuer is not a member of neuron_tasks_sql_submitter.
    """
    if not settings.llm_sql_task_enabled:
        raise SqlTaskRefused(
            "sql_task is off: set NEURON_TASKS_LLM_SQL_TASK_ENABLED=true on the workers to run SQL from the queue "
            "(it then runs as the role neuron_tasks_sql_runner, for members of neuron_tasks_sql_submitter; "
            "see docs/security.md)")
    if not isinstance(statement, str) or not statement.strip():
        raise InvalidRequest("sql_task: statement must be a non-empty string")
    if params is not None and not isinstance(params, list | dict):
        raise InvalidRequest("sql_task: params must be a list (for %s) or an object (for %(name)s)")
    if isinstance(fetch, bool) or not isinstance(fetch, int) or fetch < 0:
        raise InvalidRequest("sql_task: fetch must be a whole number of rows, 0 or more")
    if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float)
                                   or timeout_ms <= 0):
        raise InvalidRequest("sql_task: timeout_ms must be a positive number of milliseconds")
    limit_ms = settings.llm_sql_task_timeout_ms
    if timeout_ms is not None:
        limit_ms = max(1, min(int(timeout_ms), limit_ms))
    _admit(pool, row_id)
    rows = min(fetch, settings.llm_sql_task_max_rows)
    out = _run(pool, statement, params, limit_ms=limit_ms, max_rows=rows, max_bytes=settings.llm_sql_task_max_bytes)
    if fetch == 0:
        return {"rowcount": out["rowcount"]}
    return dict(out)


def _admit(pool: ConnectionPool, row_id: int | None) -> None:
    """Refuse unless the database recorded a submitter as this message's enqueuer and the runner
    role is still as low as schema/012 made it."""
    if row_id is None:
        raise SqlTaskRefused("sql_task: cannot tell who enqueued this message (no queue row): refused")
    try:
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute(q("sql_task_admission"), {"row_id": row_id}).fetchone()
    except psycopg.ProgrammingError as exc:  # no enqueued_by column, runner or roles yet
        raise SqlTaskRefused(f"sql_task: this database is not upgraded for it ({_pg_text(exc)}): run "
                             "`neuron-tasks db upgrade`") from None
    if found is None:
        raise SqlTaskRefused(f"sql_task: message row {row_id} is not a sql_task in neuron_tasks.messages: refused")
    if found["enqueued_by"] is None:
        raise SqlTaskRefused("sql_task: the message has no recorded enqueuer (enqueued before schema 012): refused")
    if not found["submitter"]:
        raise SqlTaskRefused(
            f"sql_task: enqueued by role {found['enqueued_by']!r}, which is not a member of {SUBMITTER_ROLE}: "
            f"refused (GRANT {SUBMITTER_ROLE} TO that role to allow it)")
    if not found["runner_safe"]:
        raise SqlTaskRefused(
            f"sql_task: the role {RUNNER_ROLE} or its function neuron_tasks.sql_task_run_v1 was changed (it must be "
            "no superuser, have no access to schema neuron_tasks and own the SECURITY DEFINER function): refused")


def _run(pool: ConnectionPool, statement: str, params: Any, *, limit_ms: int, max_rows: int,
         max_bytes: int) -> dict[str, Any]:
    """The statement in its own session and transaction; the session is closed afterwards, so
    nothing the statement set (settings, locks, temporary objects) outlives it."""
    conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
    base = pool.kwargs() if callable(pool.kwargs) else pool.kwargs or {}
    kwargs = {**base, "autocommit": True, "application_name": "neuron_tasks-sql_task"}
    conn = psycopg.connect(conninfo, **kwargs)  # OperationalError (database away): retried
    fired = threading.Event()

    def end_session(pid: int) -> None:  # the statement caught its own cancel: end its session
        fired.set()
        try:
            with pool.connection() as admin:
                admin.execute(q("sql_task_terminate"), {"pid": pid})
        except psycopg.Error:
            pass

    watchdog = threading.Timer(limit_ms / 1000.0 + TERMINATE_GRACE_S, end_session, (conn.info.backend_pid,))
    watchdog.daemon = True
    try:
        text = psycopg.ClientCursor(conn).mogrify(statement, params) if params is not None else statement
        with conn.transaction():
            conn.execute(q("sql_task_timeout"), {"ms": str(limit_ms)})
            watchdog.start()
            row = conn.execute(q("sql_task_run"), {"statement": text, "max_rows": max_rows,
                                                   "max_bytes": max_bytes}).fetchone()
        if row is None or not isinstance(row[0], dict):
            raise SqlTaskFailed("sql_task: the runner answered nothing")
        return dict(row[0])
    except psycopg.errors.QueryCanceled:
        raise SqlTaskTimeout(f"sql_task: statement ran past its statement_timeout of {limit_ms} ms") from None
    except psycopg.OperationalError:
        if fired.is_set():
            raise SqlTaskTimeout(
                f"sql_task: statement ran past its statement_timeout of {limit_ms} ms and ignored the cancel: "
                "its session was ended") from None
        raise  # the connection was lost, a serialization failure, a deadlock: worth retrying
    except psycopg.Error as exc:
        raise SqlTaskFailed(f"sql_task: {_pg_text(exc)}") from None
    finally:
        watchdog.cancel()
        conn.close()


def _pg_text(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip().splitlines()[0]
    return f"{text} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else text
