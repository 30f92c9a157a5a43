"""The package's layout as users meet it: the scheduler is `neuron_tasks.scheduler` (an application
keeps its own module named `scheduler`), the wheel holds one package, and a worker process does
not load the dashboard.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest

from neuron_tasks import PostgresBroker
from tests.conftest import ROOT, worker_env

NEVER = "postgresql://nobody@127.0.0.1:1/never"  # PostgresBroker connects lazily: never used here
DEADLINE_S = 90.0


# -- an application module named `scheduler` ---------------------------------------------------
APP = f"""
import dramatiq

from neuron_tasks import PostgresBroker, periodic

dramatiq.set_broker(PostgresBroker({NEVER!r}))


@periodic(every=60)
@dramatiq.actor(queue_name="app")
def app_heartbeat():
    pass
"""

PROBE = f"""
import json, sys

import neuron_tasks.scheduler.process as process
before = "scheduler" in sys.modules

import myapp
import scheduler
from neuron_tasks.config import Settings
from neuron_tasks.scheduler.jobs import REGISTRY
from neuron_tasks.scheduler.settings import SchedulerSettings

jobs = process.build_jobs({NEVER!r}, ["myapp"], None, SchedulerSettings(), Settings(database_url={NEVER!r}))
job = REGISTRY.get("app_heartbeat")
print(json.dumps({{
    "before": before,
    "mine": getattr(scheduler, "MINE", None),
    "file": scheduler.__file__,
    "registered": None if job is None else [job.kind, job.target, job.queue, job.every],
    "jobs": [j.name for j in jobs],
}}))
"""


def test_an_application_module_named_scheduler_is_its_own(tmp_path: Path) -> None:
    (tmp_path / "scheduler.py").write_text("MINE = 1\n")
    (tmp_path / "myapp.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("NEURON_TASKS_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["before"] is False, "importing neuron_tasks.scheduler.process loaded a top-level `scheduler`"
    assert got["mine"] == 1, f"`import scheduler` found {got['file']}, not the application's"
    assert Path(got["file"]).resolve() == (tmp_path / "scheduler.py").resolve()
    assert got["registered"] == ["actor", "app_heartbeat", "app", 60]
    assert "app_heartbeat" in got["jobs"], got["jobs"]


# -- the wheel -----------------------------------------------------------------------------
def test_wheel_holds_one_package_with_its_schema(tmp_path: Path) -> None:
    have_backend = importlib.util.find_spec("hatchling") is not None
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path)]
    cmd += ["--no-build-isolation"] if have_backend else []
    done = subprocess.run([*cmd, str(ROOT)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        if not have_backend:
            pytest.skip("cannot build the wheel: hatchling is not installed here and pip could not fetch it "
                        f"(offline?): {done.stderr.strip()[-500:]}")
        pytest.fail(f"building the wheel failed: {done.stderr[-4000:]}")
    (wheel,) = tmp_path.glob("neuron_tasks-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "neuron_tasks/scheduler/__init__.py" in names
    assert "neuron_tasks/scheduler/queries/scheduler.sql" in names
    assert "neuron_tasks/_schema/001_messages.sql" in names
    assert "neuron_tasks/core/parts.py" in names
    tops = {n.split("/", 1)[0] for n in names}
    assert "scheduler" not in tops, "a top-level `scheduler` package would shadow applications' own"
    assert {t for t in tops if not t.endswith(".dist-info")} == {"neuron_tasks"}, tops
    schema = sorted(p.name for p in (ROOT / "schema").glob("*.sql"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("neuron_tasks/_schema/")) == schema


# -- a worker process does not load the dashboard ------------------------------------------------
@pytest.fixture
def worker_proc(clean_db: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "neuron_tasks.cli", "worker", "tests.integration.mp_actors", "-p", "1", "-t", "1",
           "--metrics-port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(clean_db), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    yield proc, log
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    print(f"--- worker log (exit {proc.returncode}) ---\n{log.read_text(errors='replace')[-6000:]}")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_process_does_not_load_the_dashboard(
    clean_db: str, worker_proc: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, _log = worker_proc
    broker = PostgresBroker(clean_db)
    try:
        broker.enqueue(dramatiq.Message(queue_name="mp", actor_name="loaded_modules", args=("modules",), kwargs={},
                                        options={}))
    finally:
        broker.close()

    recorded: Any = None
    deadline = time.monotonic() + DEADLINE_S
    with psycopg.connect(clean_db, autocommit=True) as conn:
        while recorded is None:
            row = conn.execute("SELECT key FROM public.test_runs WHERE key LIKE 'modules:%'").fetchone()
            if row is not None:
                recorded = json.loads(row[0].split(":", 1)[1])
                break
            if proc.poll() is not None:
                pytest.fail(f"the worker exited ({proc.returncode}) before running the job")
            if time.monotonic() > deadline:
                pytest.fail(f"no worker ran the job within {DEADLINE_S:.0f}s")
            time.sleep(0.1)

    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not stop within 60 s of SIGTERM")
    assert code == 0

    assert recorded["llm_actors"], "the worker loaded the parts' actors (the check below means something)"
    assert recorded["dashboard_libraries"] == [], recorded["dashboard_libraries"]
    assert recorded["dashboard_app"] is False
    assert set(recorded["dashboard_modules"]) <= {"neuron_tasks.dashboard", "neuron_tasks.dashboard.part",
                                                  "neuron_tasks.dashboard.settings"}, recorded["dashboard_modules"]
