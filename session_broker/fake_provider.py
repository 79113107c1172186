"""``qiskit_ibm_runtime.fake_provider``, re-exported: IBM's local testing mode passes these
backend objects as ``mode=``; here each one whose snapshot the catalog simulates maps to
that device backend (``backends.name_of``), and its jobs run on our workers.
"""

from qiskit_ibm_runtime import fake_provider as _ibm
from qiskit_ibm_runtime.fake_provider import *  # noqa: F401,F403

__all__ = [name for name in dir(_ibm) if name.startswith("Fake")]
