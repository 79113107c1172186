"""``session_broker.ops.metrics.BrokerCollector``: scraped with prometheus_client's own exposition
(and parsed back with its parser) after real jobs ran on a real worker."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from session_broker.core import keys as K
from session_broker.core.config import load_settings
from session_broker.core.store import Store
from session_broker.ops.metrics import METRIC_NAMES, BrokerCollector, cumulative_buckets

IDLE_BACKEND = "aer_simulator"  # no worker serves it in this module: its jobs stay QUEUED


def scrape(store: Store) -> tuple[str, dict]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(store))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def bell():
    from tests.support.faults import bell_circuit

    return bell_circuit()


@pytest.fixture(scope="module")
def ran(cluster, bell):
    """Three jobs done in a session, one cancelled and one left queued in a stuck session,
    and one non-session job waiting in a shared queue."""
    from session_broker import SamplerV2, Session

    svc = cluster.service
    session = Session(service=svc, backend="ibmq_qasm_simulator")
    sampler = SamplerV2(mode=session)
    done = [sampler.run([bell], shots=50) for _ in range(3)]
    for job in done:
        job.result(timeout=120)

    stuck = Session(service=svc, backend=IDLE_BACKEND)
    stuck_sampler = SamplerV2(mode=stuck)
    waiting = stuck_sampler.run([bell], shots=10)
    cancelled = stuck_sampler.run([bell], shots=10)
    assert cancelled.cancel()

    loose = SamplerV2(mode=svc.backend(IDLE_BACKEND)).run([bell], shots=10)
    return {
        "session": session,
        "stuck": stuck,
        "done": done,
        "waiting": waiting,
        "cancelled": cancelled,
        "loose": loose,
    }


def test_every_documented_metric_is_emitted(cluster, ran):
    import session_broker.ops.metrics as metrics

    text, _ = scrape(cluster.store)
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
        assert f"``{name}" in metrics.__doc__, f"{name} is not documented in the module docstring"


def test_job_counters_and_gauges(cluster, ran):
    _, samples = scrape(cluster.store)
    assert value(samples, "session_broker_jobs_total", status="submitted") == 6
    assert value(samples, "session_broker_jobs_total", status="DONE") == 3
    assert value(samples, "session_broker_jobs_total", status="CANCELLED") == 1
    assert value(samples, "session_broker_jobs_total", status="ERROR") == 0
    # one queued in the stuck session + one in the shared queue of the idle backend
    assert value(samples, "session_broker_jobs_current", status="QUEUED") == 2
    assert value(samples, "session_broker_jobs_current", status="RUNNING") == 0


def test_sessions_queues_and_workers(cluster, ran):
    _, samples = scrape(cluster.store)
    sid, stuck = ran["session"].session_id, ran["stuck"].session_id
    assert (
        value(
            samples, "session_broker_sessions", state="active", backend="ibmq_qasm_simulator", mode="session"
        )
        == 1
    )
    assert value(samples, "session_broker_sessions", state="open", backend=IDLE_BACKEND, mode="session") == 1
    assert value(samples, "session_broker_session_queue_length", session=stuck, backend=IDLE_BACKEND) == 1
    assert (
        value(samples, "session_broker_session_queue_length", session=sid, backend="ibmq_qasm_simulator") == 0
    )
    assert value(samples, "session_broker_queue_length", backend=IDLE_BACKEND) == 1
    assert value(samples, "session_broker_queue_length", backend="ibmq_qasm_simulator") == 0
    # the active session holds the only worker
    assert value(samples, "session_broker_workers", backend="ibmq_qasm_simulator", pinned="true") == 1
    assert value(samples, "session_broker_workers", backend="ibmq_qasm_simulator", pinned="false") == 0

    # a cancelled session leaves the gauges: closed, no queue series
    ran["stuck"].cancel()
    _, after = scrape(cluster.store)
    assert value(after, "session_broker_sessions", state="closed", backend=IDLE_BACKEND, mode="session") == 1
    assert (
        "session_broker_session_queue_length",
        tuple(sorted({"session": stuck, "backend": IDLE_BACKEND}.items())),
    ) not in after
    assert value(after, "session_broker_jobs_current", status="QUEUED") == 1  # the shared-queue job
    assert value(after, "session_broker_jobs_total", status="CANCELLED") == 2


def test_histograms_match_the_jobs(cluster, ran):
    text, samples = scrape(cluster.store)
    les = [floatToGoString(b) for b in K.HISTOGRAM_BOUNDS] + ["+Inf"]
    expected_counts = {"queue_wait": 3, "execution": 3, "session_idle": 2}
    for name, count in expected_counts.items():
        metric = f"session_broker_{name}_seconds"
        buckets = [value(samples, f"{metric}_bucket", le=le) for le in les]
        assert buckets == sorted(buckets), f"{metric} buckets are not cumulative: {buckets}"
        assert buckets[-1] == count == value(samples, f"{metric}_count"), metric
        assert value(samples, f"{metric}_sum") > 0
        assert f'{metric}_bucket{{le="+Inf"}} {float(count)}' in text

    # every job ran for less than its whole lifetime; the record's timings agree
    execution = sum(float(j._store.job(j.job_id(), "usage")["usage"] or 0) for j in ran["done"])
    assert value(samples, "session_broker_execution_seconds_sum") >= execution * 0.5


def test_cumulative_buckets_from_raw_hash():
    raw = {
        "0.001": "2",
        "0.1": "1",
        "1": "3",
        "2.5": "1",
        "1800": "1",
        "+Inf": "4",
        "sum": "1234.5",
        "count": "12",
    }
    buckets, total = cumulative_buckets(raw)
    assert total == 1234.5
    table = dict(buckets)
    assert list(table) == [floatToGoString(b) for b in K.HISTOGRAM_BOUNDS] + ["+Inf"]
    assert table["0.001"] == 2 and table["0.05"] == 2 and table["0.1"] == 3
    assert table["1.0"] == 6 and table["2.5"] == 7 and table["300.0"] == 7
    assert table["1800.0"] == 8 and table["+Inf"] == 12
    assert cumulative_buckets({}) == (
        [(floatToGoString(b), 0.0) for b in K.HISTOGRAM_BOUNDS] + [("+Inf", 0.0)],
        0.0,
    )


def test_thousands_of_sessions_scrape_quickly(cluster):
    """A separate key prefix on the same Redis: 3000 session records, one scrape."""
    store = Store(load_settings({"SESSION_BROKER_URL": cluster.url, "SESSION_BROKER_KEY_PREFIX": "perf"}))
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for i in range(3000):
        sid = f"s{i:05d}"
        state = ("active", "closed", "inactive")[i % 3]
        pipe.hset(
            keys.session(sid),
            mapping={
                "state": state,
                "backend": "ibmq_qasm_simulator",
                "mode": "batch" if i % 2 else "session",
                "queued": 0,
                "running": 0,
            },
        )
        pipe.zadd(keys.sessions, {sid: i})
    pipe.execute()
    try:
        started = time.monotonic()
        _, samples = scrape(store)
        elapsed = time.monotonic() - started
        total = sum(v for (name, _), v in samples.items() if name == "session_broker_sessions")
        assert total == 3000
        assert (
            value(
                samples,
                "session_broker_sessions",
                state="closed",
                backend="ibmq_qasm_simulator",
                mode="session",
            )
            == 500
        )
        assert elapsed < 10, f"a scrape of 3000 sessions took {elapsed:.1f} s"
    finally:
        for key in store.redis.scan_iter("perf*", count=1000):
            store.redis.delete(key)
