"""Every fake backend of qiskit-ibm-runtime is a backend here (issue 25): by the name IBM's
fake backend reports (``fake_almaden``) or the device's (``ibm_almaden``), as a mode object
(``FakeAlmadenV2()``, ``AerSimulator.from_backend(...)``, a noiseless ``AerSimulator`` of
any method), and served by a worker started with its name. The whole list resolves and
builds in tests/unit/test_backends.py; here a representative few run a Bell job on real
workers: a 1-qubit Canary, the u1/u2/u3 basis of the oldest snapshots, a 156-qubit Heron r3
with measure_2, and the stabilizer simulator.
"""

from __future__ import annotations

import os

import pytest
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_aer import AerSimulator

from session_broker import QiskitRuntimeService, SamplerV2, Session
from session_broker import backends as catalog
from session_broker.fake_provider import FakeAlmadenV2, FakeArmonkV2
from tests.conftest import make_cluster
from tests.support.faults import bell_circuit

# almaden's worker is started by the name IBM's fake backend reports: it serves ibm_almaden
SERVED = ("ibm_armonk", "fake_almaden", "ibm_boston", "aer_simulator_stabilizer")


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cluster = make_cluster(stack, redis_url)
    for backend in SERVED:
        cluster.start_worker(backend, wait=False)
    for node in list(cluster.workers):
        cluster.wait_registered(node, timeout=240)
    return cluster


def counts_of(mode, circuit, shots=200) -> dict:
    return SamplerV2(mode=mode).run([circuit], shots=shots).result(timeout=300)[0].data.meas.get_counts()


def test_fake_backends_by_either_name_and_as_objects_run_a_bell_job(c):
    service = QiskitRuntimeService(c.url)
    almaden = service.backend("fake_almaden")  # the name IBM's fake backend reports
    assert almaden.name == "ibm_almaden" and almaden.num_qubits == FakeAlmadenV2().num_qubits == 20
    isa = generate_preset_pass_manager(backend=almaden, optimization_level=1, seed_transpiler=1).run(
        bell_circuit()
    )
    assert {"u2", "cx"} & set(isa.count_ops())  # the 2020 snapshot's u1/u2/u3 basis
    counts = counts_of(FakeAlmadenV2(), isa)  # IBM's guides: mode=FakeAlmadenV2()
    assert sum(counts.values()) == 200 and counts.get("00", 0) + counts.get("11", 0) > 150
    assert service.jobs(backend_name="ibm_almaden", limit=1)[0].status() == "DONE"

    one = QuantumCircuit(1, name="x")
    one.x(0)
    one.measure_all()
    armonk = service.backend("ibm_armonk")
    isa = generate_preset_pass_manager(backend=armonk, optimization_level=1).run(one)
    counts = counts_of(AerSimulator.from_backend(FakeArmonkV2()), isa)
    assert sum(counts.values()) == 200 and counts.get("1", 0) > 150


def test_a_156_qubit_heron_runs_from_the_services_own_backend_object(c):
    service = QiskitRuntimeService(c.url)
    boston = service.backend("ibm_boston")
    assert boston.num_qubits == 156 and "measure_2" in boston.target.operation_names
    isa = generate_preset_pass_manager(backend=boston, optimization_level=1, seed_transpiler=1).run(
        bell_circuit()
    )
    with Session(backend=AerSimulator.from_backend(boston)) as session:  # IBM's local-mode recipe
        assert session.backend() == "ibm_boston"
        counts = counts_of(session, isa)
    assert sum(counts.values()) == 200 and counts.get("00", 0) + counts.get("11", 0) > 150


def test_a_stabilizer_aer_simulator_runs_a_wide_clifford_circuit(c):
    ghz = QuantumCircuit(200, name="ghz200")
    ghz.h(0)
    for q in range(199):
        ghz.cx(q, q + 1)
    ghz.measure_all()
    counts = counts_of(AerSimulator(method="stabilizer"), ghz, shots=50)
    assert set(counts) <= {"0" * 200, "1" * 200} and sum(counts.values()) == 50


DEVICES = [n for n, s in catalog.CATALOG.items() if s.kind == "device"]


def _sweep_one(name: str) -> str | None:
    """In a pool process: what a worker started with ``--backend NAME`` builds first (its noisy
    simulator), IBMBackend's information from the snapshot, and a Bell job on that simulator
    (transpiled for the device by the catalog's pass manager, run by Aer with the device's
    noise, as the worker runs it). None when all is well, else what was wrong."""
    try:
        spec = catalog.get_spec(name)
        sim = catalog.simulator(name)
        if sim.num_qubits != spec.num_qubits:
            return f"{name}: simulator has {sim.num_qubits} qubits, the device {spec.num_qubits}"
        if sim.options.noise_model is None or sim.options.noise_model.is_ideal():
            return f"{name}: no noise model"
        props = catalog.properties_dict(name)
        if not props or not props.get("qubits"):
            return f"{name}: no properties in its snapshot"
        if spec.num_qubits < 2:  # a 1-qubit device: X and measure instead of a Bell pair
            circuit = QuantumCircuit(1)
            circuit.x(0)
            circuit.measure_all()
            good = {"1"}
        else:
            circuit, good = bell_circuit(), {"00", "11"}
        isa = catalog.pass_manager(name, 1).run(circuit)
        counts = sim.run(isa, shots=200, seed_simulator=7).result().get_counts()
        width = len(next(iter(good)))
        if sum(counts.values()) != 200 or any(len(k) != width for k in counts):
            return f"{name}: Bell counts {counts}"
        ours = sum(counts.get(k, 0) for k in good)
        if ours < 120:
            # some snapshots calibrate their first qubits as broken (ibm_cusco, ibm_kyoto):
            # then IBM's own local mode on the same circuit must be as bad, or we are wrong
            ibm = AerSimulator.from_backend(catalog._fake(spec.snapshot))
            theirs = ibm.run(isa, shots=200, seed_simulator=7).result().get_counts()
            if abs(sum(theirs.get(k, 0) for k in good) - ours) > 40:
                return f"{name}: Bell counts {counts}, IBM's local mode {theirs}"
    except Exception as exc:  # noqa: BLE001 - reported per device
        return f"{name}: {type(exc).__name__}: {exc}"
    return None


def start_sweep():
    """Start the sweep in two spawned processes at low priority and return (pool, pending).

    ``tests/conftest.py`` calls this as soon as the sweep is collected: its two minutes of
    CPU then overlap the rest of the suite, which mostly waits on processes and timers, and
    its ``nice`` keeps it behind the workers and Redis the other tests time."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(2, initializer=os.nice, initargs=(10,))
    # the widest first (seconds each, against tenths for the small ones): no long tail
    widest_first = sorted(DEVICES, key=lambda n: -catalog.get_spec(n).num_qubits)
    return pool, pool.map_async(_sweep_one, widest_first, chunksize=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_device_builds_its_simulator_and_runs_a_bell_job(request):
    """Every fake backend of the client: its simulator, its properties and a Bell job
    (started in the background when collected; a few run on real workers above)."""
    pool, pending = getattr(request.config, "device_sweep", None) or start_sweep()
    try:
        problems = [p for p in pending.get(timeout=840) if p]
    finally:
        pool.terminate()
    assert len(DEVICES) >= 60, DEVICES
    assert not problems, "\n".join(problems)
