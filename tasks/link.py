"""The pipes between a supervisor and its executor, one short line per message::

executor -> supervisor   ready <queue>                  consuming, after start-up
                         run <job id> <hard limit s> <delivery tag>   a job starts here
                         idle                           ... and has ended
                         consuming <queues>             after a switch of queues
supervisor -> executor   queue <name>                   consume this queue (the pin)
"""

from __future__ import annotations

import os
import threading

# what the supervisor tells an executor in its environment (read by executor.py)
ENV_STATUS_FD = "SESSION_BROKER_EXECUTOR_STATUS_FD"
ENV_COMMAND_FD = "SESSION_BROKER_EXECUTOR_COMMAND_FD"
ENV_QUEUE = "SESSION_BROKER_EXECUTOR_QUEUE"
ENV_SUPERVISOR = "SESSION_BROKER_SUPERVISOR_PID"


class Link:
    """This process's end of the pipes to its supervisor."""

    def __init__(self, status_fd: int, command_fd: int):
        self.status_fd, self.command_fd = status_fd, command_fd
        self._lock = threading.Lock()

    def send(self, *words) -> None:
        line = " ".join(str(w).replace(" ", "_").replace("\n", "_") or "-" for w in words) + "\n"
        with self._lock:  # one write per line: atomic on a pipe (< PIPE_BUF)
            os.write(self.status_fd, line.encode())

    def running(self, job_id: str | None, hard_limit: float | None, delivery_tag) -> None:
        self.send("run", job_id or "-", f"{float(hard_limit or 0):g}", delivery_tag or "-")

    def idle(self) -> None:
        self.send("idle")

    def commands(self):
        """Lines from the supervisor, until it closes its end."""
        with os.fdopen(self.command_fd, "r", buffering=1) as pipe:
            for line in pipe:
                yield line.split()


_link: Link | None = None


def link() -> Link | None:
    """The supervisor link, or None in a process the supervisor did not start (a plain
    ``celery worker``, a test importing the tasks)."""
    return _link


def open_link(status_fd: int, command_fd: int) -> Link:
    """The executor's end, once, at its start (``executor.main``)."""
    global _link
    _link = Link(status_fd, command_fd)
    return _link
