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
from datetime import UTC, datetime
from typing import Any

from dramatiq import Middleware

from neuron_tasks.errors import Deferred
from neuron_tasks.sql import q

log = logging.getLogger(__name__)
STOCK_TTL_S = 1.0


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

    def before_process_message(self, broker: Any, message: Any) -> None:
        tenant = message.options.get("tenant")
        policies = getattr(broker, "policies", None)
        if not tenant or policies is None:
            return
        limits = policies.tenant_or_default(tenant)
        if not limits.limited:
            return
        budgets = limits.tokens_per_minute is not None or limits.tokens_per_day is not None
        if limits.qps is not None and not budgets and self._from_stock(tenant):
            return
        with broker.soft_pool.connection() as conn:
            if budgets:
                minute_used, day_used, next_minute, next_day = conn.execute(
                    q("tenant_usage_now"), {"tenant": tenant}
                ).fetchone()
                until = None
                if limits.tokens_per_day is not None and day_used >= limits.tokens_per_day:
                    until = next_day
                elif limits.tokens_per_minute is not None and minute_used >= limits.tokens_per_minute:
                    until = next_minute
                if until is not None:
                    conn.execute(q("tenant_block"), {"tenant": tenant, "until": until})
                    wait_ms = max(int((until - datetime.now(UTC)).total_seconds() * 1000), 1)
                    self._defer(message, wait_ms, f"tenant {tenant!r} token budget spent")
            if limits.qps is not None:
                burst = limits.burst if limits.burst is not None else max(1.0, limits.qps)
                want = max(1, min(100, int(limits.qps / 20)))
                if budgets:
                    want = 1  # budgets are checked per message
                granted, wait_s = conn.execute(
                    q("tenant_take"), {"tenant": tenant, "qps": limits.qps, "burst": burst, "want": want}
                ).fetchone()
                if granted == 0:
                    self._defer(message, max(int(wait_s * 1000), 1), f"tenant {tenant!r} over {limits.qps} qps")
                if granted > 1:
                    with self._lock:
                        self._stock[tenant] = (granted - 1, time.monotonic() + STOCK_TTL_S)

    @staticmethod
    def _defer(message: Any, wait_ms: int, reason: str) -> None:
        message.schedule_defer(wait_ms, reason)
        raise Deferred(f"{reason}; runs in {wait_ms} ms")
