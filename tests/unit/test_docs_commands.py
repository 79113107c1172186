"""Every shell command the docs show is one we ship, spelled as our tools accept it: the
README's and docs/*.md's ```bash blocks, line by line. `session-broker` lines are parsed by
the CLI's own parser (each alternative of ``a|b`` and each ``[--option]``), `./run.sh` lines
name a command run.sh has, `pip install` lines name extras pyproject.toml declares, every
exported or prefixed variable is a setting the code reads. The Python blocks are run on a
real stack by tests/integration/test_up_recipe.py; docker compose lines are validated by
test_compose.py."""

from __future__ import annotations

import itertools
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from session_broker.ops.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IBM_CLIENT_VARS = {
    "IAM_URL",
    "QISKIT_FUNCTIONS_EXPERIMENTAL",
    "QISKIT_IBM_TOKEN",
    "QISKIT_IBM_INSTANCE",
    "QISKIT_IBM_URL",
}
# commands the docs show that are not ours, and where what they do is checked
OTHERS = {
    "docker": "compose files: tests/unit/test_compose.py (docker-compose config)",
    "cp": ".env from .env.example: test_compose.py checks its secrets are empty",
    "sed": "filling .env's secrets",
    "redis-server": "the flags the README asks for: .ci/run starts its Redis with them",
}


def bash_lines() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip().rstrip("&").strip()
                if line:
                    out.append((path.name, line))
    return out


def known_variables() -> set[str]:
    code = "\n".join(p.read_text() for p in (ROOT / "session_broker").rglob("*.py"))
    return set(re.findall(r"SESSION_BROKER_[A-Z_]+", code)) | IBM_CLIENT_VARS


def run_commands() -> set[str]:
    text = (ROOT / "run.sh").read_text()
    return {m for m in re.findall(r"^  ([a-z|-]+)\)", text, flags=re.M) for m in m.split("|")}


def variants(words: list[str]) -> list[list[str]]:
    """``session show|close ID [--watch]`` -> every spelling it stands for."""
    options = []
    for w in words:
        if w.startswith("[") and w.endswith("]"):
            options.append([[], w[1:-1].split("\x00")])
        elif "|" in w:
            options.append([[alt] for alt in w.split("|")])
        else:
            options.append([[w]])
    return [list(itertools.chain.from_iterable(combo)) for combo in itertools.product(*options)]


LINES = bash_lines()


def test_the_docs_show_commands():
    assert len(LINES) >= 20, LINES


@pytest.mark.parametrize("where,line", LINES, ids=[f"{w}:{line[:40]}" for w, line in LINES])
def test_every_documented_command_is_one_we_ship(where, line):
    line = re.sub(r"\$\([^)]*\)", "GENERATED", line)  # $(openssl rand ...): a value
    line = re.sub(r"\[([^\]]*)\]", lambda m: "[" + m.group(1).replace(" ", "\x00") + "]", line)
    words = shlex.split(line)
    variables = known_variables()
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value command
        name = words.pop(0).split("=", 1)[0]
        assert name in variables, f"{where}: {name} is not a setting anything reads"
    if not words:
        return
    head = words[0]
    if head == "export":
        for assignment in words[1:]:
            name = assignment.split("=", 1)[0]
            assert name in variables, f"{where}: export of {name}, which nothing reads"
    elif head == "./run.sh" and words[1] in run_commands():
        pass
    elif head in ("session-broker", "./run.sh"):  # run.sh passes any other command to session-broker
        for argv in variants(words[1:]):
            try:
                build_parser().parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{where}: `session-broker {' '.join(argv)}` is refused by the CLI ({exc.code})")
    elif head == "pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for spec in words[2:]:
            for extra in re.findall(r"\[([a-z,]+)\]", spec):
                assert set(extra.split(",")) <= set(extras), f"{where}: no extra {extra!r}"
        if "-c" in words:
            assert (ROOT / words[words.index("-c") + 1]).exists()
    else:
        assert head in OTHERS, f"{where}: `{head}` is neither our command nor a known other one"
