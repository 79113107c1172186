"""IBM's executor-based ``Estimator`` (``qiskit_ibm_runtime.executor_estimator``), on our workers.

IBM's class builds a ``QuantumProgram`` from the PUBs (``prepare``: boxes, twirling and
measurement mitigation with ``samplomatic`` samplexes) and runs it with an ``Executor``; this
subclass keeps all of that and runs it with ``session_broker.Executor``. ``job.result()``
is IBM's ``PrimitiveResult``, decoded by IBM's client-side estimator decoder.
"""

from __future__ import annotations

from qiskit.primitives.base import BaseEstimatorV2
from qiskit_ibm_runtime.executor_estimator import estimator as _ibm
from qiskit_ibm_runtime.executor_estimator.prepare import prepare
from qiskit_ibm_runtime.options_models.estimator import EstimatorOptions

from session_broker.executor import ExecutorPrimitive
from session_broker.job import RuntimeJobV2

__all__ = ["Estimator", "EstimatorOptions"]


class Estimator(ExecutorPrimitive, _ibm.Estimator):
    """IBM's executor-based ``Estimator``; ``mode`` as our other primitives take it."""

    _base = BaseEstimatorV2
    _options_class = EstimatorOptions
    _semantic_role = "estimator_v2"
    _prepare = staticmethod(prepare)

    def run(self, pubs, *, precision: float | None = None, dry_run: bool = False) -> RuntimeJobV2:  # type: ignore[override]
        return self._run_program(pubs, precision, dry_run)
