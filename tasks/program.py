"""Run one ``executor`` job (IBM's ``QuantumProgram``) on this worker's simulator.

IBM's own local-mode runner, ``run_quantum_program``, on the worker's warm simulator for its
backend (noisy devices included): circuit items are sampled as they are, samplex items
(twirling and the like) are randomized by IBM's ``samplomatic`` first. The result is stored
as IBM's ``QuantumProgramResultModel`` v2.0 JSON, which IBM's client decodes itself.
"""

from __future__ import annotations

from datetime import UTC, datetime

from session_broker import backends
from session_broker.core import program as wire


def execute_program(backend: str, job: wire.ExecutorJob) -> str:
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only executor jobs need it
    from qiskit_ibm_runtime.fake_provider.executor.run_quantum_program import run_quantum_program

    # lazy: qiskit-ibm-runtime takes ~2 s to import; only executor jobs need it
    from qiskit_ibm_runtime.options_models.simulator import SimulatorOptions

    for item in job.program.items:  # IBM's runner lifts Aer's width limit: ours holds
        backends.check_circuit(backend, item.circuit, require_isa=False)
    options = SimulatorOptions(seed_simulator=job.options.get("seed_simulator"))
    started = datetime.now(UTC)
    result = run_quantum_program(backends.simulator(backend), job.program, options)
    stopped = datetime.now(UTC)
    sizes = [int(item.size()) for item in job.program.items]
    return wire.encode_program_result(result, sizes, started, stopped)
