"""The Jobs page (``session-broker web``): a small, read-only view of sessions and jobs.

Pages (all behind HTTP basic auth with Flower's ``user:password``,
``SESSION_BROKER_FLOWER_AUTH``, except ``/healthcheck``):

``/``                sessions (status, backend, pinned worker, time left, job counts),
                     live workers and the newest jobs; refreshes every 2 s
``/session/<id>``    the session's ``Session.details()`` and its jobs
``/job/<id>``        a job: status, timings, attempts, worker, error, result summary
``/metrics``         Prometheus metrics (``session_broker.metrics``), classic text format
``/healthcheck``     "OK" (no auth: ``session-broker up`` and load balancers poll it)

It only reads Redis (HGETALL, LRANGE, TTL, TIME...): it never applies timers or changes
anything, so any number of copies can run. Redis calls run in a small thread pool, so a
slow or unreachable Redis makes a page answer 503, never blocks ``/healthcheck``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import redis
import tornado.web
from prometheus_client import CollectorRegistry, generate_latest

from session_broker import ops
from session_broker.config import get_settings
from session_broker.errors import ConfigurationError, JobNotFoundError, SessionNotFoundError
from session_broker.metrics import BrokerCollector, snapshot
from session_broker.state import FINAL_JOB_STATUSES, Store, iso, redact

log = logging.getLogger("session_broker.web")

HERE = Path(__file__).parent
ID = r"([A-Za-z0-9_.-]{1,64})"
REFRESH_S = 2
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Context:
    """What every handler shares: the store, the credentials, a thread pool, the CSS."""

    def __init__(self, store: Store, auth: str):
        self.store = store
        self.expected = auth.encode()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sb-web")
        self.css = (HERE / "style.css").read_text()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(store))

    def authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)


class Base(tornado.web.RequestHandler):
    auth_required = True

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy",
                        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

    def prepare(self) -> None:
        header = self.request.headers.get("Authorization", "")
        if self.auth_required and not self.ctx.authorized(header):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="session-broker", charset="UTF-8"')
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("401: log in with the Flower user and password (SESSION_BROKER_FLOWER_AUTH)\n")

    async def read(self, fn, *args, **kwargs):
        """Run a blocking Redis read in the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.pool, partial(fn, *args, **kwargs))

    def get_template_namespace(self) -> dict:
        ns = super().get_template_namespace()
        ns.update(css=self.ctx.css, dur=ops.fmt_duration, ts=ops.fmt_time_iso, short_ts=_short_ts,
                  show=_show, badge=_badge, refresh=None, title="session-broker", now=None)
        return ns

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.render("error.html", status=status, message=message,
                    refresh=REFRESH_S if status == 503 else None, title=f"{status} · session-broker")

    def redis_down(self, exc: Exception) -> None:
        log.warning("Redis read failed: %s", exc)
        self.fail(503, f"Redis at {redact(self.ctx.store.settings.url)} did not answer ({exc}); "
                       f"retrying every {REFRESH_S} s.")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {self._reason}\n")


def _show(value) -> str:
    return "-" if value in (None, "") else str(value)


def _short_ts(text: str | None) -> str:
    """'2024-05-01T12:00:03.123Z' -> '05-01 12:00:03' (UTC; the full time is in the title)."""
    return ops.fmt_time_iso(text)[5:] if text else "-"


def _badge(value) -> str:
    """A CSS class for a status or state word."""
    return "st-" + "".join(c for c in str(value or "none").lower() if c.isalnum() or c == "_")


def _overview(store: Store) -> dict:
    sessions = ops.session_rows(store, 100, tick=False)
    workers = ops.worker_rows(store)
    jobs = ops.job_rows(store, limit=25)
    snap = snapshot(store)  # the same numbers as /metrics
    counts = {"open sessions": snap.open_sessions, "jobs queued": snap.queued,
              "jobs running": snap.running, "live workers": snap.live_workers}
    return {"sessions": sessions, "workers": workers, "jobs": jobs, "counts": counts,
            "now": ops.fmt_time_iso(_now_iso(store))}


def _now_iso(store: Store) -> str:
    return iso(ops.server_now(store))


def _session_page(store: Store, sid: str) -> dict:
    details = ops.session_details(store, sid, tick=False)
    return {"details": details, "jobs": ops.job_rows(store, session=sid, limit=500),
            "now": ops.fmt_time_iso(_now_iso(store))}


def _job_page(store: Store, jid: str) -> dict:
    return {"job": ops.job_view(store, jid), "now": ops.fmt_time_iso(_now_iso(store))}


class Index(Base):
    async def get(self) -> None:
        try:
            data = await self.read(_overview, self.ctx.store)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return self.redis_down(exc)
        self.render("index.html", refresh=REFRESH_S, title="Sessions · session-broker", **data)


class SessionPage(Base):
    async def get(self, sid: str) -> None:
        try:
            data = await self.read(_session_page, self.ctx.store, sid)
        except SessionNotFoundError as exc:
            return self.fail(404, str(exc))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return self.redis_down(exc)
        self.render("session.html", refresh=REFRESH_S, title=f"Session {sid} · session-broker", **data)


class JobPage(Base):
    async def get(self, jid: str) -> None:
        try:
            data = await self.read(_job_page, self.ctx.store, jid)
        except JobNotFoundError as exc:
            return self.fail(404, str(exc))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return self.redis_down(exc)
        final = data["job"]["status"] in FINAL_JOB_STATUSES
        self.render("job.html", refresh=None if final else REFRESH_S,
                  title=f"Job {jid} · session-broker", **data)


class Metrics(Base):
    async def get(self) -> None:
        try:
            body = await self.read(generate_latest, self.ctx.registry)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.set_status(503)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            return self.finish(f"Redis did not answer: {exc}\n")
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(body)


class Health(Base):
    auth_required = False

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("OK")


class NotFound(Base):
    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self.fail(404, f"no page at {self.request.path}")


def make_app(store: Store, auth: str) -> tornado.web.Application:
    if not auth or ":" not in auth:
        raise ConfigurationError("the Jobs page needs SESSION_BROKER_FLOWER_AUTH=user:password "
                                 "(the same login as Flower) for HTTP basic auth")
    ctx = Context(store, auth)
    routes = [
        (r"/", Index), (rf"/session/{ID}", SessionPage), (rf"/job/{ID}", JobPage),
        (r"/metrics", Metrics), (r"/healthcheck", Health),
    ]
    return tornado.web.Application(
        [(path, handler, {"ctx": ctx}) for path, handler in routes],
        template_path=str(HERE), autoescape="xhtml_escape", compiled_template_cache=True,
        default_handler_class=NotFound, default_handler_args={"ctx": ctx}, xheaders=False)


async def _run(app: tornado.web.Application, address: str, port: int) -> None:
    try:
        server = app.listen(port, address)
    except OSError as exc:
        raise ConfigurationError(f"the Jobs page cannot listen on {address}:{port}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("Jobs page on http://%s:%d/ (read-only)", address, port)
    print(f"session-broker web: http://{address}:{port}/ (metrics at /metrics)", flush=True)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


def serve(address: str = "127.0.0.1", port: int = 5556) -> None:
    """Run the Jobs page until SIGTERM/SIGINT. Needs ``SESSION_BROKER_FLOWER_AUTH``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if not settings.flower_auth:
        raise ConfigurationError(
            "SESSION_BROKER_FLOWER_AUTH is not set: the Jobs page refuses to start without a login. "
            "Set it to user:password (the same as Flower's; `session-broker up` sets it for you)")
    store = ops.quick_store()
    try:
        store.redis.ping()
    except redis.RedisError as exc:  # serve anyway: pages say 503 until Redis is back
        log.warning("Redis at %s does not answer yet: %s", redact(settings.url), exc)
    app = make_app(store, settings.flower_auth)
    asyncio.run(_run(app, address, port))
