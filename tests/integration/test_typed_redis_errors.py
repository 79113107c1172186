"""A producer never meets a bare redis-py exception: every call a ``QiskitRuntimeService``
(and the sessions, primitives and jobs made from it) makes to Redis raises
``BrokerOutOfMemoryError`` when Redis is at ``maxmemory`` under ``noeviction``, and
``BrokerConnectionError`` when Redis is gone, whichever call it is: not only submits.
"""

from __future__ import annotations

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from session_broker import (
    BrokerConnectionError,
    BrokerOutOfMemoryError,
    QiskitRuntimeService,
    SamplerV2,
    Session,
)
from tests.support.faults import bell_circuit

BACKEND = "ibmq_qasm_simulator"


@pytest.mark.timeout(120)
def test_out_of_memory_is_typed_on_close_cancel_and_job_calls(fresh):
    """No worker: the job stays QUEUED. Redis full: closing the session as ``with`` ends
    (the issue's raw ``OutOfMemoryError``), cancelling another, and a job's tag update each raise ``BrokerOutOfMemoryError`` naming what was refused; reads still work."""
    c = fresh()
    service = QiskitRuntimeService(c.url)
    session = Session(service=service, backend=BACKEND)
    job = SamplerV2(mode=session).run([bell_circuit()], shots=8)
    other = Session(service=service, backend=BACKEND)
    c.store.redis.config_set("maxmemory", 1)  # noeviction (Redis's default): writes refused
    try:
        with pytest.raises(BrokerOutOfMemoryError, match="out of memory.*close_session"):
            with session:
                pass
        with pytest.raises(BrokerOutOfMemoryError, match="out of memory"):
            other.cancel()
        with pytest.raises(BrokerOutOfMemoryError, match="out of memory"):
            job.update_tags(["full"])
        assert job.status() == "QUEUED"  # reads are not refused
        assert [j.job_id() for j in service.jobs(session_id=session.session_id)] == [job.job_id()]
    finally:
        c.store.redis.config_set("maxmemory", 0)
    session.close()
    assert session.status() == "In progress, not accepting new jobs"


@pytest.mark.timeout(120)
def test_lost_redis_is_typed_on_every_producer_call(fresh):
    """Redis stopped after the service connected: reads, scripts and pipelines raise
    ``BrokerConnectionError`` (after the client's retries, cut to one here so the test does
    not wait through the production client's ~40 s of them)."""
    c = fresh()
    service = QiskitRuntimeService(c.url)
    session = Session(service=service, backend=BACKEND)
    job = SamplerV2(mode=session).run([bell_circuit()], shots=8)
    service._store.redis.connection_pool.set_retry(Retry(NoBackoff(), 1))
    redis_child = next(ch for ch in c.stack.children if ch.name == c.redis_name)
    c.stack.stop_child(redis_child)
    c.stack.children.remove(redis_child)
    calls = {
        "session.close": session.close,
        "session.status": session.status,
        "session.details": session.details,
        "job.status": job.status,
        "job.cancel": job.cancel,
        "service.jobs": lambda: service.jobs(limit=5),
        "service.backends": lambda: service.backends(),
        "service.usage": service.usage,
    }
    for name, call in calls.items():
        with pytest.raises(BrokerConnectionError, match="Redis") as info:
            call()
        assert type(info.value) is BrokerConnectionError, f"{name}: {info.value!r}"
