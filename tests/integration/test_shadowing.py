"""A user's ``tasks.py`` (or ``tasks/`` package) in the directory a worker is started from
must not shadow ours (issue 24): every Celery tutorial project has a ``tasks.py``, and the
executor used to be started with ``python -c``, which puts the current directory first on
``sys.path`` (``No module named 'tasks.executor'; 'tasks' is not a package``, five times, then
the worker stopped). Real workers, started as a user starts them, run a real job."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from session_broker import SamplerV2
from session_broker.ops.embedded import Child, wait_for
from tests.conftest import make_cluster, node_name
from tests.support.rest import REPO

BACKEND = "ibmq_qasm_simulator"
USER_TASKS = '''"""A Celery tutorial's tasks module."""
from celery import Celery

app = Celery("tasks", broker="redis://localhost:6379/0")


@app.task
def add(x, y):
    return x + y
'''


@pytest.fixture(params=["tasks.py", "tasks/__init__.py"])
def project(request, tmp_path) -> Path:
    """A user's project directory holding a ``tasks`` module or package of its own."""
    target = tmp_path / request.param
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(USER_TASKS)
    return tmp_path


@pytest.fixture
def c(stack, fresh):
    cluster = fresh()
    made = make_cluster(stack, cluster.url)
    made.workers = cluster.workers  # stopped by `fresh` at the end
    return made


def run_a_job(c, bell) -> None:
    job = SamplerV2(mode=BACKEND).run([bell], shots=16)
    assert job.result(timeout=120)[0].data.meas.num_shots == 16


def test_session_broker_worker_in_a_project_with_its_own_tasks_module(c, project, stack, bell):
    """`session-broker worker` (the installed command) started in the project directory."""
    name = f"shadow-{uuid.uuid4().hex[:6]}@%h"
    script = Path(sys.executable).parent / "session-broker"
    env = {
        **os.environ,
        **c.env,
        "SESSION_BROKER_URL": c.url,
        # this checkout, not an installed copy, as every test's workers (an installed package
        # needs nothing here)
        "PYTHONPATH": str(REPO),
    }
    log = project / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(script), "worker", "--backend", BACKEND, "--name", name],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(f"worker-{name}", proc, log)
    stack.children.append(child)
    child.node = node = node_name(name)
    c.workers[node] = child
    job = SamplerV2(mode=BACKEND).run([bell], shots=16)

    def ran():
        assert proc.poll() is None, f"the worker stopped; its log:\n{log.read_text()[-3000:]}"
        return job.status() == "DONE"

    wait_for(ran, 120, f"job {job.job_id()} to run on {node}")
    assert job.result()[0].data.meas.num_shots == 16


def test_a_worker_that_up_starts_in_such_a_project(c, project, bell, monkeypatch):
    """`session-broker up` starts its workers (Stack.start_worker) from the directory it was
    started in: the project's own tasks module must not shadow ours there either."""
    monkeypatch.chdir(project)
    c.start_worker(BACKEND)
    run_a_job(c, bell)
