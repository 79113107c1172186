"""The read model every door lists jobs through: the Python service (``service.jobs()``), the
REST API (``GET /jobs``), the CLI (``session-broker jobs``) and the Jobs page. One query, one
set of filters, one order; each door shapes the rows its own way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from session_broker.core.connection import text_list
from session_broker.core.store import FINAL_JOB_STATUSES, Store

CHUNK = 200  # job records read per round trip


@dataclass(frozen=True)
class JobQuery:
    """Which jobs, in which order. Every filter is optional; ``tags``: jobs that have all."""

    session: str | None = None
    backend: str | None = None
    program: str | None = None  # the primitive: "sampler" | "estimator"
    pending: bool | None = None  # True: QUEUED or RUNNING; False: ended
    status: str | None = None  # exactly this status: QUEUED, RUNNING, DONE, ERROR, CANCELLED
    tags: frozenset[str] = field(default_factory=frozenset)
    after: float | None = None  # created at or after (Redis server seconds)
    before: float | None = None  # created at or before
    newest_first: bool = True


# what a filter needs to read, besides what the caller asks for
_FILTER_FIELDS = ("status", "backend", "primitive", "summary", "created")


def job_tags(summary: str | None) -> list[str]:
    """A job's tags, from its summary (the one place they live)."""
    try:
        tags = json.loads(summary or "{}").get("tags") or []
    except (ValueError, AttributeError):
        return []
    return [t for t in tags if isinstance(t, str)]


def iter_jobs(
    store: Store, query: JobQuery, fields: tuple[str, ...] = ()
) -> Iterator[tuple[str, dict[str, str]]]:
    """``(job id, record)`` of every job that matches, in order; the record holds ``fields``
    and the fields the filters read. Records are read ``CHUNK`` at a time, so a caller that
    stops early (a page) reads little more than it shows."""
    wanted = tuple(dict.fromkeys((*_FILTER_FIELDS, *fields)))
    for batch in _job_id_chunks(store, query):
        pipe = store.redis.pipeline(transaction=False)
        for jid in batch:
            pipe.hmget(store.keys.job(jid), wanted)
        for jid, values in zip(batch, pipe.execute()):
            rec = {f: v for f, v in zip(wanted, values) if v is not None}
            if rec.get("status") and matches(rec, query):
                yield jid, rec


def _job_id_chunks(store: Store, query: JobQuery) -> Iterator[list[str]]:
    """The matching window's job ids, ``CHUNK`` at a time: a page (the Jobs page refreshes
    live) reads a chunk or two of ids, not every id of the last day's jobs."""
    if query.session:
        ids = store.session_job_ids(query.session)
        if query.newest_first:
            ids = list(reversed(ids))
        for start in range(0, len(ids), CHUNK):
            yield ids[start : start + CHUNK]
        return
    lo = "-inf" if query.after is None else query.after
    hi = "+inf" if query.before is None else query.before
    seen: set[str] = set()  # a job submitted while we read shifts the ranks by one
    offset = 0
    while True:
        ranked = text_list(
            store.redis.zrevrangebyscore(store.keys.jobs, hi, lo, start=offset, num=CHUNK)
            if query.newest_first
            else store.redis.zrangebyscore(store.keys.jobs, lo, hi, start=offset, num=CHUNK)
        )
        if not ranked:
            return
        offset += len(ranked)
        fresh = [jid for jid in ranked if jid not in seen]
        seen.update(fresh)
        yield fresh


def matches(rec: dict[str, str], query: JobQuery) -> bool:
    if query.backend and rec.get("backend") != query.backend:
        return False
    if query.program and rec.get("primitive") != query.program:
        return False
    if query.pending is not None and (rec["status"] not in FINAL_JOB_STATUSES) != query.pending:
        return False
    if query.status and rec["status"] != query.status:
        return False
    created = float(rec.get("created") or 0)
    if query.after is not None and created < query.after:
        return False
    if query.before is not None and created > query.before:
        return False
    return not query.tags or query.tags <= set(job_tags(rec.get("summary")))


@dataclass(frozen=True)
class SessionQuery:
    """Which sessions (and batches), newest first. Every filter is optional."""

    state: str | None = None  # open, active, inactive, pending_closed, closed
    backend: str | None = None
    mode: str | None = None  # "session" | "batch"


def iter_sessions(store: Store, query: SessionQuery) -> Iterator[str]:
    """Ids of the sessions that match, newest first, read ``CHUNK`` at a time."""
    total = store.redis.zcard(store.keys.sessions)
    seen: set[str] = set()  # a session opened while we read shifts the ranks by one
    for start in range(0, total, CHUNK):
        ranked = text_list(store.redis.zrevrange(store.keys.sessions, start, start + CHUNK - 1))
        ids = [i for i in ranked if i not in seen]
        seen.update(ids)
        pipe = store.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(store.keys.session(sid), ("state", "backend", "mode"))
        for sid, (state, backend, mode) in zip(ids, pipe.execute()):
            if not state:
                continue  # expired; the listing is trimmed later
            if query.state and state != query.state:
                continue
            if query.backend and backend != query.backend:
                continue
            if query.mode and mode != query.mode:
                continue
            yield sid


def time_left(session: dict[str, str], max_timer_ttl: int | str | None) -> int:
    """Seconds a session may still run (IBM's ``active_timeout``): its max-time timer's TTL
    once its first job started, its whole ``max_time`` before that, 0 once closed."""
    if session.get("state") == "closed":
        return 0
    if not session.get("started_at"):
        return int(session.get("max_time") or 0)
    return max(int(max_timer_ttl or 0), 0)
