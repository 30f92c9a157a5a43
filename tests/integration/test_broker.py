"""The broker on a real PostgreSQL with an in-process Dramatiq worker."""

from __future__ import annotations

import time

import dramatiq
import psycopg
import pytest
from dramatiq.errors import QueueJoinTimeout
from psycopg.types.json import Jsonb

from neuron_tasks import MessageTooLarge, PostgresBroker, QueueFull, Settings
from neuron_tasks.core.completer import DeadLetter
from neuron_tasks.errors import DeadLettered, InvalidOption


def rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def test_send_and_bulk_enqueue_are_processed_once(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    seen: list[int] = []

    @dramatiq.actor
    def record(i: int) -> None:
        seen.append(i)

    for i in range(50):
        record.send(i)
    broker.enqueue_many([record.message(i) for i in range(50, 300)])
    broker.join(record.queue_name, timeout=20_000)
    assert sorted(seen) == list(range(300))
    url = broker.url
    assert rows(url, "SELECT count(*) FROM neuron_tasks.messages") == [(0,)]
    assert rows(url, "SELECT count(*), count(DISTINCT message_id) FROM neuron_tasks.messages_history") == [(300, 300)]


def test_messages_are_stored_as_bytes_for_any_encoder(broker: PostgresBroker) -> None:
    @dramatiq.actor
    def noop(x: str) -> None: ...

    msg = noop.send("héllo")
    (payload,) = rows(broker.url, "SELECT payload FROM neuron_tasks.messages WHERE message_id = %s", msg.message_id)[0]
    assert dramatiq.Message.decode(bytes(payload)).args == ("héllo",)


def test_priority_lower_runs_first(broker: PostgresBroker) -> None:
    order: list[int] = []

    @dramatiq.actor
    def job(p: int) -> None:
        order.append(p)

    for p in (5, 3, 9, 0, -2, 3, 7):
        job.send_with_options(args=(p,), priority=p)
    w = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    w.start()
    try:
        broker.join(job.queue_name, timeout=10_000)
    finally:
        w.stop()
    assert order == [-2, 0, 3, 3, 5, 7, 9]


def test_delayed_messages_never_run_early(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    ran: dict[int, float] = {}

    @dramatiq.actor
    def later(delay_ms: int, sent: float) -> None:
        ran[delay_ms] = time.time() - sent

    for delay in (0, 300, 700):
        later.send_with_options(args=(delay, time.time()), delay=delay)
    broker.join(later.queue_name, timeout=10_000)
    assert set(ran) == {0, 300, 700}
    for delay, waited in ran.items():
        assert waited >= delay / 1000.0 - 0.005, f"delay {delay} ms ran after {waited * 1000:.1f} ms"


def test_retry_with_delay_reruns_promptly(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    runs: list[float] = []

    @dramatiq.actor(max_retries=3)
    def once_more() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise dramatiq.Retry(delay=100)

    once_more.send()
    broker.join(once_more.queue_name, timeout=10_000)
    assert len(runs) == 2
    gap = runs[1] - runs[0]
    assert gap >= 0.1
    # The requirement is "about 150 ms"; bench/ measures it. Here: it is woken by the eta, not the naptime.
    assert gap < 1.0, f"retry re-ran after {gap * 1000:.0f} ms"
    (retries,) = rows(broker.url, "SELECT retries FROM neuron_tasks.messages_history")[0]
    assert retries == 1


def test_join_fail_fast_reraises_type_and_message(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    @dramatiq.actor(max_retries=0)
    def breaks() -> None:
        raise KeyError("the-missing-key")

    breaks.send()
    with pytest.raises(KeyError, match="the-missing-key"):
        broker.join(breaks.queue_name, timeout=10_000)
    broker.join(breaks.queue_name, timeout=10_000, fail_fast=False)


def test_join_fail_fast_with_unbuildable_exception(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    class Custom(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}-{b}")

    @dramatiq.actor(max_retries=0)
    def custom() -> None:
        raise Custom(1, 2)

    custom.send()
    with pytest.raises(DeadLettered, match="Custom: 1-2"):
        broker.join(custom.queue_name, timeout=10_000)


def test_join_times_out(broker: PostgresBroker) -> None:
    @dramatiq.actor
    def idle() -> None: ...

    idle.send()
    with pytest.raises(QueueJoinTimeout):
        broker.join(idle.queue_name, timeout=200)


def test_dead_letter_keeps_every_error_and_traceback(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    @dramatiq.actor(max_retries=2)
    def always_bad(tag: str) -> None:
        raise ValueError(f"bad input {tag}")

    always_bad.send("x1")
    broker.join(always_bad.queue_name, timeout=10_000, fail_fast=False)
    (state, retries, errors, last_error) = rows(
        broker.url, "SELECT state, retries, errors, last_error FROM neuron_tasks.messages"
    )[0]
    assert state == "failed"
    assert retries == 2
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    assert all(e["type"] == "builtins.ValueError" and "bad input x1" in e["message"] for e in errors)
    assert "always_bad" in errors[-1]["traceback"]
    assert last_error == "builtins.ValueError: bad input x1"
    assert [m.actor_name for m in broker.dead_letters] == ["always_bad"]


def test_requeued_dead_letter_runs_again_with_attempts_reset(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    from neuron_tasks.core.admin import Repo

    state = {"fail": True}

    @dramatiq.actor(max_retries=1)
    def sometimes() -> None:
        if state["fail"]:
            raise RuntimeError("not yet")

    sometimes.send()
    broker.join(sometimes.queue_name, timeout=10_000, fail_fast=False)
    repo = Repo(broker.pool)
    [dead] = repo.dead_letters()
    state["fail"] = False
    assert repo.requeue([str(dead["id"])]) == [dead["message_id"]]
    broker.join(sometimes.queue_name, timeout=10_000, fail_fast=False)
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(0,)]
    assert rows(broker.url, "SELECT retries FROM neuron_tasks.messages_history") == [(0,)]


def test_purge_dead_letters_by_queue_and_age(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    from neuron_tasks.core.admin import Repo

    @dramatiq.actor(max_retries=0, queue_name="qa")
    def fa() -> None:
        raise RuntimeError("a")

    @dramatiq.actor(max_retries=0, queue_name="qb")
    def fb() -> None:
        raise RuntimeError("b")

    fa.send()
    fb.send()
    broker.join("qa", timeout=10_000, fail_fast=False)
    broker.join("qb", timeout=10_000, fail_fast=False)
    repo = Repo(broker.pool)
    assert repo.purge(queue="qa", older_than_s=3600) == 0
    assert repo.purge(queue="qa") == 1
    assert [d["queue_name"] for d in repo.dead_letters()] == ["qb"]


def test_sql_enqueue_runs_in_the_callers_transaction(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    got: list[tuple[int, int]] = []

    @dramatiq.actor
    def add(x: int, y: int) -> None:
        got.append((x, y))

    with psycopg.connect(broker.url) as conn:
        with conn.transaction():
            conn.execute("SELECT neuron_tasks.enqueue('default', 'add', %s)", (Jsonb([1, 2]),))
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("SELECT neuron_tasks.enqueue('default', 'add', %s)", (Jsonb([3, 4]),))
            raise ZeroDivisionError
    broker.join(add.queue_name, timeout=10_000)
    assert got == [(1, 2)]
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages_history") == [(1,)]


def test_sql_enqueue_options_and_bad_input(broker: PostgresBroker) -> None:
    from neuron_tasks.core.topics import set_topic

    set_topic(broker.pool, "emails")
    with psycopg.connect(broker.url, autocommit=True) as conn:
        mid = conn.execute(
            "SELECT neuron_tasks.enqueue('q1', 'act', '[1]', '{}', %s)",
            (Jsonb({"priority": 4, "delay": 60000, "tenant": "acme", "topic": "emails"}),),
        ).fetchone()[0]
        row = conn.execute(
            "SELECT priority, tenant, topic, eta > now() + interval '50 seconds' FROM neuron_tasks.messages "
            "WHERE message_id = %s",
            (mid,),
        ).fetchone()
        assert row == (4, "acme", "emails", True)
        for call, needle in [
            ("SELECT neuron_tasks.enqueue('q1', 'act', '{\"a\": 1}')", "args must be a JSON array"),
            ("SELECT neuron_tasks.enqueue('q1', 'act', '[]', '[]')", "kwargs must be a JSON object"),
            ("SELECT neuron_tasks.enqueue('q 1', 'act')", "invalid queue name"),
            ("SELECT neuron_tasks.enqueue('q1', '1bad')", "invalid actor name"),
            ("SELECT neuron_tasks.enqueue('q1', 'act', '[]', '{}', '{\"priority\": \"high\"}')", "bad option value"),
        ]:
            with pytest.raises(psycopg.errors.InvalidParameterValue, match=needle):
                conn.execute(call)
        assert conn.execute("SELECT count(*) FROM neuron_tasks.messages").fetchone() == (1,)


def test_malformed_bytes_and_unknown_actor_are_dead_lettered(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    done: list[str] = []

    @dramatiq.actor
    def fine(tag: str) -> None:
        done.append(tag)

    with psycopg.connect(broker.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload) "
            "VALUES ('garbage-1', 'default', 'fine', %s)",
            (b"\xff\x00 not a message",),
        )
        conn.execute("SELECT neuron_tasks.enqueue('default', 'no_such_actor', '[1]')")
    fine.send("after")
    broker.join("default", timeout=10_000, fail_fast=False)
    assert done == ["after"]
    dead = dict(
        rows(broker.url, "SELECT actor_name, last_error FROM neuron_tasks.messages WHERE state = 'failed'")
    )
    assert dead["fine"].startswith("dramatiq.errors.DecodeError: payload is not a valid Dramatiq message")
    assert dead["no_such_actor"].startswith("dramatiq.errors.ActorNotFound")


def test_queue_over_depth_refuses_with_queue_full(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"queue_depth": 5}))
    dramatiq.set_broker(broker)
    try:

        @dramatiq.actor
        def filler(i: int) -> None: ...

        for i in range(5):
            filler.send(i)
        with pytest.raises(QueueFull, match="queue 'default' is full: 5 messages"):
            filler.send(5)
        with pytest.raises(QueueFull):
            broker.enqueue_many([filler.message(i) for i in range(2)])
        assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(5,)]
        with psycopg.connect(broker.url) as conn, pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            conn.execute("SET neuron_tasks.queue_depth = 5")
            conn.execute("SELECT neuron_tasks.enqueue('default', 'filler', '[9]')")
    finally:
        broker.close()


def test_oversize_message_and_bad_options_are_refused(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"max_message_bytes": 1000}))
    dramatiq.set_broker(broker)
    try:

        @dramatiq.actor
        def take(x: str) -> None: ...

        with pytest.raises(MessageTooLarge, match="over the limit of 1000 bytes"):
            take.send("x" * 2000)
        with pytest.raises(InvalidOption, match="priority"):
            take.send_with_options(args=("a",), priority="high")
        with pytest.raises(InvalidOption, match="tenant"):
            take.send_with_options(args=("a",), tenant="bad tenant; drop table")
        with pytest.raises(InvalidOption, match="deadline"):
            take.send_with_options(args=("a",), deadline="tomorrow-ish")
        with pytest.raises(InvalidOption, match="delay"):
            broker.enqueue(take.message("a"), delay=-5)
        assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(0,)]
    finally:
        broker.close()


def test_tenant_topic_deadline_columns(broker: PostgresBroker) -> None:
    from neuron_tasks.core.topics import set_topic

    set_topic(broker.pool, "reports")

    @dramatiq.actor(topic="reports")
    def report() -> None: ...

    report.send_with_options(tenant="acme", deadline="2030-01-01T00:00:00+00:00")
    (tenant, topic, deadline) = rows(broker.url, "SELECT tenant, topic, deadline FROM neuron_tasks.messages")[0]
    assert (tenant, topic, deadline.year) == ("acme", "reports", 2030)


def test_long_job_keeps_its_lease_through_heartbeats(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    runs: list[float] = []

    @dramatiq.actor
    def long_job() -> None:
        runs.append(time.time())
        time.sleep(3 * broker.settings.lease_s)

    long_job.send()
    broker.join(long_job.queue_name, timeout=30_000)
    assert len(runs) == 1
    assert rows(broker.url, "SELECT attempts FROM neuron_tasks.messages_history") == [(1,)]


def test_flush_and_flush_all(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="fa")
    def a() -> None: ...

    @dramatiq.actor(queue_name="fb")
    def b() -> None: ...

    a.send()
    b.send()
    broker.flush("fa")
    assert rows(broker.url, "SELECT queue_name FROM neuron_tasks.messages") == [("fb",)]
    broker.flush_all()
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages") == [(0,)]


def test_close_gives_back_held_messages(settings: Settings) -> None:
    first = PostgresBroker(settings=settings)
    dramatiq.set_broker(first)

    @dramatiq.actor
    def slow(i: int) -> None:
        time.sleep(0.05)

    first.enqueue_many([slow.message(i) for i in range(40)])
    consumer = first.consume("default")
    claimed = [next(consumer) for _ in range(5)]
    assert all(m is not None for m in claimed)
    first.close()  # gives back what it held
    states = rows(settings.database_url or "", "SELECT state, count(*) FROM neuron_tasks.messages GROUP BY 1")
    assert states == [("pending", 40)]


def test_a_result_that_cannot_be_written_does_not_block_the_others(broker: PostgresBroker) -> None:
    @dramatiq.actor
    def job(i: int) -> None: ...

    broker.enqueue_many([job.message(i) for i in range(2)])
    consumer = broker.consume("default")
    first, second = next(consumer), next(consumer)
    assert first is not None and second is not None
    completer = broker.completer
    completer.ack(first.row_id)
    completer.nack(DeadLetter(id=second.row_id, error="x", entry=object()))  # type: ignore[arg-type]  # cannot be encoded as JSON
    deadline = time.monotonic() + 10
    while completer.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages_history") == [(1,)]
    # The other one keeps its lease and runs again once it expires (at-least-once, never lost).
    assert rows(broker.url, "SELECT state FROM neuron_tasks.messages") == [("running",)]
