"""IBM's executor-based ``Sampler`` (``qiskit_ibm_runtime.executor_sampler``), on our workers.

IBM's class builds a ``QuantumProgram`` from the PUBs (``prepare``: boxes, twirling with
``samplomatic`` samplexes, dynamical decoupling) and runs it with an ``Executor``; this
subclass keeps all of that and runs it with ``session_broker.Executor``. ``job.result()``
is IBM's ``PrimitiveResult``, decoded by IBM's client-side sampler decoder.
"""

from __future__ import annotations

from qiskit.primitives.base import BaseSamplerV2
from qiskit_ibm_runtime.executor_sampler import sampler as _ibm
from qiskit_ibm_runtime.executor_sampler.prepare import prepare
from qiskit_ibm_runtime.options_models.sampler import SamplerOptions

from session_broker.executor import ExecutorPrimitive
from session_broker.job import RuntimeJobV2

__all__ = ["Sampler", "SamplerOptions"]


class Sampler(ExecutorPrimitive, _ibm.Sampler):
    """IBM's executor-based ``Sampler``; ``mode`` as our other primitives take it."""

    _base = BaseSamplerV2
    _options_class = SamplerOptions
    _semantic_role = "sampler_v2"
    _prepare = staticmethod(prepare)

    def run(self, pubs, *, shots: int | None = None, dry_run: bool = False) -> RuntimeJobV2:  # type: ignore[override]
        return self._run_program(pubs, shots, dry_run)
