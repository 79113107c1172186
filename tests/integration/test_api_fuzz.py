"""Property: every call through the public API either returns a job that ends DONE, or raises
one of our typed errors (``SessionBrokerError``) before anything is queued.

Hypothesis draws hostile arguments of the kinds a randomized run found escaping untyped or
failing on a worker: numbers and 0-d arrays where PUBs belong, numpy scalars, NaN/inf, huge
values, empty and ragged arrays, odd Pauli labels and coefficients, strings for timeouts and
limits. It runs against a real worker; ``SB_API_FUZZ_EXAMPLES`` sets the count (CI: 120).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from qiskit import QuantumCircuit

from session_broker import Estimator, EstimatorV2, Sampler, SamplerV2, SessionBrokerError
from tests.support.faults import ansatz, bell_circuit

QASM = "ibmq_qasm_simulator"
EXAMPLES = int(os.environ.get("SB_API_FUZZ_EXAMPLES", "120"))
SEED = int(os.environ.get("SB_API_FUZZ_SEED", "20261130"))

numbers = st.one_of(
    st.integers(-3, 5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            0,
            -1,
            1e308,
            -1e308,
            1e-320,
            2**63,
            np.int64(7),
            np.int32(100),
            np.float32(0.5),
            np.float64("nan"),
            np.uint8(3),
            True,
            1j,
            "10",
            None,
        ]
    ),
)
param_rows = st.one_of(
    st.lists(numbers, max_size=3),
    st.sampled_from(
        [
            [],
            [[]],
            np.array([]),
            np.zeros((2, 0)),
            np.array(1.0),
            np.zeros((2, 2)),
            np.full((3, 2), np.nan),
            np.array([["a", "b"]]),
            np.ones((1, 2), complex),
            [[0.1, 0.2], [0.3]],
            np.ones((2, 1, 2)),
        ]
    ),
)
labels = st.one_of(
    st.text(alphabet="IXYZ01+-rlQ ", max_size=4), st.sampled_from(["ZZ", "XI", "", "ZZZ", "zz", "IY"])
)
observables = st.one_of(
    labels,
    st.dictionaries(labels, numbers, max_size=2),
    st.lists(labels, max_size=3),
    st.sampled_from([None, 3, np.array(1), [["ZZ"], ["XX"]], {"ZZ": 1e308, "XX": 1e308}]),
)


def circuits():
    return st.sampled_from(["bell", "bell_unmeasured", "ansatz", "ansatz_measured", "empty"])


def make(name: str) -> QuantumCircuit:
    if name == "bell":
        return bell_circuit()
    if name == "bell_unmeasured":
        qc = bell_circuit()
        qc.remove_final_measurements()
        return qc
    if name == "ansatz":
        return ansatz()
    if name == "ansatz_measured":
        qc = ansatz()
        qc.measure_all()
        return qc
    return QuantumCircuit(2)


pub_like = st.one_of(
    st.tuples(circuits()),
    st.tuples(circuits(), param_rows),
    st.tuples(circuits(), param_rows, numbers),
    st.tuples(circuits(), observables),
    st.tuples(circuits(), observables, param_rows),
    st.tuples(circuits(), observables, param_rows, numbers),
    numbers,
)


def build(pub):
    if isinstance(pub, tuple):
        return (make(pub[0]), *pub[1:])
    return pub


calls = st.one_of(
    st.tuples(st.just("sampler_v2"), st.lists(pub_like, max_size=2), numbers),
    st.tuples(st.just("estimator_v2"), st.lists(pub_like, max_size=2), numbers),
    st.tuples(st.just("sampler_v2_bare"), pub_like, st.none()),
    st.tuples(st.just("sampler_v1"), circuits(), param_rows),
    st.tuples(st.just("estimator_v1"), circuits(), observables),
    st.tuples(st.just("result_timeout"), st.none(), numbers),
    st.tuples(st.just("jobs"), numbers, numbers),
)


def invoke(service, kind, a, b):
    if kind == "sampler_v2":
        return SamplerV2(mode=QASM).run([build(p) for p in a], shots=b)
    if kind == "estimator_v2":
        return EstimatorV2(mode=QASM).run([build(p) for p in a], precision=b)
    if kind == "sampler_v2_bare":
        return SamplerV2(mode=QASM).run(build(a))
    if kind == "sampler_v1":
        return Sampler(backend=QASM).run(make(a), parameter_values=b)
    if kind == "estimator_v1":
        return Estimator(backend=QASM).run(make(a), b)
    if kind == "result_timeout":
        job = SamplerV2(mode=QASM).run([bell_circuit()], shots=4)
        job.result(timeout=b)
        return job
    service.jobs(limit=a, skip=b)
    return None


@pytest.fixture(scope="module")
def c(cluster):
    return cluster


def test_every_call_ends_done_or_is_refused_typed_before_queueing(c):
    store = c.store
    outcomes = {"done": 0, "refused": 0}

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(calls)
    def check(call):
        kind, a, b = call
        before = store.redis.zcard(store.keys.jobs)
        try:
            job = invoke(c.service, kind, a, b)
        except SessionBrokerError:
            added = store.redis.zcard(store.keys.jobs) - before
            # a result_timeout call queues its own (valid) job before the bad timeout
            assert added == (1 if kind == "result_timeout" else 0), f"{kind}: queued, then refused"
            outcomes["refused"] += 1
            return
        if job is not None:
            job.result(timeout=120)  # raises JobFailedError if it failed on the worker
            assert job.status() == "DONE"
            outcomes["done"] += 1

    print(f"API fuzz: seed {SEED}, {EXAMPLES} examples")
    check()
    print(f"API fuzz outcomes: {outcomes}")
    assert outcomes["done"] > 0 and outcomes["refused"] > 0


def test_jobs_takes_limits_past_a_machine_word(cluster):
    """Found by the fuzz above: ``jobs(limit=0, skip=2**63)`` overflowed the page's bounds."""
    service = cluster.service
    SamplerV2(mode=QASM).run([bell_circuit()], shots=4).result(timeout=120)
    assert service.jobs(limit=0, skip=2**63) == []
    assert service.jobs(limit=2**63, skip=0) != []
    assert service.jobs(limit=2**63, skip=2**64) == []
