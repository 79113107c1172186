"""kombu's Redis transport, hardened against messages no producer of ours wrote.

kombu parses a message's envelope in the worker's event loop: one message with a body
that is not base64, an envelope that is not a JSON object or a header of the wrong type
raises there, and Celery stops the whole worker ("Unrecoverable error"). Anyone who can
push to a queue could stop every worker of a backend with one message.

This transport checks each envelope before kombu sees it. One that is not well formed is
moved to the dead-letter list ``<prefix>:dead`` (kept short, for operators to inspect) and
the worker carries on. Well-formed messages go through kombu unchanged; what is inside the
body (JSON only, a known task, a job id) is then Celery's and our task's to check.
``celery_app`` registers it for the ``redis://`` and ``rediss://`` schemes.
"""

from __future__ import annotations

import binascii
import json
import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger("session_broker.worker")
DEAD_LETTERS_KEPT = 1000


def envelope_problem(message) -> str | None:
    """Why a raw kombu envelope cannot be delivered safely, or None when it can."""
    if not isinstance(message, dict):
        return f"envelope is a {type(message).__name__}, not an object"
    props = message.get("properties")
    if not isinstance(props, dict):
        return "properties missing or not an object"
    if not isinstance(props.get("delivery_tag"), str):
        return "properties.delivery_tag missing or not a string"
    if not isinstance(props.get("delivery_info", {}), dict):
        return "properties.delivery_info not an object"
    headers = message.get("headers")
    if not isinstance(headers, dict):
        return "headers missing or not an object"
    for name in ("task", "id"):
        if not isinstance(headers.get(name), str):
            return f"headers.{name} missing or not a string"
    limits = headers.get("timelimit", [None, None])
    if limits is not None and not (isinstance(limits, list) and len(limits) == 2 and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0)
            for v in limits)):
        return "headers.timelimit is not [hard, soft] seconds"
    for name in ("eta", "expires", "group", "chord", "callbacks", "errbacks", "chain"):
        if headers.get(name) is not None:
            return f"headers.{name} is set: session-broker tasks never use it"
    if not isinstance(headers.get("retries", 0), int):
        return "headers.retries is not an integer"
    for name in ("argsrepr", "kwargsrepr", "root_id", "parent_id", "origin", "shadow"):
        if not isinstance(headers.get(name), (str, type(None))):
            return f"headers.{name} is not a string"
    for name in ("content-type", "content-encoding"):
        if not isinstance(message.get(name), str):
            return f"{name} missing or not a string"
    body = message.get("body")
    if not isinstance(body, str):
        return "body missing or not a string"
    encoding = props.get("body_encoding")
    if encoding == "base64":
        try:
            raw = binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            return f"body is not valid base64 ({exc})"
    elif encoding is None:
        raw = body.encode("utf-8", "surrogatepass")
    else:
        return f"unsupported body_encoding {encoding!r}"
    if message["content-type"] != "application/json":
        return None  # Celery refuses (and acknowledges) content types other than JSON itself
    # Celery's protocol 2 body: [args, kwargs, embed]. Anything else raises in Celery after
    # the message is reserved, where it would stay unacknowledged and block the worker.
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"body is not JSON ({exc})"
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)
            and isinstance(decoded[1], dict) and isinstance(decoded[2], (dict, type(None)))):
        return "body is not [args, kwargs, embed] (Celery protocol 2)"
    if decoded[2] and any(v is not None for v in decoded[2].values()):
        return "body embeds callbacks, errbacks, a chain or a chord: session-broker tasks never use them"
    return None


class Channel(kombu_redis.Channel):
    # kombu keeps one expiry index of routing tables for everyone; celery_app names ours
    from_transport_options = kombu_redis.Channel.from_transport_options + ("keyprefix_binding_deadlines",)

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the item was not JSON text
            # Only these: a ValueError raised later, inside Celery's handling of a message
            # kombu already reserved, would leave that message unacked and the worker blocked.
            self._dead_letter(None, f"envelope is not JSON ({exc})")
            return True

    def _dead_letter(self, raw, why: str) -> None:
        from session_broker.config import get_settings
        from session_broker.keys import Keys

        log.error("refused a message that is not a well-formed task message: %s", why)
        try:
            key = Keys(get_settings().key_prefix).dead
            text = json.dumps({"why": why, "message": raw}, default=repr)[:65536]
            with self.conn_or_acquire() as client:
                client.lpush(key, text)
                client.ltrim(key, 0, DEAD_LETTERS_KEPT - 1)
        except Exception:  # never let bookkeeping of garbage stop a worker
            log.exception("could not record the refused message")


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message, queue):
        # Only our task queues carry task messages. Remote-control broadcasts (ping, revoke),
        # their replies and Celery events (what Flower shows) arrive here too and have no
        # task header: they pass untouched.
        from session_broker.config import get_settings

        prefix = get_settings().key_prefix
        if not (queue or "").startswith((f"{prefix}.backend.", f"{prefix}.session.")):
            return super()._deliver(message, queue)
        problem = envelope_problem(message)
        if problem is not None:
            for channel in self.channels:
                if isinstance(channel, Channel):
                    channel._dead_letter(message, problem)
                    break
            return
        return super()._deliver(message, queue)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel (envelope checks, the tenant's bookkeeping keys) on kombu's Sentinel
    pool: every command goes to the master the Sentinels name, found again after a failover."""

    from_transport_options = tuple(dict.fromkeys(
        Channel.from_transport_options + kombu_redis.SentinelChannel.from_transport_options))


class SentinelTransport(Transport):
    """``sentinel://`` URLs (see ``session_broker.sentinel``): ``Transport`` with kombu's
    Sentinel connection handling."""

    Channel = SentinelChannel
    default_port = 26379
    driver_type = kombu_redis.SentinelTransport.driver_type
    driver_name = kombu_redis.SentinelTransport.driver_name
