"""The agent: a thread of the supervisor per node that keeps the worker in step with Redis.
Each tick is one round trip (``worker_tick.lua``): heartbeat, take or follow the pin, and
free a pin the executor leaves unserved (the liveness bound); twice a heartbeat it reaps dead
workers, applies due timers and rescues orphaned messages, and once a TTL it reconciles its
run set with what its executor holds; once a TTL too (outside the sweep) it refreshes its
copy of the instances' settings, put back if Redis lost them. Why each: docs/design.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from session_broker.core.connection import is_out_of_memory
from session_broker.core.store import Store

log = logging.getLogger("session_broker.worker")


class Agent(threading.Thread):
    def __init__(self, link, node: str, backend: str, concurrency: int, device: str):
        # link: the executor as the agent sees it (supervisor.Slot): whether its consumer is
        # ready, which jobs it holds, where it consumes. The agent beats from before the
        # executor's first fetch, so a worker that dies while starting is registered, and the
        # reaper gives back what its consumer had fetched
        super().__init__(name=f"session-broker-agent-{node}", daemon=True)
        self.link = link
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
        self._suspects: dict[str, str] = {}
        self._fetch_seen: list[str] = []
        self._next_reconcile = 0.0
        self._oom_warned = False
        self._instances = "{}"
        self._next_instances = 0.0
        self._instances_seen = ""

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
                    beat = self.store.worker_tick(
                        self.node,
                        self.backend,
                        os.getpid(),
                        self.started_at,
                        self.concurrency,
                        self.device,
                        consuming=self.link.ready,
                        executor=self.link.executor_id(),
                    )
                    self.pin = beat.pin
                    self._oom_warned = False
                    if beat.released or beat.stalled:
                        self.unserved(beat.released, beat.stalled)
                except redis.ResponseError as exc:
                    if not is_out_of_memory(exc):
                        raise
                    # Redis refuses writes (maxmemory, noeviction): keep our registry entry
                    # alive so nobody reaps a live worker, and run nothing new meanwhile
                    self.store.keep_alive(self.node)
                    if not self._oom_warned:
                        log.error(
                            "Redis is out of memory (%s): heartbeat kept alive with PEXPIRE "
                            "only; raise maxmemory or free memory",
                            exc,
                        )
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
                if beat.instances != self._instances_seen or time.monotonic() >= self._next_instances:
                    self.keep_instances(beat.instances)
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

    def unserved(self, released: str, stalled: str) -> None:
        """Our pin went unserved past the bound (``core/lua/worker_tick.lua``): the session went back
        to the front of the line; replace the executor that held it."""
        if released:
            log.warning(
                "%s: session %s had jobs queued and none claimed here for %g s: it goes "
                "to the next free worker (liveness bound SESSION_BROKER_UNSERVED_PIN_TIMEOUT)",
                self.node,
                released,
                self.settings.unserved_pin_timeout,
            )
        if stalled and self.link.replace(stalled, "it left its session's jobs unclaimed"):
            log.warning(
                "%s: replacing executor pid %s: it left its pinned session's jobs unclaimed for %g s",
                self.node,
                stalled,
                self.settings.unserved_pin_timeout,
            )

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

    def keep_instances(self, seen: str) -> None:
        """Refresh our copy of the operator's instances when the heartbeat saw them change
        (their change counter, ``seen``) or vanish (Redis came back empty: the copy goes back,
        as worker_tick does for K.config; core/lua/restore_instances.lua), and once a TTL."""
        self._next_instances = time.monotonic() + self.settings.heartbeat_ttl
        try:
            self._instances = self.store.keep_instances(self._instances)
            self._instances_seen = seen
        except redis.ResponseError as exc:  # e.g. out of memory: the next beat tries again
            log.warning("could not refresh the instances' settings: %s", exc)

    def reconcile(self) -> None:
        """Requeue jobs our run set lists but this process does not run (see the module doc)."""
        held = self.link.held_job_ids()  # read before the script: see core/lua/reconcile_worker.lua
        done = self.store.reconcile_worker(self.node, self._suspects, held, self._fetch_seen)
        self._suspects, self._fetch_seen = done.suspects, done.fetch
        if done.requeued or done.given:
            log.warning(
                "reconciled with Redis: requeued %d job(s) recorded as running here that "
                "this worker does not run; gave back %d fetched message(s)",
                done.requeued,
                done.given,
            )

    # ------------------------------------------------------------------ consumer
    def follow_pin(self) -> None:
        wanted = self.store.keys.session_queue(self.pin) if self.pin else self.shared_queue
        if self.link.follow(wanted):
            log.info("%s consuming %s (pin=%r)", self.node, wanted, self.pin)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
