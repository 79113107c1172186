"""Issue 20: no session waits on a pin that nothing serves.

A worker's heartbeat says its supervisor is alive, not that its executor takes the pinned
session's jobs. Each test below leaves a pin unserved in one way a user met (a frozen
executor, an executor whose Redis connection went silent, an executor consuming the wrong
queue, a worker named the Celery way) and checks that the session's jobs still finish, on
another worker or a replaced executor, within the liveness bound
(``SESSION_BROKER_UNSERVED_PIN_TIMEOUT``) plus the jobs' own time, and that the mechanism
that freed it is the liveness check (counted, logged), not the heartbeat's expiry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from session_broker import SamplerV2, Session
from session_broker.ops.embedded import wait_for
from tasks.supervisor import node_name
from tests.support.faults import BACKEND, assert_bell_counts, bell_circuit, log_text
from tests.support.proxy import Proxy

BOUND = 3.0  # the tests' liveness bound (s); the default is 10
ENV = {"SESSION_BROKER_UNSERVED_PIN_TIMEOUT": str(BOUND)}
# the bound, plus a few Bell jobs, plus an executor's restart, with room for a loaded machine
DEADLINE = BOUND + 90


def executor_of(worker) -> psutil.Process:
    kids = psutil.Process(worker.proc.pid).children(recursive=False)
    assert len(kids) == 1, f"one executor per node, found {kids}"
    return kids[0]


def wait_executor(worker, not_pid: int | None = None, timeout: float = 90) -> psutil.Process:
    def ready():
        kids = psutil.Process(worker.proc.pid).children(recursive=False)
        return kids[0] if len(kids) == 1 and kids[0].pid != not_pid else None

    return wait_for(ready, timeout, "the worker's executor")


def pinned_session(c, worker, sampler_session) -> None:
    """Run one job so the session is pinned to ``worker`` (the only worker up)."""
    job = SamplerV2(mode=sampler_session).run([bell_circuit()], shots=20)
    assert_bell_counts(job.result(timeout=120), 20)
    assert c.store.session(sampler_session.session_id)["worker"] == worker.node


def unserved_count(c) -> int:
    return int(c.store.redis.hget(c.store.keys.counts, "unserved_pins") or 0)


def run_after_fault(c, session, n: int = 3) -> tuple[list, float]:
    t0 = time.monotonic()
    sampler = SamplerV2(mode=session)
    jobs = [sampler.run([bell_circuit()], shots=20) for _ in range(n)]
    for job in jobs:
        assert_bell_counts(job.result(timeout=DEADLINE), 20)
    return jobs, time.monotonic() - t0


def test_a_frozen_executor_loses_its_session_to_another_worker(fresh):
    c = fresh(env=ENV)
    a = c.start_worker(BACKEND, name="frozen-exec-a@%h")
    with Session(service=c.service, backend=BACKEND) as session:
        pinned_session(c, a, session)
        b = c.start_worker(BACKEND, name="frozen-exec-b@%h")
        frozen = executor_of(a)
        frozen.suspend()  # SIGSTOP: a hung C++ call between jobs; the supervisor keeps beating
        try:
            jobs, took = run_after_fault(c, session)
        finally:
            if frozen.is_running():
                frozen.resume()
        assert {c.job(j.job_id())["worker"] for j in jobs} == {b.node}
        rec = c.store.session(session.session_id)
        assert rec["lost_worker"] == a.node and rec.get("unserved_at")
        assert took < DEADLINE
    assert unserved_count(c) == 1
    # A was never taken for dead: it beat throughout; its frozen executor was replaced
    assert c.store.redis.exists(c.store.keys.worker(a.node))
    wait_for(
        lambda: not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE,
        30,
        "the frozen executor to be killed",
    )
    wait_executor(a, not_pid=frozen.pid)
    wait_for(
        lambda: "left its pinned session's jobs unclaimed" in log_text(a.log), 30, "the supervisor's log line"
    )


def test_a_frozen_executor_is_replaced_and_its_node_serves_the_session_again(fresh):
    """One worker only: nothing else can take the session, so the node must heal itself."""
    c = fresh(env=ENV)
    a = c.start_worker(BACKEND, name="lonely@%h")
    with Session(service=c.service, backend=BACKEND) as session:
        pinned_session(c, a, session)
        frozen = executor_of(a)
        frozen.suspend()
        jobs, took = run_after_fault(c, session)
        assert {c.job(j.job_id())["worker"] for j in jobs} == {a.node}
        assert {c.job(j.job_id())["pid"] for j in jobs} != {str(frozen.pid)}
    assert unserved_count(c) == 1
    assert not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE


def test_an_executor_whose_redis_connection_went_silent_loses_its_session(fresh):
    c = fresh(env=ENV)
    port = int(c.url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    try:
        # worker A reaches Redis through the proxy: supervisor and executor alike
        a = c.start_worker(BACKEND, name="silent-a@%h", env={"SESSION_BROKER_URL": proxy.url()})
        with Session(service=c.service, backend=BACKEND) as session:
            pinned_session(c, a, session)
            b = c.start_worker(BACKEND, name="silent-b@%h")
            cut = executor_of(a)
            assert proxy.cut(cut.pid) >= 1  # its requests vanish; no reply, no reset
            jobs, took = run_after_fault(c, session)
            assert {c.job(j.job_id())["worker"] for j in jobs} == {b.node}
            assert c.store.session(session.session_id)["lost_worker"] == a.node
        assert unserved_count(c) == 1
        assert c.store.redis.exists(c.store.keys.worker(a.node)), "A's supervisor beat throughout"
        wait_executor(a, not_pid=cut.pid)
    finally:
        proxy.close()


def test_an_executor_consuming_the_wrong_queue_loses_its_session(fresh):
    """An operator's ``celery control cancel_consumer`` takes the session's queue from the
    executor behind the supervisor's back: it consumes nothing the session needs."""
    c = fresh(env=ENV)
    a = c.start_worker(BACKEND, name="wrongq-a@%h")
    with Session(service=c.service, backend=BACKEND) as session:
        pinned_session(c, a, session)
        queue = c.store.keys.session_queue(session.session_id)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "session_broker.celery_app",
                "control",
                "cancel_consumer",
                queue,
                "-d",
                a.node,
            ],
            env={**os.environ, **c.env, "SESSION_BROKER_URL": c.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and "no longer consuming" in out.stdout, out.stdout + out.stderr
        jobs, took = run_after_fault(c, session)
        assert took < DEADLINE
    assert unserved_count(c) == 1


def test_a_worker_named_the_celery_way_is_one_node_everywhere(fresh):
    """``--name w@%h`` (Celery's own convention): the registry, the pin, the executor's Celery
    node and ``celery inspect`` all say ``w@<host>``; before, the registry said ``w@%h``
    and every session pinned to it hung."""
    c = fresh()
    host = socket.gethostname()
    w0 = c.start_worker(BACKEND, name="accept0@%h")
    w1 = c.start_worker(BACKEND, name="accept1@%h")
    assert {w0.node, w1.node} == {f"accept0@{host}", f"accept1@{host}"}
    assert set(c.store.redis.hkeys(c.store.keys.workers)) == {w0.node, w1.node}
    for _ in range(4):  # sessions land on both workers
        with Session(service=c.service, backend=BACKEND) as session:
            sampler = SamplerV2(mode=session)
            for job in [sampler.run([bell_circuit()], shots=10) for _ in range(2)]:
                assert_bell_counts(job.result(timeout=120), 10)
            assert c.store.session(session.session_id)["worker"] in (w0.node, w1.node)
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "session_broker.celery_app", "inspect", "ping", "-d", w0.node],
        env={**os.environ, **c.env, "SESSION_BROKER_URL": c.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and f"{w0.node}: OK" in out.stdout.replace("->  ", ""), out.stdout + out.stderr
    assert unserved_count(c) == 0


@pytest.mark.parametrize("name", ["w1@%z", "%%h", "w1@%h%"])
def test_a_name_that_is_no_node_name_is_refused_at_start(name):
    out = subprocess.run(
        [sys.executable, "-m", "session_broker.ops.cli", "worker", "--backend", BACKEND, "--name", name],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SESSION_BROKER_URL": "redis://127.0.0.1:1/0"},
    )
    assert out.returncode == 2, out.stderr
    assert "not a node name" in out.stderr and "%h" in out.stderr, out.stderr


def test_node_names_expand_as_celery_expands_them():
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    assert node_name("w1@%h") == f"w1@{host}"
    assert node_name("w1@%n") == f"w1@{short}"
    assert node_name("plain") == "celery@plain"  # Celery: a name without @ is a host
    assert node_name("w-%n@%h") == f"w-{short}@{host}"
