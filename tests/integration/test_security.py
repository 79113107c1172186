"""Security: Redis passwords, TLS, and no pickle anywhere on the wire.

- A Redis with ``requirepass``: workers and producers with the password in the URL work end
  to end; a wrong or missing password fails at once with ``BrokerConnectionError`` naming
  the problem (and never printing the password), for the API and for ``session-broker
  worker`` (exit code 4).
- A TLS-only Redis (Debian's redis-server, with a CA and server certificate made here with
  openssl): worker + job end to end over ``rediss://...?ssl_ca_certs=...&ssl_cert_reqs=required``;
  a client that does not trust the CA is refused.
- A pickled Celery message pushed straight onto a backend queue is never executed, and every
  message our clients and workers put on the wire is ``application/json`` (checked on the
  queued messages themselves and on a ``redis-cli monitor`` capture of a whole session).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from session_broker import BrokerConnectionError, EstimatorV2, QiskitRuntimeService, SamplerV2, Session
from session_broker.core.messages import task_message
from session_broker.ops.embedded import free_port, wait_for
from tests.conftest import HOST, Cluster
from tests.support.faults import BACKEND, assert_bell_counts, bell_circuit, log_tail, plant_job, records
from tests.support.pki import make_pki

PASSWORD = "s3cret-" + base64.b32encode(os.urandom(10)).decode().lower()
PY = sys.executable


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def auth(stack):
    """A password-protected Redis and one worker that has the password."""
    url = stack.start_redis(password=PASSWORD, name="redis-auth")
    c = Cluster(stack, url)
    c.start_worker(BACKEND, name="auth-worker@%h")
    return c


def wrong_password_url(url: str) -> str:
    return url.replace(f":{PASSWORD}@", ":not-the-password@")


def no_password_url(url: str) -> str:
    return url.replace(f":{PASSWORD}@", "")


# ------------------------------------------------------------------------------ passwords
def test_password_protected_redis_end_to_end(auth):
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(no_password_url(auth.url)).ping()  # the server really wants one
    with Session(service=auth.service, backend=BACKEND) as session:
        job = SamplerV2(mode=session).run([bell_circuit()], shots=100)
        assert_bell_counts(job.result(timeout=120), 100)
    assert auth.store.job(job.job_id())["worker"] == f"auth-worker@{HOST}"


@pytest.mark.parametrize("variant", ["wrong", "missing"])
def test_service_with_bad_password_fails_fast_and_clearly(auth, variant):
    url = wrong_password_url(auth.url) if variant == "wrong" else no_password_url(auth.url)
    t0 = time.monotonic()
    with pytest.raises(BrokerConnectionError) as info:
        QiskitRuntimeService(url)
    elapsed = time.monotonic() - t0
    text = str(info.value)
    assert "password" in text.lower(), text
    assert "SESSION_BROKER_URL" in text, text
    assert "not-the-password" not in text and PASSWORD not in text, "the message leaks a password"
    assert elapsed < 10, f"a bad password took {elapsed:.1f} s to report"


def test_worker_with_wrong_password_exits_nonzero_with_a_clear_message(auth):
    env = {**os.environ, **auth.env, "SESSION_BROKER_URL": wrong_password_url(auth.url)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [PY, "-m", "session_broker.ops.cli", "worker", "--backend", BACKEND],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, (proc.returncode, out[-2000:])
    assert "refused the credentials" in proc.stderr, out[-2000:]
    assert "not-the-password" not in out, "the worker printed the password"
    assert "Traceback" not in out, out[-2000:]
    print(
        f"worker with a wrong password exited {proc.returncode} after {time.monotonic() - t0:.1f} s: "
        f"{proc.stderr.strip().splitlines()[-1]}"
    )


# ------------------------------------------------------------------------------ TLS
@pytest.fixture(scope="module")
def tls(stack, tmp_path_factory):
    binary = shutil.which("redis-server")
    assert binary, "Debian's redis-server (with TLS) is needed for the TLS test"
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    port = free_port()
    data = tmp_path_factory.mktemp("redis-tls-data")
    stack.spawn(
        "redis-tls",
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(pki["server.pem"]),
            "--tls-key-file",
            str(pki["server.key"]),
            "--tls-ca-cert-file",
            str(pki["ca.pem"]),
            "--tls-auth-clients",
            "no",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki['ca.pem']}&ssl_cert_reqs=required"

    def answers():
        import redis

        try:
            return redis.Redis(
                host="127.0.0.1",
                port=port,
                ssl=True,
                ssl_ca_certs=str(pki["ca.pem"]),
                ssl_cert_reqs="required",
                socket_connect_timeout=1,
            ).ping()
        except (redis.RedisError, OSError):
            return False

    wait_for(answers, 30, f"the TLS redis-server on port {port}")
    c = Cluster(stack, url)
    c.tls_port, c.pki = port, pki
    return c


def test_tls_redis_end_to_end(tls):
    import redis

    # the port speaks only TLS: a plain client gets nothing sensible back
    with pytest.raises((redis.ConnectionError, redis.ResponseError, OSError)):
        redis.Redis(host="127.0.0.1", port=tls.tls_port, socket_connect_timeout=2, socket_timeout=2).ping()
    w = tls.start_worker(BACKEND, name="tls-worker@%h")
    service = QiskitRuntimeService(tls.url)
    with Session(service=service, backend=BACKEND) as session:
        sampler = SamplerV2(mode=session)
        jobs = [sampler.run([bell_circuit()], shots=200) for _ in range(3)]
        for job in jobs:
            assert_bell_counts(job.result(timeout=120), 200)
        from qiskit import QuantumCircuit

        qc = QuantumCircuit(1)
        qc.x(0)
        evs = EstimatorV2(mode=session).run([(qc, "Z")], precision=0).result(timeout=120)[0].data.evs
        assert np.asarray(evs).reshape(-1).tolist() == pytest.approx([-1.0])
    recs = records(tls.store, [j.job_id() for j in jobs])
    assert {r["worker"] for r in recs.values()} == {f"tls-worker@{HOST}"}
    assert w.proc.poll() is None
    # Celery's own connection is TLS too (the worker log names the rediss:// broker)
    assert "rediss://" in Path(w.log).read_text(), log_tail(w.log)


def test_tls_client_that_does_not_trust_the_server_is_refused(tls):
    url = tls.url.replace(str(tls.pki["ca.pem"]), str(tls.pki["other-ca.pem"]))
    t0 = time.monotonic()
    with pytest.raises(BrokerConnectionError) as info:
        QiskitRuntimeService(url)
    assert "certificate verify failed" in str(info.value), str(info.value)
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------------------ no pickle
class _Gadget:
    """Unpickling this creates a file: if it appears, the worker ran the sender's code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_message_on_a_backend_queue_is_refused(auth, tmp_path):
    marker = tmp_path / "pickle-ran"
    queue = auth.store.keys.backend_queue(BACKEND)
    from qiskit.primitives.containers import SamplerPub

    from session_broker.core import codec

    good = codec.encode_payload(
        "sampler",
        codec.encode_sampler_pubs([SamplerPub.coerce(bell_circuit(), 8)]),
        {"api": "v2", "seed_simulator": None, "max_execution_time": None},
        max_bytes=10**7,
    )
    jid = plant_job(auth.store, payload=good, push=False)
    envelope = json.loads(task_message("sampler", jid, queue, {}, argsrepr=f"job={jid}"))
    envelope["body"] = base64.b64encode(
        pickle.dumps(
            (
                [jid],
                {"x": _Gadget(str(marker))},
                {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
            ),
            protocol=2,
        )
    ).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    auth.store.redis.lpush(queue, json.dumps(envelope))
    worker = auth.workers[f"auth-worker@{HOST}"]
    wait_for(lambda: auth.store.redis.llen(queue) == 0, 60, "the worker to take the pickled message")
    # a normal job after it still runs, on the same worker process
    job = SamplerV2(mode=auth.service.backend(BACKEND)).run([bell_circuit()], shots=50)
    assert_bell_counts(job.result(timeout=120), 50)
    assert worker.proc.poll() is None, log_tail(worker.log)
    assert not marker.exists(), "the worker unpickled a message: remote code execution"
    rec = auth.store.job(jid)
    assert rec["status"] == "QUEUED" and rec["attempts"] == "0", rec
    assert (
        "ContentDisallowed" in Path(worker.log).read_text()
        or "x-python-serialize" in Path(worker.log).read_text()
    ), log_tail(worker.log)
    auth.store.cancel_job(jid)


CONTENT_TYPE = re.compile(r'content-type\\*"\s*:\s*\\*"([^"\\]*)')


def _queued_messages(store) -> list[tuple[str, dict]]:
    out = []
    for key in store.redis.scan_iter(match=f"{store.keys.prefix}.*", count=1000):
        if store.redis.type(key) == "list":
            out += [(key, json.loads(m)) for m in store.redis.lrange(key, 0, -1)]
    return out


def test_queued_messages_are_json(auth):
    """Messages as they wait in Redis (a backend with no worker, so nothing consumes them)."""
    backend = "aer_simulator_mps"  # no worker serves it in this module
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    service = auth.service
    SamplerV2(mode=service.backend(backend)).run([bell_circuit()])
    session = Session(service=service, backend=backend)
    SamplerV2(mode=session).run([bell_circuit()], shots=10)
    EstimatorV2(mode=session).run([(qc, "ZZ")])
    from session_broker import Batch, Sampler

    with Batch(service=service, backend=backend) as batch:
        Sampler(session=batch).run(bell_circuit())
    messages = _queued_messages(auth.store)
    assert len(messages) >= 4, messages
    for key, msg in messages:
        assert msg["content-type"] == "application/json", (key, msg["content-type"])
        assert msg["content-encoding"] == "utf-8", (key, msg)
        assert msg["properties"]["body_encoding"] == "base64"
        body = json.loads(base64.b64decode(msg["body"]))
        assert isinstance(body, list) and len(body) == 3 and isinstance(body[0][0], str)
    session.cancel()


def test_nothing_on_the_wire_is_pickled(auth, tmp_path):
    """``redis-cli monitor`` sees every command: during a whole session (submit, claim, run,
    result, close) every message that carries a content type says application/json, and
    nothing says x-python-serialize."""
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is needed for the wire capture"
    port = auth.url.rsplit(":", 1)[1].split("/")[0]
    capture = tmp_path / "monitor.txt"
    with open(capture, "wb") as out:
        mon = subprocess.Popen(
            [cli, "-p", port, "-a", PASSWORD, "--no-auth-warning", "monitor"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: capture.stat().st_size > 0, 20, "redis-cli monitor to start")
            with Session(service=auth.service, backend=BACKEND) as session:
                sampler = SamplerV2(mode=session)
                jobs = [sampler.run([bell_circuit()], shots=20) for _ in range(5)]
                for job in jobs:
                    job.result(timeout=120)
            SamplerV2(mode=auth.service.backend(BACKEND)).run([bell_circuit()]).result(timeout=120)
            wait_for(lambda: auth.session(session.session_id)["state"] == "closed", 30, "close")
        finally:
            mon.terminate()
            mon.wait(10)
    text = capture.read_text(errors="replace")
    assert "x-python-serialize" not in text
    assert "pickle" not in text.lower()
    types = CONTENT_TYPE.findall(text)
    assert len(types) >= 6, f"the capture saw too few messages ({len(types)}): {text[:2000]}"
    assert set(types) == {"application/json"}, sorted(set(types))
    print(f"monitor capture: {len(text.splitlines())} commands, {len(types)} messages, all application/json")
