"""Issue 22: an executor takes its jobs through the lean consumer (``tasks/consumer.py``), not
Celery's request path. What Celery gave operators and producers must still hold: ``celery
inspect`` names the queue a worker serves and the job it runs, a plain Celery producer's
message runs, a warm shutdown lets the job in hand finish, and Celery's own path is still
there (``SESSION_BROKER_JOB_PATH=celery``). The chaos, fault and hostile-input tests run on
the lean path unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from session_broker import EstimatorV2, SamplerV2, Session
from session_broker.ops.embedded import wait_for
from tests.conftest import slow_pub
from tests.integration.test_hostile_input import bell_payload
from tests.integration.test_supervisor import executor_of
from tests.support.faults import assert_bell_counts, bell_circuit, log_text, plant_job

BACKEND = "ibmq_qasm_simulator"


def celery(c, *args: str) -> str | None:
    """What an operator types: ``celery -A session_broker.celery_app ...`` against this Redis
    (None: no node replied, as while an executor is still starting)."""
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "session_broker.celery_app", *args],
        env={**os.environ, **c.env, "SESSION_BROKER_URL": c.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode == 69 and "No nodes replied" in out.stderr:
        return None
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def served_queues(c, node: str) -> list[str] | None:
    text = celery(c, "inspect", "active_queues", "-d", node, "--json")
    return None if text is None else [q["name"] for q in json.loads(text)[node]]


def test_celery_inspect_names_the_queue_the_lean_consumer_serves(fresh):
    """Flower's Broker page and ``celery inspect active_queues`` read what a worker consumes:
    the backend's queue while free, its session's queue while pinned, and back again."""
    c = fresh()
    w = c.start_worker(BACKEND, name="lean-queues@%h")
    backend_queue = c.store.keys.backend_queue(BACKEND)
    wait_for(lambda: served_queues(c, w.node) == [backend_queue], 60, "the backend's queue")
    with Session(service=c.service, backend=BACKEND) as session:
        assert_bell_counts(SamplerV2(mode=session).run([bell_circuit()], shots=10).result(timeout=120), 10)
        session_queue = c.store.keys.session_queue(session.session_id)
        assert served_queues(c, w.node) == [session_queue]
    wait_for(lambda: served_queues(c, w.node) == [backend_queue], 60, "the backend's queue again after close")


def test_celery_inspect_active_lists_the_job_running_now(fresh):
    """While a job runs, ``inspect active`` (Flower's worker page) lists it, and not after.
    Aer keeps the GIL during one simulation call, so Celery's thread answers between a
    job's calls: the job here is 60 short PUBs (one long call would leave no gap; Celery's
    solo pool answered nothing mid-job). Up to five jobs, one must be listed while running."""
    from session_broker.celery_app import make_app

    c = fresh()
    w = c.start_worker(BACKEND, name="lean-active@%h")
    app = make_app(c.settings)
    estimator = EstimatorV2(mode=c.service.backend(BACKEND))
    seen = None
    for _ in range(5):
        job = estimator.run([slow_pub(0.05)] * 60)
        while seen is None and c.store.job(job.job_id(), "status").get("status") in ("QUEUED", "RUNNING"):
            replies = app.control.inspect(destination=[w.node], timeout=2).active() or {}
            listed = [a for a in replies.get(w.node, []) if a["id"] == job.job_id()]
            if listed and c.store.job(job.job_id(), "status").get("status") == "RUNNING":
                seen = (listed[0], int(c.store.job(job.job_id())["pid"]))
        job.result(timeout=300)
        if seen is not None:
            break
    assert seen is not None, "no running job was ever listed by celery inspect active"
    active, pid = seen
    assert active["name"] == "estimator" and active["hostname"] == w.node
    assert active["delivery_info"]["routing_key"] == c.store.keys.backend_queue(BACKEND)
    assert active["worker_pid"] == pid
    # the client may read the result a moment before the executor is done with the job
    wait_for(
        lambda: app.control.inspect(destination=[w.node], timeout=5).active() == {w.node: []},
        30,
        "the ended job to leave celery inspect active",
    )


def test_a_plain_celery_producers_message_runs_on_the_lean_path(fresh):
    """``apply_async`` writes Celery's own message (a task id of its own, its own headers) into
    our queue: the lean consumer runs the job its argument names."""
    from session_broker.celery_app import make_app

    c = fresh()
    c.start_worker(BACKEND, name="lean-plain@%h")
    app = make_app(c.settings)
    jid = plant_job(c.store, payload=bell_payload(), push=False)
    result = app.send_task(
        "sampler", args=[jid], kwargs={"backend": BACKEND}, queue=c.store.keys.backend_queue(BACKEND)
    )
    assert result.id != jid
    rec = wait_for(
        lambda: (lambda r: r if r.get("status") in ("DONE", "ERROR") else None)(c.store.job(jid)),
        120,
        "the planted job to run",
    )
    assert rec["status"] == "DONE" and rec["attempts"] == "1", rec
    assert c.store.redis.llen(c.store.keys.worker_fetch(rec["worker"])) == 0


def test_a_warm_shutdown_lets_the_job_in_hand_finish(fresh):
    """SIGTERM (``systemctl stop``, compose down): the lean consumer takes no new job, the one
    running ends DONE once, and the worker exits and deregisters."""
    c = fresh()
    w = c.start_worker(BACKEND, name="lean-warm@%h")
    job = EstimatorV2(mode=c.service.backend(BACKEND)).run([slow_pub(3)])
    wait_for(lambda: c.store.job(job.job_id(), "status").get("status") == "RUNNING", 60, "the job to run")
    c.stop_worker(w, grace=120)
    rec = c.store.job(job.job_id())
    assert rec["status"] == "DONE" and rec["attempts"] == "1", rec
    assert not c.store.redis.hexists(c.store.keys.workers, w.node)


def test_celerys_own_job_path_still_runs_jobs(fresh):
    """The benchmark's comparison (``--profile``, variant celery_path) runs on it."""
    c = fresh()
    c.start_worker(BACKEND, name="celery-path@%h", env={"SESSION_BROKER_JOB_PATH": "celery"})
    with Session(service=c.service, backend=BACKEND) as session:
        jobs = [SamplerV2(mode=session).run([bell_circuit()], shots=10) for _ in range(3)]
        for job in jobs:
            assert_bell_counts(job.result(timeout=120), 10)


def test_a_queue_key_of_the_wrong_type_pauses_the_consumer_and_does_not_end_it(fresh):
    """Anyone who can write to Redis can make a queue's key a string: BLMOVE then answers
    WRONGTYPE. The lean consumer says so and tries again; it must not end its executor into
    a restart loop, and it serves the queue again once the key is a list."""
    c = fresh()
    w = c.start_worker(BACKEND, name="lean-wrongtype@%h")
    queue = c.store.keys.backend_queue(BACKEND)
    sampler = SamplerV2(mode=c.service.backend(BACKEND))
    assert_bell_counts(sampler.run([bell_circuit()], shots=10).result(timeout=120), 10)
    executor = executor_of(w)
    c.store.redis.set(queue, "not a list")
    wait_for(lambda: "Redis refused the fetch" in log_text(w.log), 60, "the consumer to report the refusal")
    c.store.redis.delete(queue)
    assert_bell_counts(sampler.run([bell_circuit()], shots=10).result(timeout=120), 10)
    assert executor_of(w).pid == executor.pid


def test_a_message_that_is_not_utf8_is_dead_lettered_and_the_executor_lives_on(fresh):
    """Bytes that are not UTF-8 text in a queue: the consumer reads its replies as bytes, so
    it refuses such a message (dead letter) rather than fail decoding it and end its
    executor (each restart dropped the message unrecorded, and a stream of them kept the
    worker restarting)."""
    c = fresh()
    w = c.start_worker(BACKEND, name="lean-bytes@%h")
    sampler = SamplerV2(mode=c.service.backend(BACKEND))
    assert_bell_counts(sampler.run([bell_circuit()], shots=10).result(timeout=120), 10)
    executor = executor_of(w)
    with redis.Redis.from_url(c.url) as r:  # bytes as they are, not text
        for _ in range(3):
            r.lpush(c.store.keys.backend_queue(BACKEND), b'{"body": "\xff\xfe"}')

    def dead():
        found = [d for d in c.store.redis.lrange(c.store.keys.dead, 0, -1) if "not UTF-8" in d]
        return found if len(found) == 3 else None

    wait_for(dead, 60, "the three messages in the dead-letter list")
    assert_bell_counts(sampler.run([bell_circuit()], shots=10).result(timeout=120), 10)
    assert executor_of(w).pid == executor.pid
    assert c.store.redis.llen(c.store.keys.worker_fetch(w.node)) == 0


def test_a_message_stranded_on_the_fetch_list_is_taken_at_the_next_fetch(fresh):
    """redis-py sends a command again when it lost the reply (a blip, a failover): a second
    BLMOVE or LMOVE then moves one message more onto the fetch list, where the consumer does
    not know of it. Its next fetch takes the oldest such message first, in the fetch's own
    round trip: the job runs at once, not after the reconcile gives its message back."""
    c = fresh()
    w = c.start_worker(BACKEND, name="lean-stranded@%h")
    assert_bell_counts(
        SamplerV2(mode=c.service.backend(BACKEND)).run([bell_circuit()], shots=10).result(timeout=120), 10
    )
    jid = plant_job(c.store, payload=bell_payload(), push=False)
    c.store.redis.lpush(c.store.keys.worker_fetch(w.node), c.store.job(jid)["message"])
    rec = wait_for(
        lambda: (lambda r: r if r.get("status") in ("DONE", "ERROR") else None)(c.store.job(jid)),
        60,
        "the stranded job to run",
    )
    assert rec["status"] == "DONE" and rec["attempts"] == "1", rec
    assert not rec.get("requeued_at"), "the reconcile gave it back: the fetch did not take it"
    assert "left on the fetch list; taking it first" in log_text(w.log)
    assert c.store.redis.llen(c.store.keys.worker_fetch(w.node)) == 0
