"""Scenario 6's client: IBM's stock qiskit-ibm-runtime, pointed at ``session-broker api`` by
configuration only (never imports session_broker). Runs Bell-sampler jobs in one Session and
prints one JSON line of per-job latencies (``run()`` to ``result()``, seconds).

    python benchmarks/rest_client.py URL KEY CRN BACKEND REPS WARMUP
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings


def main(url: str, key: str, crn: str, backend_name: str, reps: int, warmup: int) -> None:
    os.environ["IAM_URL"] = url
    os.environ["QISKIT_FUNCTIONS_EXPERIMENTAL"] = "1"
    warnings.simplefilter("ignore")
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2, Session

    service = QiskitRuntimeService(
        channel="ibm_quantum_platform",
        token=key,
        instance=crn,
        url=url,
        url_resolver=lambda u, *_: f"{u}/api/v1",
    )
    backend = service.backend(backend_name)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
    times = []
    with Session(backend=backend) as session:
        sampler = SamplerV2(mode=session)
        for i in range(warmup + reps):
            t0 = time.perf_counter()
            counts = sampler.run([isa], shots=1024).result()[0].data.meas.get_counts()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            assert set(counts) <= {"00", "11"} and sum(counts.values()) == 1024, counts
    assert "session_broker" not in sys.modules
    print(json.dumps({"seconds": times}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], a[3], int(a[4]), int(a[5]))
