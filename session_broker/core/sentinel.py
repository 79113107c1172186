"""Redis Sentinel: one URL form, and the clients that follow the current master.

``SESSION_BROKER_URL`` may name Sentinels instead of one Redis::

    sentinel://[user:password@]host1:26379,host2:26379,host3:26379/0?master=mymaster
    sentinels://...     (TLS to the master, with the same ssl_* options as rediss://)
    &sentinel_password=...   (when the Sentinels themselves require a password)

The user/password are the master's, as in a ``redis://`` URL. Three kinds of client follow
the master through a failover, each with the library's own Sentinel support:

- our own keys: redis-py's ``Sentinel(...).master_for(...)``, whose pool asks the Sentinels
  for the master again after a connection error (``client``);
- Celery's broker (workers, Flower, remote control): kombu's ``sentinel://`` transport, with
  our hardened channel (``transport.SentinelTransport``) and ``master_name``
  (``kombu_url`` / ``kombu_options``);
- Celery's result backend: Celery's ``sentinel://`` backend, with the same options.

Our Lua scripts need every key on one server: a Sentinel deployment has one master at a
time, and every client above sends every command to it (never to replicas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
from redis.connection import SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

from session_broker.core.urls import split_tls_options

SCHEMES = ("sentinel", "sentinels")


@dataclass(frozen=True)
class SentinelURL:
    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    ssl: dict[str, str] = field(default_factory=dict)  # ssl_* query options, as for rediss://


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] in SCHEMES


def parse(url: str) -> SentinelURL:
    """``ValueError`` saying what is wrong and the expected form, for a bad URL."""
    form = "sentinel://[user:password@]host:26379[,host:26379...]/db?master=NAME"
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES:
        raise ValueError(f"expected {form}")
    parts = urlsplit(f"redis://{rest}")
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address {item!r} is not host:port; expected {form}")
        hosts.append((host.strip("[]"), int(port)))
    query = dict(parse_qsl(parts.query))
    master = query.pop("master", None) or query.pop("master_name", None)
    if not master:
        raise ValueError(f"the master's name is missing (?master=NAME); expected {form}")
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the database number must be an integer, not {db!r}")
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    user, _, password = userinfo.partition(":")
    ssl = {k: v for k, v in query.items() if k.startswith("ssl_")}
    unknown = set(query) - set(ssl) - {"sentinel_password"}
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)}; allowed: master, "
            "sentinel_password, ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile"
        )
    return SentinelURL(
        tuple(hosts),
        master,
        int(db),
        unquote(user) or None,
        unquote(password) or None,
        query.get("sentinel_password"),
        scheme == "sentinels",
        ssl,
    )


class _MasterConnection(SentinelManagedConnection):
    """redis-py 8.1's connection to a Sentinel-managed master, asking the Sentinels for the
    master on *every* reconnect. redis-py sends commands through ``connect_check_health``,
    which reconnects to the address the connection had, not through the ``connect`` that
    asks the Sentinels: after a failover every retry went to the dead master until the
    retries ran out (a producer's ``run()`` failed although the replica was promoted)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None and retry_socket_connect:
            # connect_to() comes back here with retry_socket_connect=False
            self.retry.call_with_retry(self._connect_retry, lambda error: None)
            return
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _MasterSSLConnection(_MasterConnection, SSLConnection):
    pass


def client(
    url: str, tls_kwargs: dict[str, Any], redis_class: type[redis.Redis] = redis.Redis, **kwargs: Any
) -> redis.Redis:
    """A redis-py client (of ``redis_class``) bound to the current master (``kwargs`` as for
    ``redis.Redis``)."""
    parsed = parse(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": kwargs.get("socket_connect_timeout", 5),
        "socket_timeout": 5,
    }
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.tls:  # sentinels://: TLS to the Sentinels and to the master
        kwargs = {**kwargs, "ssl": True, **tls_kwargs}
        sentinel_kwargs.update(ssl=True, **tls_kwargs)
    manager = Sentinel(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)
    master: redis.Redis = manager.master_for(
        parsed.master,
        redis_class=redis_class,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        connection_class=_MasterSSLConnection if parsed.tls else _MasterConnection,
    )
    return master


def kombu_url(url: str) -> str:
    """kombu's and Celery's form: ``sentinel://:pw@h1:26379/0;sentinel://:pw@h2:26379/0``."""
    parsed = parse(url)
    auth = ""
    if parsed.password:
        auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password, safe='')}@"
    return ";".join(f"sentinel://{auth}{host}:{port}/{parsed.db}" for host, port in parsed.hosts)


def kombu_options(url: str) -> dict[str, Any]:
    """Transport options kombu's sentinel transport and Celery's sentinel backend need."""
    parsed = parse(url)
    options: dict[str, Any] = {"master_name": parsed.master}
    sentinel_kwargs: dict[str, Any] = {}
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.tls:  # the master's TLS comes from broker_use_ssl; the Sentinels' from here
        sentinel_kwargs.update(ssl=True, **split_tls_options(url)[1])
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return options
