"""The Postgres broker: a real `dramatiq.Broker` on psycopg 3.

Enqueue inserts a row (NOTIFY wakes workers); workers claim rows in batches with
FOR UPDATE SKIP LOCKED and hold a lease their heartbeat renews; results are written in
batches by the completer; a sweeper returns the messages of dead workers.
See docs/architecture.md for the life cycle and the SQL of each step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import dramatiq
from dramatiq.broker import Broker, Consumer
from dramatiq.message import Message
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    MiddlewareError,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from psycopg.rows import RowFactory, scalar_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.config import Settings
from neuron_tasks.core.broker_test_api import BrokerTestAPI
from neuron_tasks.core.completer import Completer
from neuron_tasks.core.consumer import PgConsumer, PgMessageProxy, Room
from neuron_tasks.core.hooks import Hooks
from neuron_tasks.core.keeper import Keeper, Stats
from neuron_tasks.core.listener import Listener
from neuron_tasks.core.middleware import (
    Deadlines,
    MessageGuard,
    MessageOptions,
    PoisonGuard,
    Retries,
    Tenancy,
    Topics,
    WorkerStats,
)
from neuron_tasks.core.policies import Policies
from neuron_tasks.core.producer import Producer
from neuron_tasks.errors import ConfigurationError
from neuron_tasks.sql import q

if TYPE_CHECKING:
    from neuron_tasks.core.runtime import SettingsVersion

log = logging.getLogger(__name__)
R = TypeVar("R")

class _QuietDeferrals(logging.Filter):
    """Dramatiq logs every skipped message as a warning; a deferral by a limit is routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Message %s was skipped." and isinstance(record.args, tuple) and record.args:
            message = record.args[0]
            return not (isinstance(message, PgMessageProxy) and message.deferred is not None)
        return True


_worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
if not any(isinstance(f, _QuietDeferrals) for f in _worker_log.filters):
    _worker_log.addFilter(_QuietDeferrals())


def default_middleware(settings: Settings, stats: Stats) -> list[Middleware]:
    """Dramatiq's defaults (time limit and retries from the settings) with neuron_tasks' own:
    deadlines, tenant limits and topic limits run first, so a message that must wait or fail
    does so before anything else starts. MessageGuard comes first of all: a message no enqueue would
    accept is dead-lettered before any other middleware reads its options."""
    return [
        MessageGuard(),
        Deadlines(),
        Tenancy(),
        Topics(),
        PoisonGuard(),
        AgeLimit(),
        TimeLimit(time_limit=settings.timeout_ms),
        ShutdownNotifications(),
        Callbacks(),
        CurrentMessage(),
        Pipelines(),
        Retries(
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
        ),
        MessageOptions(),
        WorkerStats(stats),
        *_metrics_middleware(),
    ]


def _metrics_middleware() -> list[Middleware]:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return []
    from neuron_tasks.core.middleware.metrics import Metrics

    return [Metrics()]


class PostgresBroker(BrokerTestAPI, Broker):
    """A Dramatiq broker whose queues are rows in PostgreSQL.

    Parameters:
      url: PostgreSQL URL; defaults to settings.database_url, else the embedded server.
      settings: a `Settings`; built from the environment when omitted.
      middleware: the full middleware list (Dramatiq's convention); defaults to
        Dramatiq's defaults configured from settings plus neuron_tasks' own.
      owner: this process's worker id (the lease owner of what it claims); by default
        $NEURON_TASKS_WORKER_OWNER (set by the supervisor of `neuron-tasks worker`, which renews
        the leases of that id while the process lives), else a new random id.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        middleware: list[Middleware] | None = None,
        owner: uuid.UUID | None = None,
    ) -> None:
        self._hooks = Hooks()  # before Broker.__init__, which adds the middleware
        self.settings = settings or Settings()
        self._base_settings = self.settings.model_copy()  # defaults < file < environment
        self._settings_version: SettingsVersion | None = None
        self.stats = Stats()
        self.policies = Policies(lambda: self.pool, self.settings)
        super().__init__(middleware=middleware or default_middleware(self.settings, self.stats))
        self.queues: set[str] = set()
        self._url = url or self.settings.database_url
        self._lock = threading.RLock()
        self._pid = -1
        self._pool: ConnectionPool | None = None
        self._soft_pool: ConnectionPool | None = None
        owner = owner or worker_owner_from_env()
        self._owner = owner or uuid.uuid4()
        self._owner_pid = os.getpid() if owner else None  # a given owner holds in this process only
        self._completer: Completer | None = None
        self._keeper: Keeper | None = None
        self._listener: Listener | None = None
        self._events: dict[str, threading.Event] = {}
        self._rooms: dict[str, Room] = {}
        self._depth: dict[str, tuple[int, float]] = {}
        self._depth_lock = threading.Lock()
        self._epoch = datetime.now(UTC)
        self._where: str | None = None
        self._producer = Producer(self)

    # -- middleware signals ---------------------------------------------------------
    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """As Dramatiq's, calling only the middleware that handle the signal."""
        name = "before_" + signal
        for middleware, hook in self._hooks.of(self.middleware, name, reverse=False):
            try:
                (hook or getattr(middleware, name))(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """As Dramatiq's (in reverse order, every failure logged), calling only the middleware
        that handle the signal."""
        name = "after_" + signal
        for middleware, hook in self._hooks.of(self.middleware, name, reverse=True):
            try:
                (hook or getattr(middleware, name))(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, middleware, exc_info=True)

    # -- connections ----------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._url is None:
            self._url = db.resolve_url(self.settings)
        return self._url

    @property
    def owner(self) -> uuid.UUID:
        """This process's worker id: the lease owner of the messages it claims."""
        self._check_pid()
        return self._owner

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A forked child must not share its parent's sockets or threads.
                    self._pool = self._soft_pool = None
                    self._completer = self._keeper = self._listener = None
                    if self._owner_pid != os.getpid():
                        self._owner = uuid.uuid4()
                    self._pid = os.getpid()

    @property
    def pool(self) -> ConnectionPool:
        self._check_pid()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = self._open_pool("neuron_tasks", durable=True)
        return self._pool

    def _open_pool(self, name: str, *, durable: bool) -> ConnectionPool:
        s = self.settings
        return db.make_pool(
            self.url,
            max_size=s.pool_max_size,
            name=name,
            durable=durable,
            statement_timeout_ms=s.statement_timeout_ms,
            idle_in_transaction_timeout_ms=s.idle_in_transaction_timeout_ms,
            open_timeout_s=s.enqueue_timeout_s,  # a producer fails within enqueue_timeout_s
        )

    @property
    def soft_pool(self) -> ConnectionPool:
        """Connections for soft state (topic slots, token buckets, heartbeats): they commit without
        waiting for the WAL flush; these rows are re-validated against leases, so a crash that
        loses their last fraction of a second is harmless."""
        self._check_pid()
        if self._soft_pool is None:
            with self._lock:
                if self._soft_pool is None:
                    self._soft_pool = self._open_pool("neuron_tasks-soft", durable=False)
        return self._soft_pool

    def _deadline(self) -> float:
        """When an enqueue (or a release) started now must give up: enqueue_timeout_s from now."""
        return time.monotonic() + self.settings.enqueue_timeout_s

    def _within(self, fn: Callable[[float], R], *, what: str, deadline: float | None) -> R:
        """`fn(seconds left)`, retried on lost connections until the deadline (enqueue_timeout_s
        from now when None); then DatabaseUnavailable."""
        left = (deadline if deadline is not None else self._deadline()) - time.monotonic()
        return db.within(fn, timeout_s=max(left, 0.01), what=what, where=self.where)

    @property
    def where(self) -> str:
        """The database's URL without its password (for messages)."""
        if self._where is None:
            self._where = db.redact(self.url)
        return self._where

    def _fetch(self, name: str, params: Mapping[str, Any], row: RowFactory[R], *, what: str,
               deadline: float | None = None) -> list[R]:
        """The rows of a named query, made by `row` (retried on a lost connection until the deadline)."""

        def run(timeout: float) -> list[R]:
            with self.pool.connection(timeout=timeout) as conn, conn.cursor(row_factory=row) as cur:
                cur.execute(q(name), params)
                return cur.fetchall() if cur.description else []

        return self._within(run, what=what, deadline=deadline)

    def _run(self, name: str, params: Mapping[str, Any], *, what: str, deadline: float | None = None) -> None:
        """Run a named statement whose rows are not needed (retried on a lost connection until the deadline)."""

        def run(timeout: float) -> None:
            with self.pool.connection(timeout=timeout) as conn:
                conn.execute(q(name), params)

        self._within(run, what=what, deadline=deadline)

    def migrate(self) -> int:
        """Apply pending schema migrations; returns how many were applied."""
        from neuron_tasks.core import migrate

        return len(migrate.upgrade(self.url))

    # -- declaring ------------------------------------------------------------------
    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    # -- enqueue --------------------------------------------------------------------
    @property
    def producer(self) -> Producer:
        """This broker's send path (core/producer.py)."""
        return self._producer

    def enqueue_settings(self) -> Settings:
        """The settings enqueue checks against: this broker's, with the runtime settings on top."""
        return self._producer.enqueue_settings()

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Store a message; `delay` is in milliseconds. Returns when the message's queue's
        durability is met (durable: its commit is on disk; balanced: committed; volatile: handed to
        this process's sender).

        A message this process is running that is enqueued again (Dramatiq's Retries
        middleware does this) is not inserted twice: its row is updated when it is acked.
        """
        return self._producer.enqueue(message, delay)

    def enqueue_many(self, messages: Sequence[Message[Any]], *, delay: int | None = None) -> list[Message[Any]]:
        """Store many messages in one round trip (one statement, one commit)."""
        return self._producer.enqueue_many(messages, delay)

    # -- consume --------------------------------------------------------------------
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        """A consumer that claims up to `batch_size` messages at a time.

        Dramatiq's worker asks for `prefetch` = 2 x threads; the batch_size setting
        (default 100) is used instead so that claims are batched.
        """
        self._start_runtime()
        return PgConsumer(self, queue_name, timeout)

    def _start_runtime(self) -> None:
        if (self._pid == os.getpid() and self._completer is not None and self._keeper is not None
                and self._listener is not None):
            return  # started (read a few times per message: no lock taken)
        self._check_pid()
        with self._lock:
            if self._completer is None:
                # Results are written at once (group commit); ack_linger_ms no longer delays them.
                # Its connection comes from the soft pool: acks are flushed in groups (see completer.py).
                self._completer = Completer(lambda: self.soft_pool, self.owner, lambda: self.wake(None))
                self._completer.start()
            if self._listener is None:
                self._listener = Listener(self.url, self.wake, self.reload_settings)
                self._listener.start()
                self._listener.connected.wait(5)
            if self._keeper is None:
                self._keeper = Keeper(
                    lambda: self.pool,
                    self.owner,
                    self.settings,
                    lambda: sorted(self.queues),
                    self.stats,
                    self.wake,
                    lambda: self.reload_settings(force=False),
                    abandoned=self._completer.abandoned,
                )
                self._keeper.start()

    @property
    def completer(self) -> Completer:
        self._start_runtime()
        assert self._completer is not None
        return self._completer

    @property
    def keeper(self) -> Keeper:
        """This process's heartbeat and sweeper thread (started on first use)."""
        self._start_runtime()
        assert self._keeper is not None
        return self._keeper

    def reload_settings(self, *, force: bool = True) -> dict[str, tuple[Any, Any]]:
        """Apply runtime settings (`neuron-tasks config set`) to this running process.

        Returns {key: (old, new)} of what changed. Called on NOTIFY and by the keeper's poll.
        """
        from neuron_tasks.core import runtime

        with self.pool.connection() as conn:
            if runtime.settings_table_missing(conn):
                return {}
            version = runtime.version(conn)
            if not force and version == self._settings_version:
                return {}
            values = runtime.runtime_values(conn)
        new = runtime.effective(self._base_settings, values)
        changed: dict[str, tuple[Any, Any]] = {}
        for key, live_def in runtime.definitions().items():
            if key not in type(self.settings).model_fields or not live_def.live:
                continue
            old_value, new_value = getattr(self.settings, key), getattr(new, key)
            if old_value != new_value:
                setattr(self.settings, key, new_value)
                changed[key] = (old_value, new_value)
        self._settings_version = version
        if changed:
            self._apply_to_middleware()
            self.wake(None)
            log.info("applied runtime settings: %s",
                     ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))
        return changed

    def _apply_to_middleware(self) -> None:
        s = self.settings
        for m in self.middleware:
            if isinstance(m, TimeLimit):
                m.time_limit = s.timeout_ms
            elif isinstance(m, Retries):
                m.max_retries, m.min_backoff, m.max_backoff = s.max_retries, s.min_backoff_ms, s.max_backoff_ms

    def event(self, queue_name: str) -> threading.Event:
        with self._lock:
            ev = self._events.get(queue_name)
            if ev is None:
                ev = self._events[queue_name] = threading.Event()
            return ev

    def room(self, queue_name: str) -> Room:
        """What this process holds of a queue (claimed, not yet written back), shared by its consumers."""
        event = self.event(queue_name)
        with self._lock:
            room = self._rooms.get(queue_name)
            if room is None:
                room = self._rooms[queue_name] = Room(event)
            return room

    #: How many times consumers were woken because there may be new work (NOTIFY, reconnect, a
    #: settings change, slots freed); a consumer whose last claim found nothing claims again only then.
    wakes = 0

    def wake(self, queue_name: str | None) -> None:
        """Wake the consumers of a queue (None: of every queue)."""
        with self._lock:
            self.wakes += 1
            events = list(self._events.values()) if queue_name is None else [self._events.get(queue_name)]
        for ev in events:
            if ev is not None:
                ev.set()

    def release(self, row_ids: Iterable[int]) -> None:
        """Give claimed messages back to their queues now."""
        ids = list(row_ids)
        if not ids:
            return
        queues = self._fetch("release", {"ids": ids, "owner": self.owner}, scalar_row, what="release")
        for queue_name in set(queues):
            self._run("notify", {"queue_name": queue_name}, what="notify")

    # -- shutdown -------------------------------------------------------------------
    def close(self) -> None:
        """Write volatile sends and pending results, give back held messages, stop threads, close the pool."""
        self._check_pid()
        self._producer.close(self.settings.enqueue_timeout_s)
        with self._lock:
            completer, keeper, listener = self._completer, self._keeper, self._listener
            self._completer = self._keeper = self._listener = None
        if completer is not None:
            completer.stop()
        if listener is not None:
            listener.stop()
        if keeper is not None:
            keeper.stop()
        if self._pool is not None:
            try:
                queues = self._fetch("release_owner", {"owner": self._owner}, scalar_row, what="release on close")
                for queue_name in set(queues):
                    self._run("notify", {"queue_name": queue_name}, what="notify")
                if queues:
                    log.info("gave %d unfinished messages back to their queues", len(queues))
            except Exception as exc:
                log.warning("could not give back held messages (their leases will expire): %s", exc)
            if keeper is not None:
                keeper.stopped()
            self._pool.close()
            self._pool = None
        if self._soft_pool is not None:
            self._soft_pool.close()
            self._soft_pool = None


#: The environment variable through which the worker supervisor gives a child its worker id.
WORKER_OWNER_ENV = "NEURON_TASKS_WORKER_OWNER"


def worker_owner_from_env() -> uuid.UUID | None:
    """The worker id the supervisor assigned to this process, if any."""
    value = os.environ.get(WORKER_OWNER_ENV)
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        log.warning("ignoring %s=%r: not a UUID; this process uses a random worker id", WORKER_OWNER_ENV, value)
        return None


def set_default_broker(url: str | None = None, settings: Settings | None = None) -> PostgresBroker:
    """Make a PostgresBroker Dramatiq's global broker and return it.

    When a PostgresBroker is already the global broker (a worker process's, or the one that
    `dramatiq neuron_tasks.boot` installed before importing your modules), that broker is returned,
    so your actors are declared on the broker that runs them; asking for a different URL or
    different settings then raises ConfigurationError. Otherwise a new broker is created.
    """
    current = dramatiq.broker.global_broker
    if isinstance(current, PostgresBroker):
        differs = _differs(current, url, settings)
        if not differs:
            return current
        raise ConfigurationError(
            f"a different PostgresBroker is already Dramatiq's global broker ({differs}); "
            "set_default_broker() returns it when called with no arguments or with its URL and settings. "
            "Configure that broker through NEURON_TASKS_* settings, or call dramatiq.set_broker() yourself"
        )
    broker = PostgresBroker(url, settings=settings)
    dramatiq.set_broker(broker)
    return broker


def _differs(current: PostgresBroker, url: str | None, settings: Settings | None) -> str:
    """How the broker asked for differs from `current` ("" when it does not)."""
    wanted = url or (settings.database_url if settings is not None else None)
    have = current._url or current.settings.database_url
    if wanted is not None and not _same_url(wanted, have):
        shown = db.redact(have) if have else "the embedded PostgreSQL"
        return f"it uses {shown}, not {db.redact(wanted)}"
    if settings is not None:
        mine = current._base_settings.model_dump(exclude={"database_url"})
        theirs = settings.model_dump(exclude={"database_url"})
        keys = sorted(k for k in mine if mine[k] != theirs.get(k))
        if keys:
            return f"its settings differ in {', '.join(keys)}"
    return ""


def _same_url(a: str, b: str | None) -> bool:
    """Whether two PostgreSQL URLs name the same connection (a URL and its key=value form alike)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if b is None:
        return False
    try:
        return conninfo_to_dict(a) == conninfo_to_dict(b)
    except ProgrammingError:
        return a == b
