"""Issue 3: primitives through the queue give the results qiskit-aer gives in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.primitives import PrimitiveResult
from qiskit.primitives.containers import BitArray, SamplerPubResult
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_aer import AerSimulator
from qiskit_aer.primitives import EstimatorV2 as AerEstimator
from qiskit_aer.primitives import SamplerV2 as AerSampler

from session_broker import (
    Estimator,
    EstimatorV2,
    JobCancelledError,
    MaxExecutionTimeExceededError,
    Options,
    Sampler,
    SamplerV2,
    Session,
)
from tests.conftest import make_cluster, slow_pub
from tests.support.faults import ansatz


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cl = make_cluster(stack, redis_url)
    cl.start_worker("ibmq_qasm_simulator", wait=False)
    cl.start_worker("ibm_manila", wait=False)
    for node in list(cl.workers):
        cl.wait_registered(node)
    return cl


def test_sampler_v2_matches_direct_aer_exactly_with_a_seed(c, bell):
    qc = bell.copy()
    creg_qc = QuantumCircuit(3, 0)
    from qiskit.circuit import ClassicalRegister

    alpha, beta = ClassicalRegister(2, "alpha"), ClassicalRegister(1, "beta")
    creg_qc.add_register(alpha)
    creg_qc.add_register(beta)
    creg_qc.h(0)
    creg_qc.cx(0, 1)
    creg_qc.x(2)
    creg_qc.measure([0, 1], alpha)
    creg_qc.measure([2], beta)
    sampler = SamplerV2(
        mode=c.service.backend("ibmq_qasm_simulator"), options={"simulator": {"seed_simulator": 7}}
    )
    result = sampler.run([qc, (creg_qc, None, 500)], shots=1000).result(timeout=60)
    direct = AerSampler(seed=7).run([qc, (creg_qc, None, 500)], shots=1000).result()
    assert isinstance(result, PrimitiveResult) and isinstance(result[0], SamplerPubResult)
    assert isinstance(result[0].data.meas, BitArray)
    assert result[0].data.meas.get_counts() == direct[0].data.meas.get_counts()
    assert result[1].data.alpha.num_shots == 500
    assert result[1].data.alpha.get_counts() == direct[1].data.alpha.get_counts()
    assert set(result[1].data.beta.get_counts()) == {"1"}


def test_sampler_v2_parameter_broadcast_shapes(c):
    qc = ansatz()
    qc.measure_all()
    values = np.random.default_rng(1).uniform(0, np.pi, (4, 3, 2))
    result = SamplerV2(mode="ibmq_qasm_simulator").run([(qc, values, 256)]).result(timeout=60)
    assert result[0].data.meas.shape == (4, 3)
    assert result[0].data.meas.num_shots == 256


def test_estimator_v2_broadcasting_matches_direct(c):
    qc = ansatz()
    obs = [[SparsePauliOp("ZZ")], [SparsePauliOp.from_list([("XI", 0.5), ("IY", 2.0)])]]  # shape (2, 1)
    values = np.random.default_rng(2).uniform(0, np.pi, (1, 5, 2))  # shape (1, 5)
    pub = (qc, obs, values)
    # precision=0 asks for exact values (IBM's default is 1/64, checked below)
    result = EstimatorV2(mode="ibmq_qasm_simulator").run([pub], precision=0).result(timeout=60)
    direct = AerEstimator().run([pub]).result()
    assert result[0].data.evs.shape == (2, 5)
    np.testing.assert_allclose(result[0].data.evs, direct[0].data.evs, atol=1e-9)
    np.testing.assert_allclose(result[0].data.stds, 0.0)
    default = EstimatorV2(mode="ibmq_qasm_simulator").run([pub]).result(timeout=60)
    np.testing.assert_allclose(default[0].data.stds, 1 / 64)
    assert default[0].metadata["target_precision"] == 1 / 64 and default[0].metadata["shots"] == 4096


def test_estimator_v2_precision_gives_noisy_estimates(c):
    qc = ansatz()
    values = np.tile([[0.3, 0.2]], (200, 1))
    result = (
        EstimatorV2(mode="ibmq_qasm_simulator").run([(qc, "ZZ", values)], precision=0.05).result(timeout=60)
    )
    exact = AerEstimator().run([(qc, "ZZ", values[:1])]).result()[0].data.evs[0]
    evs = result[0].data.evs
    assert evs.std() == pytest.approx(0.05, rel=0.3)
    assert abs(evs.mean() - exact) < 4 * 0.05 / np.sqrt(200)


def test_noisy_device_sampler_matches_direct_from_backend(c, bell):
    backend = c.service.backend("ibm_manila")
    isa = generate_preset_pass_manager(backend=backend, optimization_level=1, seed_transpiler=3).run(bell)
    result = (
        SamplerV2(mode=backend, options={"simulator": {"seed_simulator": 11}})
        .run([isa], shots=4000)
        .result(timeout=90)
    )
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    direct = AerSampler.from_backend(AerSimulator.from_backend(FakeManilaV2()), seed=11)
    expected = direct.run([isa], shots=4000).result()[0].data.meas.get_counts()
    counts = result[0].data.meas.get_counts()
    for key in set(counts) | set(expected):  # same noise model: within statistical tolerance
        assert abs(counts.get(key, 0) - expected.get(key, 0)) < 5 * np.sqrt(4000 * 0.25) + 10
    assert counts.get("01", 0) + counts.get("10", 0) > 0  # it is noisy


def test_noisy_device_estimator_v2(c):
    backend = c.service.backend("ibm_manila")
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    isa = generate_preset_pass_manager(backend=backend, optimization_level=1).run(qc)
    obs = SparsePauliOp("ZZ").apply_layout(isa.layout)
    ev = EstimatorV2(mode=backend).run([(isa, obs)], precision=0).result(timeout=90)[0].data.evs
    assert 0.7 < float(ev) < 1.0  # noise pulls it below the ideal 1.0


def test_v1_sampler_and_estimator_match_direct(c):
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.ry(0.4, 1)
    measured = circuit.copy()
    measured.measure_all()
    with Session(service=c.service, backend="ibmq_qasm_simulator"):
        sampler, estimator = Sampler(), Estimator()
        sres = sampler.run(measured).result(timeout=60)
        eres = estimator.run([circuit, circuit], [SparsePauliOp("ZZ"), SparsePauliOp("XX")]).result(
            timeout=60
        )
    exact = AerSampler(default_shots=100000, seed=1).run([measured]).result()[0].data.meas
    probs = {int(k, 2): v / 100000 for k, v in exact.get_counts().items()}
    dist = sres.quasi_dists[0]
    assert sres.metadata[0]["shots"] == 4000
    for k, p in probs.items():
        assert abs(dist.get(k, 0) - p) < 5 * np.sqrt(p * (1 - p) / 4000) + 0.01
    direct = AerEstimator().run([(circuit, ["ZZ", "XX"])]).result()[0].data.evs
    assert isinstance(eres.values, np.ndarray) and eres.values.shape == (2,)
    for value, meta, expected in zip(eres.values, eres.metadata, direct):
        assert meta["shots"] == 4000 and 0 <= meta["variance"] <= 1
        assert abs(value - expected) < 5 * np.sqrt(meta["variance"] / 4000) + 1e-9


def test_v1_parameterised_and_transpiled_on_a_device(c):
    qc = ansatz()
    options = Options(optimization_level=3)
    options.execution.shots = 20000
    estimator = Estimator(backend="ibm_manila", options=options)
    values = estimator.run(qc, SparsePauliOp("ZZ"), [[0.0, 0.0]]).result(timeout=90).values
    assert 0.8 < values[0] <= 1.05  # a non-ISA circuit, transpiled by the worker, noisy
    sampler = Sampler(backend="ibm_manila")
    qc2 = ansatz()
    qc2.measure_all()
    dists = sampler.run([qc2, qc2], [[np.pi, 0], [0, 0]]).result(timeout=90).quasi_dists
    assert dists[0].get(3, 0) > 0.8 and dists[1].get(0, 0) > 0.8


def test_job_api_and_reattach_from_another_process(c, bell):
    job = SamplerV2(mode="ibmq_qasm_simulator").run([bell])
    job.result(timeout=60)
    assert job.done() and not job.running() and not job.cancelled() and job.in_final_state()
    assert job.backend().name == "ibmq_qasm_simulator"
    assert job.session_id is None and job.error_message() is None
    metrics = job.metrics()
    ts = metrics["timestamps"]
    assert ts["created"] <= ts["running"] <= ts["finished"] and metrics["usage"]["seconds"] > 0
    code = (
        "import sys,json; from session_broker import QiskitRuntimeService as S; "
        f"j=S('{c.url}').job('{job.job_id()}'); r=j.result(timeout=30); "
        "print(json.dumps([j.status(), r[0].data.meas.get_counts()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    status, counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == "DONE" and counts == job.result()[0].data.meas.get_counts()
    listed = c.service.jobs(backend="ibmq_qasm_simulator", limit=3)
    assert listed[0].job_id() == job.job_id()  # newest first
    assert all(j.backend().name == "ibmq_qasm_simulator" for j in listed)


def test_backends_lists_only_live_ones(c):
    names = [b.name for b in c.service.backends()]
    assert names == ["ibmq_qasm_simulator", "ibm_manila"]
    assert c.service.backend("aer_simulator_mps").num_qubits == 100


def test_cancel_a_queued_job_it_never_runs(c, bell):
    # no worker serves aer_simulator_mps yet: the job waits in its queue
    job = SamplerV2(mode="aer_simulator_mps").run([bell])
    assert job.status() == "QUEUED"
    assert job.cancel() is True
    assert job.status() == "CANCELLED"
    with pytest.raises(JobCancelledError, match="cancelled"):
        job.result(timeout=5)
    w = c.start_worker("aer_simulator_mps")
    follow = SamplerV2(mode="aer_simulator_mps").run([bell])
    follow.result(timeout=60)
    assert c.store.job(job.job_id())["attempts"] == "0"
    assert job.status() == "CANCELLED"
    c.stop_worker(w)


def test_max_execution_time_stops_the_job(c):
    estimator = EstimatorV2(mode="ibmq_qasm_simulator", options={"max_execution_time": 1})
    job = estimator.run([slow_pub(6)])
    with pytest.raises(MaxExecutionTimeExceededError, match="max_execution_time"):
        job.result(timeout=60)
    assert job.status() == "ERROR"
    rec = c.store.job(job.job_id())
    assert float(rec["finished"]) - float(rec["running"]) < 5.5  # stopped, not run to the end
    # the worker lives on
    ok = EstimatorV2(mode="ibmq_qasm_simulator").run([slow_pub(0.05)])
    ok.result(timeout=60)
