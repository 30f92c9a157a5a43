"""A user's actors tested on the in-memory broker: no PostgreSQL anywhere (the fixtures come from
neuron_tasks' pytest plugin). The top half stands for the user's own module, myapp/tasks.py."""

from __future__ import annotations

import dramatiq
import pytest

from neuron_tasks import PostgresBroker
from neuron_tasks.errors import DuplicateJob, NonRetryable
from neuron_tasks.testing import InMemoryBroker

# --- myapp/tasks.py ---------------------------------------------------------------------------
# In the app: `set_default_broker()`; a PostgresBroker connects only when used, so declaring
# actors on it needs no database. (Bound explicitly here so the suite's global broker is untouched.)
app_broker = PostgresBroker(url="postgresql://nobody@127.0.0.1:1/never-connected")
outbox: list[tuple[str, str]] = []


class BadAddress(NonRetryable):
    """An address that will never work: no retries."""


@dramatiq.actor(broker=app_broker, max_retries=2, tenant="acme")
def send_welcome(email: str, name: str) -> None:
    if "@" not in email:
        raise BadAddress(f"not an address: {email!r}")
    outbox.append((email, f"Welcome, {name}!"))


# --- tests/test_tasks.py ----------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _empty_outbox(nt_broker: InMemoryBroker) -> None:
    outbox.clear()
    nt_broker.adopt(send_welcome)  # not needed when your app's broker is the global one


def test_welcome_is_sent(nt_worker: dramatiq.Worker, nt_join) -> None:  # type: ignore[no-untyped-def]
    send_welcome.send_with_options(args=("ada@example.com", "Ada"), unique_key="welcome-ada", priority=-1)
    nt_join()
    assert outbox == [("ada@example.com", "Welcome, Ada!")]


def test_a_second_welcome_is_refused_while_the_first_waits(nt_broker: InMemoryBroker) -> None:
    first = send_welcome.send_with_options(args=("ada@example.com", "Ada"), unique_key="welcome-ada")
    with pytest.raises(DuplicateJob):
        send_welcome.send_with_options(args=("ada@example.com", "Ada"), unique_key="welcome-ada")
    again = send_welcome.send_with_options(args=("ada@example.com", "Ada"), unique_key="welcome-ada",
                                           on_duplicate="existing")
    assert again.message_id == first.message_id


def test_bad_address_is_dead_lettered_at_once(nt_broker: InMemoryBroker, nt_worker: dramatiq.Worker,
                                               nt_join) -> None:  # type: ignore[no-untyped-def]
    send_welcome.send("not-an-address", "Bob")
    with pytest.raises(BadAddress, match="not an address"):
        nt_join()
    assert outbox == [] and len(nt_broker.dead_letters) == 1
    assert nt_broker.dead_letters[0].options["tenant"] == "acme"  # the actor's default tenant

