"""Imports sit at the top of a module. The exceptions are deliberate: each function-level
import says why, in a comment starting ``# lazy:`` on its line or the line above (keeping
Qiskit, Flower or uvicorn out of a process that does not need them; an optional package).
A new import inside a function without one fails here: move it to the top, or say why not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("session_broker", "tasks")


def function_imports() -> list[tuple[str, int, str]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            lines = path.read_text().splitlines()
            for fn in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        here = lines[node.lineno - 1]
                        above = lines[node.lineno - 2] if node.lineno > 1 else ""
                        if "# lazy:" not in here and "# lazy:" not in above:
                            out.append((str(path.relative_to(ROOT)), node.lineno, here.strip()))
    return out


def test_every_function_level_import_says_why():
    undocumented = function_imports()
    assert not undocumented, "imports inside functions without a '# lazy:' reason:\n" + "\n".join(
        f"  {p}:{n}: {src}" for p, n, src in undocumented
    )
