"""The Qiskit Runtime routes for backends, usage and sessions, and the check every runtime
route makes (``runtime_ctx``). Jobs are in ``jobs.py``. Both routers are mounted at
``/api/v1`` and ``/experimental/api/v1`` (the client's URL resolver leaves the latter alone).

Each route is a thin call into the Python API: ``Session``/``Batch`` for sessions (IBM's
``dedicated`` mode is our session; its ``PATCH accepting_jobs=false`` is our ``close()`` and
its ``DELETE .../close`` is our ``cancel()``), the catalog and live workers for backends.
"""

from __future__ import annotations

import functools
import logging

import anyio
from fastapi import APIRouter, Depends, Request, Response

from session_broker import backends as catalog
from session_broker.api import devices
from session_broker.api.errors import ApiError, from_broker_error
from session_broker.api.models import SessionCreate, SessionUpdate
from session_broker.core.ids import valid_id
from session_broker.errors import SessionBrokerError, UnknownInstanceError
from session_broker.session import Batch, Session

log = logging.getLogger("session_broker.api")


class Ctx:
    """What a runtime route gets after the token and Service-CRN check."""

    def __init__(self, request: Request):
        front = request.app.state.front
        key = front.authority.check_request(request)
        self.front = front
        named = request.state.instance
        if key.instance and named and named != key.instance:
            raise ApiError(
                403,
                f"this API key is tied to instance {key.instance!r}; Service-CRN names {named!r}",
                "instance_mismatch",
            )
        self.instance = key.instance or named
        try:
            self.service = front.tenants.service(key.prefix, self.instance)
        except UnknownInstanceError as exc:
            raise ApiError(403, str(exc), "instance_not_found") from None
        if named and not self.service._instance:  # no instance configured: only the server's CRN
            raise ApiError(
                403,
                f"Service-CRN does not name this server's instance; the instance here is {front.api.instance}",
                "instance_mismatch",
            )
        self.store = self.service._store


async def runtime_ctx(request: Request) -> Ctx:
    """The check as an ``async`` dependency: it does no blocking I/O once the secret is
    known, and FastAPI would run a plain one in the thread pool (one more hop per request)."""
    front = request.app.state.front
    if front.authority._secret is None:  # first request only: the secret comes from Redis
        await anyio.to_thread.run_sync(front.authority.secret)
    return Ctx(request)


def broker_errors(fn):
    """Our typed errors (raised before anything is queued) -> 4xx."""

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
    name = catalog.ALIASES.get(name, name)
    if name not in catalog.CATALOG:
        raise ApiError(
            404,
            f"unknown backend {name[:64]!r}; known backends: {', '.join(catalog.known_backends())}",
            "backend_not_found",
        )
    return name


def _calibrated(name: str, calibration_id: str | None) -> str:
    """``name``, if ``calibration_id`` is absent or its one calibration's (IBM answers an
    unknown calibration id with an error, not the current calibration)."""
    name = _known(name)
    if calibration_id is not None and calibration_id != catalog.calibration_id(name):
        raise ApiError(
            404,
            f"calibration {calibration_id[:64]!r} of backend {name!r} does not exist; it has one "
            f"calibration, {catalog.calibration_id(name)!r} (its snapshot), or omit calibration_id",
            "calibration_not_found",
        )
    return name


@router.get("/backends/{name}/configuration", tags=["backends"])
def backend_configuration(name: str, ctx: Ctx = Depends(runtime_ctx), calibration_id: str | None = None):
    return devices.configuration(_calibrated(name, calibration_id))


@router.get("/backends/{name}/properties", tags=["backends"])
def backend_properties(name: str, ctx: Ctx = Depends(runtime_ctx), calibration_id: str | None = None):
    return devices.properties(_calibrated(name, calibration_id))


@router.get("/backends/{name}/status", tags=["backends"])
@broker_errors
def backend_status(name: str, ctx: Ctx = Depends(runtime_ctx)):
    return devices.status(ctx.store, _known(name))


@router.get("/instances/usage", tags=["instances"])
def instance_usage(ctx: Ctx = Depends(runtime_ctx)):
    if ctx.service._instance:  # IBM's fields for the instance, in its current period
        usage = ctx.service.usage()
        return {
            "instance_id": ctx.front.authority.crn_of(ctx.service._instance),
            "plan_id": "session-broker",
            **usage,
        }
    used = ctx.store.usage_seconds()  # every job's run time (the execution histogram's sum)
    return {
        "instance_id": ctx.front.api.instance,
        "plan_id": "session-broker",
        "usage_consumed_seconds": used,
        "usage_limit_seconds": None,
        "usage_allocation_seconds": None,
        "usage_remaining_seconds": None,
        "usage_limit_reached": False,
        "usage_period": None,
    }


# ---------------------------------------------------------------------- sessions
def session_of(ctx: Ctx, sid: str) -> Session:
    if not valid_id(sid):
        raise ApiError(404, f"session {sid[:64]!r} does not exist", "not_found")
    return Session.from_id(sid, service=ctx.service)


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
        "id": d["id"],
        "backend_name": d["backend_name"],
        "state": d["state"],
        "accepting_jobs": d["accepting_jobs"],
        "interactive_ttl": d["interactive_timeout"],
        "max_ttl": d["max_time"],
        "active_ttl": d["active_timeout"],
        "last_job_started": d["last_job_started"],
        "last_job_completed": d["last_job_completed"],
        "started_at": started,
        "activated_at": started,
        "closed_at": d["closed_at"],
        "mode": "batch" if d["mode"] == "batch" else "dedicated",
        "elapsed_time": d["usage_time"],
        "timestamps": [{"status": "active", "timestamp": started}] if started else [],
        "jobs": d["jobs"],
        "worker": d["worker"],
        "closed_reason": d["closed_reason"],
    }


@router.get("/sessions/{sid}", tags=["sessions"])
@broker_errors
def get_session(sid: str, ctx: Ctx = Depends(runtime_ctx)):
    return _session_view(session_of(ctx, sid))


@router.patch("/sessions/{sid}", status_code=204, tags=["sessions"])
@broker_errors
def update_session(sid: str, body: SessionUpdate, ctx: Ctx = Depends(runtime_ctx)):
    """``accepting_jobs: false`` = our ``close()``: queued and running jobs still finish."""
    if body.accepting_jobs:
        raise ApiError(400, "a session can only stop accepting jobs (accepting_jobs: false)")
    session_of(ctx, sid).close()
    return Response(status_code=204)


@router.delete("/sessions/{sid}/close", status_code=204, tags=["sessions"])
@broker_errors
def cancel_session(sid: str, ctx: Ctx = Depends(runtime_ctx)):
    """IBM's ``close`` route is the client's ``cancel()``: queued jobs are cancelled."""
    session_of(ctx, sid).cancel()
    return Response(status_code=204)
