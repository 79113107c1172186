"""Circuits the tests share with processes that must not import session_broker (the stock
client's subprocesses in the REST tests import this file by path): qiskit and numpy only."""

from __future__ import annotations


def slow_pub(seconds: float, qubits: int = 14):
    """An EstimatorV2 PUB that takes roughly ``seconds`` on this machine (~10 ms a binding)."""
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
    n = max(1, int(seconds * 100))
    return (qc, SparsePauliOp("Z" * qubits), np.linspace(0, 1, n).reshape(n, 1))
