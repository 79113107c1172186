"""Noisy estimator jobs of IBM's guides on the large (MPS) devices: what each costs.

    .venv/bin/python benchmarks/wide_devices.py [--backend ibm_sherbrooke] [--out PATH]

In-process, through the worker's own code (``tasks.mitigation.run_estimator``, what a job's
executor calls), so the figures are the simulation's, without the queue:

* ``ghz100-hello-world``: IBM's "Hello world" guide: a 100-qubit GHZ, 99 observables
  Z_0 Z_i, resilience level 1 (TREX, measurement twirling) with XY4 dynamical decoupling, the
  default precision (4,096 shots: 32 randomizations of 128 shots, and 32 TREX circuits).
* ``qaoa5-session-step``: one cost-function evaluation of IBM's QAOA guide (a 5-node graph,
  ``QAOAAnsatz`` reps=2, 1,000 shots, gate twirling and XY4 DD), as its optimiser repeats it
  in a session; three evaluations, each timed.

Prints the seconds of each (simulator build excluded: a worker builds it once, at start for
the exact model and at the first wide job for the Pauli-twirled one, both timed apart), the
routes the circuits took and the values. Writes JSON to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def ghz100(backend: str) -> dict:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers import EstimatorPub
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import generate_preset_pass_manager

    from session_broker import backends
    from tasks import mitigation

    n = 100
    qc = QuantumCircuit(n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    ops = [SparsePauliOp("Z" + "I" * i + "Z" + "I" * (n - 2 - i)) for i in range(n - 1)]
    pm = generate_preset_pass_manager(optimization_level=1, backend=backends.BrokerBackend(backend))
    isa = pm.run(qc)
    pub = EstimatorPub.coerce((isa, [o.apply_layout(isa.layout) for o in ops]), precision=1 / 64)
    ibm = {
        "options": {"dynamical_decoupling": {"enable": True, "sequence_type": "XY4"}},
        "resilience_level": 1,
    }
    s = mitigation.settings("estimator", backend, ibm)
    started = time.perf_counter()
    results, executed = mitigation.run_estimator(backend, [pub], s, 1234)
    seconds = time.perf_counter() - started
    evs = results[0].data.evs
    return {
        "seconds": round(seconds, 1),
        "executed": executed.as_dict(),
        "evs_first5": evs[:5].round(3).tolist(),
    }


def qaoa5(backend: str, evaluations: int = 3) -> dict:
    import numpy as np
    from qiskit.circuit.library import QAOAAnsatz
    from qiskit.primitives.containers import EstimatorPub
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import generate_preset_pass_manager

    from session_broker import backends
    from tasks import mitigation

    edges = [(0, 1), (0, 2), (0, 4), (1, 2), (2, 3), (3, 4)]  # the guide's 5-node graph
    cost = SparsePauliOp.from_sparse_list([("ZZ", list(e), 1.0) for e in edges], 5)
    qc = QAOAAnsatz(cost, reps=2)
    qc.measure_all()
    pm = generate_preset_pass_manager(optimization_level=3, backend=backends.BrokerBackend(backend))
    isa = pm.run(qc)
    isa.remove_final_measurements()
    obs = cost.apply_layout(isa.layout)
    ibm = {
        "options": {
            "dynamical_decoupling": {"enable": True, "sequence_type": "XY4"},
            "twirling": {"enable_gates": True, "num_randomizations": "auto"},
        }
    }
    s = mitigation.settings("estimator", backend, ibm)
    rng = np.random.default_rng(1)
    times, values, executed = [], [], None
    for _ in range(evaluations):
        params = rng.uniform(0, np.pi, qc.num_parameters)
        pub = EstimatorPub.coerce((isa, obs, params), precision=1 / np.sqrt(1000))
        started = time.perf_counter()
        results, executed = mitigation.run_estimator(backend, [pub], s, 1234)
        times.append(round(time.perf_counter() - started, 1))
        values.append(round(float(results[0].data.evs), 3))
    return {"seconds_each": times, "values": values, "executed": executed.as_dict() if executed else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="ibm_sherbrooke")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from session_broker import backends
    from tasks import wide

    out: dict = {"backend": args.backend}
    started = time.perf_counter()
    backends.simulator(args.backend)
    out["build_exact_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    wide.simulator(args.backend)
    out["build_pauli_twirled_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out), flush=True)
    out["qaoa5-session-step"] = qaoa5(args.backend)
    print(json.dumps(out["qaoa5-session-step"]), flush=True)
    out["ghz100-hello-world"] = ghz100(args.backend)
    print(json.dumps(out["ghz100-hello-world"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
