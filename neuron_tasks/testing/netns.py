"""Simulated hosts on this machine: each a Linux network namespace joined to the root namespace by a
veth pair on a /30 of its own (10.231.N.0/30: the root side .1, the host's side .2), so that a
process started in it reaches a database on the root side's address over a link the test can cut
(`cut()`: the root side's end down) and mend (`mend()`). Traffic never leaves the machine.

Needs root and iproute2 (`available()` says why not); `close()` removes the namespace and its
veth pair (names start with `nt`: `ip netns list` shows any an interrupted run left behind).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from types import TracebackType

PREFIX = "nt"


def available() -> str | None:
    """None when network namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    probe = f"{PREFIX}probe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class SimulatedHost:
    """One network namespace and its veth link to the root namespace (see the module docstring)."""

    def __init__(self, index: int | None = None) -> None:
        """`index` picks the /30 (10.231.index.0); a random one when None."""
        if index is None:
            index = random.randrange(256)
        if not 0 <= index < 256:
            raise ValueError("index: 0 to 255")
        tag = uuid.uuid4().hex[:6]
        self.name = f"{PREFIX}h{index}{tag}"
        self.outer = f"{PREFIX}o{index}{tag}"  # veth ends: 15 characters at most
        self.inner = f"{PREFIX}i{index}{tag}"
        self.gateway = f"10.231.{index}.1"  # the root side's address: where the database listens
        self.address = f"10.231.{index}.2"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            _ip("link", "set", self.inner, "netns", self.name)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.inner)
            _ip("-n", self.name, "link", "set", self.inner, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Take the link down: packets are dropped, no connection is reset (a partition)."""
        _ip("link", "set", self.outer, "down")

    def mend(self) -> None:
        _ip("link", "set", self.outer, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "delete", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def __enter__(self) -> SimulatedHost:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

