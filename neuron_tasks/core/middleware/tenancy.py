"""Per-tenant QPS (a token bucket shared by every worker through Postgres) and token budgets.

A message over its tenant's limit is put back until it may run: not failed, no retry used.
While a tenant waits, dequeue skips its messages, so other tenants flow at full speed.
A process takes tokens from the shared bucket in small chunks when the limit is high (up to
qps/20 at a time, used within a second), so a busy tenant costs one round trip per chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy
from psycopg.rows import class_row

from neuron_tasks.core.consumer import PgMessageProxy
from neuron_tasks.core.middleware.context import claimed, postgres
from neuron_tasks.errors import Deferred
from neuron_tasks.sql import q

log = logging.getLogger(__name__)
STOCK_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """The `tenant_usage_now` query: tokens used this minute and today, and when each period ends."""

    minute_used: int
    day_used: int
    next_minute: datetime
    next_day: datetime


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """The `tenant_take` query: tokens granted from the shared bucket, else seconds to wait."""

    granted: int
    wait_s: float


class Tenancy(Middleware):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stock: dict[str, tuple[int, float]] = {}  # tenant -> (tokens, use before)

    def _from_stock(self, tenant: str) -> bool:
        with self._lock:
            tokens, until = self._stock.get(tenant, (0, 0.0))
            if tokens > 0 and time.monotonic() < until:
                self._stock[tenant] = (tokens - 1, until)
                return True
            return False

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        tenant = message.options.get("tenant")
        if not tenant:
            return
        pg, proxy = postgres(broker), claimed(message)
        if pg is None or proxy is None:
            return
        limits = pg.policies.tenant_or_default(tenant)
        if not limits.limited:
            return
        budgets = limits.tokens_per_minute is not None or limits.tokens_per_day is not None
        if limits.qps is not None and not budgets and self._from_stock(tenant):
            return
        with pg.soft_pool.connection() as conn:
            if budgets:
                with conn.cursor(row_factory=class_row(TenantUsage)) as cur:
                    usage = cur.execute(q("tenant_usage_now"), {"tenant": tenant}).fetchone()
                assert usage is not None  # an aggregate: always one row
                until = None
                if limits.tokens_per_day is not None and usage.day_used >= limits.tokens_per_day:
                    until = usage.next_day
                elif limits.tokens_per_minute is not None and usage.minute_used >= limits.tokens_per_minute:
                    until = usage.next_minute
                if until is not None:
                    conn.execute(q("tenant_block"), {"tenant": tenant, "until": until})
                    wait_ms = max(int((until - datetime.now(UTC)).total_seconds() * 1000), 1)
                    self._defer(proxy, wait_ms, f"tenant {tenant!r} token budget spent")
            if limits.qps is not None:
                burst = limits.burst if limits.burst is not None else max(1.0, limits.qps)
                want = max(1, min(100, int(limits.qps / 20)))
                if budgets:
                    want = 1  # budgets are checked per message
                with conn.cursor(row_factory=class_row(TokenGrant)) as cur:
                    grant = cur.execute(
                        q("tenant_take"), {"tenant": tenant, "qps": limits.qps, "burst": burst, "want": want}
                    ).fetchone()
                assert grant is not None  # a function's OUT parameters: always one row
                if grant.granted == 0:
                    self._defer(proxy, max(int(grant.wait_s * 1000), 1), f"tenant {tenant!r} over {limits.qps} qps")
                if grant.granted > 1:
                    with self._lock:
                        self._stock[tenant] = (grant.granted - 1, time.monotonic() + STOCK_TTL_S)

    @staticmethod
    def _defer(message: PgMessageProxy, wait_ms: int, reason: str) -> None:
        message.schedule_defer(wait_ms, reason)
        raise Deferred(f"{reason}; runs in {wait_ms} ms")
