"""Run one decoded job on this worker's simulator: the part of a job that is physics.

Kept apart from the Celery task so it can be read (and tested) without any queue. The
worker keeps its simulators and primitives warm (``functools.lru_cache``) and calls the
primitives' synchronous ``_run``: ``run()`` would start a thread per call for nothing.

Two APIs arrive here:
- V2 jobs carry ISA circuits (checked by the client) and run as they are.
- V1 jobs (the guide's ``Sampler``/``Estimator``) carry plain circuits: the worker
  transpiles them at the requested ``optimization_level`` and maps observables onto the
  final layout, as IBM's service did. The V1 estimator also returns each observable's
  variance, and with ``shots`` set its values carry the matching shot noise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from qiskit.primitives import PrimitiveResult, PubResult
from qiskit.primitives.containers import DataBin, EstimatorPub, SamplerPub, SamplerPubResult
from qiskit.primitives.containers.observables_array import ObservablesArray
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2
from qiskit_aer.primitives import SamplerV2 as AerSamplerV2

from session_broker import backends
from session_broker.core.codec import MAX_RESULT_BYTES, DecodedJob, result_bytes

from . import mitigation


@lru_cache(maxsize=64)
def aer_sampler(backend: str, seed: int | None) -> AerSamplerV2:
    return AerSamplerV2.from_backend(backends.simulator(backend), seed=seed)


@lru_cache(maxsize=64)
def aer_estimator(backend: str, seed: int | None) -> AerEstimatorV2:
    run_options = {} if seed is None else {"seed_simulator": seed}
    return AerEstimatorV2.from_backend(backends.simulator(backend), options={"run_options": run_options})


def warm_up(backend: str) -> None:
    """Build the simulator and primitives before the first job, not during it."""
    aer_sampler(backend, None)
    aer_estimator(backend, None)
    backends.build_target(backend)


def execute(backend: str, job: DecodedJob) -> PrimitiveResult:
    """Run ``job``; the result carries IBM's metadata shape (``execution.execution_spans``,
    ``version``) and ours under ``metadata["session_broker"]``."""
    options = job.options
    seed = options.get("seed_simulator")
    pubs = job.pubs
    v1 = options.get("api") == "v1"
    if v1 and not options.get("skip_transpilation"):
        pubs = _transpile(backend, pubs, options)
    started = datetime.now(UTC)
    ours = {"backend": backend, "resilience_level": options.get("resilience_level", 0)}
    no_effect = list(options.get("no_effect", []))
    techniques: dict = {}
    if job.primitive == "sampler":
        if result_bytes(pubs) > MAX_RESULT_BYTES:  # a producer that bypassed the client's check
            raise ValueError(
                f"the job would return {result_bytes(pubs)} bytes of bits; the limit is {MAX_RESULT_BYTES}"
            )
        s = None if v1 else mitigation.settings("sampler", backend, options.get("ibm", {}))
        if s is not None and (s.twirl_gates or s.twirl_measure or (s.dd and s.schedule)):
            results, executed = mitigation.run_sampler(backend, pubs, s, seed)
            result = PrimitiveResult(results)
            techniques, ours["executed"] = s.metadata(), executed.as_dict()
        elif s is not None and backends.get_spec(backend).method == "matrix_product_state":
            # a large device: each circuit by its width (tasks/wide.py), not Kraus on an MPS
            results, executed = mitigation.run_sampler(backend, pubs, s, seed)
            result = PrimitiveResult(
                [
                    SamplerPubResult(r.data, metadata={"circuit_metadata": r.metadata["circuit_metadata"]})
                    for r in results
                ]
            )
            ours["executed"] = executed.as_dict()
        else:
            if s is not None and s.schedule:  # idle qubits decay on a device: delays do here
                pubs = [
                    SamplerPub(
                        mitigation.schedule(p.circuit, backend, None),
                        p.parameter_values,
                        p.shots,
                        validate=False,
                    )
                    for p in pubs
                ]
            result = _ibm_sampler_metadata(aer_sampler(backend, seed)._run(pubs))
    elif v1:
        result = _estimate_v1(backend, seed, pubs, options.get("shots"))
    else:
        # IBM: seed_estimator controls the sampling of estimates; else the simulator's seed
        ibm = options.get("ibm", {})
        est_seed = ibm.get("options", {}).get("seed_estimator", seed)
        s = mitigation.settings("estimator", backend, ibm)
        ours["resilience_level"] = s.level
        result, executed, exact = _estimate_v2(backend, est_seed, pubs, s)
        techniques = s.metadata()
        if executed is not None:
            ours["executed"] = executed.as_dict()
        if exact and (s.any or s.schedule):
            no_effect.append(
                f"precision=0 (PUBs {', '.join(map(str, exact))}): exact expectation "
                "values of the simulated state, no readout and no shots, so "
                "measurement twirling, TREX and ZNE did not run on them"
            )
    stopped = datetime.now(UTC)
    if v1 and options.get("resilience_level"):  # V1 accepts it on ideal backends only
        ours["resilience"] = "ideal simulator: no noise to mitigate; results are exact up to sampling"
    if no_effect:
        ours["no_effect"] = no_effect
    meta = {
        "execution": {"execution_spans": [_span(started, stopped, result, pubs)]},
        **techniques,
        "version": 2,
        "session_broker": ours,
    }
    return PrimitiveResult(list(result), metadata=meta)


def _estimate_v2(backend: str, seed, pubs: list, s) -> tuple:
    """Sampled, with the job's techniques, where there is something to act on (a device, or a
    technique asked for on an ideal backend); Aer's estimator otherwise and for
    ``precision=0`` PUBs. Returns (results in PUB order, what ran, exact PUB indices)."""
    sampled = [i for i, p in enumerate(pubs) if p.precision > 0 and (s.schedule or s.any)]
    exact = [i for i in range(len(pubs)) if i not in sampled]
    out: list = [None] * len(pubs)
    executed = None
    if sampled:
        results, executed = mitigation.run_estimator(backend, [pubs[i] for i in sampled], s, seed)
        for i, r in zip(sampled, results):
            out[i] = r
    if exact:
        estimator = aer_estimator(backend, seed)
        results = _with_ibm_fields(estimator._run([_without_empty_bindings(pubs[i]) for i in exact]))
        for i, r in zip(exact, results):
            out[i] = r
    return PrimitiveResult(out), executed, [i for i in exact if s.any or s.schedule]


def _without_empty_bindings(pub: EstimatorPub) -> EstimatorPub:
    """Aer's estimator fails ("Result for experiment 1 could not be found") on a parameterless
    circuit with shaped empty bindings (``np.zeros((3, 0))``): give it the observables tiled to
    the PUB's shape instead, which is the same PUB (each element still sampled on its own)."""
    if pub.circuit.num_parameters or pub.parameter_values.shape == ():
        return pub
    obs = pub.observables
    which = np.broadcast_to(np.arange(obs.size).reshape(obs.shape), pub.shape)
    flat = obs.reshape(-1)
    tiled = np.empty(pub.shape, dtype=object)
    for index in np.ndindex(pub.shape):
        tiled[index] = flat[int(which[index])]
    return EstimatorPub(pub.circuit, ObservablesArray(tiled), None, pub.precision)


def _span(start: datetime, stop: datetime, result, pubs) -> dict:
    """One IBM ``SliceSpan`` (as JSON; ``codec`` rebuilds the object) covering every PUB."""
    slices = {}
    for i, (pub, pub_result) in enumerate(zip(pubs, result)):
        shape = list(pub_result.data.shape)
        if isinstance(pub, SamplerPub):
            shape.append(int(pub.shots))
        slices[str(i)] = [shape, 0, int(np.prod(shape, dtype=np.int64))]
    return {"start": start.isoformat(), "stop": stop.isoformat(), "data_slices": slices}


def _ibm_sampler_metadata(result: PrimitiveResult) -> PrimitiveResult:
    """Aer's sampler PUB results with IBM's per-PUB metadata: only ``circuit_metadata`` (not
    Aer's ``shots`` and ``simulator_metadata``; the shots are in the BitArrays)."""
    return PrimitiveResult(
        [
            SamplerPubResult(
                pub.data, metadata={"circuit_metadata": pub.metadata.get("circuit_metadata", {})}
            )
            for pub in result
        ],
        metadata=result.metadata,
    )


def _with_ibm_fields(result: PrimitiveResult) -> PrimitiveResult:
    """Aer's estimator result in IBM's shape: ``ensemble_standard_error`` beside ``evs`` and
    ``stds`` (no twirling: one ensemble, the same error), and per-PUB ``shots`` (the shots a
    device would spend for the target precision) and ``circuit_metadata``."""
    out = []
    for pub in result:
        precision = float(pub.metadata.get("target_precision", 0.0))
        data = pub.data
        shots = int(round(1 / precision**2)) if precision > 0 else None
        meta = {
            "shots": shots,
            "target_precision": precision,
            "circuit_metadata": pub.metadata.get("circuit_metadata", {}),
            "resilience": {},
            "num_randomizations": 1,
        }
        out.append(
            PubResult(
                DataBin(
                    evs=data.evs,
                    stds=data.stds,
                    ensemble_standard_error=np.array(data.stds, copy=True),
                    shape=data.shape,
                ),
                metadata=meta,
            )
        )
    return PrimitiveResult(out, metadata=result.metadata)


def _transpile(backend: str, pubs: list, options: dict) -> list:
    pm = backends.pass_manager(
        backend, int(options.get("optimization_level", 1)), **options.get("transpilation", {})
    )
    out = []
    for pub in pubs:
        circuit = pm.run(pub.circuit)
        if isinstance(pub, SamplerPub):
            out.append(SamplerPub(circuit, pub.parameter_values, pub.shots, validate=False))
        else:
            obs = _apply_layout(pub.observables, circuit)
            out.append(EstimatorPub(circuit, obs, pub.parameter_values, pub.precision, validate=True))
    return out


def _apply_layout(observables: ObservablesArray, circuit) -> ObservablesArray:
    if circuit.layout is None:
        return observables
    mapped = np.empty(observables.shape, dtype=object)
    for index in np.ndindex(observables.shape):
        op = SparsePauliOp.from_list(list(observables[index].items()))
        mapped[index] = op.apply_layout(circuit.layout, circuit.num_qubits)
    return ObservablesArray(mapped)


def _square(observables: ObservablesArray) -> ObservablesArray:
    squared = np.empty(observables.shape, dtype=object)
    for index in np.ndindex(observables.shape):
        op = SparsePauliOp.from_list(list(observables[index].items()))
        squared[index] = op.dot(op).simplify()
    return ObservablesArray(squared)


def _estimate_v1(backend: str, seed: int | None, pubs: list, shots: int | None) -> PrimitiveResult:
    """Expectation values with the variance V1 reports; shot noise when ``shots`` is set."""
    estimator = aer_estimator(backend, seed)
    rng = np.random.default_rng(seed)
    results = []
    for pub in pubs:
        exact = estimator._run([pub])[0]
        squared = estimator._run(
            [EstimatorPub(pub.circuit, _square(pub.observables), pub.parameter_values, 0.0)]
        )[0]
        evs = np.real(exact.data.evs)
        variance = np.clip(np.real(squared.data.evs) - evs**2, 0.0, None)
        stds = np.zeros_like(evs)
        if shots:
            stds = np.sqrt(variance / shots)
            evs = evs + rng.normal(0.0, 1.0, evs.shape) * stds
        results.append(
            PubResult(
                DataBin(evs=evs, stds=stds, variances=variance, shape=evs.shape),
                metadata={"shots": shots, "target_precision": 0.0},
            )
        )
    return PrimitiveResult(results, metadata={"version": 2})
