"""One error shape for every REST answer, and the map from our typed errors to statuses.

IBM documents ``{"errors": [{code, message, more_info}], "trace"}``; the stock client reads
``body["error"]["message"]`` / ``["code"]`` in places. We send both, so whichever a client
reads it finds the message that says what was wrong and what is allowed.
"""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse

from session_broker import errors as E

DOCS = "https://github.com/session-broker/session-broker#using-ibms-own-client-rest-api"


class ApiError(Exception):
    """Raised by routes: becomes ``status`` with the two error shapes above."""

    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    trace = uuid.uuid4().hex[:16]
    body = {
        "errors": [{"code": code, "message": message, "more_info": DOCS}],
        "trace": trace,
        "error": {"code": code, "message": message},
        "status_code": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def from_broker_error(exc: E.SessionBrokerError) -> ApiError:
    """Our typed errors (raised before anything is queued) as a 4xx."""
    if isinstance(exc, (E.SessionNotFoundError, E.JobNotFoundError)):
        return ApiError(404, str(exc), "not_found")
    if isinstance(exc, E.SessionClosedError):
        return ApiError(409, str(exc), "session_closed")
    if isinstance(exc, E.PayloadTooLargeError):
        return ApiError(413, str(exc), "payload_too_large")
    if isinstance(exc, E.OptionNotSupportedError):
        return ApiError(400, str(exc), "option_not_supported")
    if isinstance(exc, E.UsageLimitReachedError):
        # IBM's client warns first (its usage check: usage_limit_reached, none remaining), then
        # raises IBMRuntimeError("Failed to run program: ...") with this message
        return ApiError(403, str(exc), "usage_limit_reached")
    if isinstance(exc, E.InstanceLimitError):
        return ApiError(403, str(exc), "instance_limit")
    if isinstance(exc, E.UnknownInstanceError):
        return ApiError(403, str(exc), "instance_not_found")
    if isinstance(exc, E.BrokerConnectionError):
        return ApiError(503, str(exc), "redis_unavailable")
    return ApiError(400, str(exc), type(exc).__name__)
