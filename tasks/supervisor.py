"""The worker's main process (``session-broker worker``): one agent thread per node
(``agent.py``) and one executor process per node (``executor.py``), watched over a pipe
(``link.py``). It SIGKILLs an executor past its job's hard time limit, settles the job of an
executor that died or stalled (``executor_lost.lua``) and starts another, while the node keeps
beating and keeps its pin; executors die with it. Why this split: docs/design.md.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import threading
import time
import uuid

import redis
from celery.utils.nodenames import default_nodename, host_format

from session_broker.celery_app import app
from session_broker.core.spawn import child_env, python_code
from session_broker.core.store import Store
from session_broker.errors import ConfigurationError, ErrorCode, error_for_code

from .agent import Agent
from .link import ENV_COMMAND_FD, ENV_QUEUE, ENV_STATUS_FD, ENV_SUPERVISOR, InFlight, job_path

log = logging.getLogger("session_broker.worker")
BOOT_FAILURES = 5
RESEND_AFTER = 2.0  # s: ask an executor again to switch queues if it has not said it did


def node_name(name: str) -> str:
    """``--name`` as Celery's own ``celery worker -n`` expands it (``%h`` host, ``%n`` its
    first label, ``%d`` the domain; a name without ``@`` is a host, as in Celery). Done once,
    here, so the registry, the pin, the queues and the executor's Celery node are one name."""

    try:
        node = host_format(default_nodename(name))
    except ValueError:  # Celery's "Unknown format %z in string ..."
        node = name
    local, _, host = node.partition("@")
    if "%" in node or not local or not host:
        raise ConfigurationError(
            f"worker name {name!r} expands to {node!r}, which is not a node name: write NAME@HOST, "
            "where Celery's %h (host name), %n (its first label) and %d (domain) are expanded; "
            "no other '%' may remain"
        )
    return node


class Slot:
    """One node: its executor process and what the supervisor knows of it. The agent reads it
    as its ``link`` (``ready``, ``held_job_ids``, ``follow``)."""

    def __init__(self, node: str):
        self.node = node
        self.proc: subprocess.Popen | None = None
        self.status_fd: int | None = None
        self.command_fd: int | None = None
        self.buffer = b""
        self.ready = False  # the executor's consumer is up
        self.consuming = ""  # the queue it said it consumes
        self.wanted = ""  # the queue the agent wants consumed
        self.asked, self.asked_at = "", 0.0  # the last queue asked for, and when
        self.job: InFlight | None = None  # the job its executor runs now
        self.overran: tuple[str, float] | None = None  # (job id, its limit) killed for time
        self.replaced = ""  # why the agent had this executor killed (an unserved pin)
        self.boot_failures = 0
        self.restart_at: float | None = None
        self.lock = threading.Lock()

    # ---- the agent's side
    def executor_id(self) -> str:
        """The ready executor's pid ('' while none is ready): what a stalled mark names."""
        proc = self.proc
        return str(proc.pid) if self.ready and proc is not None else ""

    def replace(self, executor: str, why: str) -> bool:
        """Kill executor ``executor`` (a pid) if it is still this node's; the supervisor's loop
        sees it exit, settles what it held and starts another. True if it was killed."""
        with self.lock:
            proc = self.proc
            if proc is None or str(proc.pid) != executor or proc.poll() is not None:
                return False
            self.replaced = why
            proc.kill()  # SIGKILL works on a frozen (SIGSTOPped) process too
            return True

    def held_job_ids(self) -> list[str]:
        job = self.job
        return [job.job_id] if job and job.job_id else []

    def follow(self, queue: str) -> bool:
        """Ask the executor to consume ``queue`` (only); True when that is news to it."""
        with self.lock:
            self.wanted = queue
            if self.consuming == queue or not self.ready or self.command_fd is None:
                return False
            if time.monotonic() - self.asked_at < RESEND_AFTER and self.asked == queue:
                return False
            try:
                os.write(self.command_fd, f"queue {queue}\n".encode())
            except OSError:  # gone (the next one starts on `wanted`), or frozen with a full pipe
                return False
            self.asked, self.asked_at = queue, time.monotonic()
            return True


class Supervisor:
    def __init__(
        self,
        backend: str,
        *,
        concurrency: int = 1,
        name: str | None = None,
        device: str = "CPU",
        loglevel: str = "WARNING",
    ):
        self.backend, self.device, self.loglevel = backend, device, loglevel
        base = node_name(name or f"{backend}-{uuid.uuid4().hex[:6]}@%h")
        if concurrency == 1:
            nodes = [base]
        else:
            local, at, host = base.partition("@")
            nodes = [f"{local}-{i}{at}{host}" for i in range(1, concurrency + 1)]
        self.slots = [Slot(n) for n in nodes]
        self.agents: list[Agent] = []
        self.store: Store | None = None
        self.stopping = 0  # signals received
        self.selector = selectors.DefaultSelector()
        self.exit_code = 0

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        logging.basicConfig(
            level=self.loglevel.upper(), format="[%(asctime)s: %(levelname)s/Supervisor] %(message)s"
        )
        os.environ["SESSION_BROKER_WORKER_BACKEND"] = self.backend
        os.environ["SESSION_BROKER_WORKER_DEVICE"] = self.device
        self.store = Store()
        # executors boot (a second or two of imports) while this process checks what it was
        # given; they fetch nothing before their node is registered (executor._wait_registered)
        for slot in self.slots:
            self.start(slot)
        try:
            self.check()
        except BaseException:
            for slot in self.slots:
                slot.proc.kill()
            raise
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        for slot in self.slots:
            agent = Agent(slot, slot.node, self.backend, 1, self.device)
            agent.start()
            self.agents.append(agent)
        try:
            self.loop(wake_r)
        finally:
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.kill()
            self.deregister()
        return self.exit_code

    def check(self) -> None:
        """The backend exists, a GPU is there if asked for, Redis answers and is safe to use."""
        # lazy: the catalog imports Qiskit: loaded by check(), once, not by the CLI that imports this module
        from session_broker import backends

        backends.get_spec(self.backend)
        job_path()  # a typo'd SESSION_BROKER_JOB_PATH stops the worker here, saying what is allowed
        if self.device == "GPU":
            backends.check_gpu()
        self.store.ping(check=False)
        # refuses an eviction policy that can drop our keys; warns when nothing is persisted
        self.store.check_server(strict=True)

    def loop(self, wake_r: int) -> None:
        while True:
            live = [s for s in self.slots if s.proc is not None]
            if self.stopping and not live:
                return
            now = time.monotonic()
            timeout = 0.5
            for slot in self.slots:
                if slot.job and slot.job.deadline is not None:
                    timeout = min(timeout, max(slot.job.deadline - now, 0.0))
                if slot.restart_at is not None:
                    timeout = min(timeout, max(slot.restart_at - now, 0.0))
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    os.read(wake_r, 512)  # a signal arrived: its handler already ran
                else:
                    self.read(key.data)
            self.enforce_limits()
            for slot in self.slots:  # an executor's exit is seen as its status pipe's EOF (read)
                if slot.restart_at is not None and time.monotonic() >= slot.restart_at and not self.stopping:
                    slot.restart_at = None
                    self.start(slot)

    def _on_signal(self, signum, _frame) -> None:
        self.stopping += 1
        for slot in self.slots:
            slot.ready = False  # take no new session meanwhile
            slot.restart_at = None
            if slot.proc is not None and slot.proc.poll() is None:
                # first signal: Celery's warm shutdown (the job in hand finishes); then at once
                slot.proc.send_signal(signal.SIGTERM if self.stopping == 1 else signal.SIGKILL)
        if self.stopping == 1:
            log.warning(
                "%s: stopping after the running jobs (again to stop now)", signal.Signals(signum).name
            )

    def deregister(self) -> None:
        """A clean exit deregisters at once and hands any pinned session to another worker."""
        for agent in self.agents:
            agent.stop()
            # a tick still in flight (a slow Redis on a loaded host) would beat after the
            # reap and bring the registry entry back for a TTL: let it end first
            agent.join(timeout=30)
            try:
                agent.store.reap_worker(agent.node)
                log.info("deregistered %s", agent.node)
            except redis.RedisError as exc:
                log.warning("could not deregister %s: %s", agent.node, exc)

    # ------------------------------------------------------------------ executors
    def start(self, slot: Slot) -> None:
        status_r, status_w = os.pipe()
        command_r, command_w = os.pipe()
        queue = slot.wanted or self.store.keys.backend_queue(self.backend)
        env = {
            **os.environ,
            "SESSION_BROKER_WORKER_NODE": slot.node,  # the transport's fetch list (reliable fetch)
            ENV_STATUS_FD: str(status_w),
            ENV_COMMAND_FD: str(command_r),
            ENV_QUEUE: queue,
            ENV_SUPERVISOR: str(os.getpid()),
            "SESSION_BROKER_EXECUTOR_LOGLEVEL": self.loglevel,
            # Aer's OpenMP threads otherwise spin for a while after each parallel region: on
            # a small machine they take the CPU the producer and Redis need (docs/internals.md, Performance)
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive"),
        }
        # in this process's group: a signal to the worker's group (a terminal's Ctrl-C, a
        # SIGSTOP for a hung host, SIGKILL) reaches its executors as it reached pool children
        slot.proc = subprocess.Popen(
            # never with the current directory on sys.path: a user's tasks.py would shadow us
            python_code(f"from {__package__}.executor import main; main()"),
            env=child_env(env),
            pass_fds=(status_w, command_r),
        )
        os.close(status_w)
        os.close(command_r)
        os.set_blocking(status_r, False)
        # a frozen executor must not block the agent (and so the heartbeat) on a full pipe
        os.set_blocking(command_w, False)
        slot.status_fd, slot.command_fd, slot.buffer = status_r, command_w, b""
        slot.consuming, slot.asked = "", ""
        self.selector.register(status_r, selectors.EVENT_READ, slot)
        log.info("%s: executor started (pid %d) on %s", slot.node, slot.proc.pid, queue)

    def read(self, slot: Slot) -> None:
        try:
            data = os.read(slot.status_fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the executor is gone (it held the only write end)
            self.selector.unregister(slot.status_fd)
            os.close(slot.status_fd)
            slot.status_fd = None
            slot.proc.wait()
            self.exited(slot)
            return
        slot.buffer += data
        *lines, slot.buffer = slot.buffer.split(b"\n")
        for line in lines:
            self.on_line(slot, line.decode(errors="replace").split())

    def on_line(self, slot: Slot, words: list[str]) -> None:
        log.debug("%s: executor says %s", slot.node, " ".join(words))
        if not words:
            return
        what = words[0]
        if what == "run" and len(words) == 4:
            slot.job = InFlight.parse(words)
        elif what == "idle":
            slot.job = None
        elif what in ("ready", "consuming") and len(words) == 2:
            with slot.lock:
                slot.consuming = words[1]
            if what == "ready" and not self.stopping:
                slot.ready, slot.boot_failures = True, 0

    def enforce_limits(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            job = slot.job
            if job and job.deadline is not None and now >= job.deadline and slot.overran is None:
                slot.overran = (job.job_id or "-", job.hard_limit)
                log.warning(
                    "%s: job %s overran its hard time limit (%g s): stopping its executor (pid %d)",
                    slot.node,
                    job.job_id,
                    job.hard_limit,
                    slot.proc.pid,
                )
                slot.proc.kill()

    def exited(self, slot: Slot) -> None:
        """The executor ended: settle its job, give back what it had fetched, start another."""
        code = slot.proc.returncode
        job, overran, was_ready, replaced = slot.job, slot.overran, slot.ready, slot.replaced
        slot.replaced = ""
        if slot.command_fd is not None:
            os.close(slot.command_fd)
        slot.proc, slot.command_fd, slot.job, slot.overran = None, None, None, None
        with slot.lock:
            slot.ready, slot.consuming = False, ""
        if self.stopping:
            return
        how = f"was replaced ({replaced})" if replaced else _describe(code)
        jid = job.job_id if job else None
        tag = (job.delivery_tag or None) if job else None
        if overran:
            outcome = self._settle(
                slot.node,
                jid,
                ErrorCode.MAX_EXECUTION_TIME.value,
                f"job {jid} exceeded its max_execution_time and was stopped after "
                f"{overran[1]:g} s; raise max_execution_time or split the job",
                tag,
            )
        else:
            outcome = self._settle(
                slot.node, jid, ErrorCode.WORKER_LOST.value, f"the process running it died ({how})", tag
            )
        if jid:
            log.warning(
                "%s: executor %s while running job %s (%s); starting another", slot.node, how, jid, outcome
            )
            if outcome in ("requeued", "failed"):  # not 'stale': someone else settled it
                # the executor died before it could tell monitors: tell them (Flower)
                threading.Thread(
                    target=self.send_task_events,
                    args=(slot.node, jid, how, outcome),
                    name="lost-job-events",
                    daemon=True,
                ).start()
        else:
            log.warning("%s: executor %s; starting another", slot.node, how)
        if was_ready or replaced:
            slot.restart_at = time.monotonic()
            return
        slot.boot_failures += 1
        if slot.boot_failures >= BOOT_FAILURES:
            log.error(
                "%s: the executor failed %d times in a row before it was ready; stopping "
                "the worker (its log above says why)",
                slot.node,
                slot.boot_failures,
            )
            self.exit_code = 1
            self._on_signal(signal.SIGTERM, None)
            return
        slot.restart_at = time.monotonic() + min(0.5 * 2 ** (slot.boot_failures - 1), 10.0)

    def send_task_events(self, node: str, jid: str, how: str, outcome: str) -> None:
        """Celery's task event for a job whose executor was killed (time limit) or died, which
        never sent its own: ``task-failed`` with the error the job record holds (what the Jobs
        page, the CLI and ``job.result()`` show) once the job has ended, ``task-retried`` when it
        was requeued to run again. The event names the task and its summary, so a monitor that
        missed ``task-received`` (events are on only while one asks) still knows what it was.
        Sent from this node's name, as its executor would have; whether or not a monitor asks
        (one such event per lost job costs nothing). ``outcome`` is what the settling said
        ('requeued': retried; else failed): the record read later may already say DONE, as
        another executor ran the requeued job meanwhile."""
        try:
            rec = self.store.job(jid, "status", "error", "error_code", "primitive", "session", "backend")
            reason = rec.get("error") or f"the process running it died ({how}); it runs again"
            error = error_for_code(rec.get("error_code"), reason, jid)
            fields = {
                "uuid": jid,
                "name": rec.get("primitive") or None,
                "args": f"job={jid} session={rec.get('session') or '-'} backend={rec.get('backend')}",
                "kwargs": "{}",
                "exception": repr(error),
                "traceback": f"{type(error).__name__}: {error}",
            }
            with app.connection_for_write() as conn:
                dispatcher = app.events.Dispatcher(conn, hostname=node, enabled=True)
                try:
                    dispatcher.send("task-retried" if outcome == "requeued" else "task-failed", **fields)
                finally:
                    dispatcher.close()
        except Exception as exc:  # monitors miss one event; the job itself is settled
            log.warning("%s: could not send the task event of job %s: %s", node, jid, exc)

    def _settle(self, node: str, jid: str | None, code: str, message: str, tag: str | None) -> str:
        """EXECUTOR_LOST, then give back anything else the executor held; retried through a
        Redis outage (nothing can run meanwhile anyway)."""
        while True:
            try:
                outcome = self.store.executor_lost(node, jid, code, message, tag)
                self.store.reap_worker(node, keep_pin=True)
                return outcome or "no job"
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.stopping:
                    return "not settled"
                log.warning("%s: cannot reach Redis to settle a lost executor: %s", node, exc)
                time.sleep(0.5)


def start_worker(
    backend: str,
    *,
    concurrency: int = 1,
    name: str | None = None,
    device: str = "CPU",
    loglevel: str = "WARNING",
) -> int:
    """``session-broker worker``: a supervisor and ``concurrency`` executors (blocks; returns
    the exit status)."""
    # lazy: the catalog imports Qiskit; check() loads it in this process anyway
    from session_broker.backends import ALIASES

    backend = ALIASES.get(backend, backend)  # fake_almaden is served as ibm_almaden, as clients name it
    return Supervisor(backend, concurrency=concurrency, name=name, device=device, loglevel=loglevel).run()


def _describe(code: int | None) -> str:
    if code is None:
        return "vanished"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
