"""What the REST front lets one client hold: tags, bodies, slow connections, and its tenants.

Real ``session-broker api`` processes; traffic only to 127.0.0.1. Timeouts are set short on
the server under test (``SESSION_BROKER_API_HEADER_TIMEOUT`` / ``_READ_TIMEOUT``) so that the
tests wait on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection

import psutil
import pytest

from session_broker.ops.embedded import free_port, wait_for
from tests.integration.test_rest_hostile import nothing_queued, sampler_params, submit
from tests.support.rest import KEY, ApiServer, auth_headers, get_token, http

HEADER_S, READ_S = 1.0, 1.0


@pytest.fixture(scope="module")
def server(stack, redis_url):
    from tests.conftest import make_cluster

    make_cluster(stack, redis_url)  # no worker: submitted jobs stay queued
    srv = ApiServer(
        stack,
        redis_url,
        env={
            "SESSION_BROKER_API_HEADER_TIMEOUT": str(HEADER_S),
            "SESSION_BROKER_API_READ_TIMEOUT": str(READ_S),
        },
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def store(server):
    from session_broker.core.config import load_settings
    from session_broker.core.store import Store

    return Store(load_settings({"SESSION_BROKER_URL": server.redis_url}))


@pytest.fixture(scope="module")
def token(server):
    return get_token(server)


def message(body) -> str:
    assert isinstance(body, dict) and body["errors"][0]["message"] == body["error"]["message"], body
    return body["error"]["message"]


# ---------------------------------------------------------------------- tenants
@pytest.mark.parametrize("tenant", ["a.session", "a.x", "A", "a:b", ""])
def test_a_key_tenant_follows_the_key_prefix_rule(tenant):
    """``KEY@a.session`` would be served under prefix ``a.session``, whose keys are tenant
    ``a``'s session queues: refused like SESSION_BROKER_KEY_PREFIX=a.session."""
    from session_broker.api.settings import load_api_settings
    from session_broker.core.config import KEY_PREFIX_RULE
    from session_broker.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as err:
        load_api_settings({"SESSION_BROKER_API_KEYS": f"good-key-000,{KEY}@{tenant}"})
    text = str(err.value)
    assert "SESSION_BROKER_API_KEYS" in text and "entry 2" in text and KEY_PREFIX_RULE in text
    assert repr(tenant) in text and KEY not in text
    assert load_api_settings({"SESSION_BROKER_API_KEYS": f"{KEY}@a_x-1"}).keys[0].prefix == "a_x-1"


def test_the_api_refuses_to_start_with_a_tenant_that_is_not_a_prefix(stack, redis_url):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "session_broker.ops.cli", "api", "--port", str(port)],
        env={**os.environ, "SESSION_BROKER_URL": redis_url, "SESSION_BROKER_API_KEYS": f"{KEY}@a.session"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ended_or_serving():
            if proc.poll() is not None:
                return True
            try:
                return http("GET", f"http://127.0.0.1:{port}/healthcheck", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(ended_or_serving, 120, "the api command to exit or serve")
        assert proc.poll() is not None, "the api served a key whose tenant is not a key prefix"
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and "SESSION_BROKER_API_KEYS" in err and "'a.session'" in err, err
        assert KEY not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- tags
def test_tags_over_the_limits_are_a_clear_400(server, store, token):
    """IBM's API allows 8 tags of at most 86 characters; so does ours by default."""
    h = auth_headers(token)
    status, body = submit(server, token, sampler_params(), tags=[f"t{i}" for i in range(9)])
    assert status == 400 and "at most 8 tags" in message(body)
    assert "SESSION_BROKER_API_MAX_TAGS" in message(body)
    status, body = submit(server, token, sampler_params(), tags=["x" * 87])
    assert status == 400 and "at most 86" in message(body)
    assert nothing_queued(store)
    status, body = submit(server, token, sampler_params(), tags=["x" * 86] * 8)
    assert status == 200, body
    jid = body["id"]
    url = f"{server.url}/api/v1/jobs/{jid}/tags"
    status, body = http("PUT", url, {"tags": ["y" * 87]}, h)
    assert status == 400 and "tags[0] has 87 characters" in message(body)
    status, body = http("PUT", url, {"tags": [str(i) for i in range(9)]}, h)
    assert status == 400 and "at most 8 tags" in message(body)
    status, body = big_request(
        server, token, "PUT", f"/api/v1/jobs/{jid}/tags", 10 << 20, chunked=False
    )  # 10 MB of tags
    assert status == 413 and "65536 byte limit" in message(body)
    assert http("GET", f"{server.url}/api/v1/jobs/{jid}", headers=h)[1]["tags"] == ["x" * 86] * 8
    assert http("PUT", url, {"tags": ["ok"]}, h)[0] == 204
    assert http("GET", f"{server.url}/api/v1/jobs/{jid}", headers=h)[1]["tags"] == ["ok"]
    assert http("PUT", f"{server.url}/api/v1/jobs/nojob/tags", {"tags": ["a"]}, h)[0] == 404
    assert http("POST", f"{server.url}/api/v1/jobs/{jid}/cancel", headers=h)[0] == 204
    assert server.alive()


# ---------------------------------------------------------------------- bodies
def big_request(
    server, token, method: str, path: str, total: int, chunk: int = 1 << 20, chunked: bool = True
) -> tuple[int, dict]:
    """``total`` bytes of body, chunked (no Content-Length) or declared, sent the way a
    keep-alive client sends them; the answer is read even if the server closed the
    connection while we were still sending."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest(method, path)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}
    for name, value in {**auth_headers(token), "Content-Type": "application/json", **framing}.items():
        conn.putheader(name, value)
    conn.endheaders()
    block = b" " * chunk
    try:
        for _ in range(total // chunk):
            conn.send(b"%x\r\n" % chunk + block + b"\r\n" if chunked else block)
        if chunked:
            conn.send(b"0\r\n\r\n")
    except OSError:
        pass
    try:
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_is_413(server, store, token):
    """50 MB with no Content-Length: refused once it passes the limit (it used to become a
    400 "error parsing the body"); the same holds for a small route's smaller limit."""
    jobs = store.redis.zcard(store.keys.jobs)
    status, body = big_request(server, token, "POST", "/api/v1/jobs", 50 << 20)
    assert status == 413 and "job submission" in message(body) and "limit" in message(body), body
    status, body = big_request(server, token, "POST", "/api/v1/sessions", 1 << 20, chunk=16 << 10)
    assert status == 413 and "65536 byte limit" in message(body), body
    # without a valid token a job-sized body is not read at all
    status, body = big_request(server, "forged", "POST", "/api/v1/jobs", 8 << 20, chunked=False)
    assert status == 401 and "token" in message(body), body
    assert store.redis.zcard(store.keys.jobs) == jobs and server.alive()


# ---------------------------------------------------------------------- slow connections
def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset); anything it sent first is
    skipped."""
    try:
        sock.setblocking(False)
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def slow_connections(server, token, n: int) -> list[socket.socket]:
    """``n`` connections in three kinds: silent, headers never finished, body never finished."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        kind = i % 3
        if kind == 1:
            s.sendall(b"GET /api/v1/backends HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif kind == 2:
            s.sendall(
                b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
            )
        socks.append(s)
    return socks


def test_slow_and_idle_connections_are_closed(server, token):
    """Slowloris: a connection that keeps sending header bytes, slower than the header
    deadline allows, is closed at the deadline; so are silent ones and slow bodies (408)."""
    socks = slow_connections(server, token, 60)
    dripper = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    dripper.sendall(b"GET /healthcheck HTTP/1.1\r\n")
    socks.append(dripper)
    t0 = time.monotonic()
    stop = threading.Event()

    def drip():  # one header byte every 0.1 s: never finished, never silent
        while not stop.is_set():
            try:
                dripper.sendall(b"X")
            except OSError:
                return
            stop.wait(0.1)

    threading.Thread(target=drip, daemon=True).start()
    try:
        # meanwhile an honest client is served
        assert http("GET", f"{server.url}/api/v1/backends", headers=auth_headers(token))[0] == 200
        wait_for(
            lambda: all(_closed_by_server(s) for s in socks), 30, "the server to close every slow connection"
        )
        assert time.monotonic() - t0 >= HEADER_S * 0.9
    finally:
        stop.set()
        for s in socks:
            s.close()
    assert server.alive()


def test_a_slow_body_gets_408(server, token):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        s.sendall(
            b"PUT /api/v1/jobs/x/tags HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"tags"'
        )
        reply = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            reply += data
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert b"did not arrive within" in reply
    finally:
        s.close()


# ---------------------------------------------------------------------- soak
def _rss_mb(server) -> float:
    return psutil.Process(server.child.proc.pid).memory_info().rss / 2**20


def hostile_round(server, token, store, jid: str) -> None:
    """One round of bounded hostile traffic, all refused, plus honest requests that work."""
    h = auth_headers(token)
    assert big_request(server, token, "PUT", f"/api/v1/jobs/{jid}/tags", 8 << 20, chunked=False)[0] == 413
    assert http("PUT", f"{server.url}/api/v1/jobs/{jid}/tags", {"tags": ["t"] * 5000}, h)[0] == 400
    assert big_request(server, token, "POST", "/api/v1/jobs", 40 << 20)[0] == 413
    assert big_request(server, token, "POST", "/api/v1/sessions", 4 << 20, chunk=64 << 10)[0] == 413
    assert big_request(server, token, "POST", "/api/v1/jobs", 30 << 20, chunked=False)[0] == 400
    for _ in range(20):
        assert http("GET", f"{server.url}/api/v1/jobs/{jid}", headers=h)[0] == 200
        assert http("GET", f"{server.url}/api/v1/jobs?limit=5&tags=a", headers=h)[0] == 200
    socks = slow_connections(server, token, 30)
    try:
        wait_for(lambda: all(_closed_by_server(s) for s in socks), 30, "slow connections closed")
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(600)
def test_soak_memory_stays_flat_under_hostile_load(server, store, token):
    """Rounds of hostile requests (huge tags, huge chunked and declared bodies, slowloris
    connections): after a warm-up, the API process's resident memory stays flat."""
    status, body = submit(server, token, sampler_params(), tags=["soak"])
    assert status == 200, body
    jid = body["id"]
    for _ in range(2):
        hostile_round(server, token, store, jid)
    warm = _rss_mb(server)
    rounds = int(os.environ.get("SB_SOAK_ROUNDS", "5"))
    for _ in range(rounds):
        hostile_round(server, token, store, jid)
    grown = _rss_mb(server) - warm
    assert grown < 40, f"RSS grew {grown:.0f} MB over {rounds} rounds (from {warm:.0f} MB)"
    assert len(store.redis.hget(store.keys.job(jid), "summary")) < 10_000
    assert server.alive()
    http("POST", f"{server.url}/api/v1/jobs/{jid}/cancel", headers=auth_headers(token))
