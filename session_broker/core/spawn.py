"""How our processes start other Python processes of ours: never with the current directory
on ``sys.path``.

``python -c ...`` and ``python -m ...`` put the current directory first on ``sys.path``, so a
user's ``tasks.py`` (every Celery tutorial project has one) or ``tasks/`` package in the
directory where ``session-broker worker`` or ``up`` was started would be imported instead of
the worker package (``No module named 'tasks.executor'; 'tasks' is not a package``). Python
3.11+ has ``-P`` (``sys.flags.safe_path``) for exactly this; on 3.10 the child drops the entry
itself before importing anything of ours.

The worker's code lives in the repository's ``tasks/`` folder (the design's layout) but is
installed as ``session_broker_tasks``: a top-level ``tasks`` in site-packages would shadow a
user's ``tasks`` module, or be shadowed by it, in every Python of that environment.
:func:`worker_package` names the one that this process runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
import sys
from pathlib import Path
from types import ModuleType

SAFE_PATH_FLAG = sys.version_info >= (3, 11)  # python -P
# the directory that holds this session_broker: a checkout's root, or site-packages
ROOT = Path(__file__).resolve().parents[2]
INSTALLED_NAME = "session_broker_tasks"  # pyproject.toml installs tasks/ under this name


def worker_package() -> str:
    """Import name of the worker package beside this ``session_broker``: ``tasks`` in a
    checkout (its ``tasks/`` folder), ``session_broker_tasks`` when installed from a wheel.

    In a checkout the root is put on ``sys.path`` if it is not there (an editable install's
    console script finds ``session_broker`` without it), and a ``tasks`` that some other
    directory provides (a user's ``tasks.py`` ahead of the checkout) is refused by name."""
    checkout = ROOT / "tasks"
    if not (checkout / "__init__.py").is_file() or not (ROOT / "pyproject.toml").is_file():
        return INSTALLED_NAME
    if str(ROOT) not in {str(Path(p or ".").resolve()) for p in sys.path}:
        sys.path.append(str(ROOT))
    found = importlib.util.find_spec("tasks")
    origin = Path(found.origin).resolve() if found is not None and found.origin else None
    if origin != checkout / "__init__.py":
        raise ImportError(
            f"the worker package 'tasks' resolves to {origin}, not this checkout's {checkout}: "
            "run from the checkout's root, or install session-broker (it installs as "
            f"{INSTALLED_NAME})"
        )
    return "tasks"


def worker_module(name: str) -> ModuleType:
    """The worker package's module ``name`` (``"supervisor"``), under its import name."""
    return importlib.import_module(f"{worker_package()}.{name}")


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
    root = str(ROOT)
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    if root in {str(Path(p).resolve()) for p in sites}:
        return env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths and str(Path(paths[0]).resolve()) == root:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join([root, *paths])}
