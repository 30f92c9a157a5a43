"""One LISTEN connection per worker process; NOTIFY payloads (queue names) wake consumers.

A lost connection is tried again every quarter second at most, so consumers are woken (and
look for what was announced while they were cut off) as soon as the server is back."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from neuron_tasks import db
from neuron_tasks.sql import q

log = logging.getLogger(__name__)
CHANNEL = "neuron_tasks"  # the channels the `listen_queues` and `listen_settings` queries name
SETTINGS_CHANNEL = "neuron_tasks_settings"


class Listener(threading.Thread):
    """Calls `wake(queue_name)` for each notification, and `wake(None)` after a reconnect
    (notifications sent while disconnected are lost, so every consumer should look)."""

    def __init__(
        self, url: str, wake: Callable[[str | None], None], on_settings: Callable[[], object] | None = None
    ) -> None:
        super().__init__(name="neuron-tasks-listener", daemon=True)
        self.url = db.session_url(url)  # LISTEN needs a session: never a transaction-mode pooler
        self.wake = wake
        self.on_settings = on_settings
        self._halt = threading.Event()
        self.connected = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        outage = db.Outage(log, "listening for new messages")
        while not self._halt.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, application_name="neuron_tasks-listener", **db.connection_hygiene()
                ) as conn:
                    conn.execute(q("listen_queues"))
                    conn.execute(q("listen_settings"))
                    self.connected.set()
                    outage.recovered()
                    self.wake(None)
                    while not self._halt.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.channel == SETTINGS_CHANNEL:
                                if self.on_settings is not None:
                                    self._settings_changed()
                            else:
                                self.wake(note.payload)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                if self._halt.is_set():
                    return
                self._halt.wait(outage.failed(exc))

    def _settings_changed(self) -> None:
        assert self.on_settings is not None
        try:
            self.on_settings()
        except db.UNAVAILABLE as exc:  # the keeper's poll applies them later
            log.warning("could not read the changed runtime settings now (%s); the next poll applies them",
                        db.one_line(exc))
