"""Per-tenant QPS (a token bucket shared by every worker through Postgres) and token budgets.

A message over its tenant's limit is put back until it may run: not failed, no retry used.
While a tenant waits, dequeue skips its messages, so other tenants flow at full speed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from dramatiq import Middleware

from ..errors import Deferred
from ..sql import q

log = logging.getLogger(__name__)


class Tenancy(Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        tenant = message.options.get("tenant")
        policies = getattr(broker, "policies", None)
        if not tenant or policies is None:
            return
        limits = policies.tenant_or_default(tenant)
        if not limits.limited:
            return
        with broker.pool.connection() as conn:
            if limits.tokens_per_minute is not None or limits.tokens_per_day is not None:
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
                    self._defer(broker, message, wait_ms, f"tenant {tenant!r} token budget spent")
            if limits.qps is not None:
                burst = limits.burst if limits.burst is not None else max(1.0, limits.qps)
                (wait_s,) = conn.execute(
                    q("tenant_take"), {"tenant": tenant, "qps": limits.qps, "burst": burst}
                ).fetchone()
                if wait_s > 0:
                    self._defer(broker, message, max(int(wait_s * 1000), 1), f"tenant {tenant!r} over {limits.qps} qps")

    @staticmethod
    def _defer(broker: Any, message: Any, wait_ms: int, reason: str) -> None:
        message.schedule_defer(wait_ms, reason)
        raise Deferred(f"{reason}; runs in {wait_ms} ms")
