"""Declares the actor options the Postgres broker stores in its own columns."""

from __future__ import annotations

from dramatiq import Middleware


class MessageOptions(Middleware):
    """Lets actors declare defaults for tenant, topic and unique-job options.

    Message-level values (``send_with_options(tenant=..., priority=..., topic=..., deadline=...,
    unique_key=..., on_duplicate=...)``) are validated by the broker at enqueue time.
    """

    @property
    def actor_options(self) -> set[str]:
        return {"tenant", "topic", "unique", "on_duplicate"}
