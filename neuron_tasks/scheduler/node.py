"""One scheduler process: leader election, APScheduler on the leader, exactly-once fires.

Every node holds a dedicated connection and tries `pg_try_advisory_lock` every
`scheduler_poll_s`; the one that gets it leads until that connection (or the process) dies,
which releases the lock, so a standby takes over within about a second. The leader runs an
APScheduler BackgroundScheduler with one job per scheduled job; each wake-up fires every tick
due since the last one recorded in `scheduler_fires`: the fire row (key job + fire time) and
the enqueue are one transaction, so a tick happens once whichever node fires it, and a new
leader first fires what the old one missed (within `scheduler_misfire_grace_s`): once, late, unless
the job asks for every missed tick (`catch_up=True`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import scalar_row
from psycopg.types.json import Jsonb

from neuron_tasks import db
from neuron_tasks.config import Settings
from neuron_tasks.core import parts
from neuron_tasks.scheduler.jobs import ScheduledJob, due_times
from neuron_tasks.scheduler.settings import SchedulerSettings
from neuron_tasks.sql import q

log = logging.getLogger(__name__)

#: pg_try_advisory_lock key: the bytes "nt_sched" as a bigint.
LEADER_LOCK_KEY = int.from_bytes(b"nt_sched", "big") & 0x7FFF_FFFF_FFFF_FFFF


class SchedulerNode:
    def __init__(self, url: str, jobs: list[ScheduledJob], *, settings: SchedulerSettings | None = None,
                 core: Settings | None = None, node_id: uuid.UUID | None = None) -> None:
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"two scheduled jobs share a name: {sorted(names)}")
        self.url = url
        self.jobs = {j.name: j for j in jobs}
        self.settings = settings or SchedulerSettings()
        self.core = core or Settings(database_url=url)
        self._base_settings, self._base_core = self.settings, self.core
        self.node_id = node_id or uuid.uuid4()
        self.stop_event = threading.Event()
        self.leading = threading.Event()
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._aps: Any = None
        self._triggers = {j.name: j.trigger() for j in jobs}
        self._fire_lock = threading.Lock()
        self._lead_since: datetime | None = None

    # -- the main loop ------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._execute("sched_register_node", {"node_id": self.node_id, "host": socket.gethostname(),
                                                      "pid": os.getpid()})
                break
            except psycopg.OperationalError as exc:
                log.warning("scheduler: cannot reach the database (%s); retrying", exc)
                self.stop_event.wait(self.settings.scheduler_poll_s)
        log.info("scheduler node %s up with %d jobs; waiting for leadership", self.node_id, len(self.jobs))
        try:
            while not self.stop_event.is_set():
                self._refresh_settings()
                try:
                    if self.leading.is_set():
                        self._check_lock()
                    else:
                        self._try_lead()
                    self._execute("sched_heartbeat_node", {"node_id": self.node_id,
                                                           "leader": self.leading.is_set()})
                except psycopg.Error as exc:
                    log.warning("scheduler: database error (%s); retrying", exc)
                    if self.leading.is_set():
                        self._demote()
                self.stop_event.wait(self.settings.scheduler_poll_s)
        finally:
            self._demote(release=True)
            try:
                self._execute("sched_stop_node", {"node_id": self.node_id})
            except psycopg.Error:
                pass

    def stop(self) -> None:
        self.stop_event.set()

    def _execute(self, name: str, params: dict[str, Any]) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="neuron_tasks-scheduler") as conn:
            conn.execute(q(name), params)

    # -- leadership ---------------------------------------------------------------------------
    def _try_lead(self) -> None:
        if self._lock_conn is None or self._lock_conn.closed:
            conn = psycopg.connect(db.session_url(self.url), autocommit=True,  # a session lock: no pooler
                                   application_name="neuron_tasks-scheduler-leader")
            conn.execute(q("sched_leader_keepalives"))
            self._lock_conn = conn
        with self._lock_conn.cursor(row_factory=scalar_row) as cur:
            leading = cur.execute(q("sched_try_lead"), {"key": LEADER_LOCK_KEY}).fetchone()
        if leading:
            self._lead()

    def _check_lock(self) -> None:
        try:
            assert self._lock_conn is not None
            self._lock_conn.execute(q("sched_check_lock"))
        except (psycopg.Error, AssertionError):
            log.warning("scheduler: lost the leader connection; standing down")
            self._demote()

    def _lead(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        log.info("scheduler node %s is the leader", self.node_id)
        self._lead_since = datetime.now(UTC)
        self.leading.set()
        self.catch_up()
        aps = BackgroundScheduler(timezone=UTC)
        for name, job in self.jobs.items():
            aps.add_job(self.fire_job, self._triggers[name], args=[name], id=name, name=job.target,
                        max_instances=1, coalesce=True, misfire_grace_time=None)
        logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        aps.start()
        self._aps = aps
        self.publish_jobs()

    def _demote(self, release: bool = False) -> None:
        was = self.leading.is_set()
        self.leading.clear()
        if self._aps is not None:
            try:
                self._aps.shutdown(wait=True)
            except Exception:
                log.exception("scheduler: APScheduler shutdown failed")
            self._aps = None
        if self._lock_conn is not None:
            try:
                if release and was and not self._lock_conn.closed:
                    self._lock_conn.execute(q("sched_unlead"), {"key": LEADER_LOCK_KEY})
                self._lock_conn.close()
            except psycopg.Error:
                pass
            self._lock_conn = None

    def publish_jobs(self) -> None:
        """Show the jobs and their next fire in scheduler_jobs (for `neuron-tasks schedules`)."""
        now = datetime.now(UTC)
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name, job in self.jobs.items():
                nxt = self._triggers[name].get_next_fire_time(None, now)
                conn.execute(q("sched_upsert_job"), {
                    "name": name, "kind": job.kind, "target": job.target,
                    "queue_name": job.queue if job.kind == "actor" else None, "trigger": job.trigger_text,
                    "next_fire": nxt, "node_id": self.node_id})
            # Jobs an earlier leader declared and this one does not are no longer scheduled.
            conn.execute(q("sched_forget_jobs"), {"names": list(self.jobs)})

    def _refresh_settings(self) -> None:
        """Runtime settings (`neuron-tasks config set`) apply from the next loop on."""
        from neuron_tasks.core.runtime import overlay

        self.settings = overlay(self._base_settings, self.url)
        self.core = overlay(self._base_core, self.url)

    # -- fires --------------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Fire every job's due ticks now (a new leader's first act)."""
        return sum(self.fire_job(name) for name in self.jobs)

    def fire_job(self, name: str) -> int:
        """Record and run the due ticks of one job; returns how many this node fired."""
        if not self.leading.is_set():
            return 0
        job, trigger = self.jobs[name], self._triggers[name]
        s = self.settings
        fired = 0
        try:
            with self._fire_lock, psycopg.connect(self.url, autocommit=True,
                                                  application_name="neuron_tasks-scheduler") as conn:
                last = scalar(conn, "sched_last_fire", {"job": name})
                now = datetime.now(UTC)
                due, nxt, skipped = due_times(trigger, last, now, grace_s=s.scheduler_misfire_grace_s,
                                              limit=s.scheduler_max_catchup if job.catch_up else 1_000_000,
                                              since=self._lead_since)
                if skipped:
                    log.warning("scheduler: %s: %d ticks older than the misfire grace were skipped", name, skipped)
                late = None
                if not job.catch_up and len(due) > 1:  # missed ticks are not replayed: the latest fires once
                    late = f"{len(due) - 1} missed tick(s) not replayed (catch_up is off)"
                    log.info("scheduler: %s: %s", name, late)
                    due = due[-1:]
                for t in due:
                    with conn.transaction():
                        recorded = scalar(conn, "sched_record_fire", {"job": name, "fire_time": t,
                                                                      "node_id": self.node_id, "note": None})
                        if recorded is not None:  # else another node fired this tick
                            self._run(conn, job, t, late)
                            fired += 1
                if due:
                    conn.execute(q("sched_upsert_job"), {
                        "name": name, "kind": job.kind, "target": job.target,
                        "queue_name": job.queue if job.kind == "actor" else None, "trigger": job.trigger_text,
                        "next_fire": nxt, "node_id": self.node_id})
        except psycopg.Error as exc:
            # Nothing of a failed tick was recorded: the next wake-up (or next leader) fires it.
            log.warning("scheduler: firing %s failed (%s); will retry", name, exc)
        return fired

    def _run(self, conn: psycopg.Connection[Any], job: ScheduledJob, t: datetime, late: str | None = None) -> None:
        note: str | None = late
        message_id: str | None = None
        if job.requires and not scalar(conn, "sched_table_exists", {"name": job.requires}):
            note = f"skipped: {job.requires} does not exist (its part is not installed)"
        elif job.skip_unless and not scalar(conn, job.skip_unless, {}):
            note = f"skipped: nothing to do ({job.skip_unless} is false)"
        elif job.kind == "builtin":
            note = builtin(conn, job.target) + (f"; {late}" if late else "")
        else:
            message_id = scalar(conn, "sched_enqueue", {
                "queue": job.queue, "actor": job.target, "args": Jsonb(job.args), "kwargs": Jsonb(job.kwargs),
                "options": Jsonb(job.options)})
        conn.execute(q("sched_fire_message"), {"job": job.name, "fire_time": t, "message_id": message_id,
                                               "note": note})


def scalar(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> Any:
    """The one value the named statement answers (None when it answers no row)."""
    with conn.cursor(row_factory=scalar_row) as cur:
        return cur.execute(q(name), params).fetchone()


def builtin(conn: psycopg.Connection[Any], target: str) -> str:
    """Run one part's maintenance ("module:function") in the fire's transaction; returns a note
    for the fire log."""
    return str(parts.loader(target)(conn))
