"""The pages that parts declare (core.parts.Page): their tables, paged; their own data, charts
and template; their buttons. Each checks at request time whether its tables exist and says so
plainly if not. No feature is named here."""

from __future__ import annotations

from typing import Any

from neuron_tasks.core import parts
from neuron_tasks.core.parts import Page
from neuron_tasks.dashboard.data import DashboardData

#: Colours of a chart's series, by the `tone` a part gives it (else by position).
TONES = ("pending", "finished", "retrying", "failed", "running")


def nav() -> list[tuple[str, str]]:
    return [(f"/parts/{slug}", page.title) for slug, (_, page) in parts.pages().items()]


def find(slug: str) -> Page | None:
    found = parts.pages().get(slug)
    return found[1] if found else None


def part_page(data: DashboardData, page: Page, *, table: str | None, after: str | None,
              limit: int) -> dict[str, Any]:
    """The installed tables of a page, each as a page of rows (keyset-paged), plus the part's data."""
    installed = [t for t in page.tables if data.exists(t)]
    extra = parts.loader(page.data)(data) if page.data and installed and table is None else None
    rich = extra is not None and not page.show_tables
    sections = []
    for name in installed:
        if (table is not None and name != table) or rich:  # a rich page links its raw tables instead
            continue
        rows = data.table_page(name, after=after if name == table else None, limit=limit)
        rows["table"] = name
        rows["columns"] = [c for c in rows["columns"] if not c.startswith("_")]
        sections.append(rows)
    charts = extra.get("charts", []) if isinstance(extra, dict) else []
    return {"part": page, "installed": installed, "missing": [t for t in page.tables if t not in installed],
            "sections": sections, "data": extra, "charts": charts}


def metric_families(data: DashboardData) -> list[Any]:
    """Every page's metrics for /metrics; a part that fails is logged by the caller's collector."""
    out: list[Any] = []
    for _, page in parts.pages().values():
        if page.metrics:
            out.extend(parts.loader(page.metrics)(data))
    return out
