"""The operator's commands, run as a user runs them: ``python -m session_broker.ops.cli ...``
subprocesses against a real Redis and a real worker.

Jobs that must stay QUEUED go to a session on ``aer_simulator``, a backend with no worker
in this module: nothing can run them, so cancelling and closing are deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from session_broker.ops.embedded import free_port, wait_for
from tests.conftest import FAST

REPO = Path(__file__).resolve().parents[2]
IDLE_BACKEND = "aer_simulator"  # no worker serves it here


def cli_env(url: str) -> dict:
    env = {**os.environ, **FAST, "SESSION_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def cli(url: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "session_broker.ops.cli", *argv],
        cwd=REPO,
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(url: str, *argv: str):
    res = cli(url, *argv, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# The CLI under test starts with SIGINT at its default disposition, as from a user's terminal.
# A non-interactive shell starts background jobs (`pytest ... &`) with SIGINT ignored; the
# child would inherit that and, as Python does with an ignored SIGINT, keep ignoring it (no
# KeyboardInterrupt). This launcher resets it and execs the CLI in the same process (a
# preexec_fn would do it too, but is unsafe in a process with threads, as this one is).
CLI = [
    sys.executable,
    "-c",
    (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'session_broker.ops.cli', *sys.argv[1:]])"
    ),
]


class Running:
    """A CLI subprocess whose stdout is collected by a thread, to wait on with a deadline."""

    def __init__(self, url: str, *argv: str):
        self.proc = subprocess.Popen(
            [*CLI, *argv],
            cwd=REPO,
            env=cli_env(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            chunk = self.proc.stdout.read(1)
            if not chunk:
                return
            with self._lock:
                self.out += chunk

    def text(self) -> str:
        with self._lock:
            return self.out

    def wait_output(self, predicate, timeout: float, what: str):
        def check():
            if self.proc.poll() is not None and not predicate(self.text()):
                self._reader.join(5)
                if predicate(self.text()):
                    return True
                raise AssertionError(
                    f"the command exited ({self.proc.returncode}) before {what}:\n"
                    f"{self.text()}\n{self.proc.stderr.read()}"
                )
            return predicate(self.text())

        wait_for(check, timeout, what, interval=0.1)

    def finish(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def bell_session(cluster, bell):
    """A session on the worker's backend with two finished Sampler jobs (still active)."""
    from session_broker import SamplerV2, Session

    session = Session(service=cluster.service, backend="ibmq_qasm_simulator")
    sampler = SamplerV2(mode=session)
    jobs = [sampler.run([bell], shots=200) for _ in range(2)]
    for job in jobs:
        job.result(timeout=120)
    return session, [j.job_id() for j in jobs]


@pytest.fixture(scope="module")
def bell():  # module-scoped twin of conftest's ``bell``
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def stuck_session(cluster, bell, n: int):
    """A session whose ``n`` jobs stay QUEUED (no worker serves its backend)."""
    from session_broker import SamplerV2, Session

    session = Session(service=cluster.service, backend=IDLE_BACKEND)
    sampler = SamplerV2(mode=session)
    return session, [sampler.run([bell], shots=10).job_id() for _ in range(n)]


def node_of(cluster) -> str:
    return next(iter(cluster.workers))


# ---------------------------------------------------------------------- tables and --json
def test_sessions_table_and_json(cluster, bell_session):
    session, _ = bell_session
    sid, node = session.session_id, node_of(cluster)
    res = cli(cluster.url, "sessions")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = lines[0].split()
    for column in (
        "ID",
        "MODE",
        "BACKEND",
        "STATUS",
        "STATE",
        "WORKER",
        "TIME",
        "LEFT",
        "QUEUED",
        "RUNNING",
        "DONE",
        "FAILED",
        "CANCELLED",
        "CREATED",
    ):
        assert column in header
    row = next(line for line in lines if line.startswith(sid))
    assert "In progress, accepting new jobs" in row and "active" in row and node in row
    # aligned: every column starts at the same offset in the header and the row
    assert lines[0].index("BACKEND") == row.index("ibmq_qasm_simulator")

    rows = cli_json(cluster.url, "sessions")
    mine = next(r for r in rows if r["id"] == sid)
    assert mine["status"] == "In progress, accepting new jobs"
    assert mine["state"] == "active" and mine["mode"] == "session"
    assert mine["backend"] == "ibmq_qasm_simulator" and mine["worker"] == node
    assert (mine["queued"], mine["running"], mine["done"], mine["failed"], mine["cancelled"]) == (
        0,
        0,
        2,
        0,
        0,
    )
    assert 0 < mine["time_left"] <= mine["max_time"]
    assert mine["created"].endswith("Z")


def test_session_show_matches_details(cluster, bell_session):
    session, job_ids = bell_session
    shown = cli_json(cluster.url, "session", "show", session.session_id)
    details = session.details()
    assert set(details) <= set(shown)
    for key in ("id", "backend_name", "state", "mode", "worker", "jobs", "max_time", "accepting_jobs"):
        assert shown[key] == details[key], key
    assert shown["status"] == "In progress, accepting new jobs"
    assert shown["job_ids"] == job_ids

    res = cli(cluster.url, "session", "show", session.session_id)
    assert res.returncode == 0, res.stderr
    assert "In progress, accepting new jobs" in res.stdout
    assert all(jid in res.stdout for jid in job_ids)


def test_jobs_table_and_json(cluster, bell_session):
    session, job_ids = bell_session
    res = cli(cluster.url, "jobs", "--session", session.session_id)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "PRIMITIVE", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == list(reversed(job_ids))  # newest first
    assert all(" sampler " in line and " DONE " in line for line in lines[1:])

    rows = cli_json(cluster.url, "jobs", "--limit", "100")
    by_id = {r["id"]: r for r in rows}
    for jid in job_ids:
        row = by_id[jid]
        assert row["status"] == "DONE" and row["session"] == session.session_id
        assert row["worker"] == node_of(cluster) and row["attempts"] == 1
        assert row["pubs"] == 1 and row["shots"] == 200
        assert row["run_seconds"] is not None and row["queued_seconds"] is not None


def test_workers_table_and_json(cluster, bell_session):
    session, _ = bell_session
    node = node_of(cluster)
    res = cli(cluster.url, "workers")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split() == ["NODE", "BACKEND", "DEVICE", "HOST", "PID", "PIN", "HEARTBEAT", "UP", "RUNNING"]
    row = next(r for r in rows if r.startswith(node))
    assert "ibmq_qasm_simulator" in row and session.session_id in row and "s ago" in row

    info = next(w for w in cli_json(cluster.url, "workers") if w["node"] == node)
    assert info["alive"] and info["backend"] == "ibmq_qasm_simulator"
    assert info["pin"] == session.session_id and info["running"] == []
    assert info["pid"] == cluster.workers[node].proc.pid
    assert 0 <= info["heartbeat_age"] < 5  # beats every 0.5 s here


def test_job_show(cluster, bell_session):
    _, job_ids = bell_session
    res = cli(cluster.url, "job", "show", job_ids[0])
    assert res.returncode == 0, res.stderr
    assert "DONE" in res.stdout and "register meas" in res.stdout and "200 shots" in res.stdout

    view = cli_json(cluster.url, "job", "show", job_ids[0])
    assert view["status"] == "DONE" and view["primitive"] == "sampler"
    result = view["result"]
    assert result["kind"] == "sampler" and result["register"] == "meas" and result["shots"] == 200
    assert {k for k, _ in result["top"]} <= {"00", "11"}
    assert sum(v for _, v in result["top"]) == 200
    assert "payload" not in view and "message" not in view


def test_job_show_estimator_result(cluster, bell_session):
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

    from session_broker import EstimatorV2

    session, _ = bell_session
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    job = EstimatorV2(mode=session).run(
        [(qc, [SparsePauliOp("ZZ"), SparsePauliOp("XX"), SparsePauliOp("ZI")])], precision=0
    )
    job.result(timeout=120)
    view = cli_json(cluster.url, "job", "show", job.job_id())
    assert view["result"]["kind"] == "estimator" and view["result"]["evs_shape"] == [3]
    assert view["result"]["evs"] == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)
    res = cli(cluster.url, "job", "show", job.job_id())
    assert "evs shape (3,)" in res.stdout


# ---------------------------------------------------------------------- transitions
def test_job_cancel_and_wait(cluster, bell):
    session, (first, second) = stuck_session(cluster, bell, 2)
    try:
        res = cli(cluster.url, "job", "cancel", second)
        assert res.returncode == 0, res.stderr
        assert "cancelled" in res.stdout
        assert cluster.job(second)["status"] == "CANCELLED"

        again = cli(cluster.url, "job", "cancel", second, "--json")
        assert again.returncode == 1
        assert json.loads(again.stdout) == {
            "id": second,
            "cancelled": False,
            "outcome": "CANCELLED",
            "message": f"job {second} already ended (CANCELLED); nothing to cancel",
        }

        waited = cli(cluster.url, "job", "wait", second)  # already final: returns at once
        assert waited.returncode == 1 and "CANCELLED" in waited.stdout

        # `job wait` on a queued job shows its status until it ends
        waiting = Running(cluster.url, "job", "wait", first)
        try:
            waiting.wait_output(lambda out: f"job {first}: QUEUED" in out, 60, "the QUEUED line")
            assert cli(cluster.url, "job", "cancel", first).returncode == 0
            assert waiting.finish() == 1
            assert "CANCELLED" in waiting.text()
        finally:
            waiting.kill()
    finally:
        session.cancel()


def test_job_wait_done(cluster, bell_session, bell):
    from session_broker import SamplerV2

    session, _ = bell_session
    job = SamplerV2(mode=session).run([bell], shots=100)
    res = cli(cluster.url, "job", "wait", job.job_id())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DONE" in res.stdout and "register meas" in res.stdout
    assert job.status() == "DONE"


def test_session_cancel(cluster, bell):
    session, job_ids = stuck_session(cluster, bell, 3)
    res = cli(cluster.url, "session", "cancel", session.session_id)
    assert res.returncode == 0, res.stderr
    assert f"session {session.session_id} cancelled: 3 queued job(s) cancelled" in res.stdout
    assert session.status() == "Closed"
    assert [cluster.job(j)["status"] for j in job_ids] == ["CANCELLED"] * 3

    again = cli_json(cluster.url, "session", "cancel", session.session_id)
    assert again["already_closed"] and again["status"] == "Closed"


def test_session_close_wait_shows_jobs_left(cluster, bell):
    session, job_ids = stuck_session(cluster, bell, 2)
    sid = session.session_id
    waiting = Running(cluster.url, "session", "close", sid, "--wait")
    try:
        waiting.wait_output(
            lambda out: "2 job(s) left (0 running, 2 queued)" in out, 60, "the progress line with 2 jobs left"
        )
        assert f"session {sid} is closing" in waiting.text()
        assert session.status() == "In progress, not accepting new jobs"
        # the jobs end (cancelled here: nothing serves the backend); --wait follows them
        assert cli(cluster.url, "job", "cancel", job_ids[0]).returncode == 0
        waiting.wait_output(lambda out: "1 job(s) left" in out, 60, "the progress line with 1 job left")
        assert cli(cluster.url, "job", "cancel", job_ids[1]).returncode == 0
        assert waiting.finish() == 0
        assert f"session {sid}: Closed (closed)" in waiting.text()
    finally:
        waiting.kill()
    assert session.status() == "Closed"


def test_session_close_idle_session(cluster):
    from session_broker import Session

    session = Session(service=cluster.service, backend="ibmq_qasm_simulator")
    res = cli(cluster.url, "session", "close", session.session_id, "--wait", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["state"] == "closed" and report["status"] == "Closed"
    assert session.status() == "Closed"


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv",
    [
        ("session", "show", "nosuchsession"),
        ("session", "close", "nosuchsession"),
        ("session", "cancel", "nosuchsession"),
        ("job", "show", "nosuchjob"),
        ("job", "cancel", "nosuchjob"),
        ("job", "wait", "nosuchjob"),
        ("jobs", "--session", "nosuchsession"),
    ],
)
def test_unknown_ids_exit_3(cluster, argv):
    res = cli(cluster.url, *argv)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [("sessions",), ("jobs",), ("workers", "--watch"), ("session", "show", "x"), ("job", "cancel", "x")],
)
def test_unreachable_redis_exit_4(argv):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    res = cli(url, *argv, timeout=60)
    assert res.returncode == 4, (res.stdout, res.stderr)
    assert "cannot reach Redis" in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - started < 30  # fails fast, not after the library's long retries


# ---------------------------------------------------------------------- --watch
def test_sessions_watch_redraws_until_interrupted(cluster, bell_session):
    session, _ = bell_session
    watch = Running(cluster.url, "sessions", "--watch")
    try:
        watch.wait_output(lambda out: out.count("\x1b[H\x1b[2J") >= 2, 90, "two redraws")
        watch.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert watch.finish() == 0
    finally:
        watch.kill()
    frames = watch.text().split("\x1b[H\x1b[2J")[1:]
    assert len(frames) >= 2
    assert all("sessions (newest 50)" in f and session.session_id in f for f in frames[:2])


def test_workers_watch_json_until_terminated(cluster):
    watch = Running(cluster.url, "workers", "--watch", "--json")
    try:
        watch.wait_output(lambda out: out.count("\n") >= 2, 90, "two JSON documents")
        watch.proc.send_signal(signal.SIGTERM)
        assert watch.finish() == 0
    finally:
        watch.kill()
    docs = [json.loads(line) for line in watch.text().splitlines() if line.strip()]
    assert len(docs) >= 2
    assert all(any(w["node"] == node_of(cluster) for w in doc) for doc in docs)


def test_an_unsafe_redis_is_one_warning_a_process_and_none_for_views(cluster, bell_session):
    """Issue 24: every command printed the same warning twice (a log line and a RuntimeWarning
    with its source line), views included. The tests' Redis persists nothing."""
    session, job_ids = bell_session
    warning = "UNSAFE REDIS SETTING: Redis persists nothing"
    for argv in (
        ("sessions",),
        ("jobs",),
        ("workers",),
        ("session", "show", session.session_id),
        ("job", "show", job_ids[0]),
        ("job", "wait", job_ids[0]),
    ):
        res = cli(cluster.url, *argv)
        assert res.returncode == 0, res.stderr
        assert "persists nothing" not in res.stderr + res.stdout, (argv, res.stderr)
    changes = cli(cluster.url, "job", "cancel", job_ids[0])  # ended: exit 1, but it may write
    assert changes.returncode == 1, changes.stderr
    assert changes.stderr.count(warning) == 1 and "RuntimeWarning" not in changes.stderr, changes.stderr
    producer = subprocess.run(
        [
            sys.executable,
            "-c",
            "from session_broker import QiskitRuntimeService as S; S(); S(); S().jobs(limit=1)",
        ],
        cwd=REPO,
        env=cli_env(cluster.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert producer.returncode == 0, producer.stderr
    assert producer.stderr.count("persists nothing") == 1, producer.stderr
    assert "RuntimeWarning" not in producer.stderr and warning in producer.stderr, producer.stderr
