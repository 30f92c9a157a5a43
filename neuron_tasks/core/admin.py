"""Read and admin queries for the CLI and the dashboard: status, workers, dead letters, cancel, purge."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dramatiq.message import Message
from psycopg.rows import dict_row, scalar_row
from psycopg_pool import ConnectionPool

from neuron_tasks.sql import q

QUEUE_STATES = ("pending", "running", "retrying", "failed", "finished", "cancelled")
#: What `purge` removes unless told otherwise: the messages waiting to run.
WAITING_STATES = ("pending", "retrying")
#: The states a purge may name ("running" marks those messages as cancelled; it stops nothing).
PURGE_STATES = ("pending", "retrying", "running", "failed")
#: Payload options that describe a past failure; cleared when a dead letter is requeued.
FAILURE_OPTIONS = ("retries", "traceback", "requeue_timestamp")


@dataclass
class Repo:
    """The queue's read and admin queries on a pool; rows are dicts keyed by column name."""

    pool: ConnectionPool

    def _all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(q(name), params or {})
            return cur.fetchall() if cur.description else []

    def queue_status(self) -> list[dict[str, Any]]:
        """Per queue: pending, running, retrying, failed (dead letters), finished (history)."""
        live = {r["queue_name"]: r for r in self._all("queue_counts")}
        finished = {r["queue_name"]: r for r in self._all("outcome_counts")}
        out = []
        for name in sorted(set(live) | set(finished)):
            row = {"queue": name, **dict.fromkeys(QUEUE_STATES, 0), "finished_last_hour": 0, "oldest_pending": None}
            if name in live:
                for key in ("pending", "running", "retrying", "failed", "oldest_pending"):
                    row[key] = live[name][key]
            if name in finished:
                row["finished"] = finished[name]["finished"]
                row["cancelled"] = finished[name]["cancelled"]
                row["finished_last_hour"] = finished[name]["finished_last_hour"]
            out.append(row)
        return out

    def workers(self) -> list[dict[str, Any]]:
        """worker_status(): running, stale (missed 3 heartbeats) or stopped in the last hour."""
        return self._all("list_workers")

    def dead_letters(
        self,
        *,
        queue: str | None = None,
        actor: str | None = None,
        tenant: str | None = None,
        older_than_s: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        return self._all(
            "list_dead_letters",
            {"queue_name": queue, "actor_name": actor, "tenant": tenant, "older_than_s": older_than_s, "limit": limit},
        )

    def message(self, key: str) -> dict[str, Any] | None:
        """A message by row id (digits) or message id, through their indexes."""
        if key.isdigit() and len(key) < 19:
            rows = self._all("get_message_by_id", {"id": int(key)})
            if rows:
                return rows[0]
        rows = self._all("get_message", {"key": key})
        return rows[0] if rows else None

    def requeue(self, keys: list[str]) -> list[str]:
        """Dead letters (by row id or message id) back to pending with attempts reset; returns the
        message ids requeued."""
        ids = [row["id"] for row in map(self.message, keys) if row is not None]
        return self.requeue_ids(ids)

    def requeue_ids(self, ids: list[int]) -> list[str]:
        """Dead letters, by row id, back to pending with attempts reset and Dramatiq's record of
        past failures removed from the payload; rows that are not dead letters are left alone."""
        done: list[str] = []
        for row_id in ids:
            rows = self._all("get_message_by_id", {"id": row_id})
            if not rows or rows[0]["state"] != "failed":
                continue
            payload = without_failures(bytes(rows[0]["payload"]))
            with self.pool.connection() as conn, conn.transaction():
                with conn.cursor(row_factory=scalar_row) as cur:
                    requeued = cur.execute(q("requeue_dead_letter"), {"id": row_id, "payload": payload}).fetchall()
                for queue_name in requeued:
                    conn.execute(q("notify"), {"queue_name": queue_name})
            if requeued:
                done.append(rows[0]["message_id"])
        return done

    def dead_letter_keys(self, *, queue: str | None, actor: str | None, tenant: str | None,
                         older_than_s: float | None) -> list[str]:
        rows = self.dead_letters(queue=queue, actor=actor, tenant=tenant, older_than_s=older_than_s, limit=1_000_000)
        return [str(r["id"]) for r in rows]

    def purge(self, *, queue: str | None = None, older_than_s: float | None = None) -> int:
        with self.pool.connection() as conn:
            cur = conn.execute(q("purge_dead_letters"), {"queue_name": queue, "older_than_s": older_than_s})
            return cur.rowcount


    def cancel(self, ids: list[str]) -> dict[str, int]:
        """Cancel messages by message id or row id: waiting ones leave the queue, running ones are
        marked. Raises psycopg's error (nothing changed) when an id names no waiting or running message."""
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(q("cancel_messages"), {"ids": ids}).fetchone()
        return {"cancelled": int(row["cancelled"]), "marked": int(row["marked"])} if row else {}

    def purge_count(self, queue: str, *, actor: str | None, tenant: str | None, states: list[str]) -> int:
        with self.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
            params = {"queue_name": queue, "actor_name": actor, "tenant": tenant, "states": states}
            return int(cur.execute(q("purge_count"), params).fetchone() or 0)

    def purge_queue(self, queue: str, *, actor: str | None = None, tenant: str | None = None,
                    states: list[str] | None = None) -> dict[str, int]:
        """Delete a queue's messages in `states` (default: waiting) matching actor and tenant; running
        ones named in `states` are marked as cancelled. Returns {"purged": n, "marked": m}."""
        params = {"queue_name": queue, "actor_name": actor, "tenant": tenant,
                  "states": list(states or WAITING_STATES)}
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(q("purge_queue"), params).fetchone()
        return {"purged": int(row["purged"]), "marked": int(row["marked"])} if row else {}

    def waiting_queues(self, limit: int = 200) -> list[str]:
        """Names of the queues with waiting messages."""
        return [r["queue_name"] for r in self._all("waiting_queue_names", {"limit": limit})]


def without_failures(payload: bytes) -> bytes:
    """The payload without Dramatiq's record of past failures (retries, traceback), so a requeued
    message gets its full retries again."""
    try:
        message = Message.decode(payload)
    except Exception:
        return payload  # an undecodable payload is requeued as it is; it fails the same way
    if not isinstance(message.options, dict):
        return payload  # dead-lettered for its options: requeued as it is, it fails the same way
    options = {k: v for k, v in message.options.items() if k not in FAILURE_OPTIONS}
    # Not message.copy(options=...): Dramatiq 2 merges the given options into the old ones.
    return dataclasses.replace(message, options=options).encode()
