"""A finished message's page shows the actor's arguments (from the first 2 KB of its payload, kept in
its history row) beside its result; a longer payload's arguments are cut there, and the page says so.
Cancelled messages keep them too."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html import unescape

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.core.results import ensure_results
from neuron_tasks.dashboard.data import kept_arguments, preview
from tests.integration.dashboard_helpers import client, enqueue


@pytest.fixture
def results_worker(broker: PostgresBroker) -> Iterator[dramatiq.Worker]:
    """An in-process worker on a broker that stores results (added before the worker starts)."""
    ensure_results(broker)
    broker.emit_after("process_boot")
    w = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    w.start()
    yield w
    w.stop(timeout=5000)


def page(url: str, key: str) -> str:
    with client(url) as c:
        response = c.get(f"/messages/{key}")
    assert response.status_code == 200
    return unescape(response.text)


def pre(html: str, element_id: str) -> str | None:
    match = re.search(rf'<pre id="{element_id}">(.*?)</pre>', html, re.S)
    return match.group(1) if match else None


def test_a_finished_message_shows_its_arguments_and_result(broker: PostgresBroker,
                                                           results_worker: dramatiq.Worker) -> None:
    @dramatiq.actor(store_results=True)
    def greet(name: str, times: int, punctuation: str = ".") -> str:
        return f"hello {name}" * times + punctuation

    message = greet.send_with_options(args=("zoë", 2), kwargs={"punctuation": "!"})
    broker.join(greet.queue_name, timeout=20_000)
    html = page(broker.url, message.message_id)
    assert 'class="badge c-finished"' in html
    assert pre(html, "args") == '"zoë", 2, punctuation="!"'
    options = pre(html, "options")
    assert options is not None and isinstance(json.loads(options), dict)  # the whole payload was kept
    result = pre(html, "result")
    assert result is not None and json.loads(result) == "hello zoëhello zoë!"
    assert 'id="args-cut"' not in html and 'id="no-args"' not in html


def test_a_payload_over_2_kb_shows_its_arguments_cut(broker: PostgresBroker, results_worker: dramatiq.Worker) -> None:
    @dramatiq.actor
    def summarise(title: str, body: str) -> None:
        pass

    message = summarise.send("Report", "é" * 3000)  # 6,000 bytes of UTF-8
    broker.join(summarise.queue_name, timeout=20_000)
    with psycopg.connect(broker.url) as conn:
        [(kept,)] = conn.execute("SELECT octet_length(payload_head) FROM neuron_tasks.messages_history"
                                 " WHERE message_id = %s", (message.message_id,)).fetchall()
    assert kept == 2048
    html = page(broker.url, message.message_id)
    shown = pre(html, "args")
    assert shown is not None and shown.startswith('"Report", "éééé') and shown.endswith("…")
    assert 'id="args-cut"' in html and "(first 2 KB)" in html
    assert pre(html, "options") is None


def test_cancelled_messages_keep_their_arguments(clean_db: str) -> None:
    waiting = enqueue(clean_db, "send_email", ["ann@example.com", 3])
    running = enqueue(clean_db, "send_email", ["bob@example.com", 4])
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("SELECT * FROM neuron_tasks.cancel_messages(%s)", ([str(waiting)],))
        # A running message marked cancelled and given back: deleted by the trigger, recorded by it.
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', attempts = 1, started_at = now(),"
                     " cancel_requested_at = now() WHERE id = %s", (running,))
        conn.execute("UPDATE neuron_tasks.messages SET state = 'retrying' WHERE id = %s", (running,))
        kept = dict(conn.execute("SELECT id, outcome FROM neuron_tasks.messages_history").fetchall())
    assert kept == {waiting: "cancelled", running: "cancelled"}
    assert pre(page(clean_db, str(waiting)), "args") == '"ann@example.com", 3'
    assert pre(page(clean_db, str(running)), "args") == '"bob@example.com", 4'


def test_cut_arguments_read_as_far_as_they_go() -> None:
    assert preview(b'{"args":["Report","\\u00e9\\u00e9\\u00', limit=100) == '"Report", "éé…'
    assert preview(b'{"args":["a\\\\', limit=100) == '"a\\…'  # an escaped backslash, whole
    assert preview(b'{"args":[1, "x\\ud83d\\ude00\\ud83d', limit=100) == '1, "x😀…'  # no half emoji
    assert preview(b'{"args":["a\\udc00b"],"kwargs":{}}') == '"a?b"'  # a lone surrogate cannot reach the page
    assert kept_arguments(b"\x80\x04 not JSON") == {"call": None, "options": None, "cut": False,
                                                    "text": "\ufffd\x04 not JSON"}
