"""The primitives a producer calls: IBM's V2 ``SamplerV2``/``EstimatorV2``, and ``Sampler``/
``Estimator``, which are the V2 classes (as in qiskit-ibm-runtime 0.51) that also run the
sessions guide's V1 calls.

Every ``run()`` does the same four things, all before anything is queued, so bad input is a
typed error in the caller's process and never a failed job on a worker: coerce the PUBs with
Qiskit's own ``SamplerPub``/``EstimatorPub`` rules; check the options (``options.plan``) and
the circuits against the backend (width, ISA on devices, finite parameters); encode and
*decode* the job with the worker's own decoder (``codec.check_payload``: one validation,
shared, so client and worker cannot disagree); hand it to the service's one submit path.

V1 or V2, decided from the call (see ``_is_v1_call``): a primitive built with ``session=``,
``backend=`` or a V1 ``Options`` is V1; otherwise ``run(circuit)`` with a bare circuit,
``parameter_values=`` or the estimator's ``run(circuits, observables)`` is V1, and
``run([pub, ...])`` is V2. V1 itself lives in ``v1.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

from qiskit.circuit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2
from qiskit.primitives.containers import EstimatorPub, SamplerPub

from session_broker import backends as catalog
from session_broker import options as opts
from session_broker import v1
from session_broker.core import codec
from session_broker.core.memo import BoundedMemo
from session_broker.errors import InvalidInputError
from session_broker.inputs import coerce_pubs, execution_time, non_negative, positive_int
from session_broker.job import RuntimeJobV2
from session_broker.modes import resolve_mode
from session_broker.session import Session

__all__ = ["Estimator", "EstimatorV2", "Sampler", "SamplerV2"]

#: (backend, base64 QPY) of circuits that passed ``catalog.check_circuit(require_isa=True)``.
_ISA_CHECKED = BoundedMemo()


class _Primitive:
    _kind = ""

    def _setup(self, mode, options):
        self._service, self._backend, self._session = resolve_mode(mode, type(self).__name__)
        self._options = opts.coerce(self._kind, options)
        # the backend object the job was given (its target is what IBM's client checks against)
        self._backend_object = (
            mode
            if isinstance(mode, catalog.BrokerBackend)
            else getattr(self._session, "_backend_object", None)
        )

    @property
    def mode(self):
        return self._session if self._session is not None else self._service.backend(self._backend)

    @property
    def options(self):
        return self._options

    def backend(self):
        return self._service.backend(self._backend)

    @property
    def session(self) -> Session | None:
        return self._session

    def _check_circuits(self, circuits: Iterable[QuantumCircuit], require_isa: bool) -> None:
        for circuit in circuits:
            catalog.check_circuit(self._backend, circuit, require_isa=require_isa)

    def _encode_checked(self, coerced: list, encode, then=None) -> list[dict]:
        """``encode(coerced)`` (the PUBs' wire form), each circuit checked against the backend.

        A circuit whose exact QPY text passed the check on this backend before is not walked
        again (see ``memo``): an iterative producer sends one circuit job after job. Errors
        keep their order: a circuit's own refusal (too wide, not ISA) comes before ``then``'s
        (the sampler's result size) and before the encoder's, as when checks ran first.
        """
        catalog.refuse_dropped_fractional_gates(self._backend_object, [p.circuit for p in coerced])
        try:
            pubs_json = encode(coerced)
        except InvalidInputError:
            self._check_circuits((p.circuit for p in coerced), require_isa=True)
            if then is not None:
                then(coerced)
            raise
        for pub, wire in zip(coerced, pubs_json):
            key = (self._backend, wire["circuit"])
            if _ISA_CHECKED.get(key) is None:
                catalog.check_circuit(self._backend, pub.circuit, require_isa=True)
                _ISA_CHECKED.put(key, True, len(wire["circuit"]))
        if then is not None:
            then(coerced)
        return pubs_json

    def _check_time(self, max_execution_time) -> int | None:
        return execution_time(max_execution_time, self._session)

    def _submit(
        self, pubs_json: list[dict], options: dict, summary: dict, transform=None, inputs: dict | None = None
    ) -> RuntimeJobV2:
        limit = self._service._store.settings.max_payload_bytes
        payload = codec.encode_payload(self._kind, pubs_json, options, max_bytes=limit)
        codec.check_payload(payload, max_bytes=limit)  # the worker's decoder, here and now
        job = self._service._submit(
            primitive=self._kind,
            backend=self._backend,
            session=self._session,
            payload=payload,
            summary=summary,
            max_execution_time=options.get("max_execution_time"),
            transform=transform,
        )
        job._inputs = inputs
        return job

    def _v2_options(self) -> tuple[dict, dict]:
        """(the worker's options, the job's summary) from this primitive's IBM options."""
        plan = opts.plan_memo(self._kind, self._backend, self._options)
        set_options = plan.options["options"]
        met = self._check_time(plan.runtime.get("max_execution_time"))
        tags = plan.runtime.get("job_tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidInputError(f"environment.job_tags={tags!r} must be a list of strings")
        seed = set_options.get("simulator", {}).get("seed_simulator")
        options = {
            "api": "v2",
            "seed_simulator": seed,
            "max_execution_time": met,
            "ibm": plan.options,
            "no_effect": plan.no_effect,
        }
        return options, {"api": "v2", "tags": tags}


def _no_dry_run(dry_run) -> None:
    if dry_run:
        raise InvalidInputError(
            "dry_run=True is not available: IBM's dry run returns random "
            "mock data from its server; here, run the job itself (a simulator)"
        )


# ---------------------------------------------------------------------- V2
class SamplerV2(_Primitive, BaseSamplerV2):
    """IBM's Sampler V2: PUBs are ``circuit`` or ``(circuit, parameter_values[, shots])``;
    ``options`` are IBM's ``SamplerOptions`` (a dict or the object)."""

    _kind = "sampler"

    def __init__(self, mode=None, options=None):
        self._setup(mode, options)

    def run(self, pubs, *, shots: int | None = None, dry_run: bool = False) -> RuntimeJobV2:
        _no_dry_run(dry_run)
        shots = positive_int(shots, "shots")
        options, summary = self._v2_options()
        set_options = options["ibm"]["options"]
        default = shots or opts.sampler_default_shots(set_options)  # IBM's precedence rules
        coerced = coerce_pubs(pubs, lambda p: SamplerPub.coerce(p, default), "sampler")
        opts.check_sampler_randomizations(set_options, coerced)
        for i, pub in enumerate(coerced):
            if pub.circuit.num_clbits == 0:  # as Qiskit, Aer and IBM: a warning, empty data
                warnings.warn(
                    f"sampler PUB {i}: the circuit has no classical bits, so its "
                    "result holds no measurement data",
                    UserWarning,
                    stacklevel=2,
                )
        pubs_json = self._encode_checked(coerced, codec.encode_sampler_pubs, then=codec.check_result_size)
        summary.update(pubs=len(coerced), shots=int(max(p.shots for p in coerced)))
        return self._submit(pubs_json, options, summary, inputs={"pubs": coerced, **options["ibm"]})


class EstimatorV2(_Primitive, BaseEstimatorV2):
    """IBM's Estimator V2: PUBs are ``(circuit, observables[, parameter_values[, precision]])``;
    ``options`` are IBM's ``EstimatorOptions``. Precision 0 asks for exact expectation values
    (IBM refuses 0; a simulator can do it)."""

    _kind = "estimator"

    def __init__(self, mode=None, options=None):
        self._setup(mode, options)

    def run(self, pubs, *, precision: float | None = None, dry_run: bool = False) -> RuntimeJobV2:
        _no_dry_run(dry_run)
        precision = non_negative(precision, "precision")
        options, summary = self._v2_options()
        set_options = options["ibm"]["options"]
        if precision is None:  # IBM: default_shots, when set, overrides default_precision
            shots = set_options.get("default_shots")
            precision = (
                1 / math.sqrt(shots)
                if shots
                else set_options.get("default_precision", opts.DEFAULT_PRECISION)
            )
        coerced = coerce_pubs(pubs, lambda p: EstimatorPub.coerce(p, precision), "estimator")
        pubs_json = self._encode_checked(coerced, codec.encode_estimator_pubs)
        summary.update(pubs=len(coerced), shots=None)
        return self._submit(pubs_json, options, summary, inputs={"pubs": coerced, **options["ibm"]})


# ---------------------------------------------------------------------- V1 or V2
def _is_v1_call(args: tuple, kwargs: dict, positional_v1: int) -> bool:
    """The guide's V1 calls: a bare circuit, ``parameter_values=``, ``observables=``, or (the
    estimator) circuits and observables as two positional arguments."""
    return (
        (bool(args) and isinstance(args[0], QuantumCircuit))
        or len(args) >= positional_v1
        or "parameter_values" in kwargs
        or "observables" in kwargs
        or "circuits" in kwargs
    )


class _Dual:
    """Shared by ``Sampler`` and ``Estimator``: V2 classes that also run V1 calls."""

    def __init__(self, mode=None, options=None, *, backend=None, session=None):
        v1_options = isinstance(options, opts.Options) or (
            isinstance(options, dict) and bool(v1.V1_ONLY_KEYS & set(options))
        )
        self._v1 = session is not None or backend is not None or v1_options
        if self._v1:
            v1.setup(self, mode if backend is None else backend, session, options)
        else:
            super().__init__(mode, options)  # type: ignore[call-arg]
            self._v1_options = opts.Options()

    @property
    def options(self):
        return self._v1_options if self._v1 else self._options

    @options.setter
    def options(self, value):
        if not self._v1:
            raise AttributeError(
                "options of a V2 primitive are set field by field "
                "(primitive.options.default_shots = ...) or with update()"
            )
        self._v1_options = v1.coerce_options(value)

    def set_options(self, **fields) -> None:
        """IBM's V1 ``set_options``: ``set_options(shots=4000)`` sets ``execution.shots``
        (a field by its own name, a group as a dict, or a top-level option). V2 primitives
        set options with ``primitive.options.update(...)``, as IBM's."""
        if not self._v1:
            self._options.update(**fields)
            return
        self._v1_options.update(**fields)


class Sampler(_Dual, SamplerV2):
    """``SamplerV2`` (as in qiskit-ibm-runtime 0.51) that also runs the guide's V1 calls:
    ``run(circuits, parameter_values=None)`` returns ``quasi_dists``."""

    def run(self, *args, **kwargs):
        if self._v1 or _is_v1_call(args, kwargs, 2):
            return v1.run_sampler(self, *args, **kwargs)
        return SamplerV2.run(self, *args, **kwargs)


class Estimator(_Dual, EstimatorV2):
    """``EstimatorV2`` (as in qiskit-ibm-runtime 0.51) that also runs the guide's V1 calls:
    ``run(circuits, observables, parameter_values=None)`` returns ``values``."""

    def run(self, *args, **kwargs):
        if self._v1 or _is_v1_call(args, kwargs, 2):
            return v1.run_estimator(self, *args, **kwargs)
        return EstimatorV2.run(self, *args, **kwargs)
