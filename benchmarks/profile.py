"""Where a session-broker job's time goes: the Bell sampler in a session, taken apart.

    .venv/bin/python benchmarks/run.py --profile [--quick] [--out PATH]

On its own stack (redis-server + one ``aer_simulator`` worker), with one session pinned:

A. phases: per job, client moments + the job record's server timestamps
   (submit | queued->claim | claim->finish | finish->client), medians;
B. CPU per job of each process (client, worker main process, pool child, redis-server),
   from /proc CPU-time deltas over N jobs minus an idle window of the same length; for the
   shipped worker "worker_main" is the supervisor and "pool_child" its executor;
C. Redis traffic per job: every command by process (MONITOR, a few jobs, with a timeline
   of one job), commands run inside our Lua scripts, and INFO commandstats deltas;
D. py-spy (CPU samples, --nonblocking) of the worker's main process and its child (the
   executor, which runs the jobs);
E. pyinstrument of the client (``SamplerV2.run`` + ``job.result()``);
F. variants: the same latency measure against workers started with one setting changed
   (``variant_worker.py``), each with a direct call interleaved for the ratio.

Writes ``benchmarks/results/profile-<time>.json`` (raw py-spy/pyinstrument files stay in the
stack's temporary directory, printed at the end) and prints a summary.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, format_table, log, machine_info, percentile, ratio, summarize  # noqa: E402

BACKEND = "aer_simulator"
PY_SPY = Path(sys.executable).parent / "py-spy"

# Variants of the worker for section F: name -> (what it changes, how it starts, args or env).
# "cli": ``session-broker worker`` (supervisor + solo executor) with these environment
# variables; "legacy": ``variant_worker.py`` (the one-process prefork worker of before issue 13)
# with these arguments. Each runs beside the shipped worker, jobs interleaved.
VARIANTS = {
    "shipped": (
        "as shipped: supervisor + executor with the lean job consumer, task events on demand (off), "
        "OMP_WAIT_POLICY=passive",
        "cli",
        {},
    ),
    "celery_path": (
        "jobs through Celery's request path (solo pool: kombu's unacked record, request, tracer), "
        "as before issue 22 (SESSION_BROKER_JOB_PATH=celery)",
        "cli",
        {"SESSION_BROKER_JOB_PATH": "celery"},
    ),
    "before": (
        "before issue 13: one process, prefork pool child, task events on, "
        "task_track_started, Aer's OpenMP threads spinning",
        "legacy",
        [],
    ),
    "before_passive": (
        "as 'before' but OMP_WAIT_POLICY=passive (what the pool hand-over and events alone cost)",
        "legacy",
        ["--omp-passive"],
    ),
    "events_on": (
        "task events on (SESSION_BROKER_TASK_EVENTS=always: as while Flower is open)",
        "cli",
        {"SESSION_BROKER_TASK_EVENTS": "always"},
    ),
    "omp_spin": (
        "Aer's OpenMP threads spin after each job (OMP_WAIT_POLICY=active)",
        "cli",
        {"OMP_WAIT_POLICY": "active"},
    ),
}
TRACE_HOOK = """import os
if os.environ.get("SB_BENCH_TRACE_DIR"):
    import sys
    from pathlib import Path
    sys.path.insert(0, os.environ["SB_BENCH_ROOT"])
    from benchmarks.variant_worker import install_tracing
    install_tracing(Path(os.environ["SB_BENCH_TRACE_DIR"]))
"""


# ---------------------------------------------------------------------- helpers
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def port_owners() -> dict[int, int]:
    """Local TCP port -> pid, for every socket of every process (root needed)."""
    inode_port = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            inode_port[parts[9]] = int(parts[1].rsplit(":", 1)[1], 16)
    owners = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    port = inode_port.get(link[8:-1])
                    if port:
                        owners[port] = int(proc.name)
        except OSError:
            continue
    return owners


def collapse(raw_path: Path, top: int = 25, per_job: int = 1, rate: int = 1000) -> dict:
    """Aggregate a py-spy raw (collapsed) file per thread: inclusive and self CPU per function.

    Frames present in >= 93% of a thread's samples (the event loop and its callers) are
    left out of the inclusive list: they say nothing about where the time goes.
    """
    if not raw_path.exists():
        return {"samples": 0}
    threads: dict[str, Counter] = defaultdict(Counter)
    selfs: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or len(frames) < 2:
            continue
        thread, frames = frames[0], frames[1:]
        thread = re.sub(r"^thread \(\d+\): ", "", thread)
        frames = [re.sub(r" \((?:.*/site-packages/|/work/main/)", " (", f) for f in frames]
        n = int(count)
        totals[thread] += n
        for f in set(frames):
            threads[thread][f] += n
        selfs[thread][frames[-1]] += n
    ms = lambda n: round(n / rate * 1000 / max(per_job, 1), 3)  # noqa: E731
    out = {"samples": sum(totals.values()), "ms_per_job": ms(sum(totals.values())), "threads": {}}
    for thread, total in totals.most_common():
        incl = [(f, n) for f, n in threads[thread].most_common() if n < 0.93 * total][:top]
        out["threads"][thread] = {
            "ms_per_job": ms(total),
            "inclusive": [[f, ms(n), round(100 * n / total, 1)] for f, n in incl],
            "self": [[f, ms(n), round(100 * n / total, 1)] for f, n in selfs[thread].most_common(12)],
        }
    return out


def fast_result(job):
    """A one-round-trip ``result()``: rotate the latch onto itself (BLMOVE takes the token
    and puts it back in one command, so other waiters still see it and no RPUSH/EXPIRE
    follows) pipelined with the record's HMGET, which Redis runs as soon as BLMOVE returns."""
    from session_broker.core import codec

    store = job._store
    latch, record = store.keys.job_done(job.job_id()), store.keys.job(job.job_id())
    while True:
        pipe = store.redis.pipeline(transaction=False)
        pipe.blmove(latch, latch, 5, "RIGHT", "LEFT")
        pipe.hmget(record, ["status", "result", "error_code", "error"])
        _, (status, result, _code, error) = pipe.execute()
        if status == "DONE":
            return codec.decode_result(result)
        if status in ("ERROR", "CANCELLED", None):
            raise RuntimeError(f"job {job.job_id()} {status}: {error}")


PHASES = (
    "client_submit",
    "redis_to_fetch",
    "fetch_to_received",
    "received_to_dispatch",
    "dispatch_to_prerun",
    "prerun_to_claim",
    "claim_to_finish",
    "worker_usage",
    "finish_to_client",
    "total",
)


def read_traces(directory: Path) -> dict[str, dict[str, float]]:
    events: dict[str, dict[str, float]] = defaultdict(dict)
    for path in Path(directory).glob("*.trace"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                events[parts[0]][parts[1]] = float(parts[2])
    return events


def trace_phases(store, trace, trace_dir) -> dict[str, list[float]]:
    """Each job's latency split at every hand-over, in seconds (see variant_worker.py).

    client_submit: run() in the client. redis_to_fetch: the submit script's NOW -> kombu
    read the message in the worker's main process. fetch_to_received: kombu's unacked
    bookkeeping (MULTI/ZADD/HSET/EXEC) + Celery builds the Request. received_to_dispatch:
    the task-received event (PUBLISH) + INFO log. dispatch_to_prerun: pipe to the pool
    child, the child wakes, Celery's tracer starts the task. prerun_to_claim: our task up
    to the claim script's NOW. claim_to_finish: claim reply, decode, Aer, encode, finish
    script. finish_to_client: latch wake-up, the client's reads, decode.
    """
    out = {k: [] for k in PHASES}
    if not trace:
        return out
    events = read_traces(trace_dir)
    pipe = store.redis.pipeline(transaction=False)
    for jid, *_ in trace:
        pipe.hmget(store.keys.job(jid), ["created", "running", "finished", "usage"])
    for (jid, t0, t1, t2), rec in zip(trace, pipe.execute()):
        ev = events.get(jid, {})
        try:
            created, running, finished, usage = (float(x) for x in rec)
            fetch, received, dispatch, prerun = (ev[k] for k in ("fetch", "received", "dispatch", "prerun"))
        except (TypeError, ValueError, KeyError):
            continue
        for key, value in (
            ("client_submit", t1 - t0),
            ("redis_to_fetch", fetch - created),
            ("fetch_to_received", received - fetch),
            ("received_to_dispatch", dispatch - received),
            ("dispatch_to_prerun", prerun - dispatch),
            ("prerun_to_claim", running - prerun),
            ("claim_to_finish", finished - running),
            ("worker_usage", usage),
            ("finish_to_client", t2 - finished),
            ("total", t2 - t0),
        ):
            out[key].append(value)
    return out


class Monitor(threading.Thread):
    """MONITOR in a thread; keeps (time, port, command) tuples."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.rows, self.stop = client, [], threading.Event()

    def run(self):
        with self.client.monitor() as m:
            while not self.stop.is_set():
                try:
                    cmd = m.next_command()
                except Exception:  # noqa: BLE001 - connection closed at the end
                    break
                if cmd:
                    self.rows.append(
                        (cmd["time"], cmd.get("client_port") or cmd.get("client_type"), cmd["command"])
                    )


# ---------------------------------------------------------------------- the profile
class Profile:
    def __init__(self, quick: bool):
        self.quick = quick
        self.n = 100 if quick else 300
        self.pipelined = 60 if quick else 150
        self.state = Path(tempfile.mkdtemp(prefix="sb-profile-"))
        self.report: dict = {"mode": "quick" if quick else "full", "meta": machine_info()}
        import random

        self.rng = random.Random(7)

    def start(self):
        for name in list(os.environ):
            if name.startswith("SESSION_BROKER_"):
                os.environ.pop(name)
        from session_broker.ops.embedded import Stack

        self.stack = Stack(self.state)
        self.url = self.stack.start_redis(name="redis")
        os.environ["SESSION_BROKER_URL"] = self.url
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        from session_broker.core.config import get_settings

        get_settings.cache_clear()
        from session_broker import QiskitRuntimeService

        self.service = QiskitRuntimeService(self.url)
        self.store = self.service._store
        self.redis_pid = self.stack.children[0].proc.pid
        from benchmarks import contenders as C

        self.C = C
        self.direct = C.Direct()
        self.circuit = C.bell()
        self.worker = self.start_worker("shipped")
        from session_broker.ops.embedded import wait_for

        wait_for(lambda: len(self.store.live_workers(BACKEND)) == 1, 60, "one live worker")
        self.session, _ = self.pinned_session()

    def start_worker(self, variant: str):
        """Start a worker of ``variant`` (with per-job tracing) and wait until it is live.

        The shipped worker's executor is traced by a ``sitecustomize`` on its PYTHONPATH
        (benchmark-only: the product has no tracing hook)."""
        from session_broker.ops.embedded import wait_for

        node = f"{BACKEND}-{variant}@profile"
        trace = self.state / f"trace-{variant}"
        _what, kind, extra = VARIANTS[variant]
        if kind == "cli":
            hook = self.state / "trace-hook"
            hook.mkdir(exist_ok=True)
            (hook / "sitecustomize.py").write_text(TRACE_HOOK)
            argv = [
                sys.executable,
                "-m",
                "session_broker.ops.cli",
                "worker",
                "--backend",
                BACKEND,
                "--name",
                node,
            ]
            env = {
                "SESSION_BROKER_URL": self.url,
                "PYTHONPATH": str(hook),
                "SB_BENCH_ROOT": str(ROOT),
                "SB_BENCH_TRACE_DIR": str(trace),
                **extra,
            }
        else:
            argv = [
                sys.executable,
                str(ROOT / "benchmarks" / "variant_worker.py"),
                "--backend",
                BACKEND,
                "--name",
                node,
                "--trace-dir",
                str(trace),
                *extra,
            ]
            env = {"SESSION_BROKER_URL": self.url}
        child = self.stack.spawn(f"worker-{variant}", argv, env)
        child.node, child.trace = node, trace
        key = self.store.keys.worker(node)
        wait_for(lambda: self.store.redis.hget(key, "heartbeat") or not child.alive(), 180, node)
        if not child.alive():
            raise RuntimeError(f"worker {variant} exited; see {child.log}")
        return child

    def stop_worker(self, child):
        self.stack.stop_child(child, grace=30)
        self.stack.children.remove(child)

    def pinned_session(self, expect_node: str | None = None):
        """A new session whose first job has run (so it holds a worker); its node."""
        s = self.C.BrokerSession(self.service)
        for _ in range(5):
            s.sample(self.circuit, 1024)
        node = self.store.redis.hget(self.store.keys.session(s.session.session_id), "worker")
        if expect_node and node != expect_node:
            raise RuntimeError(f"session pinned to {node}, expected {expect_node}")
        return s, node

    def jobs(self, n: int, gap: float = 0.0) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.session.sample(self.circuit, 1024)
            out.append(time.perf_counter() - t0)
            if gap:
                time.sleep(gap)
        return out

    def pids(self) -> dict[str, int]:
        kids = children(self.worker.proc.pid)
        out = {"client": os.getpid(), "worker_main": self.worker.proc.pid, "redis": self.redis_pid}
        if kids:
            out["pool_child"] = kids[0]
        return out

    # A --------------------------------------------------------------------------------
    def phases(self):
        log(f"A. phases over {self.n} session jobs (direct interleaved)")
        s = self.session
        s.trace = []
        direct = []
        for _ in range(self.n):
            t0 = time.perf_counter()
            self.direct.sample(self.circuit, 1024)
            direct.append(time.perf_counter() - t0)
            s.sample(self.circuit, 1024)
        ph = trace_phases(self.store, s.trace, self.worker.trace)
        s.trace = None
        self.report["phases"] = {k: summarize(v) for k, v in ph.items()}
        self.report["phases"]["direct (same run)"] = summarize(direct)

    # B --------------------------------------------------------------------------------
    def cpu(self):
        log(f"B. CPU per job over {self.n} session jobs")
        pids = self.pids()
        t0 = time.perf_counter()
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        self.jobs(self.n)
        busy = time.perf_counter() - t0
        mid = {k: cpu_seconds(p) for k, p in pids.items()}
        time.sleep(min(busy, 10))
        idle = time.perf_counter() - t0 - busy
        after = {k: cpu_seconds(p) for k, p in pids.items()}
        out = {}
        for k in pids:
            background = (after[k] - mid[k]) / idle * busy if idle > 0 else 0
            out[k] = {
                "cpu_ms_per_job": (mid[k] - before[k] - background) / self.n * 1000,
                "background_ms_per_s": (after[k] - mid[k]) / idle * 1000 if idle > 0 else None,
            }
        out["wall_ms_per_job"] = busy / self.n * 1000
        out["note"] = "client CPU includes this profiler's loop; /proc ticks are 10 ms, so use >= 100 jobs"
        self.report["cpu"] = out

    # C --------------------------------------------------------------------------------
    def redis_traffic(self):
        log("C. Redis commands per job (MONITOR + commandstats)")
        r = self.store.redis
        shas = {
            getattr(self.store, a).sha: a.lstrip("_")
            for a in vars(self.store)
            if hasattr(getattr(self.store, a), "sha")
        }
        # commandstats: background first, then jobs
        n = max(self.n // 2, 50)
        r.config_resetstat()
        t0 = time.perf_counter()
        self.jobs(n)
        busy = time.perf_counter() - t0
        jobs_stats = r.info("commandstats")
        r.config_resetstat()
        time.sleep(min(busy, 10))
        idle = time.perf_counter() - t0 - busy
        bg_stats = r.info("commandstats")
        stats = {}
        for cmd, v in jobs_stats.items():
            bg = bg_stats.get(cmd, {"calls": 0, "usec": 0})
            scale = busy / idle if idle > 0 else 0
            calls = (v["calls"] - bg["calls"] * scale) / n
            usec = (v["usec"] - bg["usec"] * scale) / n
            if calls > 0.05:
                stats[cmd.replace("cmdstat_", "")] = {
                    "calls_per_job": round(calls, 2),
                    "usec_per_job": round(usec, 1),
                    "usec_per_call": v.get("usec_per_call"),
                }
        self.report["commandstats"] = dict(sorted(stats.items(), key=lambda kv: -kv[1]["calls_per_job"]))

        # MONITOR: a few jobs, spaced out, attributed to processes by their socket
        mon = Monitor(self.store.redis.__class__.from_url(self.url, decode_responses=True))
        mon.start()
        time.sleep(0.3)
        windows = []
        for _ in range(5):
            t0 = time.time()
            self.session.sample(self.circuit, 1024)
            windows.append((t0, time.time()))
            time.sleep(0.35)
        time.sleep(0.2)
        owners = port_owners()
        mon.stop.set()
        r.ping()
        mon.join(2)
        pids = self.pids()
        role_of_pid = {p: k for k, p in pids.items()}

        def role(port):
            if port == "lua":
                return "  (in Lua)"
            try:
                return role_of_pid.get(owners.get(int(port)), f"pid {owners.get(int(port))}")
            except (TypeError, ValueError):
                return str(port)

        def short(cmd):
            parts = cmd.split(" ")
            if parts[0].upper() == "EVALSHA" and len(parts) > 1:
                return f"EVALSHA {shas.get(parts[1], parts[1][:8])}"
            if parts[0].upper() == "BRPOP":
                return "BRPOP " + " ".join(p for p in parts[1:] if "\x06" not in p and "\\x06" not in p)[:120]
            return cmd[:110]

        per_job = []
        timeline = []
        for i, (a, b) in enumerate(windows):
            rows = [x for x in mon.rows if a - 0.0005 <= x[0] <= b + 0.002]
            counts = Counter(
                (
                    role(p),
                    short(c).split(" ")[0] if role(p) != "  (in Lua)" else "lua:" + short(c).split(" ")[0],
                )
                for _, p, c in rows
            )
            per_job.append(counts)
            if i == 2:
                start = rows[0][0] if rows else a
                timeline = [[round((t - start) * 1000, 3), role(p), short(c)] for t, p, c in rows]
        total = Counter()
        for c in per_job:
            total.update(c)
        by_role = defaultdict(dict)
        for (rl, cmd), v in sorted(total.items()):
            by_role[rl][cmd] = round(v / len(per_job), 2)
        self.report["monitor"] = {
            "jobs": len(per_job),
            "round_trips_per_job": {
                rl: round(sum(v for k, v in cmds.items() if not k.startswith("lua:")), 2)
                for rl, cmds in by_role.items()
                if rl != "  (in Lua)"
            },
            "commands_per_job": by_role,
            "timeline_one_job_ms": timeline,
            "note": "window = client's run() to result() return; the agent's 0.1 s ticks fall in it at random",
        }

    # D --------------------------------------------------------------------------------
    def pyspy(self):
        log(f"D. py-spy on the worker (main + pool child) over {self.n} jobs")
        pids = self.pids()
        procs = []
        rate = 250
        dur = 3600
        for role in ("worker_main", "pool_child"):
            if role not in pids:
                continue
            out = self.state / f"pyspy-{role}.raw"
            procs.append(
                (
                    role,
                    out,
                    subprocess.Popen(
                        [
                            str(PY_SPY),
                            "record",
                            "--pid",
                            str(pids[role]),
                            "--rate",
                            str(rate),
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--threads",
                            "--function",
                            "-d",
                            str(dur),
                            "-o",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                )
            )
        time.sleep(1.5)
        self.jobs(self.n)
        for _, _, p in procs:
            p.send_signal(2)  # SIGINT: py-spy writes its output and exits
        result = {}
        for role, out, p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            result[role] = collapse(out, per_job=self.n, rate=rate)
            result[role]["raw"] = str(out)
        result["note"] = (
            "samples of threads running or runnable (no --idle): on a saturated machine a "
            "runnable thread waiting for a core counts too, so ms_per_job overstates CPU; use the "
            "shares, scaled by section B's CPU ms/job. The window also holds ~1.5 s before the jobs"
        )
        self.report["pyspy"] = result

    # E --------------------------------------------------------------------------------
    def client(self):
        log(f"E. pyinstrument on the client over {self.n} jobs")
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0002)
        prof.start()
        t0 = time.perf_counter()
        self.jobs(self.n)
        wall = time.perf_counter() - t0
        session = prof.stop()
        text = prof.output_text(unicode=False, color=False, show_all=False)
        (self.state / "pyinstrument.txt").write_text(text)
        root = session.root_frame()
        incl = Counter()

        def walk(frame, seen):
            key = f"{frame.function} ({Path(frame.file_path or '').name})"
            if key not in seen:
                incl[key] += frame.time
            for child in frame.children:
                walk(child, seen | {key})

        if root is not None:
            walk(root, frozenset())
        self.report["pyinstrument"] = {
            "wall_ms_per_job": wall / self.n * 1000,
            "inclusive_ms_per_job": [[k, round(v / self.n * 1000, 3)] for k, v in incl.most_common(40)],
            "text": str(self.state / "pyinstrument.txt"),
        }

    # F --------------------------------------------------------------------------------
    def variants(self, names):
        """Each variant X runs beside the shipped worker: one session pinned to each, jobs
        interleaved with a direct call, so X/shipped is a same-moment ratio."""
        reps = 60 if self.quick else 150
        firsts_n = 3 if self.quick else 5
        ship_node = self.worker.node
        out = {}
        for name in names:
            if name == "shipped":
                continue
            log(f"F. variant {name}: {VARIANTS[name][0]}")
            child = self.start_worker(name)
            try:
                s_ship = self.session  # already pinned to the shipped worker
                s_x, node = self.pinned_session(child.node)
                samples = {"direct": [], "shipped": [], name: []}
                s_ship.trace, s_x.trace = [], []
                calls = [
                    ("direct", lambda: self.direct.sample(self.circuit, 1024)),
                    ("shipped", lambda: s_ship.sample(self.circuit, 1024)),
                    (name, lambda: s_x.sample(self.circuit, 1024)),
                ]
                for _ in range(reps):
                    order = list(calls)
                    self.rng.shuffle(order)
                    for key, call in order:
                        t0 = time.perf_counter()
                        call()
                        samples[key].append(time.perf_counter() - t0)
                ph = {
                    "shipped": trace_phases(self.store, s_ship.trace, self.worker.trace),
                    name: trace_phases(self.store, s_x.trace, child.trace),
                }
                s_ship.trace = s_x.trace = None
                # pipelined throughput into each session (one worker each), alternated
                tput = {"shipped": [], name: []}
                wcpu = {"shipped": [], name: []}
                procs = {"shipped": self.worker, name: child}
                for _ in range(2):
                    for key, sess in (("shipped", s_ship), (name, s_x)):
                        pids = [procs[key].proc.pid, *children(procs[key].proc.pid)]
                        c0 = sum(cpu_seconds(p) for p in pids)
                        t0 = time.perf_counter()
                        handles = [sess.submit_sample(self.circuit, 1024) for _ in range(self.pipelined)]
                        for h in handles:
                            sess.gather(h)
                        tput[key].append(self.pipelined / (time.perf_counter() - t0))
                        wcpu[key].append((sum(cpu_seconds(p) for p in pids) - c0) / self.pipelined * 1000)
                # first job of a new session on an idle worker (pin + consumer switch)
                firsts = {"shipped": [], name: []}
                s_x.close()
                for _ in range(firsts_n):  # the shipped worker is held: new sessions go to X
                    firsts[name].append(self.first_job())
                s_x, _ = self.pinned_session(child.node)
                s_ship.close()
                for _ in range(firsts_n):  # now X is held: new sessions go to the shipped one
                    firsts["shipped"].append(self.first_job())
                self.session, _ = self.pinned_session(ship_node)
                s_x.close()
            finally:
                self.stop_worker(child)
            summ = {k: summarize(v) for k, v in samples.items()}
            out[name] = {
                "what": VARIANTS[name][0],
                "latency": summ,
                "ratio_to_shipped": ratio(summ[name]["median_ms"], summ["shipped"]["median_ms"]),
                "shipped_over_direct": ratio(summ["shipped"]["median_ms"], summ["direct"]["median_ms"]),
                "variant_over_direct": ratio(summ[name]["median_ms"], summ["direct"]["median_ms"]),
                "phases_median_ms": {
                    k: {p: percentile([x * 1000 for x in v], 50) for p, v in d.items() if v}
                    for k, d in ph.items()
                },
                "first_job_of_session_ms": {k: summarize(v) for k, v in firsts.items()},
                "pipelined_jobs_per_s": {k: percentile(v, 50) for k, v in tput.items()},
                "worker_cpu_ms_per_job": {k: percentile(v, 50) for k, v in wcpu.items()},
                "pipelined_ratio_to_shipped": ratio(
                    percentile(tput[name], 50), percentile(tput["shipped"], 50)
                ),
            }
        self.report["variants"] = out

    def first_job(self) -> float:
        time.sleep(0.3)
        s = self.C.BrokerSession(self.service)
        t0 = time.perf_counter()
        s.sample(self.circuit, 1024)
        dt = time.perf_counter() - t0
        s.close()
        return dt

    # G --------------------------------------------------------------------------------
    def client_variant(self):
        """job.result() as shipped vs one pipelined round trip (BLMOVE latch->latch + HMGET)."""
        reps = 80 if self.quick else 200
        log(f"G. client: result() as shipped vs pipelined latch wait, {reps} interleaved rounds")
        s = self.session
        traces = {"shipped": [], "pipelined": []}
        samples = {"direct": [], "shipped": [], "pipelined": []}

        def one(kind):
            t0 = time.time()
            job = s.sampler.run([self.circuit], shots=1024)
            t1 = time.time()
            if kind == "shipped":
                job.result()
            else:
                fast_result(job)
            t2 = time.time()
            traces[kind].append((job.job_id(), t0, t1, t2))
            return t2 - t0

        calls = [("direct", None), ("shipped", None), ("pipelined", None)]
        for _ in range(reps):
            order = list(calls)
            self.rng.shuffle(order)
            for kind, _ in order:
                if kind == "direct":
                    t0 = time.perf_counter()
                    self.direct.sample(self.circuit, 1024)
                    samples[kind].append(time.perf_counter() - t0)
                else:
                    samples[kind].append(one(kind))
        summ = {k: summarize(v) for k, v in samples.items()}
        self.report["client_variant"] = {
            "what": "result(): HMGET, BLPOP, RPUSH+EXPIRE, HMGET (shipped) vs pipeline[BLMOVE latch latch, HMGET]",
            "latency": summ,
            "ratio_to_shipped": ratio(summ["pipelined"]["median_ms"], summ["shipped"]["median_ms"]),
            "finish_to_client_ms": {
                k: percentile(
                    [x * 1000 for x in trace_phases(self.store, v, self.worker.trace)["finish_to_client"]], 50
                )
                for k, v in traces.items()
            },
        }

    def stop(self):
        stack = getattr(self, "stack", None)
        if stack is not None:
            stack.stop(grace=15)


def render(rep: dict) -> str:
    parts = []
    ph = rep.get("phases", {})
    if ph:
        rows = [
            [k, fmt_ms(v.get("median_ms")), fmt_ms(v.get("p90_ms")), fmt_ms(v.get("p99_ms"))]
            for k, v in ph.items()
        ]
        parts.append(
            format_table(
                ["phase", "median ms", "p90 ms", "p99 ms"],
                rows,
                "A. session Bell-sampler job, phases (server timestamps)",
            )
        )
    cpu = rep.get("cpu", {})
    if cpu:
        rows = [
            [k, fmt_ms(v["cpu_ms_per_job"]), fmt_ms(v.get("background_ms_per_s"))]
            for k, v in cpu.items()
            if isinstance(v, dict)
        ]
        parts.append(
            format_table(
                ["process", "CPU ms/job", "idle CPU ms/s"],
                rows,
                f"B. CPU per job (wall {fmt_ms(cpu.get('wall_ms_per_job'))} ms/job)",
            )
        )
    mon = rep.get("monitor", {})
    if mon:
        rows = [
            [rl, ", ".join(f"{c} {v:g}" for c, v in cmds.items())]
            for rl, cmds in mon["commands_per_job"].items()
        ]
        parts.append(
            format_table(
                ["process", "commands per job"],
                rows,
                f"C. Redis commands per job (MONITOR, {mon['jobs']} jobs); round trips: "
                f"{mon['round_trips_per_job']}",
            )
        )
        parts.append(
            format_table(["ms", "process", "command"], mon["timeline_one_job_ms"], "C. timeline of one job")
        )
    cs = rep.get("commandstats", {})
    if cs:
        rows = [[k, v["calls_per_job"], v["usec_per_job"]] for k, v in list(cs.items())[:25]]
        parts.append(
            format_table(
                ["command", "calls/job", "usec/job"],
                rows,
                "C. INFO commandstats per job (background subtracted)",
            )
        )
    for role, d in rep.get("pyspy", {}).items():
        if not isinstance(d, dict) or not d.get("samples"):
            continue
        for thread, t in d["threads"].items():
            if t["ms_per_job"] < 0.2:
                continue
            rows = [[f[:100], ms, pct] for f, ms, pct in t["inclusive"][:18]]
            parts.append(
                format_table(
                    ["function (inclusive, below the loop)", "active ms/job", "% of thread"],
                    rows,
                    f"D. py-spy {role} / {thread}: {t['ms_per_job']} active ms/job "
                    f"(process {d['ms_per_job']}; running or runnable, see B for CPU)",
                )
            )
    pi = rep.get("pyinstrument", {})
    if pi:
        rows = [[k[:100], v] for k, v in pi["inclusive_ms_per_job"][:30]]
        parts.append(
            format_table(
                ["function (inclusive)", "ms/job"],
                rows,
                f"E. pyinstrument client ({fmt_ms(pi['wall_ms_per_job'])} ms/job wall)",
            )
        )
    cv = rep.get("client_variant")
    if cv:
        lat = cv["latency"]
        rows = [
            [k, fmt_ms(v.get("median_ms")), fmt_ms(v.get("p99_ms")), fmt_ms(cv["finish_to_client_ms"].get(k))]
            for k, v in lat.items()
        ]
        parts.append(
            format_table(
                ["client", "median ms", "p99 ms", "finish->client ms"],
                rows,
                f"G. {cv['what']}: pipelined/shipped = {cv['ratio_to_shipped']:.2f}x",
            )
        )
    var = rep.get("variants", {})
    if var:
        rows = []
        for k, v in var.items():
            lat, first = v["latency"], v["first_job_of_session_ms"]
            rows.append(
                [
                    k,
                    v["what"],
                    fmt_ms(lat["direct"]["median_ms"]),
                    fmt_ms(lat["shipped"]["median_ms"]),
                    fmt_ms(lat[k]["median_ms"]),
                    f"{v['ratio_to_shipped']:.2f}x",
                    f"{v['shipped_over_direct']:.2f}x -> {v['variant_over_direct']:.2f}x",
                    f"{fmt_ms(first['shipped'].get('median_ms'))} -> {fmt_ms(first[k].get('median_ms'))}",
                    f"{v['pipelined_jobs_per_s']['shipped']:.1f} -> {v['pipelined_jobs_per_s'][k]:.1f} "
                    f"({v['pipelined_ratio_to_shipped']:.2f}x)",
                    f"{v['worker_cpu_ms_per_job']['shipped']:.1f} -> {v['worker_cpu_ms_per_job'][k]:.1f}",
                ]
            )
        parts.append(
            format_table(
                [
                    "variant",
                    "change",
                    "direct ms",
                    "shipped ms",
                    "variant ms",
                    "variant/shipped",
                    "x direct",
                    "1st job of a session ms",
                    "pipelined jobs/s",
                    "worker CPU ms/job",
                ],
                rows,
                "F. worker variants, each beside a shipped worker, jobs interleaved (medians)",
            )
        )
        rows = []
        for k, v in var.items():
            for who, ph in v["phases_median_ms"].items():
                rows.append([k, who] + [fmt_ms(ph.get(p)) for p in PHASES])
        parts.append(format_table(["variant", "worker"] + list(PHASES), rows, "F. phases (medians, ms)"))
    return "\n".join(parts)


def fmt_ms(x):
    return "-" if x is None else f"{x:.2f}"


def main(quick: bool = False, out: Path | None = None, variants=None) -> int:
    prof = Profile(quick)
    try:
        log(f"profile: stack in {prof.state}")
        prof.start()
        prof.phases()
        prof.cpu()
        prof.redis_traffic()
        prof.pyspy()
        prof.client()
        prof.client_variant()
        prof.variants(variants or list(VARIANTS))
        prof.report["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        prof.stop()
    print(render(prof.report))
    out = out or RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prof.report, indent=1, default=str) + "\n")
    print(f"wrote {out}; raw profiles in {prof.state}")
    return 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
