"""Cross-message embedding batching inside one worker process.

Each worker thread running an embed message hands its request to the process's batcher and
waits. The first request of a group leads it: it waits up to `linger_s` for others, or until
the group is full: `max_messages` joined, or every thread that could submit (`capacity`, the
worker threads of the process) is in it, so a process with fewer threads than `max_messages`
never waits for requests that cannot come. Then it takes the model for one call over all their
texts; while the model is busy with the previous group, the next group keeps filling, and it
may take the model as soon as the previous group has its vectors (its cache and usage writes
run beside the next model call). So many small embed jobs cost about one large encode, and a
lone job waits at most `linger_s`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

R = TypeVar("R")


@dataclass(slots=True)
class _Item(Generic[R]):
    request: R
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Group(Generic[R]):
    items: list[_Item[R]] = field(default_factory=list)
    closed: bool = False
    full: threading.Event = field(default_factory=threading.Event)


class Batcher(Generic[R]):
    """Merges concurrent `submit` calls into calls of `run(requests) -> results` (same order)."""

    def __init__(self, run: Callable[..., list[Any]], *, max_messages: int, linger_s: float,
                 capacity: Callable[[], int] | None = None, releases: bool = False) -> None:
        self.run = run
        # releases: `run(requests, release)` calls release() once the part that must go one group
        # at a time (the model) is over, so the next group's model call overlaps this one's writes
        self.releases = releases
        self.max_messages = max(1, max_messages)
        self.linger_s = max(0.0, linger_s)
        self.capacity = capacity  # how many threads may submit at once (0 or None: unknown)
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._open: _Group[R] | None = None
        self.calls = 0
        self.requests = 0

    def _limit(self) -> int:
        threads = self.capacity() if self.capacity is not None else 0
        return min(self.max_messages, threads) if threads > 0 else self.max_messages

    def submit(self, request: R) -> Any:
        item: _Item[R] = _Item(request)
        with self._lock:
            group = self._open
            leader = group is None
            if group is None:
                group = self._open = _Group()
            group.items.append(item)
            if len(group.items) >= self._limit():
                group.closed = True
                group.full.set()
                self._open = None
        if leader:
            self._lead(group)
        else:
            item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def _lead(self, group: _Group[R]) -> None:
        if self.linger_s and not group.closed:
            group.full.wait(self.linger_s)
        self._run_lock.acquire()
        held = [True]

        def release() -> None:
            """The part of a run that goes one group at a time is over: the next group may start."""
            if held[0]:
                held[0] = False
                self._run_lock.release()

        try:
            with self._lock:
                if self._open is group:
                    self._open = None
                group.closed = True
            items = group.items
            try:
                requests = [i.request for i in items]
                results = self.run(requests, release) if self.releases else self.run(requests)
                if len(results) != len(items):
                    raise RuntimeError(f"batch run returned {len(results)} results for {len(items)} requests")
                for item, result in zip(items, results, strict=True):
                    item.result = result
            except BaseException as exc:
                for item in items:
                    item.error = exc
            finally:
                self.calls += 1
                self.requests += len(items)
                for item in items:
                    item.done.set()
        finally:
            release()
