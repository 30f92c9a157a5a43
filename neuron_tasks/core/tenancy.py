"""Tenants: their limits and token usage (plain functions; the CLI and actors call these)."""

from __future__ import annotations

import math
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.core.options import check_name
from neuron_tasks.errors import InvalidOption, NeuronTasksError
from neuron_tasks.sql import q


def set_tenant(
    pool: ConnectionPool,
    name: str,
    *,
    qps: float | None = None,
    burst: float | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
) -> None:
    """Create or change a tenant; None means unlimited. Burst defaults to max(1, qps)."""
    check_name("tenant", name)
    if qps is not None and (not math.isfinite(qps) or qps <= 0):
        raise InvalidOption(f"qps={qps} must be a positive number")
    if burst is not None and (not math.isfinite(burst) or burst < 1):
        raise InvalidOption(f"burst={burst} must be at least 1")
    if burst is not None and qps is None:
        raise InvalidOption("burst needs a qps")
    for label, value in (("tokens_per_minute", tokens_per_minute), ("tokens_per_day", tokens_per_day)):
        if value is not None and value <= 0:
            raise InvalidOption(f"{label}={value} must be a positive integer")
    if qps is not None and burst is None:
        burst = max(1.0, qps)
    with pool.connection() as conn:
        conn.execute(q("tenant_upsert"), {"name": name, "qps": qps, "burst": burst,
                                          "tokens_per_minute": tokens_per_minute, "tokens_per_day": tokens_per_day})


def delete_tenant(pool: ConnectionPool, name: str) -> bool:
    with pool.connection() as conn:
        return conn.execute(q("tenant_delete"), {"name": name}).rowcount > 0


def tenants(pool: ConnectionPool, name: str | None = None) -> list[dict[str, Any]]:
    """Tenants with limits, usage this minute and today, throttles and message counts."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q("tenant_overview"), {"name": name})
        return cur.fetchall()


def charge_tokens(pool: ConnectionPool, tenant: str, tokens: int) -> None:
    """Charge LLM (or any) tokens a job used to its tenant's budget."""
    if tokens < 0:
        raise InvalidOption(f"tokens={tokens} must be >= 0")
    with pool.connection() as conn:
        conn.execute(q("tenant_charge"), {"tenant": tenant, "tokens": int(tokens)})


def report_tokens(tokens: int) -> None:
    """Inside an actor: charge `tokens` to the running message's tenant (no-op without one)."""
    import dramatiq
    from dramatiq.middleware import CurrentMessage

    from neuron_tasks.core.broker import PostgresBroker

    message = CurrentMessage.get_current_message()
    if message is None:
        raise NeuronTasksError("report_tokens() is called from inside an actor")
    tenant = message.options.get("tenant")
    if tenant:
        broker = dramatiq.get_broker()
        if not isinstance(broker, PostgresBroker):
            raise NeuronTasksError(
                f"report_tokens() charges tenants in PostgreSQL; the broker is a {type(broker).__name__}"
            )
        charge_tokens(broker.pool, tenant, tokens)
