"""A Dramatiq results backend on Postgres (table neuron_tasks.results).

    from dramatiq.results import Results
    backend = PostgresResultBackend(broker=broker)        # or url=...
    broker.add_middleware(Results(backend=backend))
    msg = some_actor.send_with_options(args=(...), store_results=True)
    msg.get_result(block=True, timeout=10_000)           # from any process

Results expire after their TTL (Dramatiq's `result_ttl`): reads ignore expired rows and
`purge_expired()` (run by the cache rotation job, and now and then by writers) deletes them.
Concurrent writers of one process share round trips: a storing thread writes every result
queued at that moment in one INSERT, and threads whose result another one took wait for that
write (each store returns only once its row is written, so a job is never acked before its
result is stored).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dramatiq.broker import Broker
from dramatiq.encoder import Encoder
from dramatiq.message import Message
from dramatiq.results import Results
from dramatiq.results.backend import Missing, MResult, ResultBackend
from dramatiq.results.errors import ResultMissing, ResultTimeout
from psycopg.rows import scalar_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.sql import q

#: Blocking reads poll from this interval, doubling up to POLL_MAX_S.
POLL_MIN_S = 0.002
POLL_MAX_S = 0.1
PURGE_EVERY = 5000


@runtime_checkable
class PoolOwner(Protocol):
    """A broker with a connection pool (the Postgres broker)."""

    @property
    def pool(self) -> ConnectionPool: ...


@dataclass(slots=True)
class _Pending:
    key: str
    value: bytes
    ttl_ms: int
    taken: bool = False
    error: BaseException | None = None
    event: threading.Event = field(default_factory=threading.Event)


class PostgresResultBackend(ResultBackend):
    """Results in Postgres, readable from any process that reaches the database.

    Parameters:
      url: PostgreSQL URL (a pool of its own, opened on first use), or
      broker: a PostgresBroker whose pool is used (the default when neither is given:
        dramatiq's global broker at first use), or
      pool: a psycopg ConnectionPool (autocommit).
    """

    def __init__(self, url: str | None = None, *, broker: Broker | None = None, pool: ConnectionPool | None = None,
                 namespace: str = "neuron-tasks-results", encoder: Encoder | None = None) -> None:
        super().__init__(namespace=namespace, encoder=encoder)
        self._url = url
        self._broker = broker
        self._own_pool: ConnectionPool | None = pool
        self._pool_pid = os.getpid() if pool is not None else -1
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._writes = 0

    @property
    def pool(self) -> ConnectionPool:
        if self._url is None and self._own_pool is None:
            broker = self._broker
            if broker is None:
                import dramatiq

                broker = dramatiq.get_broker()
            if not isinstance(broker, PoolOwner):
                raise TypeError("PostgresResultBackend needs url=, pool= or a PostgresBroker")
            return broker.pool
        with self._lock:
            if self._own_pool is None or self._pool_pid != os.getpid():
                assert self._url is not None
                self._own_pool = db.make_pool(self._url, max_size=4, name="neuron_tasks_results")
                self._pool_pid = os.getpid()
            return self._own_pool

    def close(self) -> None:
        if self._url is not None and self._own_pool is not None:
            self._own_pool.close()
            self._own_pool = None

    # -- Dramatiq's backend API ----------------------------------------------------------------
    def _get(self, message_key: str) -> MResult:
        def run() -> bytes | None:
            with self.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
                value = cur.execute(q("results_get"), {"key": message_key}).fetchone()
                return None if value is None else bytes(value)

        value = db.retrying(run, what="read result")
        if value is None:
            return Missing
        return self.encoder.decode(value)

    def get_result(self, message: Message[Any], *, block: bool = False, timeout: int | None = None) -> Any:
        """The result of `message`; with `block`, wait up to `timeout` ms (default 10 s).

        Raises ResultMissing (not blocking, none yet), ResultTimeout, or ResultFailure when
        the job failed for good (the actor's exception type and message).
        """
        deadline = time.monotonic() + (10_000 if timeout is None else timeout) / 1000.0
        key = self.build_message_key(message)
        delay = POLL_MIN_S
        while True:
            result = self._get(key)
            if result is not Missing:
                return self.unwrap_result(result)
            if not block:
                raise ResultMissing(message)
            now = time.monotonic()
            if now >= deadline:
                raise ResultTimeout(message)
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, POLL_MAX_S)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        item = _Pending(message_key, self.encoder.encode(result), int(ttl))
        with self._lock:
            self._pending.append(item)
        with self._lock:
            batch = None if item.taken else self._pending
            if batch is not None:
                self._pending = []
                for p in batch:
                    p.taken = True
        if batch is None:
            item.event.wait()
        else:
            self._write(batch)
        if item.error is not None:
            raise item.error

    def _write(self, batch: list[_Pending]) -> None:
        params = {"keys": [p.key for p in batch], "values": [p.value for p in batch],
                  "ttl_ms": [p.ttl_ms for p in batch]}

        def run() -> None:
            with self.pool.connection() as conn:
                conn.execute(q("results_store"), params)

        try:
            db.retrying(run, what="store results")
        except BaseException as exc:
            for p in batch:
                p.error = exc
        finally:
            for p in batch:
                p.event.set()
        self._writes += len(batch)
        if self._writes >= PURGE_EVERY:
            self._writes = 0
            try:
                self.purge_expired()
            except Exception:
                pass

    def purge_expired(self, limit: int = 10_000) -> int:
        """Delete up to `limit` expired results; returns how many."""
        with self.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
            deleted = cur.execute(q("results_purge"), {"limit": limit}).fetchone()
        return int(deleted) if deleted is not None else 0


def ensure_results(broker: Broker, *, result_ttl_ms: int | None = None) -> ResultBackend:
    """The broker's results backend; adds Results(PostgresResultBackend) when it has none.

    Opens no connection: the backend uses the broker's pool on first use.
    """
    for mw in broker.middleware:
        if isinstance(mw, Results):
            return mw.backend
    backend = PostgresResultBackend(broker=broker)
    broker.add_middleware(Results(backend=backend, result_ttl=result_ttl_ms))
    return backend
