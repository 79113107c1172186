"""Every route of the one web front, enumerated from the app itself, with no, wrong and
partial credentials: nothing but ``/healthcheck`` answers without its login.

Three kinds of login guard the routes: the Jobs page's basic auth (pages, /metrics, /docs,
/openapi.json), an API key (``/identity/token``) and a Bearer token plus ``Service-CRN``
(the runtime routes and Global Search/Catalog). The route list comes from the app's own
routes, so a route added later is tested without editing this file (and an unknown kind of
route fails the test).
"""

from __future__ import annotations

import base64
import re
import urllib.request
from urllib.parse import urlencode

import pytest

from tests.support.rest import CRN, KEY, ApiServer, auth_headers, get_token, http

USER, PASSWORD = "admin", "secret"


def basic(value: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}


@pytest.fixture(scope="module")
def server(stack, redis_url):
    from tests.conftest import make_cluster

    make_cluster(stack, redis_url)
    srv = ApiServer(stack, redis_url).start()
    yield srv
    srv.stop()


def app_routes(redis_url) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    from session_broker.api.settings import load_api_settings
    from session_broker.core.config import load_settings
    from session_broker.core.store import Store
    from session_broker.ops.front import create_app, route_table

    app = create_app(Store(load_settings({"SESSION_BROKER_URL": redis_url})), load_api_settings({}), "a:b")
    return [
        (method, re.sub(r"\{[^}]+\}", "some-id", path))
        for method, path in route_table(app)
        if method not in ("HEAD", "OPTIONS")
    ]


def kind(path: str) -> str:
    if path == "/healthcheck":
        return "open"
    if path == "/identity/token":
        return "key"
    if path.startswith(("/api/v1/catalog", "/v3/")):
        return "bearer"
    if path.startswith(("/api/v1/", "/experimental/api/v1/")):
        return "runtime"
    if path in ("/", "/metrics", "/docs", "/openapi.json", "/events") or path.startswith(
        ("/session/", "/job/", "/static/")
    ):
        return "page"
    raise AssertionError(f"route {path} has no known login: add it to this test")


def test_every_route_needs_its_login(server, redis_url):
    routes = app_routes(redis_url)
    assert len(routes) >= 25, routes
    token = get_token(server)
    body = {"accepting_jobs": False}
    for method, path in routes:
        url = server.url + path
        send = body if method in ("POST", "PUT", "PATCH") else None
        k = kind(path)
        if k == "open":
            assert http(method, url)[0] == 200
            continue
        if k == "page":
            for headers in (
                {},
                basic(f"{USER}:wrong"),
                basic(f"{USER}:"),
                basic(USER),
                basic(f":{PASSWORD}"),
                {"Authorization": "Basic"},
                {"Authorization": "Basic !!!"},
                auth_headers(token),
            ):
                status, _ = http(method, url, send, headers)
                assert status == 401, (method, path, headers, status)
            if path == "/events":  # a stream: the status line is the answer
                req = urllib.request.Request(url, headers=basic(f"{USER}:{PASSWORD}"))
                with urllib.request.urlopen(req, timeout=30) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    assert r.readline().startswith(b"retry:")
                continue
            status, _ = http(method, url, send, basic(f"{USER}:{PASSWORD}"))
            assert status in (200, 404), (method, path, status)
            continue
        if k == "key":
            for form in (
                {},
                {"grant_type": "urn:ibm:params:oauth:grant-type:apikey"},
                {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": KEY[:-1]},
                {"grant_type": "password", "apikey": KEY},
            ):
                status, reply = http(
                    method,
                    url,
                    raw=urlencode(form).encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                assert status == 400, (form, status, reply)
                assert KEY not in str(reply)
            continue
        wrong = [
            {},
            {"Authorization": f"Bearer {token}x", "Service-CRN": CRN},
            {"Authorization": token, "Service-CRN": CRN},
            basic(f"{USER}:{PASSWORD}"),
            {"Authorization": f"Bearer {KEY}", "Service-CRN": CRN},
        ]
        for headers in wrong:
            status, reply = http(method, url, send, headers)
            assert status == 401, (method, path, headers, status, reply)
        if k == "runtime":
            for headers in ({"Authorization": f"Bearer {token}"}, auth_headers(token, CRN + "x")):
                status, reply = http(method, url, send, headers)
                assert status == 403, (method, path, status, reply)
            status, _ = http(method, url, send, auth_headers(token))
            assert status not in (401, 403) and status < 500, (method, path, status)
    assert server.alive()


def test_keys_never_reach_the_log(server):
    get_token(server)
    form = urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "wrong-key-xyz1"})
    http(
        "POST",
        f"{server.url}/identity/token",
        raw=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    log = server.log()
    assert "instance CRN" in log
    assert KEY not in log and "wrong-key-xyz1" not in log


def test_api_refuses_to_start_without_keys(stack, redis_url):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "session_broker.ops.cli", "api", "--port", "1"],
        env={"SESSION_BROKER_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "SESSION_BROKER_API_KEYS" in proc.stderr


def test_tls_when_the_flags_are_given(stack, redis_url, tmp_path):
    """--certfile/--keyfile serve https (a self-signed pair made with openssl)."""
    import ssl
    import subprocess
    import urllib.request

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    srv = ApiServer(stack, redis_url, args=["--certfile", str(cert), "--keyfile", str(key)])
    srv.healthy = lambda: _https_ok(srv, cert)
    try:
        srv.start()
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"{srv.url}/healthcheck", context=ctx, timeout=10) as r:
            assert r.status == 200 and r.read() == b"OK"
        with pytest.raises(OSError):  # plain http on the TLS port gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthcheck", timeout=10).read()
    finally:
        srv.stop()


def _https_ok(srv, cert) -> bool:
    import ssl
    import urllib.request

    if srv.child is not None and not srv.child.alive():
        raise AssertionError(f"the API server exited:\n{srv.log()}")
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{srv.port}/healthcheck", context=ctx, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
