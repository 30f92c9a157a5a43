"""The tuner on a real index: raises ef when recall is low, lowers it when recall is comfortably
above and latency high, records decisions, and every searcher picks up the new ef."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from neuron_tasks.vectors import Vectors
from neuron_tasks.vectors.tuner import tune_index
from tests.integration.test_vectors import clustered, make, vdb  # noqa: F401 - fixture

pytest.importorskip("hnswlib")


@pytest.fixture
def hard(vdb: str) -> Iterator[tuple[Vectors, np.ndarray]]:  # noqa: F811
    """An index where ef=10 misses recall 0.95 (low M and ef_construction), with sampled queries."""
    v = make(vdb, tuner_latency_queries=50)
    x = clustered(6000, 24, seed=7)
    v.create_index("t", dim=24, space="l2", m=6, ef_construction=30, ef_search=10)
    v.add("t", range(6000), x)
    rng = np.random.default_rng(1)
    for i in rng.integers(0, 6000, 120):
        v.search("t", x[i] + rng.normal(size=24).astype(np.float32), k=10)
    v.flush_metrics()
    yield v, x
    v.close()


def decisions(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT old_value, new_value, strategy, alert, evaluations, reason, samples "
                            "FROM neuron_tasks.vector_tuner_decisions ORDER BY id").fetchall()


def test_raises_ef_when_recall_below_target(hard: tuple[Vectors, np.ndarray], vdb: str) -> None:  # noqa: F811
    v, _ = hard
    d = tune_index(v, "t", strategy="step")
    assert d.before is not None and d.before.recall < 0.95
    assert d.new_ef == 12  # the original step strategy's x1.2
    d = tune_index(v, "t")  # the measured search
    assert d.new_ef > 12 and d.after is not None and d.after.recall >= 0.95
    assert d.alert is None and d.evaluations <= 10
    assert v.info("t")["ef_search"] == d.new_ef
    rows = decisions(vdb)
    assert [(r[0], r[1], r[2]) for r in rows] == [(10, 12, "step"), (12, d.new_ef, "search")]
    assert rows[1][6] == 120
    # The samples now carry the recall they were served with (the stats view shows it).
    stats = v.stats("t")[0]
    assert stats["recall_at_10"] is not None and stats["recall_at_10"] < 0.95 and stats["recall_at_100"] is not None


def test_lowers_ef_when_recall_high_and_latency_high(hard: tuple[Vectors, np.ndarray], vdb: str) -> None:  # noqa: F811
    v, _ = hard
    with psycopg.connect(vdb, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.vector_indexes SET ef_search = 400, target_latency_ms = 0.0001")
    v.refresh(v.state("t"))
    d = tune_index(v, "t", strategy="step")
    assert d.before is not None and d.before.recall >= 0.95 and d.new_ef == 320  # x0.8
    d = tune_index(v, "t")
    # The cheapest ef meeting recall is far below 320, yet no ef meets 0.0001 ms: recall wins, alert raised.
    assert d.new_ef < 320 and d.after is not None and d.after.recall >= 0.95
    assert d.alert is not None and v.info("t")["alert"] == d.alert
    with psycopg.connect(vdb, autocommit=True) as conn:
        conn.execute("UPDATE neuron_tasks.vector_indexes SET target_latency_ms = 1000")
    d2 = tune_index(v, "t")
    assert d2.alert is None and v.info("t")["alert"] is None


def test_searchers_pick_up_new_ef(hard: tuple[Vectors, np.ndarray], vdb: str) -> None:  # noqa: F811
    v, x = hard
    searcher = make(vdb)
    try:
        assert searcher.search("t", x[0], k=10).ef == 10
        d = tune_index(v, "t")
        assert d.changed
        published = time.monotonic()
        while searcher.search("t", x[0], k=10).ef != d.new_ef:
            assert time.monotonic() - published < 5, "searcher did not pick up the new ef"
            time.sleep(0.05)
        assert time.monotonic() - published < 1.5  # within a second (sync every 0.2 s here)
    finally:
        searcher.close()


def test_not_enough_samples_no_decision(vdb: str) -> None:  # noqa: F811
    v = make(vdb, tuner_min_samples=50)
    try:
        v.create_index("e", dim=4, space="l2")
        v.add("e", range(10), np.eye(10, 4, dtype=np.float32))
        d = tune_index(v, "e")
        assert not d.changed and "need 50" in d.reason and decisions(vdb) == []
    finally:
        v.close()


@pytest.fixture
def tuner_actors(broker: object, vdb: str) -> Iterator[object]:  # noqa: F811
    """neuron_tasks.vectors.tuner_actors declared on this test's broker, its client on the test database."""
    import importlib
    import sys

    from neuron_tasks import vectors

    name = "neuron_tasks.vectors.tuner_actors"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    vectors.set_client(make(vdb, tuner_latency_queries=50))
    yield module
    vectors.client().close()
    vectors.set_client(None)


def test_tuner_actor_runs_on_a_worker(hard: tuple[Vectors, np.ndarray], tuner_actors: object, worker: object,
                                      broker: object, vdb: str) -> None:  # noqa: F811
    msg = tuner_actors.tune_vector_indexes.send()  # type: ignore[attr-defined]
    broker.join(msg.queue_name, timeout=60_000)  # type: ignore[attr-defined]
    rows = decisions(vdb)
    assert len(rows) == 1 and rows[0][0] == 10 and rows[0][1] > 10
    hard[0].refresh(hard[0].state("t"))
    assert hard[0].state("t").ef == rows[0][1]
