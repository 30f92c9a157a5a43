"""The supervisor's lease keeper: it renews the leases of its live children and returns the
messages of the children that died, from the supervisor process, which runs no job.

A child's own keeper thread renews its leases too, but a job that holds the GIL, or a process that
is stuck, starves that thread; the supervisor knows for sure whether a child is alive (it is its
parent). When a child dies, its messages go back at once instead of one lease later: a crash
counts a death as a lease expiry would (see `reclaim_expired`); a child killed for a job past its
time limit counts the death against that job only, and its other messages go back with none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import scalar_row

from neuron_tasks.config import Settings
from neuron_tasks.core import maintenance, runtime
from neuron_tasks.errors import ConfigurationError
from neuron_tasks.sql import q

log = logging.getLogger(__name__)

#: While the database cannot be reached, a failure is logged at most this often.
COMPLAIN_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Death:
    """A child process that exited: its worker id and, when the supervisor killed it because of
    jobs past their time limit, those jobs' rows and the reason."""

    owner: UUID
    pid: int
    overdue: tuple[int, ...] = ()
    reason: str = ""


class LeaseKeeper(threading.Thread):
    """Renews the leases of live children every heartbeat and cleans up after dead ones, on one
    connection of its own; keeps going through database errors (logged, retried)."""

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(name="neuron-tasks-supervisor-leases", daemon=True)
        self.url = url
        self.settings = settings  # replaced by the runtime settings (`config set`) as they change
        self._base = settings
        self._lock = threading.Lock()
        self._live: set[UUID] = set()
        self._deaths: deque[Death] = deque()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._last_settings = 0.0
        self._failing_since: float | None = None
        self._last_complaint = 0.0

    # -- called by the supervisor's main thread ------------------------------------------------
    def add(self, owner: UUID) -> None:
        """A child was started with this worker id: renew its leases while it lives."""
        with self._lock:
            self._live.add(owner)

    def child_exited(self, death: Death) -> None:
        """A child is gone (reaped): stop renewing its leases; return its messages now."""
        with self._lock:
            self._live.discard(death.owner)
            self._deaths.append(death)
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Return the messages of the children that died (within `timeout`), then stop."""
        self._halt.set()
        self._wake.set()
        self.join(timeout)
        with self._lock:
            left = len(self._deaths)
        if left:
            log.warning("could not return the messages of %d stopped worker processes now; they go back "
                        "to their queues when their leases expire", left)

    # -- the thread ------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            self._wake.clear()  # a death reported from here on wakes the wait below at once
            halting = self._halt.is_set()
            try:
                self._refresh_settings()
                if not halting:
                    self._renew()
                self._bury()
                if self._failing_since is not None:
                    log.info("the supervisor reaches the database again (after %.0fs)",
                             time.monotonic() - self._failing_since)
                    self._failing_since = None
            except Exception as exc:  # keep renewing whatever happens: log, reconnect, retry
                self._failed(exc)
            if halting:
                with self._lock:
                    done = not self._deaths
                if done or self._failing_since is not None:
                    break
                continue
            self._wake.wait(self.settings.heartbeat_s if self._failing_since is None
                            else min(self.settings.heartbeat_s, 1.0))
        self._close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            s = self._base
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=5, application_name="neuron_tasks-supervisor",
                options=f"-c statement_timeout={int(s.statement_timeout_ms)}"
                f" -c idle_in_transaction_session_timeout={int(s.idle_in_transaction_timeout_ms)}",
            )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_complaint >= COMPLAIN_EVERY_S:
            self._last_complaint = now
            with self._lock:
                waiting = len(self._deaths)
            log.warning("supervisor: cannot renew its workers' leases%s (%s: %s); retrying",
                        f" or return the messages of {waiting} stopped worker processes" if waiting else "",
                        type(exc).__name__, str(exc).strip())
        self._close()

    def _refresh_settings(self) -> None:
        """The runtime settings (lease_s, max_retries, hard_timeout_grace_s may change live)."""
        if time.monotonic() - self._last_settings < self._base.settings_poll_s:
            return
        self._last_settings = time.monotonic()
        conn = self._connection()
        try:
            if not runtime.settings_table_missing(conn):
                self.settings = runtime.effective(self._base, runtime.runtime_values(conn))
        except (psycopg.ProgrammingError, ConfigurationError) as exc:
            log.warning("supervisor: could not read runtime settings (%s); using the configured ones", exc)

    def _renew(self) -> None:
        with self._lock:
            owners = list(self._live)
        if owners:
            self._connection().execute(q("supervisor_renew_leases"),
                                       {"owners": owners, "lease_s": self.settings.lease_s})

    def _bury(self) -> None:
        while True:
            with self._lock:
                if not self._deaths:
                    return
                death = self._deaths[0]
            try:
                self._return_messages(death)
            except psycopg.OperationalError:
                raise  # the connection: retried
            except Exception:
                log.exception("supervisor: could not return the messages of worker pid %d now; they go back "
                              "to their queues when their leases expire", death.pid)
            with self._lock:
                self._deaths.popleft()

    def _return_messages(self, death: Death) -> None:
        conn = self._connection()
        params: dict[str, Any] = {"owner": death.owner}
        if death.overdue:
            params |= {"ids": list(death.overdue), "error": death.reason}
            conn.execute(q("supervisor_overdue_killed"), params)
            with conn.cursor(row_factory=scalar_row) as cur:
                queues = cur.execute(q("supervisor_release_innocent"), params).fetchall()
            for queue_name in sorted(set(queues)):
                conn.execute(q("notify"), {"queue_name": queue_name})
            if queues:
                log.info("gave %d messages of worker pid %d back to their queues", len(queues), death.pid)
        else:
            conn.execute(q("supervisor_expire_leases"), params)
        # Only the dead child's messages: it is known dead, so they need not wait for any lease
        # (other workers' expired leases are the regular sweepers' to judge, after an outage too).
        maintenance.sweep(conn, self.settings, owner=death.owner)
        conn.execute(q("stop_worker"), {"owner": death.owner})
