"""The embedding path's fast parts on a real Postgres: compact float32 results (f32 and array
encodings) that carry exactly the cached vectors, the one-round-trip cache and usage write of a
group, the batcher's group that is full once every worker thread is in it, embed jobs that are
retried without losing or doubling a usage row, and results stored without compression. The
local model is the real one; the jobs test uses the fake HTTP provider (it scripts a 500)."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import dramatiq
import numpy as np
import psycopg
import pytest
from dramatiq.results.errors import ResultFailure

from neuron_tasks import PostgresBroker, db
from neuron_tasks.llm.batcher import Batcher
from neuron_tasks.llm.encoding import embeddings_of
from neuron_tasks.llm.errors import InvalidRequest
from neuron_tasks.llm.service import EmbedRequest, LlmService
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.testing import truncate
from neuron_tasks.testing.fake_llm import FakeProvider

TEXTS = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly tax filings are due in April."]


@pytest.fixture
def llm_db(clean_db: str) -> str:
    truncate(clean_db, "llm")
    return clean_db


@pytest.fixture
def local(llm_db: str) -> Iterator[LlmService]:
    pool = db.make_pool(llm_db, max_size=2)
    yield LlmService(pool, LlmSettings(llm_provider="local"))
    pool.close()


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_f32_and_array_results_carry_the_cached_vectors_exactly(local: LlmService, llm_db: str) -> None:
    packed = local.embed(TEXTS, encoding="f32")
    assert packed["encoding"] == "f32" and (packed["count"], packed["dims"]) == (3, 384) and packed["cached"] == 0
    assert "embeddings" not in packed and isinstance(packed["embeddings_f32"], str)
    computed = embeddings_of(packed)
    assert computed.dtype == np.float32 and computed.shape == (3, 384)
    assert np.allclose(np.linalg.norm(computed, axis=1), 1.0, atol=1e-4)
    assert computed[0] @ computed[1] > computed[0] @ computed[2] + 0.2
    # the cache holds exactly those float32 bytes, and a hit in any encoding gives them back
    stored = dict(rows(llm_db, "SELECT input->>'text', value FROM neuron_tasks.llm_cache"))
    assert all(bytes(stored[t]) == computed[i].tobytes() for i, t in enumerate(TEXTS))
    hit = local.embed(TEXTS, encoding="array")
    assert hit["cached"] == 3 and isinstance(hit["embeddings"], np.ndarray)
    assert np.array_equal(hit["embeddings"], computed) and np.array_equal(embeddings_of(hit), computed)
    as_json = local.embed(TEXTS)  # the default: lists of floats, rounded to 7 decimals
    assert as_json["cached"] == 3 and isinstance(as_json["embeddings"][0][0], float)
    assert np.abs(embeddings_of(as_json) - computed).max() <= 1e-7
    assert embeddings_of(local.embed([], encoding="f32")).shape == (0, 0)
    with pytest.raises(InvalidRequest, match="encoding must be one of"):
        local.embed(TEXTS, encoding="f16")


def test_a_group_writes_every_cache_entry_and_usage_row(local: LlmService, llm_db: str) -> None:
    with psycopg.connect(llm_db, autocommit=True) as conn:
        conn.execute("DELETE FROM neuron_tasks.tenant_usage")
    out = local.embed_many([
        EmbedRequest(TEXTS[:2], tenant="acme", message_id="m1"),
        EmbedRequest([TEXTS[1], TEXTS[2]], tenant="acme", message_id="m2", encoding="f32"),
        EmbedRequest([TEXTS[0]], tenant="beta", message_id="m3", store=False),
        EmbedRequest(["  A cat   sits on the mat. "], message_id="m4", encoding="array"),  # same once normalised
    ])
    assert [o["cached"] for o in out] == [0, 0, 0, 0]
    exact = embeddings_of(out[1])  # f32: the model's float32 vectors; json rounds them to 7 decimals
    assert np.abs(embeddings_of(out[0])[1] - exact[0]).max() <= 1e-7
    assert np.abs(embeddings_of(out[3])[0] - embeddings_of(out[0])[0]).max() <= 1e-7
    assert sorted(t for (t,) in rows(llm_db, "SELECT input->>'text' FROM neuron_tasks.llm_cache")) == sorted(TEXTS)
    usage = rows(llm_db, "SELECT message_id, tenant, tokens, cached FROM neuron_tasks.llm_usage ORDER BY message_id")
    assert [(u[0], u[1]) for u in usage] == [("m1", "acme"), ("m2", "acme"), ("m3", "beta"), ("m4", None)]
    assert sum(u[2] for u in usage) > 0 and not any(u[3] for u in usage)
    charged = dict(rows(llm_db, "SELECT tenant, tokens FROM neuron_tasks.tenant_usage"))
    assert charged["acme"] == usage[0][2] + usage[1][2] and set(charged) <= {"acme", "beta"}
    again = local.embed_many([EmbedRequest(TEXTS, message_id="m5")])[0]
    assert again["cached"] == 3 and again["tokens"] == 0
    assert rows(llm_db, "SELECT cached, tokens FROM neuron_tasks.llm_usage WHERE message_id = 'm5'") == [(True, 0)]


def test_cache_refresh_recomputes_entries_about_to_expire(local: LlmService, llm_db: str) -> None:
    first = embeddings_of(local.embed(TEXTS[:2], encoding="f32"))
    with psycopg.connect(llm_db, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.llm_cache SET expires_at = now() + interval '1 minute' "
                     "WHERE input->>'text' = %s", (TEXTS[0],))
    assert local.refresh_cache(within_s=3600) == 1  # only the entry about to expire
    left = rows(llm_db, "SELECT input->>'text', value, expires_at > now() + interval '1 day' "
                        "FROM neuron_tasks.llm_cache ORDER BY input->>'text'")
    assert [(t, fresh) for t, _, fresh in left] == [(TEXTS[0], True), (TEXTS[1], True)]
    again = np.frombuffer(bytes(left[0][1]), dtype=np.float32)  # recomputed alone: equal up to the
    assert np.abs(again - first[0]).max() < 1e-5                   # model's batch-padding noise
    assert rows(llm_db, "SELECT count(*) FROM neuron_tasks.llm_usage WHERE operation = 'embed'") == [(2,)]


def test_a_group_is_full_once_every_worker_thread_is_in_it() -> None:
    calls: list[list[int]] = []

    def run(requests: list[int]) -> list[int]:
        calls.append(list(requests))
        return [r + 1 for r in requests]

    # max 10 per group and a linger of a minute, but only 3 threads can submit: the third closes it
    batcher: Batcher[int] = Batcher(run, max_messages=10, linger_s=60.0, capacity=lambda: 3)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit(i))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: 1, 1: 2, 2: 3} and len(calls) == 1
    unknown: Batcher[int] = Batcher(run, max_messages=2, linger_s=60.0, capacity=lambda: 0)
    assert unknown._limit() == 2  # no worker running: max_messages alone


def test_the_next_group_takes_the_model_while_the_last_one_writes() -> None:
    first_in, second_ran = threading.Event(), threading.Event()
    seen: list[bool] = []

    def run(requests: list[int], release: Callable[[], None]) -> list[int]:
        if requests == [0]:
            release()  # its model part is over; its writes go on beside the next group
            first_in.set()
            seen.append(second_ran.wait(30))
        else:
            second_ran.set()
        return requests

    batcher: Batcher[int] = Batcher(run, max_messages=1, linger_s=0.0, releases=True)
    first = threading.Thread(target=batcher.submit, args=(0,))
    first.start()
    assert first_in.wait(30)
    assert batcher.submit(1) == 1  # ran while the first group was still busy
    first.join(30)
    assert seen == [True] and batcher.calls == 2


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as f:
        yield f


@pytest.fixture
def actors(broker: PostgresBroker, llm_db: str, fake: FakeProvider) -> ModuleType:
    name = "neuron_tasks.llm.actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    module.configure(LlmSettings(llm_provider="http", llm_http_base_url=fake.base_url, llm_batch_size=64,
                                 llm_batch_linger_ms=30), pool=broker.pool)
    return module


def test_embed_jobs_f32_results_retries_and_worker_threads(
    actors: ModuleType, broker: PostgresBroker, fake: FakeProvider, llm_db: str
) -> None:
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while actors.worker_threads() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert actors.worker_threads() == 4
        packed = actors.embed.send(["one", "two"], encoding="f32").get_result(block=True, timeout=15_000)
        plain = actors.embed.send(["one", "two"]).get_result(block=True, timeout=15_000)
        assert plain["cached"] == 2 and embeddings_of(packed).shape == (2, 8)
        assert np.abs(embeddings_of(packed) - embeddings_of(plain)).max() <= 1e-7
        fake.script("500")  # the first model call fails: the job is retried, its usage counted once
        retried = actors.embed.send(["three"], tenant="t1")
        assert embeddings_of(retried.get_result(block=True, timeout=15_000)).shape == (1, 8)
        assert rows(llm_db, f"SELECT count(*) FROM neuron_tasks.llm_usage WHERE message_id = '{retried.message_id}'"
                    ) == [(1,)]
        assert rows(llm_db, f"SELECT retries FROM neuron_tasks.messages_history "
                            f"WHERE message_id = '{retried.message_id}'") == [(1,)]
        big = actors.embed.send([f"text number {i}" for i in range(200)])  # ~16 KB of JSON floats
        assert len(big.get_result(block=True, timeout=15_000)["embeddings"]) == 200
        [(size, compression)] = rows(llm_db, "SELECT octet_length(value), pg_column_compression(value) "
                                             "FROM neuron_tasks.results ORDER BY octet_length(value) DESC LIMIT 1")
        assert size > 8000 and compression is None  # stored as is: compressing cost more than it saved
        bad = actors.embed.send(["x"], encoding="float16")
        with pytest.raises(ResultFailure, match="encoding must be one of json, f32"):
            bad.get_result(block=True, timeout=15_000)
    finally:
        worker.stop(timeout=5000)
    assert actors.worker_threads() == 0
