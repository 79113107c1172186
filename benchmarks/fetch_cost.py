"""What the reliable fetch costs per job (issue 14), measured against a real redis-server.

    .venv/bin/python benchmarks/fetch_cost.py [--jobs 5000] [--rounds 5]

A worker's consumer does, per job, what kombu's Redis transport does, in one of two ways:

- ``brpop`` (kombu): BRPOP the queue, then one MULTI recording the message in the
  ``unacked`` hash and index. Between the two the message exists only in the process.
- ``blmove`` (ours, ``session_broker/core/transport.py``): BLMOVE the queue onto the worker's
  fetch list, then the same MULTI plus an LREM taking it off that list.

Both then acknowledge (the MULTI that deletes the unacked entry). Producer pushes are done
in one pipeline before each round, outside the timing. Rounds alternate between the two
ways so that drift of a shared machine falls on both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from session_broker.core.messages import task_message  # noqa: E402
from session_broker.ops.embedded import Stack  # noqa: E402


def consume(r: redis.Redis, way: str, queue: str, fetch: str, jobs: int) -> float:
    """Seconds to fetch, record and acknowledge ``jobs`` messages one at a time."""
    t0 = time.perf_counter()
    for _ in range(jobs):
        if way == "brpop":
            _, raw = r.brpop([queue], timeout=1)
        else:
            raw = r.blmove(queue, fetch, 1, "RIGHT", "LEFT")
        tag = raw[-60:]  # any unique string will do as the delivery tag here
        pipe = r.pipeline()
        pipe.zadd("unacked_index", {tag: time.time()}).hset("unacked", tag, raw)
        if way == "blmove":
            pipe.lrem(fetch, 1, raw)
        pipe.execute()
        r.pipeline().zrem("unacked_index", tag).hdel("unacked", tag).execute()  # the ack
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with Stack(Path(tempfile.mkdtemp(prefix="sb-fetch-cost-"))) as stack:
        r = redis.Redis.from_url(stack.start_redis(name="redis-fetch-cost"))
        queue, fetch = "sb.backend.bench", "sb:w:bench@host:fetch"
        times: dict[str, list[float]] = {"brpop": [], "blmove": []}
        for i in range(2 * args.rounds):
            way = ("brpop", "blmove")[i % 2]
            pipe = r.pipeline(transaction=False)
            for j in range(args.jobs):
                pipe.lpush(queue, task_message("sampler", f"job{i}-{j}", queue, {}, argsrepr="bench"))
            pipe.execute()
            times[way].append(consume(r, way, queue, fetch, args.jobs))
        assert r.llen(queue) == 0 and r.llen(fetch) == 0 and r.hlen("unacked") == 0
    per_job = {way: statistics.median(t) / args.jobs * 1e6 for way, t in times.items()}
    out = {
        "jobs_per_round": args.jobs,
        "rounds": args.rounds,
        "us_per_job": {k: round(v, 1) for k, v in per_job.items()},
        "extra_us_per_job": round(per_job["blmove"] - per_job["brpop"], 1),
        "extra_ratio": round(per_job["blmove"] / per_job["brpop"], 3),
    }
    print(
        f"fetch + record + ack, per job (median of {args.rounds} rounds of {args.jobs}): "
        f"kombu BRPOP {per_job['brpop']:.1f} us, reliable BLMOVE {per_job['blmove']:.1f} us "
        f"(+{out['extra_us_per_job']} us, x{out['extra_ratio']})"
    )
    return out


if __name__ == "__main__":
    main()
