"""Small mismatches a new user met in the first hour (issue 24): the README's API-key example,
`up --ha`'s "ready" line, and `bench` outside a checkout."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from session_broker.core.spawn import python_module

ROOT = Path(__file__).resolve().parents[2]


def test_the_readmes_api_keys_example_is_accepted():
    from session_broker.api.settings import parse_keys

    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    literal = re.findall(r"SESSION_BROKER_API_KEYS=([^\s$`'\"][^\s`]*)", docs)
    assert literal, "the docs show no SESSION_BROKER_API_KEYS=... example"
    for value in literal:
        keys = parse_keys(value)  # raised ConfigurationError: "key1" is under 8 characters
        assert len(keys) == len(value.split(",")), value
    keys = parse_keys(literal[0])
    carol = hashlib.sha256(b"carol-key-0123456789").hexdigest()
    assert [k.prefix for k in keys] == [None, None, "tenant-b"] and keys[1].sha256 == carol, keys


def test_up_ha_ready_line_exports_everything_a_producer_needs(monkeypatch):
    from session_broker.ops.cli import ready_line

    monkeypatch.setenv("SESSION_BROKER_WAIT_REPLICAS", "1")
    url = "sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/0?master=mymaster"
    words = shlex.split(ready_line(url, ha=True).split("Producers use:", 1)[1])
    assert words[0] == "export"
    exported = dict(w.split("=", 1) for w in words[1:])
    assert exported == {"SESSION_BROKER_URL": url, "SESSION_BROKER_WAIT_REPLICAS": "1"}
    assert "WAIT_REPLICAS" not in ready_line("redis://localhost:6379/0", ha=False)


def test_bench_from_an_installed_package_says_it_needs_a_checkout(tmp_path):
    """The package as pip installs it (session_broker and tasks, no benchmarks/ beside them),
    run from a directory that is no checkout: a clear message, exit 2, no traceback."""
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    for package in ("session_broker", "tasks"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    run = subprocess.run(
        python_module("session_broker.ops.cli", "bench", "--quick"),
        cwd=work,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "needs a checkout" in run.stderr and "Traceback" not in run.stderr, run.stderr
