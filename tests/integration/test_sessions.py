"""Issue 4: the session contract (docs/sessions-guide.rst + session-semantics.md) on real
workers, with short timers set through the operator's configuration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from session_broker import (
    BackendMismatchError,
    Batch,
    Estimator,
    EstimatorV2,
    FirstJobCancelledError,
    InvalidMaxTimeError,
    JobCancelledError,
    Sampler,
    SamplerV2,
    Session,
    SessionClosedError,
    SessionMaxTimeError,
    SessionNotFoundError,
)
from session_broker.ops.embedded import wait_for
from session_broker.session import parse_max_time
from tests.conftest import HOST, make_cluster, slow_pub

ITL = 2  # interactive timeout (s) for this module's workers
SOLO = "aer_simulator"  # served by exactly one worker: contention tests
PAIR = "ibmq_qasm_simulator"  # served by two workers: batches


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cl = make_cluster(
        stack,
        redis_url,
        env={"SESSION_BROKER_INTERACTIVE_TIMEOUT": str(ITL), "SESSION_BROKER_OPEN_SESSION_TIMEOUT": "4"},
    )
    cl.solo = cl.start_worker(SOLO, name="solo@%h", wait=False)
    cl.start_worker(PAIR, name="pair-1@%h", wait=False)
    cl.start_worker(PAIR, name="pair-2@%h", wait=False)
    for node in list(cl.workers):
        cl.wait_registered(node)
    return cl


def rec(c, jid):
    return c.store.job(jid)


def pin_of(c, node):
    return c.store.redis.get(c.store.keys.worker_pin(node)) or ""


def test_status_strings_and_transitions_through_close(c, bell, hold):
    pub = slow_pub(1.5)  # measured before the session opens: its open timeout is short
    with Session(service=c.service, backend=SOLO) as session:
        assert session.status() == "Pending"
        assert session.details()["state"] == "open"
        sampler = SamplerV2()
        slow = EstimatorV2().run([pub])
        held = hold(c.store, slow.job_id())  # running until released, however fast this machine
        assert session.status() == "In progress, accepting new jobs"
        d = session.details()
        assert d["state"] == "active" and d["started_at"] and d["worker"] == f"solo@{HOST}"
        queued = [sampler.run([bell]) for _ in range(3)]
    # left the block with work outstanding: draining
    assert session.status() == "In progress, not accepting new jobs"
    assert session.details()["accepting_jobs"] is False
    with pytest.raises(SessionClosedError, match="not accepting new jobs"):
        sampler.run([bell])
    held.release()
    for job in [slow, *queued]:
        job.result(timeout=60)
    wait_for(lambda: session.status() == "Closed", 30, "drained session to close")
    # closing released the worker at once, not after the interactive timeout
    d = session.details()
    assert d["state"] == "closed" and d["closed_at"] and d["worker"] is None
    assert pin_of(c, f"solo@{HOST}") == ""
    assert (
        float(c.session(session.session_id)["closed_at"]) - float(rec(c, queued[-1].job_id())["finished"])
        < 1.0
    )
    with pytest.raises(SessionClosedError, match="Closed"):
        sampler.run([bell])


def test_details_keys_and_formats(c):
    # everything slow happens before the session opens (its open timeout is 4 s here): the
    # measurement in slow_pub, and the client's first V1 call (imports, transpilation)
    qc, obs, values = slow_pub(0.05)
    Estimator(backend=SOLO).run(qc, obs, [values[0]]).result(timeout=60)
    session = Session(service=c.service, backend=SOLO, max_time="2h 30m 40s")
    d = session.details()
    for key in (
        "id",
        "backend_name",
        "interactive_timeout",
        "max_time",
        "active_timeout",
        "state",
        "accepting_jobs",
        "last_job_started",
        "last_job_completed",
        "started_at",
        "closed_at",
    ):
        assert key in d
    assert d["id"] == session.session_id and d["backend_name"] == SOLO
    assert d["interactive_timeout"] == ITL and d["max_time"] == 9040 and d["active_timeout"] == 9040
    assert d["state"] == "open" and d["accepting_jobs"] is True
    assert d["started_at"] is None and d["last_job_started"] is None and d["closed_at"] is None
    job = Estimator(session=session).run(qc, obs, [values[0]])
    job.result(timeout=60)
    d = session.details()
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    for key in ("last_job_started", "last_job_completed", "started_at"):
        assert iso.match(d[key]), d[key]
    assert 9030 <= d["active_timeout"] <= 9040
    assert d["usage_time"] > 0 and d["jobs"]["done"] == 1
    session.cancel()
    d = session.details()
    assert d["state"] == "closed" and iso.match(d["closed_at"]) and d["active_timeout"] == 0


@pytest.mark.parametrize(
    "value,seconds",
    [
        (60, 60),
        ("25m", 1500),
        ("2h 30m 40s", 9040),
        ("1h", 3600),
        ("45s", 45),
        ("1d", 86400),
        (" 1h30m ", 5400),
    ],
)
def test_max_time_valid_forms(value, seconds):
    assert parse_max_time(value, 86400) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "90",
        "2h xyz",
        "-5m",
        "1.5h",
        0,
        -1,
        True,
        False,
        "",
        "m",
        1.5,
        None,
        "30m 2h",
        28801,
        "1 h",
        "5 m 3 s",
    ],
)
def test_max_time_invalid_forms(c, value):
    if value is None:
        pytest.raises(InvalidMaxTimeError, parse_max_time, value, 28800)
        return
    with pytest.raises(InvalidMaxTimeError, match="max_time"):
        Session(service=c.service, backend=SOLO, max_time=value)


def test_exclusivity_and_first_come_first_served(c, bell):
    pub = slow_pub(1.5)
    a = Session(service=c.service, backend=SOLO)
    first = EstimatorV2(mode=a).run([pub])
    wait_for(lambda: pin_of(c, f"solo@{HOST}") == a.session_id, 30, "A to be pinned")
    # while A is active: a non-session job and sessions B, C (in that order) wait
    outside = SamplerV2(mode=SOLO).run([bell])
    b, cc = Session(service=c.service, backend=SOLO), Session(service=c.service, backend=SOLO)
    b_job = SamplerV2(mode=b).run([bell])
    c_job = SamplerV2(mode=cc).run([bell])
    more = SamplerV2(mode=a).run([bell])  # A keeps the worker while it has work
    more.result(timeout=60)
    assert outside.status() == b_job.status() == c_job.status() == "QUEUED"
    first.result(timeout=60)
    # A is idle now, but within its interactive timeout: still exclusive. Checked while A's
    # idle timer runs (a stalled test process could otherwise look past it: then no check).
    idle = c.store.keys.timer(a.session_id, "idle")
    statuses = (outside.status(), b_job.status())
    if c.store.redis.exists(idle):
        assert statuses == ("QUEUED", "QUEUED")
    a.close()  # releases the worker at once
    for job in (b_job, c_job, outside):
        job.result(timeout=60)
    times = {
        name: float(rec(c, j.job_id())["running"])
        for name, j in (("b", b_job), ("c", c_job), ("outside", outside))
    }
    a_closed = float(c.session(a.session_id)["closed_at"])
    assert min(times.values()) >= a_closed  # nothing ran on the worker while A held it
    assert times["b"] < times["c"]  # sessions get the worker in arrival order
    b.close()
    cc.close()


def test_deactivation_after_interactive_timeout_and_reactivation(c, bell):
    with Session(service=c.service, backend=SOLO) as session:
        sampler = SamplerV2()
        sampler.run([bell]).result(timeout=60)
        assert session.status() == "In progress, accepting new jobs"
        t0 = time.monotonic()
        wait_for(lambda: session.details()["state"] == "inactive", ITL + 5, "deactivation")
        assert time.monotonic() - t0 >= ITL - 0.5
        assert session.status() == "Pending"
        wait_for(lambda: pin_of(c, f"solo@{HOST}") == "", 30, "worker release")
        # the released worker serves others now
        SamplerV2(mode=SOLO).run([bell]).result(timeout=60)
        # a new job reactivates the session
        sampler.run([bell]).result(timeout=60)
        assert session.status() == "In progress, accepting new jobs"
        assert session.details()["worker"] == f"solo@{HOST}"


def test_open_session_without_jobs_is_closed_after_open_timeout(c):
    session = Session(service=c.service, backend=SOLO)
    wait_for(lambda: session.status() == "Closed", 40, "open-session timeout")
    assert c.session(session.session_id)["closed_reason"] == "open_session_timeout"


def test_max_time_expiry_fails_queued_jobs_while_running_one_finishes(c, bell, hold):
    pub = slow_pub(1.5)
    with Session(service=c.service, backend=SOLO, max_time=2) as session:
        running = EstimatorV2().run([pub])
        queued = [SamplerV2().run([bell]) for _ in range(3)]
        held = hold(c.store, running.job_id())
        # the max time runs out while the job runs, whatever this machine's speed
        wait_for(lambda: c.session(session.session_id)["state"] == "closed", 60, "max_time to run out")
        held.release()
        result = running.result(timeout=60)  # runs to completion and keeps its result
        assert result[0].data.evs.shape[0] > 1
    for job in queued:
        with pytest.raises(SessionMaxTimeError, match="reached its max_time"):
            job.result(timeout=30)
        assert job.status() == "ERROR"
    assert session.status() == "Closed"
    assert c.session(session.session_id)["closed_reason"] == "max_time"
    wait_for(lambda: pin_of(c, f"solo@{HOST}") == "", 30, "worker release after expiry")


def test_cancel_with_50_queued_none_runs_running_one_completes(c, bell, hold):
    pub = slow_pub(1.5)
    session = Session(service=c.service, backend=SOLO)
    running = EstimatorV2(mode=session).run([pub])
    held = hold(c.store, running.job_id())  # still running while 50 jobs are queued, however slowly
    queued = [SamplerV2(mode=session).run([bell]) for _ in range(50)]
    session.cancel()
    assert session.status() == "Closed"
    held.release()
    assert running.result(timeout=60)[0].data.evs.size > 1
    for job in queued:
        assert job.status() == "CANCELLED"
        with pytest.raises(JobCancelledError):
            job.result(timeout=1)
    assert all(rec(c, j.job_id())["attempts"] == "0" for j in queued)
    with pytest.raises(SessionClosedError):
        SamplerV2(mode=session).run([bell])
    # the cancellation is recorded in Redis: nothing of the session's queue is left
    assert c.store.redis.llen(c.store.keys.session_queue(session.session_id)) == 0
    wait_for(lambda: pin_of(c, f"solo@{HOST}") == "", 30, "worker release after cancel")


def test_cancelled_first_job_fails_every_later_job(c, bell, hold):
    pub = slow_pub(1.0)
    blocker = Session(service=c.service, backend=SOLO)
    busy = EstimatorV2(mode=blocker).run([pub])
    held = hold(c.store, busy.job_id())  # keeps the only worker busy until released
    with Session(service=c.service, backend=SOLO) as session:
        first = SamplerV2().run([bell])
        second = SamplerV2().run([bell])
        assert first.cancel() is True
        third = SamplerV2().run([bell])
    blocker.close()
    held.release()
    for job in (second, third):
        with pytest.raises(FirstJobCancelledError, match=first.job_id()):
            job.result(timeout=60)
    assert first.status() == "CANCELLED"
    wait_for(lambda: session.status() == "Closed", 40, "session to close")


def test_from_id_in_another_process(c, bell):
    session = Session(service=c.service, backend=PAIR)
    SamplerV2(mode=session).run([bell]).result(timeout=60)
    code = (
        f"import json; from session_broker import *; s=Session.from_id('{session.session_id}', "
        f"QiskitRuntimeService('{c.url}')); r=SamplerV2(mode=s).run([__import__('qiskit').QuantumCircuit.from_qasm_str("
        f"{bell_qasm()!r})]).result(timeout=60); print(json.dumps([s.status(), s.details()['id'], s.backend()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr
    status, sid, backend = json.loads(out.stdout.strip().splitlines()[-1])
    assert (status, sid, backend) == ("In progress, accepting new jobs", session.session_id, PAIR)
    assert session.details()["jobs"]["done"] == 2
    session.close()
    before = c.store.redis.dbsize()
    with pytest.raises(SessionNotFoundError):
        Session.from_id("no-such-session", c.service)
    assert c.store.redis.dbsize() == before  # never creates a session


def bell_qasm():
    return 'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; h q[0]; cx q[0],q[1]; measure q -> c;'


def test_primitives_in_other_threads_of_the_with_block_use_the_session(c, bell):
    with Session(service=c.service, backend=PAIR) as session:
        found = {}

        def make():
            found["v2"] = SamplerV2().session
            found["v1"] = Sampler().session

        t = threading.Thread(target=make)
        t.start()
        t.join()
    assert found == {"v2": session, "v1": session}


def test_backend_mismatch_is_an_error(c):
    with Session(service=c.service, backend=PAIR) as session:
        with pytest.raises(BackendMismatchError):
            SamplerV2(mode=SOLO)
        with pytest.raises(BackendMismatchError):
            Sampler(backend=SOLO, session=session)


def test_batch_runs_jobs_on_two_workers_at_once(c):
    pub = slow_pub(1.5)
    with Batch(service=c.service, backend=PAIR) as batch:
        estimator = EstimatorV2()
        jobs = [estimator.run([pub]) for _ in range(4)]
        for job in jobs:
            job.result(timeout=90)
    records = [rec(c, j.job_id()) for j in jobs]
    assert {r["worker"] for r in records} == {f"pair-1@{HOST}", f"pair-2@{HOST}"}
    spans = sorted((float(r["running"]), float(r["finished"])) for r in records)
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), spans  # overlap
    assert batch.details()["mode"] == "batch"
    wait_for(lambda: batch.status() == "Closed", 30, "batch to close")


def test_no_keys_left_after_1000_sessions(c, bell):
    r, keys = c.store.redis, c.store.keys
    sids = []
    for i in range(1000):
        s = Session(service=c.service, backend=PAIR)
        sids.append(s.session_id)
        if i % 100 == 0:
            SamplerV2(mode=s).run([bell]).result(timeout=60)
        s.close()
    wait_for(
        lambda: all(r.hget(keys.session(sid), "state") == "closed" for sid in sids[::100]),
        30,
        "sessions to close",
    )
    live = set(r.scan_iter(count=10000))
    allowed = re.compile(rf"^{keys.prefix}:(s:[0-9a-f]+(:jobs)?|j:[0-9a-f]+(:done)?)$")
    for sid in sids:
        for key in (
            keys.timer(sid, "max"),
            keys.timer(sid, "idle"),
            keys.timer(sid, "open"),
            *keys.queue_keys(keys.session_queue(sid)),
        ):
            assert key not in live, key
        assert r.zscore(keys.deadlines, sid) is None
        assert r.ttl(keys.session(sid)) > 0  # the summary is retained, and expires
    leftovers = [k for k in live if any(sid in k for sid in sids) and not allowed.match(k)]
    assert leftovers == []
    for key in live:
        if allowed.match(key):
            assert r.ttl(key) > 0, key  # everything retained expires
