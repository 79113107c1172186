"""Flower's login has no holes (issue 16).

A real Flower (started by ``Stack.start_flower``, as ``session-broker up`` does) against a
real Redis and worker. Every route Flower defines, with GET and POST, is tried with no
credentials, a wrong password, the user alone, the password alone, a prefix of the
password, the password with something appended, another scheme and garbage: each answers
401, except ``/healthcheck``. With the right login the pages answer (``/metrics`` included,
with the worker's metrics). The password is in no process's command line, and a login that
Flower would split at a ``,`` is refused before Flower starts.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from session_broker.ops.embedded import free_port, wait_for
from tests.conftest import HOST, make_cluster

USER = "ops.admin"
PASSWORD = "p:a;s$s'w\"o`r~d=" + os.urandom(6).hex()  # printable, with ':' and quotes
GOOD = f"{USER}:{PASSWORD}"


@pytest.fixture(scope="module")
def flower(stack, redis_url):
    cluster = make_cluster(stack, redis_url)
    cluster.start_worker("ibmq_qasm_simulator", name="flower-login@%h")
    port = free_port()
    child = stack.start_flower(redis_url, port, GOOD, env=cluster.env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: status(f"{base}/healthcheck") == 200, 90, "Flower to answer /healthcheck")
    return base, child


def status(url: str, auth: str | None = None, method: str = "GET", scheme: str = "Basic") -> int:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if auth is not None:
        req.add_header("Authorization", f"{scheme} {auth}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BAD = {
    "none": None,
    "wrong password": b64(f"{USER}:not-it"),
    "user only": b64(USER),
    "user and colon": b64(f"{USER}:"),
    "password only": b64(PASSWORD),
    "password prefix": b64(f"{USER}:{PASSWORD[:-1]}"),
    "password plus": b64(f"{GOOD},x"),
    "other user": b64(f"admin:{PASSWORD}"),
    "empty": "",
    "garbage": "!!!not-base64",
    "bearer": "bearer",
}


def routes() -> list[str]:
    """A concrete path for every route Flower defines (groups filled with 'x')."""
    import flower.urls

    paths = []
    for spec in flower.urls.handlers:
        pattern = spec.regex.pattern if hasattr(spec, "regex") else spec[0]
        path = re.sub(r"\([^)]*\)", "x", pattern.rstrip("$")).replace("/?", "")
        paths.append(path if path != ".*" else "/no-such-page")
    return sorted(set(paths))


def test_every_route_but_healthcheck_needs_the_exact_login(flower):
    base, _ = flower
    paths = routes()
    assert {"/metrics", "/api/workers", "/static/x", "/login", "/healthcheck"} <= set(paths), paths
    tried = 0
    for path in paths:
        for method in ("GET", "POST"):
            for what, auth in BAD.items():
                scheme = "Bearer" if what == "bearer" else "Basic"
                code = status(base + path, b64(GOOD) if what == "bearer" else auth, method, scheme)
                tried += 1
                if path == "/healthcheck":  # open, and answers nothing but OK
                    assert code == (200 if method == "GET" else 405), (method, what, code)
                else:
                    assert code == 401, f"{method} {path} with {what}: {code}"
    print(f"{tried} requests without the right login: every one refused but /healthcheck")


def test_the_right_login_opens_every_page(flower):
    base, _ = flower
    auth = b64(GOOD)
    for path in ("/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks"):
        assert status(base + path, auth) == 200, path
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Basic {auth}"})
    wait_for(
        lambda: f"flower-login@{HOST}" in urllib.request.urlopen(req, timeout=30).read().decode(),
        60,
        "the worker's metrics on /metrics",
    )


def _cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out


def test_the_password_is_on_no_command_line(flower):
    _, child = flower
    lines = _cmdlines()
    assert any("session_broker.ops.flower_login" in line for line in lines)
    assert not [line for line in lines if PASSWORD in line or "basic-auth" in line]
    environ = Path(f"/proc/{child.proc.pid}/environ")
    assert oct(environ.stat().st_mode & 0o777) == "0o400"  # only the owner reads the environment


@pytest.mark.parametrize("auth", ["admin:abc,XYZsecret", "admin:with space", "admin"])
def test_a_login_flower_would_split_is_refused_before_it_starts(auth, redis_url):
    env = {**os.environ, "SESSION_BROKER_URL": redis_url, "SESSION_BROKER_FLOWER_AUTH": auth}
    proc = subprocess.run(
        [sys.executable, "-m", "session_broker.ops.cli", "flower", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "SESSION_BROKER_FLOWER_AUTH" in proc.stderr and "','" in proc.stderr, proc.stderr
    assert "XYZsecret" not in proc.stderr + proc.stdout


def get_json(url: str):
    import json

    req = urllib.request.Request(url, headers={"Authorization": f"Basic {b64(GOOD)}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_flower_counts_a_job_killed_at_its_time_limit_as_failed(flower, hold):
    """Issue 24: the supervisor kills the executor, which never sends task-failed; Flower showed
    "Unknown task" and Failed 0. Flower's own views (the task's page, the Failed column of
    its worker list, read as the JSON they render) now show the failure and the task's name."""
    from session_broker import EstimatorV2, MaxExecutionTimeExceededError
    from session_broker.core.config import get_settings
    from session_broker.core.store import Store
    from tests.conftest import slow_pub

    base, _ = flower
    node = f"flower-login@{HOST}"

    def failed_count() -> int:
        rows = get_json(f"{base}/workers?json=1")["data"]
        return next((int(r.get("task-failed", 0)) for r in rows if r.get("hostname") == node), -1)

    wait_for(lambda: failed_count() >= 0, 60, f"Flower to list {node}")
    before = failed_count()
    job = EstimatorV2(mode="ibmq_qasm_simulator", options={"max_execution_time": 1}).run([slow_pub(2)])
    store = Store(get_settings())
    hold(store, job.job_id())  # frozen: it overruns its hard limit on any machine
    with pytest.raises(MaxExecutionTimeExceededError):
        job.result(timeout=120)
    error = store.job(job.job_id(), "error")["error"]

    def task_info():
        try:
            info = get_json(f"{base}/api/task/info/{job.job_id()}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # Flower has not heard of it (yet)
                return None
            raise
        return info if info.get("state") == "FAILURE" else None

    info = wait_for(task_info, 60, "Flower to show the job as failed")
    assert info["name"] == "estimator" and error in info["exception"], info
    wait_for(lambda: failed_count() == before + 1, 30, "Flower's Failed count of the worker to rise")
