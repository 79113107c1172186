"""The module map in docs/internals.md names every module of the package and the worker, so a
newcomer's map cannot fall behind the code (a new file fails here until it is placed)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_module_map_names_every_module():
    text = (ROOT / "docs" / "internals.md").read_text()
    block = text.split("## Development", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[a-z_0-9]+\.py", block))
    missing = sorted(
        str(p.relative_to(ROOT))
        for pkg in ("session_broker", "tasks")
        for p in (ROOT / pkg).rglob("*.py")
        if p.name != "__init__.py" and p.name not in named
    )
    assert not missing, f"docs/internals.md's module map does not name: {missing}"
