"""Bad input at the API: refused in the caller's process, with a typed error, before
anything is queued.

One table: each row builds a bad call and names the exact exception class and a piece of
its message. For every row the test checks that nothing reached the queues: the length of
every queue list under our prefix and the size of the ``P:jobs`` index are the same before
and after. No worker is needed (and none runs): validation is the client's job.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import SparsePauliOp

from session_broker import (
    BackendMismatchError,
    Batch,
    CircuitTooWideError,
    Estimator,
    EstimatorV2,
    InvalidInputError,
    InvalidMaxTimeError,
    NotISAError,
    OptionNotSupportedError,
    Options,
    PayloadTooLargeError,
    QiskitRuntimeService,
    Sampler,
    SamplerV2,
    Session,
    SessionClosedError,
    SessionNotFoundError,
    UnknownBackendError,
)
from session_broker.core.config import load_settings
from session_broker.core.store import Store
from tests.support.circuits import ghz
from tests.support.faults import queue_lengths

QASM = "ibmq_qasm_simulator"
DEVICE = "ibm_manila"


@pytest.fixture(scope="module")
def svc(redis_url):
    return QiskitRuntimeService(redis_url)


# ------------------------------------------------------------------------------ circuits
from tests.support.faults import bell_circuit as bell  # noqa: E402  (one Bell circuit for all tests)


def bell_unmeasured() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    return qc


def param3() -> QuantumCircuit:
    """Three parameters, two qubits, no measurements (for the estimator)."""
    p = ParameterVector("p", 3)
    qc = QuantumCircuit(2)
    qc.rx(p[0], 0)
    qc.ry(p[1], 1)
    qc.rz(p[2], 0)
    qc.cx(0, 1)
    return qc


def param3_measured() -> QuantumCircuit:
    qc = param3()
    qc.measure_all()
    return qc


# ------------------------------------------------------------------------------ builders
def sampler(svc, backend=QASM, **kw):
    return SamplerV2(mode=svc.backend(backend), **kw)


def estimator(svc, backend=QASM, **kw):
    return EstimatorV2(mode=svc.backend(backend), **kw)


def closed_session(svc):
    s = Session(service=svc, backend=QASM)
    s.close()  # no jobs: closed at once
    return s


def cancelled_session(svc):
    s = Session(service=svc, backend=QASM)
    s.cancel()
    return s


def closed_batch(svc):
    b = Batch(service=svc, backend=QASM)
    b.close()
    return b


def small_payload_service(svc, limit: int = 2000):
    """A service whose client refuses payloads over ``limit`` bytes (its own Store)."""
    small = QiskitRuntimeService(svc.url)
    small._store = Store(
        load_settings({"SESSION_BROKER_URL": svc.url, "SESSION_BROKER_MAX_PAYLOAD_BYTES": str(limit)})
    )
    return small


def big_estimator_pub():
    """100 parameter sets x 3 parameters of float64: ~2.4 kB of raw bytes, more in base64."""
    return (param3(), SparsePauliOp("ZZ"), np.linspace(0, 1, 300).reshape(100, 3))


SYSTEM_MAX = 28800

# (id, call(svc), exception class, message substring)
CASES = [
    # --- PUB containers of the wrong type / shape
    ("pubs_bare_circuit", lambda s: sampler(s).run(bell()), InvalidInputError, "takes a list"),
    ("pubs_int", lambda s: sampler(s).run(42), InvalidInputError, "takes a list"),
    ("pubs_none", lambda s: sampler(s).run(None), InvalidInputError, "takes a list"),
    ("pubs_tuple", lambda s: sampler(s).run((bell(),)), InvalidInputError, "takes a list"),
    ("pubs_empty_list", lambda s: sampler(s).run([]), InvalidInputError, "at least one"),
    ("estimator_pubs_empty", lambda s: estimator(s).run([]), InvalidInputError, "at least one"),
    ("pub_is_a_string", lambda s: sampler(s).run(["not a circuit"]), InvalidInputError, "malformed"),
    ("pub_is_a_number", lambda s: sampler(s).run([3]), InvalidInputError, "malformed"),
    (
        "sampler_pub_arity_4",
        lambda s: sampler(s).run([(bell(), None, 100, "extra")]),
        InvalidInputError,
        "malformed",
    ),
    (
        "estimator_pub_arity_1",
        lambda s: estimator(s).run([(bell_unmeasured(),)]),
        InvalidInputError,
        "malformed",
    ),
    (
        "estimator_pub_arity_5",
        lambda s: estimator(s).run([(param3(), "ZZ", [1, 2, 3], 0.1, 9)]),
        InvalidInputError,
        "malformed",
    ),
    # --- parameters
    (
        "too_few_parameter_values",
        lambda s: estimator(s).run([(param3(), "ZZ", [0.1, 0.2])]),
        InvalidInputError,
        "malformed",
    ),
    (
        "too_many_parameter_values",
        lambda s: estimator(s).run([(param3(), "ZZ", [0.1, 0.2, 0.3, 0.4])]),
        InvalidInputError,
        "malformed",
    ),
    (
        "parameters_for_unparameterised_circuit",
        lambda s: sampler(s).run([(bell(), [0.5])]),
        InvalidInputError,
        "malformed",
    ),
    (
        "missing_parameter_values",
        lambda s: sampler(s).run([param3_measured()]),
        InvalidInputError,
        "malformed",
    ),
    (
        "mismatched_parameter_shapes",
        lambda s: estimator(s).run(
            [(param3(), "ZZ", {("p[0]",): np.zeros((4, 1)), ("p[1]", "p[2]"): np.zeros((3, 2))})]
        ),
        InvalidInputError,
        "malformed",
    ),
    # zero-size PUBs: Qiskit's coerce and validate allow them; Aer crashes on them (issue 20)
    (
        "sampler_pub_with_no_parameter_sets",
        lambda s: sampler(s).run([(param3_measured(), np.zeros((0, 3)))]),
        InvalidInputError,
        "no parameter value sets",
    ),
    (
        "sampler_pub_with_a_zero_axis",
        lambda s: sampler(s).run([(param3_measured(), np.zeros((3, 0, 3)))]),
        InvalidInputError,
        "shape (3, 0)",
    ),
    (
        "sampler_unparameterised_zero_size",
        lambda s: sampler(s).run([(bell(), np.zeros((0, 0)))]),
        InvalidInputError,
        "no parameter value sets",
    ),
    (
        "estimator_pub_with_no_parameter_sets",
        lambda s: estimator(s).run([(param3(), "ZZ", np.zeros((0, 3)))]),
        InvalidInputError,
        "shape (0,)",
    ),
    (
        "nan_parameter",
        lambda s: estimator(s).run([(param3(), "ZZ", [0.1, math.nan, 0.3])]),
        InvalidInputError,
        "finite",
    ),
    (
        "inf_parameter",
        lambda s: sampler(s).run([(param3_measured(), [[0.1, 0.2, math.inf]])]),
        InvalidInputError,
        "finite",
    ),
    # --- observables
    (
        "observable_too_wide",
        lambda s: estimator(s).run([(bell_unmeasured(), "ZZZ")]),
        InvalidInputError,
        "malformed",
    ),
    (
        "observable_too_narrow",
        lambda s: estimator(s).run([(bell_unmeasured(), SparsePauliOp("Z"))]),
        InvalidInputError,
        "malformed",
    ),
    (
        "invalid_pauli_string",
        lambda s: estimator(s).run([(bell_unmeasured(), "ZQ")]),
        InvalidInputError,
        "malformed",
    ),
    (
        "observable_wrong_type",
        lambda s: estimator(s).run([(bell_unmeasured(), 3.5)]),
        InvalidInputError,
        "malformed",
    ),
    (
        "not_broadcastable",
        lambda s: estimator(s).run([(param3(), ["ZZ", "XX"], np.zeros((3, 3)))]),
        InvalidInputError,
        "malformed",
    ),
    # --- shots and precision
    ("shots_negative", lambda s: sampler(s).run([bell()], shots=-1), InvalidInputError, "positive int"),
    ("shots_zero", lambda s: sampler(s).run([bell()], shots=0), InvalidInputError, "positive int"),
    ("shots_float", lambda s: sampler(s).run([bell()], shots=1.5), InvalidInputError, "positive int"),
    ("shots_bool", lambda s: sampler(s).run([bell()], shots=True), InvalidInputError, "positive int"),
    ("shots_string", lambda s: sampler(s).run([bell()], shots="100"), InvalidInputError, "positive int"),
    ("pub_shots_negative", lambda s: sampler(s).run([(bell(), None, -10)]), InvalidInputError, "malformed"),
    (
        "precision_negative",
        lambda s: estimator(s).run([(bell_unmeasured(), "ZZ")], precision=-0.1),
        InvalidInputError,
        ">= 0",
    ),
    (
        "precision_nan",
        lambda s: estimator(s).run([(bell_unmeasured(), "ZZ")], precision=math.nan),
        InvalidInputError,
        ">= 0",
    ),
    (
        "pub_precision_negative",
        lambda s: estimator(s).run([(bell_unmeasured(), "ZZ", None, -1.0)]),
        InvalidInputError,
        "malformed",
    ),
    # --- circuits against the backend
    ("too_wide_for_qasm", lambda s: sampler(s).run([ghz(33)]), CircuitTooWideError, "33 qubits"),
    (
        "too_wide_for_qasm_with_idle_qubits",
        lambda s: sampler(s).run([_idle_wide(40)]),
        CircuitTooWideError,
        "uses 40 qubits; backend 'ibmq_qasm_simulator' has 32",
    ),
    ("too_wide_for_device", lambda s: sampler(s, DEVICE).run([ghz(6)]), CircuitTooWideError, "has 5"),
    (
        "too_wide_v1",
        lambda s: Sampler(backend=s.backend(DEVICE)).run(ghz(7)),
        CircuitTooWideError,
        "7 qubits",
    ),
    ("not_isa_device_basis", lambda s: sampler(s, DEVICE).run([bell()]), NotISAError, "instruction 'h'"),
    (
        "not_isa_device_coupling",
        lambda s: sampler(s, DEVICE).run([_uncoupled_cx()]),
        NotISAError,
        "not coupled",
    ),
    (
        "v1_sampler_without_measurements",
        lambda s: Sampler(backend=s.backend(QASM)).run(bell_unmeasured()),
        InvalidInputError,
        "no classical bits",
    ),
    # --- backends and modes
    (
        "unknown_backend_session",
        lambda s: Session(service=s, backend="ibm_nowhere"),
        UnknownBackendError,
        "known backends: ibmq_qasm_simulator",
    ),
    ("unknown_backend_service", lambda s: s.backend("ibm_nowhere"), UnknownBackendError, "ibm_manila"),
    (
        "unknown_backend_mode_string",
        lambda s: SamplerV2(mode="ibm_nowhere"),
        UnknownBackendError,
        "known backends",
    ),
    ("mode_wrong_type", lambda s: SamplerV2(mode=3.14), InvalidInputError, "mode must be"),
    ("mode_wrong_type_estimator", lambda s: EstimatorV2(mode=["x"]), InvalidInputError, "mode must be"),
    (
        "session_backend_wrong_type",
        lambda s: Session(service=s, backend=42),
        InvalidInputError,
        "backend must be",
    ),
    (
        "v1_backend_mismatch",
        lambda s: Sampler(backend=s.backend(DEVICE), session=Session(service=s, backend=QASM)),
        BackendMismatchError,
        "session runs on 'ibmq_qasm_simulator'",
    ),
    (
        "v1_session_wrong_type",
        lambda s: Estimator(session=42),
        InvalidInputError,
        "Session, Batch or backend",
    ),
    # IBM's V1 primitives take a backend as session=, so a string is a backend's name
    (
        "v1_session_unknown_backend",
        lambda s: Estimator(session="abc"),
        UnknownBackendError,
        "unknown backend 'abc'",
    ),
    # --- max_time
    (
        "max_time_bare_digits",
        lambda s: Session(service=s, backend=QASM, max_time="90"),
        InvalidMaxTimeError,
        "'90'",
    ),
    (
        "max_time_trailing_garbage",
        lambda s: Session(service=s, backend=QASM, max_time="2h xyz"),
        InvalidMaxTimeError,
        "'2h xyz'",
    ),
    (
        "max_time_negative_string",
        lambda s: Session(service=s, backend=QASM, max_time="-5m"),
        InvalidMaxTimeError,
        "'-5m'",
    ),
    (
        "max_time_fraction",
        lambda s: Session(service=s, backend=QASM, max_time="1.5h"),
        InvalidMaxTimeError,
        "'1.5h'",
    ),
    (
        "max_time_zero",
        lambda s: Session(service=s, backend=QASM, max_time=0),
        InvalidMaxTimeError,
        "out of bounds",
    ),
    (
        "max_time_negative",
        lambda s: Session(service=s, backend=QASM, max_time=-1),
        InvalidMaxTimeError,
        "out of bounds",
    ),
    (
        "max_time_bool",
        lambda s: Session(service=s, backend=QASM, max_time=True),
        InvalidMaxTimeError,
        "max_time=True",
    ),
    (
        "max_time_float",
        lambda s: Session(service=s, backend=QASM, max_time=60.0),
        InvalidMaxTimeError,
        "max_time=60.0",
    ),
    (
        "max_time_empty",
        lambda s: Session(service=s, backend=QASM, max_time=""),
        InvalidMaxTimeError,
        "max_time=''",
    ),
    (
        "max_time_over_system_max",
        lambda s: Session(service=s, backend=QASM, max_time=SYSTEM_MAX + 1),
        InvalidMaxTimeError,
        f"at most the system max_time ({SYSTEM_MAX} s)",
    ),
    (
        "max_time_over_system_max_string",
        lambda s: Session(service=s, backend=QASM, max_time="9h"),
        InvalidMaxTimeError,
        "out of bounds",
    ),
    (
        "batch_max_time_bad",
        lambda s: Batch(service=s, backend=QASM, max_time="soon"),
        InvalidMaxTimeError,
        "'soon'",
    ),
    (
        "max_execution_time_equal_to_session_max_time",
        lambda s: SamplerV2(
            mode=Session(service=s, backend=QASM, max_time=60), options={"max_execution_time": 60}
        ).run([bell()]),
        InvalidMaxTimeError,
        "less than the session's max_time (60 s)",
    ),
    (
        "v1_max_execution_time_over_session_max_time",
        lambda s: Sampler(
            session=Session(service=s, backend=QASM, max_time="1m"), options=Options(max_execution_time=120)
        ).run(bell()),
        InvalidMaxTimeError,
        "less than the session's max_time",
    ),
    # --- payload size
    (
        "payload_too_large",
        lambda s: EstimatorV2(mode=small_payload_service(s).backend(QASM)).run([big_estimator_pub()]),
        PayloadTooLargeError,
        "over the limit of 2000 bytes",
    ),
    # --- closed, cancelled, unknown sessions
    (
        "closed_session",
        lambda s: SamplerV2(mode=closed_session(s)).run([bell()]),
        SessionClosedError,
        "accepts no new jobs",
    ),
    (
        "cancelled_session",
        lambda s: SamplerV2(mode=cancelled_session(s)).run([bell()]),
        SessionClosedError,
        "(cancelled)",
    ),
    (
        "closed_batch",
        lambda s: SamplerV2(mode=closed_batch(s)).run([bell()]),
        SessionClosedError,
        "accepts no new jobs",
    ),
    (
        "closed_session_v1",
        lambda s: Estimator(session=closed_session(s)).run(bell_unmeasured(), "ZZ"),
        SessionClosedError,
        "open a new Session",
    ),
    ("unknown_session_id", lambda s: Session.from_id("nope", s), SessionNotFoundError, "'nope'"),
    ("empty_session_id", lambda s: Session.from_id("", s), SessionNotFoundError, "non-empty string"),
    (
        "session_id_not_a_string",
        lambda s: Session.from_id(12345, s),
        SessionNotFoundError,
        "non-empty string",
    ),
    (
        "batch_from_session_id",
        lambda s: Batch.from_id(Session(service=s, backend=QASM).session_id, s),
        SessionNotFoundError,
        "is a Session, not a Batch",
    ),
    # --- options
    # option values are checked by IBM's own classes: pydantic's ValidationError, IBM's text
    (
        "v2_unknown_option",
        lambda s: sampler(s, options={"bogus": 1}),
        ValidationError,
        "Unexpected keyword argument",
    ),
    (
        "v2_unhonoured_option",
        lambda s: sampler(s, options={"simulator": {"coupling_map": [[0, 1]]}}).run([bell()]),
        OptionNotSupportedError,
        "simulator.coupling_map",
    ),
    (
        "v2_shots_option_zero",
        lambda s: sampler(s, options={"default_shots": 0}).run([bell()]),
        OptionNotSupportedError,
        "positive int",
    ),
    (
        "v2_precision_option_negative",
        lambda s: estimator(s, options={"default_precision": -1}),
        ValidationError,
        "default_precision must be >0",
    ),
    # seeds: Aer takes a signed 64-bit int, numpy's generators no negative one (issue 20)
    (
        "v2_seed_simulator_2_63",
        lambda s: sampler(s, options={"simulator": {"seed_simulator": 2**63}}).run([bell()]),
        OptionNotSupportedError,
        "from 0 to 2**63 - 1",
    ),
    (
        "v2_seed_simulator_negative",
        lambda s: sampler(s, options={"seed_simulator": -1}).run([bell()]),
        OptionNotSupportedError,
        "simulator.seed_simulator=-1",
    ),
    (
        "v2_seed_estimator_2_63",
        lambda s: estimator(s, options={"seed_estimator": 2**63}).run([(bell_unmeasured(), "ZZ")]),
        OptionNotSupportedError,
        "seed_estimator=9223372036854775808",
    ),
    (
        "v1_seed_simulator_string",
        lambda s: Sampler(backend=s.backend(QASM), options=Options(simulator={"seed_simulator": "7"})).run(
            bell()
        ),
        OptionNotSupportedError,
        "simulator.seed_simulator='7'",
    ),
    (
        "v1_seed_simulator_list",
        lambda s: Estimator(
            backend=s.backend(QASM), options=Options(simulator={"seed_simulator": [1, 2]})
        ).run(bell_unmeasured(), "ZZ"),
        OptionNotSupportedError,
        "from 0 to 2**63 - 1",
    ),
    (
        "v1_seed_simulator_2_63",
        lambda s: Sampler(backend=s.backend(QASM), options=Options(simulator={"seed_simulator": 2**63})).run(
            bell()
        ),
        OptionNotSupportedError,
        "not a valid seed",
    ),
    # twirling: each randomization is a circuit on the worker
    (
        "twirled_pub_needs_too_many_randomizations",
        lambda s: sampler(s, options={"twirling": {"enable_gates": True, "shots_per_randomization": 1}}).run(
            [bell()], shots=5000
        ),
        OptionNotSupportedError,
        "5000 randomizations",
    ),
    (
        "v1_optimization_level_5",
        lambda s: Sampler(backend=s.backend(QASM), options=Options(optimization_level=5)).run(bell()),
        OptionNotSupportedError,
        "optimization_level=5",
    ),
    (
        "v1_resilience_level_negative",
        lambda s: Estimator(backend=s.backend(QASM), options=Options(resilience_level=-1)).run(
            bell_unmeasured(), "ZZ"
        ),
        OptionNotSupportedError,
        "resilience_level=-1",
    ),
    ("v1_unknown_option", lambda s: Options(fast_mode=True), OptionNotSupportedError, "'fast_mode'"),
    (
        "v1_unknown_execution_option",
        lambda s: Options(execution={"turbo": 1}),
        OptionNotSupportedError,
        "execution.turbo",
    ),
    (
        "v1_shots_zero",
        lambda s: Sampler(backend=s.backend(QASM), options=Options(execution={"shots": 0})).run(bell()),
        OptionNotSupportedError,
        "execution.shots=0",
    ),
    (
        "v1_resilience_on_device",
        lambda s: Estimator(backend=s.backend(DEVICE), options=Options(resilience_level=1)).run(
            bell_unmeasured(), "ZZ"
        ),
        OptionNotSupportedError,
        "not available on device backend",
    ),
    (
        "v1_options_wrong_type",
        lambda s: Sampler(backend=s.backend(QASM), options=[1]),
        InvalidInputError,
        "options must be",
    ),
    (
        "v1_bad_layout",
        lambda s: Sampler(
            backend=s.backend(DEVICE), options=Options(transpilation={"initial_layout": [0, 0]})
        ).run(bell()),
        OptionNotSupportedError,
        "initial_layout",
    ),
]


def _idle_wide(n: int) -> QuantumCircuit:
    """A Bell pair on the first 2 of ``n`` qubits; the others idle."""
    qc = QuantumCircuit(n, 2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def _uncoupled_cx() -> QuantumCircuit:
    """ecr/cx between qubits 0 and 4 of ibm_manila (a line 0-1-2-3-4): not coupled."""
    from session_broker.backends import build_target

    target = build_target(DEVICE)
    two_q = next(name for name in ("cx", "ecr", "cz") if name in target.operation_names)
    qc = QuantumCircuit(5, 1)
    getattr(qc, two_q)(0, 4)
    qc.measure(4, 0)
    return qc


def test_the_table_has_at_least_30_distinct_cases():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.mark.parametrize("name,call,exc,says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_is_queued(svc, name, call, exc, says):
    store = svc._store
    queues_before = queue_lengths(store)
    jobs_before = store.redis.zcard(store.keys.jobs)
    submitted_before = store.redis.hget(store.keys.counts, "submitted")
    with pytest.raises(Exception) as info:
        call(svc)
    assert type(info.value) is exc, (
        f"{name}: expected {exc.__name__}, got {type(info.value).__name__}: {info.value}"
    )
    assert says in str(info.value), f"{name}: {says!r} not in {str(info.value)!r}"
    assert queue_lengths(store) == queues_before, f"{name}: something was queued"
    assert store.redis.zcard(store.keys.jobs) == jobs_before, f"{name}: a job record was created"
    assert store.redis.hget(store.keys.counts, "submitted") == submitted_before


def test_numpy_integers_are_ordinary_input_for_shots_and_seeds(svc):
    """Qiskit takes NumPy integers wherever it takes ints: PUB shots (issue 20: np.int64 there
    raised a raw JSON ``TypeError``), ``run(shots=)``, options and V1 seeds. Each job is
    queued (no worker runs in this module) with plain ints in its record."""
    import json

    seeded = {"default_shots": np.int64(100), "simulator": {"seed_simulator": np.int32(5)}}
    jobs = [
        sampler(svc).run([(bell(), None, np.int64(100))]),
        sampler(svc).run([(bell(), None, np.int32(100))]),
        sampler(svc).run([bell()], shots=np.int64(100)),
        sampler(svc, options=seeded).run([bell()]),
        Sampler(
            backend=svc.backend(QASM),
            options=Options(simulator={"seed_simulator": np.int64(5)}, execution={"shots": np.int32(100)}),
        ).run(bell()),
    ]
    for i, job in enumerate(jobs):
        assert job.status() == "QUEUED", i
        assert json.loads(svc._store.job(job.job_id(), "summary")["summary"])["shots"] == 100, i
        job.cancel()
