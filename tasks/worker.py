"""Worker boot, and the agent thread that keeps a worker in step with Redis.

A worker serves one backend. Beside Celery's consumer, in the main process, runs the
``Agent``; every ``tick`` (default 0.1 s) it makes one round trip (``Store.worker_tick``):

- heartbeat: refresh the worker's registry key, which expires ``heartbeat_ttl`` after the
  last beat, so a dead worker disappears within seconds;
- pin: if the worker is free and a session of its backend waits, take it (first come,
  first served); if pinned, apply the session's timers and drop the pin when the session
  deactivates or closes;
- then it makes the consumer follow the pin: the session's queue while pinned, the
  backend's shared queue otherwise.

The pin lives in Redis, not in the consumer: a worker that restarts finds its pin again,
and nothing depends on a remote-control broadcast arriving. Consumer changes are only
where messages are fetched from; what may *run* is decided by the claim script, so a
message fetched in the instant around a pin change is put back, never run out of turn.

Twice a heartbeat the agent also reaps dead workers (requeue their running jobs, give back
the messages their consumer had fetched, give their session to the next worker), applies due
session timers for every session, and gives back jobs whose fetched message a vanished
consumer left in kombu's ``unacked`` hash (reading the whole hash over successive sweeps).

Once a heartbeat TTL it squares its own registry with what its process really holds: after
Redis restarted from an AOF a moment older than the present (``appendfsync everysec``), the
run set may list jobs this worker finished long ago. Left alone, such a job stays RUNNING
forever, its session ``pending_closed``, and the worker can never be pinned again.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis
from celery import signals
from celery.worker import state as worker_state

from session_broker.state import Store, is_out_of_memory

log = logging.getLogger("session_broker.worker")
logging.getLogger("qiskit").setLevel(logging.WARNING)  # the transpiler logs every pass at INFO


class Agent(threading.Thread):
    def __init__(self, consumer, node: str, backend: str, concurrency: int, device: str):
        # consumer: None until Celery's consumer is ready (worker_ready); the agent beats
        # from before the consumer's first fetch, so a worker that dies while starting is
        # registered, and the reaper gives back what its consumer had fetched
        super().__init__(name="session-broker-agent", daemon=True)
        self.consumer = consumer
        self.node = node
        self.backend = backend
        self.concurrency = concurrency
        self.device = device
        self.store = Store()
        self.settings = self.store.settings
        self.shared_queue = self.store.keys.backend_queue(backend)
        self.stopping = threading.Event()
        self.started_at = time.time()
        self.pin = ""
        self.connected_since: float | None = None
        self.redis_run_id: str | None = None
        self._wanted: str | None = None
        self._suspects: dict[str, str] = {}
        self._fetch_seen: list[str] = []
        self._next_reconcile = 0.0
        self._oom_warned = False

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        booted = False
        next_sweep = 0.0
        while not self.stopping.is_set():
            try:
                if not booted:
                    self.store.publish_config()
                    # jobs a previous life of this node left RUNNING go back to their queues
                    self.store.reap_worker(self.node, keep_pin=True)
                    # the Redis this worker starts against: only a change of it (a restart)
                    # restarts the reaper's grace period, not the first sweep
                    self.redis_run_id = self.store.redis.info("server").get("run_id")
                    booted = True
                began = time.monotonic()
                try:
                    self.pin, _epoch = self.store.worker_tick(
                        self.node, self.backend, os.getpid(), self.started_at,
                        self.concurrency, self.device, consuming=self.consumer is not None)
                    self._oom_warned = False
                except redis.ResponseError as exc:
                    if not is_out_of_memory(exc):
                        raise
                    # Redis refuses writes (maxmemory, noeviction): keep our registry entry
                    # alive so nobody reaps a live worker, and run nothing new meanwhile
                    self.store.keep_alive(self.node)
                    if not self._oom_warned:
                        log.error("Redis is out of memory (%s): heartbeat kept alive with PEXPIRE "
                                  "only; raise maxmemory or free memory", exc)
                        self._oom_warned = True
                    self.stopping.wait(self.settings.tick)
                    continue
                if self.connected_since is None or time.monotonic() - began > self.settings.heartbeat_ttl / 2:
                    # first contact, or the call was stuck retrying through an outage long
                    # enough for others' keys to expire (an outage shorter than TTL/2 cannot):
                    # they could not beat either, so give them a full TTL before judging them
                    self.connected_since = time.monotonic()
                    self.redis_run_id = self.store.redis.info("server").get("run_id")
                    log.info("agent connected; pin=%r", self.pin)
                self.follow_pin()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + max(self.settings.heartbeat_interval / 2, 0.2)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.connected_since is not None:
                    log.warning("agent lost Redis: %s", exc)
                self.connected_since = None
                self.stopping.wait(0.5)
                continue
            except Exception:  # never let the agent die: the worker would lose its pin
                log.exception("agent tick failed")
            self.stopping.wait(self.settings.tick)

    def sweep(self) -> None:
        """Reap dead workers and apply due timers. Only after we have been connected for a
        full heartbeat TTL: right after a Redis restart every registry key looks expired."""
        if self.connected_since is None:
            return
        if time.monotonic() - self.connected_since < self.settings.heartbeat_ttl * 1.5:
            return
        run_id = self.store.redis.info("server").get("run_id")
        if run_id != self.redis_run_id:  # Redis restarted: its expired keys say nothing yet
            self.redis_run_id, self.connected_since = run_id, time.monotonic()
            return
        for node in self.store.dead_workers():
            if node != self.node:
                n = self.store.reap_worker(node)
                log.warning("reaped dead worker %s: %d job(s) requeued", node, n)
        self.store.sweep_deadlines()
        # a worker holds at most `concurrency` messages, each started at once: one unstarted
        # for several heartbeat TTLs belongs to a consumer that is gone
        rescued, _seen = self.store.rescue_unacked(max(5.0, 3 * self.settings.heartbeat_ttl))
        if rescued:
            log.warning("gave back %d job(s) whose message a vanished consumer held", rescued)
        if time.monotonic() >= self._next_reconcile:
            self.reconcile()
            self._next_reconcile = time.monotonic() + self.settings.heartbeat_ttl

    def reconcile(self) -> None:
        """Requeue jobs our run set lists but this process does not run (see the module doc)."""
        held = held_job_ids()  # read before the script: see keys.RECONCILE_WORKER
        requeued, self._suspects, given, self._fetch_seen = self.store.reconcile_worker(
            self.node, self._suspects, held, self._fetch_seen)
        if requeued or given:
            log.warning("reconciled with Redis: requeued %d job(s) recorded as running here that "
                        "this worker does not run; gave back %d fetched message(s)", requeued, given)

    # ------------------------------------------------------------------ consumer
    def follow_pin(self) -> None:
        if self.consumer is None:
            return  # the consumer is not started yet (see start_worker)
        wanted = self.store.keys.session_queue(self.pin) if self.pin else self.shared_queue
        current = self.consuming()
        if current == {wanted} or self._wanted == wanted and current is None:
            return
        self._wanted = wanted
        self.consumer.call_soon(_switch_queues, self.consumer, wanted)
        log.info("consuming %s (pin=%r)", wanted, self.pin)

    def consuming(self) -> set[str] | None:
        task_consumer = getattr(self.consumer, "task_consumer", None)
        if task_consumer is None:
            return None
        return {q.name for q in task_consumer.queues}

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def _switch_queues(consumer, wanted: str) -> None:
    """Runs in the consumer's event loop (never from another thread)."""
    if consumer.task_consumer is None:
        return
    current = {q.name for q in consumer.task_consumer.queues}
    if wanted not in current:
        consumer.add_task_queue(wanted)
    for name in current - {wanted}:
        consumer.cancel_task_queue(name)
        consumer.app.amqp.queues.pop(name, None)  # forget session queues: no growth per session


def held_job_ids() -> list[str]:
    """Job ids of every request this worker process holds (reserved or running)."""
    for _ in range(5):
        try:
            requests = list(worker_state.reserved_requests) + list(worker_state.active_requests)
            break
        except RuntimeError:  # the consumer changed a set while we copied it: try again
            continue
    else:  # pragma: no cover
        raise RuntimeError("could not read the worker's requests")
    ids = set()
    for req in requests:
        job_id = getattr(req, "_job_id", None)
        jid = job_id() if callable(job_id) else None
        if jid:
            ids.add(jid)
    return sorted(ids)


# ---------------------------------------------------------------------- Celery hooks
_agent: Agent | None = None


def _ensure_agent(consumer=None, node: str | None = None):
    """Start the agent (once a process) or hand it the consumer once Celery's is ready."""
    global _agent
    backend = os.environ.get("SESSION_BROKER_WORKER_BACKEND")
    if not backend:
        return None  # a plain `celery worker` without our CLI: no agent
    if _agent is None:
        node = node or consumer.hostname
        concurrency = int(os.environ.get("SESSION_BROKER_WORKER_CONCURRENCY", "1"))
        device = os.environ.get("SESSION_BROKER_WORKER_DEVICE", "CPU")
        _agent = Agent(consumer, node, backend, concurrency, device)
        _agent.start()
    elif consumer is not None:
        _agent.consumer = consumer
    return _agent


@signals.worker_ready.connect
def _start_agent(sender=None, **_):
    _ensure_agent(sender)


@signals.worker_shutdown.connect
def _stop_agent(sender=None, **_):
    """A clean shutdown deregisters at once and hands any pinned session to another worker."""
    global _agent
    if _agent is None:
        return
    _agent.stop()
    try:
        _agent.store.reap_worker(_agent.node)
        log.info("deregistered %s", _agent.node)
    except redis.RedisError as exc:
        log.warning("could not deregister %s: %s", _agent.node, exc)
    _agent = None


@signals.worker_process_init.connect
def _warm_child(**_):
    """Build the simulator in every pool process before its first job."""
    backend = os.environ.get("SESSION_BROKER_WORKER_BACKEND")
    if backend:
        from tasks.execute import warm_up

        warm_up(backend)


def start_worker(backend: str, *, concurrency: int = 1, name: str | None = None,
                 device: str = "CPU", loglevel: str = "WARNING") -> None:
    """``session-broker worker``: a prefork Celery worker serving one backend (blocks)."""
    import socket
    import uuid

    os.environ["SESSION_BROKER_WORKER_BACKEND"] = backend
    os.environ["SESSION_BROKER_WORKER_CONCURRENCY"] = str(concurrency)
    os.environ["SESSION_BROKER_WORKER_DEVICE"] = device
    from session_broker.celery_app import app
    from session_broker.state import Store

    Store().ping(check=False)
    # refuses an eviction policy that can drop our keys; warns when nothing is persisted
    Store().check_server(strict=True)
    node = name or f"{backend}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    # the transport fetches into this node's fetch list (reliable fetch, transport.py)
    os.environ["SESSION_BROKER_WORKER_NODE"] = node
    queue = Store().keys.backend_queue(backend)
    # register and beat before the consumer's first fetch (see Agent.__init__)
    agent = _ensure_agent(None, node)
    wait_registered = time.monotonic() + 30
    while agent.connected_since is None and time.monotonic() < wait_registered:
        time.sleep(0.05)
    app.worker_main([
        "worker", "--pool=prefork", f"--concurrency={concurrency}", f"--hostname={node}",
        f"--queues={queue}", "--without-gossip", "--without-mingle", "--task-events",
        f"--loglevel={loglevel}", "--prefetch-multiplier=1",
    ])
