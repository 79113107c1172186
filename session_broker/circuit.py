"""``qiskit_ibm_runtime.circuit``, re-exported: IBM's vendor-specific instructions
(``MidCircuitMeasure``, ``MeasureReset``, ``MidCircuitReset``, ``XSlowGate``), so IBM code
that imports them from here gets IBM's own classes. A circuit that uses one runs where the
backend's target has it (``backend.target.operation_names``); elsewhere it is refused
before it is queued, as IBM's client refuses a non-ISA circuit.
"""

from qiskit_ibm_runtime import circuit as _ibm
from qiskit_ibm_runtime.circuit import *  # noqa: F401,F403

__all__ = [name for name in dir(_ibm) if not name.startswith("_") and name[0].isupper()]
