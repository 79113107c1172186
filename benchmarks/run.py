#!/usr/bin/env python
"""session-broker benchmark: every scenario, every contender, one run, one machine.

    .venv/bin/python benchmarks/run.py [--quick] [--workers N] [--scenarios 1,2,...] [--out PATH]
    .venv/bin/python benchmarks/run.py --show benchmarks/results/latest-full.json   # re-print
    .venv/bin/python benchmarks/run.py --profile [--quick]        # where a session job's time goes
    .venv/bin/python benchmarks/run.py --mitigation [--quick]     # error mitigation, levels 0-2

It starts its own stack (a redis-server on a free port, session-broker workers for
``aer_simulator``, one plain-Celery worker on its own queue), runs the scenarios, prints
tables and writes JSON to ``benchmarks/results/`` (``bench-<UTC time>-<mode>.json`` and
``latest-<mode>.json``). Every figure is also given as a ratio to the direct in-process Aer
call measured in the same run: on a shared machine absolute times drift, same-run ratios
hold. Contenders (see ``contenders.py``): ``direct`` (the floor), ``plain_celery`` (what one
writes by hand, ``plain_celery.py``), ``ibm_local`` (qiskit-ibm-runtime local mode),
``sb_job`` (session-broker, no session) and ``sb_session`` (session-broker, in a Session).

Scenarios: 1 sequential latency, 2 pipelined throughput, 3 iterative loop under a flood
from another process, 4 cost of many open sessions (latency, Redis memory), 5 workers,
7 fair share (three instances, shares 1/1/2, flooding two workers: achieved against configured
share, and the plain-job latency with instances configured against without),
6 IBM's stock client through the REST API (``session-broker api``) next to the Python API.
The pure helpers at the top (percentiles, ratios, tables, JSON) are unit-tested on
synthetic data by ``tests/unit/test_bench_smoke.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.common import RESULTS, fmt, format_table, log, machine_info, percentile, ratio, summarize  # noqa: E402  (after the sys.path line above)

ALL_SCENARIOS = (1, 2, 3, 4, 5, 6, 7)
CONTENDERS = ("direct", "plain_celery", "ibm_local", "sb_job", "sb_session")


# ====================================================================== pure helpers
def with_ratios(summary: dict, base: dict) -> dict:
    """A summary plus its median and p99 as ratios to ``base``'s (the direct call's)."""
    out = dict(summary)
    out["ratio_median"] = ratio(summary.get("median_ms"), base.get("median_ms"))
    out["ratio_p99"] = ratio(summary.get("p99_ms"), base.get("p99_ms"))
    return out


def rate(jobs: int, seconds: float):
    return jobs / seconds if seconds and seconds > 0 else None


# A ratio to a baseline is a result only when the baseline itself is steady: the direct
# call's (p90 - p10) / median above this makes every ratio to it "noisy", not PASS/MISS.
NOISY_BASELINE = 0.5


def verdict(value, limit, op: str = "<=", baseline_spread=None) -> str:
    """PASS/MISS of ``value op limit``; n/a when the value was not measured, NOISY when the
    baseline it is a ratio to was too spread to judge on."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if baseline_spread is not None and baseline_spread > NOISY_BASELINE:
        return "NOISY"
    ok = value <= limit if op == "<=" else value >= limit
    return "PASS" if ok else "MISS"


def compute_targets(results: dict) -> list[dict]:
    """The issue's targets, judged on same-run medians. Missing scenarios give n/a."""
    sc = results.get("scenarios", {})
    out = []

    def add(tid, what, value, limit, op, unit="x", baseline_spread=None):
        out.append(
            {
                "id": tid,
                "what": what,
                "value": value,
                "limit": limit,
                "op": op,
                "unit": unit,
                "verdict": verdict(value, limit, op, baseline_spread),
            }
        )

    # issue 22's targets: the lean job path, judged against the direct Aer call and IBM's
    # local mode measured interleaved in the same run
    w1 = sc.get("1", {}).get("workloads", {})
    s1 = w1.get("bell_sampler", {}).get("contenders", {})
    spread = s1.get("direct", {}).get("spread")
    add(
        "baseline",
        "direct Bell-sampler spread, (p90 - p10) / median (the baseline must be steady)",
        spread,
        NOISY_BASELINE,
        "<=",
        "",
    )
    add(
        "latency",
        "session Bell-sampler latency vs direct (median)",
        s1.get("sb_session", {}).get("ratio_median"),
        1.3,
        "<=",
        baseline_spread=spread,
    )
    ibm = s1.get("ibm_local", {}).get("ratio_median")
    ours = s1.get("sb_session", {}).get("ratio_median")
    add(
        "vs_ibm_local",
        "session Bell-sampler latency vs IBM local mode's (median ratios)",
        ratio(ours, ibm),
        1.0,
        "<=",
        baseline_spread=spread,
    )
    e1 = w1.get("bell_estimator", {}).get("contenders", {})
    add(
        "latency_estimator",
        "session Bell-estimator latency vs direct (median)",
        e1.get("sb_session", {}).get("ratio_median"),
        1.5,
        "<=",
        baseline_spread=e1.get("direct", {}).get("spread"),
    )
    s2 = sc.get("2", {}).get("contenders", {})
    add(
        "throughput",
        f"{sc.get('2', {}).get('jobs', '?')} Bell jobs at once into one session, throughput vs direct "
        "sequential",
        s2.get("sb_session", {}).get("ratio_to_direct"),
        1.3,
        ">=",
    )
    s3 = sc.get("3", {}).get("contenders", {})
    add(
        "flood",
        "loop in session under flood vs unloaded (median)",
        s3.get("sb_session", {}).get("loaded_over_unloaded"),
        1.2,
        "<=",
    )
    s4 = sc.get("4", {})
    lat = s4.get("latency", [])
    big = lat[-1] if len(lat) > 1 else {}
    add(
        "open_sessions",
        f"per-job latency with {big.get('open_sessions', '?')} open sessions vs 1 "
        "(median, each block / its interleaved direct)",
        big.get("ratio_to_one_session_direct_normalized", big.get("ratio_to_one_session")),
        1.2,
        "<=",
    )
    mem = s4.get("memory", [])
    m = mem[-1] if mem else {}
    add(
        "memory_idle",
        f"Redis memory per idle open session ({m.get('sessions', '?')} sessions)",
        m.get("bytes_per_idle_session"),
        2048,
        "<=",
        "B",
    )
    add(
        "memory_closed",
        "Redis memory left per session after all closed (baseline = 64 B noise)",
        m.get("bytes_left_per_closed_session"),
        64,
        "<=",
        "B",
    )
    s6 = sc.get("6", {})
    add(
        "rest_client",
        "stock client via REST vs Python API, session Bell sampler (median)",
        s6.get("ratio_rest_to_python"),
        4.0,
        "<=",
    )
    # issue 23: fair share within 5 points of the configured shares, latency within noise
    s7 = sc.get("7", {})
    add(
        "fair_share",
        "instances' achieved usage share vs configured (most points off)",
        s7.get("max_points_off"),
        5.0,
        "<=",
        "",
    )
    add(
        "instances_latency",
        "plain Bell job latency with instances configured vs without (median)",
        s7.get("latency_ratio_with_to_without"),
        1.15,
        "<=",
        baseline_spread=s7.get("latency", {}).get("without_instances", {}).get("spread"),
    )
    return out


def render(results: dict) -> str:
    """The whole text report of a results dict (as written to JSON)."""
    meta = results.get("meta", {})
    parts = [
        f"session-broker benchmark ({results.get('mode', '?')}) {meta.get('date', '')} "
        f"on {meta.get('cpu_model', '?')} x{meta.get('cpus', '?')} "
        f"(load {meta.get('loadavg_start', '?')} -> {meta.get('loadavg_end', '?')})"
    ]
    sc = results.get("scenarios", {})
    if "1" in sc:
        rows, prow = [], []
        for wkey, w in sc["1"]["workloads"].items():
            for name, s in w["contenders"].items():
                rows.append(
                    [
                        wkey,
                        name,
                        s.get("n", 0),
                        fmt(s.get("median_ms")),
                        fmt(s.get("p99_ms")),
                        fmt(s.get("spread")),
                        fmt(s.get("ratio_median"), "x"),
                        fmt(s.get("ratio_p99"), "x"),
                    ]
                )
            for name, ph in w.get("phases", {}).items():
                prow.append(
                    [wkey, name]
                    + [
                        fmt(ph.get(k, {}).get("median_ms"))
                        for k in (
                            "client_submit",
                            "queued_to_claim",
                            "claim_to_finish",
                            "worker_usage",
                            "finish_to_client",
                            "total",
                        )
                    ]
                )
        parts.append(
            format_table(
                [
                    "workload",
                    "contender",
                    "n",
                    "median ms",
                    "p99 ms",
                    "spread",
                    "median/direct",
                    "p99/direct",
                ],
                rows,
                "Scenario 1 - sequential latency, submit to result",
            )
        )
        if prow:
            parts.append(
                format_table(
                    [
                        "workload",
                        "contender",
                        "submit",
                        "queued->claim",
                        "claim->finish",
                        "(worker usage)",
                        "finish->client",
                        "total",
                    ],
                    prow,
                    "Scenario 1 - where a session-broker job's time goes (medians, ms; server timestamps)",
                )
            )
    if "2" in sc:
        s = sc["2"]
        rows = [
            [
                name,
                c.get("mode"),
                c.get("jobs"),
                fmt(c.get("seconds")),
                fmt(c.get("jobs_per_s"), digits=1),
                fmt(c.get("ratio_to_direct"), "x"),
            ]
            for name, c in s["contenders"].items()
        ]
        parts.append(
            format_table(
                ["contender", "mode", "jobs", "s", "jobs/s", "/direct seq"],
                rows,
                f"Scenario 2 - pipelined throughput ({s.get('jobs')} jobs, one worker)",
            )
        )
    if "3" in sc:
        s = sc["3"]
        rows = []
        for name, c in s["contenders"].items():
            rows.append(
                [
                    name,
                    fmt(c.get("unloaded_median_s"), digits=3),
                    c.get("unloaded_n"),
                    fmt(c.get("loaded_median_s"), digits=3),
                    c.get("loaded_n"),
                    fmt(c.get("loaded_over_unloaded"), "x"),
                    fmt(c.get("loaded_over_unloaded_vs_direct"), "x"),
                    fmt(c.get("unloaded_over_direct"), "x"),
                    fmt(c.get("loaded_over_direct_unloaded"), "x"),
                    f"{fmt(c.get('first_step_unloaded_ms'), digits=0)} / {fmt(c.get('first_step_loaded_ms'), digits=0)}",
                    fmt(c.get("steady_loaded_over_unloaded"), "x"),
                    c.get("load", ""),
                ]
            )
        parts.append(
            format_table(
                [
                    "contender",
                    "unloaded s",
                    "n",
                    "flooded s",
                    "n",
                    "flooded/unloaded",
                    "... / direct's",
                    "unloaded/direct",
                    "flooded/direct",
                    "1st step ms unl./fl.",
                    "steps 2..N fl./unl.",
                    "competing load",
                ],
                rows,
                f"Scenario 3 - {s.get('steps')}-step loop, flood of {s.get('flood_jobs')} jobs "
                f"from another process on {s.get('workers')} workers",
            )
        )
    if "4" in sc:
        s = sc["4"]
        rows = [
            [
                r["open_sessions"],
                r["n"],
                fmt(r["median_ms"]),
                fmt(r["p99_ms"]),
                fmt(r.get("ratio_to_one_session"), "x"),
                fmt(r.get("ratio_to_one_session_direct_normalized"), "x"),
                fmt(r.get("ratio_to_direct"), "x"),
                fmt(r.get("open_s"), digits=2),
            ]
            for r in s.get("latency", [])
        ]
        parts.append(
            format_table(
                [
                    "open sessions",
                    "n",
                    "median ms",
                    "p99 ms",
                    "/1 session",
                    "/1 session (each /direct)",
                    "/direct",
                    "open all s",
                ],
                rows,
                "Scenario 4 - Bell sampler in a session while others are open",
            )
        )
        rows = [
            [
                m["sessions"],
                fmt(m["baseline_bytes"], "B"),
                fmt(m["bytes_per_idle_session"], "B"),
                fmt(m["bytes_left_per_closed_session"], "B"),
                m.get("keys_per_idle_session"),
                m.get("keys_left_per_closed_session"),
                ", ".join(f"{k} {v:.0f}" for k, v in (m.get("memory_usage_per_key_open") or {}).items()),
                ", ".join(f"{k} {v:.0f}" for k, v in (m.get("memory_usage_per_key_closed") or {}).items()),
            ]
            for m in s.get("memory", [])
        ]
        parts.append(
            format_table(
                [
                    "sessions",
                    "baseline used_memory",
                    "per idle open session",
                    "left per closed session",
                    "keys/open",
                    "keys left/closed",
                    "MEMORY USAGE open (B)",
                    "closed (B)",
                ],
                rows,
                "Scenario 4 - Redis memory (INFO used_memory deltas / sessions)",
            )
        )
    if "5" in sc:
        s = sc["5"]
        rows = [
            [
                r["workers"],
                r["jobs"],
                fmt(r["seconds"]),
                fmt(r["jobs_per_s"], digits=1),
                fmt(r.get("ratio_to_direct"), "x"),
                fmt(r.get("ratio_to_one_worker"), "x"),
                r.get("jobs_per_worker", ""),
            ]
            for r in s.get("rows", [])
        ]
        parts.append(
            format_table(
                ["workers", "jobs", "s", "jobs/s", "/direct seq", "/1 worker", "jobs per worker"],
                rows,
                f"Scenario 5 - non-session Bell jobs, pipelined "
                f"(direct sequential: {fmt(s.get('direct_jobs_per_s'), digits=1)} jobs/s)",
            )
        )
    if "6" in sc:
        s = sc["6"]
        rows = [
            [name, c.get("n"), fmt(c.get("median_ms")), fmt(c.get("p90_ms")), fmt(c.get("ratio_median"), "x")]
            for name, c in s["contenders"].items()
        ]
        parts.append(
            format_table(
                ["contender", "n", "median ms", "p90 ms", "/direct"],
                rows,
                "Scenario 6 - Bell sampler in a session: IBM's stock client via the REST API "
                f"vs the Python API (ratio {fmt(s.get('ratio_rest_to_python'), 'x')})",
            )
        )
    if "7" in sc:
        s = sc["7"]
        rows = [
            [
                r["instance"],
                r["share"],
                fmt(r["configured_pct"], "%", 1),
                fmt(r["achieved_pct"], "%", 1),
                fmt(r["points_off"], "", 1),
                fmt(r["usage_s"], "s", 1),
            ]
            for r in s.get("rows", [])
        ]
        parts.append(
            format_table(
                ["instance", "share", "configured", "achieved", "points off", "usage"],
                rows,
                f"Scenario 7 - fair share, {s.get('seconds')} s flood of two workers; plain Bell job "
                f"with instances / without: {fmt(s.get('latency_ratio_with_to_without'), 'x')}",
            )
        )
    targets = results.get("targets") or compute_targets(results)
    rows = [
        [
            t["what"],
            fmt(t["value"], t.get("unit", "x")),
            f"{t['op']} {fmt(t['limit'], t.get('unit', 'x'))}",
            t["verdict"],
        ]
        for t in targets
    ]
    parts.append(format_table(["target", "measured", "limit", "verdict"], rows, "Targets (same-run medians)"))
    return "\n".join(parts)


def write_results(results: dict, out: Path, latest: Path | None) -> list[Path]:
    """Write the JSON to ``out`` (and a copy to ``latest``); returns the paths written."""
    text = json.dumps(results, indent=1, sort_keys=False, default=str)
    written = []
    for path in (out, latest):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        written.append(path)
    return written


def parse_scenarios(text: str | None) -> list[int]:
    if not text:
        return list(ALL_SCENARIOS)
    out = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    bad = [x for x in out if x not in ALL_SCENARIOS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {bad}; choose from {ALL_SCENARIOS}")
    return out


# ====================================================================== settings per mode
MODES = {
    "quick": {
        "s6_reps": 20,
        "s1_reps": 20,
        "s1_reps_big": 3,
        "s1_warmup": 4,
        "s1_warmup_big": 0,
        "s2_jobs": 200,
        "s3_steps": 20,
        "s3_flood": 200,
        "s3_unloaded_rounds": 2,
        "s3_loaded_rounds": 2,
        "s4_sessions": [1, 100],
        "s4_reps": 40,
        "s4_memory_sessions": 1000,
        "s5_jobs": 200,
        "s7_seconds": 20,
        "s7_reps": 20,
    },
    "full": {
        "s6_reps": 100,
        "s1_reps": 200,
        "s1_reps_big": 20,
        "s1_warmup": 10,
        "s1_warmup_big": 1,
        "s2_jobs": 300,  # issue 22: 300 Bell jobs submitted at once into one session
        "s3_steps": 50,
        "s3_flood": 500,
        "s3_unloaded_rounds": 3,
        "s3_loaded_rounds": 3,
        "s4_sessions": [1, 100, 1000],
        "s4_reps": 100,
        "s4_memory_sessions": 1000,
        "s5_jobs": 1000,
        "s7_seconds": 120,  # issue 23: a 2-minute flood
        "s7_reps": 60,
    },
}


# ====================================================================== the run
class Flood:
    """The competing producer (benchmarks/flood.py) in its own process."""

    def __init__(self, kind: str, jobs: int, env: dict, queue_key: str, store):
        self.kind, self.jobs, self.queue_key, self.store = kind, jobs, queue_key, store
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.flood", "--kind", kind, "--jobs", str(jobs)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("STARTED"):
                self._started.set()
        self._started.set()

    def wait_started(self, timeout: float = 120) -> None:
        if not self._started.wait(timeout) or self.proc.poll() not in (None, 0):
            raise RuntimeError(f"the {self.kind} flood did not start: {self.lines}")

    def queued(self) -> int:
        return int(self.store.redis.llen(self.queue_key))

    def active(self) -> bool:
        return self.proc.poll() is None and self.queued() > 0

    def finish(self, timeout: float = 900) -> dict:
        self.proc.wait(timeout)
        self._reader.join(5)
        for line in reversed(self.lines):
            if line.startswith("{"):
                return json.loads(line)
        return {"error": self.lines[-5:]}


class Bench:
    def __init__(self, args, cfg: dict, mode: str):
        self.args, self.cfg, self.mode = args, cfg, mode
        self.rng = random.Random(20240611)
        self.state_dir = Path(tempfile.mkdtemp(prefix="sb-bench-"))
        self.sb_workers: list = []
        self.floods: list[Flood] = []
        self._wseq = 0
        self.results: dict = {
            "mode": mode,
            "meta": machine_info(),
            "config": dict(cfg),
            "scenarios": {},
            "timings_s": {},
        }

    # ------------------------------------------------------------------ stack
    def start(self) -> None:
        for name in list(os.environ):
            if name.startswith("SESSION_BROKER_"):
                os.environ.pop(name)  # the product's defaults, whatever this shell has set
        from session_broker.ops.embedded import Stack

        self.stack = Stack(self.state_dir)
        self.url = self.stack.start_redis(name="redis")
        os.environ["SESSION_BROKER_URL"] = self.url
        os.environ["BENCH_PLAIN_URL"] = self.url
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        from session_broker.core.config import get_settings

        get_settings.cache_clear()
        from benchmarks import plain_celery

        self.plain_child = self.stack.spawn("plain-celery", plain_celery.worker_argv())
        from session_broker import QiskitRuntimeService

        self.service = QiskitRuntimeService(self.url)
        self.store = self.service._store
        self.ensure_sb_workers(self.first_workers, warm=False)
        from benchmarks import contenders as C

        self.C = C
        self.direct = C.Direct()
        self.plain = C.PlainCelery()
        self.ibm = C.IBMLocal()
        self.sb_job = C.BrokerJob(self.service)
        self.sb_session = C.BrokerSession(self.service, open_now=False)
        self.plain.sample(C.bell(), 16)  # waits for the plain worker (and warms it)
        self.warm_sb(len(self.sb_workers))
        self.results["meta"]["redis_version"] = self.store.redis.info("server").get("redis_version")
        self.results["meta"]["settings"] = {
            k: getattr(self.store.settings, k)
            for k in ("tick", "heartbeat_interval", "interactive_timeout", "result_ttl", "key_prefix")
        }

    def stop(self) -> None:
        for flood in self.floods:
            if flood.proc.poll() is None:  # a run that failed mid-flood: stop its producer too
                flood.proc.kill()
                flood.proc.wait(10)
        stack = getattr(self, "stack", None)
        if stack is not None:
            stack.stop(grace=15)

    def ensure_sb_workers(self, n: int, warm: bool = True) -> None:
        from session_broker.ops.embedded import wait_for

        n = max(1, n)
        changed = False
        while len(self.sb_workers) > n:
            child = self.sb_workers.pop()
            self.stack.stop_child(child, grace=30)
            self.stack.children.remove(child)
            changed = True
        started = []
        while len(self.sb_workers) < n:
            self._wseq += 1
            node = f"{self.C_BACKEND}-b{self._wseq}@bench"
            child = self.stack.start_worker(self.C_BACKEND, self.url, name=node)
            child.node = node
            self.sb_workers.append(child)
            started.append(child)
        for child in started:
            key = self.store.keys.worker(child.node)
            wait_for(
                lambda: self.store.redis.hget(key, "heartbeat") or not child.alive(),
                180,
                f"worker {child.node}",
            )
            if not child.alive():
                raise RuntimeError(f"worker {child.node} exited; see {child.log}")
        if started or changed:
            wait_for(lambda: len(self.store.live_workers(self.C_BACKEND)) == n, 60, f"{n} live workers")
            if warm and started:
                self.warm_sb(n)

    C_BACKEND = "aer_simulator"

    def warm_sb(self, n: int) -> None:
        circuit = self.C.bell()
        handles = [self.sb_job.submit_sample(circuit, 64) for _ in range(4 * n)]
        for h in handles:
            self.sb_job.gather(h)

    def flood(self, kind: str, jobs: int, env: dict, queue: str) -> Flood:
        flood = Flood(kind, jobs, env, queue, self.store)
        self.floods.append(flood)
        return flood

    def loadavg(self):
        return [round(x, 2) for x in os.getloadavg()]

    # ------------------------------------------------------------------ scenario 1
    def scenario1(self) -> dict:
        C, cfg = self.C, self.cfg
        two = self.args.workers >= 2
        self.ensure_sb_workers(2 if two else 1)
        sbs = self.sb_session
        everyone = [self.direct, self.plain, self.ibm, self.sb_job, sbs]
        groups = [everyone] if two else [[self.direct, self.plain, self.ibm, sbs], [self.direct, self.sb_job]]
        bell_m, bell_e, obs = C.bell(), C.bell(False), C.zz()
        rc = C.random20(self.service.backend(self.C_BACKEND))

        def check_bell(out):
            counts = C.counts_of(out)
            assert set(counts) <= {"00", "11"} and sum(counts.values()) == 1024, counts

        def check_ev(out):
            # session-broker's estimator samples at IBM's default precision (1/64): allow 6 sigma
            assert abs(C.ev_of(out) - 1.0) < 6 / 64, C.ev_of(out)

        def check_any(out):
            assert sum(C.counts_of(out).values()) == 1024

        workloads = [
            (
                "bell_sampler",
                "Bell sampler, 1024 shots",
                cfg["s1_reps"],
                cfg["s1_warmup"],
                lambda c: c.sample(bell_m, 1024),
                check_bell,
            ),
            (
                "bell_estimator",
                "Bell estimator, <ZZ>",
                cfg["s1_reps"],
                cfg["s1_warmup"],
                lambda c: c.estimate(bell_e, obs),
                check_ev,
            ),
            (
                "random20_sampler",
                f"random_circuit(20, 10) transpiled (depth {rc.depth()}), 1024 shots",
                cfg["s1_reps_big"],
                cfg["s1_warmup_big"],
                lambda c: c.sample(rc, 1024),
                check_any,
            ),
        ]
        out = {
            "title": "sequential latency, submit to result",
            "workers": 2 if two else 1,
            "interleaved": two,
            "workloads": {},
        }
        for key, title, reps, warmup, fn, check in workloads:
            log(f"s1 {key}: {reps} rounds x {len(everyone)} contenders")
            samples = {c.name: [] for c in everyone}
            for group in groups:
                if sbs in group and sbs.session is None:
                    sbs.open()
                if sbs not in group and sbs.session is not None:
                    sbs.close()
                for c in group:
                    for _ in range(warmup):
                        check(fn(c))
                for c in group:
                    if isinstance(c, C._Broker):
                        c.trace = []
                for _ in range(reps):
                    order = list(group)
                    self.rng.shuffle(order)
                    for c in order:
                        t0 = time.perf_counter()
                        res = fn(c)
                        samples[c.name].append(time.perf_counter() - t0)
                    check(res)
            base = summarize(samples["direct"])
            w = {
                "title": title,
                "contenders": {name: with_ratios(summarize(v), base) for name, v in samples.items()},
                "phases": {},
            }
            for c in (self.sb_job, sbs):
                ph = C.phases(self.store, c.trace)
                w["phases"][c.name] = {k: summarize(v) for k, v in ph.items()}
                c.trace = None
            out["workloads"][key] = w
        sbs.close()
        return out

    # ------------------------------------------------------------------ scenario 2
    def scenario2(self) -> dict:
        C, n = self.C, self.cfg["s2_jobs"]
        self.ensure_sb_workers(1)
        circuit = C.bell()

        def sequential(c, jobs):
            t0 = time.perf_counter()
            for _ in range(jobs):
                res = c.sample(circuit, 1024)
            assert sum(C.counts_of(res).values()) == 1024
            return time.perf_counter() - t0

        def pipelined(c):
            t0 = time.perf_counter()
            handles = [c.submit_sample(circuit, 1024) for _ in range(n)]
            submitted = time.perf_counter() - t0
            results = [c.gather(h) for h in handles]
            total = time.perf_counter() - t0
            assert all(sum(C.counts_of(r).values()) == 1024 for r in results)
            return total, submitted

        contenders = {}
        d1 = sequential(self.direct, n // 2)
        for c in (self.plain, self.ibm):
            log(f"s2 {c.name}: {n} jobs pipelined")
            sequential(c, 3)
            total, sub = pipelined(c)
            contenders[c.name] = {"mode": "pipelined", "jobs": n, "seconds": total, "submit_s": sub}
        log(f"s2 sb_session: {n} jobs pipelined into one session")
        self.sb_session.open()
        sequential(self.sb_session, 3)  # the first job pins the worker
        total, sub = pipelined(self.sb_session)
        self.sb_session.close()
        contenders["sb_session"] = {
            "mode": "pipelined, one session",
            "jobs": n,
            "seconds": total,
            "submit_s": sub,
        }
        log(f"s2 sb_job: {n} jobs pipelined")
        sequential(self.sb_job, 3)
        total, sub = pipelined(self.sb_job)
        contenders["sb_job"] = {"mode": "pipelined, no session", "jobs": n, "seconds": total, "submit_s": sub}
        d2 = sequential(self.direct, n - n // 2)
        direct = {"mode": "sequential", "jobs": n, "seconds": d1 + d2, "halves_s": [d1, d2]}
        out = {"title": "pipelined throughput", "jobs": n, "workers": 1, "contenders": {"direct": direct}}
        out["contenders"].update(contenders)
        base = rate(n, direct["seconds"])
        for c in out["contenders"].values():
            c["jobs_per_s"] = rate(c["jobs"], c["seconds"])
            c["ratio_to_direct"] = ratio(c["jobs_per_s"], base)
        return out

    # ------------------------------------------------------------------ scenario 3
    def scenario3(self) -> dict:
        C, cfg = self.C, self.cfg
        workers = min(2, self.args.workers)
        self.ensure_sb_workers(workers)
        steps, flood_jobs = cfg["s3_steps"], cfg["s3_flood"]
        qc, H = C.ansatz()

        def loop(c) -> dict:
            with c.loop_context():
                t0 = time.perf_counter()
                theta, step = 0.1, 0.8
                best = C.ev_of(c.estimate(qc, H, [theta]))
                first = time.perf_counter() - t0
                for _ in range(steps - 1):
                    cand = theta + step
                    e = C.ev_of(c.estimate(qc, H, [cand]))
                    if e < best:
                        theta, best, step = cand, e, step * 1.2
                    else:
                        step *= -0.5
                total = time.perf_counter() - t0
            return {"s": total, "first_step_s": first, "steady_s": total - first, "energy": best}

        everyone = [self.direct, self.plain, self.ibm, self.sb_job, self.sb_session]
        for c in everyone:  # warm (and check) each path once
            r = loop(c)
            assert r["energy"] < 0.5, r
        unloaded = {c.name: [] for c in everyone}
        log(f"s3 unloaded: {cfg['s3_unloaded_rounds']} rounds x {len(everyone)} loops of {steps} steps")
        for _ in range(cfg["s3_unloaded_rounds"]):
            order = list(everyone)
            self.rng.shuffle(order)
            for c in order:
                unloaded[c.name].append(loop(c))
        env = {"SESSION_BROKER_URL": self.url, "BENCH_PLAIN_URL": self.url}
        sb_queue = self.store.keys.backend_queue(self.C_BACKEND)
        loaded = {c.name: [] for c in everyone}
        floods = {}

        log(f"s3 flood A ({flood_jobs} sb jobs): session, direct, IBM loops while it lasts")
        flood = self.flood("sb", flood_jobs, env, sb_queue)
        flood.wait_started()
        for _ in range(cfg["s3_loaded_rounds"]):
            for c in (self.sb_session, self.direct, self.ibm):
                if not flood.active():
                    break
                r = loop(c)
                r["flood_active_at_end"] = flood.active()
                r["flood_queued_at_end"] = flood.queued()
                loaded[c.name].append(r)
        floods["A"] = flood.finish()
        log(f"s3 flood B ({flood_jobs} sb jobs): loop without a session")
        flood = self.flood("sb", flood_jobs, env, sb_queue)
        flood.wait_started()
        r = loop(self.sb_job)
        r["flood_active_at_end"] = flood.active()
        loaded["sb_job"].append(r)
        floods["B"] = flood.finish()
        log(f"s3 flood C ({flood_jobs} plain-Celery tasks): hand-written loop")
        from benchmarks import plain_celery

        flood = self.flood("plain", flood_jobs, env, plain_celery.QUEUE)
        flood.wait_started()
        r = loop(self.plain)
        r["flood_active_at_end"] = flood.active()
        loaded["plain_celery"].append(r)
        floods["C"] = flood.finish()

        def med(rs, key="s"):
            return percentile([r[key] for r in rs], 50) if rs else None

        direct_unloaded = med(unloaded["direct"])
        loads = {
            "direct": "flood A (CPU only)",
            "ibm_local": "flood A (CPU only)",
            "sb_session": "flood A (same backend)",
            "sb_job": "flood B (same backend)",
            "plain_celery": "flood C (same queue)",
        }
        out = {
            "title": "iterative loop under a flood",
            "steps": steps,
            "flood_jobs": flood_jobs,
            "workers": workers,
            "floods": floods,
            "contenders": {},
        }
        for c in everyone:
            runs = loaded[c.name]
            covered = [r for r in runs if r.get("flood_active_at_end")] or runs
            if c.name in ("sb_job", "plain_celery"):
                covered = runs  # they wait behind the flood, so it has drained by their end
            u, l_ = med(unloaded[c.name]), med(covered)
            us, ls = med(unloaded[c.name], "steady_s"), med(covered, "steady_s")
            out["contenders"][c.name] = {
                "unloaded_median_s": u,
                "unloaded_n": len(unloaded[c.name]),
                "loaded_median_s": l_,
                "loaded_n": len(covered),
                "loaded_over_unloaded": ratio(l_, u),
                "unloaded_over_direct": ratio(u, direct_unloaded),
                "steady_unloaded_median_s": us,
                "steady_loaded_median_s": ls,
                "steady_loaded_over_unloaded": ratio(ls, us),
                "loaded_over_direct_unloaded": ratio(l_, direct_unloaded),
                "first_step_unloaded_ms": (med(unloaded[c.name], "first_step_s") or 0) * 1000,
                "first_step_loaded_ms": (med(covered, "first_step_s") or 0) * 1000 if covered else None,
                "load": loads[c.name],
                "unloaded_runs": unloaded[c.name],
                "loaded_runs": runs,
            }
        control = out["contenders"]["direct"]["loaded_over_unloaded"]
        for c in out["contenders"].values():
            c["loaded_over_unloaded_vs_direct"] = ratio(c["loaded_over_unloaded"], control)
        return out

    # ------------------------------------------------------------------ scenario 4
    def used_memory(self, settle: float = 1.0) -> int:
        """INFO used_memory once Redis has settled (client buffers are shrunk by its cron)."""
        time.sleep(settle)
        vals = []
        for _ in range(5):
            vals.append(int(self.store.redis.info("memory")["used_memory"]))
            time.sleep(0.1)
        return int(percentile(vals, 50))

    def open_idle(self, k: int) -> list:
        from session_broker import Session

        backend = self.service.backend(self.C_BACKEND)
        return [Session(backend=backend) for _ in range(k)]

    def session_footprint(self, sids: list[str]) -> dict:
        """MEMORY USAGE of each session's own keys (exact), plus its index entries."""
        r, keys = self.store.redis, self.store.keys
        per_key: dict[str, list[int]] = {}
        for sid in sids:
            for key in r.keys(f"{keys.prefix}:s:{sid}*"):
                kind = key[len(keys.session(sid)) :] or "hash"
                per_key.setdefault(kind, []).append(r.memory_usage(key, samples=0) or 0)
        return {k: percentile(v, 50) for k, v in per_key.items()}

    def scenario4(self) -> dict:
        C, cfg = self.C, self.cfg
        self.ensure_sb_workers(1)
        circuit = C.bell()
        sizes = cfg["s4_sessions"]
        per_block = max(cfg["s4_reps"] // 2, 5)
        blocks = {k: {"sb": [], "direct": [], "open_s": []} for k in sizes}
        # A-B-C-A-B-C: each size measured twice, so drift on a shared machine hits all alike
        for k in sizes * 2:
            log(f"s4 latency with {k} open sessions ({per_block} jobs)")
            t0 = time.perf_counter()
            idle = self.open_idle(k - 1)
            blocks[k]["open_s"].append(time.perf_counter() - t0)
            sbs = self.sb_session
            sbs.open()
            for _ in range(3):
                sbs.sample(circuit, 1024)
            for _ in range(per_block):
                for c, acc in self.rng.sample(
                    [(sbs, blocks[k]["sb"]), (self.direct, blocks[k]["direct"])], 2
                ):
                    t = time.perf_counter()
                    c.sample(circuit, 1024)
                    acc.append(time.perf_counter() - t)
            sbs.close()
            for s_ in idle:
                s_.close()
        out = {"title": "many open sessions", "latency": [], "memory": []}
        one = None
        for k in sizes:
            b = blocks[k]
            row = {
                "open_sessions": k,
                **summarize(b["sb"]),
                "direct": summarize(b["direct"]),
                "open_s": percentile(b["open_s"], 50),
            }
            row["ratio_to_direct"] = ratio(row["median_ms"], row["direct"]["median_ms"])
            one = one or row
            row["ratio_to_one_session"] = ratio(row["median_ms"], one["median_ms"])
            row["ratio_to_one_session_direct_normalized"] = ratio(
                row["ratio_to_direct"], one["ratio_to_direct"]
            )
            out["latency"].append(row)
        k = cfg["s4_memory_sessions"]
        log(f"s4 memory: {k} idle sessions")
        r = self.store.redis
        m0, keys0 = self.used_memory(), r.dbsize()
        z0 = {
            z: r.memory_usage(z, samples=0) or 0
            for z in (self.store.keys.sessions, self.store.keys.deadlines)
        }
        sessions = self.open_idle(k)
        m1, keys1 = self.used_memory(), r.dbsize()
        z1 = {z: r.memory_usage(z, samples=0) or 0 for z in z0}
        sids = [s_.session_id for s_ in sessions]
        open_keys = self.session_footprint(sids[:20])
        for s_ in sessions:
            s_.close()
        m2, keys2 = self.used_memory(), r.dbsize()
        z2 = {z: r.memory_usage(z, samples=0) or 0 for z in z0}
        closed_keys = self.session_footprint(sids[:20])
        out["memory"].append(
            {
                "sessions": k,
                "baseline_bytes": m0,
                "open_bytes": m1,
                "closed_bytes": m2,
                "bytes_per_idle_session": (m1 - m0) / k,
                "bytes_left_per_closed_session": (m2 - m0) / k,
                "keys_per_idle_session": round((keys1 - keys0) / k, 2),
                "keys_left_per_closed_session": round((keys2 - keys0) / k, 2),
                "memory_usage_per_key_open": open_keys,
                "memory_usage_per_key_closed": closed_keys,
                "index_zsets_bytes_per_session_open": {z: (z1[z] - z0[z]) / k for z in z0},
                "index_zsets_bytes_per_session_closed": {z: (z2[z] - z0[z]) / k for z in z0},
                "ttl_of_closed_session_hash_s": r.ttl(self.store.keys.session(sids[0])),
                "note": "used_memory deltas (1 s settle, median of 5 reads); MEMORY USAGE per key "
                "(median of 20 sessions) says which keys they are",
            }
        )
        return out

    # ------------------------------------------------------------------ scenario 5
    def scenario5(self) -> dict:
        C, n = self.C, self.cfg["s5_jobs"]
        circuit = C.bell()
        self.ensure_sb_workers(1)
        log(f"s5 direct: {n // 2} sequential jobs")
        t0 = time.perf_counter()
        for _ in range(n // 2):
            self.direct.sample(circuit, 1024)
        direct_rate = rate(n // 2, time.perf_counter() - t0)
        rows = []
        for k in range(1, self.args.workers + 1):
            self.ensure_sb_workers(k)
            log(f"s5 {k} worker(s): {n} non-session jobs pipelined")
            t0 = time.perf_counter()
            handles = [self.sb_job.submit_sample(circuit, 1024) for _ in range(n)]
            for h in handles:
                self.sb_job.gather(h)
            seconds = time.perf_counter() - t0
            pipe = self.store.redis.pipeline(transaction=False)
            for h in handles:
                pipe.hget(self.store.keys.job(h.job_id()), "worker")
            per = {}
            for w in pipe.execute():
                per[w] = per.get(w, 0) + 1
            rows.append(
                {
                    "workers": k,
                    "jobs": n,
                    "seconds": seconds,
                    "jobs_per_s": rate(n, seconds),
                    "jobs_per_worker": sorted(per.values(), reverse=True),
                }
            )
        for r in rows:
            r["ratio_to_direct"] = ratio(r["jobs_per_s"], direct_rate)
            r["ratio_to_one_worker"] = ratio(r["jobs_per_s"], rows[0]["jobs_per_s"])
        return {"title": "workers", "direct_jobs_per_s": direct_rate, "rows": rows}

    # ------------------------------------------------------------------ driver
    WORKERS_FOR = {1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1, 7: 2}

    def run(self, scenarios: list[int]) -> dict:
        # order by worker count (fewest restarts); results are keyed by number anyway
        order = sorted(scenarios, key=lambda s: {2: 0, 4: 1, 5: 2, 6: 3, 1: 4, 3: 5, 7: 6}[s])
        self.first_workers = min(self.WORKERS_FOR[order[0]], self.args.workers)
        t_all = time.perf_counter()
        log(f"starting the stack (state and logs in {self.state_dir})")
        self.start()
        self.results["timings_s"]["startup"] = time.perf_counter() - t_all
        for s in order:
            t0 = time.perf_counter()
            load0 = self.loadavg()
            log(f"scenario {s}")
            res = getattr(self, f"scenario{s}")()
            res["loadavg"] = [load0, self.loadavg()]
            self.results["scenarios"][str(s)] = res
            self.results["timings_s"][f"scenario{s}"] = time.perf_counter() - t0
        self.results["scenarios"] = dict(sorted(self.results["scenarios"].items()))
        self.results["timings_s"]["total"] = time.perf_counter() - t_all
        self.results["meta"]["loadavg_end"] = self.loadavg()
        self.results["targets"] = compute_targets(self.results)
        return self.results

    # ------------------------------------------------------------------ scenario 6
    def scenario6(self) -> dict:
        """The stock client (its own process, REST) and the Python API, same worker, same run:
        Python block, REST block, Python block; the ratio uses both Python blocks' median."""
        from session_broker.ops.embedded import free_port, wait_for

        C, reps = self.C, self.cfg["s6_reps"]
        self.ensure_sb_workers(1)
        port, key = free_port(), "bench-key-0123456789"
        crn = "crn:v1:bluemix:public:quantum-computing:us-east:a/bench:bench::"
        api = self.stack.spawn(
            "api",
            [sys.executable, "-m", "session_broker.ops.cli", "api", "--port", str(port)],
            {
                "SESSION_BROKER_URL": self.url,
                "SESSION_BROKER_API_KEYS": key,
                "SESSION_BROKER_API_INSTANCE": crn,
            },
        )
        import urllib.request

        def up():
            if not api.alive():
                raise RuntimeError(f"session-broker api exited; see {api.log}")
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, 60, "the REST API")
        bell = C.bell()
        sbs = self.sb_session
        python, direct = [], []
        try:

            def python_block():
                # a session of its own, closed before the REST block: with one worker, an open
                # session would hold it and the REST session's jobs would wait for its timeout
                sbs.open()
                for _ in range(3):
                    sbs.sample(bell, 1024)
                for _ in range(reps // 2):
                    t0 = time.perf_counter()
                    sbs.sample(bell, 1024)
                    python.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    self.direct.sample(bell, 1024)
                    direct.append(time.perf_counter() - t0)
                sbs.close()

            python_block()
            log(f"s6: stock client, {reps} jobs in a session")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSION_BROKER", "PYTHONPATH"))}
            proc = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "benchmarks" / "rest_client.py"),
                    f"http://127.0.0.1:{port}",
                    key,
                    crn,
                    self.C_BACKEND,
                    str(reps),
                    "3",
                ],
                env=env,
                cwd="/",
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the REST client failed: {proc.stderr[-3000:]}")
            rest = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            python_block()
        finally:
            if sbs.session is not None:
                sbs.close()
            self.stack.stop_child(api)
            self.stack.children.remove(api)
        base = summarize(direct)
        contenders = {
            "direct": with_ratios(base, base),
            "sb_session": with_ratios(summarize(python), base),
            "ibm_client_rest": with_ratios(summarize(rest), base),
        }
        return {
            "title": "stock client via REST vs Python API",
            "reps": reps,
            "contenders": contenders,
            "ratio_rest_to_python": ratio(
                contenders["ibm_client_rest"]["median_ms"], contenders["sb_session"]["median_ms"]
            ),
        }

    # ------------------------------------------------------------------ scenario 7
    S7_SHARES = {"bench-a": 1, "bench-b": 1, "bench-c": 2}
    S7_BACKLOG = 8  # jobs each instance keeps waiting during the flood

    def scenario7(self) -> dict:
        """Fair share: three instances keep work waiting on two workers for s7_seconds; each
        one's usage over the window against its share. Then the plain-job latency with
        instances configured against without (blocks alternated, same worker)."""
        from session_broker import QiskitRuntimeService, SamplerV2
        from session_broker.core.instances import InstanceSettings

        C, cfg = self.C, self.cfg
        self.ensure_sb_workers(2)
        bell, work = C.bell(), C.ghz(12)

        def set_instances(on: bool) -> None:
            for name, share in self.S7_SHARES.items():
                if on:
                    self.store.set_instance(name, InstanceSettings(share=share))
                else:
                    self.store.remove_instance(name)

        # latency: one plain Bell job at a time, blocks without / with instances, alternated
        plain = SamplerV2(mode=self.service.backend(self.C_BACKEND))
        without, with_, direct = [], [], []
        for block in range(4):
            on = block % 2 == 1
            set_instances(on)
            sampler = (
                SamplerV2(mode=QiskitRuntimeService(self.url, instance="bench-a").backend(self.C_BACKEND))
                if on
                else plain
            )
            for _ in range(cfg["s7_reps"] // 4):
                t0 = time.perf_counter()
                sampler.run([bell], shots=1024).result()
                (with_ if on else without).append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                self.direct.sample(bell, 1024)
                direct.append(time.perf_counter() - t0)
        # the flood: each instance keeps S7_BACKLOG jobs waiting; usage counted over the window
        set_instances(True)
        samplers = {
            name: SamplerV2(mode=QiskitRuntimeService(self.url, instance=name).backend(self.C_BACKEND))
            for name in self.S7_SHARES
        }
        outstanding: dict[str, list] = {name: [] for name in self.S7_SHARES}
        before = {r["name"]: float(r["total"]) for r in self.store.instance_report()}
        t_end = time.monotonic() + cfg["s7_seconds"]
        log(f"s7: three instances flood two workers for {cfg['s7_seconds']} s")
        while time.monotonic() < t_end:
            for name, sampler in samplers.items():
                outstanding[name] = [j for j in outstanding[name] if not j.in_final_state()]
                while len(outstanding[name]) < self.S7_BACKLOG:
                    outstanding[name].append(sampler.run([work], shots=4096))
            time.sleep(0.05)
        after = {r["name"]: float(r["total"]) for r in self.store.instance_report()}
        for jobs in outstanding.values():
            for job in jobs:
                job.result(timeout=600)
        set_instances(False)
        used = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in self.S7_SHARES}
        total_used, total_share = sum(used.values()) or 1.0, sum(self.S7_SHARES.values())
        rows = [
            {
                "instance": name,
                "share": share,
                "configured_pct": 100.0 * share / total_share,
                "achieved_pct": 100.0 * used[name] / total_used,
                "usage_s": used[name],
            }
            for name, share in self.S7_SHARES.items()
        ]
        for r in rows:
            r["points_off"] = r["achieved_pct"] - r["configured_pct"]
        base = summarize(direct)
        return {
            "title": "fair share between instances",
            "seconds": cfg["s7_seconds"],
            "rows": rows,
            "max_points_off": max(abs(r["points_off"]) for r in rows),
            "latency": {
                "direct": with_ratios(base, base),
                "without_instances": with_ratios(summarize(without), base),
                "with_instances": with_ratios(summarize(with_), base),
            },
            "latency_ratio_with_to_without": ratio(
                summarize(with_)["median_ms"], summarize(without)["median_ms"]
            ),
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer repetitions: under 2 minutes")
    p.add_argument("--workers", type=int, default=2, help="most session-broker workers to use (default 2)")
    p.add_argument("--scenarios", type=parse_scenarios, default=None, help="e.g. 1,3 (default: all)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/bench-<time>-<mode>.json)")
    p.add_argument("--show", type=Path, metavar="JSON", help="print the tables of a results file and exit")
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile the session-broker Bell-sampler path instead (benchmarks/profile.py)",
    )
    p.add_argument(
        "--mitigation",
        action="store_true",
        help="error mitigation levels 0-2 on noisy devices instead (benchmarks/mitigation.py)",
    )
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.show:
        results = json.loads(args.show.read_text())
        results["targets"] = compute_targets(results)
        print(render(results))
        return 0
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full"
    if args.profile:
        from benchmarks import profile

        return profile.main(quick=args.quick, out=args.out)
    if args.mitigation:
        from benchmarks import mitigation

        return mitigation.main(quick=args.quick, out=args.out)
    scenarios = args.scenarios or list(ALL_SCENARIOS)
    bench = Bench(args, MODES[mode], mode)
    bench.results["scenarios_requested"] = scenarios
    try:
        results = bench.run(scenarios)
    finally:
        bench.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = args.out or RESULTS / f"bench-{stamp}-{mode}.json"
    complete = sorted(scenarios) == list(ALL_SCENARIOS)
    latest = RESULTS / f"latest-{mode}.json" if complete else None
    print(render(results))
    for path in write_results(results, out, latest):
        print(f"wrote {path}")
    print(f"total {results['timings_s']['total']:.0f} s; logs in {bench.state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
