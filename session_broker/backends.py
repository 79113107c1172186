"""The backend catalog: every backend a job may name, and what the worker simulates for it.

Clients and workers share this module so a circuit transpiled on a client (against
``BrokerBackend(name).target``) is exactly what the worker's simulator accepts.

* Ideal backends run plain Aer with one simulation method. Their target has no coupling
  map (all-to-all) and the standard gates Aer's method executes natively, so the preset
  pass managers neither route nor widen circuits to the backend's qubit count.
* Device backends are noisy Aer simulators built by ``AerSimulator.from_backend`` from
  the calibration snapshots shipped in ``qiskit_ibm_runtime.fake_provider``; their target
  is the snapshot's (basis, coupling map, errors), as on the real device.

Importing this module is cheap: qiskit-aer and qiskit-ibm-runtime (about 3 s together) are
imported, and targets/simulators built, on first use and then cached for the process, so a
warm worker pays once per backend.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from datetime import datetime as python_datetime
from functools import cache, lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qiskit import QuantumCircuit
from qiskit.circuit import controlflow as cf
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.providers import BackendV2, Options
from qiskit.transpiler import Target, TranspilerError
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

from session_broker.core.config import get_settings
from session_broker.core.connection import redis_client
from session_broker.core.store import Store
from session_broker.errors import (
    CircuitTooWideError,
    ConfigurationError,
    InvalidInputError,
    NotISAError,
    OptionNotSupportedError,
    UnknownBackendError,
)

if TYPE_CHECKING:  # imported lazily at run time; see the module docstring
    from qiskit.transpiler import StagedPassManager
    from qiskit_aer import AerSimulator


@dataclass(frozen=True)
class BackendSpec:
    """What one catalog entry simulates. ``snapshot`` names the fake backend class."""

    name: str
    kind: str  # "ideal" | "device"
    method: str  # Aer simulation method
    num_qubits: int
    description: str
    snapshot: str | None = None
    #: Whether ``num_qubits`` bounds a circuit's width (``circuit.num_qubits``, as IBM's
    #: ``is_isa_circuit``) or only its active qubits (Aer drops idle ones): see check_circuit.
    fixed_width: bool = True


def _ideal(name: str, method: str, n: int, why: str, fixed_width: bool = False) -> BackendSpec:
    return BackendSpec(name, "ideal", method, n, why, fixed_width=fixed_width)


def _device(
    name: str, fake: str, n: int, calibrated: str, version: str, method: str = "automatic"
) -> BackendSpec:
    how = "" if method == "automatic" else f", simulated with Aer's {method} method"
    return BackendSpec(
        name,
        "device",
        method,
        n,
        f"{n}-qubit noisy simulator of {name} from the {fake} calibration snapshot "
        f"(qiskit-ibm-runtime fake_provider, calibrated {calibrated}, backend_version {version}{how})",
        fake,
    )


#: Every fake backend of ``qiskit_ibm_runtime.fake_provider`` (``FakeProviderForBackendV2``):
#: (class, the name it reports, qubits, backend_version, calibration date). Static, so that
#: importing the catalog reads no snapshot; tests/unit/test_backends.py checks it against
#: the installed qiskit-ibm-runtime, so a new or changed snapshot fails there.
FAKE_BACKENDS: tuple[tuple[str, str, int, str, str], ...] = (
    ("FakeAachen", "fake_aachen", 156, "2.0.1", "2026-04-17"),
    ("FakeAlgiers", "fake_algiers", 27, "1.6.16", "2024-02-28"),
    ("FakeAlmadenV2", "fake_almaden", 20, "1.4.6", "2020-08-10"),
    ("FakeArmonkV2", "fake_armonk", 1, "2.4.3", "2021-03-15"),
    ("FakeAthensV2", "fake_athens", 5, "1.3.13", "2021-03-15"),
    ("FakeAuckland", "fake_auckland", 27, "1.7.6", "2024-05-27"),
    ("FakeBelemV2", "fake_belem", 5, "1.0.3", "2021-03-15"),
    ("FakeBerlin", "fake_berlin", 120, "1.0.0", "2026-04-17"),
    ("FakeBoeblingenV2", "fake_boeblingen", 20, "1.2.9", "2021-02-03"),
    ("FakeBogotaV2", "fake_bogota", 5, "1.4.10", "2021-03-15"),
    ("FakeBoston", "fake_boston", 156, "1.0.4", "2026-04-17"),
    ("FakeBrisbane", "fake_brisbane", 127, "1.1.79", "2025-02-26"),
    ("FakeBrooklynV2", "fake_brooklyn", 65, "1.2.10", "2021-07-26"),
    ("FakeBrussels", "fake_brussels", 127, "1.1.428", "2026-04-17"),
    ("FakeBurlingtonV2", "fake_burlington", 5, "1.1.4", "2020-06-11"),
    ("FakeCairoV2", "fake_cairo", 27, "1.3.6", "2024-03-25"),
    ("FakeCambridgeV2", "fake_cambridge", 28, "1.2.0", "2020-07-16"),
    ("FakeCasablancaV2", "fake_casablanca", 7, "1.1.14", "2021-03-15"),
    ("FakeCusco", "fake_cusco", 127, "1.2.350", "2025-02-26"),
    ("FakeEssexV2", "fake_essex", 5, "1.0.2", "2020-08-10"),
    ("FakeFez", "fake_fez", 156, "1.2.8", "2025-02-26"),
    ("FakeFractionalBackend", "fake_fractional", 5, "1.0.5", "2021-03-15"),
    ("FakeGeneva", "fake_geneva", 27, "1.0.0", "2022-06-24"),
    ("FakeGuadalupeV2", "fake_guadalupe", 16, "1.2.15", "2021-04-20"),
    ("FakeHanoiV2", "fake_hanoi", 27, "1.3.3", "2025-02-26"),
    ("FakeJakartaV2", "fake_jakarta", 7, "1.4.8", "2024-05-27"),
    ("FakeJohannesburgV2", "fake_johannesburg", 20, "1.2.2", "2020-08-09"),
    ("FakeKawasaki", "fake_kawasaki", 127, "2.1.76", "2025-02-26"),
    ("FakeKingston", "fake_kingston", 156, "1.0.0", "2026-04-15"),
    ("FakeKolkataV2", "fake_kolkata", 27, "1.9.9", "2021-12-09"),
    ("FakeKyiv", "fake_kyiv", 127, "1.20.22", "2025-02-26"),
    ("FakeKyoto", "fake_kyoto", 127, "1.2.29", "2024-02-28"),
    ("FakeLagosV2", "fake_lagos", 7, "1.6.6", "2024-05-27"),
    ("FakeLimaV2", "fake_lima", 5, "1.0.5", "2021-03-15"),
    ("FakeLondonV2", "fake_london", 5, "1.1.3", "2020-08-10"),
    ("FakeManhattanV2", "fake_manhattan", 65, "1.13.4", "2021-03-15"),
    ("FakeManilaV2", "fake_manila", 5, "1.2.6", "2024-05-27"),
    ("FakeMelbourneV2", "fake_melbourne", 15, "2.3.14", "2021-03-15"),
    ("FakeMarrakesh", "fake_marrakesh", 156, "1.0.7", "2025-02-26"),
    ("FakeMiami", "fake_miami", 120, "1.0.3", "2026-04-17"),
    ("FakeMontrealV2", "fake_montreal", 27, "1.9.5", "2021-03-15"),
    ("FakeMumbaiV2", "fake_mumbai", 27, "1.4.5", "2021-03-13"),
    ("FakeNairobiV2", "fake_nairobi", 7, "1.3.5", "2024-05-27"),
    ("FakeNighthawk", "fake_nighthawk", 120, "1.0.0", "2025-12-08"),
    ("FakeOsaka", "fake_osaka", 127, "1.0.16", "2024-02-28"),
    ("FakeOslo", "fake_oslo", 7, "1.0.5", "2022-07-17"),
    ("FakeOurenseV2", "fake_ourense", 5, "1.3.5", "2021-01-20"),
    ("FakeParisV2", "fake_paris", 27, "1.7.11", "2021-03-15"),
    ("FakePeekskill", "fake_peekskill", 27, "2.10.1", "2024-02-28"),
    ("FakePerth", "fake_perth", 7, "1.2.11", "2024-05-27"),
    ("FakePittsburgh", "fake_pittsburgh", 156, "1.0.16", "2026-04-17"),
    ("FakePrague", "fake_prague", 33, "2.0.0", "2023-01-12"),
    ("FakePoughkeepsieV2", "fake_poughkeepsie", 20, "1.6.6", "2020-02-29"),
    ("FakeQuebec", "fake_quebec", 127, "1.2.143", "2025-02-26"),
    ("FakeQuitoV2", "fake_quito", 5, "1.0.8", "2021-03-15"),
    ("FakeRochesterV2", "fake_rochester", 53, "1.2.0", "2020-07-16"),
    ("FakeRomeV2", "fake_rome", 5, "1.3.16", "2021-03-15"),
    ("FakeSantiagoV2", "fake_santiago", 5, "1.3.14", "2021-03-15"),
    ("FakeSherbrooke", "fake_sherbrooke", 127, "1.6.58", "2025-02-26"),
    ("FakeSingaporeV2", "fake_singapore", 20, "1.1.13", "2020-08-07"),
    ("FakeStrasbourg", "fake_strasbourg", 127, "1.3.142", "2026-04-17"),
    ("FakeSydneyV2", "fake_sydney", 27, "1.0.34", "2021-03-15"),
    ("FakeTorino", "fake_torino", 133, "1.0.54", "2025-02-26"),
    ("FakeTorontoV2", "fake_toronto", 27, "1.4.21", "2021-03-15"),
    ("FakeValenciaV2", "fake_valencia", 5, "1.4.6", "2021-01-20"),
    ("FakeVigoV2", "fake_vigo", 5, "1.3.6", "2021-01-20"),
    ("FakeWashingtonV2", "fake_washington", 127, "1.1.0", "2022-04-12"),
    ("FakeYorktownV2", "fake_yorktown", 5, "2.3.3", "2021-03-15"),
)

#: Widest device simulated with Aer's automatic method (statevector or density matrix of
#: the qubits a circuit touches); wider devices use matrix-product states, whose memory grows
#: with entanglement rather than width.
_AUTOMATIC_MAX_QUBITS = 32


#: Ordered, ideal backends first. Qubit counts of ideal backends follow memory: a dense
#: complex128 statevector of n qubits takes 16 * 2**n bytes, so 30 qubits need 16 GiB and
#: 31 would need 32 GiB, more than the 24 GiB of the worker machine (a density matrix of n
#: qubits is a statevector of 2n: 15). The 32-qubit "automatic" backends mirror IBM's cloud
#: simulator: Aer picks the stabilizer method for Clifford circuits (any width), but a
#: non-Clifford circuit over 30 qubits is refused by Aer at run time with "Insufficient
#: memory". Matrix-product-state memory grows with entanglement rather than width, hence 100
#: qubits; stabilizer states grow as n**2, hence the payload cap of 1000.
CATALOG: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        _ideal(
            "ibmq_qasm_simulator",
            "automatic",
            32,
            "ideal Aer simulator, method chosen per circuit (like IBM's ibmq_qasm_simulator)",
            fixed_width=True,
        ),  # a named 32-qubit system, as IBM's: no wider circuit
        _ideal("aer_simulator", "automatic", 32, "ideal Aer simulator, method chosen per circuit"),
        _ideal(
            "aer_simulator_statevector",
            "statevector",
            30,
            "ideal dense statevector; 30 qubits = 16 GiB, the most a 24 GiB worker holds",
        ),
        _ideal(
            "aer_simulator_mps",
            "matrix_product_state",
            100,
            "ideal matrix-product-state simulator for wide, weakly entangled circuits",
        ),
        _ideal(
            "aer_simulator_density_matrix",
            "density_matrix",
            15,
            "ideal density-matrix simulator; 15 qubits = 16 GiB",
        ),
        _ideal(
            "aer_simulator_stabilizer",
            "stabilizer",
            1000,
            "ideal stabilizer (Clifford-only) simulator for wide Clifford circuits",
        ),
        # Devices, one per fake backend, named as IBM names the device (ibm_<name>). A
        # statevector or density matrix of 127+ qubits cannot exist; Aer drops idle qubits
        # (truncation), and matrix-product states keep the typical 100+ qubit tutorial
        # circuits (GHZ chains, shallow layers) in memory.
        *(
            _device(
                "ibm_" + fake_name.removeprefix("fake_"),
                cls,
                n,
                calibrated,
                version,
                "automatic" if n <= _AUTOMATIC_MAX_QUBITS else "matrix_product_state",
            )
            for cls, fake_name, n, version, calibrated in FAKE_BACKENDS
        ),
    )
}

#: Other names a backend answers to: the name its fake backend reports (``fake_almaden``),
#: which IBM's local testing mode and guides use. Clients resolve them (``canonical``);
#: workers, queues and records use only the catalog name.
ALIASES: dict[str, str] = {
    fake_name: "ibm_" + fake_name.removeprefix("fake_") for _, fake_name, *_ in FAKE_BACKENDS
}

#: A noiseless AerSimulator's method -> the ideal backend that runs its circuits. Unitary
#: and superoperator simulators cannot sample, tensor networks need a GPU, and the extended
#: stabilizer samples approximately: a statevector samples the same ideal distribution.
IDEAL_BY_METHOD: dict[str, str] = {
    "automatic": "aer_simulator",
    "statevector": "aer_simulator_statevector",
    "matrix_product_state": "aer_simulator_mps",
    "density_matrix": "aer_simulator_density_matrix",
    "stabilizer": "aer_simulator_stabilizer",
    "extended_stabilizer": "aer_simulator_statevector",
    "unitary": "aer_simulator_statevector",
    "superop": "aer_simulator_statevector",
    "tensor_network": "aer_simulator_statevector",
}

_TRANSPILE_OPTIONS = (
    "initial_layout",
    "layout_method",
    "routing_method",
    "approximation_degree",
    "seed_transpiler",
)
_IGNORED = frozenset({"barrier"})


def known_backends() -> list[str]:
    """Catalog names in catalog order (ideal first)."""
    return list(CATALOG)


def get_spec(name: str) -> BackendSpec:
    """The spec of catalog name ``name``; ``UnknownBackendError`` listing the known names
    otherwise (and the catalog name, for an alias: workers and queues use only that)."""
    spec = CATALOG.get(name) if isinstance(name, str) else None
    if spec is None:
        if isinstance(name, str) and name in ALIASES:
            raise UnknownBackendError(
                f"backend {name!r} is served as {ALIASES[name]!r}: use that name here (clients accept either)"
            )
        raise UnknownBackendError(f"unknown backend {name!r:.80}; known backends: {', '.join(CATALOG)}")
    return spec


def canonical(name: str) -> str:
    """The catalog name for ``name`` or its alias (``fake_almaden`` -> ``ibm_almaden``), as
    clients resolve a name a user gives; ``UnknownBackendError`` otherwise."""
    if isinstance(name, str) and name in ALIASES:
        return ALIASES[name]
    return get_spec(name).name


@cache
def _fake(snapshot: str) -> Any:
    """The one fake backend instance per snapshot class; it loads its JSON snapshot once."""
    return getattr(importlib.import_module("qiskit_ibm_runtime.fake_provider"), snapshot)()


def snapshot_info(name: str) -> dict[str, str] | None:
    """Where a device's calibration comes from (for the README and the fingerprint)."""
    spec = get_spec(name)
    if spec.kind != "device":
        return None
    fake = _fake(spec.snapshot)
    props = fake.properties()
    return {
        "snapshot": spec.snapshot,
        "fake_name": fake.name,
        "backend_version": str(fake.backend_version),
        "calibrated": props.last_update_date.isoformat() if props is not None else "unknown",
    }


ONLINE_DATE = "2024-01-01T00:00:00Z"
_NON_GATES = frozenset(
    {
        "measure",
        "reset",
        "delay",
        "if_else",
        "for_loop",
        "while_loop",
        "switch_case",
        "break_loop",
        "continue_loop",
    }
)


def _snapshot_file(name: str, kind: str) -> dict:
    fake = _fake(get_spec(name).snapshot)
    path = Path(fake.dirname) / (fake.conf_filename if kind == "conf" else fake.props_filename)
    return json.loads(path.read_text())


def _aer_version() -> str:
    return version("qiskit-aer")


@cache
def configuration_dict(name: str) -> dict:
    """``name``'s QasmBackendConfiguration as IBM's API serves it (treat as read-only).

    Devices: the snapshot's ``conf_*.json`` as it is, renamed to the catalog name. Ideal
    backends: generated from the catalog's target (its instruction names, no coupling map,
    no pulse), ``simulator: true``, the qiskit-aer version as ``backend_version``, and no
    repetition delay (``dynamic_reprate_enabled: false``, ``rep_delay_range: []``).
    """
    spec = get_spec(name)
    if spec.kind == "device":
        conf = _snapshot_file(name, "conf")
        conf["online_date"] = conf.get("online_date") or ONLINE_DATE
    else:
        names = sorted(build_target(name).operation_names)
        conf = {
            "backend_version": _aer_version(),
            "n_qubits": spec.num_qubits,
            "basis_gates": [n for n in names if n not in _NON_GATES],
            "gates": [],
            "local": False,
            "simulator": True,
            "conditional": True,
            "open_pulse": False,
            "memory": True,
            "max_shots": 10_000_000,
            "max_experiments": 10_000,
            "coupling_map": None,
            "supported_instructions": names,
            "online_date": ONLINE_DATE,
            "description": spec.description,
            "processor_type": {"family": "Aer", "revision": _aer_version(), "segment": spec.method},
            "dynamic_reprate_enabled": False,
            "rep_delay_range": [],
            "default_rep_delay": 0.0,
            "n_registers": 1,
            "credits_required": False,
            "sample_name": spec.method,
            "meas_levels": [2],
        }
    conf["backend_name"] = name
    return conf


@cache
def properties_dict(name: str) -> dict | None:
    """``name``'s BackendProperties as IBM's API serves them: the snapshot's ``props_*.json``,
    renamed; ``None`` for the ideal simulators (IBM's simulators have no properties)."""
    if get_spec(name).kind != "device":
        return None
    props = _snapshot_file(name, "props")
    props["backend_name"] = name
    return props


def calibration_id(name: str) -> str:
    """The id of ``name``'s one calibration (its snapshot; a hash of what workers simulate):
    the only ``calibration_id`` the REST API accepts for it."""
    return context_fingerprint(name)


@cache
def _aer_basis(method: str) -> frozenset[str]:
    """Every instruction name Aer's ``method`` executes (standard and Aer-specific)."""
    # lazy: qiskit-aer loads in about a second; only building a simulator needs it (the client lists backends without it)
    from qiskit_aer import AerSimulator

    return frozenset(AerSimulator(method=method).configuration().basis_gates)


def build_target(name: str, fractional: bool | None = True) -> Target:
    """The transpiler target of ``name`` (cached; treat it as read-only).

    Ideal: all-to-all, the standard gates Aer's method runs natively plus measure, reset,
    delay and control flow, so ``generate_preset_pass_manager(backend=...)`` output runs on
    Aer without further transpilation. Device: the calibration snapshot's target; with
    ``fractional=False``, a snapshot with IBM's fractional gates (``has_fractional_gates``)
    loses them, as ``service.backend(name, use_fractional_gates=False)`` builds it at IBM.
    """
    spec = get_spec(name)
    if fractional is False and has_fractional_gates(spec.name):
        return _target_without_fractional_gates(spec)
    return _build_target(spec)


FRACTIONAL_FEATURE = frozenset({"rzz", "rx"})


def has_fractional_gates(name: str) -> bool:
    """A device whose snapshot has IBM's fractional gates (``rzz``, ``rx``: Heron's feature
    that ``use_fractional_gates`` switches). The 2019-2020 snapshots' ``u2``/``u3`` basis gates
    are not this feature: IBM's filter would drop them too, leaving those retired devices no
    single-qubit basis, so they keep them."""
    spec = get_spec(name)
    return spec.kind == "device" and bool(FRACTIONAL_FEATURE & set(_build_target(spec).operation_names))


def refuse_dropped_fractional_gates(backend, circuits) -> None:
    """IBM's client checks a job's circuits against its backend object's target: a circuit
    with ``rzz``/``rx`` sent through a backend obtained with ``use_fractional_gates=False``
    (whose target lacks them) is refused, although the device's worker could run it."""
    if not isinstance(backend, BrokerBackend) or backend.use_fractional_gates is not False:
        return
    if not has_fractional_gates(backend.name):
        return
    for circuit in circuits:
        found = sorted(FRACTIONAL_FEATURE & set(_op_names(circuit)))
        if found:
            raise NotISAError(
                f"circuit {circuit.name!r} uses {', '.join(found)}, which backend {backend.name!r} "
                f"obtained with use_fractional_gates=False does not support (as IBM's client "
                f"refuses it); get the backend with service.backend({backend.name!r}, "
                "use_fractional_gates=True), or transpile for this one"
            )


def _op_names(circuit) -> set[str]:
    names = set()
    for inst in circuit.data:
        names.add(inst.operation.name)
        for block in getattr(inst.operation, "blocks", ()):
            names |= _op_names(block)
    return names


@cache
def _target_without_fractional_gates(spec: BackendSpec) -> Target:
    """IBM's ``convert_to_target(..., include_fractional_gates=False)`` of the snapshot: what
    IBMBackend builds for ``use_fractional_gates=False`` (every gate ``is_fractional_gate``
    names: ``rzz``, ``rx`` on the snapshots that have them)."""
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.utils.backend_converter import convert_to_target

    return convert_to_target(
        configuration=_configuration(spec.name, False),
        properties=_properties(spec.name, False),
        include_control_flow=True,
        include_fractional_gates=False,
    )


@cache
def _build_target(spec: BackendSpec) -> Target:
    if spec.kind == "device":
        return _fake(spec.snapshot).target
    target = Target(description=spec.description, num_qubits=spec.num_qubits)
    aer = _aer_basis(spec.method) | {"measure", "reset", "delay"}
    for gate_name, gate in get_standard_gate_name_mapping().items():
        if gate_name in aer:
            target.add_instruction(gate, name=gate_name)
    control_flow = {
        "if_else": cf.IfElseOp,
        "for_loop": cf.ForLoopOp,
        "while_loop": cf.WhileLoopOp,
        "switch_case": cf.SwitchCaseOp,
        "break_loop": cf.BreakLoopOp,
        "continue_loop": cf.ContinueLoopOp,
    }  # all Aer executes (not ``box``)
    for cf_name, cls in control_flow.items():
        target.add_instruction(cls, name=cf_name)
    return target


def simulator(name: str) -> AerSimulator:
    """The worker's simulator for ``name``, built once per process (warm workers reuse it).

    Shared: pass run options to ``run()``; never ``set_options`` on it.
    """
    return _simulator(get_spec(name))


@cache
def _simulator(spec: BackendSpec) -> AerSimulator:
    # lazy: qiskit-aer loads in about a second; only building a simulator needs it (the client lists backends without it)
    from qiskit_aer import AerSimulator

    # `session-broker worker --device GPU` sets this for the worker and its pool processes
    device = os.environ.get("SESSION_BROKER_WORKER_DEVICE", "CPU")
    options = {"device": device, "max_parallel_threads": aer_threads()}
    if spec.kind == "device":
        if spec.method != "automatic":
            options["method"] = spec.method
        sim = AerSimulator.from_backend(_fake(spec.snapshot), **options)
        noise = sim.options.noise_model
        noise._custom_noise_passes = [memoized_noise_pass(p) for p in noise._custom_noise_passes]
        return sim
    # Ideal circuits with final measurements sample from one state: parallel shots only
    # add OpenMP start-up to every small job (Bell on 2 cores: 3.0 -> 2.0 ms), while the
    # statevector itself still uses every thread (20 qubits: unchanged).
    return AerSimulator(method=spec.method, max_parallel_shots=1, **options)


def memoized_noise_pass(original, transform=None):
    """Aer's delay relaxation pass (``RelaxationNoisePass``, which Aer runs in Python on every
    circuit with delays) returning one error object per (instruction, duration, qubits): the
    same channels, built once, and Aer moves each distinct error into the circuit's noise
    model once instead of once per delay (a scheduled 127-qubit circuit has hundreds). With
    ``transform``, each error is transformed once (``tasks/wide.py``: Pauli-twirled)."""
    # lazy: qiskit-aer loads in about a second; only building a simulator needs it
    from qiskit_aer.noise.passes import LocalNoisePass

    func = original._func
    memo: dict = {}

    def error_of(op, qubits):
        key = (op.name, op.duration, getattr(op, "unit", None), tuple(qubits))
        if key not in memo:
            if len(memo) > 50_000:  # delays of every length a long-lived worker met
                memo.clear()
            error = func(op, qubits)
            memo[key] = error if error is None or transform is None else transform(error)
        return memo[key]

    return LocalNoisePass(error_of, op_types=original._ops, method=original._method)


def aer_threads() -> int:
    """OpenMP threads per simulator (``SESSION_BROKER_AER_THREADS``; 0 = every core). Lower
    it when several pool processes share a host's cores."""
    return get_settings().aer_threads


def check_gpu() -> None:
    """Refuse ``--device GPU`` clearly where this qiskit-aer build or machine has no GPU."""
    # lazy: qiskit-aer loads in about a second; only building a simulator needs it (the client lists backends without it)
    from qiskit_aer import AerSimulator

    devices = AerSimulator().available_devices()
    if "GPU" not in devices:
        raise ConfigurationError(
            f"--device GPU: no GPU is usable by this qiskit-aer build (available devices: "
            f"{', '.join(devices)}). On a machine with an NVIDIA GPU and CUDA 12, install "
            "qiskit-aer-gpu in place of qiskit-aer (pip install qiskit-aer-gpu), or run with --device CPU"
        )


def context_fingerprint(name: str) -> str:
    """A short hash of what the worker simulates for ``name``.

    A session's first job records it; a worker computing another value for a later job
    (other snapshot or qiskit-aer version) would simulate a different device.
    """
    return _fingerprint(get_spec(name).name)


@cache
def _fingerprint(name: str) -> str:
    # lazy: qiskit-aer loads in about a second; only building a simulator needs it (the client lists backends without it)
    import qiskit_aer

    spec = CATALOG[name]
    info = snapshot_info(name) or {}
    parts = [
        spec.name,
        spec.kind,
        spec.method,
        str(spec.num_qubits),
        spec.snapshot or "-",
        info.get("backend_version", "-"),
        info.get("calibrated", "-"),
        qiskit_aer.__version__,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _widest_hint(name: str, width: int) -> str:
    kind = CATALOG[name].kind  # an ideal circuit is not helped by a noisy device, nor vice versa
    fits = [
        s
        for s in CATALOG.values()
        if s.num_qubits >= width and s.name != name and s.kind == kind and s.method != "stabilizer"
    ]  # the stabilizer backend is wide, but runs only Clifford circuits
    if not fits:
        return "Use a smaller circuit."
    wide = max(fits, key=lambda s: s.num_qubits)
    return f"Use a wider backend (e.g. {wide.name}, {wide.num_qubits} qubits) or a smaller circuit."


def _walk(circuit, qubit_map):
    """Yield (operation, physical qargs) for every instruction, inside control flow too."""
    for inst in circuit.data:
        qargs = tuple(qubit_map[circuit.find_bit(q).index] for q in inst.qubits)
        yield inst.operation, qargs
        for block in getattr(inst.operation, "blocks", ()):
            yield from _walk(block, qargs)


def active_qubits(circuit) -> int:
    """How many qubits some instruction other than a barrier or delay acts on."""
    used = set()
    for op, qargs in _walk(circuit, range(circuit.num_qubits)):
        if op.name not in ("barrier", "delay"):
            used.update(qargs)
    return len(used)


def check_circuit(name: str, circuit, *, require_isa: bool) -> None:
    """Refuse, on the client, a circuit the worker could not run as given.

    Width is always checked. With ``require_isa`` (V2 primitives), a device needs every
    instruction supported by its target on those qubits (basis and coupling map), as IBM
    requires; an ideal backend only needs instructions Aer executes.
    """
    spec = get_spec(name)
    if not isinstance(circuit, QuantumCircuit):
        raise InvalidInputError(f"expected a QuantumCircuit, got {type(circuit).__name__}")
    # A device's qubits are physical, and ibmq_qasm_simulator is a named 32-qubit system:
    # a circuit wider than either is refused, as IBM's client does (is_isa_circuit). The
    # aer_simulator* backends have no fixed width in Aer, which drops idle qubits before it
    # allocates (truncation), so what must fit is the number of qubits an instruction
    # touches: a 127-qubit ISA circuit with 12 active qubits runs there, as with Aer's own.
    width = circuit.num_qubits if spec.fixed_width else active_qubits(circuit)
    if width > spec.num_qubits:
        hint = _widest_hint(name, width)
        if spec.kind == "ideal" and spec.fixed_width:
            active = active_qubits(circuit)
            roomy = [
                s.name
                for s in CATALOG.values()
                if s.kind == "ideal"
                and not s.fixed_width
                and s.method == spec.method
                and s.num_qubits >= active
            ]
            if roomy:
                hint = (
                    f"It acts on {active} of them: {roomy[0]} counts only those (Aer drops "
                    f"idle qubits). {hint}"
                )
        raise CircuitTooWideError(
            f"circuit {circuit.name!r} {'uses' if spec.fixed_width else 'acts on'} {width} "
            f"qubits; backend {name!r} has {spec.num_qubits}. {hint}"
        )
    if not require_isa:
        return
    hint = (
        f"transpile first: generate_preset_pass_manager(backend=service.backend({name!r}), "
        f"optimization_level=1).run(circuit)"
    )
    target = build_target(name)
    if spec.kind == "ideal":
        allowed = _aer_basis(spec.method) | set(target.operation_names) | _IGNORED
        for op, qargs in _walk(circuit, range(circuit.num_qubits)):
            if op.name not in allowed:
                raise NotISAError(
                    f"circuit {circuit.name!r}: instruction {op.name!r} on qubits {qargs} is not "
                    f"supported by the Aer simulator of backend {name!r}; {hint}"
                )
        return
    basis = ", ".join(sorted(target.operation_names))
    for op, qargs in _walk(circuit, range(circuit.num_qubits)):
        if op.name in _IGNORED or target.instruction_supported(op.name, qargs):
            continue
        if op.name not in target.operation_names:
            why = f"is not in the instruction set of backend {name!r} ({basis})"
        elif len(qargs) == 2:
            why = f"is not supported on those qubits: they are not coupled on backend {name!r}"
        else:
            why = f"is not supported on those qubits by backend {name!r}"
        raise NotISAError(
            f"circuit {circuit.name!r}: instruction {op.name!r} on qubits {qargs} {why}; {hint}"
        )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _frozen_options(name: str, transpilation: dict[str, Any]) -> tuple:
    """Validate transpilation options; return them hashable (the pass-manager cache key)."""
    bad = sorted(set(transpilation) - set(_TRANSPILE_OPTIONS))
    if bad:
        raise OptionNotSupportedError(
            f"transpilation option(s) {', '.join(bad)} not supported; "
            f"allowed: {', '.join(_TRANSPILE_OPTIONS)}"
        )
    out = {k: v for k, v in transpilation.items() if v is not None}
    n, layout = CATALOG[name].num_qubits, out.get("initial_layout")
    if layout is not None:
        if (
            not isinstance(layout, (list, tuple))
            or len(set(layout)) != len(layout)
            or not all(_is_int(q) and 0 <= q < n for q in layout)
        ):
            raise OptionNotSupportedError(
                f"initial_layout must be a list of distinct qubit indices in 0..{n - 1}, got {layout!r}"
            )
        out["initial_layout"] = tuple(layout)
    checks = {
        "layout_method": (lambda v: isinstance(v, str), "a plugin name (str)"),
        "routing_method": (lambda v: isinstance(v, str), "a plugin name (str)"),
        "approximation_degree": (
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0,
            "a number in [0, 1]",
        ),
        "seed_transpiler": (lambda v: _is_int(v) and v >= 0, "a non-negative int"),
    }
    for key, (ok, what) in checks.items():
        if key in out and not ok(out[key]):
            raise OptionNotSupportedError(f"{key} must be {what}, got {out[key]!r}")
    return tuple(sorted(out.items()))


def pass_manager(name: str, optimization_level: int, **transpilation) -> StagedPassManager:
    """The preset pass manager for ``name`` (cached by name, level and options; read-only)."""
    name = get_spec(name).name
    if not (_is_int(optimization_level) and 0 <= optimization_level <= 3):
        raise OptionNotSupportedError(f"optimization_level must be 0, 1, 2 or 3, got {optimization_level!r}")
    return _pass_manager(name, optimization_level, _frozen_options(name, transpilation))


@lru_cache(maxsize=64)
def _pass_manager(name: str, level: int, options: tuple) -> StagedPassManager:
    kwargs = dict(options)
    if "initial_layout" in kwargs:
        kwargs["initial_layout"] = list(kwargs["initial_layout"])
    try:
        return generate_preset_pass_manager(level, target=build_target(name), **kwargs)
    except TranspilerError as exc:
        raise OptionNotSupportedError(f"transpilation options {kwargs!r} refused: {exc}") from exc


class BrokerBackend(BackendV2):
    """Client-side view of a catalog backend: target matches what the worker simulates.

    Use it as ``mode=`` of SamplerV2/EstimatorV2 and as ``backend=`` of
    ``generate_preset_pass_manager``; it cannot run circuits itself.
    """

    def __init__(self, name: str, service=None, use_fractional_gates: bool | None = None):
        spec = get_spec(canonical(name))
        version = configuration_dict(spec.name)["backend_version"]
        super().__init__(provider=None, name=spec.name, description=spec.description, backend_version=version)
        self._spec = spec
        self.service = service
        # IBM's: False drops the fractional gates of a snapshot that has them (target,
        # configuration, properties); True and None keep them (``has_fractional_gates``)
        self._fractional = use_fractional_gates

    # IBMBackend's information API, from the snapshot (devices) or the catalog (ideal) ------
    def configuration(self):
        """The backend configuration (``qiskit_ibm_runtime.models.QasmBackendConfiguration``),
        as ``IBMBackend.configuration()`` returns it."""
        return _configuration(self._spec.name, self._fractional)

    def properties(self, refresh: bool = False, datetime=None):
        """The calibration snapshot's ``BackendProperties`` (``qiskit_ibm_runtime.models``);
        ``None`` for the ideal simulators, as IBM's simulators. There is one calibration:
        ``datetime`` is checked as IBM checks it and the snapshot returned."""
        if not isinstance(refresh, bool):
            raise TypeError(
                f"The 'refresh' argument needs to be a boolean. {refresh} is of type  {type(refresh)}"
            )
        if datetime is not None and not isinstance(datetime, python_datetime):
            raise TypeError(f"'{datetime}' is not of type 'datetime'.")
        return _properties(self._spec.name, self._fractional)

    def status(self):
        """``qiskit_ibm_runtime.models.BackendStatus``: operational while a worker serves the
        backend; ``pending_jobs`` is its shared queue's length."""
        # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
        from qiskit_ibm_runtime.models import BackendStatus

        own = (
            self.service is None
        )  # the default deployment (SESSION_BROKER_URL), as QiskitRuntimeService() reads it
        if own:
            settings = get_settings()
            store = Store(settings, client=redis_client(settings, typed_errors=True))
        else:
            store = self.service._store
        try:
            live = store.live_workers(self.name)
            pending = int(store.queue_length(self.name))
        finally:
            if own:
                store.redis.close()  # a client per call: its connections go with it
        return BackendStatus(
            backend_name=self.name,
            backend_version=self.backend_version,
            operational=bool(live),
            pending_jobs=pending,
            status_msg="active" if live else "internal",
        )

    def defaults(self, refresh: bool = False) -> None:
        """Pulse defaults: none (qiskit-ibm-runtime 0.51 removed pulse; IBM's backends no
        longer have them either)."""
        return None

    @property
    def calibration_id(self) -> str | None:
        return None  # as IBMBackend's unless one is asked for: there is one calibration

    # named by IBM's guides; None where the snapshot (2020's) or an ideal simulator has none
    @property
    def processor_type(self) -> dict | None:
        return getattr(self.configuration(), "processor_type", None)

    @property
    def supported_instructions(self) -> list[str] | None:
        return getattr(self.configuration(), "supported_instructions", None)

    @property
    def rep_delay_range(self) -> list[float] | None:
        """Seconds, as IBM's configuration converts them; None for ideal simulators."""
        return getattr(self.configuration(), "rep_delay_range", None) or None

    @property
    def default_rep_delay(self) -> float | None:
        return (
            getattr(self.configuration(), "default_rep_delay", None) if self._spec.kind == "device" else None
        )

    @property
    def dtm(self) -> float | None:  # type: ignore[override]
        return getattr(self.configuration(), "dtm", None)

    @property
    def meas_map(self) -> list[list[int]] | None:  # type: ignore[override]
        return getattr(self.configuration(), "meas_map", None)

    def __getattr__(self, name: str):
        """What IBMBackend finds on its configuration: ``processor_type``,
        ``supported_instructions``, ``rep_delay_range``, ``default_rep_delay``, ``basis_gates``..."""
        if name.startswith("_"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        try:
            return getattr(self.configuration(), name)
        except AttributeError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    @property
    def target(self) -> Target:
        return build_target(self._spec.name, self._fractional)

    @property
    def use_fractional_gates(self) -> bool | None:
        """What ``service.backend(..., use_fractional_gates=)`` asked for (IBM keeps it in
        ``backend.options``)."""
        return self._fractional

    @property
    def max_circuits(self):
        return None

    @property
    def num_qubits(self) -> int:
        return self._spec.num_qubits

    @property
    def spec(self) -> BackendSpec:
        return self._spec

    @property
    def simulator(self) -> bool:
        """True for the ideal simulators, False for the simulated devices: what IBM's
        ``backend.simulator`` (its configuration's) says, and what
        ``service.backends(simulator=...)`` filters on. The REST configuration says False
        for every backend, as the stock client needs to open sessions (``api/devices.py``)."""
        return self._spec.kind == "ideal"

    @classmethod
    def _default_options(cls) -> Options:
        return Options(shots=4000)

    def run(self, run_input, **options):
        raise TypeError(
            "BrokerBackend cannot run circuits directly; use SamplerV2(mode=backend) "
            "or EstimatorV2(mode=backend)"
        )

    def __repr__(self) -> str:
        return f"<BrokerBackend({self.name!r})>"

    def __eq__(self, other) -> bool:
        if not isinstance(other, BrokerBackend):
            return NotImplemented
        return self.name == other.name

    def __hash__(self) -> int:
        return hash(("BrokerBackend", self.name))


@cache
def _configuration(name: str, fractional: bool | None = True):
    """IBM's configuration object; ``fractional=False`` on a backend that
    ``has_fractional_gates`` drops them from it, as IBM's decoder does."""
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.models import QasmBackendConfiguration

    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.utils.backend_decoder import (
        decode_backend_configuration,
        filter_raw_configuration,
    )

    raw = copy.deepcopy(configuration_dict(name))
    if fractional is False and has_fractional_gates(name):
        filter_raw_configuration(raw, use_fractional_gates=False)
    decode_backend_configuration(raw)
    return QasmBackendConfiguration.from_dict(raw)


@cache
def _properties(name: str, fractional: bool | None = True):
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.utils.backend_decoder import properties_from_server_data

    raw = properties_dict(name)
    keep = False if fractional is False and has_fractional_gates(name) else None
    return None if raw is None else properties_from_server_data(copy.deepcopy(raw), use_fractional_gates=keep)


def name_of(backend) -> str:
    """The catalog name for a backend *object*, as IBM's local testing mode passes them.

    Any fake backend of ``qiskit_ibm_runtime.fake_provider`` (``FakeAlmadenV2()``) maps to
    the device simulated from its snapshot; ``AerSimulator.from_backend()`` of one of them
    or of a backend of ours too; a noiseless ``AerSimulator`` maps to the ideal backend that
    runs its method's circuits (``IDEAL_BY_METHOD``). Anything else is refused with what is
    accepted, since we would silently simulate something else.
    """
    if isinstance(backend, BrokerBackend):
        return backend.name
    cls = type(backend).__name__
    by_class = {spec.snapshot: spec.name for spec in CATALOG.values() if spec.snapshot}
    if cls in by_class:
        return by_class[cls]
    name = getattr(backend, "name", "")
    name = str(name() if callable(name) else name)
    if cls == "AerSimulator":
        inner = name.removeprefix("aer_simulator_from(").removesuffix(")")
        if inner != name and (inner in ALIASES or inner in CATALOG):
            return canonical(inner)
        options = getattr(backend, "options", None)
        if getattr(options, "noise_model", None) is None:
            method = getattr(options, "method", None)
            if method in IDEAL_BY_METHOD:
                return IDEAL_BY_METHOD[method]
    elif name in ALIASES and hasattr(backend, "target"):  # a fake backend of another class
        return ALIASES[name]
    raise UnknownBackendError(
        f"backend object {name[:80] or cls!r} ({cls}) is not simulated here. A mode may be a "
        f"backend name ({', '.join(CATALOG)}), a fake backend of qiskit_ibm_runtime.fake_provider "
        "(FakeManilaV2 -> ibm_manila, and so on for each), an AerSimulator.from_backend() of one of "
        f"those or of a backend of ours, or a noiseless AerSimulator (method {', '.join(IDEAL_BY_METHOD)})"
    )
