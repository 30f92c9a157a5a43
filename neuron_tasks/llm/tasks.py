"""Queue jobs that are not LLM calls: HTTP calls to allowed hosts, SQL tasks for trusted callers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg_pool import ConnectionPool

from neuron_tasks.llm.errors import (
    HostNotAllowed,
    InvalidRequest,
    ProviderUnavailable,
    RateLimited,
    ResponseTooLarge,
    SqlTaskTimeout,
)
from neuron_tasks.llm.pacing import parse_retry_after
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.sql import q

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}


def host_allowed(url: str, allow: list[str]) -> bool:
    """Is the URL's host on the allow-list? Entries: host, host:port, or *.domain (subdomains)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in allow:
        entry = entry.strip().lower()
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif ":" in entry and not entry.startswith("["):
            h, _, p = entry.rpartition(":")
            if host == h and str(port) == p:
                return True
        elif host == entry:
            return True
    return False


def http_call(method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None,
              settings: LlmSettings, timeout_s: float | None = None) -> dict[str, Any]:
    """One HTTP request to an allowed host; returns {status, headers, json | text}.

    429, 5xx, timeouts and connection errors raise transient errors (retried); any other
    status is returned. Redirects are not followed (they could leave the allow-list).
    """
    method = method.upper()
    if method not in METHODS:
        raise InvalidRequest(f"http_call: method {method!r} is not one of {sorted(METHODS)}")
    if not host_allowed(url, settings.llm_http_call_allow_hosts):
        raise HostNotAllowed(
            f"http_call: host of {url!r} is not allowed; add it to NEURON_TASKS_LLM_HTTP_CALL_ALLOW_HOSTS "
            f"(now: {','.join(settings.llm_http_call_allow_hosts) or 'empty'})"
        )
    timeout = min(timeout_s or settings.llm_http_call_timeout_s, settings.llm_http_call_timeout_s)
    cap = settings.llm_http_call_max_bytes
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client, client.stream(
                method, url, json=json, headers=headers) as response:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise ResponseTooLarge(f"http_call: {url} answered {declared} bytes, over the cap of {cap}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > cap:
                    raise ResponseTooLarge(f"http_call: {url} answered more than the cap of {cap} bytes")
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"http_call: {method} {url}: no answer within {timeout}s") from None
    except httpx.TransportError as exc:
        raise ProviderUnavailable(f"http_call: {method} {url}: {type(exc).__name__}: {exc}") from None
    status = response.status_code
    text = body.decode(response.encoding or "utf-8", "replace")
    if status == 429:
        raise RateLimited(f"http_call: {url}: 429", retry_after_s=parse_retry_after(response.headers))
    if status >= 500:
        raise ProviderUnavailable(f"http_call: {url}: {status}: {text[:200]}",
                                  retry_after_s=parse_retry_after(response.headers))
    result: dict[str, Any] = {"status": status, "headers": dict(response.headers)}
    if "json" in response.headers.get("content-type", ""):
        try:
            import json as jsonlib

            result["json"] = jsonlib.loads(text)
            return result
        except ValueError:
            pass
    result["text"] = text
    return result


def sql_task(pool: ConnectionPool, statement: str, params: Any = None, *, timeout_ms: int,
             fetch: int = 0) -> dict[str, Any]:
    """Run one statement in its own transaction under statement_timeout (for trusted callers).

    Returns {"rowcount": n} and, with `fetch` > 0, up to that many rows as lists.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise InvalidRequest("sql_task: statement must be a non-empty string")
    try:
        with pool.connection() as conn, conn.transaction():
            conn.execute(q("sql_task_timeout"), {"ms": str(int(timeout_ms))})
            cur = conn.execute(statement, params)  # trusted callers only
            result: dict[str, Any] = {"rowcount": cur.rowcount}
            if fetch and cur.description:
                result["rows"] = [[_plain(v) for v in r] for r in cur.fetchmany(fetch)]
                result["columns"] = [d.name for d in cur.description]
            return result
    except psycopg.errors.QueryCanceled as exc:
        raise SqlTaskTimeout(f"sql_task: statement ran past its statement_timeout of {timeout_ms} ms: {exc}") from None


def _plain(value: Any) -> Any:
    """A JSON-encodable form of a column value."""
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)
