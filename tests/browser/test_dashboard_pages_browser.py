"""Every dashboard page in a real headless Chromium at a phone's width (390 px) and a desktop's
(1440 px), on a database that looks lived in (seed.py): a screenshot of each (kept as a test
artifact), every chart with its title, unit and legend and no label outside it, no table cell
that breaks inside a word, and nothing wider than the window but the tables that scroll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuron_tasks.core import parts
from neuron_tasks.dashboard.server import BackgroundDashboard
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool
from neuron_tasks.testing import truncate
from tests.browser.chromium import needs_chromium
from tests.browser.seed import drop_pipelines, keep_alive, seed

WIDTHS = (390, 1440)
#: The dashboard's own pages; every part's page follows (see `pages`).
OWN = [("overview", "/"), ("messages", "/messages"), ("message", "/messages/{dead}"),
       ("message-deferred", "/messages/{deferred}"), ("dead-letters", "/dead-letters"), ("workers", "/workers")]
#: Pages that draw charts (each is checked to draw at least one).
CHARTED = {"overview", "tenants", "topics", "schedules", "indexes", "llm-cache"}



def pages() -> list[tuple[str, str]]:
    """Every page: the dashboard's own, then each part's (whatever parts are installed)."""
    return [*OWN, *((slug, f"/parts/{slug}") for slug in parts.pages())]


pytestmark = needs_chromium

#: Words of table cells drawn on more than one line (a break after "/" is a fair break; one after
#: "-", as in a date, is not).
BROKEN_WORDS = """() => {
  const bad = [];
  for (const cell of document.querySelectorAll("td, th")) {
    const walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
      for (const m of node.data.matchAll(/[^\\s\\/]+/g)) {
        const r = document.createRange();
        r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
        const tops = new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
        if (tops.size > 1) bad.push(m[0]);
      }
    }
  }
  return bad;
}"""

#: Each chart: its title, unit and legend labels, and any text that sticks out of its drawing.
CHARTS = """() => [...document.querySelectorAll("svg.chart")].map(svg => {
  const box = svg.viewBox.baseVal;
  const out = [...svg.querySelectorAll("text")].filter(t => {
    const b = t.getBBox();
    return b.x < -0.5 || b.y < -0.5 || b.x + b.width > box.width + 0.5 || b.y + b.height > box.height + 0.5;
  }).map(t => t.textContent);
  const title = svg.querySelector(":scope > title");
  return {title: title ? title.textContent : "", shown: (svg.querySelector("text.chart-title") || {}).textContent || "",
          unit: (svg.querySelector("text.unit") || {}).textContent || "",
          legend: [...svg.querySelectorAll("g.legend text.legend-label")].map(t => t.textContent), outside: out};
})"""

#: In the per-queue chart, the label nearest each bar (by x) and the queue the bar says it is for.
BAR_LABELS = """() => {
  const svg = [...document.querySelectorAll("svg.chart")].find(s => s.querySelector(":scope > title")
    .textContent === "Messages per queue and state");
  const ticks = [...svg.querySelectorAll("text.tick.x")].map(t => {
    const b = t.getBBox(); return [t.textContent, b.x + b.width / 2]; });
  return [...svg.querySelectorAll("rect:not(.swatch)")].map(r => {
    const b = r.getBBox(), mid = b.x + b.width / 2;
    const near = ticks.reduce((a, t) => Math.abs(t[1] - mid) < Math.abs(a[1] - mid) ? t : a);
    return [r.querySelector("title").textContent.split(" ")[0], near[0]];
  });
}"""


@pytest.fixture
def seeded(clean_db: str) -> Iterator[tuple[str, dict[str, Any]]]:
    ids = seed(clean_db)
    keep_alive(clean_db)
    pool = make_pool(clean_db, max_size=4, name="neuron_tasks-dashboard-test")
    server = BackgroundDashboard(pool, DashboardSettings(dashboard_port=0, dashboard_refresh_s=0))
    url = server.start()
    yield url.rstrip("/"), ids
    server.stop()
    pool.close()
    drop_pipelines(clean_db)
    truncate(clean_db)  # the other parts' tables too: later tests expect them empty


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_reads_at_phone_and_desktop_width(browser: Any, seeded: tuple[str, dict[str, Any]],
                                                      artifacts: Path, width: int) -> None:
    base, ids = seeded
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    try:
        for name, path in pages():
            response = page.goto(base + path.format(**ids))
            assert response is not None and response.status == 200, f"{name}: {response and response.status}"
            page.screenshot(path=str(artifacts / f"{name}-{width}.png"), full_page=True)
            charts = page.evaluate(CHARTS)
            if name in CHARTED and not charts:
                problems.append(f"{name}: no chart")
            for c in charts:
                if not (c["title"] and c["shown"] == c["title"] and c["unit"] and c["legend"]):
                    problems.append(f"{name}: chart {c['title']!r} lacks a title, unit or legend: {c}")
                if c["outside"]:
                    problems.append(f"{name}: chart {c['title']!r} draws {c['outside']} outside itself")
            broken = page.evaluate(BROKEN_WORDS)
            if broken:
                problems.append(f"{name}: table cells break inside {sorted(set(broken))[:10]}")
            wide = page.evaluate("() => document.documentElement.scrollWidth")
            if wide > width + 1:
                problems.append(f"{name}: the page is {wide} px wide in a {width} px window")
    finally:
        context.close()
    assert not problems, "\n".join(problems)


def test_per_queue_bars_sit_over_their_own_queue_in_the_browser(browser: Any,
                                                                 seeded: tuple[str, dict[str, Any]]) -> None:
    base, _ = seeded
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    try:
        page.goto(base + "/")
        pairs = page.evaluate(BAR_LABELS)
        assert len(pairs) >= 5, "pending bars of four queues and the dead letter's"
        assert all(own == nearest for own, nearest in pairs), pairs
        waiting = {r.get_attribute("data-queue"): r.locator("td").last.text_content()
                   for r in page.locator("#queues tbody tr").all()}
        assert "0 ms" not in waiting.values(), waiting
    finally:
        context.close()


def test_a_deferred_message_is_not_said_to_have_started(browser: Any, seeded: tuple[str, dict[str, Any]]) -> None:
    base, ids = seeded
    context = browser.new_context(viewport={"width": 390, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{base}/messages/{ids['deferred']}")
        assert page.text_content("#fact-started_at") == "not started yet"
        timeline = page.text_content("#timeline") or ""
        assert "started (latest attempt)" not in timeline and "deferred" in timeline
    finally:
        context.close()
