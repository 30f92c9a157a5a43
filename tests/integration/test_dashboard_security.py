"""Dashboard security: loopback by default, tokens beyond it, CSRF on mutations, parameterised
filters, and hostile data (SQL fragments, HTML/script, huge or broken values) shown escaped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import quote

import psycopg
import pytest

from neuron_tasks.dashboard.server import DashboardConfigError, check_bind
from neuron_tasks.dashboard.settings import DashboardSettings
from tests.conftest import ROOT
from tests.integration.dashboard_helpers import client, csrf, enqueue, kill, states

PAGES = ("/", "/messages", "/dead-letters", "/workers", "/parts/tenants", "/parts/pipelines", "/metrics", "/healthz")
SCRIPT = "<script>alert(1)</script>"


def test_loopback_by_default_and_a_token_required_beyond_it() -> None:
    assert DashboardSettings().dashboard_host == "127.0.0.1"
    check_bind(DashboardSettings())
    with pytest.raises(DashboardConfigError, match="token"):
        check_bind(DashboardSettings(dashboard_host="0.0.0.0"))
    check_bind(DashboardSettings(dashboard_host="0.0.0.0", dashboard_token="s3cret"))


def test_cli_refuses_a_public_bind_without_token(clean_db: str) -> None:
    env = {**os.environ, "NEURON_TASKS_DATABASE_URL": clean_db}
    env.pop("NEURON_TASKS_DASHBOARD_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "neuron_tasks.cli", "dashboard", "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode != 0 and "token" in proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "neuron_tasks.cli", "dashboard", "--help"],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=60).stdout
    assert "--host" in help_text and "--port" in help_text and "--token" in help_text


def test_every_request_needs_the_token_when_one_is_set(clean_db: str) -> None:
    with client(clean_db, dashboard_token="s3cret") as c:
        for page in (*PAGES, "/static/app.css", "/messages/1"):
            assert c.get(page).status_code == 401, page
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"X-Neuron-Tasks-Token": "s3cret"}).status_code == 200
        assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
        login = c.get("/messages?token=s3cret&queue=x", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/messages?queue=x"
        assert "s3cret" not in login.headers["set-cookie"]  # the cookie holds a MAC, not the token
        assert "httponly" in login.headers["set-cookie"].lower()
        for page in PAGES:
            assert c.get(page).status_code == 200, page  # the cookie now authorises


def test_mutations_need_post_and_a_csrf_token_of_this_session(clean_db: str) -> None:
    row = enqueue(clean_db, "add", [1])
    kill(clean_db, row)
    with client(clean_db) as c, client(clean_db) as other:
        token = csrf(c.get("/dead-letters").text)
        foreign = csrf(other.get("/dead-letters").text)
        assert token != foreign
        assert c.get("/dead-letters/action").status_code == 405
        for form in ({}, {"csrf": "forged"}, {"csrf": foreign}):
            r = c.post("/dead-letters/action", data={**form, "requeue_one": str(row)})
            assert r.status_code == 403, form
        r = c.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row)},
                   headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert states(clean_db)[row] == "failed"
        r = c.post("/dead-letters/action", data={"csrf": token, "requeue_one": str(row)})
        assert r.status_code == 200 and states(clean_db)[row] == "pending"


def test_security_headers(clean_db: str) -> None:
    with client(clean_db) as c:
        r = c.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert re.search(r"nt_session=[^;]+;.*HttpOnly.*SameSite=strict", r.headers["set-cookie"], re.I)


def test_sql_fragments_in_filters_are_plain_values(clean_db: str) -> None:
    row = enqueue(clean_db, "add", [1])
    kill(clean_db, row)
    hostile = ["' OR 1=1 --", "x'; DROP TABLE neuron_tasks.messages; --", "%", "%_%", "\\", "1) OR (1=1", "zq\x00zq",
               "é" * 500]
    with client(clean_db) as c:
        for value in hostile:
            for page in ("/messages", "/dead-letters"):
                for key in ("queue", "actor", "tenant", "topic", "q", "state"):
                    r = c.get(page, params={key: value})
                    assert r.status_code == 200, (page, key, value)
                    ignored = key == "state" or (page == "/dead-letters" and key == "topic")  # not filters there
                    assert f'data-id="{row}"' not in r.text or ignored, (page, key, value)
            quoted = quote(value, safe="")
            for path in (f"/messages/{quoted}", f"/parts/{quoted}", f"/queues/{quoted}"):
                assert c.get(path).status_code in (200, 303, 404), path
        for bogus in ({"before": "abc"}, {"before": "-1"}, {"before": "9" * 40}, {"after_at": "x", "after_id": "1"},
                      {"after_at": "2026-01-01T00:00:00+00:00", "after_id": "z"}):
            assert c.get("/messages", params=bogus).status_code == 200
            assert c.get("/dead-letters", params=bogus).status_code == 200
        assert c.get("/parts/tenants", params={"table": "pg_catalog.pg_authid", "after": "'"}).status_code == 200
    assert states(clean_db) == {row: "failed"}  # nothing dropped, nothing changed


def test_hostile_data_is_escaped_and_cut(clean_db: str) -> None:
    huge = "A" * 1_000_000
    rows = [
        enqueue(clean_db, SCRIPT, [SCRIPT, {"k": SCRIPT}], queue="q<img src=x onerror=alert(1)>", tenant=SCRIPT,
                topic=SCRIPT),
        enqueue(clean_db, "add", [huge]),
    ]
    kill(clean_db, rows[0], error=SCRIPT, errors=[
        {"at": 1_790_000_000, "attempt": 1, "type": SCRIPT, "message": SCRIPT, "traceback": SCRIPT + "B" * 200_000}])
    kill(clean_db, rows[1], error="E" * 100_000, errors=["just a string", 42, None, {"at": "not a time"}])
    with psycopg.connect(clean_db, autocommit=True) as conn:  # bytes that are neither JSON nor UTF-8
        odd = conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload, errors)"
                           " VALUES ('odd', 'default', 'add', '\\xfffe00c3283c7363726970743e', '{\"x\": 1}')"
                           " RETURNING id").fetchone()[0]
    with client(clean_db) as c:
        pages = [*PAGES, "/messages?state=failed", "/messages?q=%3Cscript", "/dead-letters?q=%3Cscript",
                 *(f"/messages/{r}" for r in (*rows, odd)), "/messages/odd"]
        for page in pages:
            r = c.get(page)
            assert r.status_code == 200, page
            if page != "/metrics":  # text/plain with nosniff: never rendered as HTML
                assert "<script>alert" not in r.text and "<img src=x" not in r.text, page
            assert len(r.text) < 400_000, (page, len(r.text))  # a 1 MB argument does not make a 1 MB page
        shown = c.get(f"/messages/{rows[0]}").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
        assert "more characters" in c.get(f"/messages/{rows[1]}").text
        metrics = c.get("/metrics").text
    assert 'queue="q<img src=x onerror=alert(1)>"' in metrics  # the text format quotes, it does not render
