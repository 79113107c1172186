"""The Qiskit Runtime routes (mounted at ``/api/v1`` and ``/experimental/api/v1``).

Each route is a thin call into the Python API: ``Session``/``Batch`` for sessions,
``SamplerV2``/``EstimatorV2(mode=...).run(pubs)`` for jobs (the one submit path, one record
per job whichever door it came in by), ``RuntimeJobV2`` and the ``Store`` for reads.

Rules the stock client needs (see ``shared/reference/runtime-rest-api.md``): job states in
IBM's words (``Queued``, ``Running``, ``Completed``, ``Failed``, ``Cancelled``); a job stopped
by ``max_execution_time`` is ``Cancelled`` with reason_code 1305; a failed job's results
answer 200 with its error text; ``count`` in a listing is exact; and nothing after a job was
recorded may answer 5xx (the client retries a 5xx POST, which would submit twice).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from qiskit_ibm_runtime import RuntimeEncoder

from session_broker import backends as catalog
from session_broker import codec
from session_broker.api import devices, reader
from session_broker.api.errors import ApiError, from_broker_error
from session_broker.api.models import JobCreate, SessionCreate, SessionUpdate, TagsUpdate
from session_broker.errors import SessionBrokerError
from session_broker.primitives import EstimatorV2, SamplerV2
from session_broker.session import Batch, Session
from session_broker.state import FINAL_JOB_STATUSES, iso

log = logging.getLogger("session_broker.api")

IBM_STATUS = {"INITIALIZING": "Queued", "QUEUED": "Queued", "RUNNING": "Running",
              "DONE": "Completed", "ERROR": "Failed", "CANCELLED": "Cancelled"}
REASON_MAX_EXECUTION_TIME = 1305
JOB_FIELDS = ("status", "backend", "session", "primitive", "created", "running", "finished",
              "error_code", "error", "summary", "usage", "api_tags", "api_private", "mode")
PROGRAMS = {"sampler": SamplerV2, "estimator": EstimatorV2}
HOLD_S = 0.1


class Ctx:
    """What a runtime route gets after the token and Service-CRN check."""

    def __init__(self, request: Request):
        front = request.app.state.front
        key = front.authority.check_request(request)
        self.front = front
        self.service = front.tenants.service(key.prefix)
        self.store = self.service._store


async def runtime_ctx(request: Request) -> Ctx:
    """The check as an ``async`` dependency: it does no blocking I/O once the secret is
    known, and FastAPI would run a plain one in the thread pool (one more hop per request)."""
    front = request.app.state.front
    if front.authority._secret is None:  # first request only: the secret comes from Redis
        import anyio

        await anyio.to_thread.run_sync(front.authority.secret)
    return Ctx(request)


def broker_errors(fn):
    """Our typed errors (raised before anything is queued) -> 4xx."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SessionBrokerError as exc:
            raise from_broker_error(exc) from None
    return wrapped


router = APIRouter()


# ---------------------------------------------------------------------- backends, usage
@router.get("/backends", tags=["backends"])
@broker_errors
def list_backends(ctx: Ctx = Depends(runtime_ctx), include_mocks: bool = False):
    return devices.listing(ctx.store)


def _known(name: str) -> str:
    if name not in catalog.CATALOG:
        raise ApiError(404, f"unknown backend {name[:64]!r}; known backends: "
                            f"{', '.join(catalog.known_backends())}", "backend_not_found")
    return name


@router.get("/backends/{name}/configuration", tags=["backends"])
def backend_configuration(name: str, ctx: Ctx = Depends(runtime_ctx)):
    return devices.configuration(_known(name))


@router.get("/backends/{name}/properties", tags=["backends"])
def backend_properties(name: str, ctx: Ctx = Depends(runtime_ctx)):
    return devices.properties(_known(name))


@router.get("/backends/{name}/status", tags=["backends"])
@broker_errors
def backend_status(name: str, ctx: Ctx = Depends(runtime_ctx)):
    return devices.status(ctx.store, _known(name))


@router.get("/instances/usage", tags=["instances"])
def instance_usage(ctx: Ctx = Depends(runtime_ctx)):
    used = float(ctx.store.redis.hget(ctx.store.keys.counts, "usage_seconds") or 0.0)
    return {"instance_id": ctx.front.api.instance, "plan_id": "session-broker",
            "usage_consumed_seconds": used, "usage_limit_seconds": None,
            "usage_allocation_seconds": None, "usage_remaining_seconds": None,
            "usage_limit_reached": False, "usage_period": None}


# ---------------------------------------------------------------------- sessions
def _session(ctx: Ctx, sid: str) -> Session:
    if not reader_id(sid):
        raise ApiError(404, f"session {sid[:64]!r} does not exist", "not_found")
    return Session.from_id(sid, service=ctx.service)


def reader_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "_.-" for c in value)


@router.post("/sessions", tags=["sessions"])
@broker_errors
def create_session(body: SessionCreate, ctx: Ctx = Depends(runtime_ctx)):
    _known(body.backend)
    kind = Session if body.mode == "dedicated" else Batch
    session = kind(service=ctx.service, backend=body.backend, max_time=body.max_ttl)
    return _session_view(session)


def _session_view(session: Session) -> dict:
    d = session.details()
    started = d["started_at"]
    return {
        "id": d["id"], "backend_name": d["backend_name"], "state": d["state"],
        "accepting_jobs": d["accepting_jobs"], "interactive_ttl": d["interactive_timeout"],
        "max_ttl": d["max_time"], "active_ttl": d["active_timeout"],
        "last_job_started": d["last_job_started"], "last_job_completed": d["last_job_completed"],
        "started_at": started, "activated_at": started, "closed_at": d["closed_at"],
        "mode": "batch" if d["mode"] == "batch" else "dedicated", "elapsed_time": d["usage_time"],
        "timestamps": [{"status": "active", "timestamp": started}] if started else [],
        "jobs": d["jobs"], "worker": d["worker"], "closed_reason": d["closed_reason"],
    }


@router.get("/sessions/{sid}", tags=["sessions"])
@broker_errors
def get_session(sid: str, ctx: Ctx = Depends(runtime_ctx)):
    return _session_view(_session(ctx, sid))


@router.patch("/sessions/{sid}", status_code=204, tags=["sessions"])
@broker_errors
def update_session(sid: str, body: SessionUpdate, ctx: Ctx = Depends(runtime_ctx)):
    """``accepting_jobs: false`` = our ``close()``: queued and running jobs still finish."""
    if body.accepting_jobs:
        raise ApiError(400, "a session can only stop accepting jobs (accepting_jobs: false)")
    _session(ctx, sid).close()
    return Response(status_code=204)


@router.delete("/sessions/{sid}/close", status_code=204, tags=["sessions"])
@broker_errors
def cancel_session(sid: str, ctx: Ctx = Depends(runtime_ctx)):
    """IBM's ``close`` route is the client's ``cancel()``: queued jobs are cancelled."""
    _session(ctx, sid).cancel()
    return Response(status_code=204)


# ---------------------------------------------------------------------- jobs: submit
@router.post("/jobs", tags=["jobs"])
def create_job(body: JobCreate, ctx: Ctx = Depends(runtime_ctx)):
    primitive_cls = PROGRAMS.get(body.program_id)
    if primitive_cls is None:
        raise ApiError(400, f"program {body.program_id[:64]!r} is not served here; programs: "
                            "sampler, estimator (SamplerV2/EstimatorV2)", "unknown_program")
    pubs, options = reader.read_params(body.program_id, body.params)
    if body.cost is not None:
        options["max_execution_time"] = body.cost
    try:
        if body.session_id:
            mode = _session(ctx, body.session_id)
            if body.backend and body.backend != mode.backend():
                raise ApiError(400, f"backend {body.backend[:64]!r} differs from the session's "
                                    f"backend {mode.backend()!r}", "backend_mismatch")
        else:
            if not body.backend:
                raise ApiError(400, "a job outside a session needs a backend", "missing_backend")
            mode = ctx.service.backend(body.backend)
        job = primitive_cls(mode=mode, options=options).run(pubs)
    except SessionBrokerError as exc:
        raise from_broker_error(exc) from None
    except (TypeError, ValueError, AttributeError) as exc:  # options our primitives refuse
        raise ApiError(400, f"options not accepted: {str(exc)[:300]}", "invalid_options") from None
    # the job is recorded: from here on, never an error status (a retry would submit twice)
    try:
        extra = {"api_tags": json.dumps(body.tags or []), "api_private": "1" if body.private else "0"}
        ctx.store.redis.hset(ctx.store.keys.job(job.job_id()), mapping=extra)
    except Exception:  # noqa: BLE001 - tags are cosmetic; the job is what matters
        log.warning("could not store tags of job %s", job.job_id(), exc_info=True)
    return {"id": job.job_id(), "backend": body.backend or mode.backend(),
            "session_id": body.session_id}


# ---------------------------------------------------------------------- jobs: read
def _record(ctx: Ctx, jid: str, hold: bool = False) -> dict:
    if not reader_id(jid):
        raise ApiError(404, f"job {jid[:64]!r} does not exist", "not_found")
    rec = ctx.store.job(jid, *JOB_FIELDS)
    if not rec.get("status"):
        raise ApiError(404, f"job {jid!r} does not exist (or its record expired)", "not_found")
    if hold and rec["status"] not in FINAL_JOB_STATUSES:
        # hold the poll on the job's latch: the answer comes the moment the job ends
        rec = ctx.store.wait_job(jid, HOLD_S, *JOB_FIELDS) or rec
    return rec


def _tags(rec: dict) -> list:
    try:
        tags = json.loads(rec.get("api_tags") or "[]")
        return tags if isinstance(tags, list) else []
    except ValueError:
        return []


def job_view(jid: str, rec: dict) -> dict:
    status = rec["status"]
    word = IBM_STATUS.get(status, "Queued")
    reason, code = None, None
    if status == "ERROR" and rec.get("error_code") == "max_execution_time":
        word, code = "Cancelled", REASON_MAX_EXECUTION_TIME
        reason = rec.get("error") or "ran longer than its max_execution_time"
    elif status in ("ERROR", "CANCELLED"):
        reason = rec.get("error") or None
    summary = json.loads(rec.get("summary") or "{}")
    usage = float(rec["usage"]) if rec.get("usage") else 0.0
    return {
        "id": jid, "backend": rec.get("backend"), "status": word,
        "state": {"status": word, "reason": reason, "reason_code": code},
        "program": {"id": rec.get("primitive")}, "created": iso(rec.get("created")),
        "session_id": rec.get("session") or None, "tags": _tags(rec),
        "private": rec.get("api_private") == "1", "runtime": "", "user_id": "session-broker",
        "estimated_running_time_seconds": None, "cost": 0,
        "usage": {"seconds": usage, "quantum_seconds": usage},
        "summary": summary,
    }


@router.get("/jobs/{jid}", tags=["jobs"])
def get_job(jid: str, ctx: Ctx = Depends(runtime_ctx), exclude_params: bool = True):
    return job_view(jid, _record(ctx, jid, hold=True))


@router.get("/jobs/{jid}/results", tags=["jobs"])
def job_results(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    rec = _record(ctx, jid)
    status = rec["status"]
    if status in ("ERROR", "CANCELLED"):
        return PlainTextResponse(rec.get("error") or f"job {jid} was {status.lower()}")
    if status != "DONE":
        raise ApiError(409, f"job {jid} is {IBM_STATUS.get(status, status)}: results exist once "
                            "it is Completed", "job_not_final")
    raw = ctx.store.job(jid, "result").get("result")
    if raw is None:
        raise ApiError(404, f"the result of job {jid} has expired", "not_found")
    text = json.dumps(codec.decode_result(raw), cls=RuntimeEncoder)
    return Response(text, media_type="application/json")


@router.get("/jobs/{jid}/metrics", tags=["jobs"])
def job_metrics(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    rec = _record(ctx, jid)
    usage = float(rec["usage"]) if rec.get("usage") else 0.0
    return {"timestamps": {"created": iso(rec.get("created")), "running": iso(rec.get("running")),
                           "finished": iso(rec.get("finished"))},
            "bss": {"seconds": usage}, "usage": {"seconds": usage, "quantum_seconds": usage},
            "qiskit_version": "", "executions": None}


@router.get("/jobs/{jid}/logs", tags=["jobs"], response_class=PlainTextResponse)
def job_logs(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    rec = _record(ctx, jid)
    lines = [f"job {jid} on {rec.get('backend')}: {IBM_STATUS.get(rec['status'], rec['status'])}"]
    if rec.get("error"):
        lines.append(rec["error"])
    return "\n".join(lines) + "\n"


@router.put("/jobs/{jid}/tags", status_code=204, tags=["jobs"])
def job_tags(jid: str, body: TagsUpdate, ctx: Ctx = Depends(runtime_ctx)):
    _record(ctx, jid)
    ctx.store.redis.hset(ctx.store.keys.job(jid), "api_tags", json.dumps(body.tags))
    return Response(status_code=204)


@router.post("/jobs/{jid}/cancel", status_code=204, tags=["jobs"])
def cancel_job(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    """204: cancelled for good (it never runs). 409: running (it finishes) or already ended."""
    _record(ctx, jid)
    outcome = ctx.store.cancel_job(jid)
    if outcome in ("cancelled", "CANCELLED"):
        return Response(status_code=204)
    if outcome == "not_found":
        raise ApiError(404, f"job {jid!r} does not exist", "not_found")
    if outcome == "running":
        raise ApiError(409, f"job {jid} is running and cannot be cancelled: a running job "
                            "finishes here (only queued jobs can be cancelled)", "job_running")
    raise ApiError(409, f"job {jid} already ended ({IBM_STATUS.get(outcome, outcome)})", "job_final")


@router.delete("/jobs/{jid}", status_code=204, tags=["jobs"])
def delete_job(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    _record(ctx, jid)
    raise ApiError(403, "deleting jobs is not supported: records expire after "
                        "SESSION_BROKER_RESULT_TTL", "not_supported")


# ---------------------------------------------------------------------- jobs: listing
def _ts(value: str | None, name: str) -> float | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name}={value[:40]!r} is not an ISO-8601 time") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


@router.get("/jobs", tags=["jobs"])
def list_jobs(ctx: Ctx = Depends(runtime_ctx), limit: int = Query(10, ge=1, le=200),
              offset: int = Query(0, ge=0), backend: str | None = None,
              pending: bool | None = None, program: str | None = None,
              tags: list[str] | None = Query(None), session_id: str | None = None,
              created_after: str | None = None, created_before: str | None = None,
              sort: str = Query("DESC", pattern="^(ASC|DESC)$"), exclude_params: bool = True):
    """Newest first (``sort=ASC``: oldest first); ``count`` is the exact number that match."""
    after, before = _ts(created_after, "created_after"), _ts(created_before, "created_before")
    store = ctx.store
    if session_id:
        ids = list(reversed(store.session_job_ids(session_id))) if reader_id(session_id) else []
    else:
        ids = store.redis.zrevrange(store.keys.jobs, 0, -1)
    pipe = store.redis.pipeline(transaction=False)
    for jid in ids:
        pipe.hmget(store.keys.job(jid), JOB_FIELDS)
    matched = []
    for jid, values in zip(ids, pipe.execute() if ids else []):
        rec = {f: v for f, v in zip(JOB_FIELDS, values) if v is not None}
        if not rec.get("status"):
            continue
        created = float(rec.get("created") or 0)
        if backend and rec.get("backend") != backend or program and rec.get("primitive") != program:
            continue
        if pending is not None and (rec["status"] not in FINAL_JOB_STATUSES) != pending:
            continue
        if tags and not set(tags) <= set(_tags(rec)):
            continue
        if after is not None and created < after or before is not None and created > before:
            continue
        matched.append((jid, rec))
    if sort == "ASC":
        matched.reverse()
    page = matched[offset:offset + limit]
    return {"jobs": [job_view(j, r) for j, r in page], "count": len(matched),
            "limit": limit, "offset": offset}
