"""The dashboard's ASGI app: server-rendered pages, dead-letter actions, /metrics, /healthz."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from neuron_tasks.core import parts
from neuron_tasks.dashboard import charts
from neuron_tasks.dashboard.data import STATES, DashboardData, MessageFilter
from neuron_tasks.dashboard.metrics import registry, render
from neuron_tasks.dashboard.parts import TONES, find, part_page
from neuron_tasks.dashboard.parts import nav as part_nav
from neuron_tasks.dashboard.render import HERE, templates
from neuron_tasks.dashboard.security import Guard, GuardMiddleware
from neuron_tasks.dashboard.settings import DashboardSettings

MAX_PARAM = 200
NOTICES = {"requeued": "Requeued {n} dead letter(s).", "deleted": "Deleted {n} dead letter(s).",
           "none": "Nothing selected.", "csrf": "The form expired; reload the page and try again.",
           "confirm": "Tick 'confirm' to act on every dead letter matching the filter."}
NAV = [("/", "Overview"), ("/messages", "Messages"), ("/dead-letters", "Dead letters"), ("/workers", "Workers"),
       *part_nav()]


def draw(chart: dict[str, Any]) -> Any:
    """A part's chart (title, labels, series of name/values/tone) as SVG."""
    series = [(str(s["name"]), list(s["values"]), f"s-{s.get('tone') or TONES[i % len(TONES)]}")
              for i, s in enumerate(chart.get("series", []))]
    kind = charts.bars if chart.get("kind") == "bars" else charts.lines
    y_max = chart.get("y_max")
    return kind(series, list(chart.get("labels", [])), title=str(chart.get("title", "")),
                unit=str(chart.get("unit", "")), x_label=str(chart.get("x_label", "")),
                y_max=float(y_max) if isinstance(y_max, int | float) else None)


def clean(value: str) -> str:
    """A user-supplied value cut to size, without NUL (PostgreSQL text cannot hold it)."""
    return value.replace("\x00", "").strip()[:MAX_PARAM]


def text_param(request: Request, name: str) -> str | None:
    return clean(request.query_params.get(name, "")) or None


def int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name, "").strip()
    return int(value) if value.isdigit() and len(value) < 19 else None


def message_filter(request: Request) -> MessageFilter:
    state = text_param(request, "state")
    return MessageFilter(
        queue=text_param(request, "queue"), state=state if state in STATES else None,
        actor=text_param(request, "actor"), tenant=text_param(request, "tenant"),
        topic=text_param(request, "topic"), text=text_param(request, "q"),
    )


class Dashboard:
    def __init__(self, pool: ConnectionPool, settings: DashboardSettings,
                 read_pool: ConnectionPool | None = None) -> None:
        self.settings = settings
        self.data = DashboardData(pool, count_cap=settings.dashboard_count_cap,
                                  window=settings.dashboard_scan_window, stale_s=settings.dashboard_stale_s)
        #: Reads that tolerate replication lag (overview, lists, /metrics): a replica's when configured;
        #: actions, and what they read first, use `data` (the primary).
        self.reads = self.data if read_pool is None or read_pool is pool else DashboardData(
            read_pool, count_cap=settings.dashboard_count_cap, window=settings.dashboard_scan_window,
            stale_s=settings.dashboard_stale_s)
        self.templates = templates()
        self.registry = registry(self.reads)

    def page(self, request: Request, name: str, started: float, status_code: int = 200,
             **context: Any) -> Response:
        ctx = {"nav": NAV, "path": request.url.path, "csrf": getattr(request.state, "csrf", ""),
               "refresh_s": self.settings.dashboard_refresh_s, "live": False, "notice": None,
               "render_ms": lambda: (time.perf_counter() - started) * 1000, **context}
        return self.templates.TemplateResponse(request, name, ctx, status_code=status_code)

    # -- pages -----------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        started = time.perf_counter()
        ov = await run_in_threadpool(self.reads.overview)
        labels = [m["minute"].astimezone().strftime("%H:%M") for m in ov.throughput]
        throughput = charts.bars([("finished", [m["finished"] for m in ov.throughput], "s-finished")],
                                 labels, title="Finished per minute, last hour", unit="messages / min",
                                 x_label="time (local)")
        failures = charts.bars([("dead-lettered", [m["failed"] for m in ov.throughput], "s-failed")],
                               labels, title="Dead-lettered per minute, last hour", unit="messages / min",
                               x_label="time (local)")
        depth = charts.bars(
            [(s, [r[s].best for r in ov.queues], f"s-{s}") for s in STATES],
            [r["queue_name"] for r in ov.queues], title="Messages per queue and state", unit="messages",
            x_label="queue")
        return self.page(request, "overview.html", started, ov=ov, throughput=throughput, failures=failures,
                         depth=depth, states=STATES, live=True, cap=self.data.count_cap)

    async def messages(self, request: Request) -> Response:
        started = time.perf_counter()
        flt = message_filter(request)
        before = int_param(request, "before")
        page = await run_in_threadpool(self.reads.messages, flt, before=before,
                                       limit=self.settings.dashboard_page_size)
        next_url = None
        if page.next_before is not None:
            next_url = "/messages?" + urlencode({**flt.query(), "before": page.next_before})
        return self.page(request, "messages.html", started, flt=flt, page=page, states=STATES, next_url=next_url,
                         first_url="/messages?" + urlencode(flt.query()), paged=before is not None,
                         page_size=self.settings.dashboard_page_size)

    async def queue(self, request: Request) -> Response:
        name = clean(str(request.path_params["name"]))
        return RedirectResponse("/messages?" + urlencode({"queue": name}), status_code=303)

    async def message(self, request: Request) -> Response:
        started = time.perf_counter()
        key = clean(str(request.path_params["key"]))
        row = await run_in_threadpool(self.data.message, key) if key else None
        if row is None:
            return self.page(request, "message.html", started, status_code=404, m=None, key=key, timeline=[])
        return self.page(request, "message.html", started, m=row, key=key, timeline=timeline(row))

    async def dead_letters(self, request: Request) -> Response:
        started = time.perf_counter()
        flt = message_filter(request)
        flt.state = "failed"
        after = None
        after_at, after_id = text_param(request, "after_at"), int_param(request, "after_id")
        if after_at and after_id is not None:
            try:
                after = (datetime.fromisoformat(after_at), after_id)
            except ValueError:
                after = None
        limit = self.settings.dashboard_page_size
        rows, cursor = await run_in_threadpool(self.reads.dead_letters, flt, after=after, limit=limit)
        query = {k: v for k, v in flt.query().items() if k != "state"}
        next_url = None
        if cursor is not None:
            next_url = "/dead-letters?" + urlencode({**query, "after_at": cursor[0].isoformat(), "after_id": cursor[1]})
        notice = None
        done = request.query_params.get("done")
        if done in NOTICES:
            n = int_param(request, "n") or 0
            notice = NOTICES[done].format(n=n)
        return self.page(request, "dead_letters.html", started, flt=flt, rows=rows, next_url=next_url,
                         query=query, notice=notice, paged=after is not None, partial=len(rows) < limit)

    async def dead_letter_action(self, request: Request) -> Response:
        form = await request.form()
        guard: Guard = request.app.state.guard
        back = {k: clean(str(form.get(k, ""))) for k in ("queue", "actor", "tenant", "q") if form.get(k)}
        if not guard.csrf_ok(request, str(form.get("csrf", ""))):
            return PlainTextResponse("CSRF check failed: reload the page and try again.\n", status_code=403)
        action = str(form.get("action", ""))
        ids = [int(v) for v in map(str, form.getlist("ids")) if v.isdigit() and len(v) < 19]
        for one in ("requeue_one", "delete_one"):
            value = str(form.get(one, ""))
            if value.isdigit() and len(value) < 19:
                action, ids = one.split("_")[0], [int(value)]
        flt = MessageFilter(queue=back.get("queue"), actor=back.get("actor"), tenant=back.get("tenant"),
                            text=back.get("q"))
        if form.get("scope") == "all" and form.get("confirm") != "yes":
            return RedirectResponse("/dead-letters?" + urlencode({**back, "done": "confirm"}), status_code=303)
        if form.get("scope") == "all":
            ids = await run_in_threadpool(self.data.dead_letter_ids, flt)
        if action not in ("requeue", "delete"):
            return PlainTextResponse("unknown action\n", status_code=400)
        if not ids and form.get("scope") != "all":
            done, n = "none", 0
        elif action == "requeue":
            done, n = "requeued", await run_in_threadpool(self.data.requeue, ids)
        elif form.get("scope") == "all":
            done, n = "deleted", await run_in_threadpool(self.data.purge, flt)
        else:
            done, n = "deleted", await run_in_threadpool(self.data.delete, ids)
        return RedirectResponse("/dead-letters?" + urlencode({**back, "done": done, "n": n}), status_code=303)

    async def workers(self, request: Request) -> Response:
        started = time.perf_counter()
        rows = await run_in_threadpool(self.reads.workers)
        return self.page(request, "workers.html", started, rows=rows, live=True)

    async def part(self, request: Request) -> Response:
        started = time.perf_counter()
        page = find(str(request.path_params["slug"]))
        if page is None:
            return self.page(request, "part.html", started, status_code=404, p=None, charts=[])
        table = text_param(request, "table")
        table = table if table in page.tables else None
        p = await run_in_threadpool(part_page, self.data, page, table=table, after=text_param(request, "after"),
                                    limit=self.settings.dashboard_page_size)
        drawn = [{"heading": c.get("heading"), "svg": draw(c)} for c in p["charts"]]
        notice = text_param(request, "notice") if request.query_params.get("done") else None
        return self.page(request, "part.html", started, p=p, charts=drawn, notice=notice, live=page.live)

    async def part_action(self, request: Request) -> Response:
        """A page's button (see Page.actions): CSRF-checked, then the part's function."""
        page = find(str(request.path_params["slug"]))
        name = str(request.path_params["action"])
        action = next((a for a in page.actions if a.name == name), None) if page else None
        if page is None or action is None:
            return PlainTextResponse("No such action.\n", status_code=404)
        form = await request.form()
        guard: Guard = request.app.state.guard
        if not guard.csrf_ok(request, str(form.get("csrf", ""))):
            return PlainTextResponse("CSRF check failed: reload the page and try again.\n", status_code=403)
        fields = {k: clean(str(v)) for k, v in form.items() if k != "csrf"}
        notice = await run_in_threadpool(parts.loader(action.run), self.data, fields)
        if notice is None:
            return PlainTextResponse(f"Nothing matched {fields.get('name', '')!r}: nothing was done"
                                     f" (see /parts/{page.slug}).\n", status_code=404)
        return RedirectResponse(f"/parts/{page.slug}?" + urlencode({"done": name, "notice": clean(str(notice))}),
                                status_code=303)

    # -- machine endpoints -------------------------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(render, self.registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        try:
            ok = await run_in_threadpool(self.data.ping)
        except Exception as exc:
            return PlainTextResponse(f"database unavailable: {type(exc).__name__}\n", status_code=503)
        return PlainTextResponse("ok\n" if ok else "database unavailable\n", status_code=200 if ok else 503)


def timeline(row: dict[str, Any]) -> list[tuple[Any, str]]:
    """What happened to a message, in order (times as datetimes or epoch seconds)."""
    events: list[tuple[float, Any, str]] = []

    def add(at: Any, what: str) -> None:
        if at is None:
            return
        key = at.timestamp() if isinstance(at, datetime) else float(at)
        events.append((key, at, what))

    add(row.get("enqueued_at"), "enqueued")
    if row.get("eta") and row.get("enqueued_at") and row["eta"] > row["enqueued_at"]:
        add(row.get("eta"), "due (eta)")
    if row.get("attempts") == 0:  # claimed, then put back by a tenant or topic limit (defer): never run
        add(row.get("started_at"), "picked up, then deferred by a tenant or topic limit: not started yet")
    else:
        add(row.get("started_at"), "started (latest attempt)")
    for err in row.get("errors") or []:
        if isinstance(err, dict) and isinstance(err.get("at"), int | float):
            add(err["at"], f"attempt {err.get('attempt', '?')} failed: {err.get('type', '')}")
    add(row.get("failed_at"), "dead-lettered")
    add(row.get("finished_at"), "finished")
    events.sort(key=lambda e: e[0])
    return [(at, what) for _, at, what in events]


def create_app(pool: ConnectionPool, settings: DashboardSettings | None = None, *,
               read_pool: ConnectionPool | None = None) -> Starlette:
    settings = settings or DashboardSettings()
    dash = Dashboard(pool, settings, read_pool)
    guard = Guard(settings.dashboard_token)
    routes = [
        Route("/", dash.overview),
        Route("/messages", dash.messages),
        Route("/messages/{key}", dash.message),
        Route("/queues/{name}", dash.queue),
        Route("/dead-letters", dash.dead_letters),
        Route("/dead-letters/action", dash.dead_letter_action, methods=["POST"]),
        Route("/workers", dash.workers),
        Route("/parts/{slug}", dash.part),
        Route("/parts/{slug}/{action}", dash.part_action, methods=["POST"]),
        Route("/metrics", dash.metrics),
        Route("/healthz", dash.healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(GuardMiddleware, guard=guard)])
    app.state.guard = guard
    app.state.dashboard = dash
    return app
