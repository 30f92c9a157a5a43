"""LLM and queue job actors (queue "llm": embed, complete, rerank, cache jobs; queue "tasks":
http_call, sql_task). Thin shells over neuron_tasks.llm; results are stored in Postgres
(`message.get_result(block=True)` works from any process).

    from neuron_tasks.llm import actors
    msg = actors.embed.send(["a text", "another"], tenant="acme")
    vectors = msg.get_result(block=True, timeout=30_000)["embeddings"]
    packed = actors.embed.send(texts, encoding="f32")     # compact: embeddings_of(result) -> float32 matrix

Transient failures (429, 5xx, timeouts, open circuit) are retried with backoff, after the
provider's Retry-After when it sent one; permanent ones go straight to the dead letters.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import dramatiq
from dramatiq.errors import Retry
from dramatiq.middleware import CurrentMessage
from psycopg_pool import ConnectionPool

from neuron_tasks.core.results import PostgresResultBackend, ensure_results
from neuron_tasks.llm import errors
from neuron_tasks.llm.batcher import Batcher
from neuron_tasks.llm.encoding import JOB_ENCODINGS
from neuron_tasks.llm.encoding import check as check_encoding
from neuron_tasks.llm.service import EmbedRequest, LlmService
from neuron_tasks.llm.settings import LlmSettings

LLM_QUEUE = "llm"
TASKS_QUEUE = "tasks"
PERMANENT = (errors.PermanentError,)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Runtime:
    """What the LLM actors of one process share: the service and the embed batcher."""

    service: LlmService
    batcher: Batcher[EmbedRequest]
    pid: int


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def configure(settings: LlmSettings | None = None, pool: ConnectionPool | None = None) -> Runtime:
    """(Re)build this process's runtime: settings from the environment unless given; the
    global broker's pool unless given."""
    global _runtime
    settings = settings or LlmSettings()
    if pool is None:
        pool = getattr(dramatiq.get_broker(), "pool", None)
        if pool is None:
            raise TypeError("LLM actors need a PostgresBroker as the global broker (or pass pool=)")
    service = LlmService(pool, settings)
    batcher: Batcher[EmbedRequest] = Batcher(
        service.embed_many, max_messages=settings.llm_batch_size, linger_s=settings.llm_batch_linger_ms / 1000.0,
        capacity=worker_threads, releases=True,
    )
    from dramatiq.results import Results

    for mw in dramatiq.get_broker().middleware:
        if isinstance(mw, Results) and isinstance(mw.backend, PostgresResultBackend):
            mw.result_ttl = settings.llm_result_ttl_ms
    with _runtime_lock:
        _runtime = Runtime(service, batcher, os.getpid())
    return _runtime


def close() -> None:
    """Forget this process's runtime (its providers and batcher); the next job builds a new one."""
    global _runtime
    with _runtime_lock:
        _runtime = None


def runtime() -> Runtime:
    rt = _runtime
    if rt is None or rt.pid != os.getpid():
        return configure()
    return rt


def _current() -> tuple[str | None, str | None]:
    """(tenant option, message id) of the message this thread is running."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return None, None
    return message.options.get("tenant"), message.message_id


def shell(fn: F) -> F:
    """Transient errors become Dramatiq retries (after Retry-After when known)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.TransientError as exc:
            if exc.retry_after_s is not None:
                raise Retry(str(exc), delay=max(1, int(exc.retry_after_s * 1000))) from exc
            raise

    return wrapper  # type: ignore[return-value]


class WorkerThreads(dramatiq.Middleware):
    """Counts the running worker threads of this process: an embed group holding that many
    requests is full (no other thread can join it), so it does not wait out its linger."""

    def __init__(self) -> None:
        self.running = 0
        self._lock = threading.Lock()

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            self.running += 1

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            self.running = max(self.running - 1, 0)


def _thread_counter(b: dramatiq.Broker) -> WorkerThreads:
    """The broker's WorkerThreads middleware, added once (a reloaded module finds the old one)."""
    for mw in b.middleware:
        if type(mw).__name__ == WorkerThreads.__name__ and hasattr(mw, "running"):
            return mw  # type: ignore[return-value]
    counter = WorkerThreads()
    b.add_middleware(counter)
    return counter


def worker_threads() -> int:
    """Worker threads running in this process (0 before a worker starts)."""
    return _threads.running


broker = dramatiq.get_broker()
ensure_results(broker)
_threads = _thread_counter(broker)
_opts: dict[str, Any] = {"store_results": True, "throws": PERMANENT}


@dramatiq.actor(actor_name="llm_embed", queue_name=LLM_QUEUE, **_opts)
@shell
def embed(texts: list[str] | str, model: str | None = None, provider: str | None = None,
          tenant: str | None = None, cache: bool = True, encoding: str = "json") -> dict[str, Any]:
    """Embeddings of texts; concurrent embed messages of a process share one model call.
    `encoding="f32"` returns the vectors as one base64 float32 string (`embeddings_of` reads it)."""
    option_tenant, message_id = _current()
    texts = [texts] if isinstance(texts, str) else list(texts)
    request = EmbedRequest(texts, model, provider, tenant or option_tenant, message_id, cache,
                           encoding=check_encoding(encoding, JOB_ENCODINGS))
    return runtime().batcher.submit(request)


@dramatiq.actor(actor_name="llm_complete", queue_name=LLM_QUEUE, **_opts)
@shell
def complete(prompt: str | None = None, messages: list[dict[str, Any]] | None = None, model: str | None = None,
             max_tokens: int = 256, temperature: float = 0.0, provider: str | None = None,
             cache: bool | None = None, tenant: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat completion (cached when temperature is 0 or cache=True)."""
    option_tenant, message_id = _current()
    return runtime().service.complete(prompt, messages=messages, model=model, provider=provider,
                                      max_tokens=max_tokens, temperature=temperature, cache=cache,
                                      tenant=tenant or option_tenant, message_id=message_id, **extra)


@dramatiq.actor(actor_name="llm_rerank", queue_name=LLM_QUEUE, **_opts)
@shell
def rerank(query: str, documents: list[str], top_n: int | None = None, model: str | None = None,
           provider: str | None = None, tenant: str | None = None, cache: bool = True) -> dict[str, Any]:
    """Documents by relevance to the query (local provider: bi-encoder cosine)."""
    option_tenant, message_id = _current()
    return runtime().service.rerank(query, documents, top_n=top_n, model=model, provider=provider,
                                    use_cache=cache, tenant=tenant or option_tenant, message_id=message_id)


@dramatiq.actor(actor_name="http_call", queue_name=TASKS_QUEUE, **_opts)
@shell
def http_call(method: str, url: str, json: Any = None, headers: dict[str, str] | None = None,
              timeout_s: float | None = None) -> dict[str, Any]:
    """An HTTP request to a host on llm_http_call_allow_hosts (its addresses checked too), ending at
    llm_http_call_timeout_s (a message may only shorten it); {status, headers, json|text}."""
    from neuron_tasks.llm.tasks import http_call as run

    return run(method, url, json=json, headers=headers, settings=runtime().service.settings, timeout_s=timeout_s)


@dramatiq.actor(actor_name="sql_task", queue_name=TASKS_QUEUE, **_opts)
@shell
def sql_task(statement: str, params: Any = None, fetch: int = 0, timeout_ms: int | None = None) -> dict[str, Any]:
    """One SQL statement as the role neuron_tasks_sql_runner, under a time limit it cannot lift;
    off unless llm_sql_task_enabled, and only for messages enqueued by members of
    neuron_tasks_sql_submitter (docs/security.md)."""
    from neuron_tasks.llm.tasks import sql_task as run

    rt = runtime()
    row_id = getattr(CurrentMessage.get_current_message(), "row_id", None)
    return run(rt.service.pool, statement, params, settings=rt.service.settings, row_id=row_id, fetch=fetch,
               timeout_ms=timeout_ms)


@dramatiq.actor(actor_name="cache_refresh", queue_name=LLM_QUEUE, **_opts)
@shell
def cache_refresh(operation: str = "embed", within_s: float = 86400.0, limit: int = 1000) -> int:
    """Recompute the most used cache entries expiring within `within_s`."""
    return runtime().service.refresh_cache(operation=operation, within_s=within_s, limit=limit)


@dramatiq.actor(actor_name="llm_cache_rotate", queue_name=LLM_QUEUE, **_opts)
@shell
def cache_rotate() -> dict[str, int]:
    """Cache rotation: expired entries, LRU beyond the size caps, expired job results."""
    from neuron_tasks.llm import cache

    rt = runtime()
    return cache.rotate(rt.service.pool, rt.service.settings)
