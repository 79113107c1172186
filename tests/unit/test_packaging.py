"""What gets installed (issue 24): the worker's ``tasks/`` folder installs as
``session_broker_tasks``, never as a top-level ``tasks`` that a user's ``tasks`` module would
shadow or be shadowed by; the explicit package list in pyproject.toml misses no folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from session_broker.core import spawn

REPO = Path(__file__).resolve().parents[2]


def test_the_package_list_names_every_folder_and_installs_tasks_under_its_own_name():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "session_broker").rglob("__init__.py")
    }
    assert set(setup["packages"]) == found | {spawn.INSTALLED_NAME}
    assert setup["package-dir"] == {spawn.INSTALLED_NAME: "tasks"}
    assert "tasks" not in setup["packages"]


def test_a_checkout_runs_its_tasks_folder_and_an_install_its_own_name(monkeypatch, tmp_path):
    assert spawn.worker_package() == "tasks"
    assert spawn.worker_module("link").__file__ == str(REPO / "tasks" / "link.py")
    # site-packages: session_broker/ beside session_broker_tasks/, no pyproject.toml, no tasks/
    monkeypatch.setattr(spawn, "ROOT", tmp_path)
    assert spawn.worker_package() == "session_broker_tasks"


def test_a_checkout_whose_tasks_name_is_taken_by_a_users_module_says_so(tmp_path):
    """``python -c`` from a project holding its own tasks.py, with the checkout on PYTHONPATH:
    the user's module comes first on sys.path; we refuse it by name instead of running it."""
    (tmp_path / "tasks.py").write_text("USERS = True\n")
    run = subprocess.run(
        [sys.executable, "-c", "from session_broker.core.spawn import worker_package; worker_package()"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert f"resolves to {tmp_path / 'tasks.py'}" in run.stderr, run.stderr
    assert "session_broker_tasks" in run.stderr
