"""Tenant limits and topic settings, read from Postgres and cached briefly in each process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.config import Settings
from neuron_tasks.sql import q


@dataclass(frozen=True, slots=True)
class TenantLimits:
    name: str
    qps: float | None = None
    burst: float | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.qps, self.tokens_per_minute, self.tokens_per_day))


@dataclass(frozen=True, slots=True)
class TopicSettings:
    name: str
    concurrency: int | None = None
    max_retries: int | None = None
    delay_s: float | None = None
    priority: int | None = None


@runtime_checkable
class PolicySource(Protocol):
    """Where a broker finds its tenants' limits and topics' settings (Postgres or in memory)."""

    def tenant(self, name: str) -> TenantLimits | None: ...

    def tenant_or_default(self, name: str) -> TenantLimits: ...

    def topic(self, name: str) -> TopicSettings | None: ...

    def invalidate(self) -> None: ...


@runtime_checkable
class HasPolicies(Protocol):
    """A broker with tenant and topic policies (the Postgres and in-memory brokers)."""

    @property
    def policies(self) -> PolicySource: ...


class Policies:
    """A TTL cache of the tenants and topics tables (refreshed at most every policy_cache_s)."""

    def __init__(self, pool: Callable[[], ConnectionPool], settings: Settings) -> None:
        self._pool = pool
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded = -1e9
        self._tenants: dict[str, TenantLimits] = {}
        self._topics: dict[str, TopicSettings] = {}

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded < self.settings.policy_cache_s:
            return
        with self._lock:
            if time.monotonic() - self._loaded < self.settings.policy_cache_s:
                return
            def read(wait_s: float) -> tuple[list[TenantLimits], list[TopicSettings]]:
                with self._pool().connection(timeout=wait_s) as conn:
                    with conn.cursor(row_factory=class_row(TenantLimits)) as cur:
                        tenants = cur.execute(q("tenant_limits")).fetchall()
                    with conn.cursor(row_factory=class_row(TopicSettings)) as cur:
                        return tenants, cur.execute(q("topic_settings")).fetchall()

            # Producers check tenants and topics at enqueue: the same bound as the enqueue itself.
            tenants, topics = db.within(read, timeout_s=self.settings.enqueue_timeout_s,
                                        what="reading tenant and topic settings")
            self._tenants = {t.name: t for t in tenants}
            self._topics = {t.name: t for t in topics}
            self._loaded = time.monotonic()

    def invalidate(self) -> None:
        self._loaded = -1e9

    def tenant(self, name: str) -> TenantLimits | None:
        """The tenant's limits; None when it is not configured."""
        self._refresh()
        return self._tenants.get(name)

    def tenant_or_default(self, name: str) -> TenantLimits:
        found = self.tenant(name)
        if found is not None:
            return found
        s = self.settings
        return TenantLimits(name, s.default_tenant_qps, s.default_tenant_burst, s.default_tenant_tokens_per_minute,
                            s.default_tenant_tokens_per_day)

    def topic(self, name: str) -> TopicSettings | None:
        self._refresh()
        return self._topics.get(name)
