"""LLM and queue jobs on a real Postgres against a fake OpenAI-compatible server on 127.0.0.1:
completion, embeddings, rerank, 429 + Retry-After, 500, timeouts, malformed replies, the
circuit breaker, the cache, batching, http_call's allow-list, sql_task's timeout, the job view."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import dramatiq
import psycopg
import pytest
from dramatiq.results.errors import ResultFailure

from neuron_tasks import PostgresBroker, db
from neuron_tasks.llm import cache as llm_cache
from neuron_tasks.llm.errors import CircuitOpen, MalformedReply, ProviderRejected, ProviderUnavailable, RateLimited
from neuron_tasks.llm.service import LlmService
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.llm.usage import record_usage
from neuron_tasks.testing import truncate
from neuron_tasks.testing.fake_llm import FakeProvider


@pytest.fixture
def llm_db(clean_db: str) -> str:
    truncate(clean_db, "llm")  # clean_db emptied the queue's tables (results among them)
    return clean_db


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(timeout_sleep_s=1.0) as f:
        yield f


@pytest.fixture
def llm_settings(fake: FakeProvider) -> LlmSettings:
    return LlmSettings(llm_provider="http", llm_http_base_url=fake.base_url, llm_timeout_ms=400,
                       llm_breaker_failures=3, llm_breaker_open_s=0.5, llm_batch_linger_ms=30,
                       llm_http_call_allow_hosts=["127.0.0.1"], llm_http_call_max_bytes=1000,
                       llm_sql_task_enabled=True)


@pytest.fixture
def service(llm_db: str, llm_settings: LlmSettings) -> Iterator[LlmService]:
    pool = db.make_pool(llm_db, max_size=4)
    yield LlmService(pool, llm_settings)
    pool.close()


@pytest.fixture
def actors(broker: PostgresBroker, llm_db: str, llm_settings: LlmSettings) -> ModuleType:
    """The actors module declared on this test's broker, configured for the fake provider."""
    name = "neuron_tasks.llm.actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    module.configure(llm_settings, pool=broker.pool)
    return module


@pytest.fixture
def llm_worker(actors: ModuleType, broker: PostgresBroker) -> Iterator[dramatiq.Worker]:
    broker.emit_after("process_boot")
    w = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    w.start()
    yield w
    w.stop(timeout=5000)


def rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


# -- the provider, called directly ---------------------------------------------------------------
def test_completion_embeddings_rerank_and_usage(service: LlmService, fake: FakeProvider, llm_db: str) -> None:
    out = service.complete("hello there", tenant="acme", message_id="m1")
    assert "hello there" in out["text"] and out["usage"]["total_tokens"] > 0 and not out["cached"]
    emb = service.embed(["one", "two"], tenant="acme")
    assert emb["dims"] == 8 and len(emb["embeddings"]) == 2 and emb["model"].startswith("http:")
    ranked = service.rerank("fish cat", ["dogs bark", "cat eats fish", "fish swim"], top_n=2)
    assert [r["index"] for r in ranked["results"]] == [1, 2] and ranked["method"] == "provider /rerank"
    usage = rows(llm_db, "SELECT tenant, operation, tokens, message_id FROM neuron_tasks.llm_usage ORDER BY id")
    assert [(u[0], u[1]) for u in usage] == [("acme", "complete"), ("acme", "embed"), (None, "rerank")]
    assert all(u[2] > 0 for u in usage) and usage[0][3] == "m1"
    with psycopg.connect(llm_db, autocommit=True) as conn:
        record_usage(conn, "beta", 42, operation="complete", model="x")
    assert rows(llm_db, "SELECT tokens FROM neuron_tasks.llm_usage WHERE tenant = 'beta'") == [(42,)]


def test_cache_hit_does_not_call_the_provider(service: LlmService, fake: FakeProvider, llm_db: str) -> None:
    first = service.complete("cache me", max_tokens=5)
    calls = fake.count("/chat/completions")
    again = service.complete("  cache   me ", max_tokens=5)  # same after normalisation
    assert again["cached"] and again["text"] == first["text"] and fake.count("/chat/completions") == calls
    service.complete("cache me", max_tokens=5, temperature=0.7)  # not cached: temperature > 0
    assert fake.count("/chat/completions") == calls + 1
    service.embed(["a", "b"])
    e = service.embed(["b", "a", "c"])
    assert e["cached"] == 2 and fake.count("/embeddings") == 2
    stats = {(s["operation"]): s for s in llm_cache.stats(service.pool)}
    assert stats["embed"]["entries"] == 3 and stats["embed"]["hits"] == 2 and stats["complete"]["hits"] == 1


def test_provider_errors_map_to_retry_or_dead_letter(service: LlmService, fake: FakeProvider) -> None:
    fake.script("429:2")
    with pytest.raises(RateLimited) as limited:
        service.complete("x", cache=False)
    assert limited.value.retry_after_s == 2.0
    fake.script("400")
    with pytest.raises(ProviderRejected, match="Invalid 'max_tokens'"):
        service.complete("x", cache=False, max_tokens=1)
    fake.script("malformed")
    with pytest.raises(MalformedReply, match="not JSON"):
        service.complete("x", cache=False)
    fake.script("timeout")
    with pytest.raises(ProviderUnavailable, match="no answer within 400 ms"):
        service.complete("x", cache=False)


def test_circuit_breaker_opens_then_a_probe_closes_it(service: LlmService, fake: FakeProvider, llm_db: str) -> None:
    fake.script("500", "500", "500")
    for _ in range(3):
        with pytest.raises(ProviderUnavailable, match="500"):
            service.complete("x", cache=False)
    calls = fake.count()
    with pytest.raises(CircuitOpen) as opened:
        service.complete("x", cache=False)
    assert fake.count() == calls and 0 < opened.value.retry_after_s <= 0.5
    time.sleep(0.6)
    assert service.complete("x", cache=False)["text"]  # the probe succeeds and closes the circuit
    [(failures, open_until, trips)] = rows(
        llm_db, "SELECT failures, open_until, trips FROM neuron_tasks.llm_provider_state")
    assert (failures, open_until, trips) == (0, None, 1)


def test_shared_rate_limit_state_paces_callers(service: LlmService, fake: FakeProvider, llm_db: str) -> None:
    fake.limit, fake.window_s = 3, 1.0
    started = time.monotonic()
    for i in range(7):
        service.complete(f"paced {i}", cache=False)
    assert fake.count(status=429) == 0
    assert time.monotonic() - started >= 1.0  # waited for the provider's window instead of hitting 429
    [(remaining, limit)] = rows(
        llm_db, "SELECT requests_remaining, requests_limit FROM neuron_tasks.llm_provider_state")
    assert limit == 3 and remaining is not None


# -- as jobs ---------------------------------------------------------------------------------------
def test_jobs_retry_on_429_and_500_and_dead_letter_permanent_errors(
    actors: ModuleType, llm_worker: dramatiq.Worker, broker: PostgresBroker, fake: FakeProvider, llm_db: str
) -> None:
    fake.script("429:1")
    started = time.monotonic()
    m = actors.complete.send("retry after", cache=False)
    assert "retry after" in m.get_result(block=True, timeout=15_000)["text"]
    assert time.monotonic() - started >= 0.9  # honoured Retry-After: 1
    fake.script("500")
    assert actors.complete.send("after 500", cache=False).get_result(block=True, timeout=15_000)["text"]
    fake.script("malformed")
    bad = actors.complete.send("malformed", cache=False)
    fake_400 = None
    with pytest.raises(ResultFailure, match="not JSON"):
        bad.get_result(block=True, timeout=15_000)
    fake.script("400")
    fake_400 = actors.complete.send("bad request", cache=False, max_tokens=0)
    with pytest.raises(ResultFailure, match="Invalid 'max_tokens'"):
        fake_400.get_result(block=True, timeout=15_000)
    dead = rows(llm_db, "SELECT message_id, retries, last_error FROM neuron_tasks.messages WHERE state = 'failed'")
    assert {d[0] for d in dead} == {bad.message_id, fake_400.message_id}
    assert all(d[1] == 0 for d in dead)  # straight to the dead letters, no retries
    status = dict(((op, st), n) for op, st, n, _ in rows(llm_db, "SELECT * FROM neuron_tasks.llm_job_status"))
    assert status[("completion", "completed")] == 2 and status[("completion", "failed")] == 2
    failed = rows(llm_db, "SELECT operation, error_message, retry_count FROM neuron_tasks.llm_jobs "
                          "WHERE status = 'failed'")
    assert {f[0] for f in failed} == {"completion"} and any("max_tokens" in f[1] for f in failed)


def test_embed_messages_are_batched_across_messages(
    actors: ModuleType, llm_worker: dramatiq.Worker, broker: PostgresBroker, fake: FakeProvider, llm_db: str
) -> None:
    messages = broker.enqueue_many([actors.embed.message([f"text {i}"], tenant="t1") for i in range(12)])
    results = [m.get_result(block=True, timeout=15_000) for m in messages]
    assert all(r["dims"] == 8 and len(r["embeddings"]) == 1 for r in results)
    assert fake.count("/embeddings") < 12  # 4 worker threads, one model call per group
    assert rows(llm_db, "SELECT count(*), count(DISTINCT message_id) FROM neuron_tasks.llm_usage "
                        "WHERE tenant = 't1'") == [(12, 12)]


def test_http_call_allow_list_size_cap_and_sql_task_timeout(
    actors: ModuleType, llm_worker: dramatiq.Worker, fake: FakeProvider, llm_db: str
) -> None:
    base = fake.base_url.removesuffix("/v1")
    ok = actors.http_call.send("GET", f"{base}/hello").get_result(block=True, timeout=10_000)
    assert ok["status"] == 200 and ok["json"]["path"] == "/hello"
    off = actors.http_call.send("GET", base.replace("127.0.0.1", "localhost") + "/hello")
    with pytest.raises(ResultFailure, match="not allowed"):
        off.get_result(block=True, timeout=10_000)
    with pytest.raises(ResultFailure, match="cap of 1000"):
        actors.http_call.send("GET", f"{base}/big").get_result(block=True, timeout=10_000)
    with psycopg.connect(llm_db, autocommit=True) as conn:  # background SQL runs as its own low-privilege role
        conn.execute("GRANT INSERT ON public.test_runs TO neuron_tasks_sql_runner")
    done = actors.sql_task.send("INSERT INTO public.test_runs (key) VALUES (%(k)s), (%(k)s)", {"k": "sql"})
    assert done.get_result(block=True, timeout=10_000) == {"rowcount": 2}
    slow = actors.sql_task.send("SELECT pg_sleep(3)", timeout_ms=100)
    with pytest.raises(ResultFailure, match="statement_timeout of 100 ms"):
        slow.get_result(block=True, timeout=10_000)


def test_cache_rotation_evicts_least_recently_used(service: LlmService, llm_db: str) -> None:
    for text in ("old", "mid", "new"):
        service.embed([text])
        time.sleep(0.01)
    service.embed(["old"])  # a hit: "old" is now the most recently used
    settings = service.settings.model_copy(update={"llm_cache_max_entries": 2})
    assert llm_cache.rotate(service.pool, settings)["evicted"] == 1
    left = {r[0]["text"] for r in rows(llm_db, "SELECT input FROM neuron_tasks.llm_cache")}
    assert left == {"old", "new"}
    with psycopg.connect(llm_db, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.llm_cache SET expires_at = now() WHERE input->>'text' = 'new'")
    assert llm_cache.rotate(service.pool, settings)["expired"] == 1
    assert llm_cache.clear(service.pool) == 1


def test_results_backend_ttl_and_purge(llm_db: str) -> None:
    from dramatiq.message import Message
    from dramatiq.results.errors import ResultMissing

    from neuron_tasks.core.results import PostgresResultBackend

    backend = PostgresResultBackend(llm_db)
    try:
        short, long = (Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}) for _ in range(2))
        backend.store_result(short, {"v": 1}, ttl=100)
        backend.store_result(long, [1, 2], ttl=60_000)
        assert backend.get_result(short) == {"v": 1} and backend.get_result(long) == [1, 2]
        time.sleep(0.2)
        with pytest.raises(ResultMissing):
            backend.get_result(short)
        assert backend.purge_expired() == 1 and backend.get_result(long) == [1, 2]
    finally:
        backend.close()


def test_llm_usage_is_charged_to_the_tenant_budget(llm_db: str) -> None:
    import psycopg

    from neuron_tasks.llm.usage import UsageRow, record_usage_many

    with psycopg.connect(llm_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.tenant_usage")
        record_usage_many(conn, [UsageRow("acme", 120, operation="complete"), UsageRow("acme", 30),
                                 UsageRow(None, 50), UsageRow("beta", 0, cached=True)], wait_flush=False)
        charged = conn.execute("SELECT tenant, tokens, jobs FROM neuron_tasks.tenant_usage ORDER BY tenant").fetchall()
        assert charged == [("acme", 150, 2)]
        assert conn.execute("SELECT count(*) FROM neuron_tasks.llm_usage WHERE tenant = 'acme' "
                            "AND charged_at IS NOT NULL").fetchone() == (2,)
