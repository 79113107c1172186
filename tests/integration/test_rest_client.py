"""IBM's stock ``qiskit_ibm_runtime`` client, unpatched, against ``session-broker api``.

Real Redis, a real worker, the real server command, and the client in subprocesses that
never import session_broker (``tests/support/rest.py`` checks that). Both recipes of the
README are used: the constructor (``url_resolver``) and the zero-code one
(``QiskitRuntimeService()`` from environment variables only). After each client run the
test reads Redis through our own Python API: one job, one record, whichever door.
"""

from __future__ import annotations

import pytest

from session_broker.ops.embedded import wait_for
from tests.support.rest import ApiServer, run_client

BACKEND = "ibmq_qasm_simulator"


@pytest.fixture(scope="module")
def server(cluster, stack, redis_url):
    srv = ApiServer(stack, redis_url).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def flow(server):
    """A session (sampler + estimator), status at each step, listing, a batch, usage."""
    return run_client(
        server,
        f'''
    svc = service()
    backend = svc.backend("{BACKEND}")
    isa, ghz_isa = isa_bell_and_ghz(backend)
    out = {{}}
    with Session(backend=backend) as session:
        out["sid"] = session.session_id
        out["before"] = session.status()
        sampler = SamplerV2(mode=session)
        job = sampler.run([isa], shots=500)
        out["counts"] = job.result()[0].data.meas.get_counts()
        out["during"] = session.status()
        est = EstimatorV2(mode=session)
        ev = est.run([(ghz_isa, SparsePauliOp("ZZ").apply_layout(ghz_isa.layout))]).result()
        out["ev"] = float(ev[0].data.evs)
        out["details"] = session.details()
        out["job_id"] = job.job_id()
        out["attached_status"] = svc.job(job.job_id()).status()
        out["listed"] = sorted(j.job_id() for j in svc.jobs(session_id=session.session_id, limit=None))
        out["metrics_keys"] = sorted(job.metrics())
    out["after"] = session.status()
    with Batch(backend=backend) as batch:
        bjobs = [SamplerV2(mode=batch).run([isa], shots=100) for _ in range(3)]
        out["batch_counts"] = [sum(j.result()[0].data.meas.get_counts().values()) for j in bjobs]
        out["batch_id"] = batch.session_id
        out["batch_jobs"] = [j.job_id() for j in bjobs]
    out["batch_mode"] = batch.details()["mode"]
    out["usage"] = svc.usage()
    emit(**out)
    ''',
    )


def test_session_flow_with_the_constructor_recipe(flow, cluster):
    assert flow["before"] == "Pending"
    assert flow["during"] == "In progress, accepting new jobs"
    counts = flow["counts"]
    assert sum(counts.values()) == 500 and set(counts) <= {"00", "11"}, counts
    assert flow["ev"] == pytest.approx(1.0, abs=5 / 64)  # IBM's default precision, 1/64
    details = flow["details"]
    for key in (
        "id",
        "backend_name",
        "interactive_timeout",
        "max_time",
        "active_timeout",
        "state",
        "accepting_jobs",
        "last_job_started",
        "last_job_completed",
        "started_at",
        "closed_at",
    ):
        assert key in details, key
    assert details["id"] == flow["sid"] and details["backend_name"] == BACKEND
    assert details["state"] == "active" and details["accepting_jobs"] is True
    assert flow["attached_status"] == "DONE"
    assert {"timestamps", "usage"} <= set(flow["metrics_keys"])
    # leaving `with` is close(): the idle session closes at once
    assert flow["after"] == "Closed"
    assert "usage_consumed_seconds" in flow["usage"]
    # the web front is not the producer of its sessions: nothing claims their liveness
    assert not cluster.store.session(flow["sid"], tick=False).get("producer")
    assert not cluster.store.redis.exists(cluster.store.keys.session_producer(flow["sid"]))


def test_one_job_one_record_whichever_door(flow, cluster):
    """The REST jobs are ordinary records: our Python API lists and reads them."""
    from session_broker import Session

    sid = flow["sid"]
    ids = cluster.store.session_job_ids(sid)
    assert sorted(ids) == flow["listed"] and len(ids) == 2, (ids, flow["listed"])
    rec = cluster.job(flow["job_id"])
    assert rec["session"] == sid and rec["status"] == "DONE" and rec["primitive"] == "sampler"
    ours = Session.from_id(sid, service=cluster.service)
    assert ours.status() == "Closed" and ours.details()["jobs"]["done"] == 2
    assert cluster.service.job(flow["job_id"]).result()[0].data.meas.num_shots == 500


def test_batch_through_the_client(flow, cluster):
    assert flow["batch_counts"] == [100, 100, 100]
    assert flow["batch_mode"] == "batch"
    assert cluster.session(flow["batch_id"])["mode"] == "batch"
    assert sorted(cluster.store.session_job_ids(flow["batch_id"])) == sorted(flow["batch_jobs"])


def test_zero_code_recipe_attaches_from_a_second_process(flow, server):
    """``QiskitRuntimeService()`` from the environment only; ``service.job(id)`` and
    ``Session.from_id`` find what the first process made."""
    out = run_client(
        server,
        f'''
    svc = QiskitRuntimeService()
    job = svc.job("{flow["job_id"]}")
    counts = job.result()[0].data.meas.get_counts()
    session = Session.from_id("{flow["sid"]}", service=svc)
    emit(counts=counts, status=job.status(), session_status=session.status(),
         session_backend=session.details()["backend_name"], session_id=job.session_id,
         listed=len(svc.jobs(session_id="{flow["sid"]}", limit=None)))
    ''',
        recipe="env",
    )
    assert out["counts"] == flow["counts"]
    assert out["status"] == "DONE" and out["session_id"] == flow["sid"]
    assert out["session_status"] == "Closed" and out["session_backend"] == BACKEND
    assert out["listed"] == 2


def test_cancel_queued_and_running_jobs_and_the_session(server, cluster):
    """A queued job cancels (204); a running one cannot (409 -> RuntimeInvalidStateError)
    and finishes; ``session.cancel()`` cancels what is still queued and closes."""
    out = run_client(
        server,
        f'''
    from qiskit_ibm_runtime.exceptions import RuntimeInvalidStateError
    svc = service()
    backend = svc.backend("{BACKEND}")
    session = Session(backend=backend)
    est = EstimatorV2(mode=session)
    pub = slow_pub(backend, 4)
    running = est.run([pub])
    queued = [est.run([pub]) for _ in range(2)]
    deadline = time.time() + 120
    while running.status() != "RUNNING" and time.time() < deadline:
        time.sleep(0.05)
    out = {{"first": running.status()}}
    queued[0].cancel()
    out["cancelled"] = queued[0].status()
    try:
        running.cancel()
        out["running_cancel"] = "no error"
    except RuntimeInvalidStateError as exc:
        out["running_cancel"] = type(exc).__name__
    session.cancel()
    out["after_cancel"] = session.status()
    out["last"] = queued[1].status()
    out["running_result"] = float(running.result()[0].data.evs[0])
    out["running_final"] = running.status()
    try:
        running.cancel()
        out["done_cancel"] = "no error"
    except RuntimeInvalidStateError as exc:
        out["done_cancel"] = type(exc).__name__
    emit(**out, ids=[running.job_id()] + [j.job_id() for j in queued])
    ''',
    )
    assert out["first"] == "RUNNING"
    assert out["cancelled"] == "CANCELLED"
    assert out["running_cancel"] == "RuntimeInvalidStateError"
    assert out["after_cancel"] == "Closed"
    assert out["last"] == "CANCELLED"
    assert out["running_final"] == "DONE"
    assert out["done_cancel"] == "RuntimeInvalidStateError"  # 409: it already ended
    statuses = [cluster.job(j)["status"] for j in out["ids"]]
    assert statuses == ["DONE", "CANCELLED", "CANCELLED"]


def test_max_execution_time_and_a_failed_job(server, cluster):
    """Past max_execution_time the client raises RuntimeJobMaxTimeoutError (Cancelled +
    reason 1305 on the wire); a job the worker fails raises RuntimeJobFailureError with
    the worker's message, and its results route answered 200 with that text."""
    out = run_client(
        server,
        f'''
    from qiskit_ibm_runtime.exceptions import RuntimeJobFailureError, RuntimeJobMaxTimeoutError
    svc = service()
    backend = svc.backend("{BACKEND}")
    est = EstimatorV2(mode=backend)
    est.options.max_execution_time = 1
    slow = est.run([slow_pub(backend, 8)])
    out = {{"slow_id": slow.job_id()}}
    try:
        slow.result()
        out["slow"] = "no error"
    except RuntimeJobMaxTimeoutError as exc:
        out["slow"] = type(exc).__name__
    out["slow_status"] = slow.status()
    wide = QuantumCircuit(32)
    for q in range(32):
        wide.h(q); wide.t(q)
    wide.measure_all()
    isa = generate_preset_pass_manager(optimization_level=0, backend=backend).run(wide)
    bad = SamplerV2(mode=backend).run([isa], shots=10)
    try:
        bad.result()
        out["bad"] = "no error"
    except RuntimeJobFailureError as exc:
        out["bad"] = type(exc).__name__
        out["bad_message"] = str(exc)
    out["bad_status"] = bad.status()
    out["bad_id"] = bad.job_id()
    emit(**out)
    ''',
    )
    assert out["slow"] == "RuntimeJobMaxTimeoutError", out
    assert out["slow_status"] == "ERROR"
    assert cluster.job(out["slow_id"])["error_code"] == "max_execution_time"
    assert out["bad"] == "RuntimeJobFailureError", out
    assert out["bad_status"] == "ERROR"
    rec = cluster.job(out["bad_id"])
    assert rec["status"] == "ERROR" and rec["error"]
    assert rec["error"][:40] in out["bad_message"]


def test_tenant_key_uses_its_own_prefix(server, cluster, stack):
    """``KEY@tenant1``: that key's sessions live under the tenant's Redis prefix, where the
    server's own prefix does not see them."""
    from session_broker.core.store import Store
    from tests.support.rest import TENANT_KEY

    out = run_client(
        server,
        f'''
    svc = service()
    session = Session(backend=svc.backend("{BACKEND}"))
    emit(sid=session.session_id, status=session.status())
    session.cancel()
    ''',
        key=TENANT_KEY,
    )
    assert out["status"] == "Pending"

    tenant = Store(cluster.settings.model_copy(update={"key_prefix": "tenant1"}))
    assert tenant.session(out["sid"], tick=False)["backend"] == BACKEND
    assert not cluster.store.redis.exists(cluster.store.keys.session(out["sid"]))
    wait_for(lambda: tenant.session(out["sid"], tick=False)["state"] == "closed", 30, "cancel")


def test_global_search_recipe_finds_the_instance(server):
    """Recipe A-g: no QISKIT_FUNCTIONS_EXPERIMENTAL and no instance; the client looks the
    instance up in Global Search and the Catalog, both pointed here."""
    out = run_client(
        server,
        """
    svc = QiskitRuntimeService(channel="ibm_quantum_platform", token=os.environ["SB_KEY"],
                               url=os.environ["SB_SERVER"], url_resolver=lambda url, *_: f"{url}/api/v1")
    emit(instances=svc.instances(), backends=[b.name for b in svc.backends()])
    """,
        extra_env={
            "QISKIT_FUNCTIONS_EXPERIMENTAL": "",
            "GLOBAL_SEARCH_URL": server.url,
            "GLOBAL_CATALOG_URL": f"{server.url}/api/v1/catalog",
        },
    )
    from tests.support.rest import CRN

    assert [i["crn"] for i in out["instances"]] == [CRN]
    assert BACKEND in out["backends"] and "ibm_algiers" in out["backends"]


def test_one_set_of_tags_whichever_door(server, cluster):
    """Tags set by the stock client (at submit and with ``update_tags``) are the ones
    ``job.tags`` and ``service.jobs(job_tags=)`` see in Python, and tags set in Python are
    the ones the client's ``job.tags`` and ``service.jobs(job_tags=)`` see."""
    from qiskit import QuantumCircuit

    from session_broker import SamplerV2

    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    ours = SamplerV2(mode=BACKEND, options={"environment": {"job_tags": ["py-old"]}}).run([bell], shots=8)
    ours.update_tags(["py-a", "py-b"])
    out = run_client(
        server,
        f'''
    svc = service()
    theirs = svc.job("{ours.job_id()}")
    out = {{"py_tags": sorted(theirs.tags),
            "py_listed": [j.job_id() for j in svc.jobs(job_tags=["py-b"], limit=None)],
            "py_old": [j.job_id() for j in svc.jobs(job_tags=["py-old"], limit=None)]}}
    backend = svc.backend("{BACKEND}")
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(bell())
    sampler = SamplerV2(mode=backend)
    sampler.options.environment.job_tags = ["rest-a", "rest-b"]
    job = sampler.run([isa], shots=8)
    out["rest_id"] = job.job_id()
    out["rest_listed"] = [j.job_id() for j in svc.jobs(job_tags=["rest-a"], limit=None)]
    other = SamplerV2(mode=backend).run([isa], shots=8)
    out["other_id"] = other.job_id()
    other.update_tags(["rest-c"])
    out["other_tags"] = sorted(svc.job(other.job_id()).tags)
    emit(**out)
    ''',
    )
    assert out["py_tags"] == ["py-a", "py-b"]
    assert out["py_listed"] == [ours.job_id()] and out["py_old"] == []
    assert out["rest_listed"] == [out["rest_id"]]
    assert out["other_tags"] == ["rest-c"]
    service = cluster.service
    assert service.job(out["rest_id"]).tags == ["rest-a", "rest-b"]
    assert service.job(out["other_id"]).tags == ["rest-c"]
    assert [j.job_id() for j in service.jobs(job_tags=["rest-b"], limit=None)] == [out["rest_id"]]
    assert [j.job_id() for j in service.jobs(job_tags=["rest-c"], limit=None)] == [out["other_id"]]
    for jid in (out["rest_id"], out["other_id"]):
        assert "api_tags" not in cluster.job(jid)  # one store: the job's summary


# ---------------------------------------------------------------------- the executor program
# Issue 25: IBM's Executor with a QuantumProgram, and its executor-based Sampler/Estimator,
# in job, session and batch mode; the jobs are ordinary executor records.
@pytest.fixture(scope="module")
def executor_flow(server):
    return run_client(
        server,
        f'''
    from qiskit_ibm_runtime import Executor, QuantumProgram
    from qiskit_ibm_runtime.executor_estimator import Estimator as XEstimator
    from qiskit_ibm_runtime.executor_sampler import Sampler as XSampler

    backend = service().backend("{BACKEND}")
    isa, ghz_isa = isa_bell_and_ghz(backend)
    program = QuantumProgram(shots=400)
    program.append_circuit_item(isa)

    def bits_of(result):
        bits = result[0]["meas"]
        return {{"type": type(result).__name__, "shape": list(bits.shape),
                 "agree": bool((bits[:, 0] == bits[:, 1]).all()), "ones": int(bits[:, 0].sum())}}

    out = {{}}
    job = Executor(mode=backend).run(program)
    out["job_mode"] = bits_of(job.result())
    out["job_id"] = job.job_id()
    with Session(backend=backend) as session:
        out["session_id"] = session.session_id
        out["session"] = bits_of(Executor(mode=session).run(program).result())
        counts = XSampler(mode=session).run([isa], shots=300).result()[0].data.meas.get_counts()
        out["sampler_counts"] = counts
    with Batch(backend=backend) as batch:
        obs = SparsePauliOp("ZZ").apply_layout(ghz_isa.layout)
        res = XEstimator(mode=batch).run([(ghz_isa, obs)], precision=0.02).result()
        out["estimator"] = {{"type": type(res).__name__, "ev": float(res[0].data.evs)}}
    bad = QuantumProgram(shots=10)
    bad.append_circuit_item(isa)
    try:
        Executor(mode=backend, options={{"execution": {{"init_qubits": False}}}}).run(bad)
        out["refused"] = None
    except Exception as exc:
        out["refused"] = f"{{type(exc).__name__}}: {{exc}}"
    emit(**out)
    ''',
    )


def test_executor_in_job_session_and_batch_mode(executor_flow):
    for key in ("job_mode", "session"):
        got = executor_flow[key]
        assert got["type"] == "QuantumProgramResult" and got["shape"] == [400, 2] and got["agree"], got
        assert 120 < got["ones"] < 280, got
    counts = executor_flow["sampler_counts"]
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 300, counts
    assert executor_flow["estimator"]["type"] == "PrimitiveResult"
    assert executor_flow["estimator"]["ev"] == pytest.approx(1.0, abs=0.1)


def test_a_refused_program_is_a_400_naming_the_field(executor_flow):
    assert "init_qubits" in (executor_flow["refused"] or ""), executor_flow["refused"]


def test_the_rest_job_is_an_ordinary_executor_record(executor_flow, cluster):
    rec = cluster.job(executor_flow["job_id"])
    assert rec["primitive"] == "executor" and rec["status"] == "DONE"
    result = cluster.service.job(executor_flow["job_id"]).result()
    assert type(result).__name__ == "QuantumProgramResult" and result[0]["meas"].shape == (400, 2)
    assert cluster.store.session_job_ids(executor_flow["session_id"])
