"""The dashboard's "Cancel and purge" page of the queue part: its data and its two buttons.

The dashboard posts a button to /parts/queue-admin/<action> with its token and CSRF field and
calls these with the form's fields; what they return is the notice the page then shows."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from neuron_tasks.core.admin import PURGE_STATES, WAITING_STATES, Repo
from neuron_tasks.core.parts import PageSource

_IDS = re.compile(r"[\s,]+")


def load(source: PageSource) -> dict[str, Any]:
    """The queues that have waiting messages (for the purge form) and the states a purge may name."""
    return {"queues": Repo(source.pool).waiting_queues(), "states": PURGE_STATES, "waiting": WAITING_STATES}


def _refused(exc: psycopg.Error) -> str:
    text = str(exc.diag.message_primary or exc)
    text = text.split(": ", 1)[1] if text.startswith("neuron_tasks.") and ": " in text else text
    return f"Nothing was done: {text}."


def cancel_action(source: PageSource, form: dict[str, str]) -> str | None:
    """Cancel the messages named in `name` (ids separated by spaces or commas); None when none is named."""
    ids = [i for i in _IDS.split(form.get("name", "")) if i]
    if not ids:
        return None
    try:
        counts = Repo(source.pool).cancel(list(dict.fromkeys(ids)))
    except psycopg.Error as exc:
        return _refused(exc)
    return (f"Cancelled {counts['cancelled']} waiting message(s); marked {counts['marked']} running message(s) "
            "as cancelled (their jobs see it when they ask).")


def purge_action(source: PageSource, form: dict[str, str]) -> str | None:
    """Purge `queue` (optionally only `actor`, `tenant`; states from the state_<name> boxes, else the
    waiting ones) once `confirm` is ticked; None when no queue is named."""
    queue = form.get("queue", "")
    if not queue:
        return None
    states = [s for s in PURGE_STATES if form.get(f"state_{s}")] or list(WAITING_STATES)
    if form.get("confirm") != "yes":
        return f"Nothing was purged: tick the confirm box to purge queue {queue} ({'/'.join(states)})."
    try:
        counts = Repo(source.pool).purge_queue(queue, actor=form.get("actor") or None,
                                               tenant=form.get("tenant") or None, states=states)
    except psycopg.Error as exc:
        return _refused(exc)
    text = f"Purged {counts['purged']} {'/'.join(states)} message(s) of queue {queue}."
    if "running" in states:
        text += f" Marked {counts['marked']} running message(s) as cancelled."
    return text
