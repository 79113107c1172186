"""The primitives a producer calls: ``SamplerV2``/``EstimatorV2`` and the guide's V1 API.

Every ``run()`` does the same four things, all before anything is queued, so bad input
is a typed error in the caller's process and never a failed job on a worker:
coerce the PUBs with Qiskit's own ``SamplerPub``/``EstimatorPub`` rules, check them
against the backend (width, ISA for V2 on devices, finite parameters, options), encode them
(``codec``), and hand them to the service's one submit path.

V1 (``Sampler``, ``Estimator``, ``Options``) is built on the same path: its circuits need
not be ISA (the worker transpiles at ``optimization_level``), and its results are turned
into ``quasi_dists``/``values`` + ``metadata`` on the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from qiskit.circuit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2, PrimitiveResult
from qiskit.primitives.containers import EstimatorPub, SamplerPub
from qiskit.quantum_info import SparsePauliOp
from qiskit.result import QuasiDistribution

from session_broker import backends as catalog
from session_broker import codec
from session_broker.backends import BrokerBackend
from session_broker.errors import (
    BackendMismatchError,
    InvalidInputError,
    InvalidMaxTimeError,
    OptionNotSupportedError,
)
from session_broker.job import RuntimeJobV2
from session_broker.service import QiskitRuntimeService, default_service
from session_broker.session import Session, current_context_session, current_session


# ---------------------------------------------------------------------- mode resolution
def _resolve(mode, kind: str) -> tuple[QiskitRuntimeService, str, Session | None]:
    """(service, backend name, session or None) for a primitive's ``mode``.

    Without a mode the primitive joins the session of the ``with`` block (this thread's, or
    the only one open in the process). With a backend it joins only a session this very
    thread or context opened on that backend: another thread's session is not taken over.
    """
    if mode is None:
        ambient = current_session()
        if ambient is None:
            raise InvalidInputError(
                f"{kind} needs a mode: pass mode=session, mode=batch, mode=backend or a backend "
                "name, or create it inside `with Session(...)`")
        return ambient.service, ambient.backend(), ambient
    if isinstance(mode, Session):
        return mode.service, mode.backend(), mode
    if isinstance(mode, BrokerBackend):
        name, service = mode.name, mode.service
    elif isinstance(mode, str):
        catalog.get_spec(mode)
        name, service = mode, None
    else:
        raise InvalidInputError(
            f"mode must be a Session, Batch, backend object or backend name, not {type(mode).__name__}")
    ambient = current_context_session()
    if ambient is not None:
        if ambient.backend() != name:
            raise BackendMismatchError(
                f"{kind} targets backend {name!r} inside a session on {ambient.backend()!r}; "
                "a session has exactly one backend")
        return ambient.service, name, ambient
    return service or default_service(), name, None


class _PrimitiveOptions:
    """Options with a fixed set of names: a misspelt or unsupported one is an error."""

    _defaults: dict[str, Any] = {}

    def __init__(self, options=None):
        object.__setattr__(self, "_values", dict(self._defaults))
        if options is None:
            return
        items = options.items() if isinstance(options, dict) else (
            (k, getattr(options, k)) for k in self._defaults if hasattr(options, k))
        for key, value in items:
            setattr(self, key, value)

    def __getattr__(self, name):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        if name not in self._defaults:
            raise OptionNotSupportedError(
                f"option {name!r} is not supported; supported options: {', '.join(self._defaults)}")
        self._values[name] = self._check(name, value)

    def _check(self, name, value):
        if value is None:
            return None
        if name in ("default_shots", "max_execution_time", "seed_simulator"):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "seed_simulator" else 1):
                raise OptionNotSupportedError(f"option {name}={value!r} must be a positive int")
            return int(value)
        if name == "default_precision":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise OptionNotSupportedError(f"option default_precision={value!r} must be a float >= 0")
            return float(value)
        return value

    def to_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


class SamplerOptions(_PrimitiveOptions):
    _defaults = {"default_shots": 4096, "seed_simulator": None, "max_execution_time": None}


class EstimatorOptions(_PrimitiveOptions):
    _defaults = {"default_precision": 0.0, "seed_simulator": None, "max_execution_time": None}


class _Primitive:
    _kind = ""

    def _setup(self, mode):
        self._service, self._backend, self._session = _resolve(mode, type(self).__name__)

    @property
    def mode(self):
        return self._session if self._session is not None else self._service.backend(self._backend)

    def backend(self) -> BrokerBackend:
        return self._service.backend(self._backend)

    @property
    def session(self) -> Session | None:
        return self._session

    def _check_circuits(self, circuits: Iterable[QuantumCircuit], require_isa: bool) -> None:
        for circuit in circuits:
            catalog.check_circuit(self._backend, circuit, require_isa=require_isa)

    def _check_time(self, max_execution_time: int | None) -> None:
        if max_execution_time and self._session is not None and max_execution_time >= self._session.max_time:
            raise InvalidMaxTimeError(
                f"max_execution_time={max_execution_time} s must be less than the session's "
                f"max_time ({self._session.max_time} s)")

    def _submit(self, pubs_json: list[dict], options: dict, summary: dict, transform=None) -> RuntimeJobV2:
        limit = self._service._store.settings.max_payload_bytes
        payload = codec.encode_payload(self._kind, pubs_json, options, max_bytes=limit)
        return self._service._submit(
            primitive=self._kind, backend=self._backend, session=self._session, payload=payload,
            summary=summary, max_execution_time=options.get("max_execution_time"), transform=transform)


MAX_RESULT_BYTES = 1 << 30  # a sampler job's bit arrays: PUB size x shots x bytes per shot


def result_bytes(pubs) -> int:
    """Bytes of the BitArrays a sampler job returns (the worker checks the same bound)."""
    return sum(int(np.prod(p.shape, dtype=np.int64)) * int(p.shots) * -(-p.circuit.num_clbits // 8)
               for p in pubs)


def _check_result_size(pubs) -> None:
    size = result_bytes(pubs)
    if size > MAX_RESULT_BYTES:
        raise InvalidInputError(
            f"this sampler job would return {size / 2**20:.0f} MiB of bits (PUB size x shots x "
            f"bytes per shot); the limit is {MAX_RESULT_BYTES >> 20} MiB: use fewer shots or split the job")


def _finite(pub, index: int) -> None:
    for value in pub.parameter_values.data.values():
        if not np.all(np.isfinite(value)):
            raise InvalidInputError(f"PUB {index}: parameter values must be finite numbers (found NaN or inf)")


def _coerce(pubs, coerce, what: str):
    if isinstance(pubs, (QuantumCircuit, tuple)) or not hasattr(pubs, "__iter__"):
        raise InvalidInputError(f"run() takes a list of {what} PUBs, e.g. run([circuit]) or run([(circuit, ...)]), not {type(pubs).__name__}")
    out = []
    for i, pub in enumerate(pubs):
        try:
            coerced = coerce(pub)
            coerced.validate()
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise InvalidInputError(f"{what} PUB {i} is malformed: {exc}") from None
        _finite(coerced, i)
        out.append(coerced)
    if not out:
        raise InvalidInputError(f"run() needs at least one {what} PUB")
    return out


# ---------------------------------------------------------------------- V2
class SamplerV2(_Primitive, BaseSamplerV2):
    """Sampler V2: PUBs are ``circuit`` or ``(circuit, parameter_values[, shots])``."""

    _kind = "sampler"

    def __init__(self, mode=None, options=None):
        self._setup(mode)
        self._options = SamplerOptions(options)

    @property
    def options(self) -> SamplerOptions:
        return self._options

    def run(self, pubs, *, shots: int | None = None) -> RuntimeJobV2:
        if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0):
            raise InvalidInputError(f"shots={shots!r} must be a positive int")
        default = shots or self._options.default_shots
        coerced = _coerce(pubs, lambda p: SamplerPub.coerce(p, default), "sampler")
        for i, pub in enumerate(coerced):
            if pub.circuit.num_clbits == 0:
                raise InvalidInputError(f"sampler PUB {i}: the circuit has no classical bits to sample; "
                                        "add measurements (circuit.measure_all())")
        self._check_circuits((p.circuit for p in coerced), require_isa=True)
        _check_result_size(coerced)
        opts = self._options.to_dict()
        self._check_time(opts.get("max_execution_time"))
        options = {"api": "v2", "seed_simulator": opts["seed_simulator"],
                   "max_execution_time": opts["max_execution_time"]}
        summary = {"api": "v2", "pubs": len(coerced), "shots": max(p.shots for p in coerced)}
        return self._submit(codec.encode_sampler_pubs(coerced), options, summary)


class EstimatorV2(_Primitive, BaseEstimatorV2):
    """Estimator V2: PUBs are ``(circuit, observables[, parameter_values[, precision]])``."""

    _kind = "estimator"

    def __init__(self, mode=None, options=None):
        self._setup(mode)
        self._options = EstimatorOptions(options)

    @property
    def options(self) -> EstimatorOptions:
        return self._options

    def run(self, pubs, *, precision: float | None = None) -> RuntimeJobV2:
        if precision is not None and (isinstance(precision, bool) or not isinstance(precision, (int, float)) or not np.isfinite(precision) or precision < 0):
            raise InvalidInputError(f"precision={precision!r} must be a finite float >= 0")
        default = self._options.default_precision if precision is None else precision
        coerced = _coerce(pubs, lambda p: EstimatorPub.coerce(p, default), "estimator")
        self._check_circuits((p.circuit for p in coerced), require_isa=True)
        opts = self._options.to_dict()
        self._check_time(opts.get("max_execution_time"))
        options = {"api": "v2", "seed_simulator": opts["seed_simulator"],
                   "max_execution_time": opts["max_execution_time"]}
        summary = {"api": "v2", "pubs": len(coerced), "shots": None}
        return self._submit(codec.encode_estimator_pubs(coerced), options, summary)


# ---------------------------------------------------------------------- V1: Options
class _Group:
    """A fixed group of options (``options.execution.shots``): unknown names are errors."""

    def __init__(self, name: str, **defaults):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", defaults)

    def __getattr__(self, key):
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        if key not in self._values:
            raise OptionNotSupportedError(
                f"option {self._name}.{key} is not supported; supported: "
                + ", ".join(f"{self._name}.{k}" for k in self._values))
        self._values[key] = value

    def to_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self):
        return f"{self._name}({self._values})"


@dataclass
class _OptionsData:
    optimization_level: int = 1
    resilience_level: int = 0
    max_execution_time: int | None = None
    execution: _Group = field(default_factory=lambda: _Group("execution", shots=4000, init_qubits=True))
    transpilation: _Group = field(default_factory=lambda: _Group(
        "transpilation", skip_transpilation=False, initial_layout=None, layout_method=None,
        routing_method=None, approximation_degree=None, seed_transpiler=None))
    simulator: _Group = field(default_factory=lambda: _Group("simulator", seed_simulator=None))


class Options(_OptionsData):
    """The guide's V1 options. Defaults: optimization_level 1, resilience_level 0, 4000 shots.

    ``resilience_level`` 1-3 is accepted on ideal simulators, where there is no noise to
    mitigate (the result's metadata says so); on noisy device backends it is refused with
    ``OptionNotSupportedError``, because no mitigation is implemented. ``init_qubits`` must be
    True (simulators always start from |0>).
    """

    _TOP = ("optimization_level", "resilience_level", "max_execution_time", "execution",
            "transpilation", "simulator")

    def __init__(self, **kwargs):
        super().__init__()
        for key, value in kwargs.items():
            if isinstance(value, dict) and key in ("execution", "transpilation", "simulator"):
                for sub, v in value.items():
                    setattr(getattr(self, key), sub, v)
            else:
                setattr(self, key, value)

    def __setattr__(self, key, value):
        if key not in self._TOP:
            raise OptionNotSupportedError(f"option {key!r} is not supported; supported: {', '.join(self._TOP)}")
        object.__setattr__(self, key, value)

    def validated(self, backend: str) -> dict:
        """The options as the worker gets them, checked against the backend."""
        def level(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 3:
                raise OptionNotSupportedError(f"{name}={value!r} is not valid: expected an int from 0 to 3")
            return int(value)

        opt = level("optimization_level", self.optimization_level)
        res = level("resilience_level", self.resilience_level)
        if res and catalog.get_spec(backend).kind == "device":
            raise OptionNotSupportedError(
                f"resilience_level={res} is not available on device backend {backend!r}: session-broker "
                "implements no error mitigation; use resilience_level=0 there (ideal simulators accept 0-3)")
        shots = self.execution.shots
        if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
            raise OptionNotSupportedError(f"execution.shots={shots!r} must be a positive int")
        if self.execution.init_qubits is not True:
            raise OptionNotSupportedError("execution.init_qubits must be True: simulators always start in |0>")
        met = self.max_execution_time
        if met is not None and (isinstance(met, bool) or not isinstance(met, (int, np.integer)) or met <= 0):
            raise OptionNotSupportedError(f"max_execution_time={met!r} must be a positive int of seconds")
        transpilation = {k: v for k, v in self.transpilation.to_dict().items() if v is not None}
        skip = bool(transpilation.pop("skip_transpilation", False))
        if not skip:
            catalog.pass_manager(backend, opt, **transpilation)  # refuses unknown methods now
        seed = self.simulator.seed_simulator
        return {"api": "v1", "optimization_level": opt, "resilience_level": res, "shots": int(shots),
                "max_execution_time": int(met) if met else None, "skip_transpilation": skip,
                "transpilation": transpilation, "seed_simulator": seed}


# ---------------------------------------------------------------------- V1: primitives
@dataclass(frozen=True)
class SamplerResult:
    """V1 sampler result: one quasi-probability distribution and metadata dict per circuit."""

    quasi_dists: list[QuasiDistribution]
    metadata: list[dict]


@dataclass(frozen=True)
class EstimatorResult:
    """V1 estimator result: expectation values (numpy array) and per-circuit metadata."""

    values: np.ndarray
    metadata: list[dict]


def _sampler_v1(result: PrimitiveResult) -> SamplerResult:
    dists, meta = [], []
    for pub in result:
        bits = pub.join_data()
        shots = bits.num_shots * (int(np.prod(bits.shape)) or 1)
        counts = bits.get_int_counts()
        dists.append(QuasiDistribution({k: v / shots for k, v in counts.items()}, shots=shots))
        meta.append({"shots": shots, "backend": result.metadata.get("backend")})
    return SamplerResult(dists, meta)


def _estimator_v1(result: PrimitiveResult) -> EstimatorResult:
    values, meta = [], []
    for pub in result:
        values.append(float(np.asarray(pub.data.evs).reshape(-1)[0]))
        variance = float(np.asarray(pub.data.variances).reshape(-1)[0])
        meta.append({"variance": variance, "shots": pub.metadata.get("shots"),
                     "backend": result.metadata.get("backend")})
    return EstimatorResult(np.array(values), meta)


def v1_transform(primitive: str):
    return _sampler_v1 if primitive == "sampler" else _estimator_v1


def _as_list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (QuantumCircuit, str, SparsePauliOp)) or not isinstance(value, (list, tuple)):
        return [value]
    return list(value)


def _params(parameter_values, n: int) -> list:
    if parameter_values is None:
        return [None] * n
    values = list(parameter_values)
    if n == 1 and values and not isinstance(values[0], (list, tuple, np.ndarray)):
        values = [values]
    if len(values) != n:
        raise InvalidInputError(f"got {len(values)} parameter value sets for {n} circuits; give one per circuit")
    return values


class _V1(_Primitive):
    def __init__(self, backend=None, session: Session | None = None, options: Options | dict | None = None):
        if session is not None and not isinstance(session, Session):
            raise InvalidInputError(f"session must be a Session or Batch, not {type(session).__name__}")
        if session is not None and backend is not None:
            name = backend.name if isinstance(backend, BrokerBackend) else backend
            if name != session.backend():
                raise BackendMismatchError(
                    f"{type(self).__name__} targets backend {name!r} but its session runs on "
                    f"{session.backend()!r}; a session has exactly one backend")
        self._setup(session if session is not None else backend)
        if options is None:
            options = Options()
        elif isinstance(options, dict):
            options = Options(**options)
        elif not isinstance(options, Options):
            raise InvalidInputError(f"options must be an Options or a dict, not {type(options).__name__}")
        self.options = options

    def _v1_options(self, shots) -> dict:
        options = self.options.validated(self._backend)
        if shots is not None:
            if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
                raise InvalidInputError(f"shots={shots!r} must be a positive int")
            options["shots"] = int(shots)
        self._check_time(options["max_execution_time"])
        return options


class Sampler(_V1):
    """The guide's V1 Sampler: ``run(circuits, parameter_values=None)`` -> ``quasi_dists``."""

    _kind = "sampler"

    def run(self, circuits, parameter_values=None, shots: int | None = None, **_kw) -> RuntimeJobV2:
        options = self._v1_options(shots)
        circuits = _as_list(circuits, "circuits")
        pubs = [(c, p) if p is not None else (c,) for c, p in zip(circuits, _params(parameter_values, len(circuits)))]
        coerced = _coerce(pubs, lambda p: SamplerPub.coerce(p, options["shots"]), "sampler")
        for i, pub in enumerate(coerced):
            if pub.circuit.num_clbits == 0:
                raise InvalidInputError(f"circuit {i} has no classical bits to sample; add measurements (circuit.measure_all())")
        self._check_circuits((p.circuit for p in coerced), require_isa=options["skip_transpilation"])
        _check_result_size(coerced)
        summary = {"api": "v1", "pubs": len(coerced), "shots": options["shots"]}
        return self._submit(codec.encode_sampler_pubs(coerced), options, summary, _sampler_v1)


class Estimator(_V1):
    """The guide's V1 Estimator: ``run(circuits, observables, parameter_values=None)`` -> ``values``."""

    _kind = "estimator"

    def run(self, circuits, observables, parameter_values=None, shots: int | None = None, **_kw) -> RuntimeJobV2:
        options = self._v1_options(shots)
        circuits = _as_list(circuits, "circuits")
        observables = _as_list(observables, "observables")
        if len(circuits) != len(observables):
            raise InvalidInputError(f"got {len(circuits)} circuits and {len(observables)} observables; "
                                    "give one observable per circuit")
        pubs = []
        for c, o, p in zip(circuits, observables, _params(parameter_values, len(circuits))):
            pubs.append((c, o) if p is None else (c, o, p))
        coerced = _coerce(pubs, lambda p: EstimatorPub.coerce(p, 0.0), "estimator")
        self._check_circuits((p.circuit for p in coerced), require_isa=options["skip_transpilation"])
        summary = {"api": "v1", "pubs": len(coerced), "shots": options["shots"]}
        return self._submit(codec.encode_estimator_pubs(coerced), options, summary, _estimator_v1)
