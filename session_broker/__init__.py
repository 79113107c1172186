"""session-broker: Qiskit Runtime-style sessions on Celery + Redis, with Aer backends.

The public API, re-exported from its modules; change the import line of IBM code from
``qiskit_ibm_runtime`` to ``session_broker`` and it runs here::

    from session_broker import QiskitRuntimeService, Session, Batch, SamplerV2, EstimatorV2
"""

from session_broker.backends import BrokerBackend
from session_broker.errors import (
    IBMError,
    IBMInputValueError,
    IBMNotAuthorizedError,
    IBMRuntimeError,
    JobError,
    RuntimeProgramNotFound,
    BackendMismatchError,
    BrokerConnectionError,
    BrokerOutOfMemoryError,
    CircuitTooWideError,
    ConfigurationError,
    FirstJobCancelledError,
    InvalidInputError,
    InvalidMaxTimeError,
    InvalidPayloadError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    MaxExecutionTimeExceededError,
    NotISAError,
    OptionNotSupportedError,
    PayloadTooLargeError,
    RuntimeInvalidStateError,
    RuntimeJobFailureError,
    RuntimeJobMaxTimeoutError,
    RuntimeJobNotFound,
    RuntimeJobTimeoutError,
    SessionBrokerError,
    SessionClosedError,
    SessionMaxTimeError,
    SessionNotFoundError,
    UnknownBackendError,
    WorkerLostError,
)
from session_broker.job import RuntimeJob, RuntimeJobV2
from session_broker.options import Options
from session_broker.primitives import Estimator, EstimatorV2, Sampler, SamplerV2
from session_broker.results import EstimatorResult, SamplerResult
from session_broker.service import QiskitRuntimeService
from session_broker.session import Batch, Session
from session_broker import batch, exceptions, options, session  # noqa: F401

# qiskit-ibm-runtime's classes, imported on first use (about 2 s): the option classes, and
# RuntimeEncoder/RuntimeDecoder (IBM's JSON for results; never decode untrusted input with it).
_LAZY = {"SamplerOptions": "session_broker.options", "EstimatorOptions": "session_broker.options",
         "OptionsV2": "session_broker.options", "RuntimeEncoder": "qiskit_ibm_runtime",
         "RuntimeDecoder": "qiskit_ibm_runtime", "fake_provider": "session_broker.fake_provider"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if name == "fake_provider" else getattr(module, name)
    raise AttributeError(f"module 'session_broker' has no attribute {name!r}")


__all__ = sorted([name for name in dir() if not name.startswith("_") and name[0].isupper()]
                 + [n for n in _LAZY if n[0].isupper()])
__version__ = "0.1.0"
