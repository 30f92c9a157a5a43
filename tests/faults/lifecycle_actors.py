"""The fault tests' actors (tests/faults/fault_actors.py), in a worker process that can be made
to die while it starts (NEURON_TASKS_TEST_DIE_AT_START). The tests never import this module."""

from __future__ import annotations

import os

QUEUE = "faults"

if os.environ.get("NEURON_TASKS_TEST_DIE_AT_START"):
    os._exit(9)  # a worker process that dies while it starts, before it is ready

from tests.faults.fault_actors import *  # noqa: E402, F403 - the same actors
