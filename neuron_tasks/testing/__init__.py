"""Testing your actors without PostgreSQL: an in-memory broker and pytest fixtures.

    from neuron_tasks.testing import InMemoryBroker

    broker = InMemoryBroker()
    dramatiq.set_broker(broker)          # before your actors are declared (or imported)
    ...
    broker.join("default")               # raises the actor's exception if a message died

`InMemoryBroker` is Dramatiq's `StubBroker` (same `join(queue, timeout=, fail_fast=)`, `flush`,
`flush_all`, `dead_letters`) that checks every option exactly as the Postgres broker does
(`neuron_tasks.core.options.prepare`) and applies in memory the ones that make sense:

- priority: lower runs first (then enqueue order); a topic's default priority applies;
- delay and `Retry(delay=...)`: Dramatiq's delay queues;
- deadline: a message still waiting when its deadline passes is dead-lettered without running
  (`DeadlineExceeded`);
- unique jobs (`unique_key=...` or `unique=True`): `DuplicateJob` while the first is pending,
  retrying or running, or that message with `on_duplicate="existing"`;
- retries and dead letters: neuron_tasks' Retries (`NonRetryable`, `@non_retryable`,
  `retry_after`, a topic's `max_retries`, per-message `max_retries`), backoff from settings;
- `QueueFull` past `settings.queue_depth` waiting messages, `MessageTooLarge` past
  `settings.max_message_bytes`;
- topics must be declared (`InMemoryBroker(topics={"emails": TopicSettings("emails", ...)})`),
  else `UnknownTopic`; with `tenant_policy="refuse"` tenants must be listed (`tenants=`), else
  `UnknownTenant`.

Not applied in memory (accepted and validated only): tenant QPS and token budgets, topic
concurrency and the delay between a topic's starts, leases, poison-message detection and fair
dequeue across tenants. Test those against the Postgres broker.

Against a real PostgreSQL, `truncate(url, "queue", "llm", ...)` empties the tables those parts
declare (`Part.tables`) between tests.

The pytest fixtures (`nt_settings`, `nt_topics`, `nt_broker`, `nt_worker`, `nt_join`) are in
`neuron_tasks.testing.pytest_plugin`, loaded automatically once neuron_tasks is installed.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Queue
from typing import Any

import dramatiq
import dramatiq.broker
from dramatiq.actor import Actor
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.brokers.stub import StubBroker, _StubConsumer
from dramatiq.common import current_millis, dq_name, iter_queue, q_name
from dramatiq.errors import QueueJoinTimeout, QueueNotFound
from dramatiq.message import Message
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from neuron_tasks.config import Settings
from neuron_tasks.core.middleware import Deadlines, MessageOptions, Retries
from neuron_tasks.core.options import prepare_for
from neuron_tasks.core.policies import TenantLimits, TopicSettings
from neuron_tasks.errors import DuplicateJob, QueueFull
from neuron_tasks.testing.tables import truncate

__all__ = ["InMemoryBroker", "MemoryPolicies", "default_middleware", "join_all", "truncate", "use_broker"]


class MemoryPolicies:
    """The broker's topics and tenants, held in memory (the Postgres broker reads its tables)."""

    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, TopicSettings] | None = None,
        tenants: Mapping[str, TenantLimits] | Iterable[str] | None = None,
    ) -> None:
        self.settings = settings
        self.topics: dict[str, TopicSettings] = dict(topics or {})
        if isinstance(tenants, Mapping):
            self.tenants: dict[str, TenantLimits] = dict(tenants)
        else:
            self.tenants = {name: TenantLimits(name) for name in tenants or ()}

    def topic(self, name: str) -> TopicSettings | None:
        return self.topics.get(name)

    def tenant(self, name: str) -> TenantLimits | None:
        return self.tenants.get(name)

    def tenant_or_default(self, name: str) -> TenantLimits:
        s = self.settings
        return self.tenants.get(name) or TenantLimits(
            name, s.default_tenant_qps, s.default_tenant_burst, s.default_tenant_tokens_per_minute,
            s.default_tenant_tokens_per_day,
        )

    def invalidate(self) -> None:
        """Nothing is cached in memory."""


def default_middleware(settings: Settings) -> list[Middleware]:
    """The Postgres broker's middleware less what needs the database (tenant and topic limits,
    poison guard, worker stats, metrics), plus a Results middleware on Dramatiq's StubBackend."""
    return [
        Deadlines(),
        AgeLimit(),
        TimeLimit(time_limit=settings.timeout_ms),
        ShutdownNotifications(),
        Callbacks(),
        CurrentMessage(),
        Pipelines(),
        Retries(max_retries=settings.max_retries, min_backoff=settings.min_backoff_ms,
                max_backoff=settings.max_backoff_ms),
        MessageOptions(),
        Results(backend=StubBackend()),
    ]


class _PriorityQueue(Queue):
    """A queue.Queue (join, task_done) that hands out the lowest (priority, order) first.

    Items go in as (priority, order, payload) and come out as the payload, as in the stub's Queue.
    """

    def _init(self, maxsize: int) -> None:
        self.queue: list[tuple[int, int, bytes]] = []

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: tuple[int, int, bytes]) -> None:
        heapq.heappush(self.queue, item)

    def _get(self) -> bytes:
        return heapq.heappop(self.queue)[2]


@dataclass(slots=True)
class _Live:
    """A message not yet finished or dead: where it waits, its priority and unique key."""

    queue_name: str
    priority: int
    fingerprint: str | None
    copies: int = 0  # entries in a queue or held by a worker (a retry briefly holds two)


class _Consumer(_StubConsumer):
    """The stub's consumer, telling the broker when a message is acked or dead-lettered."""

    def __init__(self, broker: InMemoryBroker, queue: Queue, dead_letters: list[MessageProxy],
                 prefetch: int, timeout: int) -> None:
        super().__init__(queue, dead_letters, prefetch, timeout)
        self.broker = broker

    def ack(self, message: MessageProxy) -> None:
        super().ack(message)
        self.broker._settle(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        self.broker._settle(message.message_id)


class InMemoryBroker(StubBroker):
    """Dramatiq's StubBroker that accepts and applies neuron_tasks' options (see the module doc).

    Parameters:
      settings: a `Settings` (queue_depth, max_message_bytes, max_retries, backoff, timeout_ms,
        tenant_policy are used); built from the environment when omitted, like the real broker's.
      topics: the topics that exist, by name (others are refused with `UnknownTopic`).
      tenants: configured tenants (names or `TenantLimits`); only checked when
        `settings.tenant_policy == "refuse"`. Their limits are NOT enforced in memory.
      middleware: the full middleware list; defaults to `default_middleware(settings)`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        topics: Mapping[str, TopicSettings] | None = None,
        tenants: Mapping[str, TenantLimits] | Iterable[str] | None = None,
        middleware: list[Middleware] | None = None,
        fail_fast_default: bool = True,
    ) -> None:
        self.settings = settings or Settings()
        self.policies = MemoryPolicies(self.settings, topics, tenants)
        super().__init__(middleware or default_middleware(self.settings), fail_fast_default=fail_fast_default)
        self._state = threading.Lock()
        self._order = itertools.count()
        self._live: dict[str, _Live] = {}  # message id -> state
        self._unique: dict[str, str] = {}  # fingerprint -> message id
        self._adopted: list[tuple[Actor[Any, Any], Broker]] = []

    @property
    def topics(self) -> dict[str, TopicSettings]:
        """The topics that exist; add or change one with `broker.topics[name] = TopicSettings(name, ...)`."""
        return self.policies.topics

    # -- declaring ------------------------------------------------------------------
    def adopt(self, *actors: Actor[Any, Any]) -> None:
        """Bind actors declared on another broker (say your app's PostgresBroker) to this one,
        until `give_back_actors()`."""
        for actor in actors:
            if actor.broker is not self:
                self._adopted.append((actor, actor.broker))
                actor.broker = self
            self.declare_actor(actor)

    def give_back_actors(self) -> None:
        """Return adopted actors to the brokers they were declared on."""
        while self._adopted:
            actor, broker = self._adopted.pop()
            actor.broker = broker

    def declare_queue(self, queue_name: str) -> None:
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues[queue_name] = _PriorityQueue()
        self.emit_after("declare_queue", queue_name)
        delayed = dq_name(queue_name)
        self.queues[delayed] = Queue()
        self.delay_queues.add(delayed)
        self.emit_after("declare_delay_queue", delayed)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> Consumer:
        try:
            queue = self.queues[queue_name]
        except KeyError:
            raise QueueNotFound(queue_name) from None
        return _Consumer(self, queue, self.dead_letters_by_queue[queue_name], prefetch, timeout)

    # -- enqueue --------------------------------------------------------------------
    def _waiting(self, queue_name: str) -> int:
        """Pending and retrying messages (delayed ones included), as the Postgres broker counts them."""
        return self.queues[queue_name].qsize() + self.queues[dq_name(queue_name)].unfinished_tasks

    def _put(self, message: Message, live: _Live, delay: int | float | None) -> None:
        """Put one copy of a live message on its queue, or on its delay queue (caller holds the lock)."""
        live.copies += 1
        if delay:
            delayed = message.copy(queue_name=dq_name(live.queue_name), options={"eta": current_millis() + int(delay)})
            self.queues[dq_name(live.queue_name)].put(delayed.encode())
        else:
            if message.queue_name != live.queue_name:
                message = message.copy(queue_name=live.queue_name)
            self.queues[live.queue_name].put((live.priority, next(self._order), message.encode()))

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Enqueue a message (`delay` in milliseconds), checked like the Postgres broker does.

        A message already live here (a retry, or a delayed message whose time came) is moved,
        not checked again.
        """
        with self._state:
            live = self._live.get(message.message_id)
        if live is not None:
            self.emit_before("enqueue", message, delay)
            with self._state:
                self._put(message, live, delay)
            self.emit_after("enqueue", message, delay)
            return message
        (out,) = self._enqueue([message], delay, many=False)
        return out

    def enqueue_many(self, messages: Sequence[Message], *, delay: int | None = None) -> list[Message]:
        """Enqueue many messages at once: all of them or, on a refusal, none."""
        return self._enqueue(list(messages), delay, many=True)

    def _enqueue(self, messages: list[Message], delay: int | float | None, *, many: bool) -> list[Message]:
        prepared = [prepare_for(self, m, delay) for m in messages]
        for p in prepared:
            self.declare_queue(q_name(p.message.queue_name))  # the Postgres broker takes any queue name
        for m in messages:
            self.emit_before("enqueue", m, delay)
        out: list[Message] = []
        with self._state:
            per_queue: dict[str, int] = {}
            for p in prepared:
                name = q_name(p.message.queue_name)
                per_queue[name] = per_queue.get(name, 0) + 1
            for name, n in per_queue.items():
                if self._waiting(name) + n > self.settings.queue_depth:
                    raise QueueFull(name, self.settings.queue_depth)
            taken: dict[str, str] = {}
            for m, p in zip(messages, prepared, strict=True):
                held = None if p.fingerprint is None else self._unique.get(p.fingerprint) or taken.get(p.fingerprint)
                if held is not None:
                    if p.on_duplicate != "existing":
                        raise DuplicateJob(p.fingerprint or "", None if many else held)
                    out.append(m.copy(message_id=held))
                    continue
                if p.fingerprint is not None:
                    taken[p.fingerprint] = m.message_id
                out.append(m)
            for m, p, result in zip(messages, prepared, out, strict=True):
                if result.message_id != m.message_id:
                    continue
                live = self._live[m.message_id] = _Live(q_name(m.queue_name), p.columns.priority, p.fingerprint)
                if p.fingerprint is not None:
                    self._unique[p.fingerprint] = m.message_id
                self._put(p.message, live, p.columns.delay_ms)
        for m, result in zip(messages, out, strict=True):
            if result.message_id == m.message_id:
                self.emit_after("enqueue", m, delay)
        return out

    def _settle(self, message_id: str) -> None:
        """A copy of a message was acked or dead-lettered; the last one ends its life."""
        with self._state:
            live = self._live.get(message_id)
            if live is None:
                return
            live.copies -= 1
            if live.copies <= 0:
                del self._live[message_id]
                if live.fingerprint is not None and self._unique.get(live.fingerprint) == message_id:
                    del self._unique[live.fingerprint]

    # -- test API -------------------------------------------------------------------
    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue (and of its delay queue), dead letters included."""
        base = q_name(queue_name)
        with self._state:
            for name in (base, dq_name(base)):
                queue = self.queues.get(name)
                if queue is None:
                    continue
                for _ in iter_queue(queue):
                    queue.task_done()
                self.dead_letters_by_queue[name].clear()
            for message_id in [i for i, live in self._live.items() if live.queue_name == base]:
                live = self._live.pop(message_id)
                if live.fingerprint is not None:
                    self._unique.pop(live.fingerprint, None)

    def flush_all(self) -> None:
        """Drop every message of every declared queue, dead letters included."""
        for name in list(self.queues):
            if name not in self.delay_queues:
                self.flush(name)

    def join_all(self, *, timeout: int | None = None, fail_fast: bool | None = None) -> None:
        """Join every declared queue until all are empty at once (a job may enqueue on another)."""
        join_all(self, timeout=timeout, fail_fast=fail_fast)


def join_all(broker: Any, *, timeout: int | None = None, fail_fast: bool | None = None) -> None:
    """Wait until no declared queue of `broker` (in-memory or Postgres) has unfinished messages.

    Raises:
      QueueJoinTimeout: when `timeout` (milliseconds) elapses first.
      the exception of a dead-lettered message, with `fail_fast` (the broker's default when None).
    """
    deadline = None if timeout is None else time.monotonic() + timeout / 1000.0
    delay_queues: set[str] = getattr(broker, "delay_queues", set())
    while True:
        names = sorted(n for n in broker.get_declared_queues() if n not in delay_queues)
        for name in names:
            left = None if deadline is None else max(int((deadline - time.monotonic()) * 1000), 1)
            kwargs: dict[str, Any] = {"timeout": left}
            if fail_fast is not None:
                kwargs["fail_fast"] = fail_fast
            broker.join(name, **kwargs)
        if all(_quiet(broker, n) for n in names):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise QueueJoinTimeout(",".join(names))


def _quiet(broker: Any, name: str) -> bool:
    if isinstance(broker, InMemoryBroker):
        return not any(broker.queues[n].unfinished_tasks for n in (name, dq_name(name)))
    try:
        broker.join(name, timeout=1, fail_fast=False)
    except QueueJoinTimeout:
        return False
    return True


@contextmanager
def use_broker(broker: InMemoryBroker) -> Iterator[InMemoryBroker]:
    """Make `broker` Dramatiq's global broker, adopting the previous global broker's actors, until exit."""
    previous = dramatiq.broker.global_broker
    dramatiq.set_broker(broker)
    if previous is not None and previous is not broker:
        broker.adopt(*previous.actors.values())
    try:
        yield broker
    finally:
        broker.give_back_actors()
        if previous is not None:
            dramatiq.set_broker(previous)
