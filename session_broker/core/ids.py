"""Ids and times as IBM's API writes them, and this host's name."""

from __future__ import annotations

import socket
import uuid
from datetime import datetime, timezone


def iso(ts: str | float | None) -> str | None:
    """Redis server seconds -> '2023-10-09T19:37:42.004Z' (the guide's format), or None."""
    if ts in (None, ""):
        return None
    dt = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def new_id() -> str:
    """Ids like IBM's: 20 lowercase base32-ish characters."""
    return uuid.uuid4().hex[:20]


_HOST = socket.gethostname()


def hostname() -> str:
    return _HOST
