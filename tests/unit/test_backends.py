"""The backend catalog: targets, simulators, client-side checks and pass managers."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from qiskit import QuantumCircuit
from qiskit.circuit.random import random_circuit
from qiskit.providers import BackendV2
from qiskit.transpiler import StagedPassManager, Target, generate_preset_pass_manager

from session_broker import backends
from session_broker.backends import (
    CATALOG,
    BackendSpec,
    BrokerBackend,
    build_target,
    check_circuit,
    context_fingerprint,
    get_spec,
    known_backends,
    pass_manager,
    simulator,
)
from session_broker.errors import (
    CircuitTooWideError,
    InvalidInputError,
    NotISAError,
    OptionNotSupportedError,
    UnknownBackendError,
)

IDEAL = [n for n, s in CATALOG.items() if s.kind == "ideal"]
#: Ideal backends that run any standard gate (not only Clifford ones)
UNIVERSAL = [n for n in IDEAL if CATALOG[n].method != "stabilizer"]
DEVICES = [n for n, s in CATALOG.items() if s.kind == "device"]
#: Devices whose simulators the fast lane builds (each one's noise model takes 0.1-20 s):
#: every processor family and basis (u1/u2/u3, cx, ecr, cz, measure_2, fractional), 1 to 156
#: qubits. tests/integration/test_fake_backends.py (slow) builds the rest.
# the big ones (sherbrooke, torino, boston: seconds each) are built with all 68 by the
# integration sweep (tests/integration/test_fake_backends.py); the fast lane builds small ones
SOME_DEVICES = [
    "ibm_manila",
    "ibm_lima",
    "ibm_nairobi",
    "ibm_algiers",
    "ibm_almaden",
    "ibm_armonk",
    "ibm_fractional",
    "ibm_prague",
]


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def wide(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n, name="c")
    for q in range(n):  # every qubit active: ideal backends count only those
        qc.h(q)
    return qc


# --- catalog ---------------------------------------------------------------------------


def test_catalog_order_and_contents():
    names = known_backends()
    assert names == list(CATALOG)
    kinds = [CATALOG[n].kind for n in names]
    assert kinds == sorted(kinds, key=lambda k: k != "ideal"), "ideal backends come first"
    assert {
        "ibmq_qasm_simulator",
        "aer_simulator",
        "aer_simulator_statevector",
        "aer_simulator_mps",
        "ibm_algiers",
    } <= set(names)
    assert len(DEVICES) >= 3
    for name, spec in CATALOG.items():
        assert isinstance(spec, BackendSpec) and spec.name == name
        assert (spec.snapshot is None) == (spec.kind == "ideal")
    assert get_spec("ibmq_qasm_simulator").num_qubits == 32
    assert get_spec("aer_simulator_statevector").num_qubits == 30
    assert get_spec("aer_simulator_mps").method == "matrix_product_state"
    assert get_spec("ibm_algiers").num_qubits == 27


def test_spec_is_frozen():
    with pytest.raises(Exception):
        get_spec("aer_simulator").num_qubits = 99  # type: ignore[misc]


@pytest.mark.parametrize("name", IDEAL + SOME_DEVICES)
def test_every_entry_builds_target_and_simulator(name):
    spec = get_spec(name)
    target = build_target(name)
    assert isinstance(target, Target)
    assert target.num_qubits == spec.num_qubits
    assert build_target(name) is target, "targets are cached"
    sim = simulator(name)
    assert simulator(name) is sim, "simulators are cached (warm workers)"
    assert {"measure"} <= set(target.operation_names)
    if spec.kind == "device":
        assert sim.num_qubits == spec.num_qubits
        assert sim.options.noise_model is not None and not sim.options.noise_model.is_ideal()
    else:
        assert sim.options.method == spec.method
        assert target.build_coupling_map() is None, "ideal backends are all-to-all"


@pytest.mark.parametrize("name", DEVICES)
def test_device_description_cites_installed_snapshot(name):
    """The description (and so the README) names the snapshot actually installed."""
    info = backends.snapshot_info(name)
    spec = get_spec(name)
    assert info["snapshot"] == spec.snapshot
    assert info["calibrated"][:10] in spec.description
    assert f"backend_version {info['backend_version']}" in spec.description
    assert backends.snapshot_info("aer_simulator") is None


@pytest.mark.parametrize("bad", ["nope", "", None, 3, ["ibm_algiers"]])
def test_unknown_backend_lists_known_names(bad):
    with pytest.raises(UnknownBackendError) as info:
        get_spec(bad)
    msg = str(info.value)
    assert msg.startswith(f"unknown backend {bad!r}; known backends: ")
    for name in CATALOG:
        assert name in msg
    for fn in (build_target, simulator, context_fingerprint, BrokerBackend):
        with pytest.raises(UnknownBackendError):
            fn(bad)
    with pytest.raises(UnknownBackendError):
        check_circuit(bad, bell(), require_isa=False)
    with pytest.raises(UnknownBackendError):
        pass_manager(bad, 1)


# --- every fake backend ------------------------------------------------------------------


def test_the_catalog_has_every_fake_backend_of_the_installed_client():
    """FAKE_BACKENDS is static (importing the catalog reads no snapshot): it must list every
    fake backend of qiskit_ibm_runtime.fake_provider, with its name, width and version."""
    from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fake_nighthawk warns that its errors are not typical
        fakes = FakeProviderForBackendV2().backends()
        got = [
            (
                type(f).__name__,
                f.name,
                f.num_qubits,
                f.backend_version,
                f.properties().last_update_date.date().isoformat(),
            )
            for f in fakes
        ]
    assert sorted(got) == sorted(backends.FAKE_BACKENDS)
    assert len(DEVICES) == len(fakes) >= 60


@pytest.mark.parametrize("cls, fake_name, n", [row[:3] for row in backends.FAKE_BACKENDS])
def test_every_fake_backend_resolves_by_name_and_object(cls, fake_name, n):
    """``service.backend("fake_almaden")`` / ``"ibm_almaden"`` and ``mode=FakeAlmadenV2()``
    all name one device, whose target and width are the snapshot's."""
    from qiskit_ibm_runtime import fake_provider

    name = "ibm_" + fake_name.removeprefix("fake_")
    assert backends.canonical(fake_name) == backends.canonical(name) == name
    fake = getattr(fake_provider, cls)()
    assert backends.name_of(fake) == name
    b = BrokerBackend(fake_name)
    assert b.name == name and b.num_qubits == n == fake.num_qubits
    assert b.target is build_target(name) and b.target.num_qubits == n
    assert set(b.target.operation_names) == set(fake.target.operation_names)
    spec = get_spec(name)
    assert spec.method == ("automatic" if n <= 32 else "matrix_product_state")
    assert f"calibrated {backends.snapshot_info(name)['calibrated'][:10]}" in spec.description
    with pytest.raises(UnknownBackendError, match=f"served as '{name}'"):
        get_spec(fake_name)  # a worker, queue or record uses only the catalog name


def test_aer_simulators_of_any_method_or_from_any_backend_map_to_a_backend():
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime.fake_provider import FakeAlmadenV2

    for method, name in backends.IDEAL_BY_METHOD.items():
        if method in AerSimulator().available_methods():
            assert backends.name_of(AerSimulator(method=method)) == name
        check_circuit(name, bell(), require_isa=True)
    assert backends.name_of(AerSimulator(method="stabilizer")) == "aer_simulator_stabilizer"
    assert backends.name_of(AerSimulator.from_backend(FakeAlmadenV2())) == "ibm_almaden"
    # the service's own backend objects, as IBM's guides pass service.backend(...)
    assert backends.name_of(AerSimulator.from_backend(BrokerBackend("ibm_algiers"))) == "ibm_algiers"
    assert backends.name_of(AerSimulator.from_backend(BrokerBackend("fake_torino"))) == "ibm_torino"
    with pytest.raises(UnknownBackendError, match="noiseless AerSimulator"):
        backends.name_of(AerSimulator(noise_model=simulator("ibm_manila").options.noise_model))


def test_stabilizer_backend_runs_wide_clifford_circuits():
    qc = QuantumCircuit(400, name="ghz400")
    qc.h(0)
    for q in range(399):
        qc.cx(q, q + 1)
    qc.measure_all()
    check_circuit("aer_simulator_stabilizer", qc, require_isa=True)
    counts = simulator("aer_simulator_stabilizer").run(qc, shots=50, seed_simulator=3).result().get_counts()
    assert set(counts) <= {"0" * 400, "1" * 400} and sum(counts.values()) == 50
    t = QuantumCircuit(1, name="t")
    t.t(0)
    with pytest.raises(NotISAError, match="'t'"):
        check_circuit("aer_simulator_stabilizer", t, require_isa=True)


# --- ISA and width checks ----------------------------------------------------------------


def test_transpiled_circuit_is_isa_on_device_and_raw_is_not():
    qc = random_circuit(5, 4, measure=True, seed=7)
    qc.name = "rand5"
    with pytest.raises(NotISAError) as info:
        check_circuit("ibm_algiers", qc, require_isa=True)
    msg = str(info.value)
    assert (
        "transpile first: generate_preset_pass_manager(backend=service.backend('ibm_algiers')"
        ", optimization_level=1).run(circuit)" in msg
    )
    assert "instruction" in msg and "qubits" in msg
    check_circuit("ibm_algiers", qc, require_isa=False)  # V1-style: width only

    pm = generate_preset_pass_manager(backend=BrokerBackend("ibm_algiers"), optimization_level=1)
    isa = pm.run(qc)
    check_circuit("ibm_algiers", isa, require_isa=True)
    assert isa.num_qubits == 27


def test_uncoupled_two_qubit_gate_is_not_isa():
    target = build_target("ibm_algiers")
    coupled = set(target["cx"])
    pair = next((a, b) for a in range(27) for b in range(27) if a != b and (a, b) not in coupled)
    qc = QuantumCircuit(27, name="far")
    qc.cx(*pair)
    with pytest.raises(NotISAError, match=r"not coupled") as info:
        check_circuit("ibm_algiers", qc, require_isa=True)
    assert f"qubits {pair}" in str(info.value)
    ok = QuantumCircuit(27)
    ok.cx(*next(iter(coupled)))
    ok.barrier()
    ok.measure_all()
    check_circuit("ibm_algiers", ok, require_isa=True)


def test_isa_check_looks_inside_control_flow():
    qc = QuantumCircuit(5, 1, name="cf")
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.h(1)  # not in the device basis
    with pytest.raises(NotISAError, match=r"'h' on qubits \(1,\)"):
        check_circuit("ibm_algiers", qc, require_isa=True)
    check_circuit("aer_simulator", qc, require_isa=True)  # Aer runs h and if_else


def test_ideal_isa_accepts_what_aer_runs():
    from qiskit.circuit.library import PauliEvolutionGate, UnitaryGate
    from qiskit.quantum_info import SparsePauliOp

    qc = QuantumCircuit(3, name="native")
    qc.h(0)
    qc.cx(0, 1)
    qc.ccx(0, 1, 2)
    qc.rzz(0.3, 1, 2)
    qc.barrier()
    qc.append(UnitaryGate([[0, 1], [1, 0]]), [0])
    qc.measure_all()
    for name in UNIVERSAL:
        check_circuit(name, qc, require_isa=True)
        assert simulator(name).run(qc, shots=10).result().success
    rccx = QuantumCircuit(3, name="rccx")
    rccx.rccx(0, 1, 2)  # a standard gate Aer does not execute ("unknown instruction")
    with pytest.raises(NotISAError, match="'rccx'"):
        check_circuit("aer_simulator", rccx, require_isa=True)
    bad = QuantumCircuit(2, name="evo")
    bad.append(PauliEvolutionGate(SparsePauliOp("XX"), time=0.1), [0, 1])
    with pytest.raises(NotISAError, match="transpile first"):
        check_circuit("aer_simulator", bad, require_isa=True)
    check_circuit("aer_simulator", bad, require_isa=False)


@pytest.mark.parametrize(
    "name", ["ibmq_qasm_simulator", "aer_simulator_statevector", "ibm_algiers", "ibm_manila"]
)
def test_too_wide_circuit(name):
    n = get_spec(name).num_qubits
    check_circuit(name, wide(n), require_isa=False)
    with pytest.raises(CircuitTooWideError) as info:
        check_circuit(name, wide(n + 8), require_isa=False)
    device = get_spec(name).kind == "device"
    wider = "ibm_aachen, 156" if device else "aer_simulator_mps, 100"  # the first of the widest
    verb = "uses" if get_spec(name).fixed_width else "acts on"
    assert str(info.value) == (
        f"circuit 'c' {verb} {n + 8} qubits; backend '{name}' has {n}. "
        f"Use a wider backend (e.g. {wider} qubits) or a smaller circuit."
    )
    assert isinstance(info.value, InvalidInputError)


def test_idle_qubits_do_not_count_on_the_aer_simulator_backends():
    qc = QuantumCircuit(127, name="c")
    for q in range(12):
        qc.h(q)
    qc.barrier()
    check_circuit("aer_simulator_statevector", qc, require_isa=True)  # 12 active of 30
    check_circuit("aer_simulator", qc, require_isa=True)
    with pytest.raises(CircuitTooWideError, match="uses 127 qubits"):
        check_circuit("ibm_algiers", qc, require_isa=False)  # a device's are physical
    # ibmq_qasm_simulator is a named 32-qubit system: IBM's client refuses wider circuits
    with pytest.raises(
        CircuitTooWideError,
        match="uses 127 qubits; backend 'ibmq_qasm_simulator' has 32. It acts on 12 of them: aer_simulator",
    ):
        check_circuit("ibmq_qasm_simulator", qc, require_isa=True)


def test_too_wide_for_widest_backend():
    with pytest.raises(CircuitTooWideError, match="Use a smaller circuit"):
        check_circuit("aer_simulator_mps", wide(101), require_isa=True)
    with pytest.raises(InvalidInputError):
        check_circuit("aer_simulator", "not a circuit", require_isa=False)


# --- ideal targets are what Aer runs ------------------------------------------------------


@pytest.mark.parametrize("name", IDEAL)
def test_ideal_transpile_runs_on_aer_without_widening(name):
    if CATALOG[name].method == "stabilizer":
        from qiskit.quantum_info import random_clifford

        qc = QuantumCircuit(5, 5).compose(random_clifford(5, seed=11).to_circuit())
        qc.measure(range(5), range(5))
    else:
        qc = random_circuit(5, 5, measure=True, seed=11)
    isa = generate_preset_pass_manager(backend=BrokerBackend(name), optimization_level=1).run(qc)
    assert isa.num_qubits == 5, "no ancilla widening to the backend's 30-100 qubits"
    assert set(isa.count_ops()) <= set(build_target(name).operation_names)
    check_circuit(name, isa, require_isa=True)
    result = simulator(name).run(isa, shots=100, seed_simulator=1).result()
    assert result.success and sum(result.get_counts().values()) == 100


# --- noise -----------------------------------------------------------------------------


def test_device_is_noisy_and_ideal_is_not():
    shots = 4000
    isa = pass_manager("ibm_algiers", 1, seed_transpiler=1).run(bell())
    counts = simulator("ibm_algiers").run(isa, shots=shots, seed_simulator=5).result().get_counts()
    assert sum(counts.values()) == shots
    assert counts.get("01", 0) + counts.get("10", 0) > 0, counts

    ideal = pass_manager("ibmq_qasm_simulator", 1).run(bell())
    counts = simulator("ibmq_qasm_simulator").run(ideal, shots=shots, seed_simulator=5).result().get_counts()
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == shots


# --- fingerprint -------------------------------------------------------------------------


def test_context_fingerprint_stable_and_distinct():
    prints = {name: context_fingerprint(name) for name in CATALOG}
    for name, fp in prints.items():
        assert isinstance(fp, str) and len(fp) == 16
        assert context_fingerprint(name) == fp
        backends._fingerprint.cache_clear()
        assert context_fingerprint(name) == fp, "recomputed, not just cached"
    assert len(set(prints.values())) == len(prints)


def test_context_fingerprint_stable_across_processes():
    code = (
        "from session_broker.backends import context_fingerprint as f; "
        "print(f('ibm_algiers'), f('aer_simulator'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [context_fingerprint("ibm_algiers"), context_fingerprint("aer_simulator")]


# --- pass managers -----------------------------------------------------------------------


def test_pass_manager_cached_and_options_honoured():
    pm = pass_manager("ibm_algiers", 1)
    assert isinstance(pm, StagedPassManager)
    assert pass_manager("ibm_algiers", 1) is pm
    assert pass_manager("ibm_algiers", 2) is not pm
    a = pass_manager("ibm_algiers", 1, initial_layout=[3, 5], seed_transpiler=4)
    assert pass_manager("ibm_algiers", 1, seed_transpiler=4, initial_layout=(3, 5)) is a
    isa = a.run(bell())
    layout = isa.layout.initial_index_layout(filter_ancillas=True)
    assert layout == [3, 5]
    check_circuit("ibm_algiers", isa, require_isa=True)
    pass_manager(
        "ibm_algiers",
        3,
        layout_method="sabre",
        routing_method="sabre",
        approximation_degree=0.99,
        seed_transpiler=1,
    )
    assert pass_manager("aer_simulator", 0, seed_transpiler=None) is pass_manager("aer_simulator", 0)


@pytest.mark.parametrize("level", [-1, 4, 1.0, "1", True, None])
def test_pass_manager_rejects_bad_level(level):
    with pytest.raises(OptionNotSupportedError, match="optimization_level"):
        pass_manager("ibm_algiers", level)


@pytest.mark.parametrize(
    "options, match",
    [
        (
            {"optimization_method": "x"},
            "allowed: initial_layout, layout_method, routing_method, approximation_degree, seed_transpiler",
        ),
        ({"basis_gates": ["cx"]}, "basis_gates"),
        ({"initial_layout": [0, 0]}, "initial_layout"),
        ({"initial_layout": [27]}, "initial_layout"),
        ({"initial_layout": "0,1"}, "initial_layout"),
        ({"approximation_degree": 1.5}, "approximation_degree"),
        ({"seed_transpiler": -1}, "seed_transpiler"),
        ({"seed_transpiler": "1"}, "seed_transpiler"),
        ({"layout_method": "nope"}, "nope"),
        ({"routing_method": "nope"}, "nope"),
    ],
)
def test_pass_manager_rejects_bad_options(options, match):
    with pytest.raises(OptionNotSupportedError, match=match):
        pass_manager("ibm_algiers", 1, **options)


# --- BrokerBackend -----------------------------------------------------------------------


def test_broker_backend():
    service = object()
    b = BrokerBackend("ibm_algiers", service=service)
    assert isinstance(b, BackendV2)
    assert b.service is service and BrokerBackend("aer_simulator").service is None
    assert b.name == "ibm_algiers" and b.num_qubits == 27
    assert b.target is build_target("ibm_algiers")
    assert b.max_circuits is None
    assert b.options.shots == 4000
    assert repr(b) == "<BrokerBackend('ibm_algiers')>"
    assert b == BrokerBackend("ibm_algiers") and b != BrokerBackend("ibm_manila")
    assert len({b, BrokerBackend("ibm_algiers")}) == 1
    assert b.coupling_map is not None
    assert BrokerBackend("aer_simulator_mps").num_qubits == 100
    with pytest.raises(TypeError, match=r"SamplerV2\(mode=backend\)"):
        b.run(bell())


def test_import_is_cheap():
    """Importing the catalog must not import qiskit-aer or qiskit-ibm-runtime."""
    code = (
        "import sys, session_broker.backends; "
        "print('qiskit_aer' in sys.modules, 'qiskit_ibm_runtime' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_use_fractional_gates_false_drops_them_as_ibms_backend_does(redis_url):
    """IBM's ``use_fractional_gates=False`` (its default) leaves ``rzz``/``rx`` out of a
    fractional snapshot's target and configuration; True and None keep them. The ideal
    simulators and the old u2/u3 snapshots are not touched."""
    from qiskit.circuit.library import RZZGate

    from session_broker import QiskitRuntimeService

    service = QiskitRuntimeService(redis_url)
    plain = service.backend("ibm_fractional")  # IBM's default is False
    assert not {"rzz", "rx"} & set(plain.target.operation_names)
    assert not {"rzz", "rx"} & set(plain.configuration().basis_gates)
    assert plain.use_fractional_gates is False
    for flag in (True, None):
        kept = service.backend("ibm_fractional", use_fractional_gates=flag)
        assert {"rzz", "rx"} <= set(kept.target.operation_names), flag
        assert {"rzz", "rx"} <= set(kept.configuration().basis_gates), flag
    full = build_target("ibm_fractional")
    assert set(full.operation_names) - set(plain.target.operation_names) == {"rzz", "rx"}

    def props(target, op):
        return {q: (p.duration, p.error) for q, p in target[op].items()}

    assert props(plain.target, "cx") == props(full, "cx") and plain.target.dt == full.dt  # calibration kept
    assert [b.name for b in service.backends(name="ibm_fractional", operational=None)][0] == "ibm_fractional"
    listed = service.backends(name="ibm_fractional", operational=None)[0]
    assert "rzz" not in listed.target.operation_names
    qc = QuantumCircuit(2)
    qc.append(RZZGate(0.3), [0, 1])
    isa = generate_preset_pass_manager(backend=plain, optimization_level=1).run(qc)
    assert "rzz" not in isa.count_ops() and "rx" not in isa.count_ops()
    with_them = generate_preset_pass_manager(
        backend=service.backend("ibm_fractional", use_fractional_gates=True), optimization_level=1
    ).run(qc)
    assert "rzz" in with_them.count_ops()
    assert {"rzz", "rx"} <= set(service.backend("ibmq_qasm_simulator").target.operation_names)
    assert {"u2", "u3"} <= set(service.backend("ibm_almaden").target.operation_names)
    with pytest.raises(InvalidInputError, match="use_fractional_gates must be a bool"):
        service.backend("ibm_fractional", use_fractional_gates="no")


def test_a_job_with_rzz_through_a_backend_without_fractional_gates_is_refused(redis_url):
    """IBM's client checks PUBs against the backend object's target: rzz through
    ``use_fractional_gates=False`` is refused before anything is queued; True sends it."""
    from qiskit.circuit.library import RZZGate

    from session_broker import QiskitRuntimeService, SamplerV2, Session

    service = QiskitRuntimeService(redis_url)
    with_them = service.backend("ibm_fractional", use_fractional_gates=True)
    qc = QuantumCircuit(2)
    qc.append(RZZGate(0.3), [0, 1])
    qc.measure_all()
    isa = generate_preset_pass_manager(backend=with_them, optimization_level=1).run(qc)
    assert "rzz" in isa.count_ops()
    without = service.backend("ibm_fractional")
    with pytest.raises(NotISAError, match="rzz.*use_fractional_gates=False.*use_fractional_gates=True"):
        SamplerV2(mode=without).run([isa])
    with pytest.raises(NotISAError, match="rzz"):
        SamplerV2(mode=Session(backend=without)).run([isa])
    assert service._store.queue_length("ibm_fractional") == 0  # nothing was queued
