"""The pipelines page of the dashboard: one row per pipeline as `neuron_tasks.pipeline_metrics` shows it,
the latest per-record errors, and "Sync now".

The view counts the source and destination with count(*), and the backlog and errors without a
bound. So the page reads every pipeline first with bounded statements (`pipeline_page_rows`: sizes
from the catalog, counts capped), then asks the view itself only for the pipelines whose source
and destination are small enough to count quickly (at most `EXACT_BYTES` each); the others show
the planner's row estimates and a status derived from the same inputs as the view's (see
`status_of`). Both reads run under a statement and lock timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from neuron_tasks.core.parts import PageSource
from neuron_tasks.sql import q

#: Tables the page needs (schema/008); without them the part says "not installed yet".
TABLES = ("neuron_tasks.pipelines", "neuron_tasks.pipeline_errors", "neuron_tasks.pipeline_backlog",
          "neuron_tasks.pipeline_volumes", "neuron_tasks.pipeline_metrics")
#: A source or destination up to this size (main fork, all partitions) is counted exactly.
EXACT_BYTES = 16 * 1024 * 1024
#: statement_timeout and lock_timeout of the page's reads.
TIMEOUT_MS = 1000
MAX_PIPELINES = 200
ERRORS_SHOWN = 20
#: statement_timeout and lock_timeout, whichever fires first.
TIMED_OUT = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)
#: Badge colour of each status: green, amber, red, grey.
BADGE = {"UpToDate": "ps-ok", "Stale": "ps-busy", "Processing": "ps-busy", "Failed": "ps-bad",
         "PartialErrors": "ps-bad", "NoResults": "ps-none"}


@dataclass
class Shown:
    """A number as the page shows it: exact, the planner's estimate (~), or a lower bound (+)."""

    value: int | None
    how: str = "exact"  # exact | estimate | at_least

    def __str__(self) -> str:
        if self.value is None:
            return "-"
        if self.how == "estimate":
            return f"~{self.value:,}"
        if self.how == "at_least":
            return f"{self.value:,}+"
        return f"{self.value:,}"


@dataclass
class PipelinesView:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why some numbers are bounded or missing, in words
    cap: int = 0
    exact_bytes: int = EXACT_BYTES


def status_of(row: dict[str, Any]) -> str:
    """The status pipeline_metrics would give, from bounded inputs: the same order of checks
    (schema/008_pipelines.sql); "no results" is read from the destination's size when too big to count."""
    if row["processing"]:
        return "Processing"
    if row["raw_status"] == "failed":
        return "Failed"
    if (row["errors"] or 0) > 0:
        return "PartialErrors"
    if (row["backlog"] or 0) > 0 or row["raw_status"] == "new":
        return "Stale"
    if row["destination_count"] is not None:
        return "NoResults" if row["destination_count"] == 0 else "UpToDate"
    # too big to count (or not a table): like the view, only a known-empty destination has no results
    return "NoResults" if row["destination_bytes"] == 0 else "UpToDate"


def _read(data: PageSource, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with data.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q("pipeline_page_timeout"), {"ms": str(TIMEOUT_MS)})
        cur.execute(q(name), params, prepare=False)
        return cur.fetchall()


def _counted(exact: Any, estimate: Any, big: bool) -> Shown:
    if not big:
        return Shown(None if exact is None else int(exact))
    return Shown(None if estimate is None else int(estimate), "estimate")


def _capped(n: Any, cap: int) -> Shown:
    if n is None:
        return Shown(None)
    return Shown(int(n), "at_least" if int(n) >= cap else "exact")


def _done_share(row: dict[str, Any]) -> str:
    """Share of the source processed: 1 - backlog / source rows (tables only)."""
    src, backlog = row["source_shown"], row["backlog_shown"]
    if row["kind"] != "table" or not src.value or backlog.value is None:
        return "-"
    share = max(0.0, min(1.0, 1 - backlog.value / src.value))
    prefix = "≤ " if backlog.how == "at_least" else ("~" if src.how == "estimate" else "")
    return f"{prefix}{share:.0%}"


def load(data: PageSource) -> PipelinesView | None:
    """Every pipeline (bounded reads, then the view for the small ones) and their latest errors;
    None while some of the tables the page needs do not exist (the page then lists the tables)."""
    if not all(data.exists(t) for t in TABLES):
        return None
    cap = data.count_cap
    out = PipelinesView(cap=cap)
    try:
        rows = _read(data, "pipeline_page_rows", {"limit": MAX_PIPELINES, "cap": cap, "exact_bytes": EXACT_BYTES})
    except TIMED_OUT as exc:
        out.problems.append(f"the pipelines could not be read within {TIMEOUT_MS} ms ({exc.diag.message_primary})")
        return out
    for row in rows:
        row["big"] = max(row["source_bytes"] or 0, row["destination_bytes"] or 0) > EXACT_BYTES
        row["status"] = status_of(row)
        row["from_view"] = False
    small = [r["name"] for r in rows if not r["big"]]
    metrics: dict[str, dict[str, Any]] = {}
    if small:
        try:
            metrics = {m["pipeline"]: m for m in _read(data, "pipeline_page_metrics", {"names": small})}
        except TIMED_OUT as exc:
            out.problems.append(f"pipeline_metrics did not answer within {TIMEOUT_MS} ms "
                                f"({exc.diag.message_primary}); the numbers below are bounded reads")
    for row in rows:
        m = metrics.get(row["name"])
        if m is not None:  # the view's own numbers and status
            row.update(from_view=True, status=m["status"], source_count=m["count_source_records"],
                       destination_count=m["count_destination_records"], errors=m["count_errors"],
                       backlog=m["table_unprocessed_rows"], scans_completed=m["volume_scans_completed"])
        src_big = (row["source_bytes"] or 0) > EXACT_BYTES
        dst_big = (row["destination_bytes"] or 0) > EXACT_BYTES
        row["source_shown"] = _counted(row["source_count"], row["source_estimate"], src_big and not row["from_view"])
        row["destination_shown"] = _counted(row["destination_count"], row["destination_estimate"],
                                            dst_big and not row["from_view"])
        if row["kind"] == "folder" and not row["from_view"]:
            row["source_shown"] = _capped(row["source_count"], cap)
        if row["from_view"]:
            row["backlog_shown"], row["errors_shown"] = Shown(row["backlog"]), Shown(row["errors"])
        else:
            row["backlog_shown"], row["errors_shown"] = _capped(row["backlog"], cap), _capped(row["errors"], cap)
        row["done"] = _done_share(row)
        row["badge"] = BADGE.get(row["status"], "ps-none")
    out.rows = rows
    if len(rows) >= MAX_PIPELINES:
        out.problems.append(f"only the first {MAX_PIPELINES} pipelines by name are shown")
    with_errors = [r["name"] for r in rows if (r["errors"] or 0) > 0]
    if with_errors:
        try:
            found = _read(data, "pipeline_page_errors",
                          {"names": with_errors, "limit": ERRORS_SHOWN})
        except TIMED_OUT as exc:
            out.problems.append(f"the per-record errors could not be read within {TIMEOUT_MS} ms "
                                f"({exc.diag.message_primary})")
            found = []
        for e in found:
            out.errors.setdefault(e["pipeline"], []).append(e)
    return out


def sync_now(data: PageSource, name: str) -> str | None:
    """Enqueue `neuron_tasks.pipeline_sync(name)` on queue "pipelines"; the message id, or None
    when there is no table pipeline of that name (then nothing is enqueued)."""
    if not data.exists("neuron_tasks.pipelines"):
        return None
    with data.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("pipeline_page_sync_now"), {"name": name}).fetchone()
    return str(row["message_id"]) if row else None


def sync_action(source: PageSource, form: dict[str, str]) -> str | None:
    """The page's "Sync now" button: what the page says after it, or None (no such pipeline)."""
    name = form.get("name", "")
    message_id = sync_now(source, name) if name else None
    if message_id is None:
        return None
    return f"Sync of pipeline {name} queued on queue pipelines (message {message_id})."
