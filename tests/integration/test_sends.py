"""Sends of one process are written in groups (one INSERT and one commit per group), each caller
getting its own outcome; durability levels per queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import psycopg
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from neuron_tasks import PostgresBroker, QueueFull, Settings
from neuron_tasks.config import DURABILITY_LEVELS
from neuron_tasks.errors import DuplicateJob


def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


@contextmanager
def writes_held(url: str) -> Iterator[None]:
    """Every insert into the message table waits while this is open (its trigger needs the counters)."""
    with psycopg.connect(url) as conn:
        conn.execute("LOCK TABLE neuron_tasks.queue_counters IN EXCLUSIVE MODE")
        yield
        conn.rollback()


def queued(broker: PostgresBroker) -> int:
    sender = broker.producer.sender()
    with sender._cond:
        return len(sender._queue)


def test_many_threads_lose_and_double_nothing(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="gc")
    def job(i: int) -> None: ...

    sent: list[str] = []
    lock = threading.Lock()

    def produce(t: int) -> None:
        for i in range(250):
            message = job.send(t * 1000 + i)
            with lock:
                sent.append(message.message_id)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(sent) == 2000
    stored = rows(broker.url, "SELECT message_id, count(*) FROM neuron_tasks.messages GROUP BY message_id")
    assert len(stored) == 2000 and {m for m, _ in stored} == set(sent) and {n for _, n in stored} == {1}
    stats = broker.producer.sender().stats
    assert stats.messages == 2000 and stats.groups <= 2000


def recorder(outcomes: dict[str, Any]) -> Callable[[str, Callable[[], Any]], None]:
    """A thread target that stores what `fn` returned, or raised, under `name`."""

    def call(name: str, fn: Callable[[], Any]) -> None:
        try:
            outcomes[name] = fn()
        except Exception as exc:
            outcomes[name] = exc

    return call


@pytest.mark.parametrize("size", [5, 40])  # rows of VALUES up to 16 messages, arrays above
def test_what_arrives_during_a_write_goes_into_one_group(broker: PostgresBroker, size: int) -> None:
    @dramatiq.actor(queue_name="gc", priority=3)
    def job(i: int) -> None: ...

    def send(i: int) -> None:  # odd ones delayed by an hour, every third with its own priority
        options: dict[str, Any] = {"delay": 3_600_000} if i % 2 else {}
        if i % 3 == 0:
            options["priority"] = 100 + i
        job.send_with_options(args=(i,), **options)

    job.send(0)
    sender = broker.producer.sender()
    before = sender.stats.groups
    with writes_held(broker.url):
        threads = [threading.Thread(target=send, args=(i,)) for i in range(1, size + 2)]
        threads[0].start()
        wait_until(lambda: sender._leading and queued(broker) == 0)  # its write is held
        for th in threads[1:]:
            th.start()
        wait_until(lambda: queued(broker) == size)  # they wait for it
    for th in threads:
        th.join()
    assert sender.stats.groups - before == 2 and sender.stats.largest_group == size
    stored = rows(broker.url, "SELECT convert_from(payload, 'UTF8')::jsonb -> 'args' ->> 0, priority, "
                              "eta > now() + interval '50 minutes' FROM neuron_tasks.messages")
    want = [(str(i), 100 + i if i % 3 == 0 and i else 3, bool(i % 2)) for i in range(size + 2)]
    assert sorted(stored, key=lambda r: int(r[0])) == want


def test_each_caller_gets_its_own_outcome_in_a_group(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="gc")
    def job(i: int) -> None: ...

    first = job.send_with_options(args=(0,), unique_key="k")
    outcomes: dict[str, Any] = {}
    call = recorder(outcomes)

    calls = {
        "leader": lambda: job.send(1),
        "duplicate": lambda: job.send_with_options(args=(2,), unique_key="k"),
        "existing": lambda: job.send_with_options(args=(3,), unique_key="k", on_duplicate="existing"),
        "plain": lambda: job.send(4),
        "twice_a": lambda: job.send_with_options(args=(5,), unique_key="new"),
    }
    with writes_held(broker.url):
        leader = threading.Thread(target=call, args=("leader", calls.pop("leader")))
        leader.start()
        wait_until(lambda: broker.producer.sender()._leading and queued(broker) == 0)  # the leader writes (held)
        threads = [threading.Thread(target=call, args=(n, fn)) for n, fn in calls.items()]
        for th in threads:
            th.start()
        wait_until(lambda: queued(broker) == 4)
    for th in [leader, *threads]:
        th.join()
    assert isinstance(outcomes["duplicate"], DuplicateJob)
    assert outcomes["existing"].message_id == first.message_id
    assert not isinstance(outcomes["plain"], Exception) and not isinstance(outcomes["twice_a"], Exception)
    stored = {m for (m,) in rows(broker.url, "SELECT message_id FROM neuron_tasks.messages")}
    assert stored == {first.message_id, outcomes["leader"].message_id, outcomes["plain"].message_id,
                      outcomes["twice_a"].message_id}


def test_one_producers_sends_keep_their_order(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="order")
    def job(i: int) -> None: ...

    ids = [job.send(i).message_id for i in range(200)]
    stored = [m for (m,) in rows(broker.url, "SELECT message_id FROM neuron_tasks.messages ORDER BY id")]
    assert stored == ids


def test_balanced_commits_without_waiting_for_the_flush(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"queue_durability": {"bal": "balanced"}}))
    dramatiq.set_broker(broker)
    try:

        @dramatiq.actor(queue_name="bal")
        def fast(i: int) -> None: ...

        @dramatiq.actor(queue_name="safe")
        def safe(i: int) -> None: ...

        fast.send(1)
        stats = broker.producer.sender().stats
        assert stats.by_commit == {"durable": 0, "async": 1}
        safe.send(2)
        assert stats.by_commit == {"durable": 1, "async": 1}
        with broker.soft_pool.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
        with broker.pool.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert rows(broker.url, "SELECT queue_name FROM neuron_tasks.messages ORDER BY id") == [("bal",), ("safe",)]
    finally:
        broker.close()


def test_volatile_sends_are_written_on_close(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"durability": "volatile"}))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="vol")
    def click(i: int) -> None: ...

    try:
        first = click.send_with_options(args=(0,), unique_key="u")
        with pytest.raises(DuplicateJob):  # a unique job is written before send() returns
            click.send_with_options(args=(0,), unique_key="u")
        with writes_held(broker.url):
            ids = [click.send(i).message_id for i in range(1, 501)]  # returns while writes are held
            assert broker.producer.sender().unwritten() > 0
    finally:
        broker.close()
    stored = [m for (m,) in rows(broker.url, "SELECT message_id FROM neuron_tasks.messages ORDER BY id")]
    assert stored == [first.message_id, *ids]


def test_depth_holds_under_concurrent_sends(settings: Settings) -> None:
    broker = PostgresBroker(settings=settings.model_copy(update={"queue_depth": 50}))
    dramatiq.set_broker(broker)
    try:

        @dramatiq.actor(queue_name="deep")
        def job(i: int) -> None: ...

        refused = []

        def produce() -> None:
            for i in range(20):
                try:
                    job.send(i)
                except QueueFull:
                    refused.append(i)

        threads = [threading.Thread(target=produce) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        ((stored,),) = rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages")
        assert refused and stored + len(refused) == 160
        assert 50 <= stored <= 50 + 8  # at most one send in flight per thread past the depth
        with pytest.raises(QueueFull):
            job.send(0)
    finally:
        broker.close()


def test_counters_follow_every_change(broker: PostgresBroker, worker: dramatiq.Worker) -> None:
    @dramatiq.actor(queue_name="cnt", max_retries=0)
    def maybe(i: int) -> None:
        if i % 3 == 0:
            raise ValueError(i)

    for i in range(30):
        maybe.send(i)
    broker.enqueue_many([maybe.message(i) for i in range(30, 60)])
    broker.join("cnt", timeout=30_000, fail_fast=False)
    maybe.send_with_options(args=(1,), delay=60_000)
    exact = rows(broker.url,
                 "SELECT queue_name, state, count(*) FROM neuron_tasks.messages GROUP BY 1, 2 ORDER BY 1, 2")
    kept = rows(broker.url, "SELECT queue_name, state, sum(n) FROM neuron_tasks.queue_counters GROUP BY 1, 2 "
                            "HAVING sum(n) <> 0 ORDER BY 1, 2")
    assert exact == kept == [("cnt", "failed", 20), ("cnt", "pending", 1)]
    with psycopg.connect(broker.url, autocommit=True) as conn:
        conn.execute("TRUNCATE neuron_tasks.messages")
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.queue_counters") == [(0,)]


@hsettings(max_examples=60, deadline=None)
@given(level=st.one_of(st.sampled_from(DURABILITY_LEVELS), st.text(max_size=12)),
       queue=st.one_of(st.sampled_from(["clicks", "a.b-c_1"]), st.text(max_size=8)))
def test_durability_values_are_checked(level: str, queue: str) -> None:
    valid_queue = bool(queue) and all(c.isascii() and (c.isalnum() or c in "._-") for c in queue)
    if level in DURABILITY_LEVELS:
        assert Settings(durability=level).durability_of("x") == level
        if valid_queue:
            s = Settings(queue_durability={queue: level})
            assert s.durability_of(queue) == level and s.durability_of(queue + "x") == "durable"
        else:
            with pytest.raises(ValidationError, match="not a queue name"):
                Settings(queue_durability={queue: level})
    else:
        with pytest.raises(ValidationError, match="'durable', 'balanced' or 'volatile'"):
            Settings(durability=level)
        with pytest.raises(ValidationError):
            Settings(queue_durability={"clicks": level})


def test_durability_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURON_TASKS_DURABILITY", "balanced")
    monkeypatch.setenv("NEURON_TASKS_QUEUE_DURABILITY", '{"clicks": "volatile"}')
    s = Settings()
    assert (s.durability_of("clicks"), s.durability_of("other")) == ("volatile", "balanced")
    monkeypatch.setenv("NEURON_TASKS_QUEUE_DURABILITY", '{"clicks": "fast"}')
    with pytest.raises(ValidationError, match="'durable', 'balanced' or 'volatile'"):
        Settings()


def test_a_forked_child_sends_through_its_own_sender(broker: PostgresBroker) -> None:
    import multiprocessing

    @dramatiq.actor(queue_name="forked")
    def job(i: int) -> None: ...

    job.send(0)
    parent_sender = broker.producer.sender()

    def child() -> None:
        assert broker.producer.sender() is not parent_sender
        for i in range(1, 11):
            job.send(i)
        broker.close()

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    job.send(11)
    assert broker.producer.sender() is parent_sender
    assert rows(broker.url, "SELECT count(*) FROM neuron_tasks.messages WHERE queue_name = 'forked'") == [(12,)]


def test_a_message_the_server_refuses_fails_alone_in_its_group(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="gc")
    def good(i: int) -> None: ...

    @dramatiq.actor(queue_name="gc")
    def bad(i: int) -> None: ...

    with psycopg.connect(broker.url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF NEW.actor_name = 'bad' THEN RAISE EXCEPTION 'refused by a site rule'; END IF; "
                     "RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER refuse_bad BEFORE INSERT ON neuron_tasks.messages "
                     "FOR EACH ROW EXECUTE FUNCTION public.refuse_bad()")
    try:
        outcomes: dict[str, Any] = {}
        call = recorder(outcomes)

        with writes_held(broker.url):
            leader = threading.Thread(target=call, args=("leader", lambda: good.send(0)))
            leader.start()
            wait_until(lambda: broker.producer.sender()._leading and queued(broker) == 0)
            threads = [threading.Thread(target=call, args=(name, fn)) for name, fn in
                       (("a", lambda: good.send(1)), ("bad", lambda: bad.send(2)), ("b", lambda: good.send(3)))]
            for th in threads:
                th.start()
            wait_until(lambda: queued(broker) == 3)
        for th in [leader, *threads]:
            th.join()
        assert isinstance(outcomes["bad"], psycopg.Error) and "refused by a site rule" in str(outcomes["bad"])
        stored = {m for (m,) in rows(broker.url, "SELECT message_id FROM neuron_tasks.messages")}
        assert stored == {outcomes[n].message_id for n in ("leader", "a", "b")}
    finally:
        with psycopg.connect(broker.url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse_bad ON neuron_tasks.messages")
            conn.execute("DROP FUNCTION public.refuse_bad()")


def test_a_leader_gathers_the_threads_that_are_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """While sends are concurrent, a new leader waits (a fraction of a millisecond) for the threads
    that sent lately, so they share one commit; threads quiet for longer are not waited for."""
    from neuron_tasks.core import sender as sender_module

    monkeypatch.setattr(sender_module, "GATHER_S", 30.0)  # long enough that only an arrival ends it
    sender = sender_module.Sender(lambda durable: None, "nowhere")  # type: ignore[arg-type,return-value]
    now = time.monotonic()
    sender._senders = {1: now, 2: now, 3: now - 10 * sender_module.ACTIVE_S}  # 3 has gone quiet
    sender._queue = ["mine"]  # type: ignore[list-item]

    def arrive() -> None:
        time.sleep(0.05)
        with sender._cond:
            sender._queue.append("thread 2's")  # type: ignore[arg-type]
            sender._cond.notify_all()

    th = threading.Thread(target=arrive)
    th.start()
    with sender._cond:
        sender._gather()
        gathered = list(sender._queue)
    th.join()
    assert gathered == ["mine", "thread 2's"]  # it waited for thread 2, not for the quiet thread 3
    sender._senders = {1: time.monotonic()}
    with sender._cond:
        sender._gather()  # only the leader's own thread is sending: no wait at all
