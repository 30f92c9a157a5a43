"""Turning a Dramatiq message's options into the broker's columns, with clear errors."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dramatiq.actor import Actor
from dramatiq.message import Message

from neuron_tasks.config import Settings
from neuron_tasks.core.policies import PolicySource, TopicSettings
from neuron_tasks.errors import InvalidOption, MessageTooLarge, UnknownTenant, UnknownTopic

_NAME = re.compile(r"^[A-Za-z0-9_.:@/-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Columns:
    priority: int
    delay_ms: int
    tenant: str | None
    topic: str | None
    deadline: datetime | None


def check_name(option: str, value: Any) -> str:
    """A tenant or topic name: 1-200 letters, digits or . _ - : @ /."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidOption(
            f"option {option}={value!r} is not a valid name: use 1-200 letters, digits or . _ - : @ /"
        )
    return value


def _name(option: str, value: Any) -> str | None:
    return None if value is None else check_name(option, value)


def deadline_of(value: Any) -> datetime | None:
    """A deadline given as epoch milliseconds, an ISO-8601 string or a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise InvalidOption(f"option deadline={value!r}: give epoch milliseconds, ISO-8601 or a datetime")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidOption(f"option deadline={value!r} is not an ISO-8601 timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise InvalidOption(f"option deadline={value!r}: give epoch milliseconds, ISO-8601 or a datetime")


def columns(options: dict[str, Any], *, default_priority: int, delay: int | float | None) -> Columns:
    """Validate the options the broker stores in its own columns."""
    priority = options.get("priority", default_priority)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
        raise InvalidOption(f"option priority={priority!r} must be a 32-bit integer (lower runs first)")
    if delay is None:
        delay = 0
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise InvalidOption(f"delay={delay!r} must be a number of milliseconds >= 0")
    return Columns(
        priority=priority,
        delay_ms=int(delay),
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
) -> Prepared:
    """Validate a message's options the same way in every broker (Postgres and in-memory).

    `actor` (its `options` and `priority`) supplies defaults; `topic(name)` returns the topic's
    settings or None when the topic does not exist; `tenant_known`,
    given only under tenant_policy 'refuse', says whether a tenant is configured.

    Raises:
      UnknownTopic, UnknownTenant, InvalidOption, MessageTooLarge.
    """
    options = dict(message.options)
    if actor is not None:
        for name in INHERITED:
            if name not in options and name in actor.options:
                options[name] = actor.options[name]
    topic_name = options.get("topic")
    if topic_name is not None:
        found = topic(topic_name) if isinstance(topic_name, str) else None
        if found is None:
            raise UnknownTopic(str(topic_name))
        if "priority" not in options and found.priority is not None:
            options["priority"] = found.priority
    tenant = options.get("tenant")
    if isinstance(tenant, str) and tenant_known is not None and not tenant_known(tenant):
        raise UnknownTenant(tenant)
    on_duplicate = options.get("on_duplicate", "raise")
    if on_duplicate not in ("raise", "existing"):
        raise InvalidOption(f"option on_duplicate={on_duplicate!r}: use 'raise' or 'existing'")
    cols = columns(options, default_priority=actor.priority if actor is not None else 0, delay=delay)
    if cols.deadline is not None and not isinstance(options.get("deadline"), int):
        # Keep the message JSON-encodable: deadlines travel as epoch milliseconds.
        options["deadline"] = int(cols.deadline.timestamp() * 1000)
    if options != message.options:
        message = message.copy(options=options)
    payload = message.encode()
    if len(payload) > max_message_bytes:
        raise MessageTooLarge(len(payload), max_message_bytes)
    return Prepared(message, cols, fingerprint_of(message, options), on_duplicate, payload)


class EnqueueTarget(Protocol):
    """What `prepare_for` reads of a broker: its settings, declared actors and policies."""

    @property
    def settings(self) -> Settings: ...

    @property
    def actors(self) -> Mapping[str, Actor[..., Any]]: ...

    @property
    def policies(self) -> PolicySource: ...


def prepare_for(broker: EnqueueTarget, message: Message[Any], delay: int | float | None) -> Prepared:
    """`prepare` with a broker's declared actors, its topic and tenant policies and its settings
    (the Postgres and in-memory brokers both validate through here)."""
    refuse = broker.settings.tenant_policy == "refuse"
    policies = broker.policies
    return prepare(
        message,
        actor=broker.actors.get(message.actor_name),
        delay=delay,
        topic=policies.topic,
        tenant_known=(lambda name: policies.tenant(name) is not None) if refuse else None,
        max_message_bytes=broker.settings.max_message_bytes,
    )
