"""Instances: named allocations of one deployment's workers (IBM's instances), inside one
key prefix. Their settings live in Redis (``Keys.instances``: name -> JSON), set by the
operator's ``session-broker instance set``; the Lua transitions read them (``lua/lib/
instances.lua``): usage limits at submit and session open, usage counted at finish, and the
fair-share order of waiting work. This module checks settings and reads usage back.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from session_broker.errors import ConfigurationError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1 to 64 characters: letters, digits, '_', '.' or '-', starting with a letter or digit"
PERIODS = ("day", "week", "month")
PERIOD_RULE = "day, week or month (UTC calendar periods), or a length in seconds such as 3600"
COUNTER = "."  # the change counter's field in Keys.instances (never a valid name)


def validate_name(name: str, what: str = "instance") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigurationError(f"{what} {str(name)[:80]!r} is not a valid instance name: {NAME_RULE}")
    return name


def validate_period(period: str) -> str:
    text = str(period).strip().lower()
    if text in PERIODS:
        return text
    seconds = text[:-1] if text.endswith("s") else text
    if seconds.isdigit() and int(seconds) > 0:
        return seconds
    raise ConfigurationError(f"period {period!r} is not valid: {PERIOD_RULE}")


@dataclass(frozen=True)
class InstanceSettings:
    """One instance's settings. ``share``: its weight in fair share; ``usage_limit``: seconds
    of execution per ``period`` (None = no limit); ``max_sessions``: sessions (not batches)
    open at once; ``max_session_time``: the longest session ``max_time`` (s)."""

    share: float = 1.0
    usage_limit: float | None = None
    period: str = "month"
    max_sessions: int | None = None
    max_session_time: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.share, (int, float)) and 0 < self.share <= 1e6):
            raise ConfigurationError(f"share {self.share!r} is not valid: a number above 0, at most 1000000")
        if self.usage_limit is not None and not (
            isinstance(self.usage_limit, (int, float)) and 0 <= self.usage_limit < 1e12
        ):
            raise ConfigurationError(f"usage limit {self.usage_limit!r} is not valid: seconds, 0 or more")
        object.__setattr__(self, "period", validate_period(self.period))
        for field in ("max_sessions", "max_session_time"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ConfigurationError(
                    f"{field.replace('_', '-')} {value!r} is not valid: a whole number above 0"
                )

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> InstanceSettings:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            **{
                k: raw[k]
                for k in ("share", "usage_limit", "period", "max_sessions", "max_session_time")
                if k in raw
            }
        )


def instance_from(value: str | None) -> str:
    """The instance a producer names: a name, or IBM's CRN of it
    (``crn:v1:bluemix:public:quantum-computing:us-east:a/<account>:<NAME>::``: its 8th field)."""
    text = (value or "").strip()
    if text.startswith("crn:"):
        parts = text.split(":")
        return parts[7] if len(parts) > 7 else ""
    return text


def parse_duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``8h``, ``2d`` (for --max-session-time and limits)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not m:
        raise ConfigurationError(f"{text!r} is not a duration: seconds, or a number with s, m, h or d")
    return int(float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
