"""Circuits the tests share with processes that must not import session_broker (the stock
client's subprocesses in the REST tests import this file by path): qiskit and numpy (and
qiskit-aer, when present, to time a binding)."""

from __future__ import annotations


def binding_seconds(circuit, observable, sample: int = 16) -> float:
    """Seconds one parameter set of ``circuit`` takes to estimate on this machine, now.

    Measured in this process with Aer, as the worker runs it (twice: for <O> and <O^2>), so
    a test sizes its slow jobs from the machine it runs on, loaded or not, instead of from a
    constant ("about 10 ms a binding") that holds only on a quiet machine."""
    import time

    import numpy as np

    try:
        from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2
    except ImportError:  # a client environment without Aer: the quiet machine's figure
        return 0.01
    values = np.linspace(0, 1, sample * circuit.num_parameters).reshape(sample, circuit.num_parameters)
    estimator = AerEstimatorV2()
    estimator.run([(circuit, observable, values[:2])]).result()  # warm up
    t0 = time.perf_counter()
    estimator.run([(circuit, observable, values)]).result()
    return max(2 * (time.perf_counter() - t0) / sample, 1e-4)


def slow_pub(seconds: float, qubits: int = 14):
    """An EstimatorV2 PUB that takes about ``seconds`` on this machine, sized from a
    measurement made now. A test that needs a job to *stay* running for some condition
    freezes it instead (the ``hold`` fixture): no size is right on every machine."""
    import math

    import numpy as np
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp

    theta = Parameter("t")
    qc = QuantumCircuit(qubits)
    for _ in range(4):
        for q in range(qubits):
            qc.ry(theta, q)
        for q in range(qubits - 1):
            qc.cx(q, q + 1)
    obs = SparsePauliOp("Z" * qubits)
    n = max(1, math.ceil(seconds / binding_seconds(qc, obs)))
    return (qc, obs, np.linspace(0, 1, n).reshape(n, 1))


def ghz(n: int):
    """An n-qubit GHZ circuit, measured (h, then a chain of cx)."""
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    qc.measure_all()
    return qc
