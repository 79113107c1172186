"""``session-broker up`` prints the lines that point IBM's stock client at its stack; a user
who copies them runs unchanged code here. This test copies them literally: the environment
lines into a client process's environment, the constructor into its source."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

import pytest

from session_broker.ops.embedded import free_port, wait_for
from tests.conftest import FAST
from tests.support.rest import PRELUDE, REPO


@pytest.fixture(scope="module")
def up(redis_url, tmp_path_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_BROKER_")}
    env.update(
        {
            **FAST,
            "SESSION_BROKER_URL": redis_url,
            "SESSION_BROKER_FLOWER_AUTH": "admin:secret",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),
        }
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "session_broker.ops.cli",
            "up",
            "--no-flower",
            "--web-port",
            str(port),
            "--state-dir",
            str(tmp_path_factory.mktemp("up")),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.rstrip("\n") for ln in proc.stdout), daemon=True)
    reader.start()

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"`up` exited {proc.returncode}:\n" + "\n".join(lines))
        return any("QISKIT_IBM_URL=" in ln for ln in lines)

    try:
        wait_for(ready, 300, "`session-broker up` to print the client recipe", interval=0.2)
        yield lines
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, "\n".join(lines)


def exports(lines: list[str], start: str) -> dict:
    """The ``export`` block after the line that starts with ``start`` (continuations joined)."""
    i = next(n for n, ln in enumerate(lines) if ln.startswith(start))
    text, n = "", i + 1
    while not text or text.endswith("\\"):
        text = text.rstrip("\\") + " " + lines[n].strip()
        n += 1
    words = shlex.split(text)
    assert words[0] == "export", text
    return dict(w.split("=", 1) for w in words[1:])


def client_run(env: dict, make_service: str) -> str:
    script = (
        PRELUDE
        + f"""
svc = {make_service}
backend = svc.backend("ibmq_qasm_simulator")
isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(bell())
with Session(backend=backend) as session:
    counts = SamplerV2(mode=session).run([isa], shots=200).result()[0].data.meas.get_counts()
emit(counts=counts)
"""
    )
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSION_BROKER", "QISKIT_IBM", "PYTHONPATH", "IAM_URL"))
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**base, **env},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_the_printed_zero_code_recipe_works(up):
    env = exports(up, "or, with no code change")
    assert {"IAM_URL", "QISKIT_IBM_TOKEN", "QISKIT_IBM_INSTANCE", "QISKIT_IBM_URL"} <= set(env)
    out = client_run(env, "QiskitRuntimeService()")
    counts = json.loads(out.split("RESULT ", 1)[1])["counts"]
    assert sum(counts.values()) == 200 and set(counts) <= {"00", "11"}


def test_the_printed_constructor_recipe_works(up):
    env = exports(up, "IBM's own client")
    i = next(n for n, ln in enumerate(up) if ln.strip().startswith("QiskitRuntimeService("))
    constructor = " ".join(ln.strip() for ln in up[i : i + 2])
    out = client_run(env, constructor)
    counts = json.loads(out.split("RESULT ", 1)[1])["counts"]
    assert sum(counts.values()) == 200 and set(counts) <= {"00", "11"}


def readme_examples(section: str = "## Using it") -> list[str]:
    """The Python code blocks of one README section (up to the next ``## `` heading)."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_readmes_examples_run_on_the_stack_up_starts(up, tmp_path):
    """A new user runs the Quickstart's `up`, then pastes "Using it": every backend those
    examples name has a live worker (before: `up` served ibmq_qasm_simulator only and the first
    example, on ibm_algiers, waited for ever), and the first example runs as written."""
    from session_broker.core.config import load_settings
    from session_broker.core.store import Store

    blocks = readme_examples()
    assert len(blocks) >= 2, blocks
    named = set(re.findall(r"""backend(?:\(|=)\s*["']([a-z0-9_]+)["']""", "".join(blocks)))
    assert "ibm_algiers" in named and "ibmq_qasm_simulator" in named, named
    url = next(ln for ln in up if "export SESSION_BROKER_URL=" in ln).split("export SESSION_BROKER_URL=")[1]
    served = {w.get("backend") for w in Store(load_settings({"SESSION_BROKER_URL": url})).live_workers()}
    assert named <= served, f"the README's examples use {sorted(named - served)}, which `up` does not serve"

    base = {k: v for k, v in os.environ.items() if not k.startswith(("SESSION_BROKER", "PYTHONPATH"))}
    proc = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        env={**base, "SESSION_BROKER_URL": url, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,  # a deadline: before the fix this example never ended
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-2] == "In progress, accepting new jobs" and lines[-1] == "Closed", proc.stdout
    counts = ast.literal_eval(lines[0])  # the printed dict of counts
    assert sum(counts.values()) == 4000 and counts["00"] + counts["11"] > 3000, counts


def docs_python_blocks() -> list[tuple[str, str]]:
    """(file, code) of every ```python block in the README and docs/*.md."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [
        (p.name, code)
        for p in files
        for code in re.findall(r"```python\n(.*?)```", p.read_text(), flags=re.S)
    ]


def test_every_python_block_of_the_docs_runs_on_the_stack_up_starts(up, tmp_path):
    """Docs by audience, every code block run: our API's blocks as written, on `up`'s stack;
    IBM's client's block (the REST constructor) with the key, instance and address `up`
    printed in place of KEY, CRN and the default port, then a session job through it."""
    blocks = docs_python_blocks()
    ours = [(f, b) for f, b in blocks if not b.startswith("from qiskit_ibm_runtime")]
    ibm = [(f, b) for f, b in blocks if (f, b) not in ours]
    assert len(ours) >= 3 and len(ibm) >= 1, blocks
    url = next(ln for ln in up if "export SESSION_BROKER_URL=" in ln).split("export SESSION_BROKER_URL=")[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SESSION_BROKER", "PYTHONPATH"))}
    for where, code in ours:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, "SESSION_BROKER_URL": url, "PYTHONPATH": str(REPO)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, f"{where}:\n{code}\n{proc.stderr[-3000:]}"

    env = exports(up, "IBM's own client")
    web = env["IAM_URL"]
    key = next(ln for ln in up if "token='" in ln).split("token='", 1)[1].split("'", 1)[0]
    crn = next(ln for ln in up if "instance='" in ln).split("instance='", 1)[1].split("'", 1)[0]
    for where, code in ibm:
        constructor = code.split("service = ", 1)[1].replace("http://127.0.0.1:5556", web)
        constructor = constructor.replace("token=KEY", f"token={key!r}").replace(
            "instance=CRN", f"instance={crn!r}"
        )
        out = client_run(env, " ".join(constructor.split()))
        counts = json.loads(out.split("RESULT ", 1)[1])["counts"]
        assert sum(counts.values()) == 200 and set(counts) <= {"00", "11"}, (where, counts)
