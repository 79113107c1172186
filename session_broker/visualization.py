"""``qiskit_ibm_runtime.visualization``, re-exported: IBM's plotting helpers
(``draw_execution_spans``, ``draw_circuit_schedule_timing``, ``draw_zne_evs``, ...) work
on the results here, which carry IBM's shapes (execution spans, ZNE metadata)."""

from qiskit_ibm_runtime import visualization as _ibm
from qiskit_ibm_runtime.visualization import *  # noqa: F401,F403

__all__ = [name for name in dir(_ibm) if name.startswith("draw_")]
