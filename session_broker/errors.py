"""Every exception a user of session-broker can meet, in one place.

Each class says *what* went wrong; each message says what was wrong and what is allowed.
Bad input is refused on the client, before anything is queued; a job that fails on a
worker is recorded with an error *code* (``JobErrorCode``) and the worker's message, and
``error_for_code`` turns that record back into the matching class on any client.

Names from qiskit-ibm-runtime are kept as aliases (``RuntimeJobFailureError`` ...) so code
written for IBM's package catches the same things here.
"""

from __future__ import annotations


class SessionBrokerError(Exception):
    """Base class of every error raised by session-broker."""


# --- configuration and connection --------------------------------------------------------


class ConfigurationError(SessionBrokerError, ValueError):
    """A setting (environment variable or argument) has a value that is not allowed."""


class BrokerConnectionError(SessionBrokerError, ConnectionError):
    """Redis cannot be reached, or refused our credentials."""


class BrokerOutOfMemoryError(BrokerConnectionError):
    """Redis refused a write: it reached ``maxmemory`` (with ``noeviction``, as it must be)."""


# --- input refused before anything is queued ---------------------------------------------


class InvalidInputError(SessionBrokerError, ValueError):
    """A PUB, circuit, observable, parameter array or option is malformed."""


class CircuitTooWideError(InvalidInputError):
    """A circuit uses more qubits than the backend has."""


class NotISAError(InvalidInputError):
    """A V2 job for a device backend holds a circuit that is not in its instruction set."""


class PayloadTooLargeError(InvalidInputError):
    """The encoded job is larger than the configured limit."""


class OptionNotSupportedError(InvalidInputError):
    """An option has a value this backend cannot honour."""


class InvalidMaxTimeError(SessionBrokerError, ValueError):
    """``max_time`` is not a positive int of seconds or a ``"2h 30m 40s"`` string in bounds."""


class UnknownBackendError(SessionBrokerError, ValueError):
    """The backend name is not in the catalog."""


class BackendMismatchError(SessionBrokerError, ValueError):
    """A primitive's backend differs from the backend of its session."""


# --- sessions ------------------------------------------------------------------------------


class SessionNotFoundError(SessionBrokerError, LookupError):
    """No session with that id exists (or its summary has expired)."""


class SessionClosedError(SessionBrokerError):
    """The session is closing or closed and accepts no new job."""


# --- jobs ----------------------------------------------------------------------------------


class JobNotFoundError(SessionBrokerError, LookupError):
    """No job with that id exists (or its record has expired)."""


class JobTimeoutError(SessionBrokerError, TimeoutError):
    """``job.result(timeout=...)`` waited longer than asked."""


class JobFailedError(SessionBrokerError):
    """The job ended in ``ERROR``; the message is the worker's."""

    code = "failed"

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id


class JobCancelledError(JobFailedError):
    """The job was cancelled (by ``job.cancel()`` or ``session.cancel()``) and never ran."""

    code = "cancelled"


class FirstJobCancelledError(JobFailedError):
    """The session's first job was cancelled, so every later job of the session fails."""

    code = "first_job_cancelled"


class MaxExecutionTimeExceededError(JobFailedError):
    """The job ran longer than its ``max_execution_time`` and was stopped."""

    code = "max_execution_time"


class SessionMaxTimeError(JobFailedError):
    """The job was still queued when its session reached ``max_time``."""

    code = "session_max_time"


class WorkerLostError(JobFailedError):
    """The job killed the worker process running it too many times (a poison job)."""

    code = "worker_lost"


class InvalidPayloadError(JobFailedError):
    """The worker could not decode the job (a message not written by our client)."""

    code = "invalid_payload"


_BY_CODE = {
    cls.code: cls
    for cls in (
        JobFailedError,
        JobCancelledError,
        FirstJobCancelledError,
        MaxExecutionTimeExceededError,
        SessionMaxTimeError,
        WorkerLostError,
        InvalidPayloadError,
    )
}


def error_for_code(code: str | None, message: str, job_id: str | None = None) -> JobFailedError:
    """Rebuild the typed error of a failed job from the code and message in its record."""
    return _BY_CODE.get(code or "failed", JobFailedError)(message, job_id)


# qiskit-ibm-runtime's names for the same things, so ``except RuntimeJobFailureError`` works.
RuntimeJobFailureError = JobFailedError
RuntimeJobTimeoutError = JobTimeoutError
RuntimeJobMaxTimeoutError = MaxExecutionTimeExceededError
RuntimeJobNotFound = JobNotFoundError
RuntimeInvalidStateError = SessionClosedError
IBMInputValueError = InvalidInputError
IBMError = SessionBrokerError
IBMRuntimeError = SessionBrokerError
IBMNotAuthorizedError = BrokerConnectionError
IBMBackendValueError = UnknownBackendError
IBMBackendError = UnknownBackendError
RuntimeProgramNotFound = InvalidInputError
JobError = JobFailedError
