"""IBM's API details of issue 25, against real workers: IBMBackend's information API on our
backend objects, the V1 details, the module stubs, the quiet mismatches made loud or
honoured, and over REST with the stock client (in a subprocess that never imports
session_broker): ``job.inputs`` from ``GET /jobs/{id}``'s params, an unknown calibration
id refused, and a private job's results read once.
"""

from __future__ import annotations

import pytest
from qiskit.quantum_info import SparsePauliOp
from qiskit_ibm_runtime.models import BackendProperties, BackendStatus, QasmBackendConfiguration

from session_broker import (
    Estimator,
    InvalidInputError,
    NotOfferedError,
    OptionNotSupportedError,
    QiskitRuntimeService,
    Sampler,
    SamplerV2,
)
from session_broker.options import Options
from tests.conftest import make_cluster
from tests.support.faults import bell_circuit
from tests.support.rest import ApiServer, auth_headers, get_token, http, run_client

QASM = "ibmq_qasm_simulator"


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cluster = make_cluster(stack, redis_url)
    for backend in (QASM, "ibm_manila"):
        cluster.start_worker(backend, wait=False)
    for node in list(cluster.workers):
        cluster.wait_registered(node, timeout=180)
    return cluster


@pytest.fixture(scope="module")
def server(c, stack, redis_url):
    srv = ApiServer(stack, redis_url).start()
    yield srv
    srv.stop()


# --------------------------------------------------------------------------- item 3
@pytest.mark.parametrize("name", ["ibm_manila", "ibm_torino", "ibm_almaden", QASM])
def test_backend_information_api_has_ibms_types(c, name):
    b = QiskitRuntimeService(c.url).backend(name)
    conf = b.configuration()
    assert isinstance(conf, QasmBackendConfiguration) and conf.backend_name == name
    assert conf.n_qubits == b.num_qubits
    status = b.status()
    assert isinstance(status, BackendStatus) and status.backend_name == name
    assert b.defaults() is None and b.max_circuits is None  # as IBMBackend in 0.51
    if b.simulator:
        import qiskit_aer

        assert b.properties() is None  # IBM: simulators have no properties
        assert b.backend_version == qiskit_aer.__version__
        assert b.processor_type["family"] == "Aer" and b.rep_delay_range is None
        assert b.default_rep_delay is None
        assert status.operational is True
    else:
        from qiskit_ibm_runtime import fake_provider

        spec = c.service.backend(name).spec
        fake = getattr(fake_provider, spec.snapshot)()
        props = b.properties()
        assert isinstance(props, BackendProperties)
        # IBM's decoder (as the stock client gets them) reads the snapshot's time as local
        wall = fake.properties().last_update_date.replace(tzinfo=None)
        assert props.last_update_date.replace(tzinfo=None) == wall
        assert props.t1(0) == fake.properties().t1(0)
        assert b.backend_version == fake.backend_version
        assert b.basis_gates == fake.configuration().basis_gates
        assert b.supported_instructions == getattr(fake.configuration(), "supported_instructions", None)
        assert b.processor_type == getattr(fake.configuration(), "processor_type", None)
        assert status.operational is (name == "ibm_manila")  # the only device with a worker
    with pytest.raises(TypeError):
        b.properties(refresh="yes")


# --------------------------------------------------------------------------- item 4
def test_v1_environment_session_as_backend_and_set_options(c):
    backend = c.service.backend(QASM)
    options = Options(environment={"log_level": "INFO", "job_tags": ["v1-env"]})
    est = Estimator(session=backend, options=options)  # IBM's V1 primitives accept a backend
    est.set_options(shots=4000)
    assert est.options.execution.shots == 4000
    est.set_options(shots=1000, optimization_level=0, transpilation={"seed_transpiler": 3})
    assert est.options.execution.shots == 1000 and est.options.optimization_level == 0
    qc = bell_circuit()
    qc.remove_final_measurements()
    job = est.run(qc, SparsePauliOp("ZZ"))
    result = job.result(timeout=120)
    assert result.values[0] == pytest.approx(1.0) and result.metadata[0]["shots"] == 1000
    assert job.tags == ["v1-env"]
    sampler = Sampler(session=QASM)  # a name too
    assert sum(sampler.run(bell_circuit()).result(timeout=120).quasi_dists[0].values()) == pytest.approx(1.0)
    with pytest.raises(OptionNotSupportedError, match="not supported; supported: .*execution.shots"):
        est.set_options(nonsense=1)
    with pytest.raises(OptionNotSupportedError, match="log_level"):
        Estimator(session=backend, options=Options(environment={"log_level": "LOUD"})).run(qc, "ZZ")
    with pytest.raises(OptionNotSupportedError, match="callback"):
        Estimator(session=backend, options=Options(environment={"callback": print})).run(qc, "ZZ")
    with pytest.raises(InvalidInputError, match="Session, Batch or backend"):
        Estimator(session=3)


# --------------------------------------------------------------------------- item 5
def test_module_stubs_are_ibms_or_say_what_is_not_offered():
    import qiskit_ibm_runtime.circuit as ibm_circuit

    from session_broker.circuit import MidCircuitMeasure
    from session_broker.noise_learner import NoiseLearner

    assert MidCircuitMeasure is ibm_circuit.MidCircuitMeasure
    with pytest.raises(NotOfferedError, match="noise learning .* is not offered"):
        NoiseLearner(mode="ibm_manila")
    try:
        import qiskit_ibm_runtime.visualization as ibm_vis
    except ModuleNotFoundError as ibm_error:  # plotly is IBM's optional dependency
        with pytest.raises(ModuleNotFoundError) as ours:
            import session_broker.visualization  # noqa: F401
        assert str(ours.value) == str(ibm_error)
    else:
        from session_broker.visualization import draw_circuit_schedule_timing

        assert draw_circuit_schedule_timing is ibm_vis.draw_circuit_schedule_timing


# --------------------------------------------------------------------------- item 6
def test_backend_filters_are_honoured_or_refused_by_name(c):
    service = QiskitRuntimeService(c.url)
    eagle = [b.name for b in service.backends(operational=None, dynamic_reprate_enabled=True)]
    assert "ibm_sherbrooke" in eagle and QASM not in eagle  # IBM's configuration filter
    assert all(
        b.configuration().dynamic_reprate_enabled
        for b in service.backends(operational=None, dynamic_reprate_enabled=True)
    )
    assert [b.name for b in service.backends(pending_jobs=0, name="ibm_manila")] == ["ibm_manila"]  # status
    with pytest.raises(
        InvalidInputError, match="unknown backend filter.*no_such_flag.*dynamic_reprate_enabled"
    ):
        service.backends(no_such_flag=True)
    with pytest.raises(InvalidInputError, match="no_such_flag"):
        service.least_busy(no_such_flag=True)
    assert service.least_busy(open_pulse=False).name in (QASM, "ibm_manila")


def test_fractional_gates_are_there_or_refused(c):
    service = QiskitRuntimeService(c.url)
    assert {"rzz", "rx"} <= set(service.backend(QASM, use_fractional_gates=True).target.operation_names)
    assert {"rzz", "rx"} <= set(
        service.backend("ibm_fractional", use_fractional_gates=True).target.operation_names
    )
    with pytest.raises(OptionNotSupportedError, match="ibm_torino.*no fractional gates.*ibm_fractional"):
        service.backend("ibm_torino", use_fractional_gates=True)


def test_sampler_pub_metadata_is_ibms(c):
    from qiskit.transpiler import generate_preset_pass_manager

    backend = c.service.backend("ibm_manila")
    qc = bell_circuit()
    qc.metadata = {"k": 1}
    isa = generate_preset_pass_manager(backend=backend, optimization_level=1).run(qc)
    result = SamplerV2(mode=backend).run([isa], shots=50).result(timeout=120)
    assert result[0].metadata == {"circuit_metadata": {"k": 1}}  # not Aer's simulator_metadata


# --------------------------------------------------------------------------- items 3 and 7, REST
def test_stock_client_inputs_calibration_id_and_private_results(server, c):
    out = run_client(
        server,
        f'''
    svc = service()
    backend = svc.backend("{QASM}")
    out = {{}}
    sampler = SamplerV2(mode=backend)
    job = sampler.run([bell()], shots=123)
    out["queued_inputs"] = sorted(svc.job(job.job_id()).inputs)
    job.result()
    again = svc.job(job.job_id())
    out["inputs_keys"] = sorted(again.inputs)
    out["shots"] = again.inputs["pubs"][0][2]
    out["circuit"] = type(again.inputs["pubs"][0][0]).__name__
    private = SamplerV2(mode=backend, options={{"environment": {{"private": True}}}})
    pjob = private.run([bell()], shots=10)
    out["private_first"] = sum(pjob.result()[0].data.meas.get_counts().values())
    try:
        svc.job(pjob.job_id()).result()
        out["private_second"] = "read again"
    except Exception as exc:
        out["private_second"] = type(exc).__name__
    emit(**out)
    ''',
    )
    assert "pubs" in out["queued_inputs"] and "pubs" in out["inputs_keys"]
    assert out["shots"] == 123 and out["circuit"] == "QuantumCircuit"
    assert out["private_first"] == 10 and out["private_second"] != "read again"
    headers = auth_headers(get_token(server))
    base = f"{server.url}/api/v1/backends/ibm_manila"
    for kind in ("configuration", "properties"):
        status, body = http("GET", f"{base}/{kind}?calibration_id=invalid_id", headers=headers)
        assert status == 404 and "calibration" in str(body), (kind, status, body)
        assert http("GET", f"{base}/{kind}", headers=headers)[0] == 200
    # a job for a calibration the backend does not have is refused before it is queued
    job = {"program_id": "sampler", "backend": "ibm_manila", "calibration_id": "invalid_id", "params": {}}
    status, body = http("POST", f"{server.url}/api/v1/jobs", headers=headers, body=job)
    assert status == 404 and "calibration 'invalid_id'" in str(body), (status, body)


def test_stock_client_inputs_of_every_program_queued_and_ended(server, c):
    """``job.inputs`` is the params as submitted for sampler, estimator and executor jobs:
    while queued (on ``ibm_lagos``, which no worker serves) and once ended."""
    out = run_client(
        server,
        f'''
    from qiskit_ibm_runtime import Executor, QuantumProgram
    svc = service()
    out = {{"queued": {{}}}}
    lagos = svc.backend("ibm_lagos")
    isa, ghz_isa = isa_bell_and_ghz(lagos)
    program = QuantumProgram(shots=77)
    program.append_circuit_item(isa)
    queued = {{
        "executor": Executor(mode=lagos).run(program),
        "sampler": SamplerV2(mode=lagos).run([isa], shots=55),
        "estimator": EstimatorV2(mode=lagos).run([(ghz_isa, SparsePauliOp("ZZ").apply_layout(ghz_isa.layout))]),
    }}
    for name, job in queued.items():
        out["queued"][name] = {{"status": str(job.status()), "keys": sorted(svc.job(job.job_id()).inputs),
                                "own": sorted(job.inputs)}}
    def program_of(inputs):  # the client decodes the params it gets back (RuntimeDecoder)
        qp = inputs["quantum_program"]
        return {{"type": type(qp).__name__, "shots": qp.shots, "items": len(qp.items)}}

    out["queued_program"] = program_of(svc.job(queued["executor"].job_id()).inputs)
    out["queued_ids"] = {{name: job.job_id() for name, job in queued.items()}}
    for job in queued.values():
        job.cancel()
    qasm = svc.backend("{QASM}")
    isa, _ = isa_bell_and_ghz(qasm)
    program = QuantumProgram(shots=66)
    program.append_circuit_item(isa)
    done = Executor(mode=qasm).run(program)
    done.result()
    again = svc.job(done.job_id())
    out["done_status"] = str(again.status())
    out["done_program"] = program_of(again.inputs)
    out["done_id"] = done.job_id()
    emit(**out)
    ''',
    )
    for name in ("executor", "sampler", "estimator"):
        got = out["queued"][name]
        assert got["status"] == "QUEUED", (name, got)
        assert got["keys"] and got["keys"] == got["own"], (name, got)
    assert "quantum_program" in out["queued"]["executor"]["keys"]
    assert "pubs" in out["queued"]["sampler"]["keys"] and "pubs" in out["queued"]["estimator"]["keys"]
    assert out["queued_program"] == {"type": "QuantumProgram", "shots": 77, "items": 1}
    assert out["done_status"] == "DONE" and out["done_program"] == {
        "type": "QuantumProgram",
        "shots": 66,
        "items": 1,
    }
    headers = auth_headers(get_token(server))
    for jid in (out["done_id"], *out["queued_ids"].values()):
        status, body = http("GET", f"{server.url}/api/v1/jobs/{jid}?exclude_params=true", headers=headers)
        assert status == 200 and "params" not in body, (jid, status, body)
        status, body = http("GET", f"{server.url}/api/v1/jobs/{jid}?exclude_params=false", headers=headers)
        assert status == 200 and body["params"], (jid, status, body)


def test_stock_client_fractional_targets_match_ours(server, c):
    """Over REST the stock client filters the configuration itself: its ``ibm_fractional``
    targets for each ``use_fractional_gates`` are the ones ``service.backend`` builds here."""
    out = run_client(
        server,
        """
    svc = service()
    emit(**{str(flag): sorted(svc.backend("ibm_fractional", use_fractional_gates=flag).target.operation_names)
            for flag in (False, True)})
    """,
    )
    service = QiskitRuntimeService(c.url)
    for flag in (False, True):
        ours = set(service.backend("ibm_fractional", use_fractional_gates=flag).target.operation_names)
        assert set(out[str(flag)]) == ours, (flag, out[str(flag)], sorted(ours))
