"""Input checks shared by every primitive call (V2 and the guide's V1), before anything is
queued: which service, backend and session a ``mode`` means, numbers as the caller may give
them (numpy integers included), and PUBs coerced and validated by Qiskit's own rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

import numpy as np
from qiskit.circuit import QuantumCircuit

from session_broker.errors import InvalidInputError, InvalidMaxTimeError

__all__ = ["coerce_pubs", "execution_time", "jobs_filters", "non_negative", "positive_int"]


def positive_int(value, name: str) -> int | None:
    """``value`` as an int (numpy integers are ordinary input here) or None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name}={value!r} must be a positive int")
    return int(value)


def execution_time(value, session) -> int | None:
    """``max_execution_time`` checked: a positive int, below the session's ``max_time``."""
    met = positive_int(value, "max_execution_time")
    if met and session is not None and met >= session.max_time:
        raise InvalidMaxTimeError(
            f"max_execution_time={met} s must be less than the session's max_time ({session.max_time} s)"
        )
    return met


def non_negative(value, name: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidInputError(
            f"{name}={value!r} must be a finite number >= 0 (0 asks for the exact expectation value)"
        )
    return float(value)


def coerce_pubs(pubs, coerce, what: str) -> list:
    if (
        isinstance(pubs, (QuantumCircuit, tuple, str, bytes, dict))
        or not isinstance(pubs, Iterable)
        or (isinstance(pubs, np.ndarray) and pubs.ndim == 0)
    ):
        raise InvalidInputError(
            f"run() takes a list of {what} PUBs, e.g. run([circuit]) or "
            f"run([(circuit, ...)]), not {type(pubs).__name__}"
        )
    out = []
    for i, pub in enumerate(pubs):
        try:
            coerced = coerce(pub)
            coerced.validate()
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise InvalidInputError(f"{what} PUB {i} is malformed: {exc}") from None
        if 0 in coerced.shape:  # Qiskit allows it; Aer crashes on it (SIGSEGV with parameters)
            raise InvalidInputError(
                f"{what} PUB {i} has shape {coerced.shape}: no parameter value sets to run (an "
                "axis of length 0); give at least one set of parameter values per PUB"
            )
        for value in coerced.parameter_values.data.values():
            if value.dtype.kind not in "biuf" or not np.all(np.isfinite(value)):
                raise InvalidInputError(
                    f"{what} PUB {i}: parameter values must be finite real "
                    "numbers (found NaN, inf or a non-number)"
                )
        out.append(coerced)
    if not out:
        raise InvalidInputError(f"run() needs at least one {what} PUB")
    return out


def _count(value, name: str, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(
            f"{name}={value!r:.40} must be an int >= 0" + (" or None" if allow_none else "")
        )
    return int(value)


def _epoch(value, name: str) -> float | None:
    """A datetime as epoch seconds; naive ones are local time (as IBM's client reads them)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a datetime, not {type(value).__name__}")
    return value.timestamp()  # naive: local time, by Python's own rule


def jobs_filters(limit, skip, created_after, created_before):
    """``service.jobs()``'s numeric and time filters, checked: (limit, skip, after, before)."""
    return (
        _count(limit, "limit", True),
        _count(skip, "skip", False),
        _epoch(created_after, "created_after"),
        _epoch(created_before, "created_before"),
    )
