"""The executor: one process per node, started and watched by the supervisor (protocol:
``link.py``). Its jobs come through the lean consumer (``consumer.py``, a thread); Celery runs
in the main thread for everything else: remote control (``celery inspect`` reports the lean
consumer's queue and job) and task events, on only while a monitor asks for them
(``SESSION_BROKER_EVENTS_LINGER``). It switches queues when told (the pin) and checks that
Celery's node name is its registered one. ``SESSION_BROKER_JOB_PATH=celery`` runs jobs through
Celery's own request path instead (solo pool; the benchmark's comparison).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

import redis
from celery import signals
from celery.worker import control

from session_broker.core.store import Store

log = logging.getLogger("session_broker.worker")
logging.getLogger("qiskit").setLevel(logging.WARNING)  # the transpiler logs every pass at INFO

from .link import (  # noqa: E402
    ENV_COMMAND_FD,
    ENV_QUEUE,
    ENV_STATUS_FD,
    ENV_SUPERVISOR,
    job_path,
    link,
    open_link,
)

# seconds events stay on after the last request for them (Flower asks every 5 s)
EVENTS_LINGER = float(os.environ.get("SESSION_BROKER_EVENTS_LINGER", "15"))


# ---------------------------------------------------------------------- events on demand
class Events:
    """Keeps the consumer's task events on exactly while a monitor wants them."""

    def __init__(self, consumer, store, always: bool):
        self.consumer, self.store, self.always = consumer, store, always
        self.last_request = -1e9

    def requested(self) -> None:
        self.last_request = time.monotonic()

    def wanted(self) -> bool:
        if self.always or time.monotonic() - self.last_request < EVENTS_LINGER:
            return True
        try:
            return bool(self.store.redis.exists(self.store.keys.monitor))
        except Exception:  # Redis away: leave them as they are
            return self.on()

    def on(self) -> bool:
        dispatcher = self.consumer.event_dispatcher
        return dispatcher is not None and "task" in dispatcher.groups

    def apply(self) -> None:
        """Runs in the consumer's loop (``call_soon``), like Celery's own control commands."""
        dispatcher = self.consumer.event_dispatcher
        if dispatcher is None:
            return
        if self.wanted():
            if "task" not in dispatcher.groups:
                dispatcher.groups.add("task")
                log.info("task events on: a monitor asked for them")
        elif "task" in dispatcher.groups:
            dispatcher.groups.discard("task")
            log.info("task events off: no monitor asked for them in %.0f s", EVENTS_LINGER)


_events: Events | None = None
_jobs = None  # the lean consumer (consumer.JobConsumer), once ready


def _watch_enable_events() -> None:
    """Note every ``enable_events`` a monitor broadcasts (then let Celery's handler run)."""
    original = control.Panel.data["enable_events"]
    if getattr(original, "_noted", False):
        return

    def enable_events(state):
        if _events is not None:
            _events.requested()
        return original(state)

    enable_events._noted = True
    control.Panel.data["enable_events"] = enable_events


def _lean_remote_control() -> None:
    """Celery's remote control speaks of the lean consumer as it spoke of Celery's own:
    ``inspect active_queues`` / ``active`` (Flower's Broker and worker pages) report the queue
    it consumes and the job it runs; ``control cancel_consumer`` of that queue stops it
    fetching (behind the supervisor's back, as before: the liveness check then replaces the
    executor); ``add_consumer`` is refused, as an executor consumes the one queue its pin
    names."""
    panel = control.Panel.data
    if getattr(panel["active_queues"], "_lean", False):
        return
    queues, active, cancel, add = (
        panel["active_queues"],
        panel["active"],
        panel["cancel_consumer"],
        panel["add_consumer"],
    )

    def active_queues(state):
        if _jobs is None:
            return queues(state)
        if not _jobs.wanted:
            return []
        amqp = state.consumer.app.amqp
        queue = amqp.queues.get(_jobs.wanted) or amqp.queues.new_missing(_jobs.wanted)
        return [dict(queue.as_dict(recurse=True))]

    def active_requests(state, safe=False, **kwargs):
        return active(state, safe=safe, **kwargs) + (_jobs.active() if _jobs is not None else [])

    def cancel_consumer(state, queue, **kwargs):
        if _jobs is None or queue != _jobs.wanted:
            return cancel(state, queue, **kwargs)
        _jobs.switch("")
        return control.ok(f"no longer consuming from {queue}")

    def add_consumer(state, queue, *args, **kwargs):
        if _jobs is None:
            return add(state, queue, *args, **kwargs)
        return control.nok(
            f"a session-broker executor consumes one queue, the one its pin names "
            f"({_jobs.wanted or 'none now'}); sessions move workers, not add_consumer"
        )

    active_queues._lean = True
    panel.update(
        active_queues=active_queues,
        active=active_requests,
        cancel_consumer=cancel_consumer,
        add_consumer=add_consumer,
    )


# ---------------------------------------------------------------------- Celery hooks
@signals.worker_process_init.connect
def _warm(**_):
    """Build the simulator before the first job (the solo pool sends this at start-up)."""
    backend = os.environ.get("SESSION_BROKER_WORKER_BACKEND")
    if backend:
        # lazy: Qiskit and the Celery app load only after _die_with_parent(): an executor must not outlive its supervisor during those seconds of imports
        from .simulate import warm_up

        warm_up(backend)


@signals.task_postrun.connect
def _ended(**_):
    """The job handed over by ``JobRequest.on_accepted`` has ended (its result is stored)."""
    if link() is not None:
        link().idle()


@signals.worker_ready.connect
def _ready(sender=None, **_):
    global _events
    if link() is None:
        return
    consumer = sender
    node = os.environ.get("SESSION_BROKER_WORKER_NODE", "")
    if consumer.hostname != node:
        # the claim compares Celery's node name with the registry's: they must be one name
        log.critical("executor's Celery node %r is not its registered node %r", consumer.hostname, node)
        os._exit(3)
    # lazy: Qiskit and the Celery app load only after _die_with_parent(): an executor must not outlive its supervisor during those seconds of imports
    from .celery_tasks import store

    _events = Events(consumer, store(), os.environ.get("SESSION_BROKER_TASK_EVENTS") == "always")
    _events.apply()  # a monitor already open: events from the first job
    queue = os.environ.get(ENV_QUEUE, "")
    if job_path() == "lean":
        _start_lean_consumer(consumer, node, queue)
    threading.Thread(target=_follow_commands, args=(consumer,), name="executor-commands", daemon=True).start()
    threading.Thread(target=_events_loop, name="executor-events", daemon=True).start()
    link().send("ready", queue)


def _start_lean_consumer(consumer, node: str, queue: str) -> None:
    """Jobs from now on come through the lean consumer: Celery's consumer stops consuming the
    task queue it started on (before its loop's first fetch: this runs in ``on_ready``)."""
    global _jobs
    # lazy: Qiskit and the Celery app load only after _die_with_parent() (consumer.py imports both)
    from .consumer import JobConsumer

    events = _events
    _jobs = JobConsumer(node, queue, events_on=lambda: events is not None and events.on())
    for name in [q.name for q in consumer.task_consumer.queues]:
        consumer.cancel_task_queue(name)
        consumer.app.amqp.queues.pop(name, None)
    threading.Thread(target=_jobs.run, name="executor-jobs", daemon=True).start()


@signals.worker_shutting_down.connect
def _stop_jobs(**_):
    """Celery's warm shutdown: the lean consumer takes no new job (``main`` waits for it)."""
    if _jobs is not None:
        _jobs.stop()


def _follow_commands(consumer) -> None:
    for words in link().commands():
        if len(words) == 2 and words[0] == "queue":
            if _jobs is not None:
                _jobs.switch(words[1])  # it says "consuming" once its next fetch is from there
            else:
                consumer.call_soon(_switch, consumer, words[1])
    # the supervisor is gone (PR_SET_PDEATHSIG kills us too; this is the belt to its braces)
    os.kill(os.getpid(), signal.SIGKILL)


def switch_queues(consumer, wanted: str) -> None:
    """Make ``consumer`` fetch from ``wanted`` only. Runs in the consumer's event loop (the
    executor's command thread hands it over with ``call_soon``), never from another thread."""
    if consumer.task_consumer is None:
        return
    current = {q.name for q in consumer.task_consumer.queues}
    if wanted not in current:
        consumer.add_task_queue(wanted)
    for name in current - {wanted}:
        consumer.cancel_task_queue(name)
        consumer.app.amqp.queues.pop(name, None)  # forget session queues: no growth per session


def _switch(consumer, queue: str) -> None:
    """In the consumer's loop: consume ``queue`` only, and tell the supervisor it does."""
    switch_queues(consumer, queue)
    if consumer.task_consumer is not None:
        link().send("consuming", ",".join(sorted(q.name for q in consumer.task_consumer.queues)))


def _events_loop() -> None:
    while True:
        time.sleep(EVENTS_LINGER / 3)
        if _events is not None and _events.on() != _events.wanted():
            _events.consumer.call_soon(_events.apply)


# ---------------------------------------------------------------------- entry point
def _die_with_parent() -> None:
    """SIGKILL this process when the supervisor dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux: the command pipe's EOF still ends us
        pass
    if os.getppid() != int(os.environ.get(ENV_SUPERVISOR, "0") or 0):
        sys.exit(1)  # the supervisor died before prctl took effect


def _wait_registered(node: str) -> None:
    """Fetch nothing before the supervisor's agent has registered the node: the reaper finds
    a dead worker's fetch list through its registration (the supervisor starts executors
    first, to boot them while it checks Redis, and registers meanwhile)."""
    store = Store()
    key = store.keys.worker(node)
    while True:
        try:
            if store.redis.exists(key):
                return
        except redis.RedisError:  # Redis away: the supervisor waits for it too
            pass
        time.sleep(0.02)


EVENTS_BANNER = (
    "on demand (on while Flower or another monitor asks; SESSION_BROKER_TASK_EVENTS=always keeps them on)"
)


def _banner_says_how_events_turn_on(app) -> None:
    """Celery's start-up banner says "task events: OFF (enable -E to monitor tasks in this
    worker)"; `session-broker worker` takes no -E: events come on when a monitor asks."""
    base = app.Worker

    class Worker(base):  # type: ignore[misc, valid-type]
        def startup_info(self, artlines=True):
            text = super().startup_info(artlines)
            return text.replace("OFF (enable -E to monitor tasks in this worker)", EVENTS_BANNER)

    app.Worker = Worker


def main() -> None:
    """The executor process: started by the supervisor, never by hand."""
    _die_with_parent()
    open_link(int(os.environ[ENV_STATUS_FD]), int(os.environ[ENV_COMMAND_FD]))
    for fd in (link().status_fd, link().command_fd):
        os.set_inheritable(fd, False)  # nothing this process starts keeps the supervisor's pipes
    _watch_enable_events()
    _lean_remote_control()
    # lazy: Qiskit and the Celery app load only after _die_with_parent(): an executor must not outlive its supervisor during those seconds of imports
    from session_broker.celery_app import app

    node = os.environ["SESSION_BROKER_WORKER_NODE"]
    _wait_registered(node)
    _banner_says_how_events_turn_on(app)
    try:
        _run_celery(app, node)
    finally:
        if _jobs is not None:  # a warm shutdown: the job in hand ends first
            _jobs.stop()
            _jobs.finished.wait()


def _run_celery(app, node: str) -> None:
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--hostname={node}",
            f"--queues={os.environ[ENV_QUEUE]}",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={os.environ.get('SESSION_BROKER_EXECUTOR_LOGLEVEL', 'WARNING')}",
            "--prefetch-multiplier=1",
        ]
    )


if __name__ == "__main__":
    main()
