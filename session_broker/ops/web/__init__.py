"""The Jobs page: a read-only console of sessions, jobs and workers, served by the one web
front (``session_broker.ops.front``) beside the REST API and ``/metrics``.

``/`` (filters, search by id, pages; queue-wait and run-time histograms), ``/session/<id>``
(``Session.details()``, a timeline of its jobs), ``/job/<id>`` (record, result plots),
``/events`` (server-sent events: "something changed", so pages update in place without a
reload), ``/metrics``. All behind Flower's basic-auth login except ``/healthcheck``. It only
reads Redis; a Redis that does not answer makes a page say 503, never blocks the front.
Templates are Jinja2; plots are SVG drawn on the server (``ops.plots``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import logging
import math
from pathlib import Path
from urllib.parse import urlencode

import anyio
import jinja2
import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from prometheus_client import CollectorRegistry, generate_latest

from session_broker.core import keys as K
from session_broker.core.connection import redact
from session_broker.core.ids import from_iso, iso, valid_id
from session_broker.core.read import JobQuery, SessionQuery, iter_sessions
from session_broker.core.store import FINAL_JOB_STATUSES, SESSION_STATUS, Store
from session_broker.errors import JobNotFoundError, SessionNotFoundError
from session_broker.ops import commands as ops
from session_broker.ops import plots
from session_broker.ops.metrics import BrokerCollector, bucket_counts, snapshot

log = logging.getLogger("session_broker.ops.web")

HERE = Path(__file__).parent
ID = r"^[A-Za-z0-9_.-]{1,64}$"
REFRESH_S = 2  # how often /events looks for a change (and an error page retries)
EVENTS_MAX_S = 60  # one /events stream ends after this; the browser reconnects by itself
PAGE_SIZE = 25
JOB_STATUSES = ("QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED")
SESSION_STATES = tuple(SESSION_STATUS)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
}
LOGIN_HELP = "401: log in with the Flower user and password (SESSION_BROKER_FLOWER_AUTH)\n"


class NeedLogin(Exception):
    """Raised by the login check; the app answers 401 with a Basic challenge."""


class Pages:
    """What the pages share: the store, the login, the templates, the metrics registry."""

    def __init__(self, store: Store, auth: str):
        self.store = store
        self.expected = auth.encode() if auth else b""
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            dur=ops.fmt_duration, short_ts=_short_ts, show=_show, badge=_badge, refresh=None, now=None
        )
        self.css = (HERE / "style.css").read_text()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(store))

    def check(self, user: str, password: str) -> bool:
        return bool(self.expected) and hmac.compare_digest(f"{user}:{password}".encode(), self.expected)

    def authorized(self, header: str) -> bool:
        """The same check on a raw header (the app's error handlers have no dependency)."""
        scheme, _, value = header.partition(" ")
        if not self.expected or scheme.lower() != "basic" or not value:
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)

    def render(self, name: str, http_status: int = 200, **kwargs) -> HTMLResponse:
        ns = {"css": self.css, "title": "session-broker", "live": False, **kwargs}
        body = self.env.get_template(name).render(**ns)
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


def _now(store: Store) -> str:
    return ops.fmt_time_iso(iso(ops.server_now(store)))


class Filters:
    """The index page's query string: which jobs and sessions, which page of each."""

    def __init__(self, request: Request):
        q = request.query_params

        def pick(name: str, allowed: tuple[str, ...] | None = None) -> str:
            value = (q.get(name) or "").strip()
            if not value or (allowed is not None and value not in allowed) or len(value) > 128:
                return ""
            return value

        self.status = pick("status", JOB_STATUSES)
        self.backend = pick("backend")
        self.session = pick("session") if valid_id(pick("session")) else ""
        self.tag = pick("tag")
        self.instance = pick("instance")
        self.state = pick("state", SESSION_STATES)
        self.jobs_page = _page(q.get("jobs_page"))
        self.sessions_page = _page(q.get("sessions_page"))
        self.given = {k: v for k, v in self.values().items() if v}

    def values(self) -> dict[str, str]:
        return {
            "status": self.status,
            "backend": self.backend,
            "session": self.session,
            "tag": self.tag,
            "instance": self.instance,
            "state": self.state,
        }

    def job_query(self) -> JobQuery:
        return JobQuery(
            session=self.session or None,
            backend=self.backend or None,
            status=self.status or None,
            instance=self.instance or None,
            tags=frozenset([self.tag]) if self.tag else frozenset(),
        )

    def session_query(self) -> SessionQuery:
        return SessionQuery(state=self.state or None, backend=self.backend or None)

    def link(self, **change) -> str:
        """This page's URL with some parameters changed (a pager's or a filter's link)."""
        params = {**self.given, **{k: str(v) for k, v in change.items() if v not in (None, "", 0)}}
        for k, v in change.items():
            if v in (None, "", 0):
                params.pop(k, None)
        return "/?" + urlencode(params) if params else "/"


def _page(text: str | None) -> int:
    try:
        return max(0, min(int(text or 0), 10_000))
    except ValueError:
        return 0


def _overview(store: Store, f: Filters) -> dict:
    sids = list(
        itertools.islice(
            iter_sessions(store, f.session_query()),
            f.sessions_page * PAGE_SIZE,
            (f.sessions_page + 1) * PAGE_SIZE + 1,
        )
    )
    sessions = ops.session_rows(store, tick=False, ids=sids[:PAGE_SIZE])
    jobs = ops.job_rows(store, query=f.job_query(), offset=f.jobs_page * PAGE_SIZE, limit=PAGE_SIZE + 1)
    snap = snapshot(store)  # the same numbers as /metrics
    instances = snap.instances and ops.instance_rows(store)
    return {
        "sessions": sessions,
        "sessions_more": len(sids) > PAGE_SIZE,
        "jobs": jobs[:PAGE_SIZE],
        "jobs_more": len(jobs) > PAGE_SIZE,
        "workers": ops.worker_rows(store),
        "counts": {
            "open sessions": snap.open_sessions,
            "jobs queued": snap.queued,
            "jobs running": snap.running,
            "live workers": snap.live_workers,
        },
        "histograms": {
            "queue wait": plots.histogram(
                K.HISTOGRAM_BOUNDS, bucket_counts(snap.histograms.get("queue_wait", {})), "queue wait"
            ),
            "run time": plots.histogram(
                K.HISTOGRAM_BOUNDS, bucket_counts(snap.histograms.get("execution", {})), "run time"
            ),
        },
        "backends": sorted({w.get("backend") or "" for w in ops.worker_rows(store)} - {""}),
        "instances": instances,
        "instance_usage": plots.usage_lines(
            ops.instance_usage_points(store) if instances else {},
            ops.server_now(store),
            "usage of each instance over its newest finished jobs",
        ),
        "now": _now(store),
    }


_basic = HTTPBasic(auto_error=False, realm="session-broker")


def pages(request: Request, given: HTTPBasicCredentials | None = Depends(_basic)) -> Pages:
    """The login check every page makes (a dependency, so no page can forget it). FastAPI's
    ``HTTPBasic`` reads the header (a malformed one is its 401); we compare in constant time."""
    p: Pages = request.app.state.front.pages
    if given is None or not p.check(given.username, given.password):
        raise NeedLogin()
    return p


router = APIRouter(include_in_schema=True, tags=["jobs page"])


@router.get("/", response_class=HTMLResponse)
def index(request: Request, p: Pages = Depends(pages), q: str = Query("", max_length=128)):
    """The console. ``q``: a job or session id to open; the other parameters filter."""
    q = q.strip()
    try:
        if q:
            if valid_id(q) and p.store.job(q):
                return RedirectResponse(f"/job/{q}", status_code=303)
            if valid_id(q) and p.store.redis.exists(p.store.keys.session(q)):
                return RedirectResponse(f"/session/{q}", status_code=303)
        f = Filters(request)
        data = _overview(p.store, f)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return p.redis_down(exc)
    return p.render(
        "index.html",
        live=True,
        title="Sessions · session-broker",
        f=f,
        q=q,
        not_found=q or None,
        job_statuses=JOB_STATUSES,
        session_states=SESSION_STATES,
        **data,
    )


@router.get("/session/{sid}", response_class=HTMLResponse)
def session_page(sid: str = PathParam(pattern=ID), p: Pages = Depends(pages)):
    try:
        details = ops.session_details(p.store, sid, tick=False)
        jobs = ops.job_rows(p.store, session=sid, limit=500)
        now = ops.server_now(p.store)
        spans = [_span(p.store, j) for j in reversed(jobs)]
        data = {
            "details": details,
            "jobs": jobs,
            "timeline": plots.timeline([s for s in spans if s], now, f"session {sid}: its jobs over time"),
            "now": _now(p.store),
        }
    except SessionNotFoundError as exc:
        return p.fail(404, str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return p.redis_down(exc)
    return p.render("session.html", live=True, title=f"Session {sid} · session-broker", **data)


def _span(store: Store, row: dict) -> plots.Span | None:
    def seconds(text: str | None) -> float | None:
        return None if not text else from_iso(text)

    created = seconds(row.get("created"))
    if created is None:
        return None
    return plots.Span(
        row["id"], row["status"], created, seconds(row.get("running")), seconds(row.get("finished"))
    )


@router.get("/job/{jid}", response_class=HTMLResponse)
def job_page(jid: str = PathParam(pattern=ID), p: Pages = Depends(pages)):
    try:
        job = ops.job_view(p.store, jid, with_result=False)
        rec = p.store.job(jid) if job["status"] == "DONE" else {}
        if rec.get("result"):
            job["result"] = ops.result_summary(rec["result"], top=256, bars=33)
        data = {"job": job, "now": _now(p.store)}
    except JobNotFoundError as exc:
        return p.fail(404, str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return p.redis_down(exc)
    r = job.get("result") or {}
    plot = None
    if r.get("kind") == "sampler" and r.get("bars"):
        plot = plots.bar_chart([(k, v) for k, v in r["bars"]], f"counts of register {r['register']}")
    elif r.get("kind") == "estimator":
        r["evs_shape_text"] = str(tuple(r["evs_shape"]))
        r["evs_total"] = math.prod(r["evs_shape"])
        evs = [v for v in r.get("evs", []) if isinstance(v, (int, float))]
        stds = [v for v in (r.get("stds") or []) if isinstance(v, (int, float))] or None
        plot = plots.series(evs, stds, "expectation values", "index in the PUB (parameters × observables)")
    final = job["status"] in FINAL_JOB_STATUSES
    return p.render("job.html", live=not final, title=f"Job {jid} · session-broker", plot=plot, **data)


@router.get("/events", include_in_schema=False)
async def events(request: Request, p: Pages = Depends(pages)):
    """Server-sent events: a ``change`` whenever the broker's counters move (a job submitted,
    started, ended; a worker came or went; a session opened or changed state), and at least
    every 10 s (timers count down). The page then fetches itself and swaps its content."""

    def fingerprint() -> str:
        r, k = p.store.redis, p.store.keys
        pipe = r.pipeline(transaction=False)
        pipe.hgetall(k.counts)
        pipe.hget(k.histogram("queue_wait"), "count")
        pipe.hlen(k.workers)
        pipe.zcard(k.sessions)
        return repr(pipe.execute())

    async def stream():
        yield f"retry: {REFRESH_S * 1000}\n\n"
        last, quiet = None, 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < EVENTS_MAX_S:
            if await request.is_disconnected():
                return
            try:
                now = await anyio.to_thread.run_sync(fingerprint)
            except redis.RedisError:
                now = "redis-down"
            if now != last or quiet >= 10:
                if last is not None:
                    yield "event: change\ndata: {}\n\n"
                last, quiet = now, 0.0
            else:
                yield ": idle\n\n"  # a comment: keeps proxies from closing the stream
            await asyncio.sleep(REFRESH_S / 2)
            quiet += REFRESH_S / 2

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/static/console.js", include_in_schema=False)
def console_js(_p: Pages = Depends(pages)):
    return Response(
        (HERE / "console.js").read_text(),
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(p: Pages = Depends(pages)):
    try:
        body = generate_latest(p.registry)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return PlainTextResponse(f"Redis did not answer: {exc}\n", status_code=503)
    return Response(body, media_type=METRICS_CONTENT_TYPE, headers={"Cache-Control": "no-store"})
