"""What the dashboard reads and changes, all through named statements (queries/dashboard.sql).

Every read is bounded: live counts per queue come from the counters the database keeps, other
counts stop at `count_cap` and fall back to the planner's estimate, the message list scans fixed
windows of the primary key, lists are keyset-paged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, scalar_row
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader
from psycopg_pool import ConnectionPool

from neuron_tasks.core.admin import Repo
from neuron_tasks.sql import q

STATES = ("pending", "running", "retrying", "failed")
#: How many of the newest finished messages a message page looks through for an id.
HISTORY_LOOKUP = 50_000
#: Largest number of dead letters one "all matching" action touches.
BULK_LIMIT = 10_000
#: Most running messages the workers page lists (all workers together).
BUSY_LIMIT = 500
#: The results backend's namespace (core.results), part of every result's key.
RESULTS_NAMESPACE = "neuron-tasks-results"
#: How many bytes of its payload a finished message keeps (messages_history.payload_head).
HISTORY_HEAD_BYTES = 2048


@dataclass
class Count:
    """A bounded count: exact when below the cap, else at least `cap` with an estimate."""

    value: int
    exact: bool = True
    estimate: int | None = None

    @property
    def best(self) -> int:
        if self.exact:
            return self.value
        return max(self.value, self.estimate or 0)

    def __str__(self) -> str:
        if self.exact:
            return f"{self.value:,}"
        return f"~{self.best:,}"


@dataclass
class MessageFilter:
    queue: str | None = None
    state: str | None = None
    actor: str | None = None
    tenant: str | None = None
    topic: str | None = None
    text: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "queue": self.queue, "state": self.state, "actor": self.actor, "tenant": self.tenant,
            "topic": self.topic, "text": self.text.encode() if self.text else None,
        }

    def query(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


@dataclass
class MessagePage:
    rows: list[dict[str, Any]]
    scanned_to: int | None  # the lowest id looked at; None when the table's end was reached
    next_before: int | None  # the keyset cursor of the next page
    elapsed_ms: float = 0.0


@dataclass
class Overview:
    queues: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Count] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    workers_alive: int = 0
    table_estimate: int = 0


class DashboardData:
    def __init__(self, pool: ConnectionPool, *, count_cap: int = 10_000, window: int = 20_000,
                 stale_s: float = 30.0) -> None:
        self.pool = pool
        self.count_cap = count_cap
        self.window = window
        self.stale_s = stale_s
        self._lock = threading.Lock()
        self._finished: dict[datetime, int] = {}  # finished per completed minute (immutable once past)

    # -- helpers ---------------------------------------------------------------------------
    def _all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(q(name), params or {}, prepare=False)  # custom plans: filters are often NULL
            return cur.fetchall() if cur.description else []

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        rows = self._all(name, params)
        return rows[0] if rows else None

    def _scalar(self, name: str, params: dict[str, Any] | None = None) -> Any:
        with self.pool.connection() as conn, conn.cursor(row_factory=scalar_row) as cur:
            return cur.execute(q(name), params or {}, prepare=False).fetchone()

    def exists(self, table: str) -> bool:
        return bool(self._scalar("dash_table_exists", {"table": table}))

    def function_exists(self, name: str) -> bool:
        return bool(self._scalar("dash_function_exists", {"name": name}))

    def ping(self) -> bool:
        return self._one("dash_ping") is not None

    def estimates(self, cells: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The planner's estimates of (queue, state) cells, pipelined in one round trip (no scan)."""
        if not cells:
            return {}
        out: dict[tuple[str, str], int] = {}
        with self.pool.connection() as conn:
            # one round trip where libpq can pipeline; one statement after another where it cannot
            with conn.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext():
                cursors = [conn.cursor(row_factory=scalar_row) for _ in cells]
                for cur, (queue, state) in zip(cursors, cells, strict=True):
                    cur.execute(q("dash_state_estimate"), {"queue": queue, "state": state}, prepare=False)
            for cur, cell in zip(cursors, cells, strict=True):
                out[cell] = plan_rows(cur.fetchone())
                cur.close()
        return out

    def throughput(self, minutes: int = 60) -> list[dict[str, Any]]:
        """Finished and dead-lettered per minute; completed minutes of history are kept in memory."""
        now_row = self._one("dash_now_minute")
        assert now_row is not None
        now_min: datetime = now_row["minute"]
        axis = [now_min - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
        with self._lock:
            known = {m: n for m, n in self._finished.items() if m >= axis[0]}
        # re-read the current and the previous minute (acks committing late), and any gap
        since = min([m for m in axis if m not in known] + [now_min - timedelta(minutes=1)])
        fresh = {r["minute"]: int(r["n"]) for r in self._all("dash_finished_per_minute", {"since": since})}
        for m in axis:
            if m >= since:
                known[m] = fresh.get(m, 0)
        with self._lock:
            self._finished = {m: n for m, n in known.items() if m < now_min}
        failed = {r["minute"]: int(r["n"]) for r in self._all("dash_failed_per_minute", {"since": axis[0]})}
        return [{"minute": m, "finished": known.get(m, 0), "failed": failed.get(m, 0)} for m in axis]

    # -- overview and metrics ---------------------------------------------------------------
    def queue_counts(self) -> list[dict[str, Any]]:
        names = [r["queue_name"] for r in self._all("dash_queue_names")]
        if not names:
            return []
        rows = self._all("dash_queue_counts", {"queues": names, "cap": self.count_cap})
        capped: list[tuple[str, str]] = []
        for row in rows:
            row.pop("waiting")
            for state in (*STATES, "finished_last_hour"):
                n = int(row[state])
                # live counts are exact (the database keeps them); only finished_last_hour stops at the cap
                over = state == "finished_last_hour" and n >= self.count_cap
                row[state] = Count(n, exact=not over)
                if over and state != "finished_last_hour":
                    capped.append((row["queue_name"], state))
        estimates = self.estimates(capped)
        for row in rows:
            for state in STATES:
                if not row[state].exact:
                    row[state].estimate = estimates.get((row["queue_name"], state))
        return rows

    def overview(self) -> Overview:
        out = Overview(queues=self.queue_counts())
        for state in (*STATES, "finished_last_hour"):
            cells = [r[state] for r in out.queues]
            out.totals[state] = Count(sum(c.best for c in cells), exact=all(c.exact for c in cells))
        out.throughput = self.throughput(60)
        out.workers_alive = self.workers_alive()
        row = self._one("dash_table_estimate", {"table": "neuron_tasks.messages"})
        out.table_estimate = max(int(row["estimate"]), 0) if row else 0
        return out

    def workers_alive(self) -> int:
        row = self._one("dash_workers_alive", {"stale_s": self.stale_s})
        return int(row["alive"]) if row else 0

    # -- messages ----------------------------------------------------------------------------
    def messages(self, flt: MessageFilter, *, before: int | None, limit: int = 50,
                 budget_ms: float = 100.0) -> MessagePage:
        """Newest first below `before`: scan windows of the primary key until `limit` rows match,
        the table ends, or the time budget is spent (then the page says how far it looked)."""
        started = time.perf_counter()
        cursor = before if before is not None else 2**62
        rows: list[dict[str, Any]] = []
        next_before: int | None = None
        while True:
            params = {**flt.params(), "before": cursor, "window": self.window, "limit": limit - len(rows)}
            found = self._all("dash_messages_window", params)
            rows.extend(found)
            if len(rows) >= limit:
                next_before = rows[-1]["id"]
                break
            f = self._one("dash_window_floor", {"before": cursor, "window": self.window})
            floor = f["floor"] if f else None
            if floor is None:  # nothing below: the end of the table
                break
            cursor = int(floor)  # the whole window was looked at: go lower
            if (time.perf_counter() - started) * 1000 > budget_ms:
                next_before = cursor
                break
        for row in rows:
            row["preview"] = preview(row.pop("payload_head"))
        elapsed = (time.perf_counter() - started) * 1000
        return MessagePage(rows, scanned_to=next_before, next_before=next_before, elapsed_ms=elapsed)

    def message(self, key: str) -> dict[str, Any] | None:
        """A live message by row id or message id; else its history row (state finished)."""
        key = key.strip()[:200]
        row_id: int | None = int(key) if key.isdigit() and len(key) < 19 else None
        if row_id is None:
            hit = self._one("dash_message_by_message_id", {"message_id": key})
            row_id = hit["id"] if hit else None
        if row_id is not None:
            row = self._one("dash_message_by_id", {"id": row_id})
            if row is not None:
                row["message"] = decode_payload(bytes(row.pop("payload")))
                return row
        hist = self._one("dash_history_by_id", {"id": row_id if row_id is not None else -1, "message_id": key,
                                                "window": HISTORY_LOOKUP})
        if hist is not None:
            hist["state"] = "finished"
            hist["errors"] = []
            hist["message"] = None
            hist["kept"] = kept_arguments(hist.pop("payload_head", None))
            hist["result"] = self.result(hist)
        return hist

    def result(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of a finished message (when its actor stores results and it has not
        expired): {"value": decoded JSON or text, "stored_at", "expires_at"}; else None."""
        if not self.exists("neuron_tasks.results"):
            return None
        key = hashlib.md5(f"{RESULTS_NAMESPACE}:{row['queue_name']}:{row['actor_name']}:{row['message_id']}"
                          .encode(), usedforsecurity=False).hexdigest()
        found = self._one("dash_result_by_key", {"key": key})
        if found is None:
            return None
        raw = bytes(found.pop("value"))
        try:
            found["value"] = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            found["value"] = raw.decode("utf-8", "replace")
        return found

    # -- dead letters --------------------------------------------------------------------------
    def dead_letters(self, flt: MessageFilter, *, after: tuple[datetime, int] | None, limit: int = 50,
                     budget_ms: float = 100.0) -> tuple[list[dict[str, Any]], tuple[datetime, int] | None]:
        """Newest first below `after`, in windows like `messages`; returns (rows, next cursor)."""
        started = time.perf_counter()
        base = {"queue": flt.queue, "actor": flt.actor, "tenant": flt.tenant, "text": flt.text or None,
                "window": self.window}
        filtered = bool(flt.actor or flt.tenant or flt.text)
        cursor = after
        rows: list[dict[str, Any]] = []
        while True:
            keyset = {"after_at": cursor[0] if cursor else None, "after_id": cursor[1] if cursor else None}
            found = self._all("dash_dead_letters", {**base, **keyset, "limit": limit - len(rows)})
            rows.extend(found)
            if len(rows) >= limit:
                return rows, (rows[-1]["failed_at"], rows[-1]["id"])
            if not filtered:
                return rows, None  # the window is larger than a page: this was the end
            floor = self._one("dash_dead_letter_floor", {**base, **keyset})
            if floor is None:
                return rows, None
            cursor = (floor["failed_at"], floor["id"])
            if (time.perf_counter() - started) * 1000 > budget_ms:
                return rows, cursor

    def dead_letter_ids(self, flt: MessageFilter) -> list[int]:
        params = {"queue": flt.queue, "actor": flt.actor, "tenant": flt.tenant, "text": flt.text or None,
                  "limit": BULK_LIMIT}
        return [r["id"] for r in self._all("dash_dead_letter_ids", params)]

    def requeue(self, ids: list[int]) -> int:
        """Dead letters back to pending (the queue's own requeue)."""
        return len(Repo(self.pool).requeue_ids(ids))

    def delete(self, ids: list[int]) -> int:
        with self.pool.connection() as conn:
            return conn.execute(q("dash_delete_dead_letters"), {"ids": ids}).rowcount

    def purge(self, flt: MessageFilter) -> int:
        """Every dead letter matching a filter; a queue-only filter uses `Repo.purge` (unbounded)."""
        if not (flt.actor or flt.tenant or flt.text):
            return Repo(self.pool).purge(queue=flt.queue)
        return self.delete(self.dead_letter_ids(flt))

    # -- workers and optional parts --------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        """Worker processes of the last hour, each with `running`: the messages it runs now."""
        rows = self._all("dash_workers_table", {"stale_s": self.stale_s})
        live = [r["worker_id"] for r in rows if r["status"] != "stopped"]
        busy: dict[Any, list[dict[str, Any]]] = {}
        if live:
            for job in self._all("dash_running_by_worker", {"workers": live, "limit": BUSY_LIMIT}):
                job["arguments"] = preview(job.pop("payload_head"))
                busy.setdefault(job["worker_id"], []).append(job)
        for row in rows:
            row["running"] = busy.get(row["worker_id"], [])
        return rows

    def table_page(self, table: str, *, after: str | None, limit: int = 50) -> dict[str, Any]:
        """Rows of any table, keyset-paged on its one-column primary key or else on ctid."""
        columns = self._all("dash_table_columns", {"table": table})
        key_row = self._one("dash_table_key", {"table": table})
        key = key_row["name"] if key_row else None
        schema, name = table.split(".", 1)
        if key:
            template = "dash_table_rows_by_key" if after is None else "dash_table_rows_by_key_after"
        else:
            template = "dash_table_rows_by_ctid" if after is None else "dash_table_rows_by_ctid_after"
        stmt = sql.SQL(q(template)).format(table=sql.Identifier(schema, name), key=sql.Identifier(key or "ctid"))
        rows: list[dict[str, Any]] = []
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            for type_name, loader in LENIENT_LOADERS.items():
                cur.adapters.register_loader(type_name, loader)
            try:
                cur.execute(stmt, {"after": after, "limit": limit}, prepare=False)
                rows = cur.fetchall()
            except psycopg.DataError:
                rows = []  # a cursor value the key's type does not accept: an empty page
        estimate = self._one("dash_table_estimate", {"table": table})
        return {
            "columns": [c["name"] for c in columns],
            "types": {c["name"]: c["type"] for c in columns},
            "rows": rows,
            "key": key or "ctid",
            "next_after": rows[-1]["_cursor"] if len(rows) == limit else None,
            "estimate": max(int(estimate["estimate"]), 0) if estimate else 0,
        }


def _lenient(base: type[Any]) -> type[Any]:
    """A date/time loader that returns PostgreSQL's text where Python has no value for it
    ('-infinity', 'infinity', years outside 1-9999), so a generic table page shows those rows."""

    class Lenient(base):
        def load(self, data: Any) -> Any:
            try:
                return super().load(data)
            except psycopg.DataError:
                return bytes(data).decode("utf-8", "replace")

    return Lenient


LENIENT_LOADERS = {"timestamptz": _lenient(TimestamptzLoader), "timestamp": _lenient(TimestampLoader),
                   "date": _lenient(DateLoader)}


def plan_rows(plan: Any) -> int:
    """The top node's row estimate of an EXPLAIN (FORMAT JSON) answer (0 when unreadable)."""
    if isinstance(plan, str):
        plan = json.loads(plan)
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
    except (TypeError, KeyError, IndexError, ValueError):
        return 0


def decode_payload(payload: bytes) -> dict[str, Any] | str:
    try:
        value = json.loads(payload)
        return value if isinstance(value, dict) else payload.decode("utf-8", "replace")
    except (ValueError, UnicodeDecodeError):
        return payload.decode("utf-8", "replace")


def call_args(args: Any, kwargs: Any) -> str:
    """An actor's arguments as a call would spell them: `1, "é", key=true` (JSON values, unescaped)."""
    shown = [json.dumps(a, ensure_ascii=False, default=str) for a in (args if isinstance(args, list) else [])]
    if isinstance(kwargs, dict):
        shown += [f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in kwargs.items()]
    return printable(", ".join(shown))


def printable(text: str) -> str:
    """Text a page can carry: a lone surrogate (JSON allows "\\udc00") becomes "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")


def kept_arguments(head: Any) -> dict[str, Any] | None:
    """What a finished message's page shows of the payload head its history row kept: {"call": its
    arguments as a call would spell them, "options": its options when the head is the whole payload,
    "cut": whether the payload was longer than the head, "text": the head when it is not a Dramatiq
    JSON message}; None when the row kept no head."""
    if head is None:
        return None
    raw = bytes(head)
    whole = decode_payload(raw)
    if isinstance(whole, dict):
        return {"call": call_args(whole.get("args"), whole.get("kwargs")), "options": whole.get("options"),
                "cut": False, "text": None}
    if len(raw) < HISTORY_HEAD_BYTES:  # the whole payload, not JSON (another encoder)
        return {"call": None, "options": None, "cut": False, "text": whole}
    return {"call": preview(raw, limit=HISTORY_HEAD_BYTES), "options": None, "cut": True, "text": None}


def preview(head: Any, *, limit: int = 160) -> str:
    """The actor's arguments, from the first bytes of a message's payload, for the list (never trusted):
    read as JSON when the head holds them whole, else the start of their text (at most `limit`
    characters) followed by "…"."""
    if head is None:
        return ""
    text = bytes(head).decode("utf-8", "replace")
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return call_args(whole.get("args"), whole.get("kwargs"))
    marker = text.find('"args"')
    if marker < 0:
        return text[:limit]
    rest = text[marker + 6:].lstrip().removeprefix(":").lstrip()
    decoder = json.JSONDecoder()
    try:
        args, end = decoder.raw_decode(rest)
    except ValueError:
        return cut_values(rest, limit)
    kwargs: Any = None
    after = rest[end:].lstrip().removeprefix(",").lstrip()
    if after.startswith('"kwargs"'):
        with contextlib.suppress(ValueError):
            kwargs = decoder.raw_decode(after[8:].lstrip().removeprefix(":").lstrip())[0]
    return call_args(args, kwargs)


def cut_values(rest: str, limit: int) -> str:
    """A JSON array cut short, as a call would spell it: the values it holds whole, then as much of
    the cut one as can be read (a cut string decoded up to where it stops), followed by "…"."""
    decoder = json.JSONDecoder()
    shown: list[str] = []
    text = rest.removeprefix("[")
    while len(", ".join(shown)) < limit:
        text = text.lstrip()
        try:
            value, end = decoder.raw_decode(text)
        except ValueError:
            break
        shown.append(json.dumps(value, ensure_ascii=False, default=str))
        text = text[end:].lstrip().removeprefix(",")
    tail = text.lstrip()
    if tail.startswith('"'):  # a cut string: drop a cut escape at its end, then decode it
        for drop in range(7):
            with contextlib.suppress(ValueError):
                whole = json.loads('"' + tail[1:len(tail) - drop] + '"')
                if whole and "\ud800" <= whole[-1] <= "\udbff":  # half a surrogate pair
                    whole = whole[:-1]
                tail = '"' + whole
                break
    if tail:
        shown.append(tail)
    return printable(", ".join(shown)[:limit] + "…")
