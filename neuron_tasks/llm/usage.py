"""Token usage per job and tenant (neuron_tasks.llm_usage).

Recording a row also charges its tokens to the tenant's budget (neuron_tasks.tenant_usage, which
the Tenancy middleware checks) in the same statement, and sets its `charged_at`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import psycopg

from neuron_tasks.sql import q


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant: str | None
    tokens: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    estimated: bool = False
    cached: bool = False
    operation: str | None = None
    provider: str | None = None
    model: str | None = None
    message_id: str | None = None


_COLUMNS = tuple(f.name for f in fields(UsageRow))


def record_usage_many(conn: psycopg.Connection, rows: list[UsageRow], *, wait_flush: bool = True) -> None:
    """Insert many usage rows in one statement. `wait_flush=False` (jobs, on an autocommit
    connection) commits without waiting for the WAL flush: the job's ack makes it durable."""
    if not rows:
        return
    params: dict[str, Any] = {name: [getattr(r, name) for r in rows] for name in _COLUMNS}
    params["synchronous_commit"] = "on" if wait_flush else "off"
    conn.execute(q("usage_insert"), params)


def record_usage(
    conn: psycopg.Connection,
    tenant: str | None,
    tokens: int,
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    estimated: bool = False,
    cached: bool = False,
    operation: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    message_id: str | None = None,
) -> None:
    """Record that `tenant` used `tokens` (in the caller's transaction, if any)."""
    record_usage_many(conn, [UsageRow(tenant, tokens, prompt_tokens, completion_tokens, estimated, cached,
                                      operation, provider, model, message_id)])


def trim_usage(conn: psycopg.Connection[Any]) -> int:
    """Retention of llm_usage (run by the scheduler's leader): rows older than
    llm_usage_retention_s that were already charged to their tenant."""
    from neuron_tasks.core.runtime import effective, runtime_values
    from neuron_tasks.llm.settings import LlmSettings

    s = effective(LlmSettings(), runtime_values(conn))
    return conn.execute(q("llm_trim_usage"), {"retention_s": s.llm_usage_retention_s}).rowcount
