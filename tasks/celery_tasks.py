"""The Celery tasks workers execute: ``sampler``, ``estimator`` and ``executor``.

One job, on a worker: claim it (atomic; may say "not yours" or "already ended"), decode
its payload from the job record, run it on the warm simulator, store the result with the
claim token (a stale or duplicate attempt cannot overwrite a newer one). The message body
carries only the job id and a summary Flower shows; everything else is in Redis.

Nothing here raises into Celery for a job's own failure: a bad payload, an Aer error or a
time limit ends the job in ERROR with a message. A process that dies mid-job is handled
in the parent by ``JobRequest`` (requeue, bounded by ``max_attempts``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request

from session_broker import backends
from session_broker.celery_app import app
from session_broker.core import codec, program, transport
from session_broker.core.ids import valid_id
from session_broker.core.store import Claim, Store
from session_broker.errors import ErrorCode

from . import link as inflight
from .link import link
from .program import execute_program
from .simulate import execute

log = logging.getLogger("session_broker.worker")

_store: Store | None = None
_store_pid = 0


def store() -> Store:
    """One Store (Redis connection pool) per process: pools must not cross a fork."""
    global _store, _store_pid
    if _store is None or _store_pid != os.getpid():
        _store, _store_pid = Store(), os.getpid()
    return _store


class JobRequest(Request):
    """Runs in the consumer's process. Under the supervisor (solo pool) it tells the
    supervisor which job runs and for how long it may (the hard limit is the supervisor's to
    enforce); under a plain prefork ``celery worker`` it sees what a pool child cannot: its
    own death and its time limit."""

    def on_accepted(self, pid, time_accepted):
        """The pool takes the job: under the supervisor, say which job runs and its hard
        limit (the solo pool runs it right after this, in this process). Not
        ``execute_using_pool``: Celery replaces that one in the class it builds per task."""
        hard, _soft = self.time_limits
        inflight.current = inflight.InFlight(
            self._job_id(), getattr(self._message, "delivery_tag", None) or "", float(hard or 0)
        )
        pipe = link()
        if pipe is not None:
            pipe.running(inflight.current)
        super().on_accepted(pid, time_accepted)

    def _job_id(self) -> str | None:
        args = self.args if isinstance(self.args, (list, tuple)) else ()
        jid = args[0] if args else None
        return jid if isinstance(jid, str) and valid_id(jid) else None

    def on_timeout(self, soft, timeout):
        super().on_timeout(soft, timeout)
        jid = self._job_id()
        if not soft and jid:
            store().job_lost(
                jid,
                self.hostname,
                ErrorCode.MAX_EXECUTION_TIME.value,
                f"job {jid} exceeded its max_execution_time and was stopped "
                f"after {timeout:g} s; raise max_execution_time or split the job",
            )

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        jid = self._job_id()
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # billiard wraps it
        if jid and isinstance(exc, WorkerLostError):
            outcome = store().job_lost(
                jid, self.hostname, ErrorCode.WORKER_LOST.value, f"the process running it died ({exc})"
            )
            log.warning("job %s lost its process: %s", jid, outcome)


class JobTask(Task):
    Request = JobRequest
    acks_late = True
    ignore_result = True
    typing = False  # hostile messages with odd arguments must reach run_job, not crash


def run_job(task: Task, job_id, primitive: str) -> str:
    if not valid_id(job_id):
        log.error("dropping a %s message with an invalid job id %r", primitive, job_id)
        return "invalid job id"
    s = store()
    node = task.request.hostname
    backend = node_backend()
    claim = s.claim(job_id, node, os.getpid(), backends.context_fingerprint(backend))
    if not claim.run:
        log.info("job %s not run here: %s", job_id, claim.reason)
        return claim.reason
    # the solo pool runs the job in the process that accepted it: its message's tag is known
    # here, and FINISH acknowledges it (one round trip fewer); under prefork kombu acks
    tag = inflight.current.delivery_tag if link() is not None else ""
    return run_claimed(s, job_id, claim, primitive, backend, ack=tag)


@dataclass(frozen=True)
class Ended:
    """How a claimed job ended here, before FINISH records it."""

    status: str
    result: str
    code: str
    error: str
    usage: float


def run_claimed(s: Store, job_id: str, claim: Claim, primitive: str, backend: str, ack: str = "") -> str:
    """Run a claimed job and FINISH it: the job's status, or 'stale' when FINISH found that
    its record had moved on. ``ack``: the delivery tag FINISH acknowledges in kombu's unacked
    hash ('' = none)."""
    ended = execute_claimed(s, job_id, claim, primitive, backend)
    outcome = s.finish(
        job_id, claim.claim, ended.status, ended.result, ended.code, ended.error, ended.usage, ack=ack
    )
    if ack:
        transport.ACKED_BY_FINISH.add(ack)
    return settled(job_id, claim, ended, outcome)


def execute_claimed(s: Store, job_id: str, claim: Claim, primitive: str, backend: str) -> Ended:
    """Decode and run a claimed job on the warm simulator (both job paths: Celery's,
    ``run_claimed``, and the lean consumer's, ``consumer.py``). Never raises for the job's
    own failure: a bad payload, an Aer error or the time limit is an ERROR."""
    started = time.perf_counter()
    status, result, code, error = "DONE", "", "", ""
    try:
        result, options = _run(backend, claim.payload, primitive, s.settings.max_payload_bytes)
        limit = options.get("max_execution_time")
        if limit and time.perf_counter() - started > float(limit):
            raise SoftTimeLimitExceeded()
    except codec.InvalidPayloadError as exc:
        status, code, error = "ERROR", "invalid_payload", f"job {job_id} could not be decoded: {exc}"
    except SoftTimeLimitExceeded:
        status, result, code = "ERROR", "", ErrorCode.MAX_EXECUTION_TIME
        error = (
            f"job {job_id} exceeded its max_execution_time and was stopped after "
            f"{time.perf_counter() - started:.1f} s; raise max_execution_time or split the job"
        )
    except Exception as exc:  # an Aer or transpiler failure is the job's, not the worker's
        status, code = "ERROR", ErrorCode.FAILED.value
        error = f"{type(exc).__name__}: {exc}"
        log.warning("job %s failed: %s", job_id, error)
    return Ended(status, result, code, error, time.perf_counter() - started)


def settled(job_id: str, claim: Claim, ended: Ended, outcome: str) -> str:
    """FINISH's outcome, in words: the job's status, or 'stale'."""
    if outcome == "stale":
        # the record moved on while we ran (requeued after we were taken for dead, or Redis
        # lost our claim): the fence kept our result out. The chaos test counts these lines.
        log.warning(
            "job %s ran to completion here but its record had moved on (claim %s): result dropped",
            job_id,
            claim.claim,
        )
        return "stale"
    return ended.status


def _run(backend: str, payload, primitive: str, max_bytes: int) -> tuple[str, dict]:
    """Decode and run one job: (its result's JSON, its options)."""
    if primitive == program.PRIMITIVE:
        job = program.decode_executor_payload(payload, max_bytes=max_bytes)
        return execute_program(backend, job), job.options
    decoded = codec.decode_payload(payload, max_bytes=max_bytes)
    if decoded.primitive != primitive:
        raise codec.InvalidPayloadError(
            f"payload is for {decoded.primitive!r} but was sent to the {primitive!r} task"
        )
    return codec.encode_result(execute(backend, decoded)), decoded.options


@app.task(name="sampler", base=JobTask, bind=True)
def sampler(self, job_id, **summary):
    """Run a Sampler job (V2 or V1). Arguments: the job id, plus a summary for Flower."""
    return run_job(self, job_id, "sampler")


@app.task(name="estimator", base=JobTask, bind=True)
def estimator(self, job_id, **summary):
    """Run an Estimator job (V2 or V1). Arguments: the job id, plus a summary for Flower."""
    return run_job(self, job_id, "estimator")


@app.task(name="executor", base=JobTask, bind=True)
def executor(self, job_id, **summary):
    """Run an Executor job (IBM's QuantumProgram). Arguments: the job id, plus a summary."""
    return run_job(self, job_id, "executor")


_BACKEND = os.environ.get("SESSION_BROKER_WORKER_BACKEND", "")


def node_backend() -> str:
    """The one backend this worker serves (set by ``session-broker worker``)."""
    return _BACKEND or os.environ.get("SESSION_BROKER_WORKER_BACKEND", "")
