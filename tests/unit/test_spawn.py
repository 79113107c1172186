"""Children we start never import a user's ``tasks`` module from the current directory
(issue 24): with ``python -P`` (3.11+) and with the fallback that 3.10 runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from session_broker.core import spawn

REPO = Path(__file__).resolve().parents[2]
PROBE = "import tasks, tasks.link; print(tasks.__file__)"


@pytest.fixture(params=[True, False], ids=["python -P", "3.10 fallback"])
def flag(request, monkeypatch):
    monkeypatch.setattr(spawn, "SAFE_PATH_FLAG", request.param)
    return request.param


@pytest.mark.parametrize("shape", ["tasks.py", "tasks/__init__.py"])
def test_a_child_imports_our_tasks_not_the_one_in_its_directory(flag, shape, tmp_path):
    (tmp_path / shape).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / shape).write_text("raise SystemExit('the user tasks module was imported')\n")
    (tmp_path / "probe.py").write_text(PROBE + "\n")
    env = spawn.child_env({**os.environ, "PYTHONPATH": str(REPO)})
    run = subprocess.run(
        spawn.python_code(PROBE), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()) == REPO / "tasks" / "__init__.py", run.stdout
    # python -m: a module of the current directory is not found either
    run = subprocess.run(
        spawn.python_module("probe"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0 and "No module named probe" in run.stderr, run.stderr
    assert ("-P" in spawn.python_code(PROBE)) is flag


def test_a_module_runs_as_main_with_its_arguments(flag, tmp_path):
    argv = spawn.python_module("session_broker.ops.cli", "bench", "--help")
    env = spawn.child_env({**os.environ, "PYTHONPATH": str(REPO)})
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "usage: session-broker bench" in run.stdout, run.stderr
