"""The web front: IBM's REST API (``session_broker.api``), the Jobs page and ``/metrics`` in
one FastAPI app, run with uvicorn.

Why FastAPI + uvicorn: request bodies are validated by pydantic models before route code
runs (a wrong field is a 400 that names it), the OpenAPI document that the fuzz test walks
comes for free (``/openapi.json``, ``/docs``), plain ``def`` routes run in a thread pool so
Redis calls never block the event loop, and uvicorn does TLS and graceful shutdown.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import fastapi_offline
import redis
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from session_broker.api import identity, jobs, runtime
from session_broker.api.auth import Authority
from session_broker.api.errors import ApiError, error_response, from_broker_error
from session_broker.api.limits import RequestGuard, guarded_protocol
from session_broker.api.settings import ApiSettings, load_api_settings
from session_broker.api.tenants import Tenants
from session_broker.core.config import get_settings
from session_broker.core.store import Store
from session_broker.errors import ConfigurationError, SessionBrokerError
from session_broker.ops import commands as ops
from session_broker.ops import web

log = logging.getLogger("session_broker.api")
# Swagger UI's files, as fastapi-offline ships them (the /docs page must work offline)
SWAGGER_DIR = Path(fastapi_offline.__file__).parent / "static"
SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
API_PREFIXES = ("/api/", "/experimental/", "/identity/", "/v3/")


class Front:
    """Everything the routes share (``app.state.front``)."""

    def __init__(self, store: Store, api: ApiSettings, flower_auth: str):
        self.store = store
        self.api = api
        self.authority = Authority(api, store.redis, f"{store.p}:api:secret")
        self.tenants = Tenants(store.settings, store.redis)
        self.pages = web.Pages(store, flower_auth)


def _is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def create_app(store: Store, api: ApiSettings, flower_auth: str) -> FastAPI:
    app = FastAPI(
        title="session-broker",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="The Qiskit Runtime REST API over session-broker, the Jobs page and Prometheus metrics.",
    )
    app.state.front = Front(store, api, flower_auth)
    app.add_middleware(
        RequestGuard,
        job_limit=api.max_body_bytes,
        limit=api.max_request_bytes,
        read_timeout=api.read_timeout,
        authority=app.state.front.authority,
    )

    # the API's description is for operators: behind the Jobs page's login like the pages
    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_p=Depends(web.pages)):
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(_p=Depends(web.pages)):
        """Swagger UI from the assets installed with fastapi-offline: no CDN, works offline."""
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="session-broker API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon.png",
        )

    @app.get("/static/swagger/{name}", include_in_schema=False)
    def swagger_asset(name: str, _p=Depends(web.pages)):
        if name not in SWAGGER_ASSETS:
            return PlainTextResponse("no such asset", status_code=404)
        return FileResponse(SWAGGER_DIR / name, headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthcheck", response_class=PlainTextResponse, tags=["health"])
    def healthcheck():
        """No login: load balancers and ``session-broker up`` poll it."""
        return "OK"

    app.state.included = [("", identity.router), ("", web.router)] + [
        (prefix, router)
        for prefix in ("/api/v1", "/experimental/api/v1")
        for router in (runtime.router, jobs.router)
    ]
    for prefix, router in app.state.included:
        app.include_router(router, prefix=prefix, include_in_schema=prefix != "/experimental/api/v1")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code)

    @app.exception_handler(SessionBrokerError)
    async def broker_error(_request: Request, exc: SessionBrokerError):
        err = from_broker_error(exc)
        return error_response(err.status, err.message, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg')}")
        return error_response(400, "invalid request: " + "; ".join(parts), "invalid_request")

    @app.exception_handler(web.NeedLogin)
    async def need_login(_request: Request, _exc):
        return PlainTextResponse(
            web.LOGIN_HELP,
            status_code=401,
            headers={
                **web.SECURITY_HEADERS,
                "WWW-Authenticate": 'Basic realm="session-broker", charset="UTF-8"',
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        path = request.url.path
        if _is_api(path):
            return error_response(
                exc.status_code,
                f"{exc.detail}: {request.method} {path[:100]}",
                "not_found" if exc.status_code == 404 else "invalid_request",
            )
        pages = request.app.state.front.pages
        if not pages.authorized(request.headers.get("authorization", "")):
            return await need_login(request, None)
        return pages.fail(exc.status_code, f"no page at {path[:100]}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        """A bug: logged with its traceback, answered in the same JSON shape (no details)."""
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error (logged by the server)", "internal_error")

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError):
        log.warning("Redis failed: %s", exc)
        return error_response(503, "Redis did not answer; try again", "redis_unavailable")

    return app


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves (the login test walks them all)."""
    out = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    for prefix, router in app.state.included:
        out += [(m, prefix + r.path) for r in router.routes if isinstance(r, APIRoute) for m in r.methods]
    return sorted(set(out))


def recipe(url: str, instance: str, key: str = "<your API key>") -> list[str]:
    """The environment lines and the constructor that point the stock client here."""
    return [
        "IBM's own client (qiskit-ibm-runtime), unchanged; either",
        f"  export IAM_URL={url} QISKIT_FUNCTIONS_EXPERIMENTAL=1",
        "  and construct the service as",
        f"  QiskitRuntimeService(channel='ibm_quantum_platform', token='{key}', instance='{instance}',",
        f"                       url='{url}', url_resolver=lambda u, *_: f'{{u}}/api/v1')",
        "or, with no code change at all (QiskitRuntimeService()):",
        f"  export IAM_URL={url} QISKIT_FUNCTIONS_EXPERIMENTAL=1 QISKIT_IBM_TOKEN={key} \\",
        f"         QISKIT_IBM_INSTANCE='{instance}' QISKIT_IBM_URL={url}/experimental/api/v1",
    ]


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    certfile: str | None = None,
    keyfile: str | None = None,
    *,
    require_pages: bool = False,
    require_keys: bool = False,
) -> None:
    """Run the web front until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if bool(certfile) != bool(keyfile):
        raise ConfigurationError("TLS needs both --certfile and --keyfile")
    for f in (certfile, keyfile):
        if f and not os.path.isfile(f):
            raise ConfigurationError(f"TLS file {f!r} does not exist")
    if require_pages and not settings.flower_auth:
        raise ConfigurationError(
            "SESSION_BROKER_FLOWER_AUTH is not set: the Jobs page refuses to start without a login. "
            "Set it to user:password (the same as Flower's; `session-broker up` sets it for you)"
        )
    api = load_api_settings(max_payload_bytes=settings.max_payload_bytes)
    if require_keys and not api.keys:
        raise ConfigurationError(
            "SESSION_BROKER_API_KEYS is not set: the REST API refuses to start without API keys "
            "(comma-separated keys, or sha256:<hex> digests, optionally KEY@TENANT_PREFIX)"
        )
    store = ops.quick_store()
    try:
        store.redis.ping()
    except redis.RedisError as exc:  # serve anyway: routes say 503 until Redis is back
        log.warning("Redis does not answer yet: %s", exc)
    # qpy.load must run with qiskit first imported in a thread that lives on: this one
    # lazy: qpy.load must first run with qiskit imported in a thread that lives on (this one); only serve() needs it
    import qiskit.qpy  # noqa: F401

    app = create_app(store, api, settings.flower_auth)
    scheme = "https" if certfile else "http"
    url = f"{scheme}://{host}:{port}"
    print(
        f"session-broker web front: {url}/ (Jobs page, /metrics, REST API at /api/v1, OpenAPI at /docs)",
        flush=True,
    )
    print(f"instance CRN: {api.instance}", flush=True)
    if not api.keys:
        print("REST API: no SESSION_BROKER_API_KEYS, so every runtime route answers 401", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
        http=guarded_protocol(api.header_timeout),
        timeout_keep_alive=api.keep_alive,
        limit_concurrency=api.max_connections,
    )
    sys.stdout.flush()
