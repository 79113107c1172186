"""The operator's commands: ``sessions``, ``session``, ``jobs``, ``job``, ``workers``.

``cli.main`` dispatches each command to the function of the same name here; each returns
an exit code (0 ok, 1 failure, 3 not found, 4 Redis unreachable: the last two are raised as
``SessionNotFoundError``/``JobNotFoundError``/``BrokerConnectionError`` and mapped by
``cli.main``).

Output: aligned tables for people, ``--json`` for scripts (one indented document; with
``--watch``, one compact document per line every second), ``--watch`` redraws every
second until Ctrl-C (or SIGTERM), and both end with exit code 0.

Transitions (close, cancel, timers) go through ``Store``'s scripts; reads are plain
HGETALL/LRANGE/TTL. The ``*_rows``/``*_view`` functions below are shared with the Jobs page
(``session_broker.ops.web``), which calls them with ``tick=False`` so it never writes.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from session_broker.core.config import get_settings
from session_broker.core.connection import connect as redis_connect
from session_broker.core.connection import redact
from session_broker.core.ids import iso
from session_broker.core.read import JobQuery, iter_jobs, time_left
from session_broker.core.store import FINAL_JOB_STATUSES, SESSION_STATUS, Store
from session_broker.errors import BrokerConnectionError, JobNotFoundError, SessionNotFoundError
from session_broker.ops.plots import top_outcomes

EXIT_OK, EXIT_FAIL = 0, 1
CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen

SESSION_FIELDS = (
    "id",
    "mode",
    "backend",
    "state",
    "worker",
    "max_time",
    "started_at",
    "created_at",
    "closed_at",
    "closed_reason",
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interactive_timeout",
    "accepting",
    "producer",
)
JOB_FIELDS = (
    "id",
    "session",
    "mode",
    "backend",
    "primitive",
    "status",
    "created",
    "running",
    "finished",
    "worker",
    "pid",
    "attempts",
    "error_code",
    "error",
    "summary",
    "usage",
    "queue",
    "requeued_at",
)
COUNT_FIELDS = ("queued", "running", "done", "failed", "cancelled")


# ---------------------------------------------------------------------- connecting
def connect(check: bool = False) -> Store:
    """A Store for the CLI, after a PING: ``BrokerConnectionError`` (exit 4) when unreachable.
    ``check``: also warn about unsafe Redis settings (commands that change something; the
    views only read, and an operator looking at them needs no lecture on every call)."""
    store = quick_store()
    store.ping(check=check)
    return store


def quick_store() -> Store:
    """A Store that fails fast (a few retries, not the library's ~40 s of them): an operator's
    command or a web page should say "unreachable" within seconds."""
    settings = get_settings()
    client = redis_connect(
        settings.url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        socket_connect_timeout=3,
        socket_timeout=15,
        health_check_interval=10,
    )
    return Store(settings, client=client)


@contextmanager
def redis_errors(store: Store):
    """A Redis that goes away mid-command is exit code 4 with a message, not a traceback."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerConnectionError(f"lost Redis at {redact(store.settings.url)}: {exc}") from exc


def server_now(store: Store) -> float:
    sec, usec = store.redis.time()
    return sec + usec / 1_000_000


# ---------------------------------------------------------------------- formatting
def fmt_duration(seconds: float | None) -> str:
    """3 -> '3s', 75 -> '1m15s', 7322 -> '2h02m02s', 90000 -> '1d01h00m'; None -> '-'."""
    if seconds is None:
        return "-"
    if seconds < 1 and seconds != int(seconds):
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def render_table(headers: list[str], rows: list[list], right: Iterable[str] = ()) -> str:
    """Columns padded to their widest cell; columns named in ``right`` right-aligned."""
    right = set(right)
    cells = [[("-" if v in (None, "") else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        out = [v.rjust(w) if h in right else v.ljust(w) for v, w, h in zip(values, widths, headers)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


def render_fields(pairs: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {'-' if v in (None, '') else v}" for k, v in pairs)


def _print_json(data, compact: bool = False) -> None:
    if compact:
        print(json.dumps(data, separators=(",", ":"), default=str), flush=True)
    else:
        print(json.dumps(data, indent=2, default=str), flush=True)


# ---------------------------------------------------------------------- shared views
def session_rows(
    store: Store, limit: int = 50, *, tick: bool = True, ids: list[str] | None = None
) -> list[dict]:
    """The newest ``limit`` sessions (or ``ids``), as flat dicts. ``tick`` applies due timers."""
    if ids is None:
        ids = store.redis.zrevrange(store.keys.sessions, 0, max(limit, 1) - 1)
    if tick:
        for sid in ids:
            store.tick(sid)
    pipe = store.redis.pipeline(transaction=False)
    for sid in ids:
        pipe.hmget(store.keys.session(sid), SESSION_FIELDS)
        pipe.ttl(store.keys.timer(sid, "max"))
        pipe.exists(store.keys.session_producer(sid))
    replies = pipe.execute()
    rows = []
    for sid, values, ttl, beating in zip(ids, replies[::3], replies[1::3], replies[2::3]):
        data = {f: v for f, v in zip(SESSION_FIELDS, values) if v is not None}
        if not data.get("state"):
            continue  # expired between the listing and the read
        state = data["state"]
        rows.append(
            {
                "id": sid,
                "mode": data.get("mode"),
                "backend": data.get("backend"),
                "status": SESSION_STATUS.get(state, state),
                "state": state,
                "accepting_jobs": data.get("accepting") == "1",
                "worker": data.get("worker") or None,
                "time_left": time_left(data, ttl),
                "max_time": _int(data.get("max_time")),
                **{k: _int(data.get(k)) for k in COUNT_FIELDS},
                "created": iso(data.get("created_at")),
                "started": iso(data.get("started_at")),
                "closed": iso(data.get("closed_at")),
                "closed_reason": data.get("closed_reason") or None,
                "producer": producer_state(data, bool(beating)),
            }
        )
    return rows


def producer_state(session: dict, beating: bool) -> str | None:
    """ "alive", "gone" (the process that opened it stopped refreshing its key while the
    session still accepts jobs: abandoned, or killed inside ``with Session``), or None:
    closed or closing (it no longer waits for its producer: queued jobs drain, then it
    closes), or opened by a client that says nothing (IBM's over REST)."""
    if not session.get("producer") or session.get("state") == "closed" or session.get("accepting") == "0":
        return None
    return "alive" if beating else "gone"


class _NoTick:
    """A Store whose ``session()`` read never ticks (for the read-only Jobs page)."""

    def __init__(self, store: Store):
        self._store = store

    def session(self, sid: str, *, tick: bool = True) -> dict:
        return self._store.session(sid, tick=False)

    def __getattr__(self, name):
        return getattr(self._store, name)


def session_details(store: Store, sid: str, *, tick: bool = True) -> dict:
    """Exactly ``Session.details()`` for any session id, without a service or a client object.

    It runs ``Session.details`` itself on a bare instance, so the CLI, the Jobs page and the
    Python API can never disagree on its shape. Raises ``SessionNotFoundError``.
    """
    # lazy: the CLI must not import Qiskit (seconds); only this command needs it
    from session_broker.session import Session

    view = Session.__new__(Session)
    view._store = store if tick else _NoTick(store)
    view._session_id = sid
    details = view.details()
    details["status"] = SESSION_STATUS.get(details["state"], details["state"])
    return details


def job_rows(
    store: Store,
    *,
    session: str | None = None,
    limit: int = 50,
    offset: int = 0,
    query: JobQuery | None = None,
) -> list[dict]:
    """Jobs, newest first (all, one session's, or those ``query`` picks), ``limit`` of them
    after skipping ``offset``. Raises ``SessionNotFoundError``."""
    query = query or JobQuery(session=session)
    session = query.session
    if session and not store.redis.exists(store.keys.session(session)) and not store.session_job_ids(session):
        raise SessionNotFoundError(f"session {session!r} does not exist (or its record expired)")
    now = server_now(store)
    found = iter_jobs(store, query, JOB_FIELDS)
    page = itertools.islice(found, max(offset, 0), max(offset, 0) + max(limit, 1))
    return [_job_dict(jid, rec, now) for jid, rec in page]


def _job_dict(jid: str, rec: dict, now: float) -> dict:
    created, running, finished = (_float(rec.get(k)) for k in ("created", "running", "finished"))
    try:
        summary = json.loads(rec.get("summary") or "{}")
    except ValueError:
        summary = {}
    queued_for = None
    if created is not None:
        queued_for = (running or finished or now) - created
    ran_for = None
    if running is not None:
        ran_for = (finished or now) - running
    return {
        "id": jid,
        "primitive": rec.get("primitive"),
        "status": rec.get("status"),
        "session": rec.get("session") or None,
        "mode": rec.get("mode") or None,
        "backend": rec.get("backend"),
        "worker": rec.get("worker") or None,
        "pid": _int(rec.get("pid")) or None,
        "attempts": _int(rec.get("attempts")),
        "pubs": summary.get("pubs"),
        "shots": summary.get("shots"),
        "api": summary.get("api"),
        "created": iso(created),
        "running": iso(running),
        "finished": iso(finished),
        "queued_seconds": None if queued_for is None else round(max(queued_for, 0), 3),
        "run_seconds": None if ran_for is None else round(max(ran_for, 0), 3),
        "usage_seconds": _float(rec.get("usage")),
        "error_code": rec.get("error_code") or None,
        "error": rec.get("error") or None,
        "queue": rec.get("queue") or None,
    }


def job_view(store: Store, jid: str, *, with_result: bool = True) -> dict:
    """One job's record (no payload), its timings and a summary of its result."""
    rec = store.job(jid)
    if not rec:
        raise JobNotFoundError(f"job {jid!r} does not exist (or its record expired)")
    view = _job_dict(jid, rec, server_now(store))
    if with_result and rec.get("status") == "DONE" and rec.get("result"):
        view["result"] = result_summary(rec["result"])
    return view


def result_summary(encoded: str, top: int = 8, bars: int = 0) -> dict:
    """A short, JSON-safe account of a stored result.

    Sampler: the first PUB's first register, its ``top`` most frequent outcomes (and, with
    ``bars``, a histogram's bars: every outcome, or the ``bars - 1`` most frequent and
    "other"). Estimator: the first PUB's ``evs`` shape and first ``top`` values (and ``stds``).
    """
    # lazy: the CLI must not import Qiskit (seconds); only this command needs it
    import numpy as np

    # lazy: the CLI must not import Qiskit (seconds); only this command needs it
    from qiskit.primitives.containers import BitArray

    # lazy: the CLI must not import Qiskit (seconds); only this command needs it
    from session_broker.core import codec

    try:
        if encoded.startswith('{"schema_version"'):  # an executor job's QuantumProgramResultModel
            pubs, data = _program_data(encoded)
        else:
            result = codec.decode_result(encoded)
            pubs, data = len(result), result[0].data if len(result) else None
    except Exception as exc:  # a result we cannot read is shown, not raised
        return {"kind": "unreadable", "error": str(exc)[:300]}
    out: dict = {"pubs": pubs}
    if data is None:
        out["kind"] = "empty"
        return out
    fields = list(data.keys())
    out["fields"] = fields
    bits = [(name, value) for name, value in data.items() if isinstance(value, BitArray)]
    if bits:
        name, value = bits[0]
        counts = value.get_counts()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out.update(
            kind="sampler",
            register=name,
            num_bits=value.num_bits,
            shots=int(value.num_shots) * int(max(math.prod(value.shape), 1)),
            outcomes=len(counts),
            top=[[k, int(v)] for k, v in ranked[:top]],
        )
        if bars:
            out["bars"] = [[k, int(v)] for k, v in top_outcomes(counts, bars)]
        return out
    if "evs" in fields:
        evs = np.asarray(data["evs"])
        out.update(kind="estimator", evs_shape=list(evs.shape), evs=[_num(v) for v in evs.ravel()[:top]])
        if "stds" in fields:
            out["stds"] = [_num(v) for v in np.asarray(data["stds"]).ravel()[:top]]
        return out
    out["kind"] = "other"
    return out


def _program_data(encoded: str) -> tuple[int, dict | None]:
    """(items, the first item's data) of an executor result, read by IBM's decoder; its
    boolean (shots x bits) arrays as ``BitArray``s, so they summarize as a sampler's."""
    # lazy: the CLI must not import Qiskit (seconds); only this command needs it
    from qiskit.primitives.containers import BitArray

    # lazy: the CLI must not import Qiskit (seconds); only this command needs it
    from qiskit_ibm_runtime.decoders.executor.decoder import ExecutorResultDecoder

    result = ExecutorResultDecoder.decode(encoded)
    if not len(result):
        return 0, None
    data = {}
    for name, value in result[0].items():
        bits = value.dtype == bool and value.ndim >= 2
        data[name] = BitArray.from_bool_array(value, order="little") if bits else value
    return len(result), data


def _num(value):
    value = complex(value) if isinstance(value, complex) else float(value)
    if isinstance(value, complex):
        return [round(value.real, 6), round(value.imag, 6)]
    return round(value, 6) if math.isfinite(value) else str(value)


def result_text(summary: dict) -> str:
    """One line for a ``result_summary`` dict."""
    kind = summary.get("kind")
    pubs = summary.get("pubs")
    if kind == "sampler":
        top = ", ".join(f"{k}: {v}" for k, v in summary["top"])
        more = summary["outcomes"] - len(summary["top"])
        return (
            f"{pubs} PUB(s); first PUB, register {summary['register']} ({summary['num_bits']} bits, "
            f"{summary['shots']} shots): {top}" + (f" (+{more} more outcomes)" if more > 0 else "")
        )
    if kind == "estimator":
        text = f"{pubs} PUB(s); first PUB evs shape {tuple(summary['evs_shape'])}: {summary['evs']}"
        if summary.get("stds") is not None:
            text += f", stds {summary['stds']}"
        return text
    if kind == "unreadable":
        return f"unreadable result: {summary.get('error')}"
    return f"{pubs} PUB(s); fields {summary.get('fields')}"


def worker_rows(store: Store) -> list[dict]:
    """Registered workers: the live ones, then those whose heartbeat expired (not yet reaped)."""
    nodes = store.redis.hgetall(store.keys.workers)
    names = sorted(nodes)
    pipe = store.redis.pipeline(transaction=False)
    for n in names:
        pipe.hgetall(store.keys.worker(n))
        pipe.smembers(store.keys.worker_running(n))
        pipe.get(store.keys.worker_pin(n))
    replies = pipe.execute()
    now = server_now(store)
    rows = []
    for n, info, running, pin in zip(names, replies[::3], replies[1::3], replies[2::3]):
        beat = _float(info.get("heartbeat"))
        started = _float(info.get("started"))
        rows.append(
            {
                "node": n,
                "alive": bool(info),
                "backend": info.get("backend") or nodes[n],
                "device": info.get("device") or None,
                "host": info.get("host") or None,
                "pid": _int(info.get("pid")) or None,
                "concurrency": _int(info.get("concurrency")) or None,
                "pin": (info.get("pin") if info else pin) or None,
                "heartbeat_age": None if beat is None else round(max(now - beat, 0), 3),
                "heartbeat": iso(beat),
                "uptime_seconds": None if started is None else round(max(now - started, 0), 1),
                "running": sorted(running),
            }
        )
    rows.sort(key=lambda r: (not r["alive"], r["backend"], r["node"]))
    return rows


# ---------------------------------------------------------------------- tables
def sessions_table(rows: list[dict]) -> str:
    if not rows:
        return "no sessions"
    headers = [
        "ID",
        "MODE",
        "BACKEND",
        "STATUS",
        "STATE",
        "WORKER",
        "TIME LEFT",
        "QUEUED",
        "RUNNING",
        "DONE",
        "FAILED",
        "CANCELLED",
        "PRODUCER",
        "CREATED (UTC)",
    ]
    body = [
        [
            r["id"],
            r["mode"],
            r["backend"],
            r["status"],
            r["state"],
            r["worker"],
            fmt_duration(r["time_left"]),
            r["queued"],
            r["running"],
            r["done"],
            r["failed"],
            r["cancelled"],
            r.get("producer") or "-",
            fmt_time_iso(r["created"]),
        ]
        for r in rows
    ]
    return render_table(
        headers, body, right={"TIME LEFT", "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED"}
    )


def jobs_table(rows: list[dict]) -> str:
    if not rows:
        return "no jobs"
    headers = [
        "ID",
        "PRIMITIVE",
        "STATUS",
        "SESSION",
        "BACKEND",
        "WORKER",
        "PUBS",
        "SHOTS",
        "ATTEMPTS",
        "CREATED (UTC)",
        "QUEUED",
        "RAN",
        "ERROR",
    ]
    body = [
        [
            r["id"],
            r["primitive"],
            r["status"],
            r["session"],
            r["backend"],
            r["worker"],
            r["pubs"],
            r["shots"],
            r["attempts"],
            fmt_time_iso(r["created"]),
            fmt_duration(r["queued_seconds"]),
            fmt_duration(r["run_seconds"]),
            _shorten(r["error"], 60),
        ]
        for r in rows
    ]
    return render_table(headers, body, right={"PUBS", "SHOTS", "ATTEMPTS", "QUEUED", "RAN"})


def workers_table(rows: list[dict]) -> str:
    if not rows:
        return "no workers registered"
    headers = ["NODE", "BACKEND", "DEVICE", "HOST", "PID", "PIN", "HEARTBEAT", "UP", "RUNNING"]
    body = []
    for r in rows:
        beat = "expired (dead)" if not r["alive"] else f"{r['heartbeat_age']:.1f}s ago"
        body.append(
            [
                r["node"],
                r["backend"],
                r["device"],
                r["host"],
                r["pid"],
                r["pin"],
                beat,
                fmt_duration(r["uptime_seconds"]),
                ", ".join(r["running"]) or "-",
            ]
        )
    return render_table(headers, body, right={"PID", "UP"})


def fmt_time_iso(text: str | None) -> str:
    """'2024-05-01T12:00:03.123Z' -> '2024-05-01 12:00:03' (UTC); '-' when unset."""
    return text[:19].replace("T", " ") if text else "-"


def _shorten(text: str | None, n: int) -> str | None:
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------------- --watch
def _stop_on_sigterm() -> None:
    def raise_interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)


def _show(
    store: Store, args, title: str, collect: Callable[[], list[dict]], table: Callable[[list[dict]], str]
) -> int:
    """Print once, or (``--watch``) redraw every second until Ctrl-C/SIGTERM."""
    if not getattr(args, "watch", False):
        with redis_errors(store):
            rows = collect()
        if args.json:
            _print_json(rows)
        else:
            print(table(rows), flush=True)
        return EXIT_OK
    _stop_on_sigterm()
    try:
        while True:
            try:
                rows, problem = collect(), None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                rows, problem = (
                    None,
                    f"Redis at {redact(store.settings.url)} is unreachable ({exc}); retrying",
                )
            if args.json:
                _print_json(rows if problem is None else {"error": problem}, compact=True)
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                body = table(rows) if problem is None else problem
                sys.stdout.write(f"{CLEAR}{title}  {stamp}  (every 1 s; Ctrl-C to stop)\n\n{body}\n")
                sys.stdout.flush()
            time.sleep(1)
    except KeyboardInterrupt:
        if not args.json:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return EXIT_OK


# ---------------------------------------------------------------------- commands
def sessions(args) -> int:
    """``session-broker sessions [--limit N] [--json] [--watch]``"""
    store = connect()
    limit = getattr(args, "limit", 50)
    return _show(
        store, args, f"sessions (newest {limit})", lambda: session_rows(store, limit), sessions_table
    )


def jobs(args) -> int:
    """``session-broker jobs [--session ID] [--limit N] [--json] [--watch]``"""
    store = connect()
    sid = getattr(args, "session", None)
    limit = getattr(args, "limit", 50)
    title = f"jobs of session {sid}" if sid else f"jobs (newest {limit})"
    if sid:  # an unknown session is exit code 3 at once, also with --watch
        with redis_errors(store):
            job_rows(store, session=sid, limit=1)
    return _show(store, args, title, lambda: job_rows(store, session=sid, limit=limit), jobs_table)


def workers(args) -> int:
    """``session-broker workers [--json] [--watch]``"""
    store = connect()
    return _show(store, args, "workers", lambda: worker_rows(store), workers_table)


def session(args) -> int:
    """``session-broker session show|close|cancel ID [--wait] [--json]``"""
    store = connect(check=args.action != "show")
    sid = args.id
    with redis_errors(store):
        if args.action == "show":
            return _session_show(store, sid, args.json)
        before = store.session(sid)  # raises SessionNotFoundError
        if args.action == "close":
            state = store.close_session(sid)
        else:
            state = store.cancel_session(sid)
        if state == "":
            raise SessionNotFoundError(f"session {sid!r} does not exist (or its record expired)")
        after = store.session(sid, tick=False)
        report = _transition_report(args.action, sid, before, after)
        if args.json and not args.wait:
            _print_json(report)
            return EXIT_OK
        if not args.json:
            print(report["message"], flush=True)
        if args.wait:
            final = _wait_session(store, sid, args.action, quiet=args.json)
            if args.json:
                _print_json(
                    {
                        **report,
                        "state": final["state"],
                        "status": SESSION_STATUS.get(final["state"], final["state"]),
                        **{k: _int(final.get(k)) for k in COUNT_FIELDS},
                    }
                )
        return EXIT_OK


def _session_show(store: Store, sid: str, as_json: bool) -> int:
    details = session_details(store, sid)
    rows = job_rows(store, session=sid, limit=1000)
    if as_json:
        _print_json({**details, "job_ids": store.session_job_ids(sid)})
        return EXIT_OK
    counts = details["jobs"]
    pairs = [
        ("id", details["id"]),
        ("status", details["status"]),
        ("state", details["state"]),
        ("mode", details["mode"]),
        ("backend", details["backend_name"]),
        ("worker", details["worker"]),
        ("accepting jobs", "yes" if details["accepting_jobs"] else "no"),
        ("max time", fmt_duration(details["max_time"])),
        ("time left", fmt_duration(details["active_timeout"])),
        ("interactive timeout", fmt_duration(details["interactive_timeout"])),
        ("started at", details["started_at"]),
        ("last job started", details["last_job_started"]),
        ("last job completed", details["last_job_completed"]),
        ("closed at", details["closed_at"]),
        ("closed reason", details["closed_reason"]),
        ("usage", f"{details['usage_time']:.3f} s"),
        ("jobs", ", ".join(f"{v} {k}" for k, v in counts.items())),
    ]
    print(render_fields(pairs))
    print()
    print(jobs_table(rows), flush=True)
    return EXIT_OK


def _transition_report(action: str, sid: str, before: dict, after: dict) -> dict:
    state = after.get("state", "")
    status = SESSION_STATUS.get(state, state)
    queued, running = _int(after.get("queued")), _int(after.get("running"))
    was_closed = before.get("state") == "closed"
    if was_closed:
        message = f"session {sid} was already closed ({before.get('closed_reason') or 'closed'})"
    elif action == "close" and state == "closed":
        message = f"session {sid} closed (it had no queued or running jobs)"
    elif action == "close":
        message = (
            f"session {sid} is closing: it accepts no new jobs; {queued} queued and "
            f"{running} running job(s) will finish first"
        )
    else:
        cancelled = _int(after.get("cancelled")) - _int(before.get("cancelled"))
        message = f"session {sid} cancelled: {cancelled} queued job(s) cancelled"
        if running:
            message += f"; {running} running job(s) will finish"
    return {
        "id": sid,
        "action": action,
        "state": state,
        "status": status,
        "already_closed": was_closed,
        "queued": queued,
        "running": running,
        "message": message,
    }


def _progress(line: str, elapsed: float, tty: bool, last: list) -> None:
    """Redraw one status line (with a clock) on a terminal; elsewhere print it when it changes."""
    if tty:
        sys.stdout.write(f"\r{line}  [{elapsed:.0f}s]\x1b[K")
        sys.stdout.flush()
    elif line != last[0]:
        print(line, flush=True)
    last[0] = line


def _wait_session(store: Store, sid: str, action: str, quiet: bool) -> dict:
    """Until the session is closed and nothing of it runs, showing the jobs left."""
    tty = sys.stdout.isatty() and not quiet
    started = time.monotonic()
    last = [None]
    while True:
        data = store.session(sid)
        queued, running = _int(data.get("queued")), _int(data.get("running"))
        if data.get("state") == "closed" and running == 0:
            break
        if not quiet:
            left = queued + running
            line = (
                f"session {sid}: {SESSION_STATUS.get(data['state'], data['state'])}; "
                f"{left} job(s) left ({running} running, {queued} queued)"
            )
            _progress(line, time.monotonic() - started, tty, last)
        time.sleep(0.25)
    if not quiet:
        if tty:
            sys.stdout.write("\r\x1b[K")
        counts = ", ".join(f"{_int(data.get(k))} {k}" for k in ("done", "failed", "cancelled"))
        print(
            f"session {sid}: Closed ({data.get('closed_reason') or action}) after "
            f"{time.monotonic() - started:.1f}s; jobs: {counts}",
            flush=True,
        )
    return data


def job(args) -> int:
    """``session-broker job show|cancel|wait ID [--json]``

    ``cancel`` exits 1 when the job could not be cancelled (running, or already ended);
    ``wait`` exits 0 when the job ends DONE, 1 when it ends ERROR or CANCELLED.
    """
    store = connect(check=args.action == "cancel")
    jid = args.id
    with redis_errors(store):
        if args.action == "show":
            view = job_view(store, jid)
            if args.json:
                _print_json(view)
            else:
                print(job_text(view), flush=True)
            return EXIT_OK
        if args.action == "cancel":
            outcome = store.cancel_job(jid)
            if outcome == "not_found":
                raise JobNotFoundError(f"job {jid!r} does not exist (or its record expired)")
            ok = outcome == "cancelled"
            if ok:
                message = f"job {jid} cancelled (it will not run)"
            elif outcome == "running":
                message = f"job {jid} is RUNNING and cannot be cancelled: a running job finishes"
            else:
                message = f"job {jid} already ended ({outcome}); nothing to cancel"
            if args.json:
                _print_json({"id": jid, "cancelled": ok, "outcome": outcome, "message": message})
            else:
                print(message, flush=True, file=sys.stdout if ok else sys.stderr)
            return EXIT_OK if ok else EXIT_FAIL
        return _wait_job(store, jid, args.json)


def _wait_job(store: Store, jid: str, as_json: bool) -> int:
    tty = sys.stdout.isatty() and not as_json
    last = [None]
    started = time.monotonic()
    while True:
        rec = store.job(jid, "status")
        status = rec.get("status")
        if status is None:
            raise JobNotFoundError(f"job {jid!r} does not exist (or its record expired)")
        if status in FINAL_JOB_STATUSES:
            break
        if not as_json:
            line = f"job {jid}: {status}"
            _progress(line, time.monotonic() - started, tty, last)
        store.wait_job(jid, 1.0)  # wakes the moment the job ends
    if tty:
        sys.stdout.write("\r\x1b[K")
    view = job_view(store, jid)
    if as_json:
        _print_json(view)
    else:
        print(job_text(view), flush=True)
    return EXIT_OK if status == "DONE" else EXIT_FAIL


def job_text(view: dict) -> str:
    pairs = [
        ("id", view["id"]),
        ("status", view["status"]),
        ("primitive", view["primitive"]),
        ("session", view["session"]),
        ("backend", view["backend"]),
        ("worker", f"{view['worker']} (pid {view['pid']})" if view["worker"] else None),
        ("attempts", view["attempts"]),
        ("pubs", view["pubs"]),
        ("shots", view["shots"]),
        ("created", view["created"]),
        ("running", view["running"]),
        ("finished", view["finished"]),
        ("queued for", fmt_duration(view["queued_seconds"])),
        ("ran for", fmt_duration(view["run_seconds"])),
    ]
    if view.get("error"):
        pairs.append(("error", f"[{view['error_code']}] {view['error']}"))
    if view.get("result"):
        pairs.append(("result", result_text(view["result"])))
    return render_fields(pairs)
