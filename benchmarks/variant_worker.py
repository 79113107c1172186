"""The worker as it was before issue 13, with one setting changed, for the profile's experiments.

    SESSION_BROKER_URL=... python benchmarks/variant_worker.py --backend aer_simulator \
        --name NODE [--pool prefork|solo|threads] [--no-events] [--polling-interval 0.1] \
        [--prefetch-multiplier 2] [--loglevel WARNING] [--trace-dir DIR]

One process: Celery's consumer with the agent in it (``ConsumerLink``), the way
``session-broker worker`` ran until the supervisor took the agent (``tasks/supervisor.py``):
prefork pool, task events on, Aer's OpenMP threads spinning unless ``OMP_WAIT_POLICY`` says
otherwise. The profile runs it beside the shipped worker to show what each change bought.
Never used by the product; only by ``benchmarks/profile.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.add_argument("--no-events", action="store_true")
    p.add_argument("--polling-interval", type=float)
    p.add_argument("--prefetch-multiplier", type=int, default=1)
    p.add_argument("--loglevel", default="WARNING")
    p.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=passive, as shipped")
    p.add_argument(
        "--trace-dir",
        help="write per-job timestamps (fetch, received, dispatch, prerun, postrun) to DIR/<pid>.trace",
    )
    args = p.parse_args(argv)
    if args.trace_dir:
        install_tracing(Path(args.trace_dir))
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "passive"  # before Aer loads libgomp
    else:
        os.environ.pop("OMP_WAIT_POLICY", None)

    os.environ["SESSION_BROKER_WORKER_BACKEND"] = args.backend
    os.environ["SESSION_BROKER_WORKER_CONCURRENCY"] = "1"
    os.environ["SESSION_BROKER_WORKER_DEVICE"] = "CPU"
    from session_broker.celery_app import app
    from session_broker.core.store import Store

    if args.no_events:
        app.conf.worker_send_task_events = False
        app.conf.task_track_started = False
    if args.polling_interval:
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "polling_interval": args.polling_interval,
        }
    store = Store()
    store.ping()
    link = ConsumerLink()
    from celery import signals

    from tasks.agent import Agent

    signals.worker_ready.connect(lambda sender=None, **_: setattr(link, "consumer", sender), weak=False)
    Agent(link, args.name, args.backend, 1, "CPU").start()
    if args.pool != "prefork":
        from tasks.simulate import warm_up

        warm_up(args.backend)  # worker_process_init only fires for prefork children
    argv = [
        "worker",
        f"--pool={args.pool}",
        "--concurrency=1",
        f"--hostname={args.name}",
        f"--queues={store.keys.backend_queue(args.backend)}",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={args.loglevel}",
        f"--prefetch-multiplier={args.prefetch_multiplier}",
    ]
    if not args.no_events:
        argv.append("--task-events")
        app.conf.worker_send_task_events = True
        app.conf.task_track_started = True
    app.worker_main(argv)


class ConsumerLink:
    """The agent's view of a Celery consumer in its own process (``supervisor.Slot``'s part)."""

    consumer = None
    _asked = ""

    @property
    def ready(self) -> bool:
        return self.consumer is not None

    def held_job_ids(self) -> list[str]:
        from celery.worker import state

        requests = list(state.reserved_requests) + list(state.active_requests)
        return sorted({r._job_id() for r in requests if getattr(r, "_job_id", None) and r._job_id()})

    def executor_id(self) -> str:
        """No executor process to name: this worker's consumer is its own main process."""
        return ""

    def replace(self, executor: str, why: str) -> bool:
        """Nothing to replace (the liveness check's stalled mark names no executor here)."""
        return False

    def follow(self, queue: str) -> bool:
        from tasks.executor import switch_queues

        task_consumer = getattr(self.consumer, "task_consumer", None)
        current = None if task_consumer is None else {q.name for q in task_consumer.queues}
        if self.consumer is None or current == {queue} or (current is None and self._asked == queue):
            return False
        self._asked = queue
        self.consumer.call_soon(switch_queues, self.consumer, queue)
        return True


def install_tracing(directory: Path) -> None:
    """Timestamp each job where Celery handles it, one line per event, per process.

    fetch: kombu's BRPOP read returned the message (main process); received: Celery built
    the Request (main); dispatch: the Request is handed to the pool (main, after the
    task-received event); prerun / postrun: the task starts / ends in the pool child. On the
    lean job path all four are the moment its fetch returned.
    """
    import time

    from celery import signals
    from celery.concurrency.base import BasePool
    from kombu.transport import redis as kredis

    directory.mkdir(parents=True, exist_ok=True)
    files: dict[int, object] = {}
    last_fetch = [0.0]

    def write(*fields):
        pid = os.getpid()
        f = files.get(pid)
        if f is None:
            f = files[pid] = open(directory / f"{pid}.trace", "a", buffering=1)
        f.write(" ".join(str(x) for x in fields) + "\n")

    def _deliver_wrap(orig):
        def deliver(self, message, queue):
            last_fetch[0] = time.time()
            return orig(self, message, queue)

        return deliver

    kredis.Transport._deliver = _deliver_wrap(kredis.Transport._deliver)

    @signals.task_received.connect(weak=False)
    def _received(request=None, **_):
        write(request.id, "fetch", f"{last_fetch[0]:.6f}")
        write(request.id, "received", f"{time.time():.6f}")

    # Celery builds its Request class per task with the pool's apply_async bound in, so the
    # hand-over to the pool is timed in BasePool.apply_async (args[1] is the task id).
    apply_async = BasePool.apply_async

    def _apply_async(self, target, args=None, kwargs=None, **options):
        if args and len(args) > 1:
            write(args[1], "dispatch", f"{time.time():.6f}")
        return apply_async(self, target, args, kwargs, **options)

    BasePool.apply_async = _apply_async

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, **_):
        write(task_id, "prerun", f"{time.time():.6f}")

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id=None, **_):
        write(task_id, "postrun", f"{time.time():.6f}")

    # The lean job path (issue 22) has no request, no pool hand-over and no tracer: its fetch
    # is the moment its BLMOVE returned (handle() starts), and the three Celery steps after it
    # take no time. Connected before the executor's own worker_ready receiver, which starts
    # the lean consumer; imported only then, as the executor imports Qiskit only then.
    @signals.worker_ready.connect(weak=False)
    def _lean(**_):
        from session_broker.core.spawn import worker_module

        consumer = worker_module("consumer").JobConsumer
        handle = consumer.handle

        def traced(self, raw):
            now = f"{time.time():.6f}"
            message = worker_module("consumer").read(raw, None)
            if not isinstance(message, str):
                for step in ("fetch", "received", "dispatch", "prerun"):
                    write(message.job_id, step, now)
            return handle(self, raw)

        consumer.handle = traced


if __name__ == "__main__":
    main()
