"""kombu's Redis transport, hardened: malformed envelopes go to the dead-letter list
(``<prefix>:dead``) instead of stopping the worker, and a session-broker worker fetches with
``BLMOVE`` onto its own fetch list (reliable fetch), so a message is in Redis at every instant.
Why, and what it costs: docs/design.md, "Nothing lost".
"""

from __future__ import annotations

import binascii
import json
import logging
import os
from queue import Empty  # what kombu's poller waits on (kombu.transport.redis re-uses it)
from time import monotonic, sleep, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis import exceptions as redis_errors

from session_broker.core.config import get_settings
from session_broker.core.keys import Keys

log = logging.getLogger("session_broker.worker")
DEAD_LETTERS_KEPT = 1000


def envelope_problem(message: object) -> str | None:
    """Why a raw kombu envelope cannot be delivered safely, or None when it can."""
    return read_envelope(message)[0]


def read_envelope(message: object) -> tuple[str | None, list[Any] | None]:
    """(why a raw kombu envelope cannot be delivered safely, or None when it can; its decoded
    protocol-2 body ``[args, kwargs, embed]`` when its content type is JSON)."""
    if not isinstance(message, dict):
        return f"envelope is a {type(message).__name__}, not an object", None
    props = message.get("properties")
    if not isinstance(props, dict):
        return "properties missing or not an object", None
    if not isinstance(props.get("delivery_tag"), str):
        return "properties.delivery_tag missing or not a string", None
    if not isinstance(props.get("delivery_info", {}), dict):
        return "properties.delivery_info not an object", None
    headers = message.get("headers")
    if not isinstance(headers, dict):
        return "headers missing or not an object", None
    for name in ("task", "id"):
        if not isinstance(headers.get(name), str):
            return f"headers.{name} missing or not a string", None
    limits = headers.get("timelimit", [None, None])
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0) for v in limits
        )
    ):
        return "headers.timelimit is not [hard, soft] seconds", None
    for name in ("eta", "expires", "group", "chord", "callbacks", "errbacks", "chain"):
        if headers.get(name) is not None:
            return f"headers.{name} is set: session-broker tasks never use it", None
    if not isinstance(headers.get("retries", 0), int):
        return "headers.retries is not an integer", None
    for name in ("argsrepr", "kwargsrepr", "root_id", "parent_id", "origin", "shadow"):
        if not isinstance(headers.get(name), (str, type(None))):
            return f"headers.{name} is not a string", None
    for name in ("content-type", "content-encoding"):
        if not isinstance(message.get(name), str):
            return f"{name} missing or not a string", None
    body = message.get("body")
    if not isinstance(body, str):
        return "body missing or not a string", None
    encoding = props.get("body_encoding")
    if encoding == "base64":
        try:
            raw = binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            return f"body is not valid base64 ({exc})", None
    elif encoding is None:
        raw = body.encode("utf-8", "surrogatepass")
    else:
        return f"unsupported body_encoding {encoding!r}", None
    if message["content-type"] != "application/json":
        return None, None  # Celery refuses (and acknowledges) content types other than JSON itself
    # Celery's protocol 2 body: [args, kwargs, embed]. Anything else raises in Celery after
    # the message is reserved, where it would stay unacknowledged and block the worker.
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"body is not JSON ({exc})", None
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
        and isinstance(decoded[2], (dict, type(None)))
    ):
        return "body is not [args, kwargs, embed] (Celery protocol 2)", None
    if decoded[2] and any(v is not None for v in decoded[2].values()):
        return (
            "body embeds callbacks, errbacks, a chain or a chord: session-broker tasks never use them",
            None,
        )
    return None, decoded


def dead_letter(pipe: Any, keys: Keys, raw: object, why: str) -> Any:
    """Queue on ``pipe`` the record of a refused message in the dead-letter list (the newest
    ``DEAD_LETTERS_KEPT`` are kept); the caller executes it."""
    text = json.dumps({"why": why, "message": raw}, default=repr)[:65536]
    return pipe.lpush(keys.dead, text).ltrim(keys.dead, 0, DEAD_LETTERS_KEPT - 1)


# Delivery tags whose unacked entry our FINISH script already removed (tasks.celery_tasks):
# kombu's ack of them is bookkeeping in this process only, no round trip.
ACKED_BY_FINISH: set[str] = set()


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in ACKED_BY_FINISH:
            ACKED_BY_FINISH.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]  # kombu's QoS is unannotated

    def append(self, message: Any, delivery_tag: str) -> None:
        fetched = self.channel._take_fetched()
        if fetched is None:
            # kombu's QoS is unannotated
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        # record it as unacked and take it off the fetch list in one MULTI/EXEC: the message
        # is in exactly one of the two at every instant
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}).hset(
                self.unacked_key,
                delivery_tag,
                dumps([message._raw, delivery["exchange"], delivery["routing_key"]]),
            ).lrem(self.channel.fetch_key, 1, fetched).execute()
        virtual.QoS.append(self, message, delivery_tag)


class Channel(kombu_redis.Channel):
    # kombu keeps one expiry index of routing tables for everyone; celery_app names ours
    # kombu's option tuple is inferred as exactly its own 26 names; ours adds one
    from_transport_options = kombu_redis.Channel.from_transport_options + (  # type: ignore[assignment]
        "keyprefix_binding_deadlines",
    )

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # kombu's Channel is unannotated
        node = os.environ.get("SESSION_BROKER_WORKER_NODE", "")
        self.fetch_key = Keys(get_settings().key_prefix).worker_fetch(node) if node else None
        self._fetched: str | None = None
        self._fetch_queue: str | None = None

    def _take_fetched(self) -> str | None:
        fetched, self._fetched = self._fetched, None
        return fetched

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.fetch_key is None:
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]  # kombu's Channel is unannotated
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._fetch_queue = queues[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it None
        self.client.connection.send_command(
            "BLMOVE", queues[0], self.fetch_key, "RIGHT", "LEFT", timeout or 0
        )

    def _brpop_read(self, **options: Any) -> bool:
        if self.fetch_key is None:
            try:
                # kombu's Channel is unannotated
                delivered: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
                return delivered
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the item was not JSON text
                # Only these: a ValueError raised later, inside Celery's handling of a message
                # kombu already reserved, would leave that message unacked and the worker blocked.
                self._dead_letter(None, f"envelope is not JSON ({exc})")
                return True
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis_errors.ResponseError as exc:
                if "OOM" not in str(exc):
                    raise
                # Redis is full (noeviction): BLMOVE is refused like any write. Wait a little
                # rather than spin, and fetch nothing until memory is back.
                self._out_of_memory(exc)
                raise Empty() from None
            if not item:
                raise Empty()
            queue, raw = self._fetch_queue, bytes_to_str(item)
            self._queue_cycle.rotate(queue)
            self._fetched = raw
            try:
                message = loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._dead_letter(raw, f"envelope is not JSON ({exc})")
                self._settle_fetched(raw, None)
                return True
            try:
                self.connection._deliver(message, queue)
            except redis_errors.ResponseError as exc:
                if "OOM" not in str(exc):
                    self._settle_fetched(raw, queue)
                    raise
                # Redis filled up between the fetch and the hand-over: the message stays on
                # our fetch list, which the agent's reconcile gives back (core/lua/reconcile_worker.lua)
                self._fetched = None
                self._out_of_memory(exc)
                return True
            except BaseException:
                # not handed over: give it back to its queue rather than keep it only here
                self._settle_fetched(raw, queue)
                raise
            # refused (dead letter) or taken by a consumer without acks: nothing to keep
            self._settle_fetched(raw, None)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu declares it bool, and sets None itself
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _out_of_memory(self, exc: BaseException) -> None:
        now = monotonic()
        if now - getattr(self, "_oom_logged", -60.0) > 30:
            log.error("Redis is out of memory, fetching paused: %s", exc)
            self._oom_logged = now
        sleep(0.25)

    def _settle_fetched(self, raw: str, back_to: str | None) -> None:
        """Take a fetched message that kombu did not record as unacked off the fetch list
        (and push it back onto ``back_to`` when given)."""
        if self._take_fetched() is None:
            return  # QoS.append moved it to the unacked hash
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            if back_to:
                pipe.rpush(back_to, raw)
            pipe.lrem(self.fetch_key, 1, raw).execute()

    def _dead_letter(self, raw: object, why: str) -> None:
        log.error("refused a message that is not a well-formed task message: %s", why)
        try:
            with self.conn_or_acquire() as client:
                dead_letter(client.pipeline(), Keys(get_settings().key_prefix), raw, why).execute()
        except Exception:  # never let bookkeeping of garbage stop a worker
            log.exception("could not record the refused message")


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        # Only our task queues carry task messages. Remote-control broadcasts (ping, revoke),
        # their replies and Celery events (what Flower shows) arrive here too and have no
        # task header: they pass untouched.
        prefix = get_settings().key_prefix
        if (queue or "").startswith((f"{prefix}.backend.", f"{prefix}.session.")):
            problem = envelope_problem(message)
            if problem is not None:
                for channel in self.channels:
                    if isinstance(channel, Channel):
                        channel._dead_letter(message, problem)
                        break
                return
        super()._deliver(message, queue)  # type: ignore[no-untyped-call]  # kombu's Transport is unannotated


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel (envelope checks, the tenant's bookkeeping keys) on kombu's Sentinel
    pool: every command goes to the master the Sentinels name, found again after a failover."""

    from_transport_options = tuple(  # type: ignore[assignment]  # kombu infers its tuple's exact length
        dict.fromkeys(Channel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options)
    )


class SentinelTransport(Transport):
    """``sentinel://`` URLs (see ``session_broker.core.sentinel``): ``Transport`` with kombu's
    Sentinel connection handling."""

    Channel = SentinelChannel
    default_port = 26379  # type: ignore[assignment]  # kombu's base Transport declares it None
    driver_type = kombu_redis.SentinelTransport.driver_type
    driver_name = kombu_redis.SentinelTransport.driver_name
