"""Sentinel failover with the default settings (issue 20): nothing set but the
``sentinel://`` URL.

A producer runs a session's jobs one after another while the master is SIGKILLed. Repeated
on fresh stacks, since the machine's timing decides where in a job the kill lands:
- a job whose result the producer received is DONE on the promoted replica, never read
  back as RUNNING (writes wait for the replica by default with Sentinel, and a worker wakes
  the producer only after the WAIT);
- after the failover no replica is left (the old master stays dead): writes stop waiting
  (degraded, counted) instead of waiting out ``WAIT``'s timeout on every submit and result,
  so the median job takes at most twice its time before the failover.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import pytest

from session_broker import SamplerV2, Session
from session_broker.ops.embedded import Stack, wait_for
from tests.conftest import make_cluster
from tests.support.faults import bell_circuit

BACKEND = "ibmq_qasm_simulator"
BEFORE, AFTER = 15, 15  # jobs timed before the kill and after the promotion


@pytest.fixture
def defaults():
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k in ("SESSION_BROKER_WAIT_REPLICAS", "SESSION_BROKER_WAIT_TIMEOUT_MS")
    }
    yield
    os.environ.update(saved)
    from session_broker.core.config import get_settings

    get_settings.cache_clear()


@pytest.mark.parametrize("round_", range(1))  # one fresh stack (CI time); raise to repeat
def test_failover_with_default_settings_keeps_every_delivered_result(tmp_path, defaults, round_):
    stack = Stack(tmp_path)  # a stack per round: each failover leaves no replica behind
    try:
        failover_round(stack, round_)
    finally:
        stack.stop()


def failover_round(stack: Stack, round_: int) -> None:
    ha = stack.start_ha(password=f"defaults-{round_}")
    c = make_cluster(stack, ha.url)
    c.start_worker(BACKEND)
    service = c.service
    assert service._store.settings.replicas_wanted == 1  # the default with sentinel://
    bell = bell_circuit()
    delivered: list[tuple[str, float, float]] = []  # (job id, started, took)
    errors: list[BaseException] = []
    stop = threading.Event()

    with Session(backend=BACKEND, service=service) as session:
        sampler = SamplerV2(mode=session)

        def produce():
            try:
                while not stop.is_set():
                    t0 = time.monotonic()
                    job = sampler.run([bell], shots=20)
                    assert job.result(timeout=180)[0].data.meas.num_shots == 20
                    delivered.append((job.job_id(), t0, time.monotonic() - t0))
            except BaseException as exc:  # asserted below
                errors.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        wait_for(lambda: len(delivered) >= BEFORE or errors, 120, "the jobs before the kill")
        old = ha.master_address()
        killed = time.monotonic()
        stack.kill_child(ha.nodes["master"])
        wait_for(lambda: ha.master_address() not in (None, old), 60, "a Sentinel to promote the replica")
        promoted = time.monotonic()
        wait_for(
            lambda: sum(1 for _, t0, _ in delivered if t0 > promoted + 2) >= AFTER or errors,
            180,
            "the jobs after the failover",
        )
        stop.set()
        producer.join(60)
    assert not errors, errors[:3]

    # every result the producer received is DONE on the new master
    statuses = {jid: c.store.job(jid, "status").get("status") for jid, _, _ in delivered}
    assert all(s == "DONE" for s in statuses.values()), {j: s for j, s in statuses.items() if s != "DONE"}
    before = [took for _, t0, took in delivered if t0 < killed][-BEFORE:]
    after = [took for _, t0, took in delivered if t0 > promoted + 2][:AFTER]
    m_before, m_after = statistics.median(before), statistics.median(after)
    print(
        f"\nround {round_}: median job {m_before * 1000:.1f} ms before the failover, "
        f"{m_after * 1000:.1f} ms after (no replica left); {len(delivered)} results, all DONE"
    )
    # the defect: with no replica left, every write waited out WAIT's timeout (1 s) and jobs
    # took 42-78 s for 40. Within 2x, or (a loaded machine's noise on a few ms) within a tenth
    # of that timeout of the time before
    assert m_after <= max(2 * m_before, m_before + 0.1), (m_before, m_after)
    # the processes noticed they had no replica to wait for, and said so
    assert int(c.store.redis.hget(c.store.keys.counts, "replication_degraded") or 0) >= 1
