"""``qiskit_ibm_runtime.exceptions``'s names, for code that imports them from there."""

from session_broker.errors import *  # noqa: F401,F403
from session_broker.errors import (  # noqa: F401  (the aliases are not in errors' star export)
    IBMBackendError,
    IBMBackendValueError,
    IBMError,
    IBMInputValueError,
    IBMNotAuthorizedError,
    IBMRuntimeError,
    JobError,
    RuntimeInvalidStateError,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobNotFound,
    RuntimeJobTimeoutError,
    RuntimeProgramNotFound,
)
