"""Every check a message passes, in one place.

Python enqueue (`send`, `send_with_options`, `enqueue_many`, both brokers) runs `prepare`; the CLI
runs `check_options` and `check_payload` before its SQL enqueue; `neuron_tasks.enqueue()` in SQL
(schema/011_input_checks.sql, `option_problem_v1`) applies the same `RULES`, and
tests/integration/test_input_validation.py holds the two to the same answers. A worker checks every
claimed message again with `problem_at_worker` (core/middleware/guard.py), so a row that got in
another way (an INSERT by hand, an older producer) is dead-lettered with the reason instead of
breaking a worker thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeGuard

import dramatiq
from dramatiq.actor import Actor
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.encoder import JSONEncoder
from dramatiq.message import Message

from neuron_tasks.config import Settings
from neuron_tasks.core.policies import PolicySource, TopicSettings
from neuron_tasks.errors import InvalidOption, MessageTooLarge, UnknownTenant, UnknownTopic

#: Tenant and topic names (the CHECK of neuron_tasks.tenants and neuron_tasks.topics).
_NAME = re.compile(r"[A-Za-z0-9_.:@/-]{1,200}")
#: Queue names, as SQL enqueue and every worker accept them (a worker consumes only such queues).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
#: Actor names SQL enqueue accepts. Python accepts any name of 1-200 characters (Dramatiq names
#: actors freely, and a worker finds them by name), but SQL takes identifiers only.
ACTOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")
NAME_HINT = "1-200 letters, digits or . _ - : @ /"
QUEUE_HINT = "1-200 letters, digits, dot, dash or underscore"
ACTOR_HINT = "a letter or underscore, then up to 199 letters, digits, dots or underscores"

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: The furthest ahead a delay, an eta or a deadline may lie: 36,600 days (about 100 years).
HORIZON_MS = 36_600 * 86_400_000
#: The fields of a Dramatiq message (`pipe_target` holds one), and those it cannot do without.
MESSAGE_FIELDS = frozenset({"queue_name", "actor_name", "args", "kwargs", "options", "message_id",
                            "message_timestamp"})
MESSAGE_REQUIRED = frozenset({"queue_name", "actor_name", "args", "kwargs", "options"})

Kind = Literal["int", "number", "bool", "name", "actor", "text", "choice", "time", "exceptions", "message",
               "not_here"]


@dataclass(frozen=True, slots=True)
class Rule:
    """What a message option must be. `low`/`high` bound numbers (and text lengths);
    `nullable`: None (JSON null) is accepted and means "not given"."""

    kind: Kind
    hint: str
    low: int | None = None
    high: int | None = None
    nullable: bool = True
    choices: tuple[str, ...] = ()


_MS = "milliseconds, "
#: The options neuron_tasks, Dramatiq and its middleware read, and what each must be. Any other
#: option is carried as given (custom middleware), as long as it is a JSON value without NaN or Infinity.
RULES: dict[str, Rule] = {
    "priority": Rule("int", "must be a 32-bit integer (lower runs first)", INT32_MIN, INT32_MAX, nullable=False),
    "max_retries": Rule("int", f"must be an integer from 0 to {INT32_MAX}", 0, INT32_MAX),
    "retries": Rule("int", f"must be an integer from 0 to {INT32_MAX} (the count of past retries)", 0, INT32_MAX,
                    nullable=False),
    "min_backoff": Rule("int", f"must be {_MS}an integer from 0 to {INT32_MAX}", 0, INT32_MAX, nullable=False),
    "max_backoff": Rule("int", f"must be {_MS}an integer from 0 to {INT32_MAX}", 0, INT32_MAX, nullable=False),
    "time_limit": Rule("number", f"must be {_MS}a number from 1 to {INT32_MAX}", 1, INT32_MAX),
    "max_age": Rule("number", f"must be {_MS}a number from 1 to {HORIZON_MS}", 1, HORIZON_MS),
    "result_ttl": Rule("int", f"must be {_MS}an integer from 1 to {HORIZON_MS}", 1, HORIZON_MS, nullable=False),
    "requeue_timestamp": Rule("int", "must be epoch milliseconds (an integer >= 0)", 0, 2**53),
    "traceback": Rule("text", "must be a string", 0, None),
    "tenant": Rule("name", f"is not a valid name: use {NAME_HINT}"),
    "topic": Rule("name", f"is not a valid name: use {NAME_HINT}"),
    "on_retry_exhausted": Rule("actor", "must be an actor name (a string of 1-200 characters)", 1, 200),
    "on_success": Rule("actor", "must be an actor name (a string of 1-200 characters)", 1, 200),
    "on_failure": Rule("actor", "must be an actor name (a string of 1-200 characters)", 1, 200),
    "unique": Rule("bool", "must be true or false"),
    "pipe_ignore": Rule("bool", "must be true or false"),
    "notify_shutdown": Rule("bool", "must be true or false"),
    "store_results": Rule("bool", "must be true or false"),
    "unique_key": Rule("text", "must be a string of 1-500 characters", 1, 500),
    "on_duplicate": Rule("choice", "must be 'raise' or 'existing'", nullable=False, choices=("raise", "existing")),
    "deadline": Rule("time", "must be epoch milliseconds, an ISO-8601 timestamp or a datetime, "
                             "from 1970 to 36600 days ahead"),
    "delay": Rule("number", f"must be {_MS}a number from 0 to {HORIZON_MS}", 0, HORIZON_MS, nullable=False),
    "eta": Rule("not_here", "is set by brokers, not by messages: pass delay (milliseconds) instead"),
    "throws": Rule("exceptions", "must be an exception class or a tuple of them; "
                                 "from SQL, set throws on the actor instead"),
    "pipe_target": Rule("message", "must be a message as Dramatiq's pipelines write it "
                                   "(queue_name, actor_name, args, kwargs, options)"),
}


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= 100 else text[:97] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(value: Any) -> TypeGuard[int | float]:
    """An int or a float that is neither NaN nor infinite (and not a bool)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def check_name(option: str, value: Any) -> str:
    """A tenant or topic name: 1-200 letters, digits or . _ - : @ / (nothing else, no newline)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidOption(f"option {option}={_shown(value)} is not a valid name: use {NAME_HINT}")
    return value


def check_queue_name(value: Any) -> str:
    """A queue name SQL enqueue and every worker accept."""
    if not isinstance(value, str) or not QUEUE_NAME.fullmatch(q_name(value)):
        raise InvalidOption(f"queue name {_shown(value)} is not valid: use {QUEUE_HINT}")
    return value


def check_actor_name(value: Any, *, sql: bool = True) -> str:
    """An actor name SQL enqueue accepts (`sql=False`: any name of 1-200 characters, as Python takes)."""
    if not isinstance(value, str) or not (ACTOR_NAME.fullmatch(value) if sql else 0 < len(value) <= 200):
        hint = ACTOR_HINT if sql else "a string of 1-200 characters"
        raise InvalidOption(f"actor name {_shown(value)} is not valid: use {hint}")
    return value


def _name(option: str, value: Any) -> str | None:
    return None if value is None else check_name(option, value)


def _epoch_ms(value: Any) -> float:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.timestamp() * 1000.0
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO-8601 timestamp") from None
        return _epoch_ms(parsed)
    if finite_number(value):
        return float(value)  # OverflowError for an integer beyond any float: not a time either
    raise ValueError("not a time")


def _time_problem(value: Any, *, now_ms: float | None) -> bool:
    """Whether a time (deadline) is unusable: not a time, before 1970, or past the horizon.
    At a worker (`now_ms` None) only epoch milliseconds, the form enqueue stores, are accepted."""
    if now_ms is None and not _number(value):
        return True
    try:
        ms = _epoch_ms(value)
    except (ValueError, OverflowError, OSError):
        return True
    if ms < 0:
        return True
    return now_ms is not None and ms > now_ms + HORIZON_MS


def _exceptions(value: Any) -> bool:
    def one(v: Any) -> bool:
        return isinstance(v, type) and issubclass(v, BaseException)

    return one(value) or (isinstance(value, tuple) and bool(value) and all(one(v) for v in value))


def _message_problem(value: Any, *, now_ms: float | None, depth: int) -> str | None:
    if not isinstance(value, dict) or not MESSAGE_REQUIRED <= set(value) <= MESSAGE_FIELDS:
        return "is not a message"
    if not isinstance(value["queue_name"], str) or not QUEUE_NAME.fullmatch(value["queue_name"]):
        return f"has an invalid queue_name: use {QUEUE_HINT}"
    if not isinstance(value["actor_name"], str) or not 0 < len(value["actor_name"]) <= 200:
        return "has an invalid actor_name: use a string of 1-200 characters"
    if not isinstance(value["args"], list | tuple) or not isinstance(value["kwargs"], dict):
        return "needs args as a list and kwargs as an object"
    if not isinstance(value["options"], dict):
        return "needs options as an object"
    if "message_id" in value and not isinstance(value["message_id"], str):
        return "needs message_id as a string"
    if "message_timestamp" in value and not _number(value["message_timestamp"]):
        return "needs message_timestamp as a number"
    if depth > 100:
        return "nests pipelines more than 100 deep"
    for key, inner in value["options"].items():
        problem = option_problem(key, inner, now_ms=now_ms, depth=depth + 1)
        if problem is not None:
            return f"has option {key}={_shown(inner)} that {problem}"
    return None


def option_problem(key: str, value: Any, *, now_ms: float | None, depth: int = 0) -> str | None:
    """What is wrong with one option (the end of "option KEY=VALUE ..."), or None.

    `now_ms` (epoch milliseconds) at enqueue; None at a worker, where times are epoch milliseconds
    and the horizon is not checked again, and options only a producer reads (eta, delay) are left alone.
    """
    if not isinstance(key, str):
        return "has a name that is not a string"
    rule = RULES.get(key)
    if rule is None:
        return None
    if value is None:
        return None if rule.nullable else rule.hint
    kind = rule.kind
    if kind == "not_here" or (kind == "number" and key == "delay"):
        if now_ms is None:
            return None  # a producer's option: the worker does not read it
        if kind == "not_here":
            return rule.hint
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (rule.low is None or value >= rule.low) and (rule.high is None or value <= rule.high)
    elif kind == "number":
        ok = finite_number(value)
        ok = ok and (rule.low is None or value >= rule.low) and (rule.high is None or value <= rule.high)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "name":
        ok = isinstance(value, str) and _NAME.fullmatch(value) is not None
    elif kind in ("actor", "text"):
        ok = isinstance(value, str) and (rule.low is None or len(value) >= rule.low)
        ok = ok and (rule.high is None or len(value) <= rule.high)
    elif kind == "choice":
        ok = value in rule.choices
    elif kind == "time":
        ok = not _time_problem(value, now_ms=now_ms)
    elif kind == "exceptions":
        ok = _exceptions(value)
    else:  # message
        problem = _message_problem(value, now_ms=now_ms, depth=depth)
        return None if problem is None else f"{rule.hint}: it {problem}"
    return None if ok else rule.hint


def check_options(options: Any, *, now_ms: float | None = None) -> None:
    """Every option against `RULES` (at enqueue: `now_ms` defaults to now). Raises InvalidOption."""
    if not isinstance(options, dict):
        raise InvalidOption(f"options must be an object of option names and values, got {_shown(options)}")
    now = time.time() * 1000.0 if now_ms is None else now_ms
    for key, value in options.items():
        problem = option_problem(key, value, now_ms=now)
        if problem is not None:
            raise InvalidOption(f"option {key}={_shown(value)} {problem}")


def check_payload(args: Any, kwargs: Any, *, finite: bool = True) -> None:
    """Arguments as enqueue stores them: a list, an object with string keys, no NaN or Infinity
    (`finite=False`: the caller looks for those in the encoded bytes first)."""
    if not isinstance(args, list | tuple):
        raise InvalidOption(f"args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict) or (kwargs and not all(isinstance(k, str) for k in kwargs)):
        raise InvalidOption("kwargs must be an object with string keys")
    if finite:
        check_finite(args, "args")
        check_finite(kwargs, "kwargs")


def check_finite(value: Any, where: str) -> None:
    """No NaN or Infinity anywhere in `value`: PostgreSQL's JSON rejects them (and so every job
    that stores or forwards the arguments in SQL would fail later)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidOption(f"{path} holds {item!r}: JSON has no NaN or Infinity; send null or a string")
        elif isinstance(item, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))


def problem_at_worker(message: Message[Any] | MessageProxy) -> str | None:
    """Why a claimed message cannot run safely (its options or arguments), or None.

    Dramatiq and its middleware read these options while running a message; a wrongly typed one
    would break a worker thread or make a failed job look finished."""
    options = message.options
    if not isinstance(options, dict):
        return f"options must be an object, got {type(options).__name__}"
    if not isinstance(message.args, list | tuple):
        return f"args must be a list, got {type(message.args).__name__}"
    if not isinstance(message.kwargs, dict):
        return f"kwargs must be an object, got {type(message.kwargs).__name__}"
    if not _number(message.message_timestamp):
        return "message_timestamp must be epoch milliseconds"
    for key, value in options.items():
        problem = option_problem(key, value, now_ms=None)
        if problem is not None:
            return f"option {key}={_shown(value)} {problem}"
    return None


@dataclass(frozen=True, slots=True)
class Columns:
    priority: int
    delay_ms: int
    tenant: str | None
    topic: str | None
    deadline: datetime | None


def deadline_of(value: Any, *, now_ms: float | None = None) -> datetime | None:
    """A deadline given as epoch milliseconds, an ISO-8601 string or a datetime, from 1970 to
    36,600 days ahead."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, datetime | str | int | float):
        raise InvalidOption(f"option deadline={_shown(value)}: give epoch milliseconds, ISO-8601 or a datetime")
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise InvalidOption(f"option deadline={_shown(value)} is not an ISO-8601 timestamp") from None
    if _time_problem(value, now_ms=time.time() * 1000.0 if now_ms is None else now_ms):
        raise InvalidOption(f"option deadline={_shown(value)} {RULES['deadline'].hint}")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def check_delay(delay: Any) -> int:
    """A delay in milliseconds: a finite number from 0 to the horizon (36,600 days)."""
    if delay is None:
        return 0
    if not finite_number(delay) or not 0 <= delay <= HORIZON_MS:
        raise InvalidOption(f"delay={_shown(delay)} must be a number of milliseconds from 0 to {HORIZON_MS}")
    return int(delay)


def bounded_delay_ms(delay: Any) -> int:
    """A retry's delay in milliseconds, kept storable: anything but a finite number >= 0 is 0, and
    it is capped at the horizon (36,600 days)."""
    if not finite_number(delay) or delay < 0:
        return 0
    return int(min(delay, HORIZON_MS))


#: The columns of a message that sets no option and no delay, by its (valid) default priority:
#: the same for every such message, so built once (Columns is immutable).
_PLAIN_COLUMNS: dict[int, Columns] = {}


def columns(options: dict[str, Any], *, default_priority: int, delay: int | float | None) -> Columns:
    """Validate the options the broker stores in its own columns."""
    if not options and delay is None and type(default_priority) is int:
        plain = _PLAIN_COLUMNS.get(default_priority)
        if plain is not None:
            return plain
        if INT32_MIN <= default_priority <= INT32_MAX and len(_PLAIN_COLUMNS) < 1024:
            plain = _PLAIN_COLUMNS[default_priority] = Columns(default_priority, 0, None, None, None)
            return plain
    priority = options.get("priority", default_priority)
    if isinstance(priority, bool) or not isinstance(priority, int) or not INT32_MIN <= priority <= INT32_MAX:
        raise InvalidOption(f"option priority={_shown(priority)} must be a 32-bit integer (lower runs first)")
    return Columns(
        priority=priority,
        delay_ms=check_delay(delay),
        tenant=_name("tenant", options.get("tenant")),
        topic=_name("topic", options.get("topic")),
        deadline=deadline_of(options.get("deadline")),
    )


def fingerprint_of(message: Message[Any], options: dict[str, Any]) -> str | None:
    """The unique-job key: `unique_key` as given, or with `unique=True` a hash of actor and arguments."""
    key = options.get("unique_key")
    if key is not None:
        if not isinstance(key, str) or not 0 < len(key) <= 500:
            raise InvalidOption(f"option unique_key={key!r} must be a string of 1-500 characters")
        return f"{message.queue_name}:{message.actor_name}:{key}"
    if options.get("unique") is True:
        blob = json.dumps([message.args, message.kwargs], sort_keys=True, default=str)
        return f"{message.queue_name}:{message.actor_name}:#{hashlib.sha256(blob.encode()).hexdigest()}"
    return None


#: Actor options a message inherits when it does not set them itself.
INHERITED = ("tenant", "topic", "unique", "on_duplicate")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message checked for enqueue, as every broker stores it."""

    message: Message[Any]  # actor defaults merged into its options, deadline as epoch milliseconds
    columns: Columns
    fingerprint: str | None
    on_duplicate: str  # 'raise' or 'existing'
    payload: bytes


def prepare(
    message: Message[Any],
    *,
    actor: Actor[..., Any] | None,
    delay: int | float | None,
    topic: Callable[[str], TopicSettings | None],
    tenant_known: Callable[[str], bool] | None,
    max_message_bytes: int,
    checked: set[tuple[str, str]] | None = None,
) -> Prepared:
    """Validate a message the same way in every broker (Postgres and in-memory): its queue and
    actor names, every option against `RULES`, arguments without NaN or Infinity, its size.

    `actor` (its `options` and `priority`) supplies defaults; `topic(name)` returns the topic's
    settings or None when the topic does not exist; `tenant_known`,
    given only under tenant_policy 'refuse', says whether a tenant is configured. A `delay`
    option (as SQL enqueue takes it) is used when no `delay` argument is given. `checked`: the
    (queue name, actor name) pairs already found valid in this batch, so that a batch of many
    messages checks each pair once (the pairs found valid here are added).

    Raises:
      UnknownTopic, UnknownTenant, InvalidOption, MessageTooLarge.
    """
    names = (message.queue_name, message.actor_name)
    if checked is None or type(names[0]) is not str or type(names[1]) is not str or names not in checked:
        check_queue_name(message.queue_name)
        check_actor_name(message.actor_name, sql=False)
        if checked is not None and type(names[0]) is str and type(names[1]) is str:
            checked.add(names)
    check_payload(message.args, message.kwargs, finite=False)  # NaN and Infinity: after encoding, below
    if not isinstance(message.options, dict):
        raise InvalidOption(f"options must be an object of option names and values, got {_shown(message.options)}")
    options = dict(message.options)
    if actor is not None and actor.options:
        for name in INHERITED:
            if name not in options and name in actor.options:
                options[name] = actor.options[name]
    if options:
        check_options(options, now_ms=time.time() * 1000.0)
    if "delay" in options:
        given = options.pop("delay")
        if delay is None:
            delay = given
    topic_name = options.get("topic")
    if topic_name is not None:
        found = topic(topic_name)
        if found is None:
            raise UnknownTopic(str(topic_name))
        if "priority" not in options and found.priority is not None:
            options["priority"] = found.priority
    tenant = options.get("tenant")
    if isinstance(tenant, str) and tenant_known is not None and not tenant_known(tenant):
        raise UnknownTenant(tenant)
    on_duplicate = options.get("on_duplicate", "raise")
    cols = columns(options, default_priority=actor.priority if actor is not None else 0, delay=delay)
    if cols.deadline is not None and not isinstance(options.get("deadline"), int):
        # Keep the message JSON-encodable: deadlines travel as epoch milliseconds.
        options["deadline"] = int(cols.deadline.timestamp() * 1000)
    if options != message.options:
        # Not message.copy(options=...): Dramatiq 2 merges options, so a removed one would stay.
        base = message if dataclasses.is_dataclass(message) else message.copy()
        message = dataclasses.replace(base, options=options)
    payload = encode(message)
    if not isinstance(dramatiq.get_encoder(), JSONEncoder) or b"NaN" in payload or b"Infinity" in payload:
        # Dramatiq's JSON encoder writes NaN and Infinity as these bare words; PostgreSQL refuses them.
        check_finite(message.args, "args")
        check_finite(message.kwargs, "kwargs")
        check_finite(message.options, "options")
    if len(payload) > max_message_bytes:
        raise MessageTooLarge(len(payload), max_message_bytes)
    return Prepared(message, cols, fingerprint_of(message, options), on_duplicate, payload)


#: Dramatiq's JSONEncoder writes `json.dumps(data, separators=(",", ":"))`: the same encoder, built once.
_JSON = json.JSONEncoder(separators=(",", ":"))
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)


def _json_text(data: dict[str, Any]) -> str:
    """`_JSON.encode(data)`: straight to the C encoder that `JSONEncoder.iterencode` builds (with a
    fresh dict of markers, so circular references are refused the same way), without its Python steps."""
    if _C_ENCODER is None:
        return _JSON.encode(data)
    encoder = _C_ENCODER({}, _JSON.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
                         True)
    return "".join(encoder(data, 0))


def encode(message: Message[Any]) -> bytes:
    """The message's bytes, or InvalidOption saying why it has none."""
    try:
        if type(message) is Message and type(dramatiq.get_encoder()) is JSONEncoder:
            # What message.encode() writes, without building the dict field by field through dataclasses.
            return _json_text({
                "queue_name": message.queue_name, "actor_name": message.actor_name, "args": message.args,
                "kwargs": message.kwargs, "options": message.options, "message_id": message.message_id,
                "message_timestamp": message.message_timestamp,
            }).encode("utf-8")
        return message.encode()
    except Exception as exc:
        raise InvalidOption(
            f"message for actor {message.actor_name!r} cannot be encoded ({type(exc).__name__}: {exc}); "
            "arguments and options must be values the encoder can write (JSON: no NaN, Infinity, objects or "
            "integers over 4300 digits)"
        ) from None


class EnqueueTarget(Protocol):
    """What `prepare_for` reads of a broker: its settings, declared actors and policies."""

    @property
    def settings(self) -> Settings: ...

    @property
    def actors(self) -> Mapping[str, Actor[..., Any]]: ...

    @property
    def policies(self) -> PolicySource: ...


def prepare_for(
    broker: EnqueueTarget, message: Message[Any], delay: int | float | None, *, settings: Settings | None = None
) -> Prepared:
    """`prepare` with a broker's declared actors, its topic and tenant policies and its settings
    (the Postgres and in-memory brokers both validate through here). `settings`: the values to
    check against when they differ from the broker's own (runtime settings a producer applies)."""
    s = settings or broker.settings
    refuse = s.tenant_policy == "refuse"
    policies = broker.policies
    return prepare(
        message,
        actor=broker.actors.get(message.actor_name),
        delay=delay,
        topic=policies.topic,
        tenant_known=(lambda name: policies.tenant(name) is not None) if refuse else None,
        max_message_bytes=s.max_message_bytes,
    )
