"""Issue 2: workers register, run jobs, deregister; `up` brings a whole stack and takes it
down; bad configuration fails at start naming the variable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from session_broker.ops.embedded import wait_for
from tests.support.faults import read_until_ready

PY = sys.executable


def cli(*args, env=None, timeout=60):
    return subprocess.run(
        [PY, "-m", "session_broker.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_worker_registers_runs_and_deregisters_on_sigterm(stack, redis_url, bell):
    from session_broker import SamplerV2
    from tests.conftest import make_cluster

    c = make_cluster(stack, redis_url)
    w = c.start_worker("ibmq_qasm_simulator", name="reg-test@host1")
    entry = c.store.redis.hgetall(c.store.keys.worker("reg-test@host1"))
    assert entry["backend"] == "ibmq_qasm_simulator"
    assert entry["node"] == "reg-test@host1"
    assert int(entry["pid"]) == w.proc.pid
    assert entry["host"] and float(entry["started"]) > 0
    assert entry["pin"] == ""
    ttl_ms = c.store.redis.pttl(c.store.keys.worker("reg-test@host1"))
    assert 0 < ttl_ms <= c.settings.heartbeat_ttl * 1000

    job = SamplerV2(mode=c.service.backend("ibmq_qasm_simulator")).run([bell])
    result = job.result(timeout=60)
    assert job.status() == "DONE"
    assert c.store.job(job.job_id())["worker"] == "reg-test@host1"
    assert sum(result[0].data.meas.get_counts().values()) == 4096

    t0 = time.monotonic()
    c.stop_worker(w)
    assert w.proc.returncode is not None
    assert not c.store.redis.exists(c.store.keys.worker("reg-test@host1"))
    assert "reg-test@host1" not in c.store.redis.hgetall(c.store.keys.workers)
    print(f"deregistered {time.monotonic() - t0:.2f} s after SIGTERM")


def test_registry_entry_expires_after_sigkill(stack, redis_url):
    from tests.conftest import make_cluster

    c = make_cluster(stack, redis_url)
    w = c.start_worker("ibmq_qasm_simulator", name="kill-test@host1")
    key = c.store.keys.worker("kill-test@host1")
    # every beat sets the entry to expire a TTL later: Redis, not this (maybe stalled) test
    # process, times the expiry, so the bound is checked on what the worker set
    assert 0 < c.store.redis.pttl(key) <= c.settings.heartbeat_ttl * 1000
    c.kill_worker(w)
    t0 = time.monotonic()
    wait_for(lambda: not c.store.redis.exists(key), c.settings.heartbeat_ttl + 30, "registry key to expire")
    elapsed = time.monotonic() - t0
    print(f"registry entry gone {elapsed:.2f} s after SIGKILL (TTL {c.settings.heartbeat_ttl} s)")


def test_unknown_backend_is_refused_listing_known_ones(redis_url):
    r = cli("worker", "--backend", "ibm_nowhere", env={"SESSION_BROKER_URL": redis_url})
    assert r.returncode == 2
    assert "unknown backend 'ibm_nowhere'" in r.stderr
    assert "ibmq_qasm_simulator" in r.stderr and "ibm_algiers" in r.stderr


@pytest.mark.parametrize(
    "var,value",
    [
        ("SESSION_BROKER_URL", "http://localhost:6379"),
        ("SESSION_BROKER_URL", "redis://"),
        ("SESSION_BROKER_URL", "redis://localhost:6379/zero"),
        ("SESSION_BROKER_INTERACTIVE_TIMEOUT", "-5"),
        ("SESSION_BROKER_MAX_TIME", "0"),
        ("SESSION_BROKER_HEARTBEAT_INTERVAL", "soon"),
        ("SESSION_BROKER_OPEN_SESSION_TIMEOUT", "1.5"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(var, value):
    r = cli("worker", "--backend", "ibmq_qasm_simulator", env={var: value})
    assert r.returncode == 2, r.stderr
    assert var in r.stderr and repr(value) in r.stderr


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "tests need root to create a network namespace (ip netns add)"
    probe = subprocess.run(["ip", "netns", "add", "sb-probe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", "sb-probe"], capture_output=True)
    return None if probe.returncode == 0 else f"ip netns add failed: {probe.stderr.strip()}"


def test_up_without_redis_starts_embedded_stack_and_leaves_nothing_behind(tmp_path):
    """In a fresh network namespace nothing answers on localhost:6379, exactly as on a
    machine without Redis: `up` must start the embedded one."""
    reason = _netns_available()
    assert reason is None, reason
    ns = f"sb-up-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_BROKER_")}
        env["SESSION_BROKER_FLOWER_AUTH"] = "admin:secret"
        env["PYTHONUNBUFFERED"] = "1"
        up = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                PY,
                "-m",
                "session_broker.ops.cli",
                "up",
                "--state-dir",
                str(tmp_path / "state"),
                "--no-web",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        out = read_until_ready(up)
        assert "starting the embedded Redis" in out, out
        assert "ibmq_qasm_simulator: 1 worker(s) registered" in out, out
        assert "[flower] http://127.0.0.1:5555" in out, out
        health = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                PY,
                "-c",
                "import urllib.request;print(urllib.request.urlopen("
                "'http://127.0.0.1:5555/healthcheck',timeout=5).read().decode())",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.stdout.strip() == "OK", health.stderr
        descendants = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(p.name() for p in descendants)
        assert "redis-server" in names, names
        assert len(descendants) >= 4  # redis, worker (+ pool child), flower

        up.send_signal(signal.SIGTERM)
        rest = up.communicate(timeout=60)[0]
        assert up.returncode == 0, rest
        assert "stopped: no process left behind." in rest
        _, alive = psutil.wait_procs(descendants, timeout=15)
        assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_gpu_worker_is_refused_clearly_without_a_gpu(redis_url):
    from qiskit_aer import AerSimulator

    r = cli(
        "worker",
        "--backend",
        "aer_simulator_statevector",
        "--device",
        "GPU",
        env={"SESSION_BROKER_URL": redis_url},
    )
    if "GPU" in AerSimulator().available_devices():  # a GPU machine: it must start instead
        raise AssertionError("run the GPU benchmark (benchmarks/run.py --gpu) on this machine")
    assert r.returncode == 2
    assert "--device GPU" in r.stderr and "qiskit-aer-gpu" in r.stderr
