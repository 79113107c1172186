"""The Jobs page: a small, read-only view of sessions and jobs, served by the one web front
(``session_broker.ops.front``) beside the REST API and ``/metrics``.

Pages (all behind HTTP basic auth with Flower's ``user:password``,
``SESSION_BROKER_FLOWER_AUTH``, except ``/healthcheck``):

``/``                sessions (status, backend, pinned worker, time left, job counts),
                     live workers and the newest jobs; refreshes every 2 s
``/session/<id>``    the session's ``Session.details()`` and its jobs
``/job/<id>``        a job: status, timings, attempts, worker, error, result summary
``/metrics``         Prometheus metrics (``session_broker.ops.metrics``), classic text format

It only reads Redis (HGETALL, LRANGE, TTL, TIME...): it never applies timers or changes
anything. Routes are plain functions, which FastAPI runs in its thread pool, so a slow or
unreachable Redis makes a page answer 503 and never blocks ``/healthcheck``. The templates
are Tornado templates (Tornado comes with Flower), rendered without a Tornado server.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from pathlib import Path

import redis
import tornado.template
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest

from session_broker.core.connection import redact
from session_broker.core.ids import iso
from session_broker.core.store import FINAL_JOB_STATUSES, Store
from session_broker.errors import JobNotFoundError, SessionNotFoundError
from session_broker.ops import commands as ops
from session_broker.ops.metrics import BrokerCollector, snapshot

log = logging.getLogger("session_broker.ops.web")

HERE = Path(__file__).parent
ID = r"^[A-Za-z0-9_.-]{1,64}$"
REFRESH_S = 2
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
LOGIN_HELP = "401: log in with the Flower user and password (SESSION_BROKER_FLOWER_AUTH)\n"


class NeedLogin(Exception):
    """Raised by the login check; the app answers 401 with a Basic challenge."""


class Pages:
    """What the pages share: the store, the login, the templates, the metrics registry."""

    def __init__(self, store: Store, auth: str):
        self.store = store
        self.expected = auth.encode() if auth else b""
        self.loader = tornado.template.Loader(str(HERE), autoescape="xhtml_escape")
        self.css = (HERE / "style.css").read_text()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(store))

    def authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if not self.expected or scheme.lower() != "basic" or not value:
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)

    def render(self, name: str, http_status: int = 200, **kwargs) -> HTMLResponse:
        ns = dict(
            css=self.css,
            dur=ops.fmt_duration,
            ts=ops.fmt_time_iso,
            short_ts=_short_ts,
            show=_show,
            badge=_badge,
            refresh=None,
            title="session-broker",
            now=None,
        )
        ns.update(kwargs)
        loader = self.loader

        class Modules:  # what `{% module Template(...) %}` calls
            @staticmethod
            def Template(sub: str, **more):  # noqa: N802 - Tornado's name
                return loader.load(sub).generate(**{**ns, **more, "_tt_modules": Modules})

        body = loader.load(name).generate(**ns, _tt_modules=Modules)
        return HTMLResponse(body, status_code=http_status, headers=SECURITY_HEADERS)

    def fail(self, status: int, message: str) -> HTMLResponse:
        return self.render(
            "error.html",
            http_status=status,
            status=status,
            message=message,
            refresh=REFRESH_S if status == 503 else None,
            title=f"{status} · session-broker",
        )

    def redis_down(self, exc: Exception) -> HTMLResponse:
        log.warning("Redis read failed: %s", exc)
        return self.fail(
            503,
            f"Redis at {redact(self.store.settings.url)} did not answer ({exc}); "
            f"retrying every {REFRESH_S} s.",
        )


def _show(value) -> str:
    return "-" if value in (None, "") else str(value)


def _short_ts(text: str | None) -> str:
    """'2024-05-01T12:00:03.123Z' -> '05-01 12:00:03' (UTC; the full time is in the title)."""
    return ops.fmt_time_iso(text)[5:] if text else "-"


def _badge(value) -> str:
    """A CSS class for a status or state word."""
    return "st-" + "".join(c for c in str(value or "none").lower() if c.isalnum() or c == "_")


def _now_iso(store: Store) -> str:
    return iso(ops.server_now(store))


def _overview(store: Store) -> dict:
    sessions = ops.session_rows(store, 100, tick=False)
    workers = ops.worker_rows(store)
    jobs = ops.job_rows(store, limit=25)
    snap = snapshot(store)  # the same numbers as /metrics
    counts = {
        "open sessions": snap.open_sessions,
        "jobs queued": snap.queued,
        "jobs running": snap.running,
        "live workers": snap.live_workers,
    }
    return {
        "sessions": sessions,
        "workers": workers,
        "jobs": jobs,
        "counts": counts,
        "now": ops.fmt_time_iso(_now_iso(store)),
    }


def pages(request: Request) -> Pages:
    """The login check every page makes (a dependency, so no page can forget it)."""
    p: Pages = request.app.state.front.pages
    if not p.authorized(request.headers.get("authorization", "")):
        raise NeedLogin()
    return p


router = APIRouter(include_in_schema=True, tags=["jobs page"])


@router.get("/", response_class=HTMLResponse)
def index(p: Pages = Depends(pages)):
    try:
        data = _overview(p.store)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return p.redis_down(exc)
    return p.render("index.html", refresh=REFRESH_S, title="Sessions · session-broker", **data)


@router.get("/session/{sid}", response_class=HTMLResponse)
def session_page(sid: str = PathParam(pattern=ID), p: Pages = Depends(pages)):
    try:
        details = ops.session_details(p.store, sid, tick=False)
        data = {
            "details": details,
            "jobs": ops.job_rows(p.store, session=sid, limit=500),
            "now": ops.fmt_time_iso(_now_iso(p.store)),
        }
    except SessionNotFoundError as exc:
        return p.fail(404, str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return p.redis_down(exc)
    return p.render("session.html", refresh=REFRESH_S, title=f"Session {sid} · session-broker", **data)


@router.get("/job/{jid}", response_class=HTMLResponse)
def job_page(jid: str = PathParam(pattern=ID), p: Pages = Depends(pages)):
    try:
        data = {"job": ops.job_view(p.store, jid), "now": ops.fmt_time_iso(_now_iso(p.store))}
    except JobNotFoundError as exc:
        return p.fail(404, str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return p.redis_down(exc)
    final = data["job"]["status"] in FINAL_JOB_STATUSES
    return p.render(
        "job.html", refresh=None if final else REFRESH_S, title=f"Job {jid} · session-broker", **data
    )


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(p: Pages = Depends(pages)):
    try:
        body = generate_latest(p.registry)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return PlainTextResponse(f"Redis did not answer: {exc}\n", status_code=503)
    return Response(body, media_type=METRICS_CONTENT_TYPE, headers={"Cache-Control": "no-store"})
