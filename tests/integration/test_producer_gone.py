"""A session whose producer died inside ``with Session`` is marked "gone" where operators
look (``session-broker sessions``, its ``--json`` and the Jobs page's data): it still holds
its worker until the interactive timeout (the guide's semantics), and now says why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from session_broker.ops.embedded import wait_for
from tests.integration.test_ops_cli import cli, cli_json

BEAT = "0.3"  # the producer's refresh interval here (default 5 s): gone after 3 missed


def test_a_killed_producer_is_marked_gone_and_a_closed_session_is_not(cluster):
    script = textwrap.dedent(
        f"""
        import signal, sys
        from qiskit import QuantumCircuit
        from session_broker import QiskitRuntimeService, SamplerV2, Session
        qc = QuantumCircuit(2); qc.h(0); qc.cx(0, 1); qc.measure_all()
        service = QiskitRuntimeService({cluster.url!r})
        with Session(backend="ibmq_qasm_simulator", service=service) as done:
            SamplerV2(mode=done).run([qc], shots=10).result(timeout=120)
        print("CLOSED", done.session_id, flush=True)
        with Session(backend="ibmq_qasm_simulator", service=service) as session:
            SamplerV2(mode=session).run([qc], shots=10).result(timeout=120)
            print("OPEN", session.session_id, flush=True)
            signal.pause()  # killed in here, as a user's Ctrl-\\ or an OOM kill would
        """
    )
    env = {**os.environ, "SESSION_BROKER_PRODUCER_BEAT": BEAT, "SESSION_BROKER_URL": cluster.url}
    producer = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        closed = producer.stdout.readline().split()
        opened = producer.stdout.readline().split()
        assert closed[0] == "CLOSED" and opened[0] == "OPEN", (closed, opened)
        closed_sid, sid = closed[1], opened[1]

        def producer_of(session_id):
            return next(r for r in cli_json(cluster.url, "sessions") if r["id"] == session_id)["producer"]

        assert producer_of(sid) == "alive"
        assert producer_of(closed_sid) is None  # closed: nothing to say about its producer
        # it keeps refreshing: its key never lapses over five refresh intervals (it lasts three)
        key, end = cluster.store.keys.session_producer(sid), time.monotonic() + 5 * float(BEAT)
        while time.monotonic() < end:
            assert cluster.store.redis.exists(key), "the live producer's key lapsed"
            time.sleep(0.05)
    finally:
        os.killpg(producer.pid, signal.SIGKILL)
        producer.wait(30)

    wait_for(lambda: producer_of(sid) == "gone", 30, "the killed producer's session to be marked gone")
    row = next(line for line in cli(cluster.url, "sessions").stdout.splitlines() if line.startswith(sid))
    assert "gone" in row and "active" in row  # it still holds its worker: the guide's semantics
    assert cluster.store.session(sid)["state"] == "active"
    res = cli(cluster.url, "session", "cancel", sid)
    assert res.returncode == 0, res.stderr
    assert producer_of(sid) is None  # closed now
