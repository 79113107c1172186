"""IBM code, with only the import changed: the qiskit-ibm-runtime 0.51 V2 surface.

Each test makes the calls IBM's documentation makes (options set every documented way, tags,
job listing filters, execution spans, fake backends and AerSimulator as modes, both styles of
``Sampler``/``Estimator``) against real workers, and checks what IBM's own objects would
return. Qiskit's V2 primitive behaviours that apply (PUB shapes, empty parameters, circuits
without classical bits, seeds, numpy scalars) are checked here too.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.primitives import PrimitiveResult
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_aer import AerSimulator
from qiskit_ibm_runtime import options as ibm_options
from qiskit_ibm_runtime.execution_span import ExecutionSpans

from session_broker import (
    CircuitTooWideError,
    Estimator,
    EstimatorV2,
    InvalidInputError,
    OptionNotSupportedError,
    QiskitRuntimeService,
    Sampler,
    SamplerV2,
    Session,
    UnknownBackendError,
)
from session_broker.fake_provider import FakeManilaV2
from session_broker.options import EstimatorOptions, SamplerOptions
from session_broker.results import EstimatorResult, SamplerResult
from tests.conftest import make_cluster
from tests.support.faults import ansatz, bell_circuit

QASM = "ibmq_qasm_simulator"


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cluster = make_cluster(stack, redis_url)
    for backend in (QASM, "aer_simulator", "ibm_manila"):
        cluster.start_worker(backend, wait=False)
    for node in list(cluster.workers):
        cluster.wait_registered(node, timeout=180)
    return cluster


def bell(measure: bool = True) -> QuantumCircuit:
    qc = bell_circuit()
    if not measure:
        qc.remove_final_measurements()
    return qc


def manila_isa(circuit: QuantumCircuit) -> QuantumCircuit:
    return generate_preset_pass_manager(backend=FakeManilaV2(), optimization_level=1).run(circuit)


# --------------------------------------------------------------------------- options
def test_option_classes_are_ibms():
    assert SamplerOptions is ibm_options.SamplerOptions
    assert EstimatorOptions is ibm_options.EstimatorOptions


def test_estimator_default_shots_set_every_documented_way(c):
    backend = c.service.backend(QASM)
    pub = (bell(False), SparsePauliOp("ZZ"))
    ways = []
    est = EstimatorV2(mode=backend)
    est.options.default_shots = 100  # attribute
    ways.append(est)
    ways.append(EstimatorV2(mode=backend, options={"default_shots": 100}))  # dict
    obj = EstimatorOptions()
    obj.default_shots = 100
    ways.append(EstimatorV2(mode=backend, options=obj))  # options object
    est = EstimatorV2(mode=backend)
    est.options.update(default_shots=100)  # update()
    ways.append(est)
    for est in ways:
        result = est.run([pub]).result(timeout=90)
        assert result[0].metadata["shots"] == 100
        np.testing.assert_allclose(result[0].data.stds, 0.1)  # 1 / sqrt(shots), as IBM
        assert abs(result[0].data.evs - 1.0) < 0.6


def test_ibm_validation_errors_are_ibms(c):
    est = EstimatorV2(mode=c.service.backend(QASM))
    with pytest.raises(ValueError, match="resilience_level must be <=2"):
        est.options.resilience_level = 5
    with pytest.raises(ValueError, match="no attribute 'bogus'"):
        est.options.bogus = 1
    with pytest.raises(ValueError, match="default_precision"):
        EstimatorV2(mode=c.service.backend(QASM), options={"default_precision": -1})


def test_seed_simulator_in_simulator_group_repeats_counts(c):
    sampler = SamplerV2(mode=c.service.backend(QASM))
    sampler.options.simulator.seed_simulator = 42
    sampler.options.default_shots = 300
    first = sampler.run([bell()]).result(timeout=90)[0].data.meas.get_counts()
    again = sampler.run([bell()]).result(timeout=90)[0].data.meas.get_counts()
    assert first == again and sum(first.values()) == 300


def test_seed_estimator_repeats_estimates(c):
    est = EstimatorV2(mode=c.service.backend(QASM), options={"seed_estimator": 9})
    values = np.tile([0.4, 0.1], (20, 1))
    pub = (ansatz(), SparsePauliOp("ZZ"), values)
    a = est.run([pub]).result(timeout=90)[0].data.evs
    b = est.run([pub]).result(timeout=90)[0].data.evs
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0  # default precision 1/64: noisy, but reproducibly so


@pytest.mark.parametrize(
    "options",
    [
        {"resilience_level": 0},
        {"resilience_level": 1},
        {"dynamical_decoupling": {"enable": True, "sequence_type": "XY4"}},
        {"twirling": {"enable_gates": True, "num_randomizations": "auto"}},
        {"execution": {"rep_delay": 0.0002, "init_qubits": True}},
        {"environment": {"log_level": "INFO", "private": True}},
    ],
)
def test_options_accepted_on_ideal_backends_are_recorded(c, options):
    est = EstimatorV2(mode=c.service.backend(QASM), options=options)
    result = est.run([(bell(False), "ZZ")], precision=0).result(timeout=90)
    np.testing.assert_allclose(result[0].data.evs, 1.0)
    no_effect = result.metadata["session_broker"].get("no_effect", [])
    if options != {"resilience_level": 0}:
        assert no_effect, "an accepted option without effect must be recorded"


@pytest.mark.parametrize(
    "options, group",
    [
        ({"resilience_level": 1}, "resilience"),
        ({"dynamical_decoupling": {"enable": True}}, "dynamical_decoupling"),
        ({"twirling": {"enable_measure": True}, "resilience_level": 0}, "twirling"),
        ({"resilience": {"measure_mitigation": True}}, "resilience"),
    ],
)
def test_mitigation_on_devices_runs_and_is_recorded_as_ibm_records_it(c, options, group):
    est = EstimatorV2(mode=c.service.backend("ibm_manila"), options=options)
    result = est.run([(manila_isa(bell(False)), SparsePauliOp("ZZIII"))], precision=1 / 16).result(
        timeout=180
    )
    assert group in result.metadata and result.metadata["version"] == 2
    assert -1 <= float(result[0].data.evs) <= 1.2
    assert not result.metadata["session_broker"].get("no_effect")


@pytest.mark.parametrize(
    "kind, options, name",
    [
        ("estimator", {"resilience": {"pec_mitigation": True}}, "resilience.pec_mitigation"),
        (
            "estimator",
            {"resilience": {"zne_mitigation": True, "zne": {"amplifier": "pea"}}},
            "resilience.zne.amplifier",
        ),
        ("sampler", {"execution": {"meas_type": "kerneled"}}, "execution.meas_type"),
        ("sampler", {"execution": {"init_qubits": False}}, "execution.init_qubits"),
        ("sampler", {"simulator": {"basis_gates": ["cx", "rz"]}}, "simulator.basis_gates"),
        ("sampler", {"experimental": {"foo": 1}}, "experimental"),
    ],
)
def test_options_a_simulator_cannot_honour_are_refused(c, kind, options, name):
    cls = SamplerV2 if kind == "sampler" else EstimatorV2
    prim = cls(mode=c.service.backend(QASM), options=options)
    pub = bell() if kind == "sampler" else (bell(False), "ZZ")
    with pytest.raises(OptionNotSupportedError, match=name.replace(".", r"\.")):
        prim.run([pub])


# --------------------------------------------------------------------------- names
def test_sampler_and_estimator_are_the_v2_classes_and_run_both_styles(c):
    assert issubclass(Sampler, SamplerV2) and issubclass(Estimator, EstimatorV2)
    backend = c.service.backend(QASM)
    v2 = Sampler(mode=backend).run([bell()], shots=100).result(timeout=90)
    assert isinstance(v2, PrimitiveResult) and v2[0].data.meas.num_shots == 100
    v1 = Sampler(mode=backend).run(bell()).result(timeout=90)  # a bare circuit: V1
    assert isinstance(v1, SamplerResult) and set(v1.quasi_dists[0]) <= {0, 3}
    with Session(backend=backend):
        values = Estimator().run(bell(False), SparsePauliOp("ZZ")).result(timeout=90)  # V1
        evs = Estimator().run([(bell(False), "ZZ")], precision=0).result(timeout=90)  # V2
    assert isinstance(values, EstimatorResult) and values.values[0] == pytest.approx(1.0)
    assert float(evs[0].data.evs) == pytest.approx(1.0)


def test_ibm_modules_import_here():
    import session_broker
    from session_broker.batch import Batch
    from session_broker.exceptions import IBMInputValueError, RuntimeJobFailureError  # noqa: F401
    from session_broker.session import Session as S

    assert Batch is session_broker.Batch and S is Session
    from qiskit_ibm_runtime import RuntimeDecoder, RuntimeEncoder

    assert session_broker.RuntimeEncoder is RuntimeEncoder
    assert session_broker.RuntimeDecoder is RuntimeDecoder


# --------------------------------------------------------------------------- jobs, service
def test_tags_update_usage_inputs_and_listing_filters(c):
    service = c.service
    sampler = SamplerV2(mode=service.backend(QASM))
    sampler.options.environment.job_tags = ["exp-1", "vqe"]
    tagged = sampler.run([bell()], shots=np.int64(50))  # numpy shots are ordinary input
    other = EstimatorV2(mode=service.backend(QASM)).run([(bell(False), "ZZ")])
    tagged.result(timeout=90), other.result(timeout=90)
    start = tagged.creation_date - timedelta(microseconds=10)  # the two jobs of this test
    assert tagged.tags == ["exp-1", "vqe"] and tagged.primitive_id == "sampler"
    assert tagged.inputs["pubs"][0].shots == 50
    assert tagged.usage() > 0 and isinstance(tagged.creation_date, datetime)
    assert tagged.update_tags(["exp-2"]) == ["exp-2"]
    assert service.job(tagged.job_id()).tags == ["exp-2"]

    ids = lambda jobs: [j.job_id() for j in jobs]  # noqa: E731
    assert ids(service.jobs(job_tags=["exp-2"], limit=None)) == [tagged.job_id()]
    assert service.jobs(job_tags=["vqe"], limit=None) == []
    assert other.job_id() in ids(service.jobs(program_id="estimator", limit=None))
    assert tagged.job_id() not in ids(service.jobs(program_id="estimator", limit=None))
    assert ids(service.jobs(backend_name=QASM, created_after=start, limit=2)) == [
        other.job_id(),
        tagged.job_id(),
    ]
    assert ids(service.jobs(created_after=start, descending=False, limit=2)) == [
        tagged.job_id(),
        other.job_id(),
    ]
    assert service.jobs(created_before=start - timedelta(days=1)) == []
    assert ids(service.jobs(created_after=start, skip=1, limit=1)) == [tagged.job_id()]
    assert service.jobs(pending=True, created_after=start) == []
    assert ids(service.jobs(backend=QASM, created_after=start, limit=1)) == [other.job_id()]
    with pytest.raises(InvalidInputError, match="limit"):
        service.jobs(limit="10")


def test_least_busy_filters_and_says_what_exists(c):
    service = c.service
    assert service.least_busy(min_num_qubits=5).num_qubits >= 5
    assert service.least_busy(filters=lambda b: b.name == "ibm_manila").name == "ibm_manila"
    # IBM's guides: least_busy(operational=True, simulator=False) is a device (issue 20: it
    # was the ideal ibmq_qasm_simulator); backend.simulator says which is which
    device = service.least_busy(operational=True, simulator=False)
    assert device.name == "ibm_manila" and device.simulator is False
    assert {b.name for b in service.backends(simulator=False)} == {"ibm_manila"}
    assert {b.name for b in service.backends(simulator=True)} == {QASM, "aer_simulator"}
    assert all(b.simulator for b in service.backends(simulator=True))
    assert service.least_busy(simulator=True).name in (QASM, "aer_simulator")
    with pytest.raises(UnknownBackendError) as info:
        service.least_busy(simulator=False, min_num_qubits=6)
    assert "simulator=False" in str(info.value) and "ibm_manila (5 qubits)" in str(info.value)
    with pytest.raises(UnknownBackendError) as info:
        service.least_busy(min_num_qubits=1000)
    message = str(info.value)
    assert "min_num_qubits=1000" in message and "ibm_manila (5 qubits)" in message
    assert {b.name for b in service.backends(operational=False)} >= {"ibm_sherbrooke", "ibm_torino"}


# --------------------------------------------------------------------------- results
def test_results_have_ibms_execution_spans_and_per_pub_metadata(c):
    backend = c.service.backend(QASM)
    qc = bell()
    qc.metadata = {"label": "bell"}
    result = SamplerV2(mode=backend).run([qc, (qc, None, 10)], shots=20).result(timeout=90)
    spans = result.metadata["execution"]["execution_spans"]
    assert isinstance(spans, ExecutionSpans) and spans.pub_idxs == [0, 1]
    assert spans.start <= spans.stop and spans[0].size == 30
    assert result[0].metadata["circuit_metadata"] == {"label": "bell"}
    # IBM's sampler PUB metadata is circuit_metadata alone (not Aer's shots, simulator_metadata)
    assert result[0].metadata == {"circuit_metadata": {"label": "bell"}}
    assert result[1].metadata == result[0].metadata and result[1].data.meas.num_shots == 10
    assert result.metadata["version"] == 2 and result.metadata["session_broker"]["backend"] == QASM
    est = EstimatorV2(mode=backend).run([(bell(False), ["ZZ", "XX"])]).result(timeout=90)
    np.testing.assert_allclose(est[0].data.ensemble_standard_error, est[0].data.stds)
    assert est[0].metadata["target_precision"] == 1 / 64
    assert isinstance(est.metadata["execution"]["execution_spans"], ExecutionSpans)


# --------------------------------------------------------------------------- local testing mode
def test_fake_backend_and_aer_simulator_objects_as_modes(c):
    isa = manila_isa(bell())
    result = SamplerV2(mode=FakeManilaV2()).run([isa], shots=200).result(timeout=120)
    assert result.metadata["session_broker"]["backend"] == "ibm_manila"
    from_backend = AerSimulator.from_backend(FakeManilaV2())
    with Session(backend=from_backend) as session:
        assert session.backend() == "ibm_manila"
    with Session(backend=AerSimulator()) as session:
        assert session.backend() == "aer_simulator"
        counts = SamplerV2().run([bell()], shots=64).result(timeout=90)[0].data.meas.get_counts()
        assert set(counts) <= {"00", "11"}
    from qiskit.providers.basic_provider import BasicSimulator

    with pytest.raises(UnknownBackendError, match="FakeManilaV2 -> ibm_manila"):
        SamplerV2(mode=BasicSimulator())


# --------------------------------------------------------------------------- peer-suite bugs
@pytest.mark.parametrize(
    "values, shape", [([], ()), (np.array([]), ()), ([[]], (1,)), (np.zeros((3, 0)), (3,))]
)
def test_empty_parameter_values_on_a_parameterless_circuit_run(c, values, shape):
    result = SamplerV2(mode=QASM).run([(bell(), values)], shots=16).result(timeout=90)
    assert result[0].data.meas.shape == shape
    est = EstimatorV2(mode=QASM).run([(bell(False), "ZZ", values)], precision=0).result(timeout=90)
    np.testing.assert_allclose(est[0].data.evs, np.ones(shape))


def test_sampler_circuit_without_classical_bits_warns_and_returns_no_data(c):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = SamplerV2(mode=QASM).run([bell(measure=False)], shots=10)
    assert any("no classical bits" in str(w.message) for w in caught)
    result = job.result(timeout=90)
    assert len(result[0].data) == 0


def test_idle_qubits_do_not_count_against_an_aer_simulator_backends_width(c):
    qc = QuantumCircuit(127)
    qc.h(0)
    for q in range(11):
        qc.cx(q, q + 1)
    obs = SparsePauliOp("I" * 115 + "Z" * 12)  # Z on qubits 0-11, the GHZ's
    result = EstimatorV2(mode="aer_simulator").run([(qc, obs)], precision=0).result(timeout=120)
    assert float(result[0].data.evs) == pytest.approx(1.0, abs=1e-9)
    measured = QuantumCircuit(127, 12)
    measured.compose(qc, inplace=True)
    measured.measure(range(12), range(12))
    counts = (
        SamplerV2(mode="aer_simulator").run([measured], shots=32).result(timeout=120)[0].data.c.get_counts()
    )
    assert set(counts) <= {"0" * 12, "1" * 12}
    # ibmq_qasm_simulator is a named 32-qubit system: wider circuits are refused, as IBM's
    # client does (issue 20: a 40-qubit circuit ran there)
    before = c.store.redis.zcard(c.store.keys.jobs)
    with pytest.raises(CircuitTooWideError, match="uses 127 qubits; backend 'ibmq_qasm_simulator'"):
        SamplerV2(mode=QASM).run([measured], shots=32)
    assert c.store.redis.zcard(c.store.keys.jobs) == before


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: SamplerV2(mode=QASM).run(5), "list of sampler PUBs"),
        (lambda: SamplerV2(mode=QASM).run(np.array(1)), "list of sampler PUBs"),
        (lambda: EstimatorV2(mode=QASM).run([(ansatz(), "ZZ", [["a", "b"]])]), "malformed"),
        (lambda: EstimatorV2(mode=QASM).run([(ansatz(), "ZZ", [[np.nan, 1]])]), "finite real numbers"),
        (lambda: EstimatorV2(mode=QASM).run([(bell(False), "ZZ")], precision="high"), "precision"),
    ],
)
def test_bad_calls_are_typed_before_anything_is_queued(c, call, match):
    before = c.store.redis.zcard(c.store.keys.jobs)
    with pytest.raises(InvalidInputError, match=match):
        call()
    assert c.store.redis.zcard(c.store.keys.jobs) == before


@pytest.mark.parametrize("timeout", ["1", float("nan"), 1j, -1])
def test_result_timeout_must_be_a_number(c, timeout):
    job = SamplerV2(mode=QASM).run([bell()], shots=8)
    with pytest.raises(InvalidInputError, match="timeout"):
        job.result(timeout=timeout)
    assert job.result(timeout=np.float64(90))[0].data.meas.num_shots == 8


def test_service_from_a_second_process_sees_tags(c):
    import json
    import subprocess
    import sys

    job = SamplerV2(mode=QASM, options={"environment": {"job_tags": ["far"]}}).run([bell()], shots=8)
    job.result(timeout=90)
    code = (
        "import json,sys; from session_broker import QiskitRuntimeService as S; "
        "j = S(sys.argv[1]).job(sys.argv[2]); print(json.dumps([j.tags, j.status(), j.usage() > 0]))"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code, c.url, job.job_id()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert json.loads(out) == [["far"], "DONE", True]


@pytest.fixture(scope="module")
def eagle(c):
    """One 127-qubit worker for the module."""
    node = c.start_worker("ibm_sherbrooke", wait=False).node
    c.wait_registered(node, timeout=240)
    return node


def test_eagle_device_runs_a_wide_isa_circuit_and_least_busy_finds_it(c, eagle):
    service = QiskitRuntimeService(c.url)
    backend = service.least_busy(min_num_qubits=127)
    assert backend.name == "ibm_sherbrooke" and backend.num_qubits == 127
    ghz = QuantumCircuit(12)
    ghz.h(0)
    for q in range(11):
        ghz.cx(q, q + 1)
    ghz.measure_all()
    isa = generate_preset_pass_manager(backend=backend, optimization_level=1).run(ghz)
    assert isa.num_qubits == 127
    counts = SamplerV2(mode=backend).run([isa], shots=400).result(timeout=300)[0].data.meas.get_counts()
    # the snapshot's noise (some of its qubits are poor) spreads the GHZ over many outcomes
    assert sum(counts.values()) == 400 and len(counts) > 2
    assert all(len(bits) == 12 for bits in counts)
    assert service.jobs(backend_name="ibm_sherbrooke", limit=1)[0].status() == "DONE"


def test_eagle_noisy_estimator_with_trex_and_dd_on_a_wide_circuit_finishes(c, eagle):
    """IBM's "Hello world" job shape (a GHZ, one Z_0 Z_i observable per qubit, resilience 1
    with XY4 DD) on 12 active qubits of the 127-qubit device: wider than the density-matrix
    route, so it runs with the Pauli-twirled noise model (tasks/wide.py). No timing is
    asserted; a deadline only so that a regression fails instead of hanging."""
    backend = QiskitRuntimeService(c.url).backend("ibm_sherbrooke")
    n = 12
    ghz = QuantumCircuit(n)
    ghz.h(0)
    for q in range(n - 1):
        ghz.cx(q, q + 1)
    isa = generate_preset_pass_manager(backend=backend, optimization_level=1).run(ghz)
    observables = [
        SparsePauliOp("Z" + "I" * i + "Z" + "I" * (n - 2 - i)).apply_layout(isa.layout) for i in range(n - 1)
    ]
    options = {"resilience_level": 1, "dynamical_decoupling": {"enable": True, "sequence_type": "XY4"}}
    job = EstimatorV2(mode=backend, options=options).run([(isa, observables)], precision=1 / 16)
    result = job.result(timeout=600)
    evs = result[0].data.evs
    assert evs.shape == (n - 1,) and np.all(np.isfinite(evs))
    executed = result.metadata["session_broker"]["executed"]
    assert executed["routes"].get("stabilizer", 0) >= 1, executed
    assert executed["trex_circuits"] > 0 and executed["dd_gates"] > 0, executed
    assert result.metadata["resilience"]["measure_mitigation"] is True
