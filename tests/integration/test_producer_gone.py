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

BEAT = "1"  # the producer's refresh interval here (default 5 s): gone after 3 missed


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
        # it keeps refreshing: its key never lapses over three refresh intervals (it lasts three:
        # only a stall of the producer's beat thread longer than 3 s would fail this)
        key, end = cluster.store.keys.session_producer(sid), time.monotonic() + 3 * float(BEAT)
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


def test_a_closing_session_is_not_marked_gone():
    """Closed by its producer with jobs still queued (leaving ``with`` early): it drains and
    closes on its own and no longer waits for the producer, so nothing says "gone" (the
    hint would be to cancel the jobs the contract says must drain)."""
    from session_broker.ops.commands import producer_state

    base = {"producer": "host:1", "state": "active", "accepting": "1"}
    assert producer_state(base, beating=False) == "gone"
    assert producer_state(base, beating=True) == "alive"
    assert producer_state({**base, "state": "pending_closed", "accepting": "0"}, beating=False) is None
    assert producer_state({**base, "state": "closed", "accepting": "0"}, beating=False) is None
    assert producer_state({"state": "active", "accepting": "1"}, beating=False) is None  # REST


def test_the_beat_outlives_a_redis_that_refuses_writes(fresh, stack, monkeypatch):
    """Redis full (``maxmemory``: every write refused, our client raises its typed error)
    for longer than the key lives: the beat thread lives on and the key comes back. Another
    Redis of this process is gone for good meanwhile: its client's retries (about 40 s a
    call) must not hold up the beats of the sessions on this one."""
    from session_broker import QiskitRuntimeService, Session
    from session_broker.core.config import get_settings

    monkeypatch.setenv("SESSION_BROKER_PRODUCER_BEAT", BEAT)
    get_settings.cache_clear()
    gone = fresh()
    Session(backend="ibmq_qasm_simulator", service=QiskitRuntimeService(gone.url))
    child = next(ch for ch in stack.children if ch.name == gone.redis_name)
    stack.stop_child(child)
    stack.children.remove(child)

    cluster = fresh()
    service = QiskitRuntimeService(cluster.url)
    session = Session(backend="ibmq_qasm_simulator", service=service)
    key, r = service._store.keys.session_producer(session.session_id), cluster.store.redis
    try:
        wait_for(lambda: r.exists(key), 10, "the producer's first beat")
        r.config_set("maxmemory", 1)
        wait_for(lambda: not r.exists(key), 30, "the key to lapse while Redis refuses writes")
        r.config_set("maxmemory", 0)
        wait_for(lambda: r.exists(key), 30, "the beat to set the key again once Redis takes writes")
    finally:
        r.config_set("maxmemory", 0)
        session.cancel()
        get_settings.cache_clear()
