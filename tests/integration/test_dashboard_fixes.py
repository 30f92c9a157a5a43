"""Dashboard and index CLI fixes: the per-queue chart's alignment, empty queues' waiting time, a
deferred message's timeline, and one-line CLI errors for a wrong dimension or an existing index."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import psycopg
import pytest

from neuron_tasks.testing import truncate
from tests.conftest import ROOT
from tests.integration.dashboard_helpers import client, enqueue, kill


def depth_chart(html: str) -> str:
    charts = re.findall(r"<svg.*?</svg>", html, re.S)
    found = [c for c in charts if "Messages per queue and state" in c]
    assert len(found) == 1, "the overview draws one per-queue chart"
    return found[0]


def test_per_queue_chart_draws_each_queues_bars_over_its_own_label(clean_db: str) -> None:
    for i in range(3):
        enqueue(clean_db, "add", [i], queue="alpha")
    kill(clean_db, enqueue(clean_db, "add", [9], queue="alpha"))
    for i in range(2):
        kill(clean_db, enqueue(clean_db, "add", [i], queue="beta"))
    enqueue(clean_db, "add", [5], queue="beta")
    with client(clean_db) as c:
        svg = depth_chart(c.get("/").text)
    ticks = re.findall(r'<text class="tick x" x="([\d.]+)"[^>]*>([^<]+)</text>', svg)
    labels = {unescape(t): float(x) for x, t in ticks if t in ("alpha", "beta")}
    assert set(labels) == {"alpha", "beta"}
    half = (labels["beta"] - labels["alpha"]) / 2  # each label sits in the middle of its queue's slot
    bars = re.findall(r'<rect class="s-(\w+)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"[^>]*>'
                      r"<title>(\w+) (\w+): (\d+)</title>", svg)
    seen = {(queue, state): int(n) for _, _, _, queue, state, n in bars}
    assert seen == {("alpha", "pending"): 3, ("alpha", "failed"): 1, ("beta", "pending"): 1, ("beta", "failed"): 2}
    for cls, x, w, queue, state, _ in bars:
        assert cls == state, "each bar is drawn in its own state's colour"
        left, right = float(x), float(x) + float(w)
        centre = labels[queue]
        assert centre - half <= left and right <= centre + half, f"{queue} {state} bar outside {queue}'s slot"
        other = labels["beta" if queue == "alpha" else "alpha"]
        assert abs((left + right) / 2 - centre) < abs((left + right) / 2 - other), f"{queue} {state} nearer the other"


def test_bars_keep_inside_their_slots_with_many_labels() -> None:
    from neuron_tasks.dashboard import charts

    labels = [f"q{i}" for i in range(500)]
    svg = str(charts.bars([(s, [1] * 500, f"s-{s}") for s in ("pending", "running", "retrying", "failed")],
                          labels, title="t"))
    group = (charts.WIDTH - charts.PAD_L - charts.PAD_R) / 500
    for x, w, i in re.findall(r'x="([\d.]+)" y="[\d.]+" width="([\d.]+)"[^>]*><title>q(\d+) ', svg):
        slot = charts.PAD_L + int(i) * group
        assert slot - 0.1 <= float(x) and float(x) + float(w) <= slot + group + 0.1


def test_a_queue_with_nothing_due_shows_a_dash_not_zero_ms(clean_db: str) -> None:
    kill(clean_db, enqueue(clean_db, "add", [1], queue="deadonly"))  # a queue with nothing waiting
    later = enqueue(clean_db, "add", [2], queue="later")  # waiting, but not due for an hour
    enqueue(clean_db, "add", [3], queue="due")
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.messages SET eta = now() + interval '1 hour' WHERE id = %s", (later,))
        conn.execute("UPDATE neuron_tasks.messages SET eta = now() - interval '5 seconds' WHERE queue_name = 'due'")
    with client(clean_db) as c:
        html = c.get("/").text
        metrics = c.get("/metrics").text

    def waiting(queue: str) -> str:
        row = re.search(rf'<tr data-queue="{queue}">(.*?)</tr>', html, re.S)
        assert row, queue
        return re.findall(r'<td class="num">([^<]*)</td>', row.group(1))[-1]

    assert waiting("deadonly") == "-"
    assert waiting("later") == "-"
    assert waiting("due").endswith(" s") and waiting("due") != "0 ms"
    assert "nan" not in metrics.lower().replace("nan_", "")


def test_a_deferred_message_with_no_attempts_is_not_said_to_have_started(clean_db: str) -> None:
    row_id = enqueue(clean_db, "add", [1], queue="throttled", tenant="acme")
    with psycopg.connect(clean_db, autocommit=True) as conn:  # as `defer` leaves it: claimed, put back
        conn.execute("UPDATE neuron_tasks.messages SET state = 'pending', attempts = 0, throttled = 1,"
                     " started_at = now(), eta = now() + interval '1 second' WHERE id = %s", (row_id,))
    with client(clean_db) as c:
        html = c.get(f"/messages/{row_id}").text
    timeline = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', html, re.S)
    assert timeline
    assert "started (latest attempt)" not in timeline.group(1)
    assert "not started yet" in timeline.group(1)
    assert re.search(r'<dd id="fact-started_at">not started yet</dd>', html)

    with psycopg.connect(clean_db, autocommit=True) as conn:  # a real attempt still says it started
        conn.execute("UPDATE neuron_tasks.messages SET state = 'running', attempts = 1 WHERE id = %s", (row_id,))
    with client(clean_db) as c:
        html = c.get(f"/messages/{row_id}").text
    assert "started (latest attempt)" in html and "not started yet" not in html


# -- the index CLI ----------------------------------------------------------------------------------
def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "NEURON_TASKS_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "neuron_tasks.cli", "index", *args],
                          capture_output=True, text=True, env=environ, cwd=ROOT, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_index_cli_wrong_dimension_and_existing_index_fail_in_one_line(clean_db: str, tmp_path: Path) -> None:
    pytest.importorskip("hnswlib")
    truncate(clean_db, "vectors")
    assert cli(clean_db, "create", "fixdim", "--dim", "4").returncode == 0
    line = one_line_error(cli(clean_db, "create", "fixdim", "--dim", "4"))
    assert "fixdim" in line and "exists" in line

    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"id": i, "vector": [0.1, 0.2, 0.3]}) for i in range(3)) + "\n")
    line = one_line_error(cli(clean_db, "add", "fixdim", "--file", str(items)))
    assert "dimension" in line and "4" in line and "3" in line

    import numpy as np

    npy = tmp_path / "items.npy"
    np.save(npy, np.ones((2, 5), dtype=np.float32))
    line = one_line_error(cli(clean_db, "add", "fixdim", "--file", str(npy)))
    assert "dimension" in line and "5" in line
    stats = json.loads(cli(clean_db, "stats", "fixdim", "--json").stdout)
    assert stats["indexes"][0]["live_count"] == 0, "a refused file adds nothing"
