"""The competing producer of scenario 3: a separate process that floods a backend.

    python -m benchmarks.flood --kind sb|plain --jobs 500 [--started-after 20]

``sb`` submits non-session Bell-sampler jobs to session-broker's ``aer_simulator`` backend
(``SESSION_BROKER_URL``); ``plain`` submits the same work to the plain-Celery contender's
queue (``BENCH_PLAIN_URL``). It submits as fast as it can, prints ``STARTED`` once the first
``--started-after`` jobs are in, ``SUBMITTED <s>`` when all are, then waits for every result
and prints one JSON line: ``{"jobs", "submit_s", "drain_s", "errors"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=["sb", "plain"], required=True)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--started-after", type=int, default=20)
    p.add_argument("--shots", type=int, default=1024)
    args = p.parse_args(argv)

    from benchmarks.contenders import BACKEND, bell

    circuit = bell()
    if args.kind == "sb":
        from session_broker import SamplerV2

        sampler = SamplerV2(mode=BACKEND)

        def submit():
            return sampler.run([circuit], shots=args.shots)

        def wait(handle):
            return handle.result(timeout=600)
    else:
        from benchmarks import plain_celery

        def submit():
            return plain_celery.submit_sample(circuit, args.shots)

        def wait(handle):
            return handle.get(timeout=600)

    t0 = time.perf_counter()
    handles = []
    for i in range(args.jobs):
        handles.append(submit())
        if i + 1 == min(args.started_after, args.jobs):
            print("STARTED", flush=True)
    submitted = time.perf_counter() - t0
    print(f"SUBMITTED {submitted:.3f}", flush=True)
    errors = 0
    for h in handles:
        try:
            wait(h)
        except Exception:  # noqa: BLE001 - counted and reported, the flood goes on
            errors += 1
    print(
        json.dumps(
            {"jobs": args.jobs, "submit_s": submitted, "drain_s": time.perf_counter() - t0, "errors": errors}
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
