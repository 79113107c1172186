"""Redis Sentinel failover with sessions and jobs intact (real redis-server and Sentinel
processes on loopback: a master, a replica, three Sentinels; real workers).

The master is SIGKILLed mid-session with one job running and twenty queued. After the
promotion every job ends DONE exactly once, the session's status and details are right, a
new session works, and no producer call hung longer than the failover plus a bound. The
producer's outage (first failed or stalled call to the first successful one) is printed.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from session_broker import EstimatorV2, SamplerV2, Session
from session_broker.ops.embedded import wait_for
from tests.conftest import HOST, make_cluster
from tests.support.faults import SlowEstimatorJob, bell_circuit, read_until_ready

BACKEND = "ibmq_qasm_simulator"
STALL = 1.0  # a call slower than this counts as part of the outage
BOUND = 15.0  # no call may take longer than the failover itself plus this


@pytest.fixture(scope="module")
def ha(stack):
    return stack.start_ha(password="ha-s3cret")


@pytest.fixture(scope="module")
def c(stack, ha):
    env = {"SESSION_BROKER_WAIT_REPLICAS": "1", "SESSION_BROKER_WAIT_TIMEOUT_MS": "200"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = make_cluster(stack, ha.url, env)
    cluster.start_worker(BACKEND)
    yield cluster
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    from session_broker.core.config import get_settings

    get_settings.cache_clear()  # later modules must not inherit WAIT_REPLICAS=1


class Probe(threading.Thread):
    """A producer that keeps calling the public API and times every call."""

    def __init__(self, service, job_id: str, session):
        super().__init__(daemon=True)
        self.service, self.job_id, self.session = service, job_id, session
        self.calls: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                self.service.job(self.job_id).status()
                self.session.status()
                ok = True
            except Exception:
                ok = False
            self.calls.append((start, time.monotonic(), ok))
            time.sleep(0.05)

    def outage(self, after: float) -> tuple[float, float]:
        """(first bad call's start -> first good call's end, the longest call), after ``after``."""
        bad = [s for s, e, ok in self.calls if s >= after - STALL and (not ok or e - s > STALL)]
        if not bad:
            return 0.0, max(e - s for s, e, _ in self.calls)
        good = [e for s, e, ok in self.calls if ok and s > bad[0] and e - s <= STALL]
        return (good[0] if good else float("inf")) - bad[0], max(e - s for s, e, _ in self.calls)


def test_master_killed_mid_session_everything_ends_once(c, ha, stack, hold):
    service = c.service
    assert service._store.settings.wait_replicas == 1
    done_before = int(c.store.redis.hget(c.store.keys.counts, "DONE") or 0)
    slow = SlowEstimatorJob(seconds=3)  # held running until the replica is promoted (below)
    with Session(backend=BACKEND, service=service) as session:
        first = SamplerV2(mode=session).run([bell_circuit()], shots=50)
        first.result(timeout=120)
        running = EstimatorV2(mode=session).run([slow.pub])
        held = hold(
            c.store, running.job_id()
        )  # still running when the master dies, however fast this machine
        queued = [SamplerV2(mode=session).run([bell_circuit()], shots=50) for _ in range(20)]
        probe = Probe(service, first.job_id(), session)
        probe.start()
        wait_for(lambda: len(probe.calls) >= 3, 30, "the probe's first calls (its baseline)")
        old = ha.master_address()
        assert running.status() == "RUNNING"
        killed = time.monotonic()
        stack.kill_child(ha.nodes["master"])
        wait_for(lambda: ha.master_address() not in (None, old), 60, "a Sentinel to promote the replica")
        promoted = time.monotonic() - killed
        held.release()
        slow.check(running.result(timeout=300))
        results = [job.result(timeout=300) for job in queued]
        assert all(r[0].data.meas.num_shots == 50 for r in results)
        probe.stop.set()
        probe.join(30)
        outage, longest = probe.outage(killed)
        print(
            f"\nfailover: promoted after {promoted:.1f} s; producer outage {outage:.1f} s; "
            f"longest call {longest:.1f} s"
        )
        assert longest < promoted + BOUND, (longest, promoted)
        assert outage < promoted + BOUND, (outage, promoted)
        jobs = [first, running, *queued]
        for job in jobs:
            rec = c.store.job(job.job_id(), "status", "attempts")
            assert rec == {"status": "DONE", "attempts": "1"}, (job.job_id(), rec)
        assert int(c.store.redis.hget(c.store.keys.counts, "DONE")) == done_before + len(jobs)
        assert session.status() == "In progress, accepting new jobs"
        details = session.details()
        assert details["state"] == "active" and details["jobs"]["done"] == len(jobs)
        assert details["jobs"]["queued"] == details["jobs"]["running"] == 0
    wait_for(lambda: session.status() == "Closed", 60, "the session to close")
    with Session(backend=BACKEND, service=service) as fresh:
        counts = SamplerV2(mode=fresh).run([bell_circuit()], shots=20).result(timeout=120)
    assert set(counts[0].data.meas.get_counts()) <= {"00", "11"}


def test_up_ha_stack_follows_a_failover_workers_flower_and_web_front(tmp_path):
    """`session-broker up --ha`: master, replica, three Sentinels, a worker, Flower and the
    web front. The printed URL works for a producer before and after the master is killed;
    Flower and the web front answer with the deployment's data after the failover; SIGTERM
    leaves no process behind."""
    import base64
    import signal
    import subprocess
    import sys
    import urllib.request

    import psutil

    from session_broker.ops.embedded import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_BROKER_")}
    env.update(PYTHONUNBUFFERED="1", SESSION_BROKER_FLOWER_AUTH="admin:ha-secret")
    flower, web = free_port(), free_port()
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "session_broker.ops.cli",
            "up",
            "--ha",
            "--backend",  # one backend is what this test needs; a second worker only costs time
            "ibmq_qasm_simulator",
            "--flower-port",
            str(flower),
            "--web-port",
            str(web),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )

    def get(port: int, path: str) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            headers={"Authorization": "Basic " + base64.b64encode(b"admin:ha-secret").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.read().decode()

    def run_job() -> str:
        code = (
            "import sys; from session_broker import QiskitRuntimeService, SamplerV2; "
            "from tests.support.faults import bell_circuit; s = QiskitRuntimeService(sys.argv[1]); "
            "j = SamplerV2(mode='ibmq_qasm_simulator').run([bell_circuit()], shots=9); "
            "print(j.result(timeout=120)[0].data.meas.num_shots, j.job_id())"
        )
        run = subprocess.run(
            [sys.executable, "-c", code, url],
            capture_output=True,
            text=True,
            timeout=180,
            env={**env, "SESSION_BROKER_URL": url, "PYTHONPATH": "."},
        )
        assert run.returncode == 0, run.stderr[-3000:]
        shots, job_id = run.stdout.strip().splitlines()[-1].split()
        assert shots == "9", run.stderr[-2000:]
        return job_id

    try:
        out = read_until_ready(up)
        assert "three Sentinels" in out and "SESSION_BROKER_WAIT_REPLICAS=1" in out, out
        ready = next((line for line in out.splitlines() if line.startswith("ready.")), None)
        assert ready, f"`up --ha` printed no ready line (exit {up.poll()}):\n{out}"
        assert "SESSION_BROKER_WAIT_REPLICAS=1" in ready, ready  # the line producers copy
        url = out.split("export SESSION_BROKER_URL=")[1].split()[0]
        assert url.startswith("sentinel://") and "master=mymaster" in url
        children = psutil.Process(up.pid).children(recursive=True)
        servers = [p for p in children if p.name() == "redis-server"]
        assert len(servers) == 5, [p.name() for p in children]  # master, replica, 3 Sentinels
        from session_broker.core import sentinel

        parsed = sentinel.parse(url)
        import redis

        host, port = redis.Redis(host=parsed.hosts[0][0], port=parsed.hosts[0][1]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", parsed.master
        )
        master = next(p for p in servers if p.cmdline()[0].endswith(f":{int(port)}"))
        before = run_job()
        master.kill()
        after = run_job()
        wait_for(
            lambda: after in get(web, f"/job/{after}") and before in get(web, f"/job/{before}"),
            60,
            "the web front to show the jobs from the new master",
        )
        assert "session_broker_workers" in get(web, "/metrics")
        wait_for(
            lambda: "ibmq_qasm_simulator" in get(flower, "/api/workers?refresh=1"),
            60,
            "Flower to see the worker through the new master",
        )
        descendants = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        wait_for(
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in descendants),
            30,
            "every process of up to exit",
        )
    finally:
        if up.poll() is None:  # SIGTERM first: up stops its stack (its children have own groups)
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()


def test_tls_sentinel_stack_with_a_password_follows_a_failover(stack, tmp_path):
    """sentinels://: every node speaks only TLS (replication and Sentinel links too), with a
    password; a worker and a producer run jobs before and after the master is killed."""
    from tests.support.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    ha = stack.start_ha(
        password="tls-s3cret",
        master="tlsmaster",
        tls={"cert": str(pki["server.pem"]), "key": str(pki["server.key"]), "ca": str(pki["ca.pem"])},
    )
    assert ha.url.startswith("sentinels://")
    c = make_cluster(stack, ha.url)
    c.start_worker(BACKEND, name="tls-ha-worker@%h")
    service = c.service
    assert SamplerV2(mode=BACKEND).run([bell_circuit()], shots=10).result(timeout=120)
    old = ha.master_address()
    stack.kill_child(ha.nodes["master"])
    wait_for(lambda: ha.master_address() not in (None, old), 60, "a Sentinel to promote the replica")
    with Session(backend=BACKEND, service=service) as session:
        result = SamplerV2(mode=session).run([bell_circuit()], shots=10).result(timeout=180)
    assert result[0].data.meas.num_shots == 10
    assert c.store.job(service.jobs(limit=1)[0].job_id(), "worker")["worker"] == f"tls-ha-worker@{HOST}"
