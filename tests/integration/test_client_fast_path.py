"""The client's fast path (issue 13) against a real Redis, with no worker: jobs just queue.

``run()`` memoises the option plan and, per circuit text, the ISA check and the worker's
decoder. A circuit or options changed between runs must be checked again, and a bad one
refused with its typed error before anything is queued.
"""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit, QuantumRegister
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager

from session_broker import (
    CircuitTooWideError,
    EstimatorV2,
    NotISAError,
    OptionNotSupportedError,
    SamplerV2,
    Session,
)
from session_broker.backends import get_spec
from session_broker.core import codec
from session_broker.errors import JobCancelledError, JobTimeoutError
from tests.conftest import make_cluster
from tests.support.faults import bell_circuit, queue_lengths

DEVICE = "ibm_manila"


@pytest.fixture(scope="module")
def svc(stack, redis_url):
    """This module's Redis, also as the process default (so ``mode="name"`` lands there)."""
    return make_cluster(stack, redis_url).service


def _queued(store) -> tuple:
    return queue_lengths(store), store.redis.zcard(store.keys.jobs)


def _payload_options(svc, job) -> dict:
    payload = svc._store.job(job.job_id(), "payload")["payload"]
    return codec.decode_payload(payload, max_bytes=None).options


def test_a_circuit_changed_after_a_run_is_checked_again(svc):
    backend = svc.backend(DEVICE)
    isa = generate_preset_pass_manager(backend=backend, optimization_level=1).run(bell_circuit())
    sampler = SamplerV2(mode=backend)
    sampler.run([isa], shots=10)
    sampler.run([isa], shots=10)  # the memoised check
    before = _queued(svc._store)
    isa.h(0)  # not in the device's basis
    with pytest.raises(NotISAError, match="'h'"):
        sampler.run([isa], shots=10)
    assert _queued(svc._store) == before


def test_a_circuit_grown_too_wide_is_refused(svc):
    width = get_spec("aer_simulator").num_qubits
    qc = bell_circuit()
    sampler = SamplerV2(mode=svc.backend("aer_simulator"))
    sampler.run([qc], shots=10)
    before = _queued(svc._store)
    wide = QuantumCircuit(width + 1)
    wide.h(range(width + 1))
    qc.add_register(QuantumRegister(width + 1 - qc.num_qubits))
    qc.compose(wide, inplace=True)  # the same object, now acting on width+1 qubits
    with pytest.raises(CircuitTooWideError):
        sampler.run([qc], shots=10)
    assert _queued(svc._store) == before


def test_options_changed_between_runs_reach_the_job(svc):
    with Session(backend=svc.backend("aer_simulator")) as session:
        sampler = SamplerV2(mode=session)
        qc = bell_circuit()
        first = sampler.run([qc])
        sampler.options.default_shots = 77
        sampler.options.environment.job_tags = ["a"]
        second = sampler.run([qc])
        sampler.options.environment.job_tags.append("b")  # changed in place
        third = sampler.run([qc])
        assert "default_shots" not in _payload_options(svc, first)["ibm"]["options"]
        assert _payload_options(svc, second)["ibm"]["options"]["default_shots"] == 77
        assert (first.tags, second.tags, third.tags) == ([], ["a"], ["a", "b"])

        before = _queued(svc._store)
        sampler.options.execution.meas_type = "kerneled"
        with pytest.raises(OptionNotSupportedError, match="meas_type"):
            sampler.run([qc])
        assert _queued(svc._store) == before
        sampler.options.execution.meas_type = "classified"
        assert sampler.run([qc]).inputs["options"]["execution"]["meas_type"] == "classified"


def test_a_jobs_inputs_cannot_change_the_next_jobs_options(svc):
    estimator = EstimatorV2(mode=svc.backend("aer_simulator"), options={"default_precision": 0.1})
    circuit = QuantumCircuit(2)
    circuit.h(0)
    job = estimator.run([(circuit, SparsePauliOp("ZZ"))])
    job.inputs["options"]["default_precision"] = 0.5
    nxt = estimator.run([(circuit, SparsePauliOp("ZZ"))])
    assert nxt.inputs["options"]["default_precision"] == 0.1
    assert _payload_options(svc, nxt)["ibm"]["options"]["default_precision"] == 0.1


def test_result_of_a_job_that_ended_is_one_round_trip(svc):
    """result() on the job run() returned waits at once: the latch wait and the read of the
    record travel together, with no read of the record before them."""
    job = SamplerV2(mode=svc.backend("aer_simulator")).run([bell_circuit()], shots=10)
    assert job.cancel()
    redis = svc._store.redis
    redis.config_resetstat()
    with pytest.raises(JobCancelledError):
        job.result(timeout=60)
    calls = {
        name.removeprefix("cmdstat_"): stats["calls"] for name, stats in redis.info("commandstats").items()
    }
    assert calls.get("brpoplpush") == 1 and calls.get("hmget") == 1, calls


def test_result_with_no_time_left_does_not_wait(svc):
    job = SamplerV2(mode=svc.backend("aer_simulator")).run([bell_circuit()], shots=10)
    with pytest.raises(JobTimeoutError, match="QUEUED"):
        job.result(timeout=0)


def test_a_wait_on_a_job_redis_forgot_ends_in_one_chunk(svc):
    """redis-py 8 reads with a 5 s socket timeout: a 5 s BRPOPLPUSH used to time out in the
    client, be retried on a new connection and never return (a waiter on a job Redis lost
    its record of hung for minutes). The wait now blocks for less than the socket timeout."""
    import time

    from session_broker.errors import JobNotFoundError

    store = svc._store
    for attempt in range(2):  # twice: a first reply that beat the client's timeout is luck
        t0 = time.monotonic()
        with pytest.raises(JobNotFoundError, match="lost its data"):
            store.wait_job(f"forgotten-job-{attempt}", 5.0, "status")
        assert time.monotonic() - t0 < 9, "the wait timed out in the client and was retried"
