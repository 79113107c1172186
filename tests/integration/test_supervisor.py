"""Issue 13: a worker is a supervisor and an executor (solo pool); task events on demand.

What prefork gave us must still hold (the hard time limit and the poison job are in
``test_primitives.py`` and ``test_faults.py``); these tests cover what is new: the executor
is restarted in place while its node keeps beating and keeps its pin, nothing outlives a
SIGKILLed worker, and Celery's task events flow only while a monitor asks for them."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from session_broker import EstimatorV2, SamplerV2, Session
from session_broker.ops.embedded import wait_for
from tests.conftest import slow_pub
from tests.support.faults import assert_bell_counts, bell_circuit

BACKEND = "ibmq_qasm_simulator"


def executor_of(worker) -> psutil.Process:
    kids = psutil.Process(worker.proc.pid).children(recursive=False)
    assert len(kids) == 1, f"one executor per node, found {kids}"
    return kids[0]


def test_the_registry_names_the_supervisor_and_jobs_name_the_executor(fresh):
    c = fresh()
    w = c.start_worker(BACKEND, name="pids@%h")
    job = SamplerV2(mode=c.service.backend(BACKEND)).run([bell_circuit()], shots=50)
    assert_bell_counts(job.result(timeout=120), 50)
    entry = c.store.redis.hgetall(c.store.keys.worker(w.node))
    assert int(entry["pid"]) == w.proc.pid  # signal this one to stop the worker
    assert int(c.store.job(job.job_id())["pid"]) == executor_of(w).pid  # it ran the job


def test_a_killed_executor_is_replaced_and_the_node_keeps_its_session(fresh, hold):
    """Kill the executor mid-job while another worker is idle: the supervisor keeps beating,
    so the session is not handed over; the job runs again on a new executor of the same node."""
    c = fresh()
    # This test is about the executor's replacement, not the liveness bound: on a loaded
    # machine a new executor can take longer than the bound (10 s) to boot, and the liveness
    # check would then, rightly, move the session to B. Bound raised for these two workers.
    patient = {"SESSION_BROKER_UNSERVED_PIN_TIMEOUT": "600"}
    a = c.start_worker(BACKEND, name="keep-a@%h", env=patient)
    with Session(service=c.service, backend=BACKEND) as session:
        sampler = SamplerV2(mode=session)
        assert_bell_counts(sampler.run([bell_circuit()], shots=50).result(timeout=120), 50)
        b = c.start_worker(BACKEND, name="keep-b@%h", env=patient)
        victim = EstimatorV2(mode=session).run([slow_pub(2)])
        first = executor_of(a)
        hold(c.store, victim.job_id())  # running on A's executor, frozen
        queued = [sampler.run([bell_circuit()], shots=50) for _ in range(5)]
        first.kill()
        killed_at = time.monotonic()
        replacement = wait_for(
            lambda: (lambda k: k if k and k[0].pid != first.pid else None)(
                psutil.Process(a.proc.pid).children()
            ),
            120,
            "a new executor",
        )[0]
        rec = wait_for(
            lambda: (lambda r: r if r.get("status") == "DONE" else None)(c.store.job(victim.job_id())),
            120,
            "the interrupted job to run again and end",
        )
        print(
            f"\n[executor killed] job DONE on a new executor {time.monotonic() - killed_at:.1f} s "
            "after the kill"
        )
        assert rec["attempts"] == "2" and rec["worker"] == a.node, rec
        assert int(rec["pid"]) == replacement.pid
        for job in queued:
            assert_bell_counts(job.result(timeout=120), 50)
            assert c.store.job(job.job_id())["worker"] == a.node
        assert c.store.session(session.session_id)["worker"] == a.node, "the pin moved"
        assert "lost_worker" not in c.store.session(session.session_id)
    assert a.proc.poll() is None and b.proc.poll() is None


def test_nothing_outlives_a_sigkilled_supervisor(fresh):
    c = fresh()
    w = c.start_worker(BACKEND, name="orphan@%h")
    child = wait_for(lambda: psutil.Process(w.proc.pid).children() or None, 60, "the executor")[0]
    os.kill(w.proc.pid, signal.SIGKILL)  # the supervisor only, not its process group
    wait_for(
        lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
        30,
        "the executor to die with its supervisor",
    )


# ---------------------------------------------------------------------- events on demand
class EventLog:
    """Celery task events as a monitor sees them (a real EventReceiver on the broker)."""

    def __init__(self, c):
        from session_broker.celery_app import make_app

        self.app = make_app(c.settings)
        self.events: list[dict] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the event receiver did not start"

    def run(self):
        with self.app.connection() as conn:
            recv = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self.ready.set()
            for _ in recv.itercapture(limit=None, timeout=None, wakeup=False):
                if self.stop.is_set():
                    return

    def count(self, kind: str) -> int:
        return sum(1 for e in list(self.events) if e["type"] == kind)

    def of(self, job_id: str) -> set[str]:
        return {e["type"] for e in list(self.events) if e.get("uuid") == job_id}


def test_task_events_flow_only_while_a_monitor_asks(fresh):
    c = fresh(env={"SESSION_BROKER_EVENTS_LINGER": "2"})
    c.start_worker(BACKEND, name="events@%h")
    monitor = EventLog(c)
    sampler = SamplerV2(mode=c.service.backend(BACKEND))

    quiet = sampler.run([bell_circuit()], shots=20)
    quiet.result(timeout=120)
    # a worker heartbeat arriving proves the receiver hears this worker
    wait_for(
        lambda: any(e["type"] == "worker-heartbeat" for e in monitor.events),
        30,
        "the monitor to hear the worker",
    )
    assert monitor.of(quiet.job_id()) == set(), "task events were on before anyone asked"

    monitor.app.control.enable_events()  # what Flower sends every 5 s
    watched = sampler.run([bell_circuit()], shots=20)
    watched.result(timeout=120)
    wait_for(
        lambda: {"task-received", "task-started", "task-succeeded"} <= monitor.of(watched.job_id()),
        30,
        "the watched job's events",
    )

    # nobody asks again: after the linger (2 s here, 15 s by default) they go off
    def silent() -> bool:
        job = sampler.run([bell_circuit()], shots=20)
        job.result(timeout=120)
        # the worker's next heartbeat comes down the same channel after any event of the job
        beats = monitor.count("worker-heartbeat")
        wait_for(lambda: monitor.count("worker-heartbeat") > beats, 30, "the next worker heartbeat")
        return not monitor.of(job.job_id())

    wait_for(silent, 60, "task events to go off once no monitor asks")
    monitor.stop.set()


def test_a_worker_started_while_flower_runs_sends_events_from_its_first_job(fresh):
    c = fresh()
    # what `session-broker flower` keeps alive while it runs (flower_login.keep_events_on)
    c.store.redis.set(c.store.keys.monitor, "flower", ex=60)
    monitor = EventLog(c)
    c.start_worker(BACKEND, name="late@%h")
    job = SamplerV2(mode=c.service.backend(BACKEND)).run([bell_circuit()], shots=20)
    job.result(timeout=120)
    wait_for(
        lambda: {"task-received", "task-succeeded"} <= monitor.of(job.job_id()), 30, "the first job's events"
    )
    monitor.stop.set()


def test_executors_run_aer_with_openmp_threads_that_sleep(fresh):
    """Aer's OpenMP threads spin after each job unless told otherwise: on a small machine
    they take the CPU the producer and Redis need (README, Performance)."""
    c = fresh()
    w = c.start_worker(BACKEND, name="omp@%h")
    child = wait_for(lambda: psutil.Process(w.proc.pid).children() or None, 60, "the executor")[0]
    assert child.environ().get("OMP_WAIT_POLICY") == "passive"
