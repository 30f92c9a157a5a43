"""Every option and payload is checked where it enters, by one rule set (neuron_tasks/core/options.py,
mirrored by SQL enqueue in schema/011), runtime settings apply to producers, times stay readable,
and a worker survives whatever got in anyway: it is dead-lettered with the reason."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import psycopg
import pytest
from dramatiq.message import Message
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from starlette.testclient import TestClient
from typer.testing import CliRunner

from neuron_tasks import PostgresBroker, Settings
from neuron_tasks.core import runtime
from neuron_tasks.core.options import RULES, check_name
from neuron_tasks.core.tenancy import set_tenant
from neuron_tasks.core.topics import set_topic
from neuron_tasks.dashboard.app import create_app
from neuron_tasks.dashboard.settings import DashboardSettings
from neuron_tasks.db import make_pool
from neuron_tasks.errors import InvalidOption, MessageTooLarge, NeuronTasksError, QueueFull, UnknownTenant

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.03)


@contextmanager
def dashboard(url: str) -> Iterator[TestClient]:
    """The dashboard app on the test database, asked by the name it answers to (127.0.0.1:port)."""
    pool = make_pool(url, max_size=4, name="neuron_tasks-dashboard-test")
    try:
        app = create_app(pool, DashboardSettings())
        with TestClient(app, base_url=f"http://127.0.0.1:{DashboardSettings().dashboard_port}") as c:
            yield c
    finally:
        pool.close()


@contextmanager
def runtime_setting(url: str, key: str, value: str) -> Iterator[None]:
    """`neuron-tasks config set KEY VALUE` for the block (runtime settings outlive the tables tests empty)."""
    with psycopg.connect(url, autocommit=True) as conn:
        runtime.set_value(conn, key, value)
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            runtime.reset_value(conn, key)


def sql_enqueue(url: str, queue: str, actor: str, args: Any = (), kwargs: Any = None, options: Any = None) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT neuron_tasks.enqueue(%s, %s, %s, %s, %s)",
                           (queue, actor, Jsonb(list(args)), Jsonb(kwargs or {}), Jsonb(options or {}))).fetchone()
    assert row is not None
    return str(row[0])


def cli(url: str, *args: str) -> Any:
    from neuron_tasks.cli.app import app

    return CliRunner().invoke(app, ["--database-url", url, *args])


def insert_raw(url: str, actor: str, *, args: Any = (), kwargs: Any = None, options: Any = None,
               queue: str = "default") -> str:
    """A row no enqueue would write: the payload is taken as given."""
    message_id = str(uuid.uuid4())
    payload = json.dumps({"queue_name": queue, "actor_name": actor, "args": list(args), "kwargs": kwargs or {},
                          "options": {} if options is None else options, "message_id": message_id,
                          "message_timestamp": int(time.time() * 1000)}).encode()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, payload)"
                     " VALUES (%s, %s, %s, %s)", (message_id, queue, actor, payload))
    return message_id


def outcome(url: str, message_id: str) -> tuple[str, str | None] | None:
    """('finished', None), ('failed', last_error) or ('retrying', last_error) once the message got there."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT state, last_error FROM neuron_tasks.messages WHERE message_id = %s",
                           (message_id,)).fetchone()
        if row is None:
            done = conn.execute("SELECT 1 FROM neuron_tasks.messages_history WHERE message_id = %s",
                                (message_id,)).fetchone()
            return ("finished", None) if done else None
    state, error = row
    if state in ("failed", "retrying") and error:
        return (str(state), str(error))
    return None


# -- Python enqueue ------------------------------------------------------------------------------

def test_python_enqueue_refuses_what_no_worker_could_use(broker: PostgresBroker) -> None:
    @dramatiq.actor(queue_name="checks")
    def takes(*args: Any, **kwargs: Any) -> None: ...

    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: takes.send_with_options(throws="ValueError"), "option throws='ValueError' must be an exception"),
        (lambda: takes.send_with_options(max_retries="3"), "option max_retries='3' must be an integer"),
        (lambda: takes.send_with_options(retries="x"), "option retries='x'"),
        (lambda: takes.send_with_options(time_limit=float("inf")), "option time_limit=inf"),
        (lambda: takes.send_with_options(min_backoff=2.5), "option min_backoff=2.5"),
        (lambda: takes.send_with_options(eta=1_700_000_000_000), "pass delay"),
        (lambda: takes.send_with_options(deadline=float("inf")), "option deadline=inf"),
        (lambda: takes.send_with_options(deadline=10**20), "option deadline="),
        (lambda: takes.send_with_options(deadline="infinity"), "option deadline='infinity'"),
        (lambda: takes.send_with_options(delay=float("nan")), "delay=nan"),
        (lambda: takes.send_with_options(delay=10**20), "delay="),
        (lambda: takes.send_with_options(tenant="acme\n"), "is not a valid name"),
        (lambda: takes.send(float("nan")), "args[0] holds nan"),
        (lambda: takes.send(1, [2, {"x": float("inf")}]), "args[1][1]['x'] holds inf"),
        (lambda: takes.send(x=float("-inf")), "kwargs['x'] holds -inf"),
        (lambda: takes.send(object()), "cannot be encoded"),
        (lambda: takes.send(10**5000), "cannot be encoded"),
        (lambda: broker.enqueue(Message(queue_name="bad queue", actor_name="takes", args=(), kwargs={},
                                        options={})), "queue name 'bad queue'"),
        (lambda: broker.enqueue(Message(queue_name="q\n", actor_name="takes", args=(), kwargs={}, options={})),
         "queue name"),
        (lambda: broker.enqueue(Message(queue_name="checks", actor_name="", args=(), kwargs={}, options={})),
         "actor name ''"),
        (lambda: takes.send_with_options(on_failure=""), "must be an actor name"),
        (lambda: broker.enqueue_many([takes.message(1), takes.message_with_options(args=(2,), max_retries=-1)]),
         "option max_retries=-1"),
    ]
    for call, needle in cases:
        with pytest.raises(InvalidOption) as caught:
            call()
        assert needle in str(caught.value), (needle, str(caught.value))
    with psycopg.connect(broker.url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM neuron_tasks.messages").fetchone() == (0,)
    takes.send_with_options(args=(1.5, None, "x"), max_retries=0, deadline=0, tenant="acme", delay=10,
                            pipe_target=takes.message(2).asdict(), custom={"a": [1, 2]})


def test_tenant_and_topic_names_with_a_newline_are_refused(broker: PostgresBroker) -> None:
    for bad in ("acme\n", "acme\nx", "\nacme", "a b"):
        with pytest.raises(InvalidOption, match="not a valid name"):
            check_name("tenant", bad)
        with pytest.raises(InvalidOption, match="not a valid name"):
            set_tenant(broker.pool, bad, qps=5)
        with pytest.raises(InvalidOption, match="not a valid name"):
            set_topic(broker.pool, bad, concurrency=1)
    for bad_qps in (float("nan"), float("inf"), 1e-300, 0, -1, True):
        with pytest.raises(InvalidOption, match="qps"):
            set_tenant(broker.pool, "acme", qps=bad_qps)
    with pytest.raises(InvalidOption, match="tokens_per_day"):
        set_tenant(broker.pool, "acme", tokens_per_day=2**70)
    with pytest.raises(InvalidOption, match="delay"):
        set_topic(broker.pool, "t", delay_s=1e300)


# -- SQL enqueue ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"eta": "infinity"}, "option eta="),
        ({"eta": "-infinity"}, "option eta="),
        ({"eta": "50000-01-01"}, "option eta="),
        ({"eta": 1e20}, "option eta="),
        ({"delay": 1e20}, "option delay="),
        ({"delay": -5}, "option delay="),
        ({"delay": "5"}, "option delay="),
        ({"deadline": "infinity"}, "option deadline="),
        ({"deadline": "-infinity"}, "option deadline="),
        ({"throws": "ValueError"}, "option throws="),
        ({"max_retries": "3"}, "option max_retries="),
        ({"max_retries": 3.5}, "option max_retries="),
        ({"retries": "x"}, "option retries="),
        ({"time_limit": "soon"}, "option time_limit="),
        ({"tenant": "acme\n"}, "option tenant="),
        ({"tenant": 5}, "option tenant="),
        ({"priority": "high"}, "bad option value"),
        ({"on_duplicate": "ignore"}, "option on_duplicate="),
        ({"pipe_target": {"queue_name": "q"}}, "option pipe_target="),
    ],
)
def test_sql_enqueue_refuses_what_no_worker_could_use(clean_db: str, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape(needle)):
        sql_enqueue(clean_db, "checks", "takes", options=options)
    with psycopg.connect(clean_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM neuron_tasks.messages").fetchone() == (0,)


def test_sql_enqueue_keeps_its_valid_options(clean_db: str) -> None:
    mid = sql_enqueue(clean_db, "checks", "takes", [1], options={
        "priority": 4, "delay": 1500.5, "deadline": "2030-01-02T03:04:05+00:00", "max_retries": 0, "tenant": None,
        "custom": {"anything": [1, "x"]}})
    mid2 = sql_enqueue(clean_db, "checks", "takes", options={"eta": int(time.time() * 1000) + 60_000})
    with psycopg.connect(clean_db, autocommit=True) as conn:
        row = conn.execute("SELECT priority, eta > now() + interval '1 second', deadline, payload"
                           " FROM neuron_tasks.messages WHERE message_id = %s", (mid,)).fetchone()
        eta_ahead = conn.execute("SELECT eta > now() + interval '50 seconds' FROM neuron_tasks.messages"
                                 " WHERE message_id = %s", (mid2,)).fetchone()
    assert row is not None and row[:2] == (4, True) and row[2].year == 2030
    options = json.loads(bytes(row[3]))["options"]
    assert options["deadline"] == 1_893_553_445_000 and "delay" not in options and options["custom"] == {
        "anything": [1, "x"]}
    assert eta_ahead == (True,)


# -- one rule set: Python and SQL give the same answers --------------------------------------------

SAMPLES: list[Any] = [None, True, False, 0, 1, -1, 7, 2.5, 5.0, 2**31, -(2**31), 2**53, 10**30, 1e30, "", "x",
                      "acme", "acme\n", "a b", "existing", "ValueError", "2030-01-01T00:00:00+00:00", "infinity",
                      1_700_000_000_000, [], [1], {}, {"a": 1},
                      {"queue_name": "q", "actor_name": "a", "args": [], "kwargs": {}, "options": {}},
                      {"queue_name": "q", "actor_name": "a", "args": [], "kwargs": {}, "options": {"retries": "x"}}]


def _python_answer(broker: PostgresBroker, key: str, value: Any) -> str | None:
    message = Message(queue_name="parity_py", actor_name="parity_actor", args=(), kwargs={}, options={key: value})
    try:
        broker.enqueue(message)
    except NeuronTasksError as exc:
        return str(exc)
    return None


def _sql_answer(url: str, key: str, value: Any) -> str | None:
    try:
        sql_enqueue(url, "parity_sql", "parity_actor", options={key: value})
    except psycopg.Error as exc:
        return str(exc)
    return None


def test_python_and_sql_enqueue_apply_the_same_rules(broker: PostgresBroker) -> None:
    set_topic(broker.pool, "acme")
    differ = []
    checked = 0
    for key in [*RULES, "custom"]:
        if key in ("eta", "throws"):
            continue  # eta: a timestamp from SQL, set by brokers in Python; throws: no JSON value is one
        for value in SAMPLES:
            python, sql = _python_answer(broker, key, value), _sql_answer(broker.url, key, value)
            checked += 1
            refused_by_rule = python is not None and f"option {key}=" in python and key in RULES
            if (python is None) != (sql is None) or (
                    refused_by_rule and (RULES[key].hint not in str(python) or RULES[key].hint not in str(sql))):
                differ.append((key, value, python, sql))  # not the same answer, or not in the same words
    assert not differ, "\n".join(map(repr, differ))
    assert checked > 500


# -- NaN, Infinity and size ------------------------------------------------------------------------

def test_max_message_bytes_holds_for_sql_and_python_and_follows_the_runtime_setting(settings: Settings) -> None:
    url = settings.database_url
    assert url is not None
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="over the limit of 1048576 bytes"):
        sql_enqueue(url, "checks", "takes", ["x" * 1_100_000])
    producer = PostgresBroker(settings=settings)
    try:
        with runtime_setting(url, "max_message_bytes", "2000"):
            with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="over the limit of 2000 bytes"):
                sql_enqueue(url, "checks", "takes", ["x" * 3000])
            sql_enqueue(url, "checks", "takes", ["x" * 1000])
            with pytest.raises(MessageTooLarge, match="over the limit of 2000 bytes"):
                producer.enqueue(Message(queue_name="checks", actor_name="takes", args=("x" * 3000,), kwargs={},
                                         options={}))
            result = cli(url, "enqueue", "takes", "--queue", "checks", "--args", json.dumps(["x" * 3000]))
            assert result.exit_code != 0 and "over the limit of 2000 bytes" in result.output
        producer.enqueue(Message(queue_name="checks", actor_name="takes", args=("x" * 3000,), kwargs={}, options={}))
    finally:
        producer.close()


def test_cli_enqueue_refuses_nan_and_bad_names_clearly(clean_db: str) -> None:
    for args, needle in ((["--args", "[1, NaN]"], "args[1] holds nan"),
                         (["--kwargs", '{"x": Infinity}'], "kwargs['x'] holds inf"),
                         (["--tenant", "acme\n"], "not a valid name"),
                         (["--queue", "bad queue"], "queue name"),
                         (["--delay", str(10**15)], "delay")):
        result = cli(clean_db, "enqueue", "takes", *args)
        assert result.exit_code != 0, result.output
        assert needle in result.output, (needle, result.output)
    result = cli(clean_db, "enqueue", "takes", "--args", "[1.5]", "--tenant", "acme")
    assert result.exit_code == 0, result.output


# -- runtime settings apply to producers --------------------------------------------------------------

def test_runtime_queue_depth_and_tenant_policy_apply_to_python_sql_and_cli(settings: Settings) -> None:
    url = settings.database_url
    assert url is not None
    producer = PostgresBroker(settings=settings)  # a producer: no worker runs in it
    message = Message(queue_name="depth", actor_name="takes", args=(), kwargs={}, options={})
    try:
        with runtime_setting(url, "queue_depth", "2"):
            producer.enqueue(message)
            sql_enqueue(url, "depth", "takes")
            with pytest.raises(QueueFull, match="queue 'depth' is full: 2 messages"):
                producer.enqueue(Message(queue_name="depth", actor_name="takes", args=(), kwargs={}, options={}))
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="is full"):
                sql_enqueue(url, "depth", "takes")
            result = cli(url, "enqueue", "takes", "--queue", "depth")
            assert result.exit_code != 0 and "is full" in result.output, result.output
        with runtime_setting(url, "tenant_policy", "refuse"):
            tenant_message = Message(queue_name="t", actor_name="takes", args=(), kwargs={}, options={"tenant": "who"})
            with pytest.raises(UnknownTenant):
                producer.enqueue(tenant_message)
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown tenant who"):
                sql_enqueue(url, "t", "takes", options={"tenant": "who"})
            result = cli(url, "enqueue", "takes", "--queue", "t", "--tenant", "who")
            assert result.exit_code != 0 and "unknown tenant" in result.output, result.output
            set_tenant(producer.pool, "who")
            producer.policies.invalidate()
            producer.enqueue(tenant_message)
            sql_enqueue(url, "t", "takes", options={"tenant": "who"})
    finally:
        producer.close()


def test_a_producer_sees_a_setting_changed_by_another_process(settings: Settings) -> None:
    """Without forget_values (another process ran `config set`): within the two-second cache."""
    url = settings.database_url
    assert url is not None
    producer = PostgresBroker(settings=settings)
    try:
        producer.enqueue(Message(queue_name="other", actor_name="takes", args=("x" * 3000,), kwargs={}, options={}))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT neuron_tasks.set_setting('max_message_bytes', '1000')")

        def refused() -> bool:
            try:
                producer.enqueue(Message(queue_name="other", actor_name="takes", args=("x" * 3000,), kwargs={},
                                         options={}))
            except MessageTooLarge:
                return True
            return False

        wait_for(refused, "the producer to apply max_message_bytes=1000", timeout=30)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT neuron_tasks.reset_setting('max_message_bytes')")
        runtime.forget_values()
        producer.close()


# -- the worker survives what got in anyway ----------------------------------------------------------

def test_worker_dead_letters_rows_inserted_raw_with_the_reason_and_keeps_serving(
    broker: PostgresBroker, worker: dramatiq.Worker
) -> None:
    ran: list[str] = []

    @dramatiq.actor(max_retries=0)
    def raw_fails(tag: str) -> None:
        ran.append(tag)
        raise ValueError("raw job fails")

    @dramatiq.actor(max_retries=0)
    def raw_ok(tag: str) -> None:
        ran.append(tag)

    hostile = {
        "throws": insert_raw(broker.url, "raw_fails", args=["t"], options={"throws": "ValueError"}),
        "max_retries": insert_raw(broker.url, "raw_fails", args=["m"], options={"max_retries": "3"}),
        "retries": insert_raw(broker.url, "raw_fails", args=["r"], options={"retries": "x"}),
        "min_backoff": insert_raw(broker.url, "raw_fails", args=["b"], options={"min_backoff": "fast"}),
        "time_limit": insert_raw(broker.url, "raw_ok", args=["l"], options={"time_limit": "soon"}),
        "tenant": insert_raw(broker.url, "raw_ok", args=["n"], options={"tenant": {"not": "a name"}}),
        "options": insert_raw(broker.url, "raw_ok", args=["o"], options=[1, 2]),
        "kwargs": insert_raw(broker.url, "raw_ok", args=["k"], kwargs=["x"]),  # type: ignore[arg-type]
        "message_timestamp": insert_raw(broker.url, "raw_ok", args=["s"], options={"deadline": "tomorrow"}),
    }
    for what, message_id in hostile.items():
        state, error = wait_for(lambda m=message_id: outcome(broker.url, m), f"the message with bad {what}")
        assert state == "failed", (what, state, error)
        expected = "deadline" if what == "message_timestamp" else what
        assert error is not None and expected in error and "InvalidMessage" in error, (what, error)
    assert ran == [], "none of them ran"
    raw_ok.send("after")
    wait_for(lambda: "after" in ran, "a normal job after the hostile ones")
    assert all(t.is_alive() for t in worker.workers), "every worker thread lives"


def test_a_failure_that_cannot_be_retried_is_dead_lettered_not_finished(
    broker: PostgresBroker, worker: dramatiq.Worker
) -> None:
    class BrokenRetryAfter(Exception):
        @property
        def retry_after(self) -> float:
            raise RuntimeError("retry_after is broken")

    class InfiniteRetryAfter(Exception):
        retry_after = float("inf")

    @dramatiq.actor(max_retries=0)
    def fails_oddly(kind: str) -> None:
        raise BrokenRetryAfter("odd") if kind == "broken" else InfiniteRetryAfter("inf")

    broken = fails_oddly.send("broken")
    state, error = wait_for(lambda: outcome(broker.url, broken.message_id), "the broken failure recorded")
    assert state == "failed" and error is not None and "retry_after is broken" in error, (state, error)
    infinite = fails_oddly.send_with_options(args=("inf",), max_retries=1)

    def retried() -> tuple[Any, ...] | None:
        # The retry may run again (and fail for good) before a poll sees it waiting: read the row's
        # retry count and eta rather than a passing state.
        with psycopg.connect(broker.url, autocommit=True) as conn:
            row = conn.execute("SELECT retries, eta < now() + interval '36601 days' FROM neuron_tasks.messages"
                               " WHERE message_id = %s", (infinite.message_id,)).fetchone()
        return row if row is not None and row[0] >= 1 else None

    retries, eta_bounded = wait_for(retried, "the infinite retry_after retried")
    assert retries >= 1 and eta_bounded, (retries, eta_bounded)


# -- times stay readable (eta, deadline) -----------------------------------------------------------

def test_infinite_times_cannot_get_in_and_rows_already_in_are_dead_lettered(
    broker: PostgresBroker, worker: dramatiq.Worker
) -> None:
    url = broker.url
    insert = ("INSERT INTO neuron_tasks.messages (message_id, queue_name, actor_name, eta, deadline, payload)"
              " VALUES (%s, 'default', 'timely', %s::timestamptz, %s::timestamptz, %s)")
    with psycopg.connect(url, autocommit=True) as conn:
        for eta, deadline in (("infinity", None), ("-infinity", None), ("50000-01-01", None), ("now", "infinity")):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, (str(uuid.uuid4()), eta, deadline, b"{}"))
    # Rows that got in before the range was enforced (migration 011 finds them and dead-letters them),
    # on a queue no worker consumes meanwhile.
    # Its statements up to the end of the range checks only: the functions after them are altered by
    # later migrations (012 makes enqueue SECURITY DEFINER), which replacing them here would undo.
    migration = (ROOT / "schema" / "011_input_checks.sql").read_text().split("-- (end of the time range checks)")[0]
    bad: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE neuron_tasks.messages DROP CONSTRAINT messages_eta_range,"
                     " DROP CONSTRAINT messages_deadline_range")
        try:
            for eta, deadline in (("infinity", None), ("-infinity", None), ("now", "-infinity")):
                message_id = str(uuid.uuid4())
                payload = Message(queue_name="held", actor_name="timely", args=(), kwargs={}, options={},
                                  message_id=message_id).encode()
                conn.execute(insert.replace("'default'", "'held'"), (message_id, eta, deadline, payload))
                bad.append(message_id)
        finally:
            conn.execute(migration)
    done: list[int] = []

    @dramatiq.actor
    def timely(n: int = 0) -> None:
        done.append(n)

    for message_id in bad:
        state, error = wait_for(lambda m=message_id: outcome(url, m), "the out-of-range row dead-lettered")
        assert state == "failed" and error is not None and "out of range" in error
    timely.send(7)
    wait_for(lambda: 7 in done, "a normal job on the same queue")
    with dashboard(url) as c:
        for page in ("/", "/messages", f"/messages/{bad[0]}", "/dead-letters"):
            assert c.get(page).status_code == 200, page
        assert "neuron_tasks_database_up 1.0" in c.get("/metrics").text


# -- the property: whatever comes in, it is refused clearly or it ends ------------------------------

JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["ValueError", "acme", "acme\n", "infinity", "2030-01-01T00:00:00+00:00", "1bad", "prop_ok"]),
)
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=8)
HUGE = "<an integer of 5000 digits>"  # stands for 10**5000 (which hypothesis could not print)
HOSTILE = st.one_of(JSON, JSON, JSON, st.sampled_from([float("nan"), float("inf"), -float("inf"), HUGE]))


def _huge(value: Any) -> Any:
    """The case's values with HUGE made the integer it stands for."""
    if value == HUGE:
        return 10**5000
    if isinstance(value, list):
        return [_huge(v) for v in value]
    if isinstance(value, dict):
        return {k: _huge(v) for k, v in value.items()}
    return value
#: Values some option accepts, so that many cases get past enqueue and run.
LIKELY = st.sampled_from([None, True, False, 0, 1, 3, 250, 1500, 2**31, "acme", "prop_ok", "existing", "k1",
                          1_700_000_000_000, "2030-01-01T00:00:00+00:00"])
OPTION_KEYS = st.sampled_from([*RULES, "custom", "prop_topic"])
CASE = st.fixed_dictionaries({
    "path": st.sampled_from(["python", "sql", "raw"]),
    "actor": st.sampled_from(["prop_ok", "prop_ok", "prop_fails", "prop_nobody", "1bad", "bad-name"]),
    "queue": st.sampled_from(["prop"] * 6 + ["bad queue", "prop\n"]),
    "args": st.lists(st.one_of(JSON, JSON, HOSTILE), max_size=3),
    "options": st.dictionaries(OPTION_KEYS, st.one_of(LIKELY, LIKELY, HOSTILE), max_size=3),
})


@pytest.fixture
def prop_worker(broker: PostgresBroker) -> Iterator[dramatiq.Worker]:
    """An in-process worker on the queue the property test uses; after every example it must
    still serve a plain job."""
    served = threading.Event()

    @dramatiq.actor(queue_name="prop")
    def prop_plain() -> None:
        served.set()

    @dramatiq.actor(queue_name="prop", max_retries=0)
    def prop_ok(*args: Any, **kwargs: Any) -> None: ...

    @dramatiq.actor(queue_name="prop", max_retries=0)
    def prop_fails(*args: Any, **kwargs: Any) -> None:
        raise ValueError("prop_fails fails")

    set_topic(broker.pool, "prop_topic")
    broker.emit_after("process_boot")
    w = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    w.start()
    yield w
    try:
        prop_plain.send()
        assert served.wait(30), "the worker still serves a plain job after the hostile ones"
        assert all(t.is_alive() for t in w.workers), "every worker thread lives"
    finally:
        w.stop(timeout=5000)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return False
    return True


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # the worker's jitter uses random
@hsettings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(case=CASE)
def test_every_message_is_refused_clearly_or_ends_finished_retried_or_dead_lettered(
    broker: PostgresBroker, prop_worker: dramatiq.Worker, case: dict[str, Any]
) -> None:
    options = {("topic" if k == "prop_topic" else k): ("prop_topic" if k == "prop_topic" else _huge(v))
               for k, v in case["options"].items()}
    args, queue, actor, path = _huge(case["args"]), case["queue"], case["actor"], case["path"]
    message_id: str | None = None
    if path == "python":
        try:
            message_id = broker.enqueue(Message(queue_name=queue, actor_name=actor, args=tuple(args), kwargs={},
                                                options=options)).message_id
        except NeuronTasksError as exc:
            assert str(exc), "a clear error"
            event(f"python: refused ({type(exc).__name__})")
    elif path == "sql":
        if not (_jsonable(args) and _jsonable(options)):
            return  # SQL cannot even be given NaN, Infinity or such integers as JSON
        try:
            message_id = sql_enqueue(broker.url, queue, actor, args, options=options)
        except psycopg.errors.UntranslatableCharacter:
            pass  # PostgreSQL's JSON holds no \u0000: refused before neuron_tasks.enqueue runs
        except psycopg.Error as exc:
            assert exc.sqlstate in ("22023", "53400", "54000", "23505"), (exc.sqlstate, str(exc))
            assert str(exc).startswith("neuron_tasks.enqueue: "), str(exc)
            event(f"sql: refused ({exc.sqlstate})")
    else:
        if not (_jsonable(args) and _jsonable(options)) or queue != "prop":
            return  # a raw row: JSON as PostgreSQL stores it, on the queue the worker consumes
        # Not `eta`: the consumer would leave it in the message (see the report on consumer._decode).
        options.pop("eta", None)
        message_id = insert_raw(broker.url, actor, args=args, options=options, queue=queue)
    if message_id is not None:
        with psycopg.connect(broker.url, autocommit=True) as conn:
            later = conn.execute("SELECT eta > now() + interval '1 second' FROM neuron_tasks.messages"
                                 " WHERE message_id = %s", (message_id,)).fetchone()
            if later == (True,):  # delayed into the future: it waits, readable; not run in this test
                conn.execute("DELETE FROM neuron_tasks.messages WHERE message_id = %s", (message_id,))
                return
        state, error = wait_for(lambda: outcome(broker.url, message_id), f"message {message_id} of {case}",
                                timeout=30)
        assert state == "finished" or error, (state, error)
        event(f"{path}: {state}")
        with psycopg.connect(broker.url, autocommit=True) as conn:  # a retrying one stops here
            conn.execute("DELETE FROM neuron_tasks.messages WHERE message_id = %s", (message_id,))
    assert all(t.is_alive() for t in prop_worker.workers), "every worker thread lives"
