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
import time
from dataclasses import dataclass

from session_broker.errors import ConfigurationError

# what the supervisor tells an executor in its environment (read by executor.py)
ENV_STATUS_FD = "SESSION_BROKER_EXECUTOR_STATUS_FD"
ENV_COMMAND_FD = "SESSION_BROKER_EXECUTOR_COMMAND_FD"
ENV_QUEUE = "SESSION_BROKER_EXECUTOR_QUEUE"
ENV_SUPERVISOR = "SESSION_BROKER_SUPERVISOR_PID"
ENV_JOB_PATH = "SESSION_BROKER_JOB_PATH"
JOB_PATHS = ("lean", "celery")  # the lean consumer (consumer.py), or Celery's request path


def job_path() -> str:
    """How executors take jobs (``SESSION_BROKER_JOB_PATH``); the supervisor checks it at start."""
    path = os.environ.get(ENV_JOB_PATH, "lean") or "lean"
    if path not in JOB_PATHS:
        raise ConfigurationError(
            f"{ENV_JOB_PATH}={path!r} is not a job path: use 'lean' (the default: the executor's "
            "lean consumer) or 'celery' (Celery's request path, slower)"
        )
    return path


@dataclass
class InFlight:
    """The job an executor runs now, as both ends of the pipe know it: its id (None for a
    message whose job id is not ours), its message's delivery tag (FINISH acknowledges it; a
    lost executor's is taken out of kombu's unacked hash), and its hard time limit (s, 0 for
    none). The supervisor adds the deadline it enforces."""

    job_id: str | None
    delivery_tag: str = ""
    hard_limit: float = 0.0
    deadline: float | None = None

    def line(self) -> tuple[str, str, str]:
        return self.job_id or "-", f"{float(self.hard_limit or 0):g}", self.delivery_tag or "-"

    @classmethod
    def parse(cls, words: list[str]) -> InFlight:
        """``run <job id> <hard limit> <delivery tag>`` -> the job, its deadline from now."""
        job_id, hard, tag = words[1], float(words[2]), words[3]
        return cls(
            None if job_id == "-" else job_id,
            "" if tag == "-" else tag,
            hard,
            time.monotonic() + hard if hard > 0 else None,
        )


current = InFlight(None)  # in an executor: the job its solo pool runs now (celery_tasks)


class Link:
    """This process's end of the pipes to its supervisor."""

    def __init__(self, status_fd: int, command_fd: int):
        self.status_fd, self.command_fd = status_fd, command_fd
        self._lock = threading.Lock()

    def send(self, *words) -> None:
        line = " ".join(str(w).replace(" ", "_").replace("\n", "_") or "-" for w in words) + "\n"
        with self._lock:  # one write per line: atomic on a pipe (< PIPE_BUF)
            os.write(self.status_fd, line.encode())

    def running(self, job: InFlight) -> None:
        self.send("run", *job.line())

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
