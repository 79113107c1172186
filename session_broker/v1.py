"""The sessions guide's V1 calls: ``Sampler(session=...)``, ``run(circuits, parameter_values)``,
``Estimator().run(circuit, observable)``, ``Options(optimization_level=..., ...)``.

They ride the V2 path: the same PUB checks, the same encoder and decoder, the same submit.
What differs is that V1 circuits need not be ISA (the worker transpiles them at
``optimization_level``), shots come from ``Options.execution.shots``, and the result is turned
into ``quasi_dists``/``values`` on the client (``results.v1_transform``).
"""

from __future__ import annotations

import numpy as np
from qiskit.circuit import QuantumCircuit
from qiskit.primitives.containers import EstimatorPub, SamplerPub
from qiskit.quantum_info import SparsePauliOp

from session_broker import options as opts
from session_broker.core import codec
from session_broker.errors import BackendMismatchError, InvalidInputError
from session_broker.inputs import coerce_pubs, positive_int
from session_broker.modes import resolve_mode
from session_broker.results import _estimator_v1, _sampler_v1
from session_broker.session import Session

#: Top-level option names only V1 has: a dict with one of them is V1 options.
V1_ONLY_KEYS = frozenset({"optimization_level", "transpilation"})


def coerce_options(options) -> opts.Options:
    if options is None:
        return opts.Options()
    if isinstance(options, dict):
        return opts.Options(**options)
    if isinstance(options, opts.Options):
        return options
    raise InvalidInputError(f"options must be an Options or a dict, not {type(options).__name__}")


def setup(prim, backend, session, options) -> None:
    """Initialise ``prim`` (a ``Sampler``/``Estimator``) for V1: ``backend=``/``session=``.

    As IBM's V1 primitives, ``session=`` may be a backend (an object or a name): the
    primitive then runs on that backend, outside any session."""
    if session is not None and not isinstance(session, Session):
        if backend is not None:
            raise InvalidInputError(
                "session= is a backend and backend= is given too: pass the backend once "
                "(backend=...) or a Session/Batch as session="
            )
        if not (
            isinstance(session, str) or hasattr(session, "target") or type(session).__name__ == "AerSimulator"
        ):
            raise InvalidInputError(
                f"session must be a Session, Batch or backend, not {type(session).__name__}"
            )
        session, backend = None, session
    if session is not None and not isinstance(session, Session):
        raise InvalidInputError(f"session must be a Session or Batch, not {type(session).__name__}")
    if session is not None and backend is not None:
        name = backend if isinstance(backend, str) else getattr(backend, "name", backend)
        if name != session.backend():
            raise BackendMismatchError(
                f"{type(prim).__name__} targets backend {name!r} but its session runs on "
                f"{session.backend()!r}; a session has exactly one backend"
            )
    prim._service, prim._backend, prim._session = resolve_mode(
        session if session is not None else backend, type(prim).__name__
    )
    prim._options = opts.coerce(prim._kind, None)
    prim._v1_options = coerce_options(options)


def _validated(prim, shots) -> dict:
    options = prim._v1_options.validated(prim._backend)
    shots = positive_int(shots, "shots")
    if shots is not None:
        options["shots"] = shots
    options["max_execution_time"] = prim._check_time(options["max_execution_time"])
    return options


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (QuantumCircuit, str, SparsePauliOp)) or not isinstance(value, (list, tuple)):
        return [value]
    return list(value)


def _params(parameter_values, n: int) -> list:
    if parameter_values is None:
        return [None] * n
    if isinstance(parameter_values, np.ndarray) and parameter_values.ndim == 0:
        raise InvalidInputError("parameter_values must be a sequence of parameter value sets")
    try:
        values = list(parameter_values)
    except TypeError:
        raise InvalidInputError(
            f"parameter_values must be a sequence, not {type(parameter_values).__name__}"
        ) from None
    if n == 1 and values and not isinstance(values[0], (list, tuple, np.ndarray)):
        values = [values]
    if len(values) != n:
        raise InvalidInputError(
            f"got {len(values)} parameter value sets for {n} circuits; give one per circuit"
        )
    return values


def _check_circuits(circuits: list) -> None:
    for i, circuit in enumerate(circuits):
        if not isinstance(circuit, QuantumCircuit):
            raise InvalidInputError(f"circuit {i} must be a QuantumCircuit, not {type(circuit).__name__}")


def run_sampler(prim, circuits=None, parameter_values=None, shots=None, **_kw):
    options = _validated(prim, shots)
    circuits = _as_list(circuits)
    _check_circuits(circuits)
    pubs = [
        (c, p) if p is not None else (c,) for c, p in zip(circuits, _params(parameter_values, len(circuits)))
    ]
    coerced = coerce_pubs(pubs, lambda p: SamplerPub.coerce(p, options["shots"]), "sampler")
    for i, pub in enumerate(coerced):
        if pub.circuit.num_clbits == 0:
            raise InvalidInputError(
                f"circuit {i} has no classical bits to sample; add measurements (circuit.measure_all())"
            )
    prim._check_circuits((p.circuit for p in coerced), require_isa=options["skip_transpilation"])
    codec.check_result_size(coerced)
    summary = {"api": "v1", "pubs": len(coerced), "shots": options["shots"], "tags": options["job_tags"]}
    return prim._submit(codec.encode_sampler_pubs(coerced), options, summary, _sampler_v1)


def run_estimator(prim, circuits=None, observables=None, parameter_values=None, shots=None, **_kw):
    options = _validated(prim, shots)
    circuits, observables = _as_list(circuits), _as_list(observables)
    _check_circuits(circuits)
    if len(circuits) != len(observables):
        raise InvalidInputError(
            f"got {len(circuits)} circuits and {len(observables)} observables; "
            "give one observable per circuit"
        )
    pubs = []
    for c, o, p in zip(circuits, observables, _params(parameter_values, len(circuits))):
        pubs.append((c, o) if p is None else (c, o, p))
    coerced = coerce_pubs(pubs, lambda p: EstimatorPub.coerce(p, 0.0), "estimator")
    prim._check_circuits((p.circuit for p in coerced), require_isa=options["skip_transpilation"])
    summary = {"api": "v1", "pubs": len(coerced), "shots": options["shots"], "tags": options["job_tags"]}
    return prim._submit(codec.encode_estimator_pubs(coerced), options, summary, _estimator_v1)
