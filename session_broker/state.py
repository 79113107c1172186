"""The session state machine: every transition of a session or job, one function each.

Read this module top to bottom to see how a session lives::

    open ──first job starts──▶ active ──idle for interactive_timeout──▶ inactive
      │                          ▲  │                                      │
      │                          │  └──────── a job is queued, a worker is pinned ◀─┘
      ├─close() with work ───▶ pending_closed ──last job ends──▶ closed
      └─cancel() / max_time / never used ─────────────────────────▶ closed

Each function runs one Lua script by name (``core/lua/<name>.lua``, through
``core.scripts``), so each transition is atomic and one round trip, whoever calls it: a
producer, a worker, the CLI. Timers are Redis keys with an expiry; ``tick`` (run by
workers, by ``status()``, by the CLI) applies the ones that ran out, so no transition
depends on a client process staying alive.

The public status strings (``session.status()`` and ``job.status()``) are defined here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import time
import uuid
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import redis
import redis.client
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from session_broker import keys as K
from session_broker import sentinel
from session_broker.config import Settings, get_settings
from session_broker.core.scripts import Scripts
from session_broker.errors import (
    BackendMismatchError,
    BrokerConnectionError,
    BrokerOutOfMemoryError,
    ConfigurationError,
    JobNotFoundError,
    SessionClosedError,
    SessionNotFoundError,
)

log = logging.getLogger("session_broker")

# internal state -> what session.status() says (the guide's four strings)
SESSION_STATUS = {
    "open": "Pending",
    "active": "In progress, accepting new jobs",
    "inactive": "Pending",
    "pending_closed": "In progress, not accepting new jobs",
    "closed": "Closed",
}
JOB_STATUSES = ("INITIALIZING", "QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED")
FINAL_JOB_STATUSES = frozenset({"DONE", "ERROR", "CANCELLED"})


def iso(ts: str | float | None) -> str | None:
    """Redis server seconds -> '2023-10-09T19:37:42.004Z' (the guide's format), or None."""
    if ts in (None, ""):
        return None
    dt = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def new_id() -> str:
    """Ids like IBM's: 20 lowercase base32-ish characters."""
    return uuid.uuid4().hex[:20]


def redis_client(settings: Settings, *, typed_errors: bool = False) -> redis.Redis:
    """A redis-py client for our own keys: retries through short outages (Redis restarts,
    a Sentinel failover). With ``typed_errors`` (producers: ``QiskitRuntimeService``), every
    command, script and pipeline raises our typed errors (``TypedErrorsRedis``)."""
    client = connect(settings.url, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 40),
                     health_check_interval=10, socket_connect_timeout=5, socket_keepalive=True,
                     redis_class=TypedErrorsRedis if typed_errors else redis.Redis)
    if typed_errors:
        client.broker_url = settings.url
    return client


def connect(url: str, redis_class: type[redis.Redis] = redis.Redis, **kwargs) -> redis.Redis:
    """Every redis-py client we make: ``redis://``, ``rediss://`` (TLS options from the URL)
    or ``sentinel://`` (bound to the current master). ``decode_responses`` unless told."""
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("retry_on_error", [redis.ConnectionError, redis.TimeoutError])
    bare, ssl_kwargs = split_tls_options(url)
    if sentinel.is_sentinel(url):
        return sentinel.client(url, ssl_kwargs, redis_class=redis_class, **kwargs)
    return redis_class.from_url(bare, **kwargs, **ssl_kwargs)


def split_tls_options(url: str) -> tuple[str, dict]:
    """Take ``ssl_*`` query options off a ``rediss://`` URL and return them as kwargs.

    redis-py, kombu and Celery's result backend each read TLS options differently; we parse
    them once here and hand each the form it wants (see ``celery_app.py``).
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    opts = {k: v for k, v in query.items() if k.startswith("ssl_")}
    rest = "&".join(f"{k}={v}" for k, v in query.items() if not k.startswith("ssl_"))
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    if parts.scheme not in ("rediss", "sentinels"):
        return bare, {}
    reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    kwargs: dict[str, Any] = {"ssl_cert_reqs": reqs.get(opts.get("ssl_cert_reqs", "required"), ssl.CERT_REQUIRED)}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in opts:
            kwargs[name] = opts[name]
    return bare, kwargs


def is_out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write for ``maxmemory``: a plain command raises OutOfMemoryError; a
    script whose write was refused raises a ResponseError quoting ``-OOM`` (Redis 6)."""
    return isinstance(exc, redis.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc))


#: What the innermost ``broker_errors`` block is doing, for the typed client's messages.
_DOING: ContextVar[str | None] = ContextVar("session_broker_redis_doing", default=None)


@contextmanager
def broker_errors(settings: Settings, what: str):
    """Redis's own exceptions -> our typed ones, for the calls producers make.

    A producer meets a Redis that is out of memory or gone (after the client's retries) as
    ``BrokerOutOfMemoryError`` / ``BrokerConnectionError``, each saying what failed and what
    to do, never as a bare redis-py exception. A producer's client (``TypedErrorsRedis``)
    maps every call itself; this block only names what the calls inside it do."""
    token = _DOING.set(what)
    try:
        with _typed_errors(settings.url, what):
            yield
    finally:
        _DOING.reset(token)


@contextmanager
def _typed_errors(url: str, what):
    """The mapping itself; ``what`` is a string or, on hot paths, a callable giving it."""
    try:
        yield
    except redis.ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        what = what() if callable(what) else what
        raise BrokerOutOfMemoryError(
            f"Redis at {redact(url)} is out of memory and refused to {what} ({exc}); "
            "nothing was changed: raise Redis's maxmemory or free memory, then retry") from exc
    except redis.BusyLoadingError as exc:
        what = what() if callable(what) else what
        raise BrokerConnectionError(
            f"Redis at {redact(url)} is still loading its data and could not {what}; "
            "retry in a moment") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        what = what() if callable(what) else what
        raise BrokerConnectionError(
            f"lost Redis at {redact(url)} and could not {what} ({exc}); the job records "
            "are in Redis: retry when it is back") from exc


@lru_cache(maxsize=1)
def _script_names() -> dict[str, str]:
    """SHA1 -> name (``close_session``...) of our Lua scripts, for messages."""
    return {hashlib.sha1(text.encode()).hexdigest(): name.lower() for name, text in vars(K).items()
            if name.isupper() and isinstance(text, str) and text.startswith(K.PRELUDE)}


def _doing(args: tuple) -> str:
    """What a failed command was doing: the enclosing ``broker_errors`` block's words, else
    the script's or command's name."""
    what = _DOING.get()
    if what:
        return what
    command = str(args[0]).upper() if args else "a command"
    if command == "EVALSHA" and len(args) > 1:
        name = _script_names().get(str(args[1]))
        if name:
            return f"run its {name} script"
    return f"run {command}"


class TypedErrorsRedis(redis.Redis):
    """The producer's client: every command (scripts included) and every pipeline raises
    ``BrokerOutOfMemoryError`` / ``BrokerConnectionError`` where redis-py raises its own
    out-of-memory and connection errors (after its retries), so no call a producer makes,
    from ``Session.__exit__`` to ``service.jobs()``, can leak a bare redis-py exception.
    Workers keep plain clients: their loops handle redis-py's errors themselves."""

    broker_url = ""

    def execute_command(self, *args, **options):
        with _typed_errors(self.broker_url, lambda: _doing(args)):
            return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None) -> redis.client.Pipeline:
        pipe = _TypedErrorsPipeline(self.connection_pool, self.response_callbacks,
                                    transaction, shard_hint)
        pipe.broker_url = self.broker_url
        return pipe


class _TypedErrorsPipeline(redis.client.Pipeline):
    broker_url = ""

    def immediate_execute_command(self, *args, **options):
        with _typed_errors(self.broker_url, lambda: _doing(args)):
            return super().immediate_execute_command(*args, **options)

    def execute(self, raise_on_error: bool = True):
        stack = list(self.command_stack)   # execute() empties it, even when it fails

        def doing() -> str:
            names = sorted({_doing(c[0]) for c in stack if c[0]})
            return _DOING.get() or " and ".join(names) or "run a pipeline"

        with _typed_errors(self.broker_url, doing):
            return super().execute(raise_on_error)


# Redis settings we read at start, and what each bad value costs (see ``Store.check_server``).
EVICTION_HELP = ("an eviction policy drops our keys when Redis is full: results vanish before "
                 "they are read, sessions disappear, and an evicted timer key reads as an expired "
                 "one (a session closed as max_time hours early). Set maxmemory-policy noeviction "
                 "(Redis then refuses new jobs when full, with BrokerOutOfMemoryError)")


class Replication:
    """How many replicas a write waits for now: ``settings.replicas_wanted``, but never more
    than are connected. Waiting for a replica that is not there would stall every submit and
    result for ``wait_timeout_ms`` (after a failover that left no replica: 40 jobs took 42 to
    78 s). So when a WAIT comes back short, ``INFO replication`` says how many replicas are
    connected; with none, this process is *degraded*: it warns once, counts it in
    ``P:counts`` (``replication_degraded``), writes without waiting, and looks again at most
    once a second, waiting again as soon as a replica is back."""

    RECHECK = 1.0  # s between looks at INFO while degraded

    def __init__(self, client: redis.Redis, settings: Settings):
        self.client, self.settings = client, settings
        self.want = settings.replicas_wanted
        self.connected: int | None = None  # replicas seen connected at the last look (None: not looked)
        self.next_look = 0.0

    def wanted(self) -> int:
        if not self.want:
            return 0
        if self.connected == 0:
            if time.monotonic() < self.next_look:
                return 0
            self.look()
        return min(self.want, self.connected) if self.connected is not None else self.want

    def acked(self, acked: int, want: int) -> None:
        if acked is not None and int(acked) < want:
            self.look()

    def look(self) -> None:
        self.next_look = time.monotonic() + self.RECHECK
        was = self.connected
        try:
            self.connected = int(self.client.info("replication").get("connected_slaves", 0))
        except (redis.RedisError, BrokerConnectionError, BrokerOutOfMemoryError):
            return   # INFO refused (an ACL) or Redis away: keep what we knew
        if self.connected == 0 and was != 0:
            log.warning("no Redis replica is connected: writes no longer wait for one "
                        "(SESSION_BROKER_WAIT_REPLICAS=%d); a failover now can lose the last "
                        "jobs and results; bring a replica back", self.want)
            try:
                prefix = self.settings.key_prefix
                self.client.hincrby(K.Keys(prefix).counts, "replication_degraded", 1)
            except (redis.RedisError, BrokerConnectionError, BrokerOutOfMemoryError):
                pass
        elif self.connected and was == 0:
            log.warning("a Redis replica is connected again: writes wait for it again")


@dataclass
class WorkerTick:
    """What one heartbeat found: the pin (session id or ''), its epoch, the executor (pid)
    that left a pin unserved and must be replaced (or ''), the session it released (or '')."""
    pin: str
    epoch: str
    stalled: str = ""
    released: str = ""


@dataclass
class Submitted:
    job_id: str
    status: str


@dataclass
class Claim:
    """What CLAIM decided (``core/lua/claim.lua``): ``run`` the job (its ``payload``, the
    ``claim`` token that fences FINISH, its ``session`` id or '' and the pin ``epoch``), or
    not, and why (``reason``)."""
    run: bool
    payload: str = ""
    claim: str = ""
    session: str = ""
    epoch: str = ""
    reason: str = ""


@dataclass
class Reconciled:
    """What RECONCILE_WORKER did: jobs requeued, the suspects to pass to the next call,
    fetched messages given back, and the fetch list now (the next call's ``stale_fetch``)."""
    requeued: int
    suspects: dict[str, str]
    given: int
    fetch: list[str]


class Store:
    """Our Redis state for one prefix: the transitions below, and plain reads."""

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None):
        self.settings = settings or get_settings()
        self.keys = K.Keys(self.settings.key_prefix)
        self.redis = client or redis_client(self.settings)
        self.scripts = Scripts(self.redis, self.settings.key_prefix)
        self.replication = Replication(self.redis, self.settings)

    @property
    def p(self) -> str:
        return self.settings.key_prefix

    def ping(self, check: bool = True) -> None:
        """Fail fast and clearly at start (the shared client retries for ~40 s later on).

        With ``check``, also warn (once a process) about Redis settings that can lose jobs.
        With Sentinel, a failover in progress (no master for a few seconds) is waited out."""
        tries = 15 if sentinel.is_sentinel(self.settings.url) else 2
        quick = connect(self.settings.url, socket_connect_timeout=3, socket_timeout=5,
                        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), tries),
                        decode_responses=False)
        try:
            quick.ping()
        except redis.AuthenticationError as exc:
            raise BrokerConnectionError(
                f"Redis at {redact(self.settings.url)} refused the credentials: {exc}. "
                "Check the password in SESSION_BROKER_URL (redis://:PASSWORD@host:port/0)") from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise BrokerConnectionError(
                    f"Redis at {redact(self.settings.url)} needs a password: {exc}. "
                    "Put it in SESSION_BROKER_URL (redis://:PASSWORD@host:port/0)") from exc
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:   # incl. no master
            raise BrokerConnectionError(
                f"cannot reach Redis at {redact(self.settings.url)}: {str(exc).rstrip('.')}. "
                "Start one (session-broker up) or set SESSION_BROKER_URL") from exc
        finally:
            quick.close()
        if check and self.settings.url not in _CHECKED:  # once a process: producers warn, workers refuse
            try:
                self.check_server(strict=False)
            except redis.RedisError as exc:  # the check must never stop a producer
                log.warning("could not check Redis's persistence and eviction settings: %s", exc)

    def server_problems(self) -> tuple[list[str], list[str]]:
        """Read Redis's eviction and persistence settings: (refusals, warnings).

        CONFIG GET may be refused (ACL users without ``+config``, managed Redis that renames
        it): then INFO is read instead, and what neither tells is a warning, not a guess."""
        fatal, warn = [], []
        cfg: dict[str, str] = {}
        try:
            for name in ("maxmemory", "maxmemory-policy", "appendonly", "save"):
                cfg.update(self.redis.config_get(name))
        except redis.ResponseError as exc:  # NOPERM, unknown command (renamed)
            try:
                info = {**self.redis.info("memory"), **self.redis.info("persistence")}
            except redis.ResponseError as exc2:
                warn.append(f"could not read Redis's settings (CONFIG GET: {exc}; INFO: {exc2}): "
                            "make sure maxmemory-policy is noeviction and appendonly is yes")
                return fatal, warn
            cfg = {"maxmemory": str(info.get("maxmemory", "")),
                   "maxmemory-policy": str(info.get("maxmemory_policy", "")),
                   "appendonly": "yes" if str(info.get("aof_enabled", "")) == "1" else "no"}
            warn.append(f"CONFIG GET was refused ({exc}); read INFO instead, which does not show "
                        "RDB snapshot settings")
        policy = cfg.get("maxmemory-policy", "")
        limit = int(cfg.get("maxmemory") or 0)
        if policy and policy != "noeviction":
            if limit > 0:
                fatal.append(f"Redis has maxmemory-policy {policy} with maxmemory {limit}: {EVICTION_HELP}")
            else:
                warn.append(f"Redis has maxmemory-policy {policy} (maxmemory 0, so nothing is evicted "
                            f"yet); should maxmemory be set, {EVICTION_HELP}")
        if cfg.get("appendonly") != "yes":
            if "save" in cfg and not cfg["save"].strip():
                warn.append("Redis persists nothing (appendonly no, save \"\"): a Redis restart "
                            "loses every queued job, result and session. Set appendonly yes "
                            "(appendfsync everysec or always)")
            elif "save" in cfg:
                warn.append(f"Redis persists only RDB snapshots (appendonly no, save {cfg['save']!r}): "
                            "a Redis crash loses what changed since the last snapshot. Set appendonly yes")
        return fatal, warn

    def check_server(self, strict: bool) -> list[str]:
        """Warn loudly about unsafe Redis settings; with ``strict`` (workers) refuse to start
        on an eviction policy that can drop our keys. Returns the warnings."""
        fatal, warn = self.server_problems()
        if fatal and strict:
            raise ConfigurationError(" ; ".join(fatal))
        _CHECKED.add(self.settings.url)
        for text in fatal + warn:
            log.warning("UNSAFE REDIS SETTING: %s", text)
            warnings.warn(f"session-broker: {text}", RuntimeWarning, stacklevel=2)
        return fatal + warn

    # ---------------------------------------------------------------- system settings
    SYSTEM_FIELDS = ("max_time", "interactive_timeout", "open_session_timeout", "result_ttl")

    def publish_config(self) -> None:
        """Workers publish the operator's settings; sessions take their timers from here."""
        self.redis.hset(self.keys.config, mapping={f: getattr(self.settings, f) for f in self.SYSTEM_FIELDS})

    def system_config(self) -> dict[str, int]:
        """The deployment's settings (as published by its workers), else this process's."""
        published = self.redis.hgetall(self.keys.config)
        return {f: int(published.get(f) or getattr(self.settings, f)) for f in self.SYSTEM_FIELDS}

    # ---------------------------------------------------------------- sessions: birth
    def open_session(self, sid: str, backend: str, mode: str, max_time: int) -> None:
        """A new session is ``open``: no worker yet; its open-session timer starts now."""
        s = self.settings
        with broker_errors(s, f"open session {sid}"):
            self.scripts.run("open_session", sid=sid, backend=backend, mode=mode, max_time=max_time,
                             interactive_timeout=s.interactive_timeout,
                             open_session_timeout=s.open_session_timeout, ttl=s.result_ttl)

    # ---------------------------------------------------------------- jobs: submit
    def submit(self, job_id: str, session_id: str | None, backend: str, primitive: str,
               payload: str, message: str, queue: str, summary: dict) -> Submitted:
        """Record a job and queue its message, atomically.

        For a session job this also refuses closing/closed sessions, applies due timers,
        stops the open and idle timers, and puts a worker-less session in its backend's
        line. A later job of a session whose first job was cancelled is recorded as ERROR.
        """
        with broker_errors(self.settings, f"queue job {job_id}"):
            res = self._replicated("submit", {
                "jid": job_id, "sid": session_id or "", "backend": backend, "primitive": primitive,
                "payload": payload, "message": message, "queue": queue,
                "ttl": self.settings.result_ttl, "summary": json.dumps(summary, separators=(",", ":"))})
        if res[0] == "ok":
            return Submitted(job_id, res[1])
        kind, detail = res[1], res[2]
        if kind == "not_found":
            raise SessionNotFoundError(f"session {detail!r} does not exist (or its record expired)")
        if kind == "backend_mismatch":
            raise BackendMismatchError(
                f"this primitive targets backend {backend!r} but its session runs on {detail!r}; "
                "a session has exactly one backend: open a new session for another backend")
        if kind == "closed":
            state, _, reason = detail.partition(":")
            why = f" ({reason.replace('_', ' ')})" if reason else ""
            raise SessionClosedError(
                f"session {session_id} is {SESSION_STATUS[state]!r}{why} and accepts no new jobs; "
                "open a new Session to submit more")
        raise RuntimeError(f"job id collision: {detail}")

    # ---------------------------------------------------------------- jobs: on a worker
    def claim(self, job_id: str, node: str, pid: int, context: str) -> Claim:
        """QUEUED -> RUNNING, only if this worker may run it now (see ``core/lua/claim.lua``).

        Starting a session's first job makes the session ``active``, sets ``started_at``
        and starts the max-time timer; it also fixes the session's device context.
        """
        res = self.scripts.run("claim", jid=job_id, node=node, pid=pid, context=context)
        if res[0] == "run":
            return Claim(True, payload=res[1], claim=res[2], session=res[3], epoch=res[4])
        return Claim(False, reason=res[1])

    def finish(self, job_id: str, claim: str, status: str, result: str = "",
               error_code: str = "", error: str = "", usage: float = 0.0, ack: str = "") -> str:
        """RUNNING -> DONE/ERROR, fenced by the claim token; may close or idle the session.
        ``ack``: the delivery tag of the job's message, acknowledged in the same script."""
        return self._replicated("finish", {
            "jid": job_id, "claim": claim, "status": status, "result": result,
            "error_code": error_code, "error_message": error, "usage": f"{usage:.6f}",
            "tag": ack or ""}, notify=job_id)

    def _replicated(self, script: str, argv: dict, notify: str | None = None):
        """Run ``script``, then Redis ``WAIT`` on the same connection (one pipeline) until the
        wanted replicas hold the write or ``wait_timeout_ms`` passes. With Sentinel, an
        acknowledged submit or result then survives the master's death: the replica that
        Sentinel promotes (the most up to date) has it. ``notify``: a job whose waiters the
        script left asleep (FINISH's quiet flag); NOTIFY wakes them after the WAIT, in the
        same pipeline (Redis runs a connection's commands in order, WAIT blocking it)."""
        want = self.replication.wanted()
        if not want:
            return self.scripts.run(script, **argv, **({"quiet": ""} if notify else {}))
        pipe = self.redis.pipeline(transaction=False)
        self.scripts.run(script, client=pipe, **argv, **({"quiet": "1"} if notify else {}))
        pipe.wait(want, self.settings.wait_timeout_ms)
        if notify:
            self.scripts.run("notify", client=pipe, jid=notify)
        result, acked, *_ = pipe.execute()
        self.replication.acked(acked, want)
        return result

    def job_lost(self, job_id: str, node: str, code: str, message: str) -> str:
        """The process running a job died: queue it again, or end it (poison, time limit)."""
        return self.scripts.run("job_lost", jid=job_id, node=node,
                                max_attempts=self.settings.max_attempts, code=code, message=message)

    def executor_lost(self, node: str, job_id: str | None, code: str, message: str,
                      delivery_tag: str | None) -> str:
        """An executor died running ``job_id`` (or none): settle the job as ``job_lost`` does and
        take its message out of kombu's unacked hash (see ``core/lua/executor_lost.lua``)."""
        return self.scripts.run("executor_lost", node=node, max_attempts=self.settings.max_attempts,
                                jid=job_id or "", code=code, message=message, tag=delivery_tag or "")

    def queue_length(self, backend: str) -> int:
        """Jobs waiting in a backend's shared queue plus sessions waiting for one of its workers."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.queue_keys(self.keys.backend_queue(backend))[:4]:
            pipe.llen(key)
        pipe.llen(self.keys.waiting(backend))
        return sum(pipe.execute())

    def usage_seconds(self) -> float:
        """Seconds every job ever ran on a worker (the execution histogram's sum)."""
        return float(self.redis.hget(self.keys.histogram("execution"), "sum") or 0.0)

    def update_tags(self, job_id: str, tags: list[str]) -> str:
        """Replace a job's tags (``job.update_tags``): 'ok' or 'not_found'."""
        return self.scripts.run("update_tags", jid=job_id, tags=json.dumps(tags))

    def cancel_job(self, job_id: str) -> str:
        """QUEUED -> CANCELLED (its message is taken off the queue). A running job finishes."""
        return self.scripts.run("cancel_job", jid=job_id)

    # ---------------------------------------------------------------- sessions: end
    def close_session(self, sid: str) -> str:
        """-> ``pending_closed`` (jobs drain, nothing new accepted), or ``closed`` if idle.
        Returns once the close would survive a Redis crash (``_lasting``)."""
        return self._lasting(sid, "close_session")

    def cancel_session(self, sid: str) -> str:
        """-> ``closed``: queued jobs become CANCELLED and never run; running ones finish.
        Returns once the cancel would survive a Redis crash (``_lasting``)."""
        return self._lasting(sid, "cancel_session")

    # An acknowledged close must not be lost. A Redis that crashes with ``appendfsync
    # everysec`` restarts from an AOF that is a consistent prefix of history, the last second
    # or so gone. A lost submit or result heals (the producer gets JobNotFoundError, the job
    # runs again), but nobody closes a session twice: the producer's ``with`` block is over,
    # and a lost close left the session active, holding its worker for the interactive
    # timeout, then open until its max time (hours). So a close or cancel returns only once it is safe: written
    # to the replicas (WAIT, as submits and results), or on disk: at once with ``appendfsync
    # always``; otherwise after Redis's fsync window, the session read back and the change
    # made again if a crash took it back meanwhile.
    FSYNC_WINDOW = 2.0  # s: everysec fsyncs once a second; one more for a postponed write
    _fsync_seen: tuple[float, float] | None = None  # (when looked, window)

    def _lasting(self, sid: str, script: str) -> str:
        ended = {"pending_closed": 1, "closed": 2}  # how far a close (1) or a cancel (2) takes it
        state = self._replicated(script, {"sid": sid})
        while state and not self.replication.wanted() and self._fsync_window():
            time.sleep(self._fsync_window())
            now = self.redis.hget(self.keys.session(sid), "state")
            if now is None or ended.get(now, 0) >= ended.get(state, 0):
                return state  # it lasted (or Redis lost the whole session: nothing to end)
            log.warning("Redis lost the end of session %s (it came back %s, not %s: restarted "
                        "from an older AOF); ending it again", sid, now, state)
            state = self._replicated(script, {"sid": sid})
        return state

    def _fsync_window(self) -> float:
        """Seconds in which a write Redis acknowledged can still be lost by a crash: none with
        ``appendfsync always`` (on disk before the reply) or without an AOF (a crash loses
        everything: warned at start); ``FSYNC_WINDOW`` otherwise, and where CONFIG GET is
        refused (ACL users, managed Redis), which tells nothing. Looked up once a minute."""
        now = time.monotonic()
        if self._fsync_seen is None or now - self._fsync_seen[0] > 60:
            try:
                cfg = {**self.redis.config_get("appendonly"), **self.redis.config_get("appendfsync")}
                safe = cfg.get("appendonly") != "yes" or cfg.get("appendfsync") == "always"
            except redis.ResponseError:
                safe = False
            self._fsync_seen = (now, 0.0 if safe else self.FSYNC_WINDOW)
        return self._fsync_seen[1]

    def tick(self, sid: str) -> str:
        """Apply the session's expired timers (max time, interactive, open-session)."""
        return self.scripts.run("tick_session", sid=sid)

    def sweep_deadlines(self, limit: int = 100) -> int:
        """Tick every session whose earliest timer is due. Workers run this continually."""
        return self.scripts.run("sweep_deadlines", limit=limit)

    # ---------------------------------------------------------------- reads
    def session(self, sid: str, *, tick: bool = True) -> dict[str, str]:
        if tick:
            self.tick(sid)
        data = self.redis.hgetall(self.keys.session(sid))
        if not data:
            raise SessionNotFoundError(f"session {sid!r} does not exist (or its record expired)")
        data["active_timeout_left"] = str(self.redis.ttl(self.keys.timer(sid, "max")))
        return data

    def job(self, job_id: str, *fields: str) -> dict[str, str]:
        with broker_errors(self.settings, f"read job {job_id}"):
            if fields:
                values = self.redis.hmget(self.keys.job(job_id), fields)
                return {f: v for f, v in zip(fields, values) if v is not None}
            return self.redis.hgetall(self.keys.job(job_id))

    def session_job_ids(self, sid: str) -> list[str]:
        return self.redis.lrange(self.keys.session_jobs(sid), 0, -1)

    def wait_job(self, job_id: str, timeout: float, *fields: str,
                 latched: list | None = None) -> dict[str, str]:
        """Block until the job ended (or ``timeout``), then read ``fields``: one round trip.

        The latch list holds one token from the moment the job ends; BRPOPLPUSH onto the
        same list waits for it and leaves it in place (TTL kept), so every waiter, now or
        later, wakes at once without taking it from the others.
        """
        key = self.keys.job_done(job_id)
        block = max(timeout, 0.01)
        # redis-py 8 reads with a 5 s socket timeout by default: a block as long as that times
        # out in the client first and is retried on a new connection, again and again (a
        # waiter on a job Redis forgot never returned). Block for less; callers loop anyway.
        limit = self.redis.connection_pool.connection_kwargs.get("socket_timeout") or 5.0
        block = min(block, max(limit - 1.0, limit / 2))
        with broker_errors(self.settings, f"wait for job {job_id}"):
            if not fields:
                self.redis.brpoplpush(key, key, timeout=block)
                return {}
            pipe = self.redis.pipeline(transaction=False)
            pipe.brpoplpush(key, key, timeout=block)
            pipe.hmget(self.keys.job(job_id), fields)
            token, values = pipe.execute()
        if latched is not None:  # the caller asks whether the job's end was announced
            latched.append(token is not None)
        if all(v is None for v in values):
            raise JobNotFoundError(
                f"job {job_id}'s record is gone while it was being waited for: it expired, or "
                f"Redis at {redact(self.settings.url)} lost its data (restarted without "
                "persistence, or evicted keys); the job cannot be recovered: submit it again")
        return {f: v for f, v in zip(fields, values) if v is not None}

    def live_workers(self, backend: str | None = None) -> list[dict[str, str]]:
        nodes = self.redis.hgetall(self.keys.workers)
        pipe = self.redis.pipeline(transaction=False)
        names = [n for n, b in sorted(nodes.items()) if backend is None or b == backend]
        for n in names:
            pipe.hgetall(self.keys.worker(n))
        return [w for w in pipe.execute() if w]

    # ---------------------------------------------------------------- workers
    def worker_tick(self, node: str, backend: str, pid: int, started: float,
                    concurrency: int, device: str, consuming: bool = True,
                    executor: str = "") -> WorkerTick:
        """Heartbeat + pin follow-up + take the next waiting session when free (and
        ``consuming``: a worker still starting its consumer beats but takes no session).

        ``executor`` names the ready executor (its pid): a pin it leaves unserved for
        ``unserved_pin_timeout`` is taken from this node and that executor reported stalled
        (see ``core/lua/worker_tick.lua``)."""
        s = self.settings
        pin, epoch, stalled, released = self.scripts.run(
            "worker_tick", node=node, backend=backend, ttl_ms=int(s.heartbeat_ttl * 1000),
            host=hostname(), pid=pid, started=started, concurrency=concurrency, device=device,
            **{f: getattr(s, f) for f in self.SYSTEM_FIELDS},
            consuming="1" if consuming else "0", executor=executor,
            unserved_after=s.unserved_pin_timeout)
        return WorkerTick(pin, epoch, stalled, released)

    def keep_alive(self, node: str) -> bool:
        """Refresh only the registry entry's expiry. For a Redis that refuses writes (out of
        memory under ``noeviction``): PEXPIRE is still allowed there, and a live worker must
        not be reaped as dead because its heartbeat script was refused."""
        return bool(self.redis.pexpire(self.keys.worker(node), int(self.settings.heartbeat_ttl * 1000)))

    def dead_workers(self) -> list[str]:
        return self.scripts.run("dead_workers")

    def rescue_unacked(self, min_age: float, limit: int = 100) -> tuple[int, int]:
        """Give back jobs whose fetched message was orphaned in kombu's unacked hash.

        Reads ``limit`` entries of the index from where the previous call stopped (a cursor
        in Redis), so repeated calls cover the whole hash. Returns (given back, inspected)."""
        rescued, seen = self.scripts.run("rescue_unacked", min_age=min_age, limit=limit)
        return int(rescued), int(seen)

    def reconcile_worker(self, node: str, suspects: dict[str, str], held: list[str],
                         stale_fetch: list[str]) -> Reconciled:
        """Square a live worker's run set and fetch list with what its process holds.

        ``held``: the job ids of the requests the worker process holds, read before this
        call. ``suspects`` and ``stale_fetch``: what the previous call returned (its
        ``suspects`` and ``fetch``). See ``core/lua/reconcile_worker.lua``."""
        requeued, again, given, fetch = self.scripts.run(
            "reconcile_worker", node=node, max_attempts=self.settings.max_attempts,
            suspects=json.dumps(suspects or {}), held=json.dumps(sorted(held)),
            stale_fetch=json.dumps(list(stale_fetch)))
        return Reconciled(int(requeued), json.loads(again) or {}, int(given),
                          list(json.loads(fetch) or []))

    def reap_worker(self, node: str, keep_pin: bool = False) -> int:
        """Requeue a dead worker's running jobs and give its session to the next worker."""
        return self.scripts.run("reap_worker", node=node, max_attempts=self.settings.max_attempts,
                                keep_pin="1" if keep_pin else "0")


_HOST = socket.gethostname()
_CHECKED: set[str] = set()  # URLs whose settings this process has checked


def hostname() -> str:
    return _HOST


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
