"""Pacing on the provider's rate-limit headers and a circuit breaker, shared through Postgres.

Every worker asks `llm_acquire_v1` before a call (one statement: it reserves a request from
the window the provider last reported, or says how long to wait) and reports the answer's
headers with `llm_observe_v1`. So N workers in any number of processes together stay under
the provider's limit, a 429's Retry-After holds every worker back, and a provider that keeps
failing (5xx, timeouts) opens the circuit for everyone: one probe is let through after
`llm_breaker_open_s`, and its success closes the circuit again.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.llm.errors import CircuitOpen, RateLimited
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.sql import q

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds from "20ms", "1s", "6m0s", "1h2m3.5s" or a bare number of seconds."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from retry-after-ms, or Retry-After as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateLimits:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} as sent by OpenAI-compatible APIs."""

    req_limit: int | None = None
    req_remaining: int | None = None
    req_reset_s: float | None = None
    tok_limit: int | None = None
    tok_remaining: int | None = None
    tok_reset_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimits:
        h = headers
        return cls(
            _int(h.get("x-ratelimit-limit-requests")),
            _int(h.get("x-ratelimit-remaining-requests")),
            parse_duration(h.get("x-ratelimit-reset-requests")),
            _int(h.get("x-ratelimit-limit-tokens")),
            _int(h.get("x-ratelimit-remaining-tokens")),
            parse_duration(h.get("x-ratelimit-reset-tokens")),
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """The shared state's answer before a call: go, probe (the one call let through an open
    circuit), open (circuit open) or wait, and for how long (seconds)."""

    decision: str
    wait_s: float


class Pacer:
    """Shared rate-limit and circuit-breaker state of providers (no-op without a pool)."""

    def __init__(self, pool: ConnectionPool | None, settings: LlmSettings) -> None:
        self.pool = pool
        self.settings = settings

    def _acquire(self, pool: ConnectionPool, params: dict[str, Any]) -> Admission:
        def run() -> Admission:
            with pool.connection() as conn, conn.cursor(row_factory=class_row(Admission)) as cur:
                row = cur.execute(q("provider_acquire"), params).fetchone()
            if row is None:
                raise RuntimeError("provider_acquire answered no row")
            return row

        return db.retrying(run, what="provider state (provider_acquire)")

    def _observe(self, pool: ConnectionPool, params: dict[str, Any]) -> None:
        def run() -> None:
            with pool.connection() as conn:
                conn.execute(q("provider_observe"), params)

        db.retrying(run, what="provider state (provider_observe)")

    def before(self, provider: str, tokens: int = 0) -> str:
        """Wait for room under the provider's limits; 'go' or 'probe'.

        Raises:
          RateLimited: the wait is longer than llm_pace_max_wait_s (retry the message later).
          CircuitOpen: the provider's circuit is open.
        """
        if self.pool is None:
            return "go"
        s = self.settings
        while True:
            answer = self._acquire(
                self.pool,
                {"provider": provider, "tokens": tokens, "threshold": s.llm_breaker_failures,
                 "probe_s": max(s.llm_timeout_ms / 1000.0, 1.0)},
            )
            decision = answer.decision
            if decision in ("go", "probe"):
                return str(decision)
            wait_s = float(answer.wait_s)
            if decision == "open":
                raise CircuitOpen(
                    f"circuit open for {provider}: it failed {s.llm_breaker_failures} times in a row; "
                    f"next try in {wait_s:.1f}s",
                    retry_after_s=wait_s,
                )
            if wait_s > s.llm_pace_max_wait_s:
                raise RateLimited(
                    f"{provider}: rate limit reached (shared across workers); retry in {wait_s:.1f}s",
                    retry_after_s=wait_s,
                )
            time.sleep(wait_s + random.uniform(0.0, 0.05))

    def observe(
        self, provider: str, limits: RateLimits | None, *, outcome: str, retry_after_s: float | None = None,
        error: str | None = None,
    ) -> None:
        """Record an answer. outcome: ok, throttled (429), failure (5xx, timeout, malformed)."""
        if self.pool is None:
            return
        lim = limits or RateLimits()
        s = self.settings
        try:
            self._observe(
                self.pool,
                {"provider": provider, "req_limit": lim.req_limit, "req_remaining": lim.req_remaining,
                 "req_reset_s": lim.req_reset_s, "tok_limit": lim.tok_limit, "tok_remaining": lim.tok_remaining,
                 "tok_reset_s": lim.tok_reset_s, "retry_after_s": retry_after_s, "outcome": outcome,
                 "error": (error or "")[:500] or None, "threshold": s.llm_breaker_failures,
                 "open_s": s.llm_breaker_open_s},
            )
        except Exception as exc:  # pacing is advisory: never fail the job for it
            log.warning("could not record the state of provider %s: %s", provider, exc)
