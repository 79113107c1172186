"""session-broker: Qiskit Runtime-style sessions on Celery + Redis, with Aer backends.

The public API, re-exported from its modules; change the import line of IBM code from
``qiskit_ibm_runtime`` to ``session_broker`` and it runs here::

    from session_broker import QiskitRuntimeService, Session, Batch, SamplerV2, EstimatorV2
"""

import importlib

from session_broker.errors import (
    BackendMismatchError,
    BrokerConnectionError,
    BrokerOutOfMemoryError,
    CircuitTooWideError,
    ConfigurationError,
    FirstJobCancelledError,
    IBMError,
    IBMInputValueError,
    IBMNotAuthorizedError,
    IBMRuntimeError,
    InvalidInputError,
    InvalidMaxTimeError,
    InvalidPayloadError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    MaxExecutionTimeExceededError,
    NoLiveWorkerWarning,
    NotISAError,
    NotOfferedError,
    OptionNotSupportedError,
    PayloadTooLargeError,
    RuntimeInvalidStateError,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobNotFound,
    RuntimeJobTimeoutError,
    RuntimeProgramNotFound,
    SessionBrokerError,
    SessionClosedError,
    SessionMaxTimeError,
    SessionNotFoundError,
    UnknownBackendError,
    WorkerLostError,
)

# Everything that needs Qiskit is imported on first use (PEP 562): `from session_broker
# import SamplerV2` works as before, while processes that never touch a circuit (the
# worker's supervisor, `session-broker status`) start without Qiskit's second of imports.
# qiskit-ibm-runtime's classes come the same way (about 2 s): the option classes, and
# RuntimeEncoder/RuntimeDecoder (IBM's JSON for results; never decode untrusted input with it).
_LAZY = {
    "BrokerBackend": "session_broker.backends",
    "RuntimeJob": "session_broker.job",
    "RuntimeJobV2": "session_broker.job",
    "Options": "session_broker.options",
    "Estimator": "session_broker.primitives",
    "EstimatorV2": "session_broker.primitives",
    "Sampler": "session_broker.primitives",
    "SamplerV2": "session_broker.primitives",
    "EstimatorResult": "session_broker.results",
    "SamplerResult": "session_broker.results",
    "QiskitRuntimeService": "session_broker.service",
    "Batch": "session_broker.session",
    "Session": "session_broker.session",
    "SamplerOptions": "session_broker.options",
    "EstimatorOptions": "session_broker.options",
    "OptionsV2": "session_broker.options",
    "Executor": "session_broker.executor",
    "ExecutorOptions": "session_broker.executor",
    "QuantumProgram": "session_broker.executor",
    "RuntimeEncoder": "qiskit_ibm_runtime",
    "RuntimeDecoder": "qiskit_ibm_runtime",
}
_SUBMODULES = {
    "batch",
    "exceptions",
    "options",
    "session",
    "fake_provider",
    "noise_learner",
    "circuit",
    "visualization",
    "executor_sampler",
    "executor_estimator",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"session_broker.{name}")
    else:
        raise AttributeError(f"module 'session_broker' has no attribute {name!r}")
    if name not in _SUBMODULES or name not in globals():
        globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


__all__ = sorted([name for name in dir() if not name.startswith("_") and name[0].isupper()] + list(_LAZY))
__version__ = "0.1.0"
