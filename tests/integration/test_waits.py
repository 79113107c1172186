"""No silent waits (issue 24): ``run()`` on a backend no live worker serves warns at once,
naming the command that starts one, and a waiting ``result()`` logs, every
``SESSION_BROKER_WAIT_REPORT_INTERVAL`` seconds, why the job waits: no worker, the workers
pinned to another session (idle for how long, released when, and the command that frees them),
or the job's place in its queue. Real Redis, real workers, the real CLI."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from session_broker import EstimatorV2, JobTimeoutError, NoLiveWorkerWarning, SamplerV2, Session
from session_broker.core.config import get_settings
from session_broker.ops.embedded import wait_for
from tests.conftest import make_cluster, slow_pub
from tests.support.rest import REPO

INTERVAL = 0.3  # s between two reports of one wait (the default is 30)
BACKEND = "ibmq_qasm_simulator"


@pytest.fixture
def c(stack, fresh, monkeypatch):
    """A Redis of its own, no worker yet; this process's producer reports every INTERVAL s."""
    cluster = fresh()
    monkeypatch.setenv("SESSION_BROKER_WAIT_REPORT_INTERVAL", str(INTERVAL))
    made = make_cluster(stack, cluster.url)  # this process's defaults point at it
    made.workers = cluster.workers  # stopped by `fresh` at the end
    yield made
    monkeypatch.delenv("SESSION_BROKER_WAIT_REPORT_INTERVAL")
    get_settings.cache_clear()


def reports(caplog, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "session_broker.wait" and job_id in r.getMessage()]


def wait_reports(caplog, job, n: int = 2) -> list[str]:
    """Wait in ``job.result()`` until it has logged ``n`` reports; their messages."""
    caplog.clear()

    def reported():
        try:
            job.result(timeout=INTERVAL * 2)
        except JobTimeoutError:
            pass
        else:
            raise AssertionError(f"job {job.job_id()} ended: it should still wait")
        return len(reports(caplog, job.job_id())) >= n

    wait_for(reported, 60, f"{n} reports of why job {job.job_id()} waits")
    found = reports(caplog, job.job_id())
    assert all(r.levelno == logging.WARNING for r in found), [r.levelname for r in found]
    return [r.getMessage() for r in found]


def test_no_worker_warns_at_run_and_the_wait_says_why(c, bell, caplog):
    caplog.set_level(logging.INFO, logger="session_broker")
    with pytest.warns(NoLiveWorkerWarning) as caught:
        job = SamplerV2(mode=BACKEND).run([bell], shots=10)
    (warning,) = [w for w in caught if w.category is NoLiveWorkerWarning]
    text = str(warning.message)
    assert f"session-broker worker --backend {BACKEND}" in text and job.job_id() in text, text
    assert warning.filename == __file__  # it points at the user's run() line
    said = wait_reports(caplog, job)
    assert f"no live worker serves backend '{BACKEND}'" in said[-1], said
    assert f"session-broker worker --backend {BACKEND}" in said[-1], said

    c.start_worker(BACKEND)  # what the warning told the user to do
    assert job.result(timeout=120)[0].data.meas.num_shots == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoLiveWorkerWarning)  # a served backend: no warning
        assert SamplerV2(mode=BACKEND).run([bell], shots=5).result(timeout=120)[0].data.meas.num_shots == 5


def test_a_worker_pinned_to_an_abandoned_session_is_named_with_the_command_that_frees_it(c, bell, caplog):
    """The issue's 286.6 s wait: a producer left its session open, pinned to the only worker;
    the next user's result() says which session holds it, for how long, and how to free it."""
    caplog.set_level(logging.INFO, logger="session_broker")
    worker = c.start_worker(BACKEND)
    abandoned = Session(backend=BACKEND)  # neither closed nor cancelled: its producer "died"
    SamplerV2(mode=abandoned).run([bell], shots=10).result(timeout=120)
    sid = abandoned.session_id
    assert c.store.redis.get(c.store.keys.worker_pin(worker.node)) == sid

    with warnings.catch_warnings():
        warnings.simplefilter("error", NoLiveWorkerWarning)  # the worker is live
        first = SamplerV2(mode=BACKEND).run([bell], shots=10)
        second = SamplerV2(mode=BACKEND).run([bell], shots=10)
    said = wait_reports(caplog, second)[-1]
    assert f"worker {worker.node} is pinned to session {sid}" in said, said
    assert f"`session-broker session cancel {sid}` frees it now" in said, said
    idle = re.search(r"idle (\d+) s, released in (\d+) s by its interactive timeout", said)
    assert idle, said
    assert int(idle.group(1)) + int(idle.group(2)) <= 300 + 2, said  # the interactive timeout
    assert f"number 2 of 2 in the queue of backend '{BACKEND}'" in said, said

    # the hint, run as printed: the worker is freed and both jobs run
    cancel = subprocess.run(
        [sys.executable, "-m", "session_broker.ops.cli", "session", "cancel", sid],
        cwd=REPO,
        env={**os.environ, "SESSION_BROKER_URL": c.url, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cancel.returncode == 0, cancel.stderr
    assert first.result(timeout=120)[0].data.meas.num_shots == 10
    assert second.result(timeout=120)[0].data.meas.num_shots == 10


def test_a_session_job_behind_its_own_jobs_reports_its_place(c, bell, caplog, hold):
    """A job queued behind its own session's running job says where it is, not that it is stuck."""
    caplog.set_level(logging.INFO, logger="session_broker")
    worker = c.start_worker(BACKEND)
    session = Session(backend=BACKEND)
    slow = EstimatorV2(mode=session).run([slow_pub(2)])
    held = hold(c.store, slow.job_id())
    behind = SamplerV2(mode=session).run([bell], shots=10)
    said = wait_reports(caplog, behind)[-1]
    assert f"session {session.session_id} runs on worker {worker.node}; number 1 of 1 in its queue" in said
    held.release()
    assert behind.result(timeout=120)[0].data.meas.num_shots == 10
    session.cancel()


def test_a_wait_behind_a_session_whose_producer_died_says_so(c, bell, caplog):
    """The producer was killed inside ``with Session``: the waiting job's report says so."""
    import signal
    import textwrap

    caplog.set_level(logging.INFO, logger="session_broker")
    worker = c.start_worker(BACKEND)
    script = textwrap.dedent(
        f"""
        import signal
        from qiskit import QuantumCircuit
        from session_broker import SamplerV2, Session
        qc = QuantumCircuit(1); qc.measure_all()
        with Session(backend={BACKEND!r}) as session:
            SamplerV2(mode=session).run([qc], shots=10).result(timeout=120)
            print(session.session_id, flush=True)
            signal.pause()  # killed in here
        """
    )
    env = {**os.environ, "SESSION_BROKER_URL": c.url, "SESSION_BROKER_PRODUCER_BEAT": "0.3"}
    producer = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        sid = producer.stdout.readline().strip()
        assert sid and c.store.redis.get(c.store.keys.worker_pin(worker.node)) == sid
    finally:
        producer.send_signal(signal.SIGKILL)
        producer.wait(30)
    wait_for(
        lambda: not c.store.redis.exists(c.store.keys.session_producer(sid)),
        30,
        "the producer's key to lapse",
    )
    job = SamplerV2(mode=BACKEND).run([bell], shots=10)
    said = wait_reports(caplog, job)[-1]
    assert f"pinned to session {sid}" in said and "is gone" in said, said
    c.store.cancel_session(sid)
    assert job.result(timeout=120)[0].data.meas.num_shots == 10
