"""What the REST front lets one client hold: tags, bodies, slow connections, and its tenants.

Real ``session-broker api`` processes; traffic only to 127.0.0.1. Timeouts are set short on
the server under test (``SESSION_BROKER_API_HEADER_TIMEOUT`` / ``_READ_TIMEOUT``) so that the
tests wait on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

from http.client import HTTPConnection
import json
import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from session_broker.embedded import free_port, wait_for
from tests.integration.test_rest_hostile import nothing_queued, sampler_params, submit
from tests.support.rest import KEY, ApiServer, auth_headers, get_token, http

HEADER_S, READ_S = 1.0, 1.0


@pytest.fixture(scope="module")
def server(stack, redis_url):
    from tests.conftest import make_cluster

    make_cluster(stack, redis_url)   # no worker: submitted jobs stay queued
    srv = ApiServer(stack, redis_url, env={
        "SESSION_BROKER_API_HEADER_TIMEOUT": str(HEADER_S),
        "SESSION_BROKER_API_READ_TIMEOUT": str(READ_S)}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def store(server):
    from session_broker.config import load_settings
    from session_broker.state import Store

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
    from session_broker.config import KEY_PREFIX_RULE
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
        [sys.executable, "-m", "session_broker.cli", "api", "--port", str(port)],
        env={**os.environ, "SESSION_BROKER_URL": redis_url,
             "SESSION_BROKER_API_KEYS": f"{KEY}@a.session"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
