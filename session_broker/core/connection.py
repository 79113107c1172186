"""Redis connections: clients for plain, TLS and Sentinel URLs, the producer's typed errors,
and how many replicas a write waits for (``Replication``)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.client
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from session_broker.core import keys as K
from session_broker.core import scripts, sentinel
from session_broker.core.config import Settings
from session_broker.core.urls import split_tls_options
from session_broker.errors import BrokerConnectionError, BrokerOutOfMemoryError

log = logging.getLogger("session_broker")


def redis_client(settings: Settings, *, typed_errors: bool = False, **kwargs: Any) -> redis.Redis:
    """A redis-py client for our own keys: retries through short outages (Redis restarts,
    a Sentinel failover). With ``typed_errors`` (producers: ``QiskitRuntimeService``), every
    command, script and pipeline raises our typed errors (``TypedErrorsRedis``). ``kwargs``:
    more connection options (``decode_responses=False``, ``client_name``)."""
    client = connect(
        settings.url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 40),
        health_check_interval=10,
        socket_connect_timeout=5,
        socket_keepalive=True,
        redis_class=TypedErrorsRedis if typed_errors else redis.Redis,
        **kwargs,
    )
    if isinstance(client, TypedErrorsRedis):  # typed_errors
        client.broker_url = settings.url
    return client


def connect(url: str, redis_class: type[redis.Redis] = redis.Redis, **kwargs: Any) -> redis.Redis:
    """Every redis-py client we make: ``redis://``, ``rediss://`` (TLS options from the URL)
    or ``sentinel://`` (bound to the current master). ``decode_responses`` unless told."""
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("retry_on_error", [redis.ConnectionError, redis.TimeoutError])
    bare, ssl_kwargs = split_tls_options(url)
    if sentinel.is_sentinel(url):
        return sentinel.client(url, ssl_kwargs, redis_class=redis_class, **kwargs)
    return redis_class.from_url(bare, **kwargs, **ssl_kwargs)


# Replies. Every client we make decodes them (``connect``: ``decode_responses=True``; only
# ``Store.ping``'s client, which reads nothing, does not), so Redis answers str where
# redis-py's types say ``bytes | str``. These casts are the one place that says so; at run
# time each returns what it is given.


def text_or_none(reply: bytes | str | None) -> str | None:
    return cast("str | None", reply)


def text_map(reply: Mapping[Any, object]) -> dict[str, str]:
    """A hash reply (HGETALL; CONFIG GET, which redis-py types ``str | None``)."""
    return cast("dict[str, str]", reply)


def text_list(reply: Iterable[object]) -> list[str]:
    """A list reply of strings (LRANGE, ZRANGE... without scores)."""
    return cast("list[str]", reply)


def text_or_none_list(reply: Iterable[bytes | str | None]) -> list[str | None]:
    """HMGET's reply: a string or None per field."""
    return cast("list[str | None]", reply)


def is_out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write for ``maxmemory``: a plain command raises OutOfMemoryError; a
    script whose write was refused raises a ResponseError quoting ``-OOM`` (Redis 6)."""
    return isinstance(exc, redis.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc)
    )


#: What the innermost ``broker_errors`` block is doing, for the typed client's messages.


_DOING: ContextVar[str | None] = ContextVar("session_broker_redis_doing", default=None)


@contextmanager
def broker_errors(settings: Settings, what: str) -> Iterator[None]:
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
def _typed_errors(url: str, what: str | Callable[[], str]) -> Iterator[None]:
    """The mapping itself; ``what`` is a string or, on hot paths, a callable giving it."""
    try:
        yield
    except redis.ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        what = what() if callable(what) else what
        raise BrokerOutOfMemoryError(
            f"Redis at {redact(url)} is out of memory and refused to {what} ({exc}); "
            "nothing was changed: raise Redis's maxmemory or free memory, then retry"
        ) from exc
    except redis.BusyLoadingError as exc:
        what = what() if callable(what) else what
        raise BrokerConnectionError(
            f"Redis at {redact(url)} is still loading its data and could not {what}; retry in a moment"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        what = what() if callable(what) else what
        raise BrokerConnectionError(
            f"lost Redis at {redact(url)} and could not {what} ({exc}); the job records "
            "are in Redis: retry when it is back"
        ) from exc


@lru_cache(maxsize=1)
def _script_names() -> dict[str, str]:
    """SHA1 -> name (``close_session``...) of our Lua scripts, for messages."""
    return {hashlib.sha1(scripts.source(name).encode()).hexdigest(): name for name in scripts.names()}


def _doing(args: tuple[Any, ...]) -> str:
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

    def execute_command(self, *args: Any, **options: Any) -> Any:
        with _typed_errors(self.broker_url, lambda: _doing(args)):
            # redis-py leaves execute_command unannotated
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> redis.client.Pipeline:
        pipe = _TypedErrorsPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.broker_url = self.broker_url
        return pipe


class _TypedErrorsPipeline(redis.client.Pipeline):
    broker_url = ""

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        with _typed_errors(self.broker_url, lambda: _doing(args)):
            # redis-py leaves immediate_execute_command unannotated
            return super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = list(self.command_stack)  # execute() empties it, even when it fails

        def doing() -> str:
            names = sorted({_doing(c[0]) for c in stack if c[0]})
            return _DOING.get() or " and ".join(names) or "run a pipeline"

        with _typed_errors(self.broker_url, doing):
            return super().execute(raise_on_error)


# Redis settings we read at start, and what each bad value costs (see ``Store.check_server``).


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

    def acked(self, acked: int | None, want: int) -> None:
        if acked is not None and int(acked) < want:
            self.look()

    def look(self) -> None:
        self.next_look = time.monotonic() + self.RECHECK
        was = self.connected
        try:
            self.connected = int(self.client.info("replication").get("connected_slaves", 0))
        except (redis.RedisError, BrokerConnectionError, BrokerOutOfMemoryError):
            return  # INFO refused (an ACL) or Redis away: keep what we knew
        if self.connected == 0 and was != 0:
            log.warning(
                "no Redis replica is connected: writes no longer wait for one "
                "(SESSION_BROKER_WAIT_REPLICAS=%d); a failover now can lose the last "
                "jobs and results; bring a replica back",
                self.want,
            )
            try:
                prefix = self.settings.key_prefix
                self.client.hincrby(K.Keys(prefix).counts, "replication_degraded", 1)
            except (redis.RedisError, BrokerConnectionError, BrokerOutOfMemoryError):
                pass
        elif self.connected and was == 0:
            log.warning("a Redis replica is connected again: writes wait for it again")


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
