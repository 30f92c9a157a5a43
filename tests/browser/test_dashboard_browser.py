"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright;
no browser is downloaded). Screenshots go to $NEURON_TASKS_ARTIFACTS, else a temporary folder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker, pipelines
from neuron_tasks.dashboard.server import BackgroundDashboard
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool
from tests.browser.chromium import needs_chromium
from tests.integration.dashboard_helpers import enqueue, kill, states

pytestmark = needs_chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    yield p
    context.close()


@pytest.fixture
def dashboard(clean_db: str) -> Iterator[str]:
    pool = make_pool(clean_db, max_size=4, name="neuron_tasks-dashboard-test")
    server = BackgroundDashboard(pool, DashboardSettings(dashboard_port=0, dashboard_refresh_s=1))
    url = server.start()
    yield url.rstrip("/")
    server.stop()
    pool.close()


@pytest.fixture
def shot(artifacts: Path) -> Any:
    def take(page: Any, name: str) -> Path:
        path = artifacts / f"dashboard-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def test_overview_shows_live_numbers(page: Any, dashboard: str, clean_db: str, shot: Any) -> None:
    for i in range(3):
        enqueue(clean_db, "add", [i], queue="live")
    kill(clean_db, enqueue(clean_db, "add", [99], queue="live"))
    page.goto(dashboard + "/")
    assert page.text_content("#total-pending") == "3"
    assert page.text_content("#total-failed") == "1"
    assert page.locator("svg.chart").count() == 3
    for i in range(2):
        enqueue(clean_db, "add", [10 + i], queue="live")
    # no reload: the page's auto-refresh (1 s here) brings the new numbers
    from playwright.sync_api import expect

    expect(page.locator("#total-pending")).to_have_text("5", timeout=15_000)
    assert shot(page, "overview").stat().st_size > 10_000


def test_dead_letter_requeued_from_the_page_then_runs(page: Any, dashboard: str, broker: PostgresBroker,
                                                      worker: dramatiq.Worker, shot: Any) -> None:
    done: list[int] = []

    @dramatiq.actor(queue_name="browser_q", max_retries=0)
    def browser_job(n: int) -> None:
        done.append(n)

    row = enqueue(broker.url, "browser_job", [7], queue="browser_q", failed=True)
    kill(broker.url, row, error="RuntimeError: database was down")
    page.goto(dashboard + "/dead-letters")
    assert page.locator(f'tr[data-id="{row}"]').count() == 1
    shot(page, "dead-letters")
    page.click(f'tr[data-id="{row}"] button.requeue-one')
    page.wait_for_selector("#notice")
    assert "Requeued 1" in (page.text_content("#notice") or "")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not done:
        time.sleep(0.05)
    assert done == [7], "the requeued message ran"
    assert row not in states(broker.url) or states(broker.url)[row] != "failed"
    page.goto(dashboard + "/dead-letters")
    assert page.locator("#no-dead-letters").count() == 1


def test_a_filter_narrows_the_list(page: Any, dashboard: str, clean_db: str, shot: Any) -> None:
    for i in range(12):
        enqueue(clean_db, "resize_image" if i % 3 == 0 else "send_email", [i], queue="media")
    page.goto(dashboard + "/messages")
    before = page.locator("#messages tbody tr").count()
    assert before == 12
    page.fill('#filters input[name="actor"]', "resize_image")
    page.click('#filters button[type="submit"]')
    page.wait_for_url("**actor=resize_image**")
    rows = page.locator("#messages tbody tr")
    assert rows.count() == 4
    assert all("resize_image" in (rows.nth(i).text_content() or "") for i in range(4))
    # progressive enhancement: a click on a header sorts the rows
    page.click("#messages thead th:first-child")
    page.click("#messages thead th:first-child")
    ids = [int(rows.nth(i).get_attribute("data-id") or 0) for i in range(4)]
    assert ids == sorted(ids, reverse=True)
    shot(page, "filter")


def test_pipelines_page_shows_badges_and_sync_now_enqueues(page: Any, dashboard: str, clean_db: str,
                                                           shot: Any) -> None:
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT name FROM neuron_tasks.pipelines").fetchall():
            conn.execute("SELECT neuron_tasks.drop_pipeline(%s, true)", [name])
        conn.execute("DROP TABLE IF EXISTS public.browser_docs CASCADE")
        conn.execute("CREATE TABLE public.browser_docs (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO public.browser_docs SELECT g, 'doc ' || g FROM generate_series(1, 8) g")
    pipelines.create_pipeline(clean_db, "browser_docs", source="browser_docs", key="id", data="body")
    page.goto(dashboard + "/parts/pipelines")
    badge = page.locator('tr[data-pipeline="browser_docs"] .badge')
    assert badge.text_content() == "Stale"
    assert "ps-busy" in (badge.get_attribute("class") or "")
    # the badge is coloured (amber background), not only labelled
    assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(254, 243, 199)"
    shot(page, "pipelines")
    page.click('tr[data-pipeline="browser_docs"] button.sync-now')
    page.wait_for_selector("#notice")
    assert "Sync of pipeline browser_docs queued" in (page.text_content("#notice") or "")
    with psycopg.connect(clean_db) as conn:
        jobs = conn.execute("SELECT queue_name, actor_name FROM neuron_tasks.messages").fetchall()
    assert jobs == [("pipelines", "neuron_tasks.pipeline_sync")]
