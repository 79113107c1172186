"""``Session`` and ``Batch``: thin client objects over the state machine in ``core/store.py``.

A ``Session`` gets exclusive, consecutive use of one worker of its backend (its jobs go to
its own queue, which only its pinned worker consumes). A ``Batch`` has the same lifecycle
but its jobs go to the backend's shared queue and run in parallel on any workers.

Primitives created inside ``with Session(...)`` without a mode use that session. The
"current session" is a context variable (right for threads that open their own sessions
and for asyncio); a thread started inside the ``with`` block does not inherit context
variables, so when it has none we fall back to the one session that is open in a ``with``
block anywhere in the process (with two or more, the choice would be a guess: we ask for
``mode=`` instead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from contextvars import ContextVar

import redis

from session_broker import backends as catalog
from session_broker.backends import BrokerBackend
from session_broker.core.ids import hostname, iso, new_id
from session_broker.core.read import time_left
from session_broker.core.store import SESSION_STATUS, Store
from session_broker.errors import (
    InvalidInputError,
    InvalidMaxTimeError,
    SessionBrokerError,
    SessionNotFoundError,
)
from session_broker.service import QiskitRuntimeService, default_service

log = logging.getLogger(__name__)
_current: ContextVar[Session | None] = ContextVar("session_broker_session", default=None)
_entered: list[Session] = []
_entered_lock = threading.Lock()

# IBM's grammar (hms_to_seconds reads "\d+[dhms]" parts): no space inside a part, "1 h" is
# refused here with what is allowed rather than by IBM's parser with an empty message
_MAX_TIME = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_max_time(value, system_max: int) -> int:
    """``max_time`` as seconds: an int, or a string of d/h/m/s parts such as "2h 30m 40s"."""
    allowed = (
        f"an int of seconds or a string of d/h/m/s parts such as '2h 30m 40s' or '1d', "
        f"greater than 0 and at most the system max_time ({system_max} s)"
    )
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidMaxTimeError(f"max_time={value!r} is not valid: expected {allowed}")
    if isinstance(value, str):
        match = _MAX_TIME.match(value)
        if not value.strip() or not match or not any(match.groups()):
            raise InvalidMaxTimeError(f"max_time={value!r} is not valid: expected {allowed}")
        # IBM's own parser does the arithmetic; our grammar above refuses what it would skip
        # silently ("2h 30x" is 2 h to IBM's parser, an error here).
        # lazy: qiskit-ibm-runtime takes ~2 s to import; only a string max_time needs it here
        from qiskit_ibm_runtime.utils.converters import hms_to_seconds

        seconds = hms_to_seconds(value)
    else:
        seconds = value
    if seconds <= 0 or seconds > system_max:
        raise InvalidMaxTimeError(f"max_time={value!r} ({seconds} s) is out of bounds: expected {allowed}")
    return seconds


def current_context_session() -> Session | None:
    """The session of this thread's (or asyncio task's) own ``with`` block, if any."""
    return _current.get()


def current_session() -> Session | None:
    session = _current.get()
    if session is not None:
        return session
    with _entered_lock:
        live = list(dict.fromkeys(_entered))
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        raise InvalidInputError(
            f"{len(live)} sessions are open in `with` blocks of other threads; this thread has none "
            "of its own, so pass the session explicitly: SamplerV2(mode=session) / Estimator(session=session)"
        )
    return None


class _ProducerBeat:
    """Keeps ``P:s:<sid>:producer`` alive for every session this process opened and has not
    closed, so operators can tell an abandoned session (its producer killed inside ``with
    Session``) from a slow one: ``session-broker sessions``, the Jobs page and a waiting
    ``result()`` say "producer gone". One daemon thread per Redis client (a Redis that is away
    stalls only its own sessions' beats, for as long as its client retries); off the job path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[object, _BeatLine] = {}  # Redis client -> its sessions and thread
        self.ident = f"{hostname()}:{os.getpid()}"
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        """A forked child: a fresh lock (a beat thread may have held the parent's at the
        fork), none of the parent's sessions, no thread until its own first session."""
        self._lock = threading.Lock()
        self._lines = {}
        self.ident = f"{hostname()}:{os.getpid()}"

    def add(self, store: Store, sid: str) -> None:
        pipe = store.redis.pipeline(transaction=False)
        pipe.hset(store.keys.session(sid), "producer", self.ident)
        pipe.set(store.keys.session_producer(sid), self.ident, px=_ttl_ms(store))
        pipe.execute()
        with self._lock:
            line = self._lines.get(store.redis)
            if line is None or not line.thread.is_alive():  # the first, or one that died
                line = _BeatLine(self, store, line.sessions if line else {})
                self._lines[store.redis] = line
            line.sessions[sid] = store
        line.wake.set()

    def remove(self, store: Store, sid: str) -> None:
        with self._lock:
            line = self._lines.get(store.redis)
            if line is not None:
                line.sessions.pop(sid, None)
        with contextlib.suppress(redis.RedisError, SessionBrokerError):
            store.redis.delete(store.keys.session_producer(sid))

    def run(self, line: _BeatLine) -> None:
        while True:
            line.wake.wait(line.interval if line.sessions else None)  # none held: until add()
            line.wake.clear()
            with self._lock:
                held = list(line.sessions.items())  # after the sleep: a closed one is gone
            for sid, store in held:
                try:
                    if store.redis.hget(store.keys.session(sid), "state") in (None, "closed"):
                        self.remove(store, sid)  # closed by someone else (CLI, timers): nothing to say
                        continue
                    store.redis.set(store.keys.session_producer(sid), self.ident, px=_ttl_ms(store))
                    with self._lock:
                        closed_meanwhile = sid not in line.sessions
                    if closed_meanwhile:  # remove() ran (and deleted the key) before our SET: undo it
                        store.redis.delete(store.keys.session_producer(sid))
                except Exception as exc:  # noqa: BLE001 - Redis away or full (our typed errors too): the next beat retries; the thread must live on
                    log.debug("producer beat for session %s failed: %s", sid, exc)


class _BeatLine:
    """The sessions of one Redis client and the thread that beats for them."""

    def __init__(self, beat: _ProducerBeat, store: Store, sessions: dict[str, Store]) -> None:
        self.sessions = sessions
        self.interval = store.settings.producer_beat
        self.wake = threading.Event()
        self.thread = threading.Thread(
            target=beat.run, args=(self,), name="session-broker-producer-beat", daemon=True
        )
        self.thread.start()


def _ttl_ms(store: Store) -> int:
    return int(3000 * store.settings.producer_beat)  # three missed refreshes: gone


_beat = _ProducerBeat()


class Session:
    """A Qiskit Runtime-style session on one backend (see the README and the guide)."""

    mode = "session"

    def __init__(
        self,
        backend=None,
        max_time: int | str | None = None,
        *legacy,
        service: QiskitRuntimeService | None = None,
        create_new: bool = True,
        _session_id: str | None = None,
    ):
        """``Session(backend, max_time)`` as qiskit-ibm-runtime 0.51, or the guide's
        ``Session(service=service, backend=name)`` (also positionally: service first).

        ``backend`` is a name, a backend from ``service.backend()``, or a fake backend /
        ``AerSimulator`` as IBM's local testing mode passes them (mapped to the catalog
        backend that simulates it).
        """
        if isinstance(backend, QiskitRuntimeService):  # the old order: (service, backend, max_time)
            service, backend, max_time = backend, max_time, (legacy[0] if legacy else None)
        elif legacy:
            raise InvalidInputError(
                "Session takes (backend, max_time) positionally; pass service= and other arguments by keyword"
            )
        self._backend_object = backend if isinstance(backend, BrokerBackend) else None  # its target
        if isinstance(backend, BrokerBackend):
            service = service or backend.service
            name = backend.name
        elif isinstance(backend, str):
            name = catalog.canonical(backend)
        elif backend is None:
            raise InvalidInputError(
                f"{type(self).__name__} needs a backend: a name such as 'ibmq_qasm_simulator' or "
                "service.backend(name); known backends: " + ", ".join(catalog.known_backends())
            )
        elif hasattr(backend, "target") or type(backend).__name__ == "AerSimulator":
            name = catalog.name_of(backend)
        else:
            raise InvalidInputError(
                f"backend must be a name or a backend object, not {type(backend).__name__}"
            )
        catalog.get_spec(name)
        if service is not None and not isinstance(service, QiskitRuntimeService):
            raise InvalidInputError(f"service must be a QiskitRuntimeService, not {type(service).__name__}")
        self._service = service or default_service()
        self._backend = name
        self._store = self._service._store
        system_max = self._store.system_config()["max_time"]
        if _session_id is not None:  # from_id
            self._session_id = _session_id
            self._max_time = int(self._store.session(_session_id, tick=False)["max_time"])
            return
        self._max_time = system_max if max_time is None else parse_max_time(max_time, system_max)
        self._session_id = new_id()
        self._max_time = self._store.open_session(
            self._session_id,
            name,
            self.mode,
            self._max_time,
            instance=self._service._instance,
            explicit=max_time is not None,
        )
        if self._service.beats_producer:
            _beat.add(self._store, self._session_id)
        self._tokens: list = []

    # ------------------------------------------------------------------ identity
    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def service(self) -> QiskitRuntimeService:
        return self._service

    @property
    def max_time(self) -> int:
        return self._max_time

    def backend(self) -> str:
        return self._backend

    @classmethod
    def from_id(cls, session_id: str, service: QiskitRuntimeService | None = None) -> Session:
        """Attach to an existing session; an unknown id raises and creates nothing."""
        service = service or default_service()
        if not isinstance(session_id, str) or not session_id:
            raise SessionNotFoundError(f"session id must be a non-empty string, not {session_id!r}")
        data = service._store.session(session_id, tick=False)
        kind = Batch if data.get("mode") == "batch" else Session
        if cls is not Session and kind is not cls:
            raise SessionNotFoundError(f"{session_id} is a {kind.__name__}, not a {cls.__name__}")
        return kind(data["backend"], service=service, _session_id=session_id)

    # ------------------------------------------------------------------ lifecycle
    def status(self) -> str:
        """'Pending', 'In progress, accepting new jobs', 'In progress, not accepting new jobs' or 'Closed'."""
        return SESSION_STATUS[self._store.tick(self._session_id) or "closed"]

    def details(self) -> dict:
        data = self._store.session(self._session_id)
        state = data["state"]
        active_timeout = time_left(data, data.get("active_timeout_left"))
        return {
            "id": data["id"],
            "backend_name": data["backend"],
            "interactive_timeout": int(data["interactive_timeout"]),
            "max_time": int(data["max_time"]),
            "active_timeout": active_timeout,
            "state": state,
            "accepting_jobs": data.get("accepting") == "1",
            "last_job_started": iso(data.get("last_job_started")),
            "last_job_completed": iso(data.get("last_job_completed")),
            "started_at": iso(data.get("started_at")),
            "closed_at": iso(data.get("closed_at")),
            "mode": data.get("mode"),
            "worker": data.get("worker") or None,
            "usage_time": round(float(data.get("usage") or 0), 6),
            "jobs": {k: int(data.get(k) or 0) for k in ("queued", "running", "done", "failed", "cancelled")},
            "closed_reason": data.get("closed_reason") or None,
        }

    def usage(self) -> float:
        """Seconds of worker time the session's jobs have used."""
        return float(self._store.session(self._session_id, tick=False).get("usage") or 0)

    def close(self) -> None:
        """Stop accepting jobs; queued and running jobs finish, then the session closes."""
        self._store.close_session(self._session_id)
        _beat.remove(self._store, self._session_id)

    def cancel(self) -> None:
        """Close now: queued jobs are CANCELLED and never run; a running job finishes."""
        self._store.cancel_session(self._session_id)
        _beat.remove(self._store, self._session_id)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Session:
        if not hasattr(self, "_tokens"):
            self._tokens = []
        self._tokens.append(_current.set(self))
        with _entered_lock:
            _entered.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _current.reset(self._tokens.pop())
        with _entered_lock:
            _entered.remove(self)
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(id='{self._session_id}', backend='{self._backend}')>"


class Batch(Session):
    """Jobs tracked, closed and cancelled together, run in parallel on any workers."""

    mode = "batch"
