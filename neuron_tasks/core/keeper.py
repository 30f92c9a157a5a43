"""The worker's housekeeping thread: heartbeat and lease renewal, the sweeper of dead
workers' messages, and retention. One per worker process; every statement is one round trip
for the whole process, whatever the number of messages it holds.

While the database is away it tries again every quarter second, so that the first thing a
worker does after reconnecting is renew its leases; it sweeps only after it has seen the server
answer without a break for a lease and a heartbeat (see maintenance.py), so an outage longer
than the lease does not make live workers look dead."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import scalar_row
from psycopg_pool import ConnectionPool

from neuron_tasks import db
from neuron_tasks.config import Settings
from neuron_tasks.core import maintenance
from neuron_tasks.sql import q

log = logging.getLogger(__name__)
RETENTION_EVERY_S = 60.0
#: How long a heartbeat waits for a pooled connection before it counts as failed.
CONNECTION_WAIT_S = 1.0
#: A claimed message lost before it started and never given back is forgotten after this long.
FORGET_LOST_S = 3600.0


@dataclass(slots=True)
class _Held:
    """A claimed message not yet started: its claim and until when its lease is known to be ours."""

    gen: int
    registered_at: float  # monotonic, once its claim was committed
    horizon: float  # monotonic: lease_s (less a safety margin) after its claim or last renewal was sent
    lost: bool = False  # a renewal sent after its claim did not find it: no longer ours


def lease_margin(settings: Settings) -> float:
    """How much earlier than the server's lease end a process stops trusting it."""
    return min(settings.heartbeat_s, settings.lease_s / 2.0)


class Horizons:
    """Claimed messages not yet started, and until when each one's lease is known to be ours (the
    process's clock: from when its claim, or the last renewal that found it, was sent; less a
    margin). A worker thread starts a message only while that holds, or once a renewal finds it
    still ours (after an outage longer than the lease); otherwise it is not run (see consumer.py)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._gen = 0
        self._renewed_at = 0.0  # monotonic: when the last renewal that answered was sent

    def claimed(self, row_ids: Iterable[int], sent_at: float, lease_s: float, margin: float) -> int:
        """Rows a claim sent at `sent_at` took (committed); returns the claim's number."""
        with self._cond:
            self._gen += 1
            now = time.monotonic()
            for row_id in row_ids:
                self._held[row_id] = _Held(self._gen, now, sent_at + lease_s - margin)
            return self._gen

    def renewed(self, sent_at: float, lease_s: float, margin: float, row_ids: set[int]) -> None:
        """A renewal sent at `sent_at` extended the leases of `row_ids`: those held are ours until
        `sent_at + lease_s - margin`; a held row claimed before it was sent and not among them is lost."""
        with self._cond:
            forget_before = time.monotonic() - FORGET_LOST_S
            for row_id, held in list(self._held.items()):
                if row_id in row_ids:
                    held.horizon = max(held.horizon, sent_at + lease_s - margin)
                elif held.registered_at < sent_at:
                    held.lost = True
                    if held.horizon < forget_before:  # never started nor given back: forget it
                        del self._held[row_id]
            self._renewed_at = max(self._renewed_at, sent_at)
            self._cond.notify_all()

    def lost(self) -> list[int]:
        """Held rows known lost (the keeper leaves them out of its renewals)."""
        with self._cond:
            return [row_id for row_id, held in self._held.items() if held.lost]

    def holds(self, row_id: int) -> bool:
        """Whether a claim of this row waits to start."""
        with self._cond:
            return row_id in self._held

    def forget(self, row_ids: Iterable[int]) -> None:
        """Rows given back: no longer held."""
        with self._cond:
            for row_id in row_ids:
                self._held.pop(row_id, None)

    def start(self, row_id: int, gen: int, wait_s: float) -> str:
        """May the message of this claim start? "ours" (it is no longer tracked: it runs), "lost"
        (a renewal did not find it), "stale" (this process claimed the row again since: that claim
        runs it) or "unknown" (its lease lapsed and no renewal answered within `wait_s`)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                held = self._held.get(row_id)
                if held is None or held.gen != gen:
                    return "stale"
                now = time.monotonic()
                if held.lost:
                    verdict = "lost"
                elif held.horizon > now:
                    verdict = "ours"
                elif now >= deadline:
                    verdict = "unknown"
                else:
                    self._cond.wait(deadline - now)
                    continue
                del self._held[row_id]
                return verdict


@dataclass(frozen=True, slots=True)
class Counters:
    """A worker process's totals since it started, as its heartbeat reports them."""

    processed: int
    failed: int
    runtime_ms: float
    last_run: datetime | None

    def params(self) -> dict[str, Any]:
        return {"processed": self.processed, "failed": self.failed, "runtime_ms": self.runtime_ms,
                "last_run": self.last_run}


class Stats:
    """Counters a worker process reports with its heartbeat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = Counters(0, 0, 0.0, None)

    def record(self, runtime_ms: float, *, failed: bool) -> None:
        with self._lock:
            c = self._counters
            self._counters = Counters(c.processed + 1, c.failed + int(failed), c.runtime_ms + runtime_ms,
                                      datetime.now().astimezone())

    def snapshot(self) -> Counters:
        with self._lock:
            return self._counters


class Keeper(threading.Thread):
    """The housekeeping thread of a worker process (see the module's docstring)."""

    def __init__(
        self,
        pool: Callable[[], ConnectionPool],
        owner: UUID,
        settings: Settings,
        queues: Callable[[], list[str]],
        stats: Stats,
        wake: Callable[[str | None], None],
        reload_settings: Callable[[], object] | None = None,
        abandoned: Callable[[], list[int]] | None = None,
    ) -> None:
        super().__init__(name="neuron-tasks-keeper", daemon=True)
        self._pool = pool
        self.owner = owner
        self.settings = settings
        self.queues = queues
        self.stats = stats
        self.wake = wake
        self.reload_settings = reload_settings
        self._last_settings_poll = 0.0
        self._halt = threading.Event()
        self._registered = False
        self._last_retention = 0.0
        self.abandoned = abandoned
        #: Unbroken contact with the same server; the sweeper waits for a lease and a heartbeat of it.
        self.continuity = maintenance.Continuity(max_gap_s=settings.lease_s)
        self._outage = db.Outage(log, "heartbeat and lease renewal")
        self._sweep_held_back = False
        self._after_outage = False  # a failed heartbeat since the last sweep: say why sweeping waits
        #: Claimed messages not yet started, and until when their leases are known to be ours.
        self.horizons = Horizons()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def run(self) -> None:
        while not self._halt.is_set():
            wait = min(self.settings.heartbeat_s, self.settings.settings_poll_s)
            try:
                self.beat()
                self._outage.recovered()
                self.sweep()
                if self.reload_settings is not None and (
                    time.monotonic() - self._last_settings_poll >= self.settings.settings_poll_s
                ):
                    self._last_settings_poll = time.monotonic()
                    self.reload_settings()  # the fallback when a NOTIFY was missed
                if time.monotonic() - self._last_retention > RETENTION_EVERY_S:
                    self.retention()
                    self._last_retention = time.monotonic()
            except db.UNAVAILABLE as exc:
                self.continuity.lost()
                self._after_outage = True
                wait = min(wait, self._outage.failed(exc))  # renew as soon as the server is back
            except Exception:
                log.exception("housekeeping failed; retrying")
            self._halt.wait(wait)

    def beat(self) -> None:
        """Renew this process's leases first, then its heartbeat; note the server's start."""
        counters = self.stats.snapshot().params()
        sent_at = time.monotonic()  # before `abandoned`: a row claimed again since is renewed
        lease_s = self.settings.lease_s
        abandoned = (self.abandoned() if self.abandoned is not None else []) + self.horizons.lost()
        with self._pool().connection(timeout=CONNECTION_WAIT_S) as conn, conn.transaction():
            if not self._registered:
                conn.execute(
                    q("register_worker"),
                    {
                        "owner": self.owner,
                        "worker_name": f"{socket.gethostname()}:{os.getpid()}",
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "queues": self.queues(),
                        "heartbeat_s": self.settings.heartbeat_s,
                    },
                )
            with conn.cursor(row_factory=scalar_row) as cur:
                renewed = set(cur.execute(q("renew_leases"),
                                          {"owner": self.owner, "lease_s": lease_s, "abandoned": abandoned}).fetchall())
            conn.execute(q("heartbeat_worker"), {"owner": self.owner, "queues": self.queues(), **counters})
            epoch = maintenance.server_epoch(conn)
        self._registered = True  # committed
        self.horizons.renewed(sent_at, lease_s, lease_margin(self.settings), renewed)
        self.continuity.max_gap_s = self.settings.lease_s
        self.continuity.saw(epoch.started_at)

    def sweep(self) -> int:
        """Return expired leases' messages to their queues; dead-letter poison messages. Only once
        this process has seen the server for a lease and a heartbeat without a break: before
        that, an expired lease may belong to a live worker that has not reconnected yet."""
        seen_s, needed_s = self.continuity.seen_for(), maintenance.sweep_after_s(self.settings)
        if seen_s < needed_s:
            if not self._sweep_held_back and self._after_outage:
                log.info("not sweeping expired leases yet: the database has answered for %.1fs of the %.1fs "
                         "every live worker gets to reconnect and renew its leases", seen_s, needed_s)
                self._sweep_held_back = True
            return 0
        self._sweep_held_back = self._after_outage = False
        with self._pool().connection(timeout=CONNECTION_WAIT_S) as conn:
            return len(maintenance.sweep(conn, self.settings))

    def retention(self) -> None:
        """The queue's own retention (the scheduler's leader also runs every part's)."""
        with self._pool().connection(timeout=CONNECTION_WAIT_S) as conn:
            maintenance.trim_history(conn, self.settings)
            maintenance.trim_dead_letters(conn, self.settings)
            maintenance.trim_tenant_usage(conn)

    def stopped(self) -> None:
        """Mark this worker stopped (clean shutdown)."""
        if not self._registered:
            return
        try:
            self.beat()
            with self._pool().connection() as conn:
                conn.execute(q("stop_worker"), {"owner": self.owner})
        except psycopg.Error as exc:
            log.warning("could not mark worker stopped: %s", exc)
