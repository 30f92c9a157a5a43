"""Hostile input against real worker processes: per-message and per-actor max_retries govern the
deaths of a message that kills its worker (poison), and options or payloads that should never
have got in (rows inserted raw) are dead-lettered with the reason while the worker keeps serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.faults.conftest import QUEUE, Workers, enqueue, runs, wait_for

pytestmark = [pytest.mark.slow]

INPUT_ACTORS = "tests.faults.input_actors"


def dead_letter(url: str, message_id: str) -> str | None:
    """The last_error of the message once it is a dead letter."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT last_error FROM neuron_tasks.messages WHERE message_id = %s AND state = 'failed'",
                           (message_id,)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize(
    ("actor", "options", "most_runs"),
    [
        # max_retries=1 on the actor: one re-run after its first crash, then the dead letters
        # (the global max_retries, 3, would allow four runs).
        ("kill_worker_once_retry", {}, 2),
        # max_retries=0 on the message: still one re-run after a crash, then the dead letters.
        ("kill_worker", {"max_retries": 0}, 2),
        # the message's max_retries=2 wins over the actor's max_retries=1.
        ("kill_worker_once_retry", {"max_retries": 2}, 3),
        # its topic's max_retries=0 wins over the actor's max_retries=1 (and still one re-run).
        ("kill_worker_once_retry", {"topic": "fragile"}, 2),
    ],
)
def test_max_retries_of_message_and_actor_govern_worker_deaths(
    fdb: str, spawn_workers: Callable[..., Workers], actor: str, options: dict[str, Any], most_runs: int
) -> None:
    with psycopg.connect(fdb, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.topics (name, max_retries) VALUES ('fragile', 0)")
    spawn_workers(fdb, processes=1, threads=1, lease_s="2", max_retries="3")
    key = f"poison-{uuid.uuid4().hex[:8]}"
    message_id = enqueue(fdb, actor, [key], options=options)
    error = wait_for(lambda: dead_letter(fdb, message_id), f"{actor} {options} dead-lettered", timeout=180)
    assert error.startswith("PoisonMessage"), error
    assert len(runs(fdb, f"start:{key}")) == most_runs


def insert_raw(url: str, actor: str, args: Any, options: Any, *, kwargs: Any = None, queue: str = QUEUE) -> str:
    """A row as no enqueue would write it: the payload is taken as given."""
    message_id = str(uuid.uuid4())
    payload = json.dumps({"queue_name": queue, "actor_name": actor, "args": args,
                          "kwargs": {} if kwargs is None else kwargs, "options": options,
                          "message_id": message_id, "message_timestamp": 1_700_000_000_000}).encode()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload)"
                     " VALUES (%s, %s, %s, %s)", (message_id, queue, actor, payload))
    return message_id


def test_options_that_got_in_raw_are_dead_lettered_and_the_worker_keeps_serving(
    fdb: str, spawn_workers: Callable[..., Workers]
) -> None:
    # One worker thread: before the fix, `throws` that is no exception type killed it, and nothing ran again.
    spawn_workers(fdb, processes=1, threads=1, module=INPUT_ACTORS, lease_s="2")
    hostile = {
        "throws": insert_raw(fdb, "always_fails", ["throws"], {"throws": "ValueError"}),
        "max_retries": insert_raw(fdb, "always_fails", ["max_retries"], {"max_retries": "3"}),
        "retries": insert_raw(fdb, "always_fails", ["retries"], {"retries": "x"}),
        "time_limit": insert_raw(fdb, "note", ["time_limit"], {"time_limit": "soon"}),
        "options": insert_raw(fdb, "note", ["options"], ["not", "an", "object"]),
        "kwargs": insert_raw(fdb, "note", ["kwargs"], {}, kwargs=["not", "an", "object"]),
    }
    for what, message_id in hostile.items():
        error = wait_for(lambda m=message_id: dead_letter(fdb, m), f"the message with bad {what} dead-lettered",
                         timeout=120)
        assert what in error, f"the dead letter names what was wrong: {error}"
    key = f"after-{uuid.uuid4().hex[:8]}"
    enqueue(fdb, "note", [key])
    wait_for(lambda: runs(fdb, key), "a normal job after the hostile ones", timeout=120)
    with psycopg.connect(fdb, autocommit=True) as conn:
        running = conn.execute("SELECT count(*) FROM neuron_tasks.messages WHERE state = 'running'").fetchone()
    assert running == (0,), "nothing is left claimed for ever"
