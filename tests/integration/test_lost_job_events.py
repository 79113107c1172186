"""Monitors see every outcome (issue 24): a job whose executor the supervisor killed for its
``max_execution_time``, or whose executor died, never sent Celery's ``task-failed``; Flower
showed "Unknown task" and Failed 0 while the Jobs page, the CLI and /metrics said ERROR. The
supervisor now sends the event itself, with the job record's error text. A real Celery event
receiver (``app.events.Receiver``, what ``celery events`` and Flower use) listens here."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from session_broker import EstimatorV2, MaxExecutionTimeExceededError, WorkerLostError
from session_broker.ops.embedded import wait_for
from tests.conftest import make_cluster, slow_pub

BACKEND = "ibmq_qasm_simulator"


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cluster = make_cluster(stack, redis_url, env={"SESSION_BROKER_MAX_ATTEMPTS": "1"})
    cluster.node = cluster.start_worker(BACKEND).node
    return cluster


class Events:
    """Celery's event stream of the cluster's prefix, received in a thread."""

    def __init__(self, settings):
        from session_broker.celery_app import make_app

        self.app = make_app(settings)
        self.got: list[dict] = []
        self.ready, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(self.ready.is_set, 30, "the event receiver to subscribe")

    def _run(self):
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers={"*": self.got.append})
            # consume() yields after each drain: subscribed from the first one on
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=0.2, wakeup=False):
                self.ready.set()
                if self.stop.is_set():
                    return

    def of(self, job_id: str, kind: str) -> dict | None:
        return next((e for e in self.got if e.get("uuid") == job_id and e.get("type") == kind), None)

    def close(self):
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def events(c):
    ev = Events(c.settings)
    yield ev
    ev.close()


def test_a_job_killed_at_its_time_limit_is_task_failed_on_the_event_stream(c, events, hold):
    job = EstimatorV2(mode=BACKEND, options={"max_execution_time": 1}).run([slow_pub(2)])
    hold(c.store, job.job_id())  # frozen: it overruns its hard limit (2 s) on any machine
    with pytest.raises(MaxExecutionTimeExceededError) as raised:
        job.result(timeout=120)
    failed = wait_for(lambda: events.of(job.job_id(), "task-failed"), 30, "task-failed of the job")
    error = c.store.job(job.job_id(), "error")["error"]
    assert str(raised.value) == error
    assert failed["hostname"] == c.node and failed["name"] == "estimator", failed
    assert error in failed["exception"] and "MaxExecutionTimeExceededError" in failed["exception"], failed
    assert f"job={job.job_id()}" in failed["args"], failed


def test_a_job_whose_executor_died_is_task_failed_too(c, events, hold):
    """With SESSION_BROKER_MAX_ATTEMPTS=1 the first lost executor ends the job (WorkerLostError)."""
    job = EstimatorV2(mode=BACKEND).run([slow_pub(2)])
    held = hold(c.store, job.job_id())
    os.kill(held.pid, signal.SIGKILL)
    held.frozen = False
    with pytest.raises(WorkerLostError) as raised:
        job.result(timeout=120)
    failed = wait_for(lambda: events.of(job.job_id(), "task-failed"), 30, "task-failed of the job")
    assert failed["hostname"] == c.node and str(raised.value) in failed["exception"], failed


def test_the_receiver_hears_nothing_else_about_a_job_that_ran(c, events, hold):
    """The check can fail: a job that ends normally (events off, no monitor) sends no
    task-failed, so the events above came from the killed jobs. Asserted once a later
    killed job's event has been heard: anything sent about the earlier jobs came before it."""
    job = EstimatorV2(mode=BACKEND).run([slow_pub(0.05)])
    job.result(timeout=120)
    probe = EstimatorV2(mode=BACKEND, options={"max_execution_time": 1}).run([slow_pub(0.05)])
    probe.result(timeout=120)
    killed = EstimatorV2(mode=BACKEND).run([slow_pub(2)])
    held = hold(c.store, killed.job_id())
    os.kill(held.pid, signal.SIGKILL)
    held.frozen = False
    with pytest.raises(WorkerLostError):
        killed.result(timeout=120)
    wait_for(lambda: events.of(killed.job_id(), "task-failed"), 30, "task-failed of the killed job")
    assert not events.of(job.job_id(), "task-failed") and not events.of(probe.job_id(), "task-failed")


def test_the_worker_banner_names_no_option_the_cli_lacks(c):
    """Issue 24: Celery's banner said "enable -E to monitor tasks", and `session-broker
    worker` takes no -E (events come on while a monitor asks)."""
    from session_broker.ops.cli import build_parser

    log = c.workers[c.node].log

    def banner():
        text = log.read_text(errors="replace")
        return next((line for line in text.splitlines() if "task events:" in line), None)

    line = wait_for(banner, 60, "the worker's start-up banner")
    assert "-E" not in line and "on demand" in line, line
    worker_help = build_parser()._subparsers._group_actions[0].choices["worker"].format_help()
    assert " -E" not in worker_help
