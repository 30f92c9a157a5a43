"""Tenants: their limits and token usage (plain functions; the CLI and actors call these)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from neuron_tasks.core.options import check_name, finite_number
from neuron_tasks.errors import InvalidOption, NeuronTasksError
from neuron_tasks.sql import q

#: A tenant waits at most a day for its next token; no bucket holds more than a billion.
MIN_QPS = 1 / 86_400
MAX_RATE = 1e9
MAX_TOKENS = 2**63 - 1  # bigint


def _real(value: object) -> bool:
    return finite_number(value)


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
    if qps is not None and (not _real(qps) or not MIN_QPS <= qps <= MAX_RATE):
        raise InvalidOption(f"qps={qps!r} must be a number from {MIN_QPS:.6g} (one job a day) to {MAX_RATE:g}")
    if burst is not None and (not _real(burst) or not 1 <= burst <= MAX_RATE):
        raise InvalidOption(f"burst={burst!r} must be a number from 1 to {MAX_RATE:g}")
    if burst is not None and qps is None:
        raise InvalidOption("burst needs a qps")
    for label, value in (("tokens_per_minute", tokens_per_minute), ("tokens_per_day", tokens_per_day)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_TOKENS):
            raise InvalidOption(f"{label}={value!r} must be an integer from 1 to {MAX_TOKENS}")
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
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 <= tokens <= MAX_TOKENS:
        raise InvalidOption(f"tokens={tokens!r} must be an integer from 0 to {MAX_TOKENS}")
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
