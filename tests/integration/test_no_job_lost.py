"""No job lost, ever (issue 14): the fetch window, orphans behind foreign entries, stuck
running sets, Redis that comes back empty or runs out of memory.

Real Redis servers, real ``session-broker worker`` processes, real Celery. Waits are
conditions with deadlines; nothing here depends on how fast this machine is.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from session_broker import SamplerV2, Session
from session_broker.embedded import wait_for
from tests.conftest import Cluster, signal_group
from tests.support.faults import BACKEND, assert_bell_counts, bell_circuit, orphan_in_unacked, redis_now


def _signal(child, sig) -> None:
    signal_group(child, sig)


def _status(c: Cluster, jid: str) -> str | None:
    return c.store.job(jid, "status").get("status")


# ------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_worker_frozen_after_taking_a_message_then_killed_loses_nothing(fresh):
    """The fetch window: an idle worker always has a blocking fetch pending in Redis. Frozen
    (SIGSTOP: a hung host), it still takes a message pushed now: Redis pops it and writes it
    to a socket nobody reads. With kombu's BRPOP the message then exists only in that frozen
    process, and the SIGKILL that follows destroys it (the issue: 7 of 8 jobs lost). With the
    reliable fetch it sits on the worker's fetch list, and the reaper gives it back."""
    c = fresh()
    a = c.start_worker(BACKEND, name="frozen-a@test")
    queue = c.store.keys.backend_queue(BACKEND)
    sampler = SamplerV2(mode=c.service.backend(BACKEND))
    bell = bell_circuit()
    taken = None
    for attempt in range(20):
        _signal(a, signal.SIGSTOP)
        job = sampler.run([bell], shots=32)
        # the frozen worker's pending fetch takes it (or had just timed out: try again)
        try:
            wait_for(lambda: c.store.redis.llen(queue) == 0, 2, "the frozen worker to take it")
        except TimeoutError:
            _signal(a, signal.SIGCONT)
            job.result(timeout=120)
            continue
        taken = job
        break
    assert taken is not None, "the frozen worker never took a message in 20 tries"
    jid = taken.job_id()
    fetch = c.store.keys.worker_fetch(a.node)
    assert _status(c, jid) == "QUEUED"
    assert c.store.redis.hlen("unacked") == 0, "kombu never saw it: the worker is frozen"
    held = c.store.redis.lrange(fetch, 0, -1)
    assert [json.loads(m)["headers"]["id"] for m in held] == [jid], \
        "the message must be in Redis, on the frozen worker's fetch list"
    print(f"\n[fetch window] frozen worker took job {jid} on try {attempt + 1}; it waits on {fetch}")

    c.kill_worker(a)
    t0 = time.monotonic()
    c.start_worker(BACKEND, name="frozen-b@test")
    assert_bell_counts(taken.result(timeout=120), 32)
    rec = c.store.job(jid)
    print(f"[fetch window] job ran on B {time.monotonic() - t0:.1f} s after A was SIGKILLed")
    assert rec["attempts"] == "1" and rec["worker"] == "frozen-b@test", rec
    assert not c.store.redis.exists(fetch), "the dead worker's fetch list was given back and removed"


# ------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_unacked_rescue_reads_past_a_hundred_older_foreign_entries(fresh):
    """Other apps on the same database (or leftovers) put 150 older entries in kombu's
    unacked index that are not ours to rescue. An orphaned job behind them must still be
    given back within a few sweeps: the rescue walks the whole index with a cursor."""
    c = fresh()
    now = redis_now(c.store)
    foreign = {f"foreign-{i:03d}": now - 1000 + i for i in range(150)}
    pipe = c.store.redis.pipeline()
    pipe.zadd("unacked_index", foreign)
    for tag in foreign:
        pipe.hset("unacked", tag, json.dumps([{"headers": {"id": f"not-ours-{tag}"}}, "", "q"]))
    pipe.execute()

    job = SamplerV2(mode=c.service.backend(BACKEND)).run([bell_circuit()], shots=16)
    orphan_in_unacked(c.url, c.store, job.job_id())
    assert c.store.redis.hlen("unacked") == 151

    c.start_worker(BACKEND, name="rescue@test")
    t0 = time.monotonic()
    assert_bell_counts(job.result(timeout=4 * c.settings.heartbeat_ttl + 60), 16)
    print(f"\n[rescue] orphan behind 150 foreign unacked entries ran {time.monotonic() - t0:.1f} s "
          "after a worker started")
    # the worker acknowledges the rescued copy just after storing the result
    wait_for(lambda: c.store.redis.hlen("unacked") == 150, 30, "the rescued copy to be acked")
    assert not set(foreign) - set(c.store.redis.hkeys("unacked")), "foreign entries are left alone"


# ------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_job_recorded_running_on_a_live_worker_that_does_not_run_it_is_requeued(fresh):
    """After a Redis crash with ``appendfsync everysec`` the AOF can be half a second older
    than what live workers did: a job they finished is RUNNING again in Redis, listed in a
    live worker's running set, its session ``pending_closed``. The worker squares its
    running set with what it really runs: the job runs again, the session closes, and the
    worker can be pinned again."""
    c = fresh()
    w = c.start_worker(BACKEND, name="recon@test")
    bell = bell_circuit()
    session = Session(service=c.service, backend=BACKEND)
    sid = session.session_id
    first = SamplerV2(mode=session).run([bell], shots=16)
    first.result(timeout=120)
    assert c.store.session(sid, tick=False)["worker"] == w.node

    # the record as SUBMIT wrote it (payload, message), read while the worker is frozen
    _signal(w, signal.SIGSTOP)
    second = SamplerV2(mode=session).run([bell], shots=16)
    jid = second.job_id()
    queued = c.store.job(jid)
    _signal(w, signal.SIGCONT)
    assert queued["status"] == "QUEUED" and queued["payload"] and queued["message"]
    second.result(timeout=120)
    # what Redis holds after loading an AOF from before the job ended: the job RUNNING on the
    # live worker (its claim kept, its end lost), the session counting it as running
    j, s = c.store.keys.job(jid), c.store.keys.session(sid)
    pipe = c.store.redis.pipeline()
    pipe.hset(j, mapping={"status": "RUNNING", "worker": w.node, "claim": f"{w.node}/1",
                          "attempts": 1, "payload": queued["payload"], "message": queued["message"],
                          "finished": "", "result": "", "error_code": "", "error": ""})
    pipe.persist(j)
    pipe.delete(c.store.keys.job_done(jid))
    pipe.hincrby(s, "running", 1)
    pipe.hincrby(s, "done", -1)
    pipe.hincrby(c.store.keys.counts, "DONE", -1)
    pipe.sadd(c.store.keys.worker_running(w.node), jid)
    pipe.execute()
    session.close()
    assert c.store.session(sid, tick=False)["state"] == "pending_closed"

    t0 = time.monotonic()
    wait_for(lambda: _status(c, jid) == "DONE", 60, "the stuck job to run again and end")
    print(f"\n[reconcile] a job RUNNING in Redis but not on its live worker ran again "
          f"{time.monotonic() - t0:.1f} s later")
    rec = c.store.job(jid)
    assert rec["attempts"] == "2", rec
    wait_for(lambda: c.store.session(sid, tick=False)["state"] == "closed", 30, "the session to close")
    assert not c.store.redis.smembers(c.store.keys.worker_running(w.node))
    # the worker can be pinned again: a new session's job runs on it
    with Session(service=c.service, backend=BACKEND) as other:
        assert_bell_counts(SamplerV2(mode=other).run([bell], shots=8).result(timeout=120), 8)
    assert w.proc.poll() is None
