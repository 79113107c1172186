"""Celery task messages, built by the client and pushed by the submit script.

Why not ``apply_async``: the submit script records the job and pushes its message in one
atomic step, so a job can never be recorded without its message (a producer that dies in
between would leave a job QUEUED forever) nor queued without its record. Building the
message here also keeps Celery out of the producer's import path and saves a round trip.
The format is kombu's Redis transport format for Celery's protocol 2; an integration test
runs real workers on it, so a change in either library shows up there.
"""

from __future__ import annotations

import binascii
import json
import os
import socket
import uuid
from typing import Any

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
# Built once: json.dumps with keyword arguments builds a new encoder on every call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(
    task: str,
    job_id: str,
    queue: str,
    kwargs: dict[str, Any],
    *,
    argsrepr: str,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
) -> str:
    """The kombu/Celery protocol-2 message that ``apply_async`` would push, as JSON text.

    The body carries only the job id and a short summary (shown by Flower); the job itself
    lives in the job record, so a requeue is a push of the same text.
    """
    body = _ENCODE([[job_id], kwargs, _EMBED])
    message = {
        "body": binascii.b2a_base64(body.encode(), newline=False).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [time_limit, soft_time_limit],
            "root_id": job_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return _ENCODE(message)
