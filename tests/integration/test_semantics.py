"""Job-queue semantics on a real PostgreSQL: tenants, budgets, topics, retries, deadlines,
unique jobs, fair dequeue, worker status and monitoring views (in-process workers)."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq.middleware import TimeLimitExceeded
from psycopg.types.json import Jsonb

from neuron_tasks import PostgresBroker, Settings
from neuron_tasks.core.middleware import non_retryable
from neuron_tasks.core.tenancy import charge_tokens, report_tokens, set_tenant, tenants
from neuron_tasks.core.topics import set_topic
from neuron_tasks.errors import DuplicateJob, InvalidOption, NonRetryable, UnknownTenant, UnknownTopic


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def start_worker(broker: PostgresBroker, threads: int = 8) -> dramatiq.Worker:
    w = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    w.start()
    return w


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_tenant_qps_is_shared_and_others_flow(broker: PostgresBroker) -> None:
    set_tenant(broker.pool, "slow", qps=5, burst=5)
    starts: dict[str, list[float]] = {"slow": [], "fast": []}

    @dramatiq.actor
    def job(tenant: str) -> None:
        starts[tenant].append(time.monotonic())

    broker.enqueue_many([job.message_with_options(args=("slow",), tenant="slow") for _ in range(20)])
    broker.enqueue_many([job.message_with_options(args=("fast",), tenant="fast") for _ in range(200)])
    began = time.monotonic()
    w = start_worker(broker)
    try:
        broker.join(job.queue_name, timeout=30_000)
    finally:
        w.stop()
    assert len(starts["slow"]) == 20 and len(starts["fast"]) == 200
    # Token bucket: at most qps * t + burst starts in any window of t seconds.
    for window in (0.5, 1.0, 2.0):
        assert max_in_window(starts["slow"], window) <= 5 * window + 5 + 1
    # 20 jobs at 5/s with a burst of 5 need about 3 s; the unlimited tenant is not held back.
    assert max(starts["slow"]) - began >= 2.5
    assert max(starts["fast"]) - began < max(starts["slow"]) - began
    history = rows(broker.url, "SELECT tenant, max(retries), sum(attempts) FROM neuron_tasks.messages_history "
                   "GROUP BY tenant ORDER BY tenant")
    assert history == [("fast", 0, 200), ("slow", 0, 20)]  # throttling used no retry and no attempt
    [slow] = tenants(broker.pool, "slow")
    assert slow["throttled"] > 0 and slow["finished"] == 20


def test_token_budget_spent_waits_for_the_next_window(broker: PostgresBroker) -> None:
    set_tenant(broker.pool, "llm", tokens_per_minute=10)
    ran: list[int] = []

    @dramatiq.actor
    def generate(i: int) -> None:
        ran.append(i)
        report_tokens(6)

    seconds_into_minute = time.time() % 60
    if seconds_into_minute > 50:  # budgets are per calendar minute: stay inside one
        time.sleep(61 - seconds_into_minute)
    w = start_worker(broker, threads=1)
    try:
        for i in range(3):
            generate.send_with_options(args=(i,), tenant="llm")
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert ran == [0, 1]  # 12 tokens used: the third waits for the next minute
        [(state, retries, throttled, waits)] = rows(
            broker.url,
            "SELECT state, retries, throttled, eta >= date_trunc('minute', now()) + interval '1 minute' - "
            "interval '2 seconds' FROM neuron_tasks.messages",
        )
        assert (state, retries, waits) == ("pending", 0, True) and throttled >= 1
        assert tenants(broker.pool, "llm")[0]["tokens_this_minute"] == 12
        # The next window: usage moves to the past minute and the message becomes due.
        with psycopg.connect(broker.url, autocommit=True) as conn:
            conn.execute("UPDATE neuron_tasks.tenant_usage SET minute = minute - interval '1 minute'")
            conn.execute("UPDATE neuron_tasks.tenant_buckets SET blocked_until = NULL")
            conn.execute("UPDATE neuron_tasks.messages SET eta = now()")
            conn.execute("NOTIFY neuron_tasks, 'default'")
        broker.join(generate.queue_name, timeout=10_000)
        assert ran == [0, 1, 2]
    finally:
        w.stop()


def test_tenant_policy_refuse_and_bad_limits(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"tenant_policy": "refuse"}))
    dramatiq.set_broker(broker)
    try:

        @dramatiq.actor
        def t() -> None: ...

        with pytest.raises(UnknownTenant, match="unknown tenant 'nobody'"):
            t.send_with_options(tenant="nobody")
        set_tenant(broker.pool, "somebody", qps=2)
        broker.policies.invalidate()
        t.send_with_options(tenant="somebody")
        for kwargs in ({"qps": -1.0}, {"qps": 0.0}, {"qps": 1.0, "burst": 0.5}, {"tokens_per_day": 0}):
            with pytest.raises(InvalidOption):
                set_tenant(broker.pool, "x", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(InvalidOption):
            set_tenant(broker.pool, "bad name")
        with pytest.raises(InvalidOption):
            charge_tokens(broker.pool, "somebody", -5)
    finally:
        broker.close()


def test_deadline_passed_fails_without_running(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    ran: list[str] = []

    @dramatiq.actor(max_retries=3)
    def timely(tag: str) -> None:
        ran.append(tag)

    timely.send_with_options(args=("late",), deadline=int(time.time() * 1000) - 1000)
    timely.send_with_options(args=("ok",), deadline=int(time.time() * 1000) + 60_000)
    broker.join(timely.queue_name, timeout=10_000, fail_fast=False)
    assert ran == ["ok"]
    [(error, retries)] = rows(broker.url, "SELECT last_error, retries FROM neuron_tasks.messages WHERE state='failed'")
    assert error.startswith("neuron_tasks.errors.DeadlineExceeded: deadline passed") and retries == 0


def test_unique_jobs(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    import threading

    release = threading.Event()  # holds the jobs running until the duplicates were tried

    @dramatiq.actor
    def refresh(key: str) -> None:
        release.wait(20)

    first = refresh.send_with_options(args=("a",), unique_key="refresh-a")
    with pytest.raises(DuplicateJob, match="refresh-a") as info:
        refresh.send_with_options(args=("a",), unique_key="refresh-a")
    assert info.value.existing_message_id == first.message_id
    same = refresh.send_with_options(args=("a",), unique_key="refresh-a", on_duplicate="existing")
    assert same.message_id == first.message_id
    by_args = refresh.send_with_options(args=("b",), unique=True)
    with pytest.raises(DuplicateJob):
        refresh.send_with_options(args=("b",), unique=True)
    refresh.send_with_options(args=("c",), unique=True)  # other arguments: another job
    with pytest.raises(DuplicateJob):
        broker.enqueue_many([refresh.message_with_options(args=("z",), unique_key="z"),
                             refresh.message_with_options(args=("b",), unique=True)])
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages WHERE fingerprint LIKE %s", "%:z") == [(0,)]
    with psycopg.connect(broker.url, autocommit=True) as conn:
        sql = "SELECT neuron_tasks.enqueue('default', 'refresh', '[\"a\"]', '{}', %s)"
        with pytest.raises(psycopg.errors.UniqueViolation, match="already queued or running"):
            conn.execute(sql, (Jsonb({"unique_key": "refresh-a"}),))
        existing = conn.execute(sql, (Jsonb({"unique_key": "refresh-a", "on_duplicate": "existing"}),)).fetchone()
        assert existing == (first.message_id,)
    release.set()
    broker.join(refresh.queue_name, timeout=10_000)
    refresh.send_with_options(args=("a",), unique_key="refresh-a")  # finished: may run again
    assert by_args.message_id
    broker.join(refresh.queue_name, timeout=10_000)


def test_topic_concurrency_retries_priority_and_delay(broker: PostgresBroker) -> None:
    set_topic(broker.pool, "heavy", concurrency=2)
    set_topic(broker.pool, "fragile", max_retries=0, priority=-5)
    set_topic(broker.pool, "paced", delay_s=0.3)
    spans: list[tuple[float, float]] = []
    paced: list[float] = []

    @dramatiq.actor
    def heavy() -> None:
        began = time.monotonic()
        time.sleep(0.2)
        spans.append((began, time.monotonic()))

    @dramatiq.actor(max_retries=5)
    def fragile() -> None:
        raise RuntimeError("no second chance")

    @dramatiq.actor
    def pace() -> None:
        paced.append(time.monotonic())

    broker.enqueue_many([heavy.message_with_options(topic="heavy") for _ in range(10)])
    fragile.send_with_options(topic="fragile")
    for _ in range(3):
        pace.send_with_options(topic="paced")
    assert rows(broker.url, "SELECT priority FROM neuron_tasks.messages WHERE topic = 'fragile'") == [(-5,)]
    w = start_worker(broker, threads=8)
    try:
        broker.join("default", timeout=30_000, fail_fast=False)
    finally:
        w.stop()
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert len(spans) == 10 and peak == 2
    [(retries, attempts)] = rows(broker.url, "SELECT retries, attempts FROM neuron_tasks.messages WHERE state='failed'")
    assert (retries, attempts) == (0, 1)
    gaps = [b - a for a, b in zip(sorted(paced), sorted(paced)[1:], strict=False)]
    assert len(paced) == 3 and all(g >= 0.25 for g in gaps), gaps
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.topic_slots WHERE holder IS NOT NULL") == [(0,)]


def test_unknown_topic_and_bad_topic_settings(broker: PostgresBroker) -> None:
    @dramatiq.actor
    def t() -> None: ...

    with pytest.raises(UnknownTopic, match="topics set nope"):
        t.send_with_options(topic="nope")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown topic"), psycopg.connect(broker.url) as c:
        c.execute("SELECT neuron_tasks.enqueue('default', 't', '[]', '{}', '{\"topic\": \"nope\"}')")
    for kwargs in ({"concurrency": 0}, {"max_retries": -1}, {"delay_s": -1.0}):
        with pytest.raises(InvalidOption):
            set_topic(broker.pool, "x", **kwargs)  # type: ignore[arg-type]


def test_retry_after_non_retryable_and_per_message_retries(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    runs: dict[str, list[float]] = {"after": [], "never": [], "marked": [], "once": []}

    class RateLimited(Exception):
        retry_after = 0.4

    class Invalid(NonRetryable):
        pass

    @non_retryable
    class Rejected(ValueError):
        pass

    @dramatiq.actor(max_retries=3)
    def flaky(kind: str) -> None:
        runs[kind].append(time.monotonic())
        if kind == "after" and len(runs[kind]) == 1:
            raise RateLimited("429 from provider")
        if kind == "never":
            raise Invalid("bad request")
        if kind == "marked":
            raise Rejected("validation failed")
        if kind == "once":
            raise RuntimeError("fails")

    for kind in ("after", "never", "marked"):
        flaky.send(kind)
    flaky.send_with_options(args=("once",), max_retries=0)
    broker.join(flaky.queue_name, timeout=20_000, fail_fast=False)
    assert len(runs["after"]) == 2 and runs["after"][1] - runs["after"][0] >= 0.4
    assert [len(runs[k]) for k in ("never", "marked", "once")] == [1, 1, 1]
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages WHERE state = 'failed'") == [(3,)]


def test_time_limit_per_message_and_age_limit(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    ran: list[str] = []

    @dramatiq.actor(max_retries=0)
    def sleepy(seconds: float) -> None:
        time.sleep(seconds)
        ran.append("slept")

    @dramatiq.actor(max_retries=0, max_age=1)
    def stale() -> None:
        ran.append("stale ran")

    sleepy.send_with_options(args=(5,), time_limit=200)
    time.sleep(0.01)
    stale.send()
    broker.join(sleepy.queue_name, timeout=20_000, fail_fast=False)
    errors = dict(rows(broker.url, "SELECT actor_name, last_error FROM neuron_tasks.messages WHERE state='failed'"))
    assert errors["sleepy"].startswith(f"{TimeLimitExceeded.__module__}.TimeLimitExceeded")
    assert "age limit" in errors["stale"]
    assert ran == []


def test_fair_dequeue_across_tenants(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"batch_size": 50, "queue_depth": 20_000}))
    dramatiq.set_broker(broker)
    order: list[str] = []

    @dramatiq.actor
    def work(tenant: str) -> None:
        order.append(tenant)

    try:
        for _batch in range(5):
            broker.enqueue_many([work.message_with_options(args=("big",), tenant="big") for _ in range(2_000)])
        work.send_with_options(args=("small",), tenant="small")
        w = start_worker(broker, threads=4)
        deadline = time.monotonic() + 30
        while "small" not in order and time.monotonic() < deadline:
            time.sleep(0.01)
        w.stop()
        # One tenant's 10,000-message backlog delays another's message by at most one batch.
        assert "small" in order and order.index("small") <= 50
    finally:
        broker.close()


def test_worker_status_and_monitoring_views(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    @dramatiq.actor(max_retries=0)
    def maybe(fail: bool) -> None:
        if fail:
            raise RuntimeError("boom")

    for i in range(6):
        maybe.send_with_options(args=(i == 0,), tenant="acme")
    broker.join(maybe.queue_name, timeout=10_000, fail_fast=False)
    broker.keeper.beat()
    [ws] = rows(broker.url, "SELECT worker_name, status, jobs_processed, jobs_failed, avg_runtime_ms IS NOT NULL "
                "FROM neuron_tasks.worker_status()")
    assert ws[1:] == ("running", 6, 1, True)
    counts = dict(rows(broker.url, "SELECT status, jobs FROM neuron_tasks.job_counts"))
    assert counts["failed"] == 1 and counts["finished"] == 5
    [stats] = rows(broker.url, "SELECT tenant, finished, failed, avg_completion_s >= 0 FROM neuron_tasks.tenant_stats")
    assert stats == ("acme", 5, 1, True)
    [failed] = rows(broker.url, "SELECT job_type, error_message, retry_count FROM neuron_tasks.failed_jobs")
    assert failed == ("maybe", "builtins.RuntimeError: boom", 0)
