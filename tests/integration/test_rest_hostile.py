"""Hostile requests to the REST API: each gets a clear 4xx, nothing is queued, the server
stays up. Then a bounded, seeded fuzz of every route in the server's OpenAPI document.

Payloads are built the way the stock client builds them (its ``RuntimeEncoder``: writing is
safe) and then corrupted; they go over real HTTP to the real ``session-broker api``.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from urllib.parse import quote, urlencode

import jwt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.support.rest import CRN, ApiServer, auth_headers, get_token, http

BACKEND = "ibmq_qasm_simulator"


@pytest.fixture(scope="module")
def server(stack, redis_url):
    # no worker: whatever got queued would stay visible; a small body limit (2 MiB)
    from tests.conftest import make_cluster

    make_cluster(stack, redis_url)
    srv = ApiServer(stack, redis_url, env={"SESSION_BROKER_MAX_PAYLOAD_BYTES": str(1 << 20)}).start()
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


def _enc(obj) -> dict:
    from qiskit_ibm_runtime import RuntimeEncoder

    return json.loads(json.dumps(obj, cls=RuntimeEncoder))


def sampler_params() -> dict:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return {"pubs": _enc([SamplerPub.coerce(qc, 100)]), "options": {}, "version": 2, "support_qiskit": True}


def b64z(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw)).decode()


def submit(server, token, params, program="sampler", **extra):
    body = {"program_id": program, "backend": BACKEND, "params": params, **extra}
    return http("POST", f"{server.url}/api/v1/jobs", body, auth_headers(token))


def nothing_queued(store) -> bool:
    return store.redis.zcard(store.keys.jobs) == 0 and not store.redis.hget(store.keys.counts, "submitted")


def message(body) -> str:
    assert isinstance(body, dict) and body["errors"][0]["message"] == body["error"]["message"], body
    return body["error"]["message"]


# ---------------------------------------------------------------------- keys and tokens
def test_wrong_key_gets_no_token(server):
    form = urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "wrong-key-000"})
    status, body = http(
        "POST",
        f"{server.url}/identity/token",
        raw=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400 and "could not be found" in message(body)
    assert "wrong-key-000" not in json.dumps(body)


@pytest.mark.parametrize("case", ["missing", "garbage", "forged", "expired", "alg-none", "other-crn"])
def test_bad_tokens_and_instances(server, store, token, case):
    secret = store.redis.get(f"{store.p}:api:secret")
    claims = jwt.decode(token, secret, algorithms=["HS256"], issuer="session-broker")
    headers = auth_headers(token)
    if case == "missing":
        headers.pop("Authorization")
    elif case == "garbage":
        headers["Authorization"] = "Bearer not.a.jwt"
    elif case == "forged":
        headers["Authorization"] = "Bearer " + jwt.encode(claims, "another-secret-" * 3, algorithm="HS256")
    elif case == "expired":
        old = {**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}
        headers["Authorization"] = "Bearer " + jwt.encode(old, secret, algorithm="HS256")
    elif case == "alg-none":
        headers["Authorization"] = "Bearer " + jwt.encode(claims, None, algorithm="none")
    else:
        headers["Service-CRN"] = CRN.replace("test-instance", "someone-else")
    status, body = http("GET", f"{server.url}/api/v1/backends", headers=headers)
    expected = 403 if case == "other-crn" else 401
    assert status == expected, (case, status, body)
    text = message(body)
    assert ("expired" in text) if case == "expired" else True
    assert ("instance" in text) if case == "other-crn" else True
    status, _ = submit(server, "x", sampler_params()) if case == "missing" else (401, None)
    assert status == 401
    assert nothing_queued(store) and server.alive()


def test_a_token_outlives_its_server(server, stack, redis_url, token):
    """The signing secret lives in Redis: a restarted or second server accepts the token."""
    other = ApiServer(stack, redis_url).start()
    try:
        status, body = http("GET", f"{other.url}/api/v1/backends", headers=auth_headers(token))
        assert status == 200 and BACKEND in [d["name"] for d in body["devices"]]
    finally:
        other.stop()


# ---------------------------------------------------------------------- params
def _qpy_with_qubits(n: int) -> bytes:
    """A real client QPY of a Bell circuit whose header then claims ``n`` qubits."""
    from qiskit import QuantumCircuit, qpy

    qc = QuantumCircuit(2)
    qc.h(0)
    buf = io.BytesIO()
    qpy.dump(qc, buf, version=17)
    raw = bytearray(buf.getvalue())
    (top,) = struct.unpack_from("!Q", raw, 20)  # version >= 16: program offset table
    struct.pack_into("!I", raw, top + 5, n)  # CIRCUIT_HEADER num_qubits
    return bytes(raw)


def hostile_params(case: str) -> tuple[str, dict, str]:
    """(program, params, words the 400 must contain)."""
    params = sampler_params()
    pub = params["pubs"][0]
    if case == "zip-bomb-circuit":
        pub[0]["__value__"] = b64z(b"\0" * (64 << 20))
        return "sampler", params, "decompresses to more than"
    if case == "zip-bomb-array":
        pub[1]["__value__"] = b64z(b"\0" * (160 << 20))
        return "sampler", params, "decompresses to more than"
    if case == "oversized-qpy-header":
        pub[0]["__value__"] = b64z(_qpy_with_qubits(4_000_000_000))
        return "sampler", params, "qubits"
    if case == "pickled-npy":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        pub[1]["__value__"] = b64z(buf.getvalue())
        return "sampler", params, "dtype"
    if case == "settings-object":
        params["options"] = {
            "simulator": {
                "__type__": "settings",
                "__value__": {
                    "__module__": "os",
                    "__class__": "system",
                    "settings": {"command": "touch /tmp/pwned"},
                },
            }
        }
        return "sampler", params, "typed objects"
    if case == "typed-circuit-swap":
        pub[0] = {"__type__": "settings", "__value__": {"__module__": "os", "__class__": "system"}}
        return "sampler", params, "not allowed here"
    if case == "unknown-option":
        params["options"] = {"no_such_option": 1}
        return "sampler", params, "no_such_option"
    if case == "unknown-program":
        return "noise-learner", params, "sampler, estimator (SamplerV2/EstimatorV2), executor"
    if case == "unknown-key":
        params["callback"] = "x"
        return "sampler", params, "unknown keys"
    if case == "not-base64":
        pub[0]["__value__"] = "***"
        return "sampler", params, "base64"
    if case == "nan-values":
        buf = io.BytesIO()
        np.save(buf, np.array([np.nan]))
        pub[1]["__value__"] = b64z(buf.getvalue())
        return "sampler", params, "finite"
    raise AssertionError(case)


HOSTILE = [
    "zip-bomb-circuit",
    "zip-bomb-array",
    "oversized-qpy-header",
    "pickled-npy",
    "settings-object",
    "typed-circuit-swap",
    "unknown-option",
    "unknown-program",
    "unknown-key",
    "not-base64",
    "nan-values",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_params_are_a_clear_400(server, store, token, case):
    program, params, words = hostile_params(case)
    status, body = submit(server, token, params, program=program)
    assert status == 400, (case, status, body)
    assert words in message(body), (case, body)
    assert nothing_queued(store) and server.alive()
    assert not __import__("os").path.exists("/tmp/pwned")


def test_oversized_body_is_413(server, store, token):
    """Refused on the declared length, before the body is read (the sender may see its
    connection closed mid-body: the answer is read all the same)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/v1/jobs")
    for name, value in {
        **auth_headers(token),
        "Content-Type": "application/json",
        "Content-Length": str(3 << 20),
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    try:
        for _ in range(48):
            conn.send(b" " * (64 << 10))
    except OSError:
        pass
    reply = conn.getresponse()
    body = json.loads(reply.read())
    assert reply.status == 413 and "limit" in message(body)
    conn.close()
    assert nothing_queued(store) and server.alive()


def test_a_valid_job_is_accepted_and_recorded_once(server, store, token):
    """The control: the same request unharmed is accepted, once per POST. Listing pages
    with an exact count; a poll of an unfinished job is held on its latch (here no worker
    serves the backend, so the poll waits the whole hold and answers Queued)."""
    ids = []
    for _ in range(3):
        status, body = submit(server, token, sampler_params())
        assert status == 200 and body["backend"] == BACKEND, body
        ids.append(body["id"])
    assert sorted(store.redis.zrange(store.keys.jobs, 0, -1)) == sorted(ids)
    h = auth_headers(token)
    status, page = http("GET", f"{server.url}/api/v1/jobs?limit=2", headers=h)
    assert status == 200 and page["count"] == 3 and len(page["jobs"]) == 2
    assert page["jobs"][0]["state"]["status"] == "Queued"
    status, rest = http("GET", f"{server.url}/api/v1/jobs?limit=2&offset=2", headers=h)
    assert rest["count"] == 3 and [j["id"] for j in page["jobs"] + rest["jobs"]] == ids[::-1]
    status, asc = http("GET", f"{server.url}/api/v1/jobs?limit=5&sort=ASC", headers=h)
    assert [j["id"] for j in asc["jobs"]] == ids
    assert http("GET", f"{server.url}/api/v1/jobs?pending=false", headers=h)[1]["count"] == 0
    t0 = time.monotonic()
    status, job = http("GET", f"{server.url}/api/v1/jobs/{ids[0]}?exclude_params=true", headers=h)
    assert status == 200 and job["state"]["status"] == "Queued" and time.monotonic() - t0 >= 0.09
    for jid in ids:
        assert http("POST", f"{server.url}/api/v1/jobs/{jid}/cancel", headers=h)[0] == 204
        # idempotent, like RuntimeJobV2.cancel(): a cancelled job stays cancelled for good
        assert http("POST", f"{server.url}/api/v1/jobs/{jid}/cancel", headers=h)[0] == 204
    status, results = http("GET", f"{server.url}/api/v1/jobs/{ids[0]}/results", headers=h)
    assert status == 200 and "cancel" in str(results).lower()
    assert http("GET", f"{server.url}/api/v1/jobs?pending=true", headers=h)[1]["count"] == 0
    store.redis.delete(store.keys.jobs)
    store.redis.hdel(store.keys.counts, "submitted")


# ---------------------------------------------------------------------- fuzz
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12,
)
SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


def operations(server) -> list[tuple[str, str, dict]]:
    import base64 as b

    auth = {"Authorization": "Basic " + b.b64encode(b"admin:secret").decode()}
    status, doc = http("GET", f"{server.url}/openapi.json", headers=auth)
    assert status == 200, doc
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


@pytest.mark.timeout(900)
def test_fuzz_every_route_from_the_openapi_document(server, store, token):
    ops = operations(server)
    assert len(ops) >= 20, ops
    seen: set[str] = set()

    @seed(1234)
    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one(data):
        method, path, op = data.draw(st.sampled_from(ops))
        seen.add(f"{method} {path}")
        url = path
        for param in op.get("parameters", []):
            if param["in"] == "path":
                url = url.replace("{" + param["name"] + "}", quote(data.draw(SEGMENT), safe=""))
        query = {
            p["name"]: data.draw(st.text(max_size=20) | st.integers(-5, 500).map(str))
            for p in op.get("parameters", [])
            if p["in"] == "query" and data.draw(st.booleans())
        }
        body = data.draw(
            JSON
            | st.fixed_dictionaries(
                {},
                optional={
                    "program_id": st.sampled_from(["sampler", "estimator", "x"]),
                    "backend": st.text(max_size=20),
                    "params": JSON,
                    "mode": st.sampled_from(["dedicated", "batch", "x"]),
                    "accepting_jobs": JSON,
                    "tags": JSON,
                    "session_id": st.text(max_size=20),
                },
            )
        )
        headers = auth_headers(token) if data.draw(st.integers(0, 9)) else {}
        full = f"{server.url}{url}" + (f"?{urlencode(query)}" if query else "")
        status, reply = http(method, full, body if method in ("POST", "PUT", "PATCH") else None, headers)
        assert status < 500, (method, full, body, status, reply)

    one()
    assert server.alive()
    assert len(seen) >= len(ops) * 2 // 3, sorted(seen)
    # nothing the fuzz sent was a job (no valid params): nothing queued
    assert store.redis.zcard(store.keys.jobs) == 0
