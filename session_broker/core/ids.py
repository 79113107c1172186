"""Ids and times as IBM's API writes them, and this host's name."""

from __future__ import annotations

import re
import socket
import uuid
from datetime import UTC, datetime


def iso(ts: str | float | None) -> str | None:
    """Redis server seconds -> '2023-10-09T19:37:42.004Z' (the guide's format), or None."""
    if ts in (None, ""):
        return None
    dt = datetime.fromtimestamp(float(ts), tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def from_iso(text: str) -> float:
    """The inverse of ``iso``: '2023-10-09T19:37:42.004Z' -> seconds since the epoch."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def new_id() -> str:
    """Ids like IBM's: 20 lowercase base32-ish characters."""
    return uuid.uuid4().hex[:20]


_HOST = socket.gethostname()


def hostname() -> str:
    return _HOST


# The one rule for an id a caller names (job, session): what new_id() makes, and what IBM's
# and older clients' ids look like. Anything else is refused before it reaches a key name.
ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def valid_id(value: object) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None
