"""What a finished job turns into on the client: IBM's V2 result, or the guide's V1 result.

V2 jobs return qiskit's ``PrimitiveResult`` as the worker built it (``codec`` rebuilds IBM's
``ExecutionSpans`` in its metadata). V1 jobs (the guide's ``Sampler``/``Estimator``) run the
same V2 machinery on the worker; ``v1_transform`` turns their result into ``quasi_dists`` or
``values`` plus per-circuit metadata, here on the client, so workers speak one format.
Kept apart from ``primitives`` so that ``job`` (which re-attaches jobs by id) needs nothing
from the primitives that create them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qiskit.primitives import PrimitiveResult
from qiskit.result import QuasiDistribution


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


def _backend(result: PrimitiveResult) -> str | None:
    return (result.metadata.get("session_broker") or {}).get("backend")


def _sampler_v1(result: PrimitiveResult) -> SamplerResult:
    dists, meta = [], []
    for pub in result:
        bits = pub.join_data()
        shots = bits.num_shots * (int(np.prod(bits.shape)) or 1)
        counts = bits.get_int_counts()
        dists.append(QuasiDistribution({k: v / shots for k, v in counts.items()}, shots=shots))
        meta.append({"shots": shots, "backend": _backend(result)})
    return SamplerResult(dists, meta)


def _estimator_v1(result: PrimitiveResult) -> EstimatorResult:
    values, meta = [], []
    for pub in result:
        values.append(float(np.asarray(pub.data.evs).reshape(-1)[0]))
        variance = float(np.asarray(pub.data.variances).reshape(-1)[0])
        meta.append({"variance": variance, "shots": pub.metadata.get("shots"), "backend": _backend(result)})
    return EstimatorResult(np.array(values), meta)


def v1_transform(primitive: str):
    """The client-side conversion of a V1 job's result (by primitive name)."""
    return _sampler_v1 if primitive == "sampler" else _estimator_v1
