"""A real `neuron-tasks scheduler` process loading the user's modules as the dramatiq CLI does
(from the current directory), not replaying missed ticks unless a job asks to, and
`neuron-tasks schedules` listing only what a live scheduler declares."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from neuron_tasks.testing import truncate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLI = str(Path(sys.executable).parent / "neuron-tasks")  # the console script: its folder, not ., is on sys.path

JOBS = """
import dramatiq

from neuron_tasks import periodic, set_default_broker

set_default_broker()


@periodic(every=1)
@dramatiq.actor(queue_name="sched_load")
def beat() -> None: ...


@periodic(every=1, catch_up=True)
@dramatiq.actor(queue_name="sched_load")
def replayed() -> None: ...
"""


@pytest.fixture
def sdb(clean_db: str) -> str:
    truncate(clean_db, "scheduler")
    return clean_db


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An application folder holding its periodic jobs, not on PYTHONPATH."""
    (tmp_path / "myjobs.py").write_text(JOBS)
    return tmp_path


def env(url: str) -> dict[str, str]:
    out = {**os.environ, "NEURON_TASKS_DATABASE_URL": url, "NEURON_TASKS_SCHEDULER_MISFIRE_GRACE_S": "3600"}
    out.pop("PYTHONPATH", None)
    out.pop("NEURON_TASKS_CONFIG", None)
    return out


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    running: list[subprocess.Popen[bytes]] = []
    yield running
    for p in running:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params or None).fetchall()


def schedules(url: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run([CLI, "schedules", "--json"], capture_output=True, text=True, env=env(url), cwd=cwd,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def wait_for(check: Any, what: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the scheduler exited ({proc.returncode}) while waiting for {what}: {err[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_scheduler_loads_modules_from_the_current_directory_and_does_not_replay(
        sdb: str, app_dir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    # Both jobs last fired 20 s ago, as if the scheduler had been down since; and a job an earlier
    # scheduler declared that nobody declares now.
    missed_from = rows(sdb, "SELECT date_trunc('second', now()) - interval '20 seconds'")[0][0]
    with psycopg.connect(sdb, autocommit=True) as conn:
        for job in ("beat", "replayed"):
            conn.execute("INSERT INTO neuron_tasks.scheduler_fires (job, fire_time, node_id) VALUES (%s, %s, %s)",
                         (job, missed_from, uuid.uuid4()))
        conn.execute("INSERT INTO neuron_tasks.scheduler_jobs (name, kind, target, trigger, node_id) "
                     "VALUES ('ghost', 'actor', 'ghost', 'every 5s', %s)", (uuid.uuid4(),))
    proc = subprocess.Popen([CLI, "scheduler", "myjobs", "--no-builtins"], cwd=app_dir, env=env(sdb),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(proc)

    def fired(job: str) -> list[tuple[datetime, str | None]]:
        return [(r[0], r[1]) for r in rows(sdb, "SELECT fire_time, note FROM neuron_tasks.scheduler_fires "
                                                "WHERE job = %s AND fire_time > %s ORDER BY fire_time",
                                           job, missed_from)]

    wait_for(lambda: len(fired("beat")) >= 3, "three fires of beat", proc)
    snap = schedules(sdb, app_dir)
    assert snap["leader"] is not None
    assert sorted(j["name"] for j in snap["jobs"]) == ["beat", "replayed"]  # not the ghost
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    beat, replayed = fired("beat"), fired("replayed")
    # beat: the ~20 missed ticks fired once, late, with a note saying so; then one fire a second.
    first, note = beat[0]
    assert (first - missed_from).total_seconds() >= 20
    assert note is not None and "not replayed" in note
    # replayed (catch_up=True): every missed tick, one second apart, none skipped.
    times = [t for t, _ in replayed]
    assert times[0] == missed_from.replace(microsecond=0) + (times[1] - times[0])
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(times))
    assert times[-1] >= first
    enqueued = rows(sdb, "SELECT count(*) FROM neuron_tasks.messages WHERE actor_name = 'beat'")[0][0]
    assert enqueued == len(beat)

    after = schedules(sdb, app_dir)  # no live scheduler: nothing is scheduled
    assert after["leader"] is None and after["jobs"] == []


def test_a_module_that_cannot_be_imported_is_one_clear_error(sdb: str, app_dir: Path) -> None:
    done = subprocess.run([CLI, "scheduler", "no_such_jobs_module", "--no-builtins"], cwd=app_dir, env=env(sdb),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot import 'no_such_jobs_module'" in lines[0] and str(app_dir) in lines[0], \
        done.stderr
