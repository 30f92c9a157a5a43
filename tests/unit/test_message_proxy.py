"""A claimed message's proxy answers for its message's fields, also after the message is replaced."""

from __future__ import annotations

import dataclasses
from typing import Any

from dramatiq.message import Message

from neuron_tasks.core.consumer import PgMessageProxy


def message(**options: Any) -> Message[Any]:
    return Message(queue_name="q", actor_name="job", args=(1, 2), kwargs={"k": "v"}, options=options)


def test_fields_are_the_messages_own() -> None:
    m = message(retries=0)
    proxy = PgMessageProxy(m, row_id=7, attempt=1, consumer=None)  # type: ignore[arg-type]
    assert (proxy.queue_name, proxy.actor_name, proxy.args, proxy.kwargs) == ("q", "job", (1, 2), {"k": "v"})
    assert (proxy.message_id, proxy.message_timestamp) == (m.message_id, m.message_timestamp)
    proxy.options["retries"] = 3  # Dramatiq's Retries middleware writes into the options in place
    assert m.options["retries"] == 3 and proxy.message is m
    assert proxy.asdict() == m.asdict()  # other attributes still come from the message


def test_a_replaced_message_is_seen_whole() -> None:
    m = message(retries=0)
    proxy = PgMessageProxy(m, row_id=7, attempt=1, consumer=None)  # type: ignore[arg-type]
    replaced = dataclasses.replace(m, options={}, kwargs={}, args=())
    proxy._message = replaced  # as the guard does for a message whose options are not an object
    assert proxy.message is replaced
    assert (proxy.options, proxy.kwargs, proxy.args) == ({}, {}, ())
    assert proxy.message_id == m.message_id
