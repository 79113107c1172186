"""Instances (issue 23) against real workers: what a job, a session and a batch record, the
typed errors, usage limits at submit and their period, and fair share between instances.

One module Redis and two ideal-simulator workers. Job lengths are sized from a binding timed
on this machine (``slow_pub``), so no figure depends on its speed."""

from __future__ import annotations

import base64
import json
from collections import Counter

import pytest

from session_broker import Batch, EstimatorV2, QiskitRuntimeService, Session
from session_broker.core.instances import InstanceSettings
from session_broker.errors import (
    InstanceLimitError,
    NoLiveWorkerWarning,
    UnknownInstanceError,
    UsageLimitReachedError,
)
from session_broker.ops.embedded import wait_for
from session_broker.waits import why_waiting
from tests.conftest import make_cluster, slow_pub

BACKEND = "ibmq_qasm_simulator"


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cl = make_cluster(stack, redis_url)
    cl.start_worker(BACKEND)
    cl.start_worker(BACKEND)
    return cl


def service(c, instance: str | None) -> QiskitRuntimeService:
    return QiskitRuntimeService(c.url, instance=instance)


def test_without_instances_the_instance_is_ignored_as_before(c):
    svc = service(c, "crn:v1:bluemix:public:quantum-computing:us-east:a/x:physics-lab::")
    assert svc.active_instance() is None
    job = EstimatorV2(mode=svc.backend(BACKEND)).run([slow_pub(0.01)])
    job.result(timeout=60)
    assert c.job(job.job_id()).get("instance") == ""
    assert "instance" not in svc.usage()


def test_jobs_sessions_and_batches_record_their_instance_and_unknown_ones_are_refused(c):
    c.store.set_instance("physics-lab", InstanceSettings(share=2))
    c.store.set_instance("chem-lab", InstanceSettings())
    with pytest.raises(UnknownInstanceError, match="'nope'.*chem-lab, physics-lab"):
        service(c, "nope")
    svc = service(c, "physics-lab")
    # IBM's CRN of an instance names it in its 8th field
    assert (
        service(c, "crn:v1:bluemix:public:quantum-computing:us-east:a/x:chem-lab::").active_instance()
        == "chem-lab"
    )
    pub = slow_pub(0.01)
    plain = EstimatorV2(mode=svc.backend(BACKEND)).run([pub])
    with Session(backend=BACKEND, service=svc) as session:
        in_session = EstimatorV2(mode=session).run([pub])
        in_session.result(timeout=60)
        assert c.session(session.session_id)["instance"] == "physics-lab"
    with Batch(backend=BACKEND, service=svc) as batch:
        in_batch = EstimatorV2(mode=batch).run([pub])
        in_batch.result(timeout=60)
        assert c.session(batch.session_id)["instance"] == "physics-lab"
    plain.result(timeout=60)
    for job in (plain, in_session, in_batch):
        assert c.job(job.job_id())["instance"] == "physics-lab"
    (row,) = c.store.instance_report("physics-lab")
    assert row["jobs"] == 3 and row["total"] > 0
    # service.jobs(instance=...) and job.instance, as IBM's client has them
    listed = {j.job_id() for j in svc.jobs(instance="physics-lab", limit=None)}
    assert {plain.job_id(), in_session.job_id(), in_batch.job_id()} <= listed
    assert not listed & {j.job_id() for j in svc.jobs(instance="chem-lab", limit=None)}
    assert svc.job(plain.job_id()).instance == "physics-lab"
    # Flower shows the instance among a task's arguments (a job queued where no worker runs)
    with pytest.warns(NoLiveWorkerWarning):
        waiting = EstimatorV2(mode=svc.backend("aer_simulator_mps")).run([pub])
    body = json.loads(base64.b64decode(json.loads(c.job(waiting.job_id())["message"])["body"]))
    assert body[1]["instance"] == "physics-lab"
    assert "instance=physics-lab" in json.loads(c.job(waiting.job_id())["message"])["headers"]["argsrepr"]
    assert waiting.cancel()
    # the CLI's listing, filtered by instance
    from tests.integration.test_ops_cli import cli_json

    rows = cli_json(c.url, "jobs", "--instance", "physics-lab", "--limit", "100")
    assert {r["id"] for r in rows} == listed | {waiting.job_id()} and {r["instance"] for r in rows} == {
        "physics-lab"
    }


def test_an_instance_past_its_limit_is_refused_another_runs_and_after_the_reset_it_runs_again(c):
    # a period far longer than the test (one that ended mid-test would reset the usage)
    c.store.set_instance("capped", InstanceSettings(usage_limit=2, period="1000000000"))
    c.store.set_instance("free", InstanceSettings())
    capped, free = service(c, "capped"), service(c, "free")
    pub = slow_pub(0.7)
    sampler = EstimatorV2(mode=capped.backend(BACKEND))
    longest = 0.0
    # about 0.7 s a job (sized from a binding timed now: on a machine whose load drops later,
    # jobs run shorter), so the limit is passed by the third or fourth, or within 30
    for _ in range(30):
        try:
            job = sampler.run([pub])
        except UsageLimitReachedError as exc:
            refused = exc
            break
        job.result(timeout=120)
        longest = max(longest, float(job.usage()))
    else:
        pytest.fail("never refused")
    assert refused.instance == "capped" and refused.limit == 2 and refused.reset_at is not None
    assert "capped" in str(refused) and "2 s" in str(refused) and "resets at" in str(refused)
    assert 2 <= refused.used <= 2 + longest
    usage = capped.usage()
    assert usage["usage_limit_seconds"] == 2 and usage["usage_limit_reached"] is True
    assert usage["usage_remaining_seconds"] == 0 and usage["usage_consumed_seconds"] == pytest.approx(
        refused.used, abs=0.01
    )
    # another instance still runs
    EstimatorV2(mode=free.backend(BACKEND)).run([slow_pub(0.01)]).result(timeout=60)
    # sessions of the capped instance are refused at open too
    with pytest.raises(UsageLimitReachedError):
        Session(backend=BACKEND, service=capped)
    # a 2-second period: the usage counts from zero in the next one
    c.store.set_instance("capped", InstanceSettings(usage_limit=2, period="2"))
    job = wait_for(lambda: _try_run(sampler), 10, "the capped instance's next period")
    job.result(timeout=60)


def _try_run(sampler):
    try:
        return sampler.run([slow_pub(0.01)])
    except UsageLimitReachedError:
        return None


def test_max_sessions_and_max_session_time(c):
    c.store.set_instance("small", InstanceSettings(max_sessions=1, max_session_time=60))
    svc = service(c, "small")
    with pytest.raises(InstanceLimitError, match="at most 60 s"):
        Session(backend=BACKEND, service=svc, max_time=120)
    first = Session(backend=BACKEND, service=svc)
    assert first.max_time == 60  # the default is lowered to the instance's cap
    with pytest.raises(InstanceLimitError, match="1 sessions open"):
        Session(backend=BACKEND, service=svc)
    Batch(backend=BACKEND, service=svc).close()  # batches are not capped
    first.cancel()
    Session(backend=BACKEND, service=svc).cancel()


def test_the_operators_commands(c):
    from tests.integration.test_ops_cli import cli, cli_json

    res = cli(c.url, "instance", "set", "course", "--share", "3", "--usage-limit", "90m", "--period", "week")
    assert res.returncode == 0 and "instance course created" in res.stdout, res.stderr
    res = cli(c.url, "instance", "set", "course", "--max-sessions", "4", "--max-session-time", "1h")
    assert res.returncode == 0 and "changed" in res.stdout, res.stderr
    (row,) = [r for r in cli_json(c.url, "instances") if r["name"] == "course"]
    assert (row["share"], row["usage_limit_seconds"], row["period"]) == (3, 5400, "week")
    assert (row["max_sessions"], row["max_session_time"], row["usage_seconds"]) == (4, 3600, 0)
    assert row["period_resets_at"].endswith("T00:00:00+00:00")
    table = cli(c.url, "instances").stdout
    assert "INSTANCE" in table and "course" in table and "1h 30m" in table.replace("1h30m", "1h 30m")
    bad = cli(c.url, "instance", "set", "course", "--period", "fortnight")
    assert bad.returncode == 2 and "day, week or month" in bad.stderr
    assert cli(c.url, "instance", "rm", "course").returncode == 0
    assert cli(c.url, "instance", "rm", "course").returncode == 2
    assert "course" not in [r["name"] for r in cli_json(c.url, "instances")]


def test_fair_share_orders_waiting_batch_jobs_by_usage_per_share(c):
    """The issue's test: A and B share 1, C share 2; A submits 40 batch jobs, then B 40, then
    C 40, all of one cost. Among the first 40 to finish, A and B have at least 7 each and C at
    least 14 (first come, first served would give A nearly all 40)."""
    for name, share in (("fair-a", 1), ("fair-b", 1), ("fair-c", 2)):
        c.store.set_instance(name, InstanceSettings(share=share))
    pub = slow_pub(0.15)
    jobs: dict[str, list] = {}
    for name in ("fair-a", "fair-b", "fair-c"):
        with Batch(backend=BACKEND, service=service(c, name)) as batch:
            estimator = EstimatorV2(mode=batch)
            jobs[name] = [estimator.run([pub]) for _ in range(40)]
    # a waiting job says where it waits: its place in its instance's line
    _, why = why_waiting(c.store, jobs["fair-c"][-1].job_id())
    assert "in the line of instance 'fair-c'" in why, why
    for job in (j for js in jobs.values() for j in js):
        job.result(timeout=300)
    finished = sorted((float(c.job(j.job_id())["finished"]), name) for name, js in jobs.items() for j in js)
    first = Counter(name for _, name in finished[:40])
    print("first 40 finished:", dict(first))
    assert first["fair-a"] >= 7 and first["fair-b"] >= 7 and first["fair-c"] >= 14, first
    for name, n in (("fair-a", 40), ("fair-b", 40), ("fair-c", 40)):
        (row,) = c.store.instance_report(name)
        assert row["jobs"] == n and row["held"] == 0
        assert row["total"] == pytest.approx(sum(float(j.usage()) for j in jobs[name]), abs=0.01)


def test_the_stock_client_names_its_instance_by_crn_and_an_api_key_may_be_tied_to_one(c, stack):
    from tests.support.rest import CRN, KEY, ApiServer, http, run_client

    def crn_of(name: str) -> str:
        parts = CRN.split(":")
        parts[7] = name
        return ":".join(parts)

    c.store.set_instance("rest-a", InstanceSettings())
    c.store.set_instance("rest-b", InstanceSettings())
    c.store.set_instance("rest-capped", InstanceSettings(usage_limit=0))
    bound = "bound-key-0123456789"
    server = ApiServer(stack, c.url, keys=f"{KEY},{bound}#rest-b").start()
    try:
        out = run_client(
            server,
            f'''
        svc = service()
        backend = svc.backend("{BACKEND}")
        isa, _ = isa_bell_and_ghz(backend)
        job = SamplerV2(mode=backend).run([isa], shots=10)
        job.result()
        capped = QiskitRuntimeService(channel="ibm_quantum_platform", token=os.environ["SB_KEY"],
                                      instance="{crn_of("rest-capped")}", url=os.environ["SB_SERVER"],
                                      url_resolver=lambda url, *_: f"{{url}}/api/v1")
        try:
            SamplerV2(mode=capped.backend("{BACKEND}")).run([isa], shots=10)
            refused = None
        except Exception as exc:
            refused = f"{{type(exc).__name__}}: {{exc}}"
        emit(job=job.job_id(), usage=svc.usage(), capped_usage=capped.usage(), refused=refused)
        ''',
            extra_env={"SB_CRN": crn_of("rest-a")},
        )
        assert c.job(out["job"])["instance"] == "rest-a"
        assert out["usage"]["usage_consumed_seconds"] > 0 and out["usage"]["usage_limit_reached"] is False
        assert out["capped_usage"]["usage_limit_reached"] is True
        assert out["capped_usage"]["usage_remaining_seconds"] == 0
        refused = out["refused"]
        assert refused.startswith("IBMRuntimeError") and "403" in refused, refused
        assert "rest-capped" in refused and "has reached its usage limit of 0 s" in refused, refused
        tied = run_client(
            server,
            f'''
        svc = service()
        job = SamplerV2(mode=svc.backend("{BACKEND}")).run([isa_bell_and_ghz(svc.backend("{BACKEND}"))[0]], shots=10)
        job.result()
        emit(job=job.job_id())
        ''',
            key=bound,
        )
        assert c.job(tied["job"])["instance"] == "rest-b"
        # the operators' view: the Jobs page (instances card, filter, column) and /metrics
        login = {"Authorization": "Basic " + base64.b64encode(b"admin:secret").decode()}
        status, page = http("GET", f"{server.url}/?instance=rest-a", headers=login)
        assert status == 200 and 'id="instances"' in page and "rest-capped" in page
        assert out["job"] in page and tied["job"] not in page  # the filter: rest-a's jobs only
        assert "<th>Instance</th>" in page
        assert 'id="instance-usage"' in page and 'class="plot usage"' in page  # usage over time
        status, metrics = http("GET", f"{server.url}/metrics", headers=login)
        assert status == 200
        assert 'session_broker_instance_usage_limit_seconds{instance="rest-capped"} 0.0' in metrics
        assert 'session_broker_instance_share{instance="rest-a"} 1.0' in metrics
        assert 'session_broker_instance_usage_seconds_total{instance="rest-a"}' in metrics
    finally:
        server.stop()


def test_a_greedy_instance_with_five_sessions_does_not_keep_another_instances_session_waiting(c):
    """Five sessions of one instance on two workers: two are pinned, three wait. Another
    instance's new session, in line behind them, gets the first worker a greedy session frees
    (within one job and one scheduler tick): it has used less per share."""
    c.store.set_instance("greedy", InstanceSettings())
    c.store.set_instance("modest", InstanceSettings())
    greedy, modest = service(c, "greedy"), service(c, "modest")
    pub = slow_pub(0.4)
    sessions = [Session(backend=BACKEND, service=greedy) for _ in range(5)]
    jobs = [EstimatorV2(mode=s).run([pub]) for s in sessions]
    wait_for(
        lambda: sum(c.job(j.job_id())["status"] == "RUNNING" for j in jobs) == 2,
        60,
        "two greedy sessions to run",
    )
    late = Session(backend=BACKEND, service=modest)
    late_job = EstimatorV2(mode=late).run([slow_pub(0.01)])
    for s in sessions:
        s.close()  # each closes when its job ends, freeing its worker
    late_job.result(timeout=120)
    late.close()
    for j in jobs:
        j.result(timeout=120)
    rec = {j.job_id(): c.job(j.job_id()) for j in jobs}
    first_free = min(float(r["finished"]) for r in rec.values())
    started = float(c.job(late_job.job_id())["running"])
    waiting = sorted(float(r["running"]) for r in rec.values())[2:]  # the three that waited in line
    # first in line though it came last: the first worker freed takes it (the other worker,
    # freed at about the same time, may take a greedy session a moment earlier)
    assert started < waiting[1], (started, waiting)
    assert started - first_free < 0.4 + 1.0, started - first_free  # one job plus a tick, with slack


def test_workers_put_the_instances_back_when_redis_comes_back_empty(c):
    """Last in the module: it empties the module's Redis. The instances the earlier tests set
    (seconds ago: more than a heartbeat TTL, so every worker holds a copy) come back."""
    before = c.store.instances()
    assert len(before) >= 5
    c.store.redis.flushall()
    try:
        wait_for(lambda: c.store.instances() == before, 3 * c.settings.heartbeat_ttl + 10, "the instances")
    except TimeoutError:
        from tests.support.faults import log_tail

        now = c.store.instances()
        raise AssertionError(
            f"now {sorted(now)}, before {sorted(before)}, differing "
            f"{[(n, now.get(n), before.get(n)) for n in set(now) | set(before) if now.get(n) != before.get(n)]}\n"
            + "\n".join(log_tail(w.log, 15) for w in c.workers.values())
        ) from None
    # and they work: a job of one of them runs and is counted
    job = EstimatorV2(mode=service(c, "physics-lab").backend(BACKEND)).run([slow_pub(0.01)])
    job.result(timeout=60)
    assert c.job(job.job_id())["instance"] == "physics-lab"
