"""Redis ACL users for one tenant: ``session-broker acl TENANT``.

The rules are built from ``keys.Keys``, the one definition of every key, queue and channel
name the code uses, so the recipe cannot drift from the code: ``ACCESS`` says, for each
member of ``Keys``, which role may read or write the keys it names, and a unit test fails
when a member is added without a decision. Each name is expanded with ``*`` for its
variable part (``Keys("a").job("*")`` is ``a:j:*``), and patterns that another pattern of
the same access already covers are dropped.

Three users per tenant, least privilege (Redis >= 7.0: read-only patterns are ``%R~``):

- ``TENANT-producer``: submits, cancels, closes; reads the published settings and the worker
  list (read-only) but cannot register a worker, touch kombu's bookkeeping or any channel.
- ``TENANT-worker``: everything of the tenant, including kombu's bookkeeping and Celery's
  remote-control and event channels.
- ``TENANT-web``: Flower and the Jobs page: reads everything of the tenant, and uses the
  event and remote-control channels and reply queues that Flower needs.

Every user loses the commands that see or change what key patterns cannot fence off: the
``@admin`` and ``@dangerous`` categories (``KEYS``, ``CONFIG``, ``FLUSHALL``, ``MONITOR``,
``CLIENT LIST``, ``INFO``...), ``SCAN``, ``RANDOMKEY``, ``DBSIZE``, ``PUBSUB`` (lists every
channel), ``FUNCTION`` (one library namespace for all), ``SCRIPT FLUSH|KILL``, ``CLIENT
TRACKING`` (invalidation messages name other users' keys) and ``MEMORY``. Workers keep
``INFO``: their agent detects a Redis restart by its ``run_id``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import secrets
import stat
from pathlib import Path

from session_broker.core.config import validate_prefix
from session_broker.core.keys import Keys
from session_broker.errors import ConfigurationError

ROLES = ("producer", "worker", "web")
RW, R, NONE = "rw", "r", ""

# Each member of Keys -> (producer, worker, web) access to the keys it names. Members that
# name no key (exchanges, prefixes, helpers) map to None. Why producers write worker keys:
# closing a session gives back its worker's pin (core/lua/lib/pins.lua: release_pin), and node names are
# free-form, so "P:w:*" cannot be split into registry entries, pins and running sets.
ACCESS: dict[str, tuple[str, str, str] | None] = {
    "session": (RW, RW, R),
    "session_jobs": (RW, RW, R),
    "timer": (RW, RW, R),
    "session_producer": (RW, RW, R),  # the producer's "I still run" key (under P:s:*, as the session)
    "session_queue": (RW, RW, R),
    "backend_queue": (RW, RW, R),
    "job": (RW, RW, R),
    "job_done": (RW, RW, R),
    "jobs": (RW, RW, R),
    "sessions": (RW, RW, R),
    "deadlines": (RW, RW, R),
    "waiting": (RW, RW, R),
    "counts": (RW, RW, R),
    "worker": (RW, RW, R),
    "worker_pin": (RW, RW, R),
    "worker_running": (RW, RW, R),
    "worker_fetch": (NONE, RW, R),
    "worker_stalled": (NONE, RW, R),
    "rescue_cursor": (NONE, RW, NONE),
    "workers": (R, RW, R),
    "config": (R, RW, R),
    "epoch": (NONE, RW, R),
    "histogram": (NONE, RW, R),
    "dead": (NONE, RW, R),
    "instances": (R, RW, R),  # set by the operator (session-broker instance set), read by submits
    "instance_usage": (RW, RW, R),  # a submit's feed charges the fair-share usage
    "instance_sessions": (RW, RW, R),  # opening and closing a session
    "held": (RW, RW, R),  # a submit holds a batch job in its instance's line
    "held_instances": (RW, RW, R),
    "monitor": (NONE, R, RW),
    "default_queue": (NONE, RW, R),
    "mailbox_queue": (NONE, RW, NONE),
    "reply_queue": (NONE, RW, RW),
    "event_queue": (NONE, NONE, RW),
    "binding_deadlines": (NONE, RW, RW),
    "unacked": (NONE, RW, NONE),
    "unacked_index": (NONE, RW, NONE),
    "unacked_mutex": (NONE, RW, NONE),
    "result": (NONE, RW, R),
    # not keys
    "prefix": None,
    "control_exchange": None,
    "mailbox_exchange": None,
    "reply_exchange": None,
    "event_exchange": None,
    "result_prefix": None,
    "fanout_prefix": None,
    "channel": None,
    "queue_keys": None,
    "bindings": None,
}
QUEUES = {"session_queue", "backend_queue", "default_queue", "mailbox_queue", "reply_queue", "event_queue"}
COMMANDS = (
    "+@all -@admin -@dangerous -scan -randomkey -dbsize -pubsub -function +fcall +fcall_ro "
    "-script|flush -script|kill -client|tracking -memory"
)


def key_members() -> list[str]:
    """The public members of ``Keys``: each needs a decision in ``ACCESS``."""
    return sorted([n for n in dir(Keys) if not n.startswith("_")] + ["prefix"])


def _names(keys: Keys, member: str) -> list[str]:
    """The key names of one member of ``Keys``, its variable parts as ``*``."""
    attr = getattr(keys, member)
    if callable(attr):
        argc = attr.__code__.co_argcount - 1
        attr = attr(*(["*"] * argc))
    names = [attr]
    if member in QUEUES:  # the list, its priority sub-lists and kombu's routing tables
        exchange = attr if member != "reply_queue" else keys.reply_exchange
        exchange = {"mailbox_queue": keys.mailbox_exchange, "event_queue": keys.event_exchange}.get(
            member, exchange
        )
        names = [attr if attr.endswith("*") else f"{attr}*", *keys.bindings(exchange)]
    return names


def _compact(patterns: list[str]) -> list[str]:
    """Drop duplicates and patterns that another one matches (``a:s:*:jobs`` by ``a:s:*``)."""
    unique = list(dict.fromkeys(patterns))
    return [
        p
        for p in unique
        if not any(q != p and fnmatch.fnmatchcase(p, q) and not fnmatch.fnmatchcase(q, p) for q in unique)
    ]


def key_rules(prefix: str, role: str) -> tuple[list[str], list[str]]:
    """(read-write patterns, read-only patterns) of one role."""
    keys, i = Keys(prefix), ROLES.index(role)
    rw, ro = [], []
    for member, access in ACCESS.items():
        if access and access[i]:
            (rw if access[i] == RW else ro).extend(_names(keys, member))
    rw = _compact(rw)
    ro = [p for p in _compact(ro) if not any(fnmatch.fnmatchcase(p, q) for q in rw)]
    return rw, ro


def channel_rules(prefix: str, role: str, db: int) -> list[str]:
    """Pub/sub channel patterns. PSUBSCRIBE is allowed only for a pattern that appears
    literally in the ACL, hence the exact subscriptions next to the catch-all."""
    keys = Keys(prefix)
    every = keys.channel(db, "*")
    if role == "worker":  # events out, remote control in (kombu subscribes to a pattern)
        return [every, keys.channel(db, keys.mailbox_exchange), keys.result("*")]
    if role == "web":  # events in (routing key "#" becomes "*"), remote control out
        return [every, keys.channel(db, keys.event_exchange, "*")]
    return []


def setuser(prefix: str, role: str, db: int, password: str | None) -> list[str]:
    """The arguments of ``ACL SETUSER`` for one role."""
    rw, ro = key_rules(prefix, role)
    words = [f"{prefix}-{role}", "reset", "resetchannels", "on"]
    if password is not None:
        words.append("#" + hashlib.sha256(password.encode()).hexdigest())
    words += [f"~{p}" for p in rw] + [f"%R~{p}" for p in ro]
    words += [f"&{c}" for c in channel_rules(prefix, role, db)]
    words += COMMANDS.split()
    if role == "worker":
        words.append("+info")
    return words


def read_passwords(path: Path) -> dict[str, str]:
    """``role=password`` lines of a file only its owner may read; missing roles are added
    with a new random password (the file is created, mode 0600, when absent)."""
    found: dict[str, str] = {}
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"{path} can be read by others (mode {stat.filemode(mode)}): chmod 600 {path}"
            )
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.startswith("#"):
                role, sep, pw = line.partition("=")
                if not sep or role.strip() not in ROLES or not pw.strip():
                    raise ConfigurationError(f"{path}:{n}: expected ROLE=PASSWORD, ROLE one of {ROLES}")
                found[role.strip()] = pw.strip()
    missing = [r for r in ROLES if r not in found]
    if missing:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            for role in missing:
                found[role] = secrets.token_hex(24)  # URL-safe: it goes into SESSION_BROKER_URL
                f.write(f"{role}={found[role]}\n")
    return found


def recipe(prefix: str, db: int = 0, passwords: dict[str, str] | None = None) -> list[str]:
    """The lines ``session-broker acl`` prints: comments and one ``ACL SETUSER`` per role."""
    validate_prefix(prefix, "TENANT")  # the same grammar as SESSION_BROKER_KEY_PREFIX
    lines = [
        f"# Redis ACL users of tenant {prefix!r} (SESSION_BROKER_KEY_PREFIX={prefix}, "
        f"database {db}), generated from session_broker/core/keys.py. Redis >= 7.0.",
        "# Run each line with redis-cli as an admin (then ACL SAVE if you use an aclfile).",
    ]
    if passwords is None:
        lines.append(
            "# No --password-file: the users have no password and cannot log in until "
            "you give them one (ACL SETUSER NAME >PASSWORD)."
        )
    for role in ROLES:
        words = setuser(prefix, role, db, (passwords or {}).get(role) if passwords else None)
        who = {"producer": "producers", "worker": "workers", "web": "Flower and the Jobs page"}[role]
        lines.append(
            f"# {who}: SESSION_BROKER_URL=redis://{prefix}-{role}:PASSWORD@HOST:PORT/{db} "
            f"SESSION_BROKER_KEY_PREFIX={prefix}"
        )
        lines.append("ACL SETUSER " + " ".join(words))
    return lines
