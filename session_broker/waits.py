"""Why a job waits, in words: no silent waits for a producer.

``run()`` warns at once (``NoLiveWorkerWarning``) when no live worker serves the job's
backend, and a ``result()`` / ``wait_for_final_state()`` that waits logs, every
``SESSION_BROKER_WAIT_REPORT_INTERVAL`` seconds (default 30), why (logger
``session_broker.wait``): no live worker for the backend, every worker of the backend pinned
to other sessions (each one's idle time, when its interactive timeout releases it, and the
``session-broker session cancel`` that frees it now), or the job's place in its queue.

Everything here only reads what is already in Redis: the worker registry (``P:workers``,
``P:w:<node>``), the session records and their idle timers, the job's queue. Nothing is
written on the job path for it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from session_broker.core.store import Store
from session_broker.errors import NoLiveWorkerWarning

log = logging.getLogger("session_broker.wait")

SCAN_LIMIT = 10000  # queue entries read to find a job's place (the next ones to be served)


def start_hint(backend: str) -> str:
    return f"start one with `session-broker worker --backend {backend}`"


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package: the user's ``run()`` line."""
    here, frame, level = os.path.dirname(__file__), sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    return level


def warn_no_worker(store: Store, backend: str, job_id: str) -> bool:
    """Warn (``NoLiveWorkerWarning``) if no live worker serves ``backend``; True if one does."""
    if store.live_workers(backend):
        return True
    warnings.warn(
        NoLiveWorkerWarning(
            f"job {job_id} is queued for backend {backend!r}, but no live worker serves it: "
            f"it waits until one does; {start_hint(backend)}"
        ),
        stacklevel=_caller_level(),
    )
    return False


def _age(now: float, then: str | None) -> int | None:
    try:
        return max(int(now - float(then)), 0) if then else None
    except ValueError:
        return None


def _pinned(store: Store, node: str, sid: str, now: float) -> str:
    """What holds ``node``: its pinned session, idle or busy, and how it ends."""
    s = store.redis.hmget(
        store.keys.session(sid), ["state", "queued", "running", "last_job_completed", "pinned_at", "producer"]
    )
    state, queued, running, completed, pinned_at, producer = s
    idle_left = store.redis.ttl(store.keys.timer(sid, "idle"))
    gone = bool(producer) and not store.redis.exists(store.keys.session_producer(sid))
    if int(running or 0) > 0 or int(queued or 0) > 0:
        return (
            f"worker {node} is pinned to session {sid} ({state}, running its jobs: "
            f"{int(running or 0)} running, {int(queued or 0)} queued)"
        )
    idle = _age(now, completed or pinned_at)
    idle_text = f"idle {idle} s" if idle is not None else "idle"
    if gone:
        idle_text += f", its producer {producer} is gone"
    release = f", released in {idle_left} s by its interactive timeout" if idle_left and idle_left > 0 else ""
    return (
        f"worker {node} is pinned to session {sid} ({idle_text}{release}; "
        f"`session-broker session cancel {sid}` frees it now)"
    )


def _place(store: Store, queue: str, job_id: str, head_left: bool = False) -> str:
    """Where the job is in ``queue`` (1 = served next), in words. kombu pushes on the left,
    workers take from the right (an instance's held line is served from the left:
    ``head_left``); only the next ``SCAN_LIMIT`` entries are read."""
    length = store.redis.llen(queue)
    if head_left:
        entries = list(reversed(store.redis.lrange(queue, 0, SCAN_LIMIT - 1)))
    else:
        entries = store.redis.lrange(queue, -SCAN_LIMIT, -1)
    for i, entry in enumerate(reversed(entries)):
        if job_id in entry:
            return f"number {i + 1} of {length} in"
    if length > len(entries):
        return f"behind more than {len(entries)} jobs in"
    return "taken by a worker (about to start) from"


def why_waiting(store: Store, job_id: str) -> tuple[int, str] | None:
    """(log level, why the job has not ended yet), or None once it has ended (or is gone)."""
    rec = store.job(
        job_id,
        "status",
        "backend",
        "session",
        "mode",
        "queue",
        "worker",
        "running",
        "created",
        "held",
        "instance",
    )
    status = rec.get("status")
    if status not in ("QUEUED", "RUNNING"):
        return None
    now = store.redis.time()
    now_s = now[0] + now[1] / 1e6
    backend = rec.get("backend", "")
    if status == "RUNNING":
        return logging.INFO, (
            f"job {job_id} is running on worker {rec.get('worker')} "
            f"(for {_age(now_s, rec.get('running')) or 0} s)"
        )
    waited = _age(now_s, rec.get("created")) or 0
    head = f"job {job_id} has been queued for {waited} s"
    workers = store.live_workers(backend)
    if not workers:
        return logging.WARNING, f"{head}: no live worker serves backend {backend!r}; {start_hint(backend)}"
    sid, mode = rec.get("session", ""), rec.get("mode", "")
    nodes = {w.get("node", "") for w in workers}
    if sid and mode == "session":
        holder = store.redis.hget(store.keys.session(sid), "worker") or ""
        if holder in nodes:
            where = _place(store, rec.get("queue", ""), job_id)
            return logging.WARNING, f"{head}: session {sid} runs on worker {holder}; {where} its queue"
        others = [(w.get("node", ""), w.get("pin", "")) for w in workers]
        if all(pin and pin != sid for _, pin in others):
            held = "; ".join(_pinned(store, node, pin, now_s) for node, pin in others)
            return logging.WARNING, (
                f"{head}: session {sid} waits for a worker of backend {backend!r}, and every one "
                f"is pinned to another session: {held}"
            )
        return logging.WARNING, f"{head}: session {sid} is in line for a worker of backend {backend!r}"
    pinned = [(w.get("node", ""), w.get("pin", "")) for w in workers if w.get("pin")]
    where = f"{_place(store, rec.get('queue', ''), job_id)} the queue of backend {backend!r}"
    if rec.get("held"):  # instances: it waits in its instance's line for its fair-share turn
        where = (
            f"{_place(store, rec['held'], job_id, head_left=True)} the line of instance {rec.get('instance') or '(none)'!r} "
            f"for backend {backend!r}, served by fair share between instances"
        )
    if len(pinned) == len(workers):
        held = "; ".join(_pinned(store, node, pin, now_s) for node, pin in pinned)
        return logging.WARNING, (
            f"{head}: {where}, and every worker of the backend is pinned to a session: {held}"
        )
    return logging.WARNING, (
        f"{head}: {where} ({len(workers)} live worker(s), {len(pinned)} pinned to sessions)"
    )


def report(store: Store, job_id: str) -> None:
    """Log why the job waits: WARNING while it is queued, INFO while it runs."""
    try:
        found = why_waiting(store, job_id)
    except Exception as exc:  # a report must never break the wait it describes
        log.debug("could not tell why job %s waits: %s", job_id, exc)
        return
    if found:
        log.log(found[0], "%s", found[1])
