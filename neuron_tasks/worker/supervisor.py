"""Runs N worker processes and keeps them running.

Dramatiq's own CLI stops every process when one child is killed; this supervisor:

- restarts a child that dies at once (a child that dies before it was ready, say its database
  is down, is restarted with a back-off: 0.5 s, doubling, up to 30 s);
- gives each child a worker id and renews the leases of its messages while the child lives
  (leases.py: a job that holds the GIL cannot starve that), and returns a dead child's
  messages at once;
- replaces a child whose job runs past its time limit plus `hard_timeout_grace_s` (stuck in C
  code, where Dramatiq's time limit cannot interrupt it): that job counts a death, the child's
  other messages go back to their queues at once;
- forwards SIGTERM/SIGINT for a graceful drain, and kills children that outlive the shutdown
  timeout.

Each child reports `ready` and each job's start and end on a pipe (report.py).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from neuron_tasks.config import Settings
from neuron_tasks.core.broker import WORKER_OWNER_ENV
from neuron_tasks.worker.leases import Death, LeaseKeeper
from neuron_tasks.worker.report import REPORT_FD_ENV

log = logging.getLogger(__name__)

#: A child exits with this code when the user's modules cannot be imported: restarting won't help.
EXIT_IMPORT_ERROR = 3
EXIT_CONFIG_ERROR = 4
#: How often children are checked when nothing arrives on their pipes.
POLL_S = 0.2
#: Back-off of a child that dies before it is ready: first delay and cap.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass
class Job:
    """A job a child reported started: when the supervisor heard of it, and its time limit."""

    started: float
    limit_s: float  # 0: no limit


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    owner: uuid.UUID = field(default_factory=uuid.uuid4)
    started: float = 0.0
    ready: bool = False
    pipe: int | None = None  # read end of its report pipe
    buffer: bytes = b""
    jobs: dict[int, Job] = field(default_factory=dict)
    overdue: tuple[int, ...] = ()  # jobs it was killed for
    kill_reason: str = ""
    early_deaths: int = 0  # deaths before ready, in a row
    restart_at: float = 0.0
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        command: Callable[[int], list[str]],
        processes: int,
        *,
        shutdown_timeout_s: float,
        env: dict[str, str] | None = None,
        on_child_exit: Callable[[int], None] | None = None,
        url: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        """`url` and `settings`: the database whose leases the supervisor renews (None: it renews
        none and children rely on their own threads, as before)."""
        self.command = command
        self.children = [Child(i) for i in range(processes)]
        self.shutdown_timeout_s = shutdown_timeout_s
        self.env = env
        self.on_child_exit = on_child_exit
        self.stopping = False
        self.exit_code = 0
        self.settings = settings or Settings()
        self.leases = LeaseKeeper(url, self.settings) if url else None
        self._selector = selectors.DefaultSelector()

    # -- settings that may change at runtime ------------------------------------------------------
    @property
    def grace_s(self) -> float:
        current = self.leases.settings if self.leases is not None else self.settings
        return current.hard_timeout_grace_s

    # -- children ---------------------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        child.owner = uuid.uuid4()
        child.ready, child.buffer, child.jobs, child.overdue, child.kill_reason = False, b"", {}, (), ""
        read_end, write_end = os.pipe()
        env = dict(self.env if self.env is not None else os.environ)
        env[WORKER_OWNER_ENV] = str(child.owner)
        env[REPORT_FD_ENV] = str(write_end)
        try:
            child.proc = subprocess.Popen(self.command(child.index), env=env, pass_fds=(write_end,))
        except OSError as exc:
            os.close(read_end)
            child.proc = None
            child.early_deaths += 1
            child.restart_at = time.monotonic() + self._backoff(child)
            log.error("could not start worker process %d (%s); retrying in %.1fs", child.index, exc,
                      child.restart_at - time.monotonic())
            return
        finally:
            os.close(write_end)
        if self.leases is not None:
            self.leases.add(child.owner)
        os.set_blocking(read_end, False)
        child.pipe = read_end
        self._selector.register(read_end, selectors.EVENT_READ, child)
        child.started = time.monotonic()
        log.info("worker process %d started (pid %d)", child.index, child.proc.pid)

    def _backoff(self, child: Child) -> float:
        if child.early_deaths <= 0:
            return 0.0
        return min(FIRST_BACKOFF_S * 2 ** (child.early_deaths - 1), MAX_BACKOFF_S)

    def _close_pipe(self, child: Child, *, read: bool = True) -> None:
        if child.pipe is None:
            return
        pipe, child.pipe = child.pipe, None
        if read:
            self._read(child, pipe)  # what it wrote before it died
        self._selector.unregister(pipe)
        os.close(pipe)

    def _read(self, child: Child, pipe: int | None = None) -> None:
        pipe = child.pipe if pipe is None else pipe
        while pipe is not None:
            try:
                data = os.read(pipe, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("worker process %d: its report pipe failed (%s)", child.index, exc)
                data = b""
            if not data:  # it closed the pipe (it is stopping or gone): poll() sees the rest
                if child.pipe == pipe:
                    self._close_pipe(child, read=False)
                return
            child.buffer += data
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                self._on_line(child, line.decode(errors="replace").split())

    def _on_line(self, child: Child, words: list[str]) -> None:
        pid = child.proc.pid if child.proc is not None else 0
        try:
            if words[0] == "start":
                child.jobs[int(words[1])] = Job(time.monotonic(), int(words[2]) / 1000.0)
            elif words[0] == "end":
                child.jobs.pop(int(words[1]), None)
            elif words[0] == "ready":
                child.ready = True
                child.early_deaths = 0
                log.info("worker process %d (pid %d) ready in %.1fs", child.index, pid,
                         time.monotonic() - child.started)
            else:
                raise ValueError(words[0])
        except (IndexError, ValueError):
            log.warning("worker process %d (pid %d) reported %r, which the supervisor does not know",
                        child.index, pid, " ".join(words))

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("received %s: draining workers (up to %.0fs)", signal.Signals(signum).name,
                     self.shutdown_timeout_s)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        wakeup = self._wake_on_signals()
        if self.leases is not None:
            self.leases.start()
        try:
            for child in self.children:
                self._spawn(child)
            while not self.stopping:
                self._wait(POLL_S)
                for child in self.children:
                    self._watch(child)
            self._shutdown()
        finally:
            for child in self.children:
                self._close_pipe(child)
            if wakeup is not None:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in wakeup:
                    os.close(fd)
            self._selector.close()
            if self.leases is not None:
                self.leases.stop(timeout=10.0)
        return self.exit_code

    def _wake_on_signals(self) -> tuple[int, int] | None:
        """A child's exit (SIGCHLD) or a stop signal wakes the main loop at once."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        try:
            signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: poll only
            os.close(read_end)
            os.close(write_end)
            return None
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        signal.siginterrupt(signal.SIGCHLD, False)  # other threads' system calls just go on
        self._selector.register(read_end, selectors.EVENT_READ, None)
        return read_end, write_end

    def _wait(self, timeout: float) -> None:
        """Until a child reports something, a signal arrives or `timeout` passes; reads what the
        children reported."""
        for key, _events in self._selector.select(timeout):
            child = key.data
            if child is None:  # the signal wake-up pipe
                try:
                    while os.read(key.fd, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            assert isinstance(child, Child)
            self._read(child)

    def _watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if not self.stopping and now >= child.restart_at:
                self._spawn(child)
            return
        code = child.proc.poll()
        if code is None:
            self._check_overdue(child, now)
            return
        pid = child.proc.pid
        self._reap(child, code)
        if code in (EXIT_IMPORT_ERROR, EXIT_CONFIG_ERROR):
            log.error("worker process %d could not start (exit %d); stopping", child.index, code)
            self.exit_code = code
            self.stopping = True
            return
        if self.stopping:
            return
        if not child.ready:
            child.early_deaths += 1
        backoff = self._backoff(child)
        child.restarts += 1
        log.warning(
            "worker process %d (pid %d) exited with %s after %.1fs%s; restarting %s",
            child.index, pid, _describe(code), now - child.started, "" if child.ready else ", before it was ready",
            f"in {backoff:.1f}s" if backoff else "now",
        )
        child.restart_at = now + backoff
        if not backoff:
            self._spawn(child)

    def _reap(self, child: Child, code: int) -> None:
        """A child exited: read what it reported last, return its messages, forget it."""
        assert child.proc is not None
        pid = child.proc.pid
        self._close_pipe(child)
        if self.on_child_exit is not None:
            self.on_child_exit(pid)
        if self.leases is not None:
            self.leases.child_exited(Death(child.owner, pid, child.overdue, child.kill_reason))
        elif child.overdue:
            log.warning("worker process %d: jobs %s go back when their leases expire", child.index,
                        list(child.overdue))
        child.proc = None

    def _check_overdue(self, child: Child, now: float) -> None:
        """Kill a child whose job runs past its time limit plus the grace period."""
        if child.overdue or not child.jobs or child.proc is None:
            return
        grace = self.grace_s
        late = {row: job for row, job in child.jobs.items()
                if job.limit_s > 0 and now - job.started > job.limit_s + grace}
        if not late:
            return
        job = next(iter(late.values()))
        child.overdue = tuple(late)
        child.kill_reason = (f"still running {now - job.started:.0f}s after it started, past its time limit of "
                             f"{job.limit_s * 1000:.0f} ms plus hard_timeout_grace_s={grace:g} (blocked where the "
                             "time limit cannot interrupt it, such as in C code): its worker process was replaced")
        log.error("worker process %d (pid %d): job row %s is %s", child.index, child.proc.pid,
                  ", ".join(map(str, child.overdue)), child.kill_reason)
        try:
            child.proc.kill()
        except ProcessLookupError:
            pass

    def _shutdown(self) -> None:
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in live:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout_s + 5.0
        while time.monotonic() < deadline and any(c.proc is not None for c in self.children):
            self._wait(POLL_S)
            for child in self.children:
                self._watch(child)
        for child in self.children:
            if child.proc is None:
                continue
            log.warning("worker pid %d did not stop in time; killing it", child.proc.pid)
            child.proc.kill()
            code = child.proc.wait()
            self._reap(child, code)
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
