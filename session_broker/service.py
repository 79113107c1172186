"""``QiskitRuntimeService``: the producer's connection to a session-broker deployment.

It holds the Redis connection (a ``Store``) that every Session, primitive and job made
from it shares, lists backends that have live workers, re-attaches to jobs by id, and
owns the one submit path every primitive uses.
"""

from __future__ import annotations

import threading

from session_broker import backends as catalog
from session_broker.backends import BrokerBackend
from session_broker.config import get_settings, with_url
from session_broker.job import RuntimeJobV2
from session_broker.messages import task_message
from session_broker.state import Store, new_id


class QiskitRuntimeService:
    """Connect to ``url`` (default ``SESSION_BROKER_URL``, else ``redis://localhost:6379/0``).

    ``channel``, ``token`` and ``instance`` are accepted so IBM code runs unchanged; access
    control here is Redis's own (password, TLS, ACL users): see the README's trust model.
    """

    def __init__(self, url: str | None = None, channel: str | None = None,
                 token: str | None = None, instance: str | None = None, **_ignored):
        self._settings = with_url(get_settings(), url)
        self._store = Store(self._settings)
        self._store.ping()
        self.channel = channel or "local"

    @property
    def url(self) -> str:
        return self._settings.url

    # ------------------------------------------------------------------ backends
    def backends(self, name: str | None = None, min_num_qubits: int | None = None,
                 **_filters) -> list[BrokerBackend]:
        """Backends with at least one live worker, in catalog order."""
        live = {w.get("backend") for w in self._store.live_workers()}
        out = []
        for backend in catalog.known_backends():
            if backend not in live or (name and backend != name):
                continue
            spec = catalog.get_spec(backend)
            if min_num_qubits and spec.num_qubits < min_num_qubits:
                continue
            out.append(BrokerBackend(backend, service=self))
        return out

    def backend(self, name: str = "ibmq_qasm_simulator", **_kw) -> BrokerBackend:
        """The catalog backend ``name`` (its jobs queue until a worker for it is up)."""
        catalog.get_spec(name)
        return BrokerBackend(name, service=self)

    get_backend = backend

    def least_busy(self, min_num_qubits: int | None = None, **_kw) -> BrokerBackend:
        live = self.backends(min_num_qubits=min_num_qubits)
        if not live:
            from session_broker.errors import UnknownBackendError

            raise UnknownBackendError("no backend has a live worker; start one with "
                                      "`session-broker worker --backend NAME`")
        return live[0]

    # ------------------------------------------------------------------ jobs
    def job(self, job_id: str) -> RuntimeJobV2:
        """Re-attach to any job, from any process."""
        return RuntimeJobV2.attach(job_id, self._store, service=self)

    def jobs(self, session_id: str | None = None, backend: str | None = None,
             limit: int | None = 10, skip: int = 0, pending: bool | None = None) -> list[RuntimeJobV2]:
        """Jobs, newest first; filtered by session, backend and pending (QUEUED/RUNNING)."""
        store = self._store
        if session_id:
            ids = list(reversed(store.session_job_ids(session_id)))
        else:
            ids = store.redis.zrevrange(store.keys.jobs, 0, -1)
        out = []
        for jid in ids:
            rec = store.job(jid, "backend", "status")
            if not rec or (backend and rec.get("backend") != backend):
                continue
            if pending is not None and (rec.get("status") in ("QUEUED", "RUNNING")) != pending:
                continue
            if skip:
                skip -= 1
                continue
            out.append(RuntimeJobV2.attach(jid, store, service=self))
            if limit is not None and len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------ the submit path
    def _submit(self, *, primitive: str, backend: str, session, payload: str, summary: dict,
                max_execution_time: int | None, transform=None) -> RuntimeJobV2:
        """Record and queue one job in one atomic step (see ``state.Store.submit``)."""
        store = self._store
        job_id = new_id()
        sid = session.session_id if session is not None else ""
        if session is not None and session.mode == "session":
            queue = store.keys.session_queue(sid)
        else:
            queue = store.keys.backend_queue(backend)
        flower = {"session": sid or None, "backend": backend, "pubs": summary.get("pubs"),
                  "shots": summary.get("shots")}
        argsrepr = (f"job={job_id} session={sid or '-'} backend={backend} "
                    f"pubs={summary.get('pubs')} shots={summary.get('shots')}")
        # Aer runs in C++, which a soft limit cannot interrupt: the hard limit (1 s later)
        # kills the pool process, and the worker records the job as ERROR (tasks.JobRequest).
        soft = float(max_execution_time) if max_execution_time else None
        message = task_message(primitive, job_id, queue, flower, argsrepr=argsrepr,
                               soft_time_limit=soft, time_limit=soft + 1 if soft else None)
        store.submit(job_id, sid, backend, primitive, payload, message, queue, summary)
        return RuntimeJobV2(job_id, store, service=self, backend=backend, session_id=sid or None,
                            primitive=primitive, transform=transform)

    def __repr__(self) -> str:
        from session_broker.state import redact

        return f"<QiskitRuntimeService({redact(self.url)!r})>"


_default: QiskitRuntimeService | None = None
_default_lock = threading.Lock()


def default_service() -> QiskitRuntimeService:
    """The service used when none is given (``Session(backend="...")``, ``SamplerV2(mode="...")``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = QiskitRuntimeService()
        return _default
