"""``qiskit_ibm_runtime.batch``'s name: ``from session_broker.batch import Batch``."""

from session_broker.session import Batch

__all__ = ["Batch"]
