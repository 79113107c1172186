"""The Qiskit Runtime job routes: submit, status, results, cancel, listing.

Submitting builds our ``SamplerV2``/``EstimatorV2`` with ``mode=`` the session, batch or
backend and calls ``.run(pubs)``: the one submit path, one record per job whichever door it
came in by. Rules the stock client needs (``shared/reference/runtime-rest-api.md``): states
in IBM's words (``Queued``, ``Running``, ``Completed``, ``Failed``, ``Cancelled``); a job
stopped by ``max_execution_time`` is ``Cancelled`` with reason_code 1305; a failed job's
results answer 200 with its error text; ``count`` in a listing is exact; a status poll is
held on the job's completion latch; and nothing after a job was recorded answers 5xx (the
client retries a 5xx POST, which would submit twice).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import PlainTextResponse
from qiskit_ibm_runtime import RuntimeEncoder

from session_broker import backends as catalog
from session_broker.api import reader
from session_broker.api.errors import ApiError, from_broker_error
from session_broker.api.limits import check_tags
from session_broker.api.models import JobCreate, TagsUpdate
from session_broker.api.runtime import Ctx, _calibrated, runtime_ctx, session_of
from session_broker.core import codec
from session_broker.core.ids import iso, valid_id
from session_broker.core.read import JobQuery, iter_jobs
from session_broker.core.store import FINAL_JOB_STATUSES
from session_broker.errors import ErrorCode, SessionBrokerError
from session_broker.executor import Executor
from session_broker.primitives import EstimatorV2, SamplerV2

log = logging.getLogger("session_broker.api")

IBM_STATUS = {
    "INITIALIZING": "Queued",
    "QUEUED": "Queued",
    "RUNNING": "Running",
    "DONE": "Completed",
    "ERROR": "Failed",
    "CANCELLED": "Cancelled",
}
REASON_MAX_EXECUTION_TIME = 1305
JOB_FIELDS = (
    "status",
    "backend",
    "session",
    "primitive",
    "created",
    "running",
    "finished",
    "error_code",
    "error",
    "summary",
    "usage",
    "api_private",
    "mode",
)
PROGRAMS = {"sampler": SamplerV2, "estimator": EstimatorV2}
HOLD_S = 0.1

router = APIRouter()


# ---------------------------------------------------------------------- jobs: submit
@router.post("/jobs", tags=["jobs"])
def create_job(body: JobCreate, ctx: Ctx = Depends(runtime_ctx)):
    if body.calibration_id is not None and body.backend:  # as GET .../configuration: IBM errors
        _calibrated(catalog.ALIASES.get(body.backend, body.backend), body.calibration_id)
    if body.program_id == "executor":
        return create_executor_job(body, ctx)
    primitive_cls = PROGRAMS.get(body.program_id)
    if primitive_cls is None:
        raise ApiError(
            400,
            f"program {body.program_id[:64]!r} is not served here; programs: "
            "sampler, estimator (SamplerV2/EstimatorV2), executor (Executor, QuantumProgram)",
            "unknown_program",
        )
    pubs, options = reader.read_params(body.program_id, body.params)
    if body.cost is not None:
        options["max_execution_time"] = body.cost
    # the tags go in with the job (its summary), where job.tags, update_tags and
    # service.jobs(job_tags=) find them: one job, one set of tags, whichever door
    env = options.get("environment")
    if env is not None and not isinstance(env, dict):
        raise ApiError(400, "options.environment must be an object", "invalid_options")
    tags = body.tags if body.tags is not None else (env or {}).get("job_tags")
    options["environment"] = {**(env or {}), "job_tags": _checked_tags(ctx, tags)}
    try:
        if body.session_id:
            mode = session_of(ctx, body.session_id)
            if body.backend and catalog.ALIASES.get(body.backend, body.backend) != mode.backend():
                raise ApiError(
                    400,
                    f"backend {body.backend[:64]!r} differs from the session's backend {mode.backend()!r}",
                    "backend_mismatch",
                )
        else:
            if not body.backend:
                raise ApiError(400, "a job outside a session needs a backend", "missing_backend")
            mode = ctx.service.backend(body.backend)
        job = primitive_cls(mode=mode, options=options).run(pubs)
    except SessionBrokerError as exc:
        raise from_broker_error(exc) from None
    except (TypeError, ValueError, AttributeError) as exc:  # options our primitives refuse
        raise ApiError(400, f"options not accepted: {str(exc)[:300]}", "invalid_options") from None
    return _recorded(ctx, body, job.job_id(), body.backend or mode.backend())


def _recorded(ctx: Ctx, body: JobCreate, jid: str, backend: str) -> dict:
    """The answer to a submit, once the job is recorded, whatever its program: its private
    flag and its params as submitted go beside the record, so that ``GET /jobs/{id}``
    returns them (``job.inputs``), as IBM's API does, queued or ended."""
    # the job is recorded: from here on, never an error status (a retry would submit twice)
    try:
        ctx.store.redis.hset(
            ctx.store.keys.job(jid),
            mapping={"api_private": "1" if body.private else "0", "api_params": json.dumps(body.params)},
        )
    except Exception:  # noqa: BLE001 - cosmetic next to the job, which is what matters
        log.warning("could not store the private flag and params of job %s", jid, exc_info=True)
    return {"id": jid, "backend": backend, "session_id": body.session_id}


def create_executor_job(body: JobCreate, ctx: Ctx) -> dict:
    """Program ``executor``: the params are IBM's ``ParamsModel`` v2.0 JSON, checked by the
    worker's own decoder (``Executor.submit_params``) before anything is queued; the job's
    tags and ``cost`` (its max_execution_time) come as the client sends them, at the top."""
    options = {"environment": {"job_tags": _checked_tags(ctx, body.tags)}, "max_execution_time": body.cost}
    try:
        if body.session_id:
            mode = session_of(ctx, body.session_id)
            if body.backend and body.backend != mode.backend():
                raise ApiError(
                    400, f"backend {body.backend[:64]!r} differs from the session's", "backend_mismatch"
                )
        elif body.backend:
            mode = ctx.service.backend(body.backend)
        else:
            raise ApiError(400, "a job outside a session needs a backend", "missing_backend")
        job = Executor(mode=mode, options=options).submit_params(body.params)
    except SessionBrokerError as exc:
        raise from_broker_error(exc) from None
    except (TypeError, ValueError) as exc:  # options IBM's ExecutorOptions refuses
        raise ApiError(400, f"options not accepted: {str(exc)[:300]}", "invalid_options") from None
    return _recorded(ctx, body, job.job_id(), body.backend or mode.backend())


# ---------------------------------------------------------------------- jobs: read
def _record(ctx: Ctx, jid: str, hold: bool = False) -> dict:
    if not valid_id(jid):
        raise ApiError(404, f"job {jid[:64]!r} does not exist", "not_found")
    rec = ctx.store.job(jid, *JOB_FIELDS)
    if not rec.get("status"):
        raise ApiError(404, f"job {jid!r} does not exist (or its record expired)", "not_found")
    if hold and rec["status"] not in FINAL_JOB_STATUSES:
        # hold the poll on the job's latch: the answer comes the moment the job ends
        rec = ctx.store.wait_job(jid, HOLD_S, *JOB_FIELDS) or rec
    return rec


def _checked_tags(ctx: Ctx, tags) -> list[str]:
    api = ctx.front.api
    return check_tags(tags, api.max_tags, api.max_tag_length)


def _summary(rec: dict) -> dict:
    try:
        summary = json.loads(rec.get("summary") or "{}")
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _tags(summary: dict) -> list:
    """The job's tags, as ``job.tags`` reads them (Redis's cjson writes [] as {})."""
    tags = summary.get("tags") or []
    return tags if isinstance(tags, list) else []


def job_view(jid: str, rec: dict) -> dict:
    status = rec["status"]
    word = IBM_STATUS.get(status, "Queued")
    reason, code = None, None
    if status == "ERROR" and rec.get("error_code") == ErrorCode.MAX_EXECUTION_TIME.value:
        word, code = "Cancelled", REASON_MAX_EXECUTION_TIME
        reason = rec.get("error") or "ran longer than its max_execution_time"
    elif status in ("ERROR", "CANCELLED"):
        reason = rec.get("error") or None
    summary = _summary(rec)
    usage = float(rec["usage"]) if rec.get("usage") else 0.0
    return {
        "id": jid,
        "backend": rec.get("backend"),
        "status": word,
        "state": {"status": word, "reason": reason, "reason_code": code},
        "program": {"id": rec.get("primitive")},
        "created": iso(rec.get("created")),
        "session_id": rec.get("session") or None,
        "tags": _tags(summary),
        "private": rec.get("api_private") == "1",
        "runtime": "",
        "user_id": "session-broker",
        "estimated_running_time_seconds": None,
        "cost": 0,
        "usage": {"seconds": usage, "quantum_seconds": usage},
        "summary": summary,
    }


@router.get("/jobs/{jid}", tags=["jobs"])
def get_job(jid: str, ctx: Ctx = Depends(runtime_ctx), exclude_params: bool = False):
    """IBM's job, with its ``params`` as submitted unless ``exclude_params=true`` (over REST;
    a job submitted through the Python API has ``{}`` here: its inputs are ``job.inputs``
    there)."""
    view = job_view(jid, _record(ctx, jid, hold=True))
    if not exclude_params:
        raw = ctx.store.job(jid, "api_params").get("api_params")
        try:
            view["params"] = json.loads(raw) if raw else {}
        except ValueError:
            view["params"] = {}
    return view


@router.get("/jobs/{jid}/results", tags=["jobs"])
def job_results(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    rec = _record(ctx, jid)
    status = rec["status"]
    if status in ("ERROR", "CANCELLED"):
        return PlainTextResponse(rec.get("error") or f"job {jid} was {status.lower()}")
    if status != "DONE":
        raise ApiError(
            409,
            f"job {jid} is {IBM_STATUS.get(status, status)}: results exist once it is Completed",
            "job_not_final",
        )
    raw = ctx.store.job(jid, "result").get("result")
    if raw is None:
        raise ApiError(404, f"the result of job {jid} has expired", "not_found")
    # private=True: IBM's results can be read once (its client tests rely on it)
    if rec.get("api_private") == "1" and not ctx.store.redis.hsetnx(ctx.store.keys.job(jid), "api_read", "1"):
        raise ApiError(
            404,
            f"job {jid} is private (private=True): its results were read once and are not kept",
            "not_found",
        )
    if rec.get("primitive") == "executor":  # IBM's QuantumProgramResultModel: the client decodes it
        return Response(raw, media_type="application/json")
    text = json.dumps(codec.decode_result(raw), cls=RuntimeEncoder)
    return Response(text, media_type="application/json")


@router.get("/jobs/{jid}/metrics", tags=["jobs"])
def job_metrics(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    rec = _record(ctx, jid)
    usage = float(rec["usage"]) if rec.get("usage") else 0.0
    return {
        "timestamps": {
            "created": iso(rec.get("created")),
            "running": iso(rec.get("running")),
            "finished": iso(rec.get("finished")),
        },
        "bss": {"seconds": usage},
        "usage": {"seconds": usage, "quantum_seconds": usage},
        "qiskit_version": "",
        "executions": None,
    }


@router.get("/jobs/{jid}/logs", tags=["jobs"], response_class=PlainTextResponse)
def job_logs(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    rec = _record(ctx, jid)
    lines = [f"job {jid} on {rec.get('backend')}: {IBM_STATUS.get(rec['status'], rec['status'])}"]
    if rec.get("error"):
        lines.append(rec["error"])
    return "\n".join(lines) + "\n"


@router.put("/jobs/{jid}/tags", status_code=204, tags=["jobs"])
def job_tags(jid: str, body: TagsUpdate, ctx: Ctx = Depends(runtime_ctx)):
    """``job.update_tags()``: the Store's atomic replace, the one the Python API calls."""
    tags = _checked_tags(ctx, body.tags)
    _record(ctx, jid)
    if ctx.store.update_tags(jid, tags) == "not_found":
        raise ApiError(404, f"job {jid!r} does not exist (or its record expired)", "not_found")
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
        raise ApiError(
            409,
            f"job {jid} is running and cannot be cancelled: a running job "
            "finishes here (only queued jobs can be cancelled)",
            "job_running",
        )
    raise ApiError(409, f"job {jid} already ended ({IBM_STATUS.get(outcome, outcome)})", "job_final")


@router.delete("/jobs/{jid}", status_code=204, tags=["jobs"])
def delete_job(jid: str, ctx: Ctx = Depends(runtime_ctx)):
    _record(ctx, jid)
    raise ApiError(
        403, "deleting jobs is not supported: records expire after SESSION_BROKER_RESULT_TTL", "not_supported"
    )


# ---------------------------------------------------------------------- jobs: listing
def _ts(value: str | None, name: str) -> float | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name}={value[:40]!r} is not an ISO-8601 time") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@router.get("/jobs", tags=["jobs"])
def list_jobs(
    ctx: Ctx = Depends(runtime_ctx),
    limit: int = Query(10, ge=1, le=200),
    offset: int = Query(0, ge=0),
    backend: str | None = None,
    pending: bool | None = None,
    program: str | None = None,
    tags: list[str] | None = Query(None),
    session_id: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    sort: str = Query("DESC", pattern="^(ASC|DESC)$"),
    exclude_params: bool = True,
):
    """Newest first (``sort=ASC``: oldest first); ``count`` is the exact number that match."""
    after, before = _ts(created_after, "created_after"), _ts(created_before, "created_before")
    if session_id and not valid_id(session_id):
        matched: list[tuple[str, dict]] = []
    else:
        query = JobQuery(
            session=session_id,
            backend=backend,
            program=program,
            pending=pending,
            tags=frozenset(tags or ()),
            after=after,
            before=before,
            newest_first=sort != "ASC",
        )
        matched = list(iter_jobs(ctx.store, query, JOB_FIELDS))
    page = matched[offset : offset + limit]
    return {
        "jobs": [job_view(j, r) for j, r in page],
        "count": len(matched),
        "limit": limit,
        "offset": offset,
    }
