"""One behaviour suite, run on the in-memory broker (neuron_tasks.testing) and on the Postgres broker.

Only the brokers' public API is used (send, enqueue_many, join, dead_letters, flush_all), so
a test that passes on one and fails on the other is a drift between them. Where the two differ
on purpose, the test says so in an explicit, commented branch.
"""

from __future__ import annotations

import time

import dramatiq
import pytest
from dramatiq.broker import Broker
from dramatiq.errors import QueueJoinTimeout

from neuron_tasks import MessageTooLarge, QueueFull
from neuron_tasks.core.middleware import non_retryable
from neuron_tasks.errors import (
    DeadlineExceeded,
    DuplicateJob,
    InvalidOption,
    NonRetryable,
    UnknownTenant,
    UnknownTopic,
)
from neuron_tasks.testing import InMemoryBroker, join_all

from .conftest import MakeBroker
from .helpers import add_tenant, add_topic, running

JOIN_MS = 15_000


def now_ms() -> int:
    return int(time.time() * 1000)


def test_priority_lower_runs_first_and_topic_priority_applies(any_broker: Broker) -> None:
    add_topic(any_broker, "urgent", priority=-10)
    order: list[str] = []

    @dramatiq.actor
    def job(tag: str) -> None:
        order.append(tag)

    for p in (5, 3, 9, 0, -2, 7):
        job.send_with_options(args=(str(p),), priority=p)
    job.send_with_options(args=("urgent",), topic="urgent")  # the topic's priority: -10
    job.send_with_options(args=("urgent-but-8",), topic="urgent", priority=8)  # the message's own wins
    with running(any_broker, threads=1):
        any_broker.join(job.queue_name, timeout=JOIN_MS)
    assert order == ["urgent", "-2", "0", "3", "5", "7", "urgent-but-8", "9"]


def test_delay_never_runs_early(any_broker: Broker) -> None:
    waited: dict[int, float] = {}

    @dramatiq.actor
    def later(delay_ms: int, sent: float) -> None:
        waited[delay_ms] = time.time() - sent

    with running(any_broker):
        for delay in (0, 300):
            later.send_with_options(args=(delay, time.time()), delay=delay)
        any_broker.join(later.queue_name, timeout=JOIN_MS)
    assert set(waited) == {0, 300}
    assert waited[300] >= 0.3 - 0.005


def test_deadline_passed_is_dead_lettered_without_running(any_broker: Broker) -> None:
    ran: list[str] = []

    @dramatiq.actor(max_retries=3)
    def timely(tag: str) -> None:
        ran.append(tag)

    timely.send_with_options(args=("late",), deadline=now_ms() - 1000)
    timely.send_with_options(args=("ok",), deadline=now_ms() + 60_000)
    timely.send_with_options(args=("iso",), deadline="2099-01-01T00:00:00Z")
    with running(any_broker), pytest.raises(DeadlineExceeded, match="deadline passed"):
        any_broker.join(timely.queue_name, timeout=JOIN_MS)
    assert sorted(ran) == ["iso", "ok"]
    assert [m.args for m in any_broker.dead_letters] == [("late",)]


def test_unique_jobs_refused_or_existing_while_live(any_broker: Broker) -> None:
    @dramatiq.actor
    def refresh(key: str) -> None:
        time.sleep(0.05)

    first = refresh.send_with_options(args=("a",), unique_key="refresh-a")
    with pytest.raises(DuplicateJob, match="refresh-a") as info:
        refresh.send_with_options(args=("a",), unique_key="refresh-a")
    assert info.value.existing_message_id == first.message_id
    same = refresh.send_with_options(args=("a",), unique_key="refresh-a", on_duplicate="existing")
    assert same.message_id == first.message_id
    refresh.send_with_options(args=("b",), unique=True)
    with pytest.raises(DuplicateJob):
        refresh.send_with_options(args=("b",), unique=True)
    refresh.send_with_options(args=("c",), unique=True)  # other arguments: another job
    with pytest.raises(DuplicateJob):  # all or nothing: "z" is not enqueued either
        any_broker.enqueue_many([refresh.message_with_options(args=("z",), unique_key="z"),  # type: ignore[attr-defined]
                                 refresh.message_with_options(args=("b",), unique=True)])
    refresh.send_with_options(args=("z",), unique_key="z")
    with pytest.raises(InvalidOption, match="on_duplicate"):
        refresh.send_with_options(args=("a",), unique_key="refresh-a", on_duplicate="ignore")
    with pytest.raises(InvalidOption, match="unique_key"):
        refresh.send_with_options(args=("a",), unique_key="")
    with running(any_broker):
        any_broker.join(refresh.queue_name, timeout=JOIN_MS)
        again = refresh.send_with_options(args=("a",), unique_key="refresh-a")  # finished: may run again
        assert again.message_id != first.message_id
        any_broker.join(refresh.queue_name, timeout=JOIN_MS)


def test_actor_level_unique_and_on_duplicate(make_broker: MakeBroker) -> None:
    make_broker()

    @dramatiq.actor(unique=True, on_duplicate="existing")
    def sync(account: int) -> None: ...

    first = sync.send(1)
    assert sync.send(1).message_id == first.message_id
    assert sync.send(2).message_id != first.message_id


def test_retries_then_dead_letter_and_join_reraises(any_broker: Broker) -> None:
    runs: list[float] = []

    @dramatiq.actor(max_retries=2)
    def breaks() -> None:
        runs.append(time.monotonic())
        raise KeyError("the-missing-key")

    breaks.send()
    with running(any_broker):
        with pytest.raises(KeyError, match="the-missing-key"):
            any_broker.join(breaks.queue_name, timeout=JOIN_MS)
        any_broker.join(breaks.queue_name, timeout=JOIN_MS, fail_fast=False)
    assert len(runs) == 3
    assert len(any_broker.dead_letters) == 1


def test_retry_with_delay(any_broker: Broker) -> None:
    runs: list[float] = []

    @dramatiq.actor(max_retries=3)
    def once_more() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise dramatiq.Retry(delay=200)

    once_more.send()
    with running(any_broker):
        any_broker.join(once_more.queue_name, timeout=JOIN_MS)
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.2 - 0.005
    assert any_broker.dead_letters == []


def test_non_retryable_retry_after_and_max_retries(any_broker: Broker) -> None:
    add_topic(any_broker, "fragile", max_retries=0)
    runs: dict[str, list[float]] = {"after": [], "never": [], "marked": [], "once": [], "topic": []}

    class RateLimited(Exception):
        retry_after = 0.3

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
        if kind in ("once", "topic"):
            raise RuntimeError("fails")

    for kind in ("after", "never", "marked"):
        flaky.send(kind)
    flaky.send_with_options(args=("once",), max_retries=0)  # per message
    flaky.send_with_options(args=("topic",), topic="fragile")  # the topic's max_retries
    with running(any_broker):
        any_broker.join(flaky.queue_name, timeout=JOIN_MS, fail_fast=False)
    assert len(runs["after"]) == 2 and runs["after"][1] - runs["after"][0] >= 0.3 - 0.005
    assert [len(runs[k]) for k in ("never", "marked", "once", "topic")] == [1, 1, 1, 1]
    assert sorted(m.args[0] for m in any_broker.dead_letters) == ["marked", "never", "once", "topic"]


def test_invalid_options_are_refused_at_enqueue(any_broker: Broker) -> None:
    ran: list[str] = []

    @dramatiq.actor
    def take(x: str) -> None:
        ran.append(x)

    with pytest.raises(InvalidOption, match="priority"):
        take.send_with_options(args=("a",), priority="high")
    with pytest.raises(InvalidOption, match="tenant"):
        take.send_with_options(args=("b",), tenant="bad tenant; drop table")
    with pytest.raises(InvalidOption, match="deadline"):
        take.send_with_options(args=("c",), deadline="tomorrow-ish")
    with pytest.raises(InvalidOption, match="delay"):
        any_broker.enqueue(take.message("d"), delay=-5)
    with pytest.raises(UnknownTopic, match="topics set nope"):
        take.send_with_options(args=("e",), topic="nope")
    with pytest.raises(InvalidOption):  # UnknownTopic is an InvalidOption too
        take.send_with_options(args=("f",), topic="bad topic")
    take.send_with_options(args=("ok",), tenant="acme", priority=2)  # any tenant under the default policy
    with running(any_broker):
        any_broker.join(take.queue_name, timeout=JOIN_MS)
    assert ran == ["ok"]  # nothing refused was stored


def test_tenant_policy_refuse(make_broker: MakeBroker) -> None:
    broker = make_broker(tenant_policy="refuse")

    @dramatiq.actor
    def t() -> None: ...

    with pytest.raises(UnknownTenant, match="unknown tenant 'nobody'"):
        t.send_with_options(tenant="nobody")
    add_tenant(broker, "somebody")
    t.send_with_options(tenant="somebody")
    t.send()  # no tenant: nothing to refuse


def test_queue_full_at_depth(make_broker: MakeBroker) -> None:
    make_broker(queue_depth=5)

    @dramatiq.actor
    def filler(i: int) -> None: ...

    for i in range(4):
        filler.send(i)
    filler.send_with_options(args=(4,), delay=60_000)  # a delayed message waits too
    with pytest.raises(QueueFull, match="queue 'default' is full: 5 messages"):
        filler.send(5)
    with pytest.raises(QueueFull):
        filler.broker.enqueue_many([filler.message(i) for i in range(2)])  # type: ignore[attr-defined]


def test_message_too_large(make_broker: MakeBroker) -> None:
    make_broker(max_message_bytes=1000)

    @dramatiq.actor
    def take(x: str) -> None: ...

    with pytest.raises(MessageTooLarge, match="over the limit of 1000 bytes"):
        take.send("x" * 2000)
    take.send("x" * 100)


def test_join_times_out_and_flush_all_empties(any_broker: Broker) -> None:
    @dramatiq.actor
    def idle() -> None: ...

    idle.send()
    idle.send_with_options(delay=60_000)
    with pytest.raises(QueueJoinTimeout):
        any_broker.join(idle.queue_name, timeout=200)
    any_broker.flush_all()
    any_broker.join(idle.queue_name, timeout=JOIN_MS)


def test_join_all_follows_jobs_across_queues(any_broker: Broker) -> None:
    done: list[int] = []

    @dramatiq.actor(queue_name="second")
    def second(i: int) -> None:
        time.sleep(0.05)
        done.append(i)

    @dramatiq.actor(queue_name="first")
    def first(i: int) -> None:
        second.send_with_options(args=(i,), delay=100)

    for i in range(3):
        first.send(i)
    with running(any_broker):
        join_all(any_broker, timeout=JOIN_MS)
    assert sorted(done) == [0, 1, 2]
    if isinstance(any_broker, InMemoryBroker):
        # In memory only: nothing is left behind in the broker's bookkeeping.
        assert any_broker._live == {} and any_broker._unique == {}
