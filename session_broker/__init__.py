"""session-broker: Qiskit Runtime-style sessions on Celery + Redis, with Aer backends.

The public API, re-exported from its modules; change the import line of IBM code from
``qiskit_ibm_runtime`` to ``session_broker`` and it runs here::

    from session_broker import QiskitRuntimeService, Session, Batch, SamplerV2, EstimatorV2
"""

from session_broker.backends import BrokerBackend
from session_broker.errors import (
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
from session_broker.primitives import (
    Estimator,
    EstimatorOptions,
    EstimatorResult,
    EstimatorV2,
    Options,
    Sampler,
    SamplerOptions,
    SamplerResult,
    SamplerV2,
)
from session_broker.service import QiskitRuntimeService
from session_broker.session import Batch, Session

__all__ = [name for name in dir() if not name.startswith("_") and name[0].isupper()]
__version__ = "0.1.0"
