"""The web front as a subprocess, and IBM's stock client run in other subprocesses.

``ApiServer`` runs the real ``session-broker api`` command. ``run_client`` runs a script
with the stock ``qiskit_ibm_runtime`` in a fresh interpreter that is pointed at the server
by configuration only, and fails if that interpreter ever imported ``session_broker``; the
script prints one JSON line (``emit``) that the test asserts on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from session_broker.ops.embedded import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
CRN = "crn:v1:bluemix:public:quantum-computing:us-east:a/test-account:test-instance::"
KEY = "test-key-0123456789"
TENANT_KEY = "tenant-key-0123456789"


class ApiServer:
    """``session-broker api`` on a free port against ``redis_url``."""

    def __init__(
        self,
        stack,
        redis_url: str,
        env: dict | None = None,
        port: int | None = None,
        keys: str | None = None,
        args: list[str] | None = None,
    ):
        self.stack, self.redis_url = stack, redis_url
        self.port = port or free_port()
        self.env = {
            "SESSION_BROKER_URL": redis_url,
            "SESSION_BROKER_API_INSTANCE": CRN,
            "SESSION_BROKER_API_KEYS": keys if keys is not None else f"{KEY},{TENANT_KEY}@tenant1",
            "SESSION_BROKER_FLOWER_AUTH": "admin:secret",
            **(env or {}),
        }
        self.args = args or []
        self.child = None

    @property
    def url(self) -> str:
        scheme = "https" if "--certfile" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ApiServer:
        argv = [sys.executable, "-m", "session_broker.ops.cli", "api", "--port", str(self.port), *self.args]
        self.child = self.stack.spawn(f"api-{self.port}", argv, self.env)
        if wait:
            wait_for(self.healthy, 60, f"the API on port {self.port}; log: {self.log()}", interval=0.1)
        return self

    def healthy(self) -> bool:
        if self.child is not None and not self.child.alive():
            raise AssertionError(f"the API server exited:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthcheck", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def alive(self) -> bool:
        return self.child.alive() and self.healthy()

    def log(self) -> str:
        try:
            return Path(self.child.log).read_text()[-200_000:]
        except (OSError, AttributeError, TypeError):
            return ""

    def stop(self) -> None:
        if self.child is not None:
            self.stack.stop_child(self.child)
            self.stack.children.remove(self.child)
            self.child = None


def client_env(server: ApiServer, recipe: str = "constructor", key: str = KEY) -> dict:
    """The environment of a client process: only public configuration of the stock client."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSION_BROKER", "QISKIT_IBM", "PYTHONPATH"))
    }
    env.update(
        {
            "IAM_URL": server.url,
            "QISKIT_FUNCTIONS_EXPERIMENTAL": "1",
            "SB_SERVER": server.url,
            "SB_KEY": key,
            "SB_CIRCUITS": str(REPO / "tests" / "support" / "circuits.py"),
            "SB_CRN": CRN,
            "PYTHONWARNINGS": "ignore",
        }
    )
    if recipe == "env":
        env.update(
            {
                "QISKIT_IBM_TOKEN": key,
                "QISKIT_IBM_INSTANCE": CRN,
                "QISKIT_IBM_URL": f"{server.url}/experimental/api/v1",
            }
        )
    return env


PRELUDE = '''
import json, os, sys, time
from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import QiskitRuntimeService, Session, Batch, SamplerV2, EstimatorV2

def emit(**data):
    assert "session_broker" not in sys.modules, "the client process imported session_broker"
    print("RESULT " + json.dumps(data, default=str), flush=True)

def service():
    if os.environ.get("QISKIT_IBM_TOKEN"):
        return QiskitRuntimeService()   # the zero-code recipe: environment only
    return QiskitRuntimeService(channel="ibm_quantum_platform", token=os.environ["SB_KEY"],
                                instance=os.environ["SB_CRN"], url=os.environ["SB_SERVER"],
                                url_resolver=lambda url, *_: f"{url}/api/v1")

def bell():
    qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1); qc.measure_all()
    return qc

def isa_bell_and_ghz(backend):
    """A measured Bell circuit and an unmeasured one (for <ZZ>), transpiled for ``backend``."""
    pm = generate_preset_pass_manager(optimization_level=1, backend=backend)
    ghz = QuantumCircuit(2); ghz.h(0); ghz.cx(0, 1)
    return pm.run(bell()), pm.run(ghz)

def slow_pub(backend, seconds, qubits=14):
    """tests/support/circuits.py's slow PUB, transpiled for the client's backend."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("circuits", os.environ["SB_CIRCUITS"])
    circuits = importlib.util.module_from_spec(spec); spec.loader.exec_module(circuits)
    qc, obs, values = circuits.slow_pub(seconds, qubits)
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(qc)
    return (isa, obs.apply_layout(isa.layout), values)
'''


def run_client(
    server: ApiServer,
    body: str,
    recipe: str = "constructor",
    key: str = KEY,
    timeout: float = 600,
    extra_env: dict | None = None,
) -> dict:
    """Run ``body`` (after the prelude) with the stock client; return what it ``emit``-ted."""
    script = PRELUDE + textwrap.dedent(body)
    env = {**client_env(server, recipe, key), **(extra_env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"client exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-5000:]}\nserver log:\n{server.log()[-4000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------------- raw HTTP
def http(
    method: str,
    url: str,
    body=None,
    headers: dict | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, dict | str]:
    """One request; returns (status, parsed JSON or text). Never raises for a status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def get_token(server: ApiServer, key: str = KEY) -> str:
    from urllib.parse import urlencode

    form = urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": key}).encode()
    status, body = http(
        "POST",
        f"{server.url}/identity/token",
        raw=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, (status, body)
    return body["access_token"]


def auth_headers(token: str, crn: str = CRN) -> dict:
    return {"Authorization": f"Bearer {token}", "Service-CRN": crn, "IBM-API-Version": "2025-05-01"}


def wait_status(store, jid: str, statuses, timeout: float = 120) -> str:
    statuses = set(statuses)
    return wait_for(
        lambda: store.job(jid, "status").get("status") in statuses and store.job(jid, "status")["status"],
        timeout,
        f"job {jid} to reach {statuses}",
    )


__all__ = [
    "ApiServer",
    "CRN",
    "KEY",
    "TENANT_KEY",
    "auth_headers",
    "get_token",
    "http",
    "run_client",
    "time",
    "wait_status",
]
