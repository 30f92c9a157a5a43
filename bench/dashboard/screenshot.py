"""docs/dashboard/: every dashboard page at a phone's width (390 px) and a desktop's (1440 px), on
a database that looks lived in (tests/browser/seed.py), shot in headless Debian chromium
(Playwright, no browser download); docs/dashboard.png is the overview at 1440 px.

    python bench/dashboard/screenshot.py [--out docs/dashboard]

Uses a separate database (nt_dash_shot) on $NEURON_TASKS_DATABASE_URL's server (else embedded).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from neuron_tasks import embedded
from neuron_tasks.core import migrate
from neuron_tasks.dashboard.server import BackgroundDashboard
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool
from tests.browser.chromium import ARGS, CHROMIUM
from tests.browser.seed import keep_alive, seed
from tests.browser.test_dashboard_pages_browser import pages

DB = "nt_dash_shot"
WIDTHS = (390, 1440)
#: A long page is cut here: the docs show its top.
MAX_HEIGHT = 1600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/dashboard")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    url = make_conninfo(server, dbname=DB)
    migrate.upgrade(url)
    ids = seed(url)
    pool = make_pool(url, max_size=4)
    dash = BackgroundDashboard(pool, DashboardSettings(dashboard_port=0, dashboard_refresh_s=0))
    base = dash.start().rstrip("/")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                for name, path in pages():
                    keep_alive(url)
                    page.goto(base + path.format(**ids))
                    height = min(int(page.evaluate("() => document.documentElement.scrollHeight")), MAX_HEIGHT)
                    target = out / f"{name}-{width}.png"
                    page.screenshot(path=str(target), full_page=True,
                                    clip={"x": 0, "y": 0, "width": width, "height": height})
                    print(f"wrote {target}")
                page.close()
            browser.close()
    finally:
        dash.stop()
        pool.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    shutil.copyfile(out / "overview-1440.png", out.parent / "dashboard.png")


if __name__ == "__main__":
    main()
