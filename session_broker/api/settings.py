"""The REST front's own settings (``SESSION_BROKER_API_*``), read once from the environment.

They live here, not in ``config.Settings``, because only the HTTP process needs them and
they hold secrets that workers must never see.

* ``SESSION_BROKER_API_KEYS``: comma-separated accepted API keys. Each is a key as the user
  types it, or ``sha256:<64 hex>`` (its digest, so the server's environment need not hold
  the key itself). Either may end in ``@PREFIX``: that key's jobs and sessions then live
  under the Redis key prefix (tenant) PREFIX instead of the server's own. PREFIX follows
  the rule of ``SESSION_BROKER_KEY_PREFIX`` (``config.KEY_PREFIX``), checked at start.
  Either may end in ``#INSTANCE`` (after any ``@PREFIX``): that key's jobs and sessions
  count against that instance, whatever instance its client names.
* ``SESSION_BROKER_API_INSTANCE``: the instance CRN the server answers for.
* ``SESSION_BROKER_API_SECRET``: the HS256 secret tokens are signed with; when unset, one
  is generated once and kept in Redis, so restarts and replicas accept each other's tokens.
* ``SESSION_BROKER_API_TOKEN_TTL``: token life in seconds (default 3600).
* The resource limits in ``LIMITS`` (``SESSION_BROKER_API_MAX_TAGS`` ...): what one request,
  one connection and all connections together may hold of the server (see ``limits.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from session_broker.core.config import validate_prefix
from session_broker.core.instances import NAME_RULE, validate_name
from session_broker.errors import ConfigurationError

DEFAULT_INSTANCE = "crn:v1:bluemix:public:quantum-computing:us-east:a/session-broker:local::"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> str:
    """The hex SHA-256 of an API key: what we compare and what we log (a prefix of it)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    sha256: str  # hex digest of the key
    prefix: str | None  # tenant: the Redis key prefix, None = the server's
    instance: str | None = None  # the one instance the key may use (None: the one its client names)


@dataclass(frozen=True)
class ApiSettings:
    keys: tuple[ApiKey, ...] = ()
    instance: str = DEFAULT_INSTANCE
    secret: str = ""
    token_ttl: int = 3600
    max_body_bytes: int = 64 * 1024 * 1024  # POST /jobs: 2 x SESSION_BROKER_MAX_PAYLOAD_BYTES
    max_request_bytes: int = 64 * 1024  # every other request's body
    max_tags: int = 8  # IBM's API: at most 8 tags a job ...
    max_tag_length: int = 86  # ... of at most 86 characters each
    header_timeout: float = 10.0  # a request's line and headers arrive within this (s)
    read_timeout: float = 30.0  # ... and its body within this after them (s)
    keep_alive: int = 5  # an idle connection is closed after this (s)
    max_connections: int = 1000  # open connections + running requests (uvicorn: 503)


# field -> (environment variable, lowest, highest, what it is): each checked at start
LIMITS = {
    "max_request_bytes": (
        "SESSION_BROKER_API_MAX_REQUEST_BYTES",
        1024,
        1 << 30,
        "bytes of a request body other than a job submission",
    ),
    "max_tags": ("SESSION_BROKER_API_MAX_TAGS", 0, 1000, "tags a job may have"),
    "max_tag_length": ("SESSION_BROKER_API_MAX_TAG_LENGTH", 1, 4096, "characters of one tag"),
    "header_timeout": (
        "SESSION_BROKER_API_HEADER_TIMEOUT",
        0.1,
        3600,
        "seconds a request line and its headers may take to arrive",
    ),
    "read_timeout": (
        "SESSION_BROKER_API_READ_TIMEOUT",
        0.1,
        3600,
        "seconds a request body may take to arrive",
    ),
    "keep_alive": (
        "SESSION_BROKER_API_KEEP_ALIVE",
        1,
        3600,
        "seconds an idle keep-alive connection stays open",
    ),
    "max_connections": (
        "SESSION_BROKER_API_MAX_CONNECTIONS",
        1,
        1_000_000,
        "open connections and running requests before new requests get 503",
    ),
}


def _limit(env, field: str):
    name, low, high, what = LIMITS[field]
    raw = (env.get(name) or "").strip()
    default = getattr(ApiSettings, field)
    if not raw:
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or not low <= value <= high:
        number = "a whole number" if kind is int else "a number"
        raise ConfigurationError(
            f"{name}={raw!r} is not valid: {number} from {low} to {high} ({what}; default {default})"
        )
    return value


def parse_keys(raw: str) -> tuple[ApiKey, ...]:
    """``k1,sha256:HEX,k2@tenant`` -> ApiKeys. Errors never echo a key."""
    out = []
    for n, item in enumerate(p.strip() for p in raw.split(",")):
        if not item:
            continue
        key, prefix, instance = item, None, None
        if "#" in item:
            # KEY#INSTANCE or KEY@PREFIX#INSTANCE: the key's jobs count against that instance
            item, _, instance = item.rpartition("#")
            key = item
            try:
                validate_name(instance)
            except ConfigurationError:
                raise ConfigurationError(
                    f"SESSION_BROKER_API_KEYS entry {n + 1}: the instance after '#' is not valid: {NAME_RULE}"
                ) from None
        if "@" in item:
            key, _, prefix = item.rpartition("@")
            # the same rule as SESSION_BROKER_KEY_PREFIX: "a.session" would be served tenant
            # a's session queues (and "A" a prefix no worker can have)
            validate_prefix(prefix, f"SESSION_BROKER_API_KEYS (entry {n + 1}, the tenant after '@')")
        if key.startswith("sha256:"):
            hexdigest = key[7:].lower()
            if not _HEX.match(hexdigest):
                raise ConfigurationError(
                    f"SESSION_BROKER_API_KEYS entry {n + 1}: 'sha256:' must be followed by 64 hex digits"
                )
        else:
            if len(key) < 8:
                raise ConfigurationError(
                    f"SESSION_BROKER_API_KEYS entry {n + 1}: an API key needs at least 8 characters"
                )
            hexdigest = digest(key)
        out.append(ApiKey(hexdigest, prefix, instance))
    return tuple(out)


def load_api_settings(environ=None, max_payload_bytes: int = 16 * 1024 * 1024) -> ApiSettings:
    env = os.environ if environ is None else environ
    instance = (env.get("SESSION_BROKER_API_INSTANCE") or "").strip() or DEFAULT_INSTANCE
    if not instance.startswith("crn:"):
        raise ConfigurationError("SESSION_BROKER_API_INSTANCE must be a CRN (crn:v1:...)")
    ttl_raw = (env.get("SESSION_BROKER_API_TOKEN_TTL") or "3600").strip()
    if not ttl_raw.isdigit() or not 60 <= int(ttl_raw) <= 86400:
        raise ConfigurationError("SESSION_BROKER_API_TOKEN_TTL must be seconds from 60 to 86400")
    secret = env.get("SESSION_BROKER_API_SECRET") or ""
    if secret and len(secret) < 32:
        raise ConfigurationError("SESSION_BROKER_API_SECRET needs at least 32 characters")
    # the client's params are base64 of zlib data inside JSON: allow some headroom over the
    # encoded job limit the Python API enforces (the primitives check it again exactly)
    return ApiSettings(
        keys=parse_keys(env.get("SESSION_BROKER_API_KEYS") or ""),
        instance=instance,
        secret=secret,
        token_ttl=int(ttl_raw),
        max_body_bytes=2 * max_payload_bytes,
        **{field: _limit(env, field) for field in LIMITS},
    )
