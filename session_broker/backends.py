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

import hashlib
import importlib
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from qiskit.providers import BackendV2, Options
from qiskit.transpiler import Target

from session_broker.errors import (
    CircuitTooWideError,
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


#: Ordered, ideal backends first. Qubit counts of ideal backends follow memory: a dense
#: complex128 statevector of n qubits takes 16 * 2**n bytes, so 30 qubits need 16 GiB and
#: 31 would need 32 GiB, more than the 24 GiB of the worker machine. The 32-qubit
#: "automatic" backends mirror IBM's cloud simulator: Aer picks the stabilizer method for
#: Clifford circuits (any width), but a non-Clifford circuit over 30 qubits is refused by
#: Aer at run time with "Insufficient memory". Matrix-product-state memory grows with
#: entanglement rather than width, hence 100 qubits.
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
        _device("ibm_manila", "FakeManilaV2", 5, "2024-05-27", "1.2.6"),
        _device("ibm_lima", "FakeLimaV2", 5, "2021-03-15", "1.0.5"),
        _device("ibm_nairobi", "FakeNairobiV2", 7, "2024-05-27", "1.3.5"),
        _device("ibm_algiers", "FakeAlgiers", 27, "2024-02-28", "1.6.16"),
        # Eagle and Heron processors. A statevector or density matrix of 127+ qubits cannot
        # exist; Aer drops idle qubits (truncation), and matrix-product states keep the
        # typical 100+ qubit tutorial circuits (GHZ chains, shallow layers) in memory.
        _device("ibm_sherbrooke", "FakeSherbrooke", 127, "2025-02-26", "1.6.58", "matrix_product_state"),
        _device("ibm_torino", "FakeTorino", 133, "2025-02-26", "1.0.54", "matrix_product_state"),
    )
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
    """The spec of ``name``; ``UnknownBackendError`` listing the known names otherwise."""
    spec = CATALOG.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownBackendError(f"unknown backend {name!r}; known backends: {', '.join(CATALOG)}")
    return spec


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


@cache
def _aer_basis(method: str) -> frozenset[str]:
    """Every instruction name Aer's ``method`` executes (standard and Aer-specific)."""
    from qiskit_aer import AerSimulator

    return frozenset(AerSimulator(method=method).configuration().basis_gates)


def build_target(name: str) -> Target:
    """The transpiler target of ``name`` (cached; treat it as read-only).

    Ideal: all-to-all, the standard gates Aer's method runs natively plus measure, reset,
    delay and control flow, so ``generate_preset_pass_manager(backend=...)`` output runs on
    Aer without further transpilation. Device: the calibration snapshot's target.
    """
    return _build_target(get_spec(name))


@cache
def _build_target(spec: BackendSpec) -> Target:
    if spec.kind == "device":
        return _fake(spec.snapshot).target
    from qiskit.circuit import controlflow as cf
    from qiskit.circuit.library import get_standard_gate_name_mapping

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
    import os

    from qiskit_aer import AerSimulator

    # `session-broker worker --device GPU` sets this for the worker and its pool processes
    device = os.environ.get("SESSION_BROKER_WORKER_DEVICE", "CPU")
    options = {"device": device, "max_parallel_threads": aer_threads()}
    if spec.kind == "device":
        if spec.method != "automatic":
            options["method"] = spec.method
        return AerSimulator.from_backend(_fake(spec.snapshot), **options)
    # Ideal circuits with final measurements sample from one state: parallel shots only
    # add OpenMP start-up to every small job (Bell on 2 cores: 3.0 -> 2.0 ms), while the
    # statevector itself still uses every thread (20 qubits: unchanged).
    return AerSimulator(method=spec.method, max_parallel_shots=1, **options)


def aer_threads() -> int:
    """OpenMP threads per simulator (``SESSION_BROKER_AER_THREADS``; 0 = every core). Lower
    it when several pool processes share a host's cores."""
    from session_broker.core.config import get_settings

    return get_settings().aer_threads


def check_gpu() -> None:
    """Refuse ``--device GPU`` clearly where this qiskit-aer build or machine has no GPU."""
    from qiskit_aer import AerSimulator

    from session_broker.errors import ConfigurationError

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
    fits = [s for s in CATALOG.values() if s.num_qubits >= width and s.name != name and s.kind == kind]
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
    from qiskit import QuantumCircuit

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
    from qiskit.transpiler import TranspilerError
    from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager

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

    def __init__(self, name: str, service=None):
        spec = get_spec(name)
        super().__init__(provider=None, name=spec.name, description=spec.description)
        self._spec = spec
        self.service = service

    @property
    def target(self) -> Target:
        return build_target(self._spec.name)

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


def name_of(backend) -> str:
    """The catalog name for a backend *object*, as IBM's local testing mode passes them.

    ``FakeManilaV2()`` (or any fake backend whose snapshot the catalog simulates) maps to
    the device simulated from that snapshot; ``AerSimulator.from_backend(FakeManilaV2())``
    too; a noiseless ``AerSimulator`` maps to the ideal backend with its method. Anything
    else is refused with the catalog, since we would silently simulate something else.
    """
    if isinstance(backend, BrokerBackend):
        return backend.name
    snapshots = {spec.snapshot: spec.name for spec in CATALOG.values() if spec.snapshot}
    fakes = {_fake_name(snap): name for snap, name in snapshots.items()}
    cls = type(backend).__name__
    if cls in snapshots:
        return snapshots[cls]
    name = getattr(backend, "name", "")
    name = name() if callable(name) else name
    if cls == "AerSimulator":
        inner = str(name).removeprefix("aer_simulator_from(").removesuffix(")")
        if inner in fakes:
            return fakes[inner]
        if getattr(backend.options, "noise_model", None) is None:
            method = backend.options.method
            ideal = {
                "automatic": "aer_simulator",
                "statevector": "aer_simulator_statevector",
                "matrix_product_state": "aer_simulator_mps",
            }
            if method in ideal:
                return ideal[method]
    devices = ", ".join(f"{snap} -> {n}" for snap, n in snapshots.items())
    raise UnknownBackendError(
        f"backend object {name or cls!r} ({cls}) is not simulated here. A mode may be a backend "
        f"name ({', '.join(CATALOG)}), a fake backend whose snapshot the catalog simulates "
        f"({devices}), an AerSimulator built from one of those, or a noiseless AerSimulator "
        "(method automatic, statevector or matrix_product_state)"
    )


@cache
def _fake_name(snapshot: str) -> str:
    """``fake_manila`` for ``FakeManilaV2``: the name a fake backend (and Aer's copy) reports."""
    cls = getattr(importlib.import_module("qiskit_ibm_runtime.fake_provider"), snapshot)
    return cls.backend_name  # a class attribute: no need to load the snapshot
