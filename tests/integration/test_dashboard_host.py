"""The dashboard answers only to the names it is bound to (127.0.0.1, localhost, [::1] with its
port; the bound address; dashboard_allowed_hosts), so a DNS-rebinding page can neither read it nor
pass its CSRF check; a POST from a foreign Origin is refused. Through Starlette's TestClient
and through a real server on 127.0.0.1."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.testclient import TestClient

from neuron_tasks.dashboard.app import create_app
from neuron_tasks.dashboard.server import BackgroundDashboard
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool
from tests.integration.dashboard_helpers import csrf, enqueue, kill, states


@contextmanager
def client_at(url: str, base_url: str, **settings: Any) -> Iterator[TestClient]:
    pool = make_pool(url, max_size=4, name="neuron_tasks-dashboard-test")
    try:
        with TestClient(create_app(pool, DashboardSettings(**settings)), base_url=base_url) as c:
            yield c
    finally:
        pool.close()


@contextmanager
def real_dashboard(url: str, **settings: Any) -> Iterator[int]:
    pool = make_pool(url, max_size=4, name="neuron_tasks-dashboard-test")
    server = BackgroundDashboard(pool, DashboardSettings(dashboard_port=0, **settings))
    try:
        server.start()
        yield int(server.url.rsplit(":", 1)[1].strip("/"))
    finally:
        server.stop()
        pool.close()


def get(port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_dns_rebinding_page_can_neither_read_nor_requeue(clean_db: str) -> None:
    row = enqueue(clean_db, "add", [1])
    kill(clean_db, row)
    with client_at(clean_db, "http://evil.example:8787") as evil:
        for page in ("/", "/dead-letters", "/messages", "/metrics", "/healthz", "/static/app.css"):
            assert evil.get(page).status_code in (400, 403), page
        with client_at(clean_db, "http://127.0.0.1:8787") as local:  # a session and token of the real page
            token = csrf(local.get("/dead-letters").text)
            evil.cookies.update(local.cookies)
        r = evil.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row)},
                      headers={"Origin": "http://evil.example:8787"})
        assert r.status_code in (400, 403)
    assert states(clean_db)[row] == "failed"


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8787", "http://localhost:8787", "http://[::1]:8787"])
def test_the_loopback_names_work(clean_db: str, base_url: str) -> None:
    with client_at(clean_db, base_url) as c:
        assert c.get("/").status_code == 200
        assert c.get("/healthz").status_code == 200


def test_a_post_from_a_foreign_origin_is_refused(clean_db: str) -> None:
    row = enqueue(clean_db, "add", [1])
    kill(clean_db, row)
    with client_at(clean_db, "http://127.0.0.1:8787") as c:
        token = csrf(c.get("/dead-letters").text)
        for origin in ("http://evil.example", "http://evil.example:8787", "http://127.0.0.1:9999",
                       "http://localhost:8787"):
            r = c.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row)},
                       headers={"Origin": origin})
            assert r.status_code == 403, origin
            r = c.post("/parts/pipelines/sync", data={"csrf": token, "name": "x"}, headers={"Origin": origin})
            assert r.status_code == 403, origin
        assert states(clean_db)[row] == "failed"
        r = c.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row)},
                   headers={"Origin": "http://127.0.0.1:8787"})
        assert r.status_code == 200 and states(clean_db)[row] == "pending"


def test_a_configured_name_is_allowed(clean_db: str) -> None:
    with client_at(clean_db, "https://dash.example.com", dashboard_allowed_hosts="dash.example.com",
                   dashboard_token="t0ken") as c:
        assert c.get("/healthz", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    with client_at(clean_db, "https://other.example.com", dashboard_allowed_hosts="dash.example.com",
                   dashboard_token="t0ken") as c:
        assert c.get("/healthz", headers={"Authorization": "Bearer t0ken"}).status_code in (400, 403)
    assert DashboardSettings(dashboard_allowed_hosts="a.example, b.example:8443").dashboard_allowed_hosts == [
        "a.example", "b.example:8443"]


def test_a_real_server_checks_the_host_header(clean_db: str) -> None:
    with real_dashboard(clean_db) as port:
        assert get(port, "/healthz", f"127.0.0.1:{port}") == 200
        assert get(port, "/healthz", f"localhost:{port}") == 200
        assert get(port, "/healthz", f"[::1]:{port}") == 200
        assert get(port, "/healthz", "evil.example") in (400, 403)
        assert get(port, "/", f"evil.example:{port}") in (400, 403)
        assert get(port, "/", f"127.0.0.1:{port + 1}") in (400, 403)
        assert get(port, "/", f"127.0.0.1:{port}@evil.example") in (400, 403)
    with real_dashboard(clean_db, dashboard_allowed_hosts="dash.internal") as port:
        assert get(port, "/healthz", "dash.internal") == 200
        assert get(port, "/healthz", f"dash.internal:{port}") == 200
