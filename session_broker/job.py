"""``RuntimeJobV2``: a handle on one job, from any process that knows its id.

Everything is read from the job record in Redis, so ``service.job(job_id)`` in another
process is the same object as the one ``run()`` returned. ``result()`` blocks on the job's
latch (one BLPOP, woken the moment the worker stores the result) and decodes the result
once; a failed or cancelled job raises the typed error rebuilt from its record.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import reduce
from typing import Any

from qiskit.primitives import BasePrimitiveJob, PrimitiveResult

from session_broker import waits
from session_broker.core import codec
from session_broker.core.ids import iso
from session_broker.core.store import FINAL_JOB_STATUSES, Store
from session_broker.errors import (
    InvalidInputError,
    JobNotFoundError,
    JobTimeoutError,
    error_for_code,
)
from session_broker.results import v1_transform


class RuntimeJobV2(BasePrimitiveJob):
    """A primitive job. Status strings: INITIALIZING, QUEUED, RUNNING, DONE, ERROR, CANCELLED."""

    def __init__(
        self,
        job_id: str,
        store: Store,
        *,
        service=None,
        backend: str | None = None,
        session_id: str | None = None,
        primitive: str | None = None,
        transform: Callable[[PrimitiveResult], Any] | None = None,
    ):
        super().__init__(job_id)
        self._store = store
        self._service = service
        self._backend = backend
        self.session_id = session_id
        self.primitive_id = primitive
        self._transform = transform
        self._result: Any = None
        self._inputs: dict | None = None  # kept by the object run() returned
        self._queued = False  # run() queued it just now (result() waits at once)

    @classmethod
    def attach(cls, job_id: str, store: Store, service=None) -> RuntimeJobV2:
        rec = store.job(job_id, "backend", "session", "primitive", "summary")
        if not rec:
            raise JobNotFoundError(f"job {job_id!r} does not exist (or its record expired)")
        transform = None
        summary = json.loads(rec.get("summary") or "{}")
        if summary.get("api") == "v1":
            transform = v1_transform(rec.get("primitive", ""))
        return cls(
            job_id,
            store,
            service=service,
            backend=rec.get("backend"),
            session_id=rec.get("session") or None,
            primitive=rec.get("primitive"),
            transform=transform,
        )

    # ------------------------------------------------------------------ status
    def status(self) -> str:
        status = self._store.job(self._job_id, "status").get("status")
        if status is None:
            raise JobNotFoundError(f"job {self._job_id!r} does not exist (or its record expired)")
        return status

    def done(self) -> bool:
        return self.status() == "DONE"

    def running(self) -> bool:
        return self.status() == "RUNNING"

    def cancelled(self) -> bool:
        return self.status() == "CANCELLED"

    def in_final_state(self) -> bool:
        return self.status() in FINAL_JOB_STATUSES

    def errored(self) -> bool:
        return self.status() == "ERROR"

    # ------------------------------------------------------------------ result
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result; raise its typed error if it failed."""
        if self._result is not None:
            return self._result
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise InvalidInputError(
                f"timeout={timeout!r:.60} must be None or a finite number of seconds >= 0"
            )
        timeout = None if timeout is None else float(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        fields = ("status", "result", "error_code", "error")
        latched: list = []
        # no silent waits: every `interval` s of waiting, log why (waits.report)
        interval = self._store.settings.wait_report_interval
        report_at = time.monotonic() + interval
        if self._queued and (timeout is None or timeout > 0):
            # run() just queued it: it exists and has not ended, so skip the read that would
            # say so and wait at once (the wait reads the record in its own round trip)
            rec = self._store.wait_job(
                self._job_id, min(5.0, interval, timeout or 5.0), *fields, latched=latched
            )
        else:
            rec = self._store.job(self._job_id, *fields)
        self._queued = False
        while True:
            status = rec.get("status")
            if status is None:
                raise JobNotFoundError(f"job {self._job_id!r} does not exist (or its record expired)")
            if (
                status in FINAL_JOB_STATUSES
                and self._store.replication.want
                and not (latched and latched[-1])
            ):
                # replicated writes: a worker wakes waiters only once a replica holds the
                # result (FINISH, WAIT, NOTIFY); a final status read before that could be
                # lost by a failover, so wait for the announcement (bounded by the WAIT's)
                latched.append(True)
                rec = (
                    self._store.wait_job(
                        self._job_id, self._store.settings.wait_timeout_ms / 1000 + 1.0, *fields
                    )
                    or rec
                )
                continue
            if status == "DONE":
                result = (
                    _decode_program_result(rec["result"])
                    if self.primitive_id == "executor"
                    else codec.decode_result(rec["result"])
                )
                self._result = self._transform(result) if self._transform else result
                return self._result
            if status in FINAL_JOB_STATUSES:
                raise error_for_code(rec.get("error_code"), rec.get("error") or status, self._job_id)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobTimeoutError(f"job {self._job_id} is still {status} after {timeout} s")
            now = time.monotonic()
            if now >= report_at:
                waits.report(self._store, self._job_id)
                report_at = now + interval
            # wait on the job's latch and re-read in the same round trip; re-check every 5 s
            # (and when the next report is due)
            chunk = min(5.0, max(report_at - now, 0.01))
            rec = self._store.wait_job(
                self._job_id, chunk if left is None else min(left, chunk), *fields, latched=latched
            )

    def cancel(self) -> bool:
        """Cancel a queued job (it never runs). A running job finishes: returns False."""
        outcome = self._store.cancel_job(self._job_id)
        if outcome == "not_found":
            raise JobNotFoundError(f"job {self._job_id!r} does not exist (or its record expired)")
        return outcome in ("cancelled", "CANCELLED")

    # ------------------------------------------------------------------ details
    def backend(self):
        if self._service is not None and self._backend:
            return self._service.backend(self._backend)
        return self._backend

    def error_message(self) -> str | None:
        rec = self._store.job(self._job_id, "status", "error")
        return rec.get("error") or None if rec.get("status") in ("ERROR", "CANCELLED") else None

    def metrics(self) -> dict:
        """Timestamps (ISO-8601 UTC) and the seconds the job ran on a worker."""
        rec = self._store.job(self._job_id, "created", "running", "finished", "usage", "attempts", "worker")
        usage = float(rec["usage"]) if rec.get("usage") else None
        return {
            "timestamps": {
                "created": iso(rec.get("created")),
                "running": iso(rec.get("running")),
                "finished": iso(rec.get("finished")),
            },
            "usage": {"seconds": usage, "quantum_seconds": usage},
            "attempts": int(rec.get("attempts") or 0),
            "worker": rec.get("worker") or None,
        }

    # ------------------------------------------------------------------ IBM's job API
    def _summary(self) -> dict:
        rec = self._store.job(self._job_id, "summary")
        if not rec:
            raise JobNotFoundError(f"job {self._job_id!r} does not exist (or its record expired)")
        return json.loads(rec.get("summary") or "{}")

    @property
    def tags(self) -> list[str]:
        """The job's tags (``options.environment.job_tags`` at submit, or ``update_tags``)."""
        tags = self._summary().get("tags") or []
        return list(tags) if isinstance(tags, list) else []  # cjson writes [] as {}

    def update_tags(self, new_tags: list[str]) -> list[str]:
        """Replace the job's tags, as IBM's; returns the new tags."""
        if not isinstance(new_tags, (list, tuple)) or not all(isinstance(t, str) for t in new_tags):
            raise InvalidInputError(f"new_tags must be a list of strings, not {new_tags!r:.80}")
        if self._store.update_tags(self._job_id, list(new_tags)) == "not_found":
            raise JobNotFoundError(f"job {self._job_id!r} does not exist (or its record expired)")
        return list(new_tags)

    def usage(self) -> float:
        """Seconds the job ran on a worker (IBM's quantum seconds); 0 before it ran."""
        return float(self._store.job(self._job_id, "usage").get("usage") or 0.0)

    @property
    def inputs(self) -> dict:
        """The job's input: ``{"pubs": [...], "options": {...}, "version": 2, ...}`` as IBM's.

        The object ``run()`` returned keeps them; from another process they are read from
        the job's payload, which the worker deletes when the job ends (to keep Redis small).
        """
        if self._inputs is not None:
            return self._inputs
        payload = self._store.job(self._job_id, "payload").get("payload")
        if not payload:
            raise JobNotFoundError(
                f"the inputs of job {self._job_id} are no longer stored: a job's payload is "
                "deleted when it ends; use the job object that run() returned"
            )
        if self.primitive_id == "executor":  # IBM's executor inputs: the params model's JSON
            return dict(json.loads(payload)["params"])
        job = codec.decode_payload(payload, max_bytes=None)
        ibm = job.options.get("ibm") or {"options": {k: v for k, v in job.options.items() if k != "api"}}
        return {"pubs": job.pubs, **ibm}

    @property
    def instance(self) -> str | None:
        return None

    @property
    def private(self) -> bool:
        return False

    def logs(self) -> str:
        """Jobs keep no log here; their error, if any, is ``error_message()``."""
        return ""

    def wait_for_final_state(self, timeout: float | None = None) -> None:
        """Block until the job ends (IBM's name); ``JobTimeoutError`` after ``timeout`` s."""
        try:
            self.result(timeout=timeout)
        except JobTimeoutError:
            raise
        except Exception:  # failed or cancelled: final, which is all this waits for
            pass

    @property
    def creation_date(self) -> datetime | None:
        created = self._store.job(self._job_id, "created").get("created")
        return datetime.fromtimestamp(float(created), tz=UTC) if created else None

    def __repr__(self) -> str:
        return f"<RuntimeJobV2('{self._job_id}', '{self.primitive_id}')>"


RuntimeJob = RuntimeJobV2


def _decode_program_result(raw: str) -> Any:
    """An executor job's stored result (IBM's ``QuantumProgramResultModel`` v2.0 JSON), read
    as IBM's client reads it: ``ExecutorResultDecoder`` (pydantic), then the client-side
    decoder its semantic role names (``executor_sampler``/``executor_estimator``: a
    ``PrimitiveResult``); a plain ``Executor`` program stays a ``QuantumProgramResult``."""
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.decoders.defaults import DEFAULT_DECODERS

    return reduce(
        lambda result, decoder: decoder.decode(result) if decoder.is_applicable(result) else result,
        DEFAULT_DECODERS["executor"],
        raw,
    )
