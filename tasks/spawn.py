"""How our processes start other Python processes of ours: never with the current directory
on ``sys.path``.

``python -c ...`` and ``python -m ...`` put the current directory first on ``sys.path``, so a
user's ``tasks.py`` (every Celery tutorial project has one) or ``tasks/`` package in the
directory where ``session-broker worker`` or ``up`` was started would be imported instead of
this package (``No module named 'tasks.executor'; 'tasks' is not a package``). Python 3.11+
has ``-P`` (``sys.flags.safe_path``) for exactly this; on 3.10 the child drops the entry itself
before importing anything of ours.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

SAFE_PATH_FLAG = sys.version_info >= (3, 11)  # python -P


def python_code(code: str, *args: str) -> list[str]:
    """argv of ``python -c code args`` with the current directory kept off ``sys.path``."""
    if SAFE_PATH_FLAG:
        return [sys.executable, "-P", "-c", code, *args]
    # -c puts '' (the current directory) at sys.path[0]
    return [sys.executable, "-c", "import sys\nif sys.path[:1] == ['']: del sys.path[0]\n" + code, *args]


def python_module(module: str, *args: str) -> list[str]:
    """argv of ``python -m module args`` with the current directory kept off ``sys.path``."""
    if SAFE_PATH_FLAG:
        return [sys.executable, "-P", "-m", module, *args]
    return python_code(
        f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)", *args
    )


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for such a child, its ``PYTHONPATH`` starting with the directory this package was
    imported from unless that is an installed site directory: a checkout run as ``python -m
    session_broker.ops.cli ...`` from its root found itself through the current directory,
    which the child no longer searches."""
    root = str(Path(__file__).resolve().parents[1])
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    if root in {str(Path(p).resolve()) for p in sites}:
        return env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths and str(Path(paths[0]).resolve()) == root:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join([root, *paths])}
