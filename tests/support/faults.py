"""Building blocks for fault tests: slow jobs, raw job records, worker processes, logs.

Everything here talks to a real Redis through a ``Store`` and to real worker processes;
waits are conditions with deadlines (``wait_for``), never bare sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil

from session_broker.core.ids import new_id
from session_broker.core.messages import task_message
from session_broker.core.store import FINAL_JOB_STATUSES, Store
from session_broker.ops.embedded import wait_for

BACKEND = "ibmq_qasm_simulator"


# ------------------------------------------------------------------------------- circuits
def ansatz():
    """A two-parameter, two-qubit circuit (ry, rx, cx) for parameter and broadcasting tests."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 1)
    return qc


def bell_circuit():
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def assert_bell_counts(result, shots: int) -> None:
    """A Bell sampler result: only 00 and 11, and every shot accounted for."""
    counts = result[0].data.meas.get_counts()
    assert sum(counts.values()) == shots, counts
    assert set(counts) <= {"00", "11"}, counts


class SlowEstimatorJob:
    """An Estimator V2 PUB whose run time is set by the size of its parameter broadcast.

    A 14-qubit RealAmplitudes ansatz, reps=2 (42 parameters), <Z...Z>. ``seconds``: about
    how long it should run, sized from the time a parameter set takes on this machine now
    (measured here: 5-10 ms on the 2-core test machine depending on what else runs, less on
    a fast one), so its length does not depend on the machine. A test that needs it to stay
    running until something happens freezes it (``tests.conftest.Hold``). Results can be
    checked against ``Statevector``.
    """

    def __init__(
        self, seconds: float | None = None, num_qubits: int = 14, seed: int = 7, *, values: int | None = None
    ):
        import math

        from qiskit.circuit.library import real_amplitudes
        from qiskit.quantum_info import SparsePauliOp
        from qiskit.transpiler import generate_preset_pass_manager

        from session_broker.backends import BrokerBackend
        from tests.support.circuits import binding_seconds

        ansatz = real_amplitudes(num_qubits, reps=2)
        pm = generate_preset_pass_manager(optimization_level=1, backend=BrokerBackend(BACKEND))
        self.circuit = pm.run(ansatz)
        self.observable = SparsePauliOp("Z" * self.circuit.num_qubits)
        if values is None:  # ``values=`` (a fixed size) only for callers not yet moved to seconds
            self.per_set = binding_seconds(self.circuit, self.observable)
            values = max(1, math.ceil(seconds / self.per_set))
        rng = np.random.default_rng(seed)
        self.values = rng.uniform(0, np.pi, (values, self.circuit.num_parameters))

    @property
    def pub(self):
        # precision 0: exact values, which check() compares with Statevector (IBM's default
        # precision, 1/64 since the V2 options, would add sampling noise)
        return (self.circuit, self.observable, self.values, 0.0)

    def exact(self, index: int) -> float:
        from qiskit.quantum_info import Statevector

        bound = self.circuit.assign_parameters(dict(zip(self.circuit.parameters, self.values[index])))
        return float(np.real(Statevector(bound).expectation_value(self.observable)))

    def check(self, result, samples=(0, 1, -1)) -> None:
        evs = np.asarray(result[0].data.evs)
        assert evs.shape == (len(self.values),), evs.shape
        for i in samples:
            assert abs(evs[i] - self.exact(i)) < 1e-6, (i, evs[i], self.exact(i))


# ------------------------------------------------------------------------------- records
def redis_now(store: Store) -> float:
    sec, usec = store.redis.time()
    return sec + usec / 1e6


def records(store: Store, ids) -> dict[str, dict]:
    """Every job record of ``ids`` in one round trip."""
    ids = list(ids)
    pipe = store.redis.pipeline(transaction=False)
    for jid in ids:
        pipe.hgetall(store.keys.job(jid))
    return dict(zip(ids, pipe.execute()))


def wait_final(store: Store, ids, timeout: float, what: str = "jobs") -> dict[str, dict]:
    """Wait until every job of ``ids`` is in a final state; return their records."""
    ids = list(ids)

    def statuses() -> dict[str, str | None]:
        pipe = store.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(store.keys.job(jid), "status")
        return dict(zip(ids, pipe.execute()))

    try:
        wait_for(
            lambda: all(s in FINAL_JOB_STATUSES for s in statuses().values()),
            timeout,
            f"{len(ids)} {what} to end",
            interval=0.5,
        )
    except TimeoutError:
        pending = {j: s for j, s in statuses().items() if s not in FINAL_JOB_STATUSES}
        raise AssertionError(
            f"{len(pending)} of {len(ids)} {what} not final after {timeout} s: "
            f"{dict(list(pending.items())[:10])}"
        ) from None
    return records(store, ids)


def plant_job(
    store: Store,
    *,
    payload: str,
    backend: str = BACKEND,
    primitive: str = "sampler",
    jid: str | None = None,
    message: str | None = None,
    push: bool = True,
    queue: str | None = None,
) -> str:
    """Write a job the way a hostile producer would: a record like SUBMIT's, plus a message.

    The record has every field the SUBMIT script writes (status QUEUED, queue, message,
    payload, ttl, ...), so the worker's CLAIM treats it as any other queued job.
    """
    jid = jid or new_id()
    queue = queue or store.keys.backend_queue(backend)
    if message is None:
        message = task_message(
            primitive, jid, queue, {"session": None, "backend": backend}, argsrepr=f"job={jid}"
        )
    now = redis_now(store)
    store.redis.hset(
        store.keys.job(jid),
        mapping={
            "id": jid,
            "session": "",
            "mode": "",
            "backend": backend,
            "primitive": primitive,
            "status": "QUEUED",
            "created": now,
            "running": "",
            "finished": "",
            "worker": "",
            "pid": "",
            "attempts": 0,
            "claim": "",
            "error_code": "",
            "error": "",
            "queue": queue,
            "ttl": 3600,
            "summary": json.dumps({"api": "v2", "pubs": 1, "shots": None}),
            "usage": "",
            "payload": payload,
            "message": message,
        },
    )
    store.redis.expire(store.keys.job(jid), 3600)
    store.redis.zadd(store.keys.jobs, {jid: now})
    if push:
        store.redis.lpush(queue, message)
    return jid


def orphan_in_unacked(url: str, store: Store, job_id: str) -> None:
    """Take the job's message with a kombu consumer that then vanishes without acking or giving
    it back (a worker whose give-back failed because Redis was down): the message is left only
    in kombu's ``unacked`` hash."""
    from kombu import Connection

    from session_broker.celery_app import make_app

    queue = store.keys.backend_queue(BACKEND)
    # the deployment's transport options: kombu's bookkeeping keys are the tenant's (keys.py)
    conn = Connection(url, transport_options=make_app(store.settings).conf.broker_transport_options)
    channel = conn.channel()
    taken = channel.basic_get(queue, no_ack=False)
    assert taken is not None and taken.headers["id"] == job_id
    assert store.redis.llen(queue) == 0
    # it forgets its in-memory deliveries, so neither closing it nor kombu's exit hook
    # restores anything
    channel.qos._delivered.clear()
    conn.release()


def queue_lengths(store: Store) -> dict[str, int]:
    """Length of every kombu queue list under our prefix (backend and session queues)."""
    out = {}
    for key in store.redis.scan_iter(match=f"{store.keys.prefix}.*", count=1000):
        if store.redis.type(key) == "list":
            out[key] = store.redis.llen(key)
    return out


# ------------------------------------------------------------------------------- processes
def pool_children(pid: int) -> list[int]:
    """Pids of the pool processes of the Celery worker whose main process is ``pid``."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=False)]
    except psutil.NoSuchProcess:
        return []


def kill_pool_child(worker_pid: int, child_pid: int) -> None:
    """SIGKILL ``child_pid``, but only if it really is a pool process of ``worker_pid``."""
    if child_pid not in pool_children(worker_pid):
        raise AssertionError(
            f"pid {child_pid} is not a pool process of worker {worker_pid} "
            f"(children: {pool_children(worker_pid)}); refusing to kill it"
        )
    os.kill(child_pid, signal.SIGKILL)


def log_tail(path: Path | str | None, lines: int = 40) -> str:
    if not path or not Path(path).exists():
        return "(no log)"
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def log_text(path: Path | str | None) -> str:
    if not path or not Path(path).exists():
        return ""
    return Path(path).read_text(errors="replace")


class Stopwatch:
    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


def start_logged_worker(
    c,
    name: str,
    *,
    backend: str = BACKEND,
    env: dict | None = None,
    loglevel: str = "INFO",
    argv_prefix: list[str] | None = None,
    url: str | None = None,
):
    """Like ``Cluster.start_worker`` but with ``--loglevel`` (workers log at WARNING by
    default; some tests read the INFO lines: 'job X not run here: ...', 'Task ... succeeded').
    ``argv_prefix`` runs it under e.g. ``ip netns exec NS``; ``url`` overrides the cluster's."""
    import sys

    argv = [
        sys.executable,
        "-m",
        "session_broker.ops.cli",
        "worker",
        "--backend",
        backend,
        "--concurrency",
        "1",
        "--name",
        name,
        "--loglevel",
        loglevel,
    ]
    child = c.stack.spawn(
        f"worker-{name}",
        [*(argv_prefix or []), *argv],
        {**c.env, **(env or {}), "SESSION_BROKER_URL": url or c.url},
    )
    from tasks.supervisor import node_name

    child.node = name = node_name(name)
    c.workers[name] = child
    c.wait_registered(name)
    return child


def read_until_ready(proc, timeout: float = 180) -> str:
    """What ``session-broker up`` printed up to its "ready." line (or its exit, or the deadline)."""
    import time

    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ready."):
            break
    return "".join(lines)
