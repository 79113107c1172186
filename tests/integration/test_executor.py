"""Issue 25: IBM's Executor and QuantumProgram, and the executor-based Sampler and Estimator,
run on real workers through Redis; hostile executor payloads end in ERROR and the worker
keeps serving."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest
from qiskit.primitives import PrimitiveResult
from qiskit.quantum_info import SparsePauliOp
from qiskit_ibm_runtime.results import QuantumProgramResult

from session_broker import Batch, CircuitTooWideError, Executor, InvalidInputError, QuantumProgram, Session
from session_broker.core import program as wire
from session_broker.core.store import FINAL_JOB_STATUSES
from session_broker.executor_estimator import Estimator
from session_broker.executor_sampler import Sampler
from session_broker.ops.commands import result_summary
from session_broker.ops.embedded import wait_for
from tests.conftest import make_cluster
from tests.support.circuits import ghz
from tests.support.faults import BACKEND, assert_bell_counts, bell_circuit, plant_job

SHOTS = 2000
DEVICE = "ibm_manila"


@pytest.fixture(scope="module")
def xc(stack, redis_url):
    c = make_cluster(stack, redis_url)
    c.start_worker(BACKEND, name="executor-0@%h", wait=False)
    c.start_worker(DEVICE, name="executor-dev@%h", wait=False)
    for node in list(c.workers):
        c.wait_registered(node)
    return c


def bell_program(shots: int = SHOTS) -> QuantumProgram:
    program = QuantumProgram(shots=shots)
    program.append_circuit_item(bell_circuit())
    return program


def assert_bell_bits(result: QuantumProgramResult, shots: int) -> None:
    assert isinstance(result, QuantumProgramResult)
    assert len(result) == 1
    bits = result[0]["meas"]
    assert bits.shape == (shots, 2) and bits.dtype == bool
    assert np.all(bits[:, 0] == bits[:, 1])  # ideal Bell state: the two bits agree
    ones = int(bits[:, 0].sum())
    assert abs(ones - shots / 2) < 5 * np.sqrt(shots) / 2, ones  # 5 sigma of a fair coin


@pytest.mark.parametrize("mode_cls", [Session, Batch])
def test_executor_runs_a_quantum_program(xc, mode_cls):
    with mode_cls(backend=xc.service.backend(BACKEND)) as mode:
        job = Executor(mode=mode, options={"simulator": {"seed_simulator": 11}}).run(bell_program())
        result = job.result(timeout=120)
    assert_bell_bits(result, SHOTS)
    assert job.primitive_id == "executor" and job.session_id == mode.session_id
    assert xc.store.job(job.job_id(), "primitive")["primitive"] == "executor"
    assert len(result.metadata.chunk_timing) == 1
    assert job.inputs["quantum_program"]["shots"] == SHOTS
    # the Jobs page and the CLI summarize it as a sampler's counts
    summary = result_summary(xc.store.job(job.job_id(), "result")["result"])
    assert summary["kind"] == "sampler" and summary["shots"] == SHOTS, summary
    assert {outcome for outcome, _ in summary["top"]} == {"00", "11"}, summary


def test_executor_by_backend_name_and_parameters(xc):
    from qiskit.circuit import Parameter, QuantumCircuit

    theta = Parameter("t")
    qc = QuantumCircuit(1)
    qc.rx(theta, 0)
    qc.measure_all()
    program = QuantumProgram(shots=256)
    program.append_circuit_item(qc, circuit_arguments=np.array([[0.0], [np.pi]]))
    result = Executor(mode=BACKEND).run(program).result(timeout=120)
    bits = result[0]["meas"]
    assert bits.shape == (2, 256, 1)
    assert not bits[0].any() and bits[1].all()


def test_executor_sampler_gives_a_primitive_result(xc):
    with Session(backend=xc.service.backend(BACKEND)) as session:
        result = Sampler(mode=session).run([bell_circuit()], shots=1000).result(timeout=120)
    assert isinstance(result, PrimitiveResult)
    assert_bell_counts(result, 1000)


def test_executor_sampler_twirled_runs_a_samplex(xc):
    options = {"twirling": {"enable_gates": True, "num_randomizations": 4, "shots_per_randomization": 64}}
    sampler = Sampler(mode=xc.service.backend(BACKEND), options=options)
    job = sampler.run([bell_circuit()])
    assert job.inputs["quantum_program"]["items"][0]["item_type"] == "samplex"
    result = job.result(timeout=120)
    assert isinstance(result, PrimitiveResult)
    counts = result[0].data.meas.get_counts()
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 256


def test_on_a_noisy_device_twirled_sampler_and_executor(xc):
    """A device worker: its noise model shows (a few 01/10), twirling runs as a samplex."""
    from qiskit.transpiler import generate_preset_pass_manager

    backend = xc.service.backend(DEVICE)
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(bell_circuit())
    options = {"twirling": {"enable_gates": True, "num_randomizations": 8, "shots_per_randomization": 250}}
    with Session(backend=backend) as session:
        result = Sampler(mode=session, options=options).run([isa]).result(timeout=120)
        program = QuantumProgram(shots=2000)
        program.append_circuit_item(isa)
        bits = Executor(mode=session).run(program).result(timeout=120)[0]["meas"]
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == 2000
    assert counts.get("00", 0) + counts.get("11", 0) > 1600, counts
    assert bits.shape == (2000, 2)
    assert 0 < int((bits[:, 0] != bits[:, 1]).sum()) < 400  # noise, but a Bell state still


def test_executor_estimator_on_a_noisy_device_with_ibms_default_mitigation(xc):
    from qiskit.transpiler import generate_preset_pass_manager

    backend = xc.service.backend(DEVICE)
    bell = bell_circuit().remove_final_measurements(inplace=False)
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(bell)
    obs = SparsePauliOp("ZZ").apply_layout(isa.layout)
    result = Estimator(mode=backend).run([(isa, obs)], precision=0.05).result(timeout=180)
    assert isinstance(result, PrimitiveResult)
    assert 0.6 < float(result[0].data.evs) < 1.2, result[0].data.evs


def test_executor_estimator_zz_of_bell_is_one(xc):
    bell = bell_circuit().remove_final_measurements(inplace=False)
    with Batch(backend=xc.service.backend(BACKEND)) as batch:
        job = Estimator(mode=batch).run([(bell, [SparsePauliOp("ZZ"), SparsePauliOp("XX")])], precision=0.02)
        result = job.result(timeout=120)
    assert isinstance(result, PrimitiveResult)
    evs = result[0].data.evs
    assert evs.shape == (2,)
    assert abs(evs[0] - 1) < 0.1 and abs(evs[1] - 1) < 0.1, evs


def test_client_refuses_unsupported_options(xc):
    from session_broker import OptionNotSupportedError

    for options, what in [
        ({"execution": {"init_qubits": False}}, "init_qubits"),
        ({"execution": {"scheduler_timing": True}}, "scheduler_timing"),
        ({"experimental": {"x": 1}}, "experimental"),
    ]:
        with pytest.raises(InvalidInputError, match=what):
            Executor(mode=BACKEND, options=options).run(bell_program())
    noise = {"simulator": {"layer_noise_model": []}}
    with pytest.raises(OptionNotSupportedError, match="layer_noise_model"):
        Executor(mode=BACKEND, options=noise).run(bell_program())
    with pytest.raises(InvalidInputError, match="dry_run"):
        Executor(mode=BACKEND).run(bell_program(), dry_run=True)
    wide = QuantumProgram(shots=10)
    wide.append_circuit_item(ghz(6))
    with pytest.raises(CircuitTooWideError, match="has 5"):
        Executor(mode=DEVICE).run(wide)


def test_a_too_wide_program_written_to_redis_fails_on_the_worker(xc):
    """IBM's runner lifts Aer's width limit; the worker keeps the backend's."""
    wide = QuantumProgram(shots=10)
    wide.append_circuit_item(ghz(6))
    jid = plant_job(xc.store, payload=payload_of(wide), primitive="executor", backend=DEVICE)
    wait_for(lambda: xc.store.job(jid, "status").get("status") in FINAL_JOB_STATUSES, 60, "the wide job")
    rec = xc.store.job(jid, "status", "error")
    assert rec["status"] == "ERROR" and "CircuitTooWideError" in rec["error"], rec


# ---------------------------------------------------------------------- hostile payloads
def payload_of(program: QuantumProgram) -> str:
    from qiskit_ibm_runtime.options_models.executor import ExecutorOptions
    from qiskit_ibm_runtime.quantum_program.params_converters import QUANTUM_PROGRAM_PARAMS_CONVERTERS

    params = QUANTUM_PROGRAM_PARAMS_CONVERTERS["v2.0"].encoder(program, ExecutorOptions())
    return wire.encode_executor_payload(params.model_dump(mode="json"), {}, max_bytes=10**8)


def with_params(mutate) -> str:
    obj = json.loads(payload_of(bell_program(64)))
    mutate(obj["params"])
    return json.dumps(obj)


def bomb() -> str:
    return base64.b64encode(zlib.compress(b"\0" * (wire.MAX_DECOMPRESSED_BYTES + 1024), 9)).decode()


def set_circuits(params: dict, b64: str) -> None:
    params["quantum_program"]["circuits"]["b64_data"] = b64


def set_args(params: dict, b64: str) -> None:
    params["quantum_program"]["items"][0]["circuit_arguments"]["data"] = b64


def set_shots(params: dict, value) -> None:
    params["quantum_program"]["shots"] = value


def lying_qpy(params: dict) -> None:
    """QPY whose circuit header claims 4e9 qubits (what OOM-killed a worker before)."""
    raw = bytearray(zlib.decompress(base64.b64decode(params["quantum_program"]["circuits"]["b64_data"])))
    top = 19 + 1 + 8
    raw[top + 1 + 2 + 4 : top + 1 + 2 + 4 + 4] = (4_000_000_000).to_bytes(4, "big")
    set_circuits(params, base64.b64encode(zlib.compress(bytes(raw))).decode())


HOSTILE = {
    "zlib bomb in circuits": (lambda p: set_circuits(p, bomb()), "decompresses to more than"),
    "zlib bomb in a tensor": (lambda p: set_args(p, bomb()), "decompresses to more than"),
    # IBM's tensor model defaults dtype to f64: a tensor without it is inflated all the same
    "zlib bomb in a tensor without dtype": (
        lambda p: (set_args(p, bomb()), p["quantum_program"]["items"][0]["circuit_arguments"].pop("dtype")),
        "decompresses to more than",
    ),
    "circuits not zlib": (lambda p: set_circuits(p, base64.b64encode(b"QISKIT" * 10).decode()), "not zlib"),
    "QPY header lies": (lying_qpy, "qubits"),
    "shots a string": (lambda p: set_shots(p, "many"), "shots"),
    "shots zero": (lambda p: set_shots(p, 0), "shots"),
    "items not a list": (lambda p: p["quantum_program"].update(items={"a": 1}), "items"),
    "OpenQASM circuits": (
        lambda p: p["quantum_program"].update(circuits={"source": "OPENQASM 3.0;", "num_programs": 1}),
        "OpenQASM",
    ),
    "kerneled": (lambda p: p["quantum_program"].update(meas_level="kerneled"), "meas_level"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_executor_payload_ends_in_error_and_the_worker_serves_on(xc, case):
    mutate, message = HOSTILE[case]
    payload = with_params(mutate)
    with pytest.raises(InvalidInputError, match="refused by the worker"):
        wire.check_executor_payload(payload, max_bytes=10**8)
    jid = plant_job(xc.store, payload=payload, primitive="executor")
    wait_for(
        lambda: xc.store.job(jid, "status").get("status") in FINAL_JOB_STATUSES, 60, f"hostile job ({case})"
    )
    rec = xc.store.job(jid, "status", "error_code", "error")
    assert rec["status"] == "ERROR" and rec["error_code"] == "invalid_payload", rec
    assert message in rec["error"], rec["error"]
    result = Executor(mode=BACKEND).run(bell_program(200)).result(timeout=120)
    assert_bell_bits(result, 200)
