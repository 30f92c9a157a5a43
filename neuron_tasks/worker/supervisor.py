"""Runs N worker processes and keeps them running.

Dramatiq's own CLI stops every process when one child is killed; this supervisor restarts
a child that dies (with a backoff when it keeps dying), forwards SIGTERM/SIGINT for a
graceful drain, and kills children that outlive the shutdown timeout.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: A child exits with this code when the user's modules cannot be imported: restarting won't help.
EXIT_IMPORT_ERROR = 3
EXIT_CONFIG_ERROR = 4


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0
    restarts: int = field(default=0)


class Supervisor:
    def __init__(
        self,
        command: Callable[[int], list[str]],
        processes: int,
        *,
        shutdown_timeout_s: float,
        env: dict[str, str] | None = None,
        on_child_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.command = command
        self.children = [Child(i) for i in range(processes)]
        self.shutdown_timeout_s = shutdown_timeout_s
        self.env = env
        self.on_child_exit = on_child_exit
        self.stopping = False
        self.exit_code = 0

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(self.command(child.index), env=self.env)
        child.started = time.monotonic()
        log.info("worker process %d started (pid %d)", child.index, child.proc.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("received %s: draining workers (up to %.0fs)", signal.Signals(signum).name,
                     self.shutdown_timeout_s)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._spawn(child)
        while not self.stopping:
            time.sleep(0.2)
            for child in self.children:
                self._watch(child)
        self._shutdown()
        return self.exit_code

    def _watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if now >= child.restart_at:
                self._spawn(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        if self.on_child_exit is not None:
            self.on_child_exit(child.proc.pid)
        if code in (EXIT_IMPORT_ERROR, EXIT_CONFIG_ERROR):
            log.error("worker process %d could not start (exit %d); stopping", child.index, code)
            self.exit_code = code
            self.stopping = True
            return
        lived = now - child.started
        child.quick_deaths = child.quick_deaths + 1 if lived < 5 else 0
        backoff = min(0.5 * 2 ** max(child.quick_deaths - 1, 0), 30.0) if child.quick_deaths else 0.0
        child.restarts += 1
        log.warning(
            "worker process %d (pid %d) exited with %s after %.1fs; restarting%s",
            child.index, child.proc.pid, _describe(code), lived, f" in {backoff:.1f}s" if backoff else "",
        )
        child.proc = None
        child.restart_at = now + backoff

    def _shutdown(self) -> None:
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout_s + 5.0
        for proc in live:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        log.info("all worker processes stopped")


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
