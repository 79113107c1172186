"""``QiskitRuntimeService``: the producer's connection to a session-broker deployment.

It holds the Redis connection (a ``Store``) that every Session, primitive and job made
from it shares, lists backends that have live workers, re-attaches to jobs by id, and
owns the one submit path every primitive uses.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from session_broker import backends as catalog
from session_broker.backends import BrokerBackend
from session_broker.core.config import get_settings, with_url
from session_broker.core.connection import redact, redis_client
from session_broker.core.ids import new_id
from session_broker.core.instances import instance_from
from session_broker.core.messages import task_message
from session_broker.core.read import JobQuery, iter_jobs
from session_broker.core.store import Store, instance_error
from session_broker.errors import (
    InvalidInputError,
    JobNotFoundError,
    OptionNotSupportedError,
    UnknownBackendError,
)
from session_broker.inputs import jobs_filters
from session_broker.job import RuntimeJobV2
from session_broker.waits import warn_no_worker


class QiskitRuntimeService:
    """Connect to ``url`` (default ``SESSION_BROKER_URL``, else ``redis://localhost:6379/0``).

    ``channel``, ``token`` and ``instance`` are accepted so IBM code runs unchanged; access
    control here is Redis's own (password, TLS, ACL users): see docs/operator-guide.md, Security and the trust model.
    """

    # this process is the producer of the sessions it opens, and says so while it lives
    # (session._ProducerBeat); the REST front is not: its sessions' producers are its clients
    beats_producer = True
    _instance = ""  # the instance its work counts against; '' for none (set in __init__)

    def __init__(
        self,
        url: str | None = None,
        channel: str | None = None,
        token: str | None = None,
        instance: str | None = None,
        **_ignored,
    ):
        self._settings = with_url(get_settings(), url)
        # every call a producer makes raises our typed errors, never redis-py's
        self._store = Store(self._settings, client=redis_client(self._settings, typed_errors=True))
        self._store.ping()
        self.channel = channel or "local"
        self._instance = self._check_instance(instance)

    def _check_instance(self, instance: str | None) -> str:
        """The instance this service's jobs and sessions count against: '' while the deployment
        has none configured (``instance`` is then ignored, as before instances existed); an
        unknown one is refused, naming those there are."""
        name = instance_from(instance)
        if not name:
            return ""
        known = self._store.instances()
        if not known:
            return ""
        if name not in known:
            raise instance_error("unknown_instance", ",".join(known), name)
        return name

    def active_instance(self) -> str | None:
        """The instance this service's work counts against (IBM's name), or None."""
        return self._instance or None

    @property
    def url(self) -> str:
        return self._settings.url

    # ------------------------------------------------------------------ backends
    def backends(
        self,
        name: str | None = None,
        min_num_qubits: int | None = None,
        instance: str | None = None,
        dynamic_circuits: bool | None = None,
        filters: Callable[[BrokerBackend], bool] | None = None,
        *,
        simulator: bool | None = None,
        operational: bool | None = True,
        use_fractional_gates: bool | None = False,
        calibration_id: str | None = None,
        include_mocks: bool = False,
        **kwargs,
    ) -> list[BrokerBackend]:
        """Catalog backends, as IBM's ``service.backends()`` filters them.

        ``operational=True`` (the default) keeps backends with at least one live worker;
        ``operational=False`` lists those without; ``None`` lists all. ``simulator=True``
        keeps the ideal simulators, ``simulator=False`` the simulated devices (IBM's guides:
        ``least_busy(operational=True, simulator=False)`` for a device), by
        ``backend.simulator``.
        ``dynamic_circuits`` keeps backends whose target runs control flow. Other keywords
        are IBM's simple filters: a value an attribute of ``backend.configuration()`` (such
        as ``dynamic_reprate_enabled=True``, ``open_pulse=False``) or of ``backend.status()``
        must equal; a name neither has is refused (IBM's would silently match nothing).
        ``use_fractional_gates`` is IBM's: ``False`` (the default) drops the fractional gates
        (``rzz``, ``rx``) from the backends whose snapshot has them, ``True``/``None`` keeps
        them (see ``backend()``); ``include_mocks`` is accepted (there are no mock backends).
        """
        if use_fractional_gates not in (None, False, True):
            raise InvalidInputError(
                f"use_fractional_gates must be a bool or None, not {use_fractional_gates!r}"
            )
        live = {w.get("backend") for w in self._store.live_workers()} if operational is not None else set()
        out = []
        name = catalog.canonical(name) if name else name
        for backend in catalog.known_backends():
            spec = catalog.get_spec(backend)
            if name and backend != name:
                continue
            if operational is not None and (backend in live) != operational:
                continue
            if min_num_qubits and spec.num_qubits < min_num_qubits:
                continue
            if simulator is not None and (spec.kind == "ideal") != bool(simulator):
                continue
            if calibration_id is not None and calibration_id != catalog.calibration_id(backend):
                continue
            obj = BrokerBackend(backend, service=self, use_fractional_gates=use_fractional_gates)
            if dynamic_circuits is not None and ("if_else" in obj.target.operation_names) != dynamic_circuits:
                continue
            out.append(obj)
        if kwargs:
            out = self._simple_filters(out, kwargs)
        return [b for b in out if filters is None or filters(b)]

    _STATUS_FIELDS = ("backend_name", "backend_version", "operational", "pending_jobs", "status_msg")

    def _simple_filters(self, found: list[BrokerBackend], criteria: dict) -> list[BrokerBackend]:
        """IBM's ``filter_backends``: configuration attributes, else status ones; a name that
        no backend's configuration or status has is refused with the names there are."""
        known = set().union(*(vars(catalog._configuration(n)) for n in catalog.known_backends()))
        unknown = sorted(k for k in criteria if k not in known and k not in self._STATUS_FIELDS)
        if unknown:
            raise InvalidInputError(
                f"unknown backend filter(s) {', '.join(unknown)}: a filter keyword names an attribute of "
                f"backend.configuration() ({', '.join(sorted(k for k in known if not k.startswith('_')))}) "
                f"or backend.status() ({', '.join(self._STATUS_FIELDS)}); or pass filters=lambda b: ..."
            )
        for key, value in criteria.items():
            if key in known:
                found = [b for b in found if getattr(b.configuration(), key, None) == value]
            else:
                found = [b for b in found if getattr(b.status(), key, None) == value]
        return found

    def backend(
        self,
        name: str = "ibmq_qasm_simulator",
        instance: str | None = None,
        use_fractional_gates: bool | None = False,
        calibration_id: str | None = None,
        **_kw,
    ) -> BrokerBackend:
        """The catalog backend ``name`` or its alias (``fake_almaden`` is ``ibm_almaden``); its
        jobs queue until a worker for it is up.

        ``use_fractional_gates=True`` needs a backend whose target has IBM's fractional gates
        (``rzz``, ``rx``): the ideal simulators and the snapshots that have them; on another
        device it is refused (its snapshot has none, so they could not be simulated as the
        device's). ``False`` (IBM's default) drops them from a snapshot that has them
        (``ibm_fractional``): its target, ``configuration()`` and ``properties()`` lack
        ``rzz``/``rx``, as IBMBackend's do; ``None`` keeps them. The ideal simulators keep every
        gate Aer runs whatever the flag. ``calibration_id`` must be the backend's one calibration (or None)."""
        if use_fractional_gates not in (None, False, True):
            raise InvalidInputError(
                f"use_fractional_gates must be a bool or None, not {use_fractional_gates!r}"
            )
        backend = BrokerBackend(
            catalog.canonical(name), service=self, use_fractional_gates=use_fractional_gates
        )
        if use_fractional_gates and not {"rzz", "rx"} <= set(backend.target.operation_names):
            with_them = [
                n
                for n in catalog.known_backends()
                if {"rzz", "rx"} <= set(catalog.build_target(n).operation_names)
            ]
            raise OptionNotSupportedError(
                f"use_fractional_gates=True: backend {backend.name!r} has no fractional gates (rzz, rx) in "
                f"its calibration snapshot, so they cannot be simulated as that device's. Backends that "
                f"have them: {', '.join(with_them)}; or use use_fractional_gates=False"
            )
        if calibration_id is not None and calibration_id != catalog.calibration_id(backend.name):
            raise InvalidInputError(
                f"calibration_id {calibration_id[:64]!r} does not exist for backend {backend.name!r}: it has "
                f"one calibration, {catalog.calibration_id(backend.name)!r}; or omit calibration_id"
            )
        return backend

    get_backend = backend

    def least_busy(
        self,
        min_num_qubits: int | None = None,
        instance: str | None = None,
        filters: Callable[[BrokerBackend], bool] | None = None,
        **kwargs,
    ) -> BrokerBackend:
        """The operational backend with the fewest jobs waiting per live worker."""
        kwargs.setdefault("operational", True)
        found = self.backends(min_num_qubits=min_num_qubits, filters=filters, **kwargs)
        if not found:
            asked = ", ".join(
                f"{k}={v!r}" for k, v in {"min_num_qubits": min_num_qubits, **kwargs}.items() if v is not None
            )
            live = sorted({w.get("backend") for w in self._store.live_workers()})
            widths = ", ".join(f"{n} ({catalog.get_spec(n).num_qubits} qubits)" for n in live)
            raise UnknownBackendError(
                f"no backend matches {asked or 'the filters'}"
                f"{' and ' + repr(filters) if filters else ''}. Backends with a live worker: "
                f"{widths or 'none'}; start one with `session-broker worker --backend NAME` "
                f"(catalog: {', '.join(catalog.known_backends())})"
            )
        workers: dict[str, int] = {}
        for w in self._store.live_workers():
            workers[w.get("backend")] = workers.get(w.get("backend"), 0) + 1
        return min(found, key=lambda b: self._store.queue_length(b.name) / max(1, workers.get(b.name, 0)))

    # ------------------------------------------------------------------ jobs
    def job(self, job_id: str) -> RuntimeJobV2:
        """Re-attach to any job, from any process."""
        if not isinstance(job_id, str):
            raise JobNotFoundError(f"job id must be a string, not {type(job_id).__name__}")
        return RuntimeJobV2.attach(job_id, self._store, service=self)

    def jobs(
        self,
        limit: int | None = 10,
        skip: int = 0,
        backend_name: str | None = None,
        pending: bool | None = None,
        program_id: str | None = None,
        instance: str | None = None,
        job_tags: list[str] | None = None,
        session_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        descending: bool = True,
        backend: str | None = None,
        **_ignored,
    ) -> list[RuntimeJobV2]:
        """Jobs, as IBM's ``service.jobs()`` filters them (``backend=`` is ``backend_name=``).

        ``pending`` means QUEUED or RUNNING; ``job_tags`` keeps jobs that have all of them;
        ``instance`` keeps the jobs of that instance (a name or its CRN); naive datetimes are
        local time, as IBM's client reads them.
        """
        limit, skip, after, before = jobs_filters(limit, skip, created_after, created_before)
        query = JobQuery(
            session=session_id,
            backend=backend_name or backend,
            program=program_id,
            pending=pending,
            instance=instance_from(instance) or None,
            tags=frozenset(job_tags or ()),
            after=after,
            before=before,
            newest_first=descending,
        )
        found = iter_jobs(self._store, query)
        skip = min(skip, sys.maxsize)  # islice's bounds: a skip or limit past them reads everything
        stop = None if limit is None or skip + limit > sys.maxsize else skip + limit
        page = itertools.islice(found, skip, stop)
        return [RuntimeJobV2.attach(jid, self._store, service=self) for jid, _ in page]

    def usage(self) -> dict:
        """IBM's instance usage: with an instance, its consumed, limit and remaining seconds
        in the current period (and when it resets); without, seconds that jobs ran on workers
        here (no limit)."""
        if self._instance:
            return instance_usage(self._store, self._instance)
        return {
            "usage_consumed_seconds": self._store.usage_seconds(),
            "usage_limit_seconds": None,
            "usage_limit_reached": False,
            "usage_remaining_seconds": None,
        }

    # ------------------------------------------------------------------ the submit path
    def _submit(
        self,
        *,
        primitive: str,
        backend: str,
        session,
        payload: str,
        summary: dict,
        max_execution_time: int | None,
        transform=None,
    ) -> RuntimeJobV2:
        """Record and queue one job in one atomic step (see ``state.Store.submit``)."""
        store = self._store
        job_id = new_id()
        sid = session.session_id if session is not None else ""
        if session is not None and session.mode == "session":
            queue = store.keys.session_queue(sid)
        else:
            queue = store.keys.backend_queue(backend)
        flower = {
            "session": sid or None,
            "backend": backend,
            "pubs": summary.get("pubs"),
            "shots": summary.get("shots"),
        }
        argsrepr = (
            f"job={job_id} session={sid or '-'} backend={backend} "
            f"pubs={summary.get('pubs')} shots={summary.get('shots')}"
        )
        if self._instance:  # Flower shows the instance among the task's arguments
            flower["instance"] = self._instance
            argsrepr += f" instance={self._instance}"

        # Aer runs in C++, which a soft limit cannot interrupt: the hard limit (1 s later)
        # kills the pool process, and the worker records the job as ERROR (tasks.JobRequest).
        soft = float(max_execution_time) if max_execution_time else None
        message = task_message(
            primitive,
            job_id,
            queue,
            flower,
            argsrepr=argsrepr,
            soft_time_limit=soft,
            time_limit=soft + 1 if soft else None,
        )
        submitted = store.submit(
            job_id, sid, backend, primitive, payload, message, queue, summary, instance=self._instance
        )
        job = RuntimeJobV2(
            job_id,
            store,
            service=self,
            backend=backend,
            session_id=sid or None,
            primitive=primitive,
            transform=transform,
        )
        job._queued = submitted.status == "QUEUED"
        if job._queued:
            self._check_served(backend, job_id)
        return job

    SERVED_FOR = 10.0  # s: a backend seen served is not looked up again for this long

    def _check_served(self, backend: str, job_id: str) -> None:
        """Warn at once when no live worker serves the backend (reads only; a backend found
        served is not looked up again for ``SERVED_FOR`` s, so a busy producer pays nothing)."""
        # backend -> when a live worker was last seen (monotonic); made on first use, as
        # subclasses (the REST API's per-tenant services) build themselves without __init__
        served: dict[str, float] = self.__dict__.setdefault("_served", {})
        now = time.monotonic()
        if now - served.get(backend, -self.SERVED_FOR) < self.SERVED_FOR:
            return
        if warn_no_worker(self._store, backend, job_id):
            served[backend] = now

    def __repr__(self) -> str:
        return f"<QiskitRuntimeService({redact(self.url)!r})>"


def instance_usage(store: Store, name: str) -> dict:
    """IBM's usage fields for one instance (``service.usage()``, REST ``/instances/usage``)."""
    rows = store.instance_report(name)
    if not rows:
        return {
            "instance": name,
            "usage_consumed_seconds": 0.0,
            "usage_limit_seconds": None,
            "usage_allocation_seconds": None,
            "usage_limit_reached": False,
            "usage_remaining_seconds": None,
        }
    row = rows[0]
    limit = row["settings"].usage_limit
    used = float(row["used"])
    return {
        "instance": name,
        "usage_consumed_seconds": used,
        "usage_limit_seconds": limit,
        "usage_allocation_seconds": limit,
        "usage_limit_reached": limit is not None and used >= limit,
        "usage_remaining_seconds": None if limit is None else max(limit - used, 0.0),
        "usage_period": row["settings"].period,
        "usage_period_resets_at": datetime.fromtimestamp(float(row["reset"]), UTC).isoformat(),
    }


_default: QiskitRuntimeService | None = None
_default_lock = threading.Lock()


def default_service() -> QiskitRuntimeService:
    """The service used when none is given (``Session(backend="...")``, ``SamplerV2(mode="...")``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = QiskitRuntimeService()
        return _default
