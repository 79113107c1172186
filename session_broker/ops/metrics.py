"""Prometheus metrics, read from Redis on each scrape (``BrokerCollector``).

Nothing is kept in the process: every scrape reads the current state (``snapshot()``: a
few pipelined round trips, fine for thousands of sessions), so any number of
``session-broker web`` processes report the same numbers and a restart loses nothing. The
``/metrics`` page of ``session-broker web`` serves them (behind the same basic auth as
Flower), and the Jobs page's summary uses the same snapshot.

Metrics (``P`` below is the key prefix, ``SESSION_BROKER_KEY_PREFIX``, default ``sb``):

``session_broker_sessions{state,backend,mode}`` (gauge)
    Sessions and batches known to Redis, by internal state (``open``, ``active``,
    ``inactive``, ``pending_closed``, ``closed``; closed ones until their record expires
    after ``result_ttl``), backend and mode (``session`` or ``batch``).
``session_broker_queue_length{backend}`` (gauge)
    Messages waiting in a backend's shared Celery queue (``P.backend.<name>``; non-session
    and batch jobs), for every catalog backend and every backend with a registered worker;
    with instances, plus the jobs held in their instance's line for that backend.
``session_broker_session_queue_length{session,backend}`` (gauge)
    Messages waiting in the queue of each session (mode ``session``) that is not closed
    (``P.session.<sid>``).
``session_broker_jobs_total{status}`` (counter)
    Jobs ever submitted (``status="submitted"``) and ended, by final status (``DONE``,
    ``ERROR``, ``CANCELLED``), from the ``P:counts`` hash.
``session_broker_jobs_current{status}`` (gauge)
    Jobs ``QUEUED`` and ``RUNNING`` now: the counters of every session and batch, plus
    the jobs outside sessions (their messages waiting in the shared queues; those in the
    workers' running sets).
``session_broker_workers{backend,pinned}`` (gauge)
    Live workers (heartbeat not expired) by backend; ``pinned="true"`` for a worker that
    holds a session.
``session_broker_queue_wait_seconds`` (histogram)
    Time from a job's submission (or requeue) to the moment a worker started it.
``session_broker_execution_seconds`` (histogram)
    Time a job ran on a worker (start to result stored).
``session_broker_session_idle_seconds`` (histogram)
    Time a session's worker waited between the end of one job and the start of the next
    (the gap a client's think time adds to a session).

``session_broker_instance_usage_seconds{instance}`` (gauge)
    Each instance's usage (workers' execution time) in its current period.
``session_broker_instance_usage_limit_seconds{instance}`` (gauge)
    Each instance's usage limit per period (instances that have one).
``session_broker_instance_usage_seconds_total{instance}`` (counter)
    Each instance's usage ever (``P:i:<name>`` ``total``).
``session_broker_instance_share{instance}`` (gauge)
    Each instance's share (its weight in fair share).
``session_broker_instance_fair_share_usage_seconds{instance}`` (gauge)
    Each instance's decayed usage, which orders waiting work (lowest per share first).
``session_broker_instance_waiting_jobs{instance}`` (gauge)
    Batch and plain jobs of each instance held in its line, waiting for their turn.

The three histograms have the buckets ``keys.HISTOGRAM_BOUNDS`` (seconds, 0.001 to 1800,
then ``+Inf``); the Lua scripts store non-cumulative counts per bucket in ``P:hist:<name>``
and this collector emits the cumulative ``_bucket{le=...}``, ``_sum`` and ``_count``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from session_broker.backends import known_backends
from session_broker.core import keys as K
from session_broker.core.store import Store

CHUNK = 1000  # sessions per pipelined round trip

METRIC_NAMES = (
    "session_broker_sessions",
    "session_broker_queue_length",
    "session_broker_session_queue_length",
    "session_broker_jobs_total",
    "session_broker_jobs_current",
    "session_broker_workers",
    *(f"session_broker_{name}_seconds" for name in K.HISTOGRAMS),
    "session_broker_instance_usage_seconds",
    "session_broker_instance_usage_limit_seconds",
    "session_broker_instance_usage_seconds_total",
    "session_broker_instance_share",
    "session_broker_instance_fair_share_usage_seconds",
    "session_broker_instance_waiting_jobs",
)

_HELP = {
    "queue_wait": "Seconds from a job's submission (or requeue) until a worker started it",
    "execution": "Seconds a job ran on a worker",
    "session_idle": "Seconds a session's worker waited between one job's end and the next job's start",
}


def queue_length_keys(queue: str) -> list[str]:
    """The kombu lists of one queue: the list and its priority sub-lists."""
    return [queue, *(f"{queue}{K.KOMBU_PRIORITY_SEP}{p}" for p in K.KOMBU_PRIORITY_STEPS)]


def bucket_counts(fields: dict[str, str]) -> list[int]:
    """A ``P:hist:<name>`` hash -> non-cumulative counts, one per ``HISTOGRAM_BOUNDS`` and a
    last one for everything above (the Jobs page draws these)."""
    cumulative = [c for _, c in cumulative_buckets(fields)[0]]
    return [int(c - p) for c, p in zip(cumulative, [0.0] + cumulative[:-1])]


def cumulative_buckets(fields: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """A ``P:hist:<name>`` hash -> ([(le, cumulative count), ..., ("+Inf", total)], sum).

    Fields are bucket upper bounds (as Lua wrote them: "0.001", "1", "+Inf") holding
    non-cumulative counts, plus "sum" and "count". Bounds are matched by value, so the
    spelling of a number does not matter.
    """
    per_bound: dict[float, float] = {}
    for name, value in fields.items():
        if name in ("sum", "count"):
            continue
        try:
            bound = float(name)
        except ValueError:
            continue
        per_bound[bound] = per_bound.get(bound, 0.0) + float(value)
    out, running = [], 0.0
    for bound in K.HISTOGRAM_BOUNDS:
        running += per_bound.pop(float(bound), 0.0)
        out.append((floatToGoString(bound), running))
    running += sum(per_bound.values())  # +Inf and any bound we do not know
    out.append(("+Inf", running))
    return out, float(fields.get("sum") or 0.0)


@dataclass
class Snapshot:
    """Everything the metrics report, read from Redis in a few pipelined round trips."""

    sessions: Counter = field(default_factory=Counter)  # (state, backend, mode) -> count
    queues: dict = field(default_factory=dict)  # backend -> messages in its shared queue
    session_queues: list = field(default_factory=list)  # (session, backend, messages)
    totals: dict = field(default_factory=dict)  # P:counts: submitted, DONE, ERROR, CANCELLED
    queued: int = 0  # jobs QUEUED now
    running: int = 0  # jobs RUNNING now
    workers: Counter = field(default_factory=Counter)  # (backend, "true"|"false") -> live workers
    histograms: dict = field(default_factory=dict)  # name -> raw P:hist:<name> hash
    instances: list = field(default_factory=list)  # Store.instance_report() rows

    @property
    def open_sessions(self) -> int:
        return sum(n for (state, _, _), n in self.sessions.items() if state != "closed")

    @property
    def live_workers(self) -> int:
        return sum(self.workers.values())


def snapshot(store: Store) -> Snapshot:
    """Read the current state once (``BrokerCollector`` and the Jobs page use it)."""
    keys, r = store.keys, store.redis
    snap = Snapshot()

    # sessions: the listing zset, then state/backend/mode and counters, in chunks
    sids = [sid for sid, _ in r.zscan_iter(keys.sessions, count=CHUNK)]
    live_session_queues: list[tuple[str, str]] = []
    batch_queued = 0
    for start in range(0, len(sids), CHUNK):
        chunk = sids[start : start + CHUNK]
        pipe = r.pipeline(transaction=False)
        for sid in chunk:
            pipe.hmget(keys.session(sid), "state", "backend", "mode", "queued", "running")
        for sid, (state, backend, mode, queued, running) in zip(chunk, pipe.execute()):
            if not state:
                continue  # the record expired; the zset entry is trimmed later
            snap.sessions[(state, backend or "", mode or "")] += 1
            snap.queued += int(queued or 0)
            snap.running += int(running or 0)
            if mode == "batch":
                batch_queued += int(queued or 0)
            if mode == "session" and state != "closed":
                live_session_queues.append((sid, backend or ""))

    workers = store.live_workers()
    registered = r.hgetall(keys.workers)
    backends = sorted(
        (set(known_backends()) | set(registered.values()) | {w.get("backend", "") for w in workers}) - {""}
    )

    held = store.held_lengths(backends)
    pipe = r.pipeline(transaction=False)
    for backend in backends:
        for key in queue_length_keys(keys.backend_queue(backend)):
            pipe.llen(key)
    for sid, _ in live_session_queues:
        for key in queue_length_keys(keys.session_queue(sid)):
            pipe.llen(key)
    for w in workers:
        pipe.smembers(keys.worker_running(w.get("node", "")))
    pipe.hgetall(keys.counts)
    for name in K.HISTOGRAMS:
        pipe.hgetall(keys.histogram(name))
    replies = iter(pipe.execute())

    per_queue = len(queue_length_keys("q"))
    for backend in backends:
        snap.queues[backend] = sum(next(replies) for _ in range(per_queue)) + held.get(backend, 0)
    for sid, backend in live_session_queues:
        snap.session_queues.append((sid, backend, sum(next(replies) for _ in range(per_queue))))
    running_ids: set[str] = set()
    for _ in workers:
        running_ids |= set(next(replies))
    snap.totals = {k: float(v) for k, v in next(replies).items()}
    for name in K.HISTOGRAMS:
        snap.histograms[name] = next(replies)

    # Jobs outside sessions have no session counters: their running ones are in the
    # workers' running sets, their queued ones are the messages in the shared queues
    # (where batch jobs, counted by their batch already, also wait).
    snap.queued += max(sum(snap.queues.values()) - batch_queued, 0)
    snap.running += _running_outside_sessions(store, running_ids)
    snap.instances = store.instance_report()

    for w in workers:  # both series for every backend with a live worker, zeros included
        backend = w.get("backend", "")
        for flag in ("false", "true"):
            snap.workers.setdefault((backend, flag), 0)
        snap.workers[(backend, "true" if w.get("pin") else "false")] += 1
    return snap


class BrokerCollector:
    """A prometheus_client collector over one ``Store`` (one key prefix)."""

    def __init__(self, store: Store | None = None):
        self.store = store or Store()

    def describe(self):
        """The families without samples: registering must not read Redis."""
        return list(self._families().values())

    def _families(self) -> dict:
        fams = {
            "sessions": GaugeMetricFamily(
                "session_broker_sessions",
                "Sessions and batches by state, backend and mode",
                labels=["state", "backend", "mode"],
            ),
            "queue": GaugeMetricFamily(
                "session_broker_queue_length",
                "Messages waiting in a backend's shared queue",
                labels=["backend"],
            ),
            "session_queue": GaugeMetricFamily(
                "session_broker_session_queue_length",
                "Messages waiting in the queue of a session that is not closed",
                labels=["session", "backend"],
            ),
            "jobs_total": CounterMetricFamily(
                "session_broker_jobs", "Jobs submitted, and jobs ended by final status", labels=["status"]
            ),
            "unserved_pins": CounterMetricFamily(
                "session_broker_unserved_pins",
                "Pins taken from a worker that left its session's queued jobs unclaimed past "
                "SESSION_BROKER_UNSERVED_PIN_TIMEOUT (its executor is replaced)",
            ),
            "replication_degraded": CounterMetricFamily(
                "session_broker_replication_degraded",
                "Times a process found no replica connected and stopped waiting for one (WAIT)",
            ),
            "jobs": GaugeMetricFamily(
                "session_broker_jobs_current", "Jobs QUEUED and RUNNING now", labels=["status"]
            ),
            "workers": GaugeMetricFamily(
                "session_broker_workers",
                "Live workers by backend and whether they hold a session",
                labels=["backend", "pinned"],
            ),
        }
        for name in K.HISTOGRAMS:
            fams[name] = HistogramMetricFamily(f"session_broker_{name}_seconds", _HELP.get(name, name))
        for name, kind, text in _INSTANCE_METRICS:
            fams[name] = kind(f"session_broker_instance_{name}", text, labels=["instance"])
        return fams

    def collect(self):
        snap = snapshot(self.store)
        fams = self._families()
        for labels, n in sorted(snap.sessions.items()):
            fams["sessions"].add_metric(list(labels), n)
        for backend, n in snap.queues.items():
            fams["queue"].add_metric([backend], n)
        for sid, backend, n in snap.session_queues:
            fams["session_queue"].add_metric([sid, backend], n)
        for status in ("submitted", "DONE", "ERROR", "CANCELLED"):
            fams["jobs_total"].add_metric([status], snap.totals.get(status, 0.0))
        fams["unserved_pins"].add_metric([], snap.totals.get("unserved_pins", 0.0))
        fams["replication_degraded"].add_metric([], snap.totals.get("replication_degraded", 0.0))
        fams["jobs"].add_metric(["QUEUED"], snap.queued)
        fams["jobs"].add_metric(["RUNNING"], snap.running)
        for labels, n in sorted(snap.workers.items()):
            fams["workers"].add_metric(list(labels), n)
        for name, fields in snap.histograms.items():
            buckets, total = cumulative_buckets(fields)
            fams[name].add_metric([], buckets, total)
        for row in snap.instances:
            label, s = [row["name"]], row["settings"]
            fams["usage_seconds"].add_metric(label, float(row["used"]))
            if s.usage_limit is not None:
                fams["usage_limit_seconds"].add_metric(label, float(s.usage_limit))
            fams["usage_seconds_total"].add_metric(label, float(row["total"]))
            fams["share"].add_metric(label, float(s.share))
            fams["fair_share_usage_seconds"].add_metric(label, float(row["fair"]))
            fams["waiting_jobs"].add_metric(label, float(row["held"]))
        yield from fams.values()


# name (after session_broker_instance_), family, help
_INSTANCE_METRICS = (
    (
        "usage_seconds",
        GaugeMetricFamily,
        "An instance's usage (workers' execution time) in its current period",
    ),
    ("usage_limit_seconds", GaugeMetricFamily, "An instance's usage limit per period"),
    ("usage_seconds_total", CounterMetricFamily, "An instance's usage ever"),
    ("share", GaugeMetricFamily, "An instance's share (its weight in fair share)"),
    ("fair_share_usage_seconds", GaugeMetricFamily, "An instance's decayed usage, which orders waiting work"),
    ("waiting_jobs", GaugeMetricFamily, "Batch and plain jobs of an instance held in its line"),
)


def _running_outside_sessions(store: Store, running_ids: set[str]) -> int:
    if not running_ids:
        return 0
    pipe = store.redis.pipeline(transaction=False)
    for jid in sorted(running_ids):
        pipe.hmget(store.keys.job(jid), "session", "status")
    return sum(1 for sess, status in pipe.execute() if not sess and status == "RUNNING")
