"""The session state machine: every transition of a session or job, one function each.

Read this module top to bottom to see how a session lives::

    open ──first job starts──▶ active ──idle for interactive_timeout──▶ inactive
      │                          ▲  │                                      │
      │                          │  └──────── a job is queued, a worker is pinned ◀─┘
      ├─close() with work ───▶ pending_closed ──last job ends──▶ closed
      └─cancel() / max_time / never used ─────────────────────────▶ closed

Each function runs one Lua script by name (``core/lua/<name>.lua``, through
``core.scripts``), so each transition is atomic and one round trip, whoever calls it: a
producer, a worker, the CLI. Timers are Redis keys with an expiry; ``tick`` (run by
workers, by ``status()``, by the CLI) applies the ones that ran out, so no transition
depends on a client process staying alive.

The public status strings (``session.status()`` and ``job.status()``) are defined here too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.client
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from session_broker.core import keys as K
from session_broker.core import sentinel
from session_broker.core.config import Settings, get_settings
from session_broker.core.connection import (
    Replication,
    broker_errors,
    connect,
    redact,
    redis_client,
    text_list,
    text_map,
    text_or_none,
    text_or_none_list,
)
from session_broker.core.ids import hostname
from session_broker.core.instances import COUNTER, InstanceSettings, validate_name
from session_broker.core.scripts import Scripts
from session_broker.errors import (
    BackendMismatchError,
    BrokerConnectionError,
    ConfigurationError,
    InstanceLimitError,
    JobNotFoundError,
    SessionBrokerError,
    SessionClosedError,
    SessionNotFoundError,
    UnknownInstanceError,
    UsageLimitReachedError,
)

log = logging.getLogger("session_broker")

# internal state -> what session.status() says (the guide's four strings)
SESSION_STATUS = {
    "open": "Pending",
    "active": "In progress, accepting new jobs",
    "inactive": "Pending",
    "pending_closed": "In progress, not accepting new jobs",
    "closed": "Closed",
}
JOB_STATUSES = ("INITIALIZING", "QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED")
FINAL_JOB_STATUSES = frozenset({"DONE", "ERROR", "CANCELLED"})


EVICTION_HELP = (
    "an eviction policy drops our keys when Redis is full: results vanish before "
    "they are read, sessions disappear, and an evicted timer key reads as an expired "
    "one (a session closed as max_time hours early). Set maxmemory-policy noeviction "
    "(Redis then refuses new jobs when full, with BrokerOutOfMemoryError)"
)


@dataclass
class WorkerTick:
    """What one heartbeat found: the pin (session id or ''), its epoch, the executor (pid)
    that left a pin unserved and must be replaced (or ''), the session it released (or '')."""

    pin: str
    epoch: str
    stalled: str = ""
    released: str = ""
    instances: str = ""  # the instances' change counter ('' when none are kept in Redis)


@dataclass
class Submitted:
    job_id: str
    status: str


@dataclass
class Claim:
    """What CLAIM decided (``core/lua/claim.lua``): ``run`` the job (its ``payload``, the
    ``claim`` token that fences FINISH, its ``session`` id or '' and the pin ``epoch``), or
    not, and why (``reason``)."""

    run: bool
    payload: str = ""
    claim: str = ""
    session: str = ""
    epoch: str = ""
    reason: str = ""


@dataclass
class Reconciled:
    """What RECONCILE_WORKER did: jobs requeued, the suspects to pass to the next call,
    fetched messages given back, and the fetch list now (the next call's ``stale_fetch``)."""

    requeued: int
    suspects: dict[str, str]
    given: int
    fetch: list[str]


class Store:
    """Our Redis state for one prefix: the transitions below, and plain reads."""

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None):
        self.settings = settings or get_settings()
        self.keys = K.Keys(self.settings.key_prefix)
        self.redis = client or redis_client(self.settings)
        self.scripts = Scripts(self.redis, self.settings.key_prefix)
        self.replication = Replication(self.redis, self.settings)

    @property
    def p(self) -> str:
        return self.settings.key_prefix

    def ping(self, check: bool = True) -> None:
        """Fail fast and clearly at start (the shared client retries for ~40 s later on).

        With ``check``, also warn (once a process) about Redis settings that can lose jobs.
        With Sentinel, a failover in progress (no master for a few seconds) is waited out."""
        tries = 15 if sentinel.is_sentinel(self.settings.url) else 2
        quick = connect(
            self.settings.url,
            socket_connect_timeout=3,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), tries),
            decode_responses=False,
        )
        try:
            quick.ping()
        except redis.AuthenticationError as exc:
            raise BrokerConnectionError(
                f"Redis at {redact(self.settings.url)} refused the credentials: {exc}. "
                "Check the password in SESSION_BROKER_URL (redis://:PASSWORD@host:port/0)"
            ) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise BrokerConnectionError(
                    f"Redis at {redact(self.settings.url)} needs a password: {exc}. "
                    "Put it in SESSION_BROKER_URL (redis://:PASSWORD@host:port/0)"
                ) from exc
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:  # incl. no master
            raise BrokerConnectionError(
                f"cannot reach Redis at {redact(self.settings.url)}: {str(exc).rstrip('.')}. "
                "Start one (session-broker up) or set SESSION_BROKER_URL"
            ) from exc
        finally:
            quick.close()
        if check and self.settings.url not in _CHECKED:  # once a process: producers warn, workers refuse
            try:
                self.check_server(strict=False)
            except redis.RedisError as exc:  # the check must never stop a producer
                log.warning("could not check Redis's persistence and eviction settings: %s", exc)

    def server_problems(self) -> tuple[list[str], list[str]]:
        """Read Redis's eviction and persistence settings: (refusals, warnings).

        CONFIG GET may be refused (ACL users without ``+config``, managed Redis that renames
        it): then INFO is read instead, and what neither tells is a warning, not a guess."""
        fatal: list[str] = []
        warn: list[str] = []
        cfg: dict[str, str] = {}
        try:
            for name in ("maxmemory", "maxmemory-policy", "appendonly", "save"):
                cfg.update(text_map(self.redis.config_get(name)))
        except redis.ResponseError as exc:  # NOPERM, unknown command (renamed)
            try:
                info = {**self.redis.info("memory"), **self.redis.info("persistence")}
            except redis.ResponseError as exc2:
                warn.append(
                    f"could not read Redis's settings (CONFIG GET: {exc}; INFO: {exc2}): "
                    "make sure maxmemory-policy is noeviction and appendonly is yes"
                )
                return fatal, warn
            cfg = {
                "maxmemory": str(info.get("maxmemory", "")),
                "maxmemory-policy": str(info.get("maxmemory_policy", "")),
                "appendonly": "yes" if str(info.get("aof_enabled", "")) == "1" else "no",
            }
            warn.append(
                f"CONFIG GET was refused ({exc}); read INFO instead, which does not show "
                "RDB snapshot settings"
            )
        policy = cfg.get("maxmemory-policy", "")
        limit = int(cfg.get("maxmemory") or 0)
        if policy and policy != "noeviction":
            if limit > 0:
                fatal.append(f"Redis has maxmemory-policy {policy} with maxmemory {limit}: {EVICTION_HELP}")
            else:
                warn.append(
                    f"Redis has maxmemory-policy {policy} (maxmemory 0, so nothing is evicted "
                    f"yet); should maxmemory be set, {EVICTION_HELP}"
                )
        if cfg.get("appendonly") != "yes":
            if "save" in cfg and not cfg["save"].strip():
                warn.append(
                    'Redis persists nothing (appendonly no, save ""): a Redis restart '
                    "loses every queued job, result and session. Set appendonly yes "
                    "(appendfsync everysec or always)"
                )
            elif "save" in cfg:
                warn.append(
                    f"Redis persists only RDB snapshots (appendonly no, save {cfg['save']!r}): "
                    "a Redis crash loses what changed since the last snapshot. Set appendonly yes"
                )
        return fatal, warn

    def check_server(self, strict: bool) -> list[str]:
        """Warn loudly about unsafe Redis settings; with ``strict`` (workers) refuse to start
        on an eviction policy that can drop our keys. Returns the warnings."""
        fatal, warn = self.server_problems()
        if fatal and strict:
            raise ConfigurationError(" ; ".join(fatal))
        _CHECKED.add(self.settings.url)
        for text in fatal + warn:
            if text not in _WARNED:  # one warning a process: one log line (no RuntimeWarning too)
                _WARNED.add(text)
                log.warning("UNSAFE REDIS SETTING: %s", text)
        return fatal + warn

    # ---------------------------------------------------------------- system settings
    SYSTEM_FIELDS = (
        "max_time",
        "interactive_timeout",
        "open_session_timeout",
        "result_ttl",
        "fair_share_half_life",
    )

    def publish_config(self) -> None:
        """Workers publish the operator's settings; sessions take their timers from here."""
        self.redis.hset(self.keys.config, mapping={f: getattr(self.settings, f) for f in self.SYSTEM_FIELDS})

    def system_config(self) -> dict[str, int]:
        """The deployment's settings (as published by its workers), else this process's."""
        published = self.redis.hgetall(self.keys.config)
        return {f: int(published.get(f) or getattr(self.settings, f)) for f in self.SYSTEM_FIELDS}

    # ---------------------------------------------------------------- sessions: birth
    def open_session(
        self, sid: str, backend: str, mode: str, max_time: int, instance: str = "", explicit: bool = True
    ) -> int:
        """A new session is ``open``: no worker yet; its open-session timer starts now.
        Returns its max_time (an instance's ``max_session_time`` may lower a default one)."""
        s = self.settings
        with broker_errors(s, f"open session {sid}"):
            res = self.scripts.run(
                "open_session",
                sid=sid,
                backend=backend,
                mode=mode,
                max_time=max_time,
                interactive_timeout=s.interactive_timeout,
                open_session_timeout=s.open_session_timeout,
                ttl=s.result_ttl,
                instance=instance,
                explicit="1" if explicit else "0",
            )
        if res[0] != "ok":
            raise instance_error(res[1], res[2], instance)
        return int(float(res[1]))

    # ---------------------------------------------------------------- jobs: submit
    def submit(
        self,
        job_id: str,
        session_id: str | None,
        backend: str,
        primitive: str,
        payload: str,
        message: str,
        queue: str,
        summary: dict[str, Any],
        instance: str = "",
    ) -> Submitted:
        """Record a job and queue its message, atomically.

        For a session job this also refuses closing/closed sessions, applies due timers,
        stops the open and idle timers, and puts a worker-less session in its backend's
        line. A later job of a session whose first job was cancelled is recorded as ERROR.
        """
        with broker_errors(self.settings, f"queue job {job_id}"):
            res = self._replicated(
                "submit",
                {
                    "jid": job_id,
                    "sid": session_id or "",
                    "backend": backend,
                    "primitive": primitive,
                    "payload": payload,
                    "message": message,
                    "queue": queue,
                    "ttl": self.settings.result_ttl,
                    "summary": json.dumps(summary, separators=(",", ":")),
                    "instance": instance,
                },
            )
        if res[0] == "ok":
            return Submitted(job_id, res[1])
        kind, detail = res[1], res[2]
        if kind == "not_found":
            raise SessionNotFoundError(f"session {detail!r} does not exist (or its record expired)")
        if kind == "backend_mismatch":
            raise BackendMismatchError(
                f"this primitive targets backend {backend!r} but its session runs on {detail!r}; "
                "a session has exactly one backend: open a new session for another backend"
            )
        if kind in INSTANCE_ERRORS:
            raise instance_error(kind, detail, instance)
        if kind == "closed":
            state, _, reason = detail.partition(":")
            why = f" ({reason.replace('_', ' ')})" if reason else ""
            raise SessionClosedError(
                f"session {session_id} is {SESSION_STATUS[state]!r}{why} and accepts no new jobs; "
                "open a new Session to submit more"
            )
        raise RuntimeError(f"job id collision: {detail}")

    # ---------------------------------------------------------------- jobs: on a worker
    def claim(self, job_id: str, node: str, pid: int, context: str, fetched: str = "") -> Claim:
        """QUEUED -> RUNNING, only if this worker may run it now (see ``core/lua/claim.lua``).

        Starting a session's first job makes the session ``active``, sets ``started_at``
        and starts the max-time timer; it also fixes the session's device context.
        ``fetched``: the message text the lean consumer holds on the worker's fetch list.
        """
        res = self.scripts.run("claim", jid=job_id, node=node, pid=pid, context=context, fetched=fetched)
        if res[0] == "run":
            return Claim(True, payload=res[1], claim=res[2], session=res[3], epoch=res[4])
        return Claim(False, reason=res[1])

    def finish(
        self,
        job_id: str,
        claim: str,
        status: str,
        result: str = "",
        error_code: str = "",
        error: str = "",
        usage: float = 0.0,
        ack: str = "",
    ) -> str:
        """RUNNING -> DONE/ERROR, fenced by the claim token; may close or idle the session.
        ``ack``: the delivery tag of the job's message, acknowledged in the same script."""
        argv = self._finish_argv(job_id, claim, status, result, error_code, error, usage, ack)
        outcome: str = self._replicated("finish", argv, notify=job_id)
        return outcome

    def finish_and_fetch(
        self,
        job_id: str,
        claim: str,
        status: str,
        result: str,
        error_code: str,
        error: str,
        usage: float,
        queue: str,
        fetch_list: str,
        client: redis.Redis,
    ) -> tuple[str, bytes | None]:
        """FINISH, and in the same round trip move the next message of ``queue`` (if any) onto
        ``fetch_list``: the lean consumer's next job, fetched without a round trip of its own
        (``tasks/consumer.py``). Runs on ``client``, the consumer's connection, which reads
        replies as bytes: a message that is not UTF-8 text is the consumer's to refuse, not
        an error here. Returns (FINISH's outcome, that message or None)."""
        outcome, fetched = self._replicated_then(
            "finish",
            self._finish_argv(job_id, claim, status, result, error_code, error, usage, ""),
            notify=job_id,
            then=lambda pipe: pipe.lmove(queue, fetch_list, "RIGHT", "LEFT"),
            client=client,
        )
        return outcome.decode() if isinstance(outcome, bytes) else outcome, fetched

    @staticmethod
    def _finish_argv(
        job_id: str, claim: str, status: str, result: str, error_code: str, error: str, usage: float, ack: str
    ) -> dict[str, object]:
        return {
            "jid": job_id,
            "claim": claim,
            "status": status,
            "result": result,
            "error_code": error_code,
            "error_message": error,
            "usage": f"{usage:.6f}",
            "tag": ack or "",
        }

    def _replicated(self, script: str, argv: dict[str, object], notify: str | None = None) -> Any:
        """``_replicated_then`` without a command after it: the script's reply."""
        return self._replicated_then(script, argv, notify)[0]

    def _replicated_then(
        self,
        script: str,
        argv: dict[str, object],
        notify: str | None = None,
        then: Callable[[redis.client.Pipeline], object] | None = None,
        client: redis.Redis | None = None,
    ) -> tuple[Any, Any]:
        """Run ``script``, then Redis ``WAIT`` on the same connection (one pipeline) until the
        wanted replicas hold the write or ``wait_timeout_ms`` passes. With Sentinel, an
        acknowledged submit or result then survives the master's death: the replica that
        Sentinel promotes (the most up to date) has it. ``notify``: a job whose waiters the
        script left asleep (FINISH's quiet flag); NOTIFY wakes them after the WAIT, in the
        same pipeline (Redis runs a connection's commands in order, WAIT blocking it).
        ``then``: one more command queued last on the same pipeline. Returns (the script's
        reply, that command's reply, or None when it failed: the script's work stands).
        ``client``: the connection to use instead of ours (the pipeline then)."""
        want = self.replication.wanted()
        if not want and then is None:
            return self.scripts.run(script, client=None, **argv, **({"quiet": ""} if notify else {})), None
        pipe = (client or self.redis).pipeline(transaction=False)
        self.scripts.run(script, client=pipe, **argv, **({"quiet": "1" if want else ""} if notify else {}))
        if want:
            pipe.wait(want, self.settings.wait_timeout_ms)
            if notify:
                self.scripts.run("notify", client=pipe, jid=notify)
        if then is not None:
            then(pipe)
        replies = pipe.execute(raise_on_error=False)
        after = replies.pop() if then is not None else None
        if isinstance(after, Exception):  # e.g. out of memory: the script's work stands
            log.warning("the command after %s failed: %s", script, after)
            after = None
        if isinstance(replies[0], redis.exceptions.NoScriptError):
            # Redis forgot its scripts (a restart, a failover): the script did not run
            self.scripts.load(script, *(["notify"] if notify else []))
            return self._replicated_then(script, argv, notify)[0], after
        if want and notify and isinstance(replies[2], redis.exceptions.NoScriptError):
            replies[2] = self.scripts.run("notify", jid=notify)  # loads it
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if want:
            self.replication.acked(replies[1], want)
        return replies[0], after

    def job_lost(self, job_id: str, node: str, code: str, message: str) -> str:
        """The process running a job died: queue it again, or end it (poison, time limit)."""
        outcome: str = self.scripts.run(
            "job_lost",
            jid=job_id,
            node=node,
            max_attempts=self.settings.max_attempts,
            code=code,
            message=message,
        )
        return outcome

    def executor_lost(
        self, node: str, job_id: str | None, code: str, message: str, delivery_tag: str | None
    ) -> str:
        """An executor died running ``job_id`` (or none): settle the job as ``job_lost`` does and
        take its message out of kombu's unacked hash (see ``core/lua/executor_lost.lua``)."""
        outcome: str = self.scripts.run(
            "executor_lost",
            node=node,
            max_attempts=self.settings.max_attempts,
            jid=job_id or "",
            code=code,
            message=message,
            tag=delivery_tag or "",
        )
        return outcome

    def queue_length(self, backend: str) -> int:
        """Jobs waiting in a backend's shared queue (and, with instances, in its held lines)
        plus sessions waiting for one of its workers."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.queue_keys(self.keys.backend_queue(backend))[:4]:
            pipe.llen(key)
        pipe.llen(self.keys.waiting(backend))
        waiting: int = sum(pipe.execute())
        return waiting + self.held_lengths([backend]).get(backend, 0)

    def held_lengths(self, backends: list[str]) -> dict[str, int]:
        """Jobs held in the instances' lines of each backend (two round trips)."""
        pipe = self.redis.pipeline(transaction=False)
        for backend in backends:
            pipe.smembers(self.keys.held_instances(backend))
        lines = [(b, n) for b, names in zip(backends, pipe.execute()) for n in text_list(list(names))]
        if not lines:
            return {}
        for backend, name in lines:
            pipe.llen(self.keys.held(backend, name))
        out: dict[str, int] = {}
        for (backend, _), n in zip(lines, pipe.execute()):
            out[backend] = out.get(backend, 0) + int(n)
        return out

    def usage_seconds(self) -> float:
        """Seconds every job ever ran on a worker (the execution histogram's sum)."""
        return float(self.redis.hget(self.keys.histogram("execution"), "sum") or 0.0)

    # ---------------------------------------------------------------- instances
    def set_instance(self, name: str, settings: InstanceSettings) -> str:
        """Create or replace an instance's settings: 'created' or 'changed'."""
        outcome: str = self.scripts.run(
            "instance_set", instance=validate_name(name), settings=settings.to_json()
        )
        return outcome

    def remove_instance(self, name: str) -> bool:
        return bool(self.scripts.run("instance_rm", instance=name))

    def instances(self) -> dict[str, InstanceSettings]:
        """The configured instances' settings, by name."""
        raw = text_map(self.redis.hgetall(self.keys.instances))
        return {n: InstanceSettings.from_json(v) for n, v in sorted(raw.items()) if n != COUNTER}

    def instance_report(self, name: str = "") -> list[dict[str, Any]]:
        """Each instance's settings and usage (``core/lua/instance_report.lua``)."""
        rows: list[dict[str, Any]] = json.loads(self.scripts.run("instance_report", instance=name)) or []
        for row in rows:
            row["settings"] = InstanceSettings.from_json(row["settings"])
        return rows

    def keep_instances(self, copy: str) -> str:
        """Put ``copy`` (this worker's last copy) back when Redis lost the instances; returns
        the copy to keep now (``core/lua/restore_instances.lua``)."""
        now: str = self.scripts.run("restore_instances", copy=copy or "{}")
        return now

    def update_tags(self, job_id: str, tags: list[str]) -> str:
        """Replace a job's tags (``job.update_tags``): 'ok' or 'not_found'."""
        outcome: str = self.scripts.run("update_tags", jid=job_id, tags=json.dumps(tags))
        return outcome

    def cancel_job(self, job_id: str) -> str:
        """QUEUED -> CANCELLED (its message is taken off the queue). A running job finishes."""
        outcome: str = self.scripts.run("cancel_job", jid=job_id)
        return outcome

    # ---------------------------------------------------------------- sessions: end
    def close_session(self, sid: str) -> str:
        """-> ``pending_closed`` (jobs drain, nothing new accepted), or ``closed`` if idle.
        Returns once the close would survive a Redis crash (``_lasting``)."""
        return self._lasting(sid, "close_session")

    def cancel_session(self, sid: str) -> str:
        """-> ``closed``: queued jobs become CANCELLED and never run; running ones finish.
        Returns once the cancel would survive a Redis crash (``_lasting``)."""
        return self._lasting(sid, "cancel_session")

    # An acknowledged close must not be lost. A Redis that crashes with ``appendfsync
    # everysec`` restarts from an AOF that is a consistent prefix of history, the last second
    # or so gone. A lost submit or result heals (the producer gets JobNotFoundError, the job
    # runs again), but nobody closes a session twice: the producer's ``with`` block is over,
    # and a lost close left the session active, holding its worker for the interactive
    # timeout, then open until its max time (hours). So a close or cancel returns only once it is safe: written
    # to the replicas (WAIT, as submits and results), or on disk: at once with ``appendfsync
    # always``; otherwise after Redis's fsync window, the session read back and the change
    # made again if a crash took it back meanwhile.
    FSYNC_WINDOW = 2.0  # s: everysec fsyncs once a second; one more for a postponed write
    _fsync_seen: tuple[float, float] | None = None  # (when looked, window)

    def _lasting(self, sid: str, script: str) -> str:
        ended = {"pending_closed": 1, "closed": 2}  # how far a close (1) or a cancel (2) takes it
        state: str = self._replicated(script, {"sid": sid})
        while state and not self.replication.wanted() and self._fsync_window():
            time.sleep(self._fsync_window())
            now = text_or_none(self.redis.hget(self.keys.session(sid), "state"))
            if now is None or ended.get(now, 0) >= ended.get(state, 0):
                return state  # it lasted (or Redis lost the whole session: nothing to end)
            log.warning(
                "Redis lost the end of session %s (it came back %s, not %s: restarted "
                "from an older AOF); ending it again",
                sid,
                now,
                state,
            )
            state = self._replicated(script, {"sid": sid})
        return state

    def _fsync_window(self) -> float:
        """Seconds in which a write Redis acknowledged can still be lost by a crash: none with
        ``appendfsync always`` (on disk before the reply) or without an AOF (a crash loses
        everything: warned at start); ``FSYNC_WINDOW`` otherwise, and where CONFIG GET is
        refused (ACL users, managed Redis), which tells nothing. Looked up once a minute."""
        now = time.monotonic()
        if self._fsync_seen is None or now - self._fsync_seen[0] > 60:
            try:
                cfg = {**self.redis.config_get("appendonly"), **self.redis.config_get("appendfsync")}
                safe = cfg.get("appendonly") != "yes" or cfg.get("appendfsync") == "always"
            except redis.ResponseError:
                safe = False
            self._fsync_seen = (now, 0.0 if safe else self.FSYNC_WINDOW)
        return self._fsync_seen[1]

    def tick(self, sid: str) -> str:
        """Apply the session's expired timers (max time, interactive, open-session)."""
        state: str = self.scripts.run("tick_session", sid=sid)
        return state

    def sweep_deadlines(self, limit: int = 100) -> int:
        """Tick every session whose earliest timer is due. Workers run this continually."""
        ticked: int = self.scripts.run("sweep_deadlines", limit=limit)
        return ticked

    # ---------------------------------------------------------------- reads
    def session(self, sid: str, *, tick: bool = True) -> dict[str, str]:
        if tick:
            self.tick(sid)
        data = text_map(self.redis.hgetall(self.keys.session(sid)))
        if not data:
            raise SessionNotFoundError(f"session {sid!r} does not exist (or its record expired)")
        data["active_timeout_left"] = str(self.redis.ttl(self.keys.timer(sid, "max")))
        return data

    def job(self, job_id: str, *fields: str) -> dict[str, str]:
        with broker_errors(self.settings, f"read job {job_id}"):
            if fields:
                values = text_or_none_list(self.redis.hmget(self.keys.job(job_id), fields))
                return {f: v for f, v in zip(fields, values) if v is not None}
            return text_map(self.redis.hgetall(self.keys.job(job_id)))

    def session_job_ids(self, sid: str) -> list[str]:
        return text_list(self.redis.lrange(self.keys.session_jobs(sid), 0, -1))

    def wait_job(
        self, job_id: str, timeout: float, *fields: str, latched: list[bool] | None = None
    ) -> dict[str, str]:
        """Block until the job ended (or ``timeout``), then read ``fields``: one round trip.

        The latch list holds one token from the moment the job ends; BRPOPLPUSH onto the
        same list waits for it and leaves it in place (TTL kept), so every waiter, now or
        later, wakes at once without taking it from the others.
        """
        key = self.keys.job_done(job_id)
        block = max(timeout, 0.01)
        # redis-py 8 reads with a 5 s socket timeout by default: a block as long as that times
        # out in the client first and is retried on a new connection, again and again (a
        # waiter on a job Redis forgot never returned). Block for less; callers loop anyway.
        limit = self.redis.connection_pool.connection_kwargs.get("socket_timeout") or 5.0
        block = min(block, max(limit - 1.0, limit / 2))
        with broker_errors(self.settings, f"wait for job {job_id}"):
            if not fields:
                self.redis.brpoplpush(key, key, timeout=block)
                return {}
            pipe = self.redis.pipeline(transaction=False)
            pipe.brpoplpush(key, key, timeout=block)
            pipe.hmget(self.keys.job(job_id), fields)
            token, values = pipe.execute()
        if latched is not None:  # the caller asks whether the job's end was announced
            latched.append(token is not None)
        if all(v is None for v in values):
            raise JobNotFoundError(
                f"job {job_id}'s record is gone while it was being waited for: it expired, or "
                f"Redis at {redact(self.settings.url)} lost its data (restarted without "
                "persistence, or evicted keys); the job cannot be recovered: submit it again"
            )
        return {f: v for f, v in zip(fields, values) if v is not None}

    def live_workers(self, backend: str | None = None) -> list[dict[str, str]]:
        nodes = text_map(self.redis.hgetall(self.keys.workers))
        pipe = self.redis.pipeline(transaction=False)
        names = [n for n, b in sorted(nodes.items()) if backend is None or b == backend]
        for n in names:
            pipe.hgetall(self.keys.worker(n))
        return [w for w in pipe.execute() if w]

    # ---------------------------------------------------------------- workers
    def worker_tick(
        self,
        node: str,
        backend: str,
        pid: int,
        started: float,
        concurrency: int,
        device: str,
        consuming: bool = True,
        executor: str = "",
    ) -> WorkerTick:
        """Heartbeat + pin follow-up + take the next waiting session when free (and
        ``consuming``: a worker still starting its consumer beats but takes no session).

        ``executor`` names the ready executor (its pid): a pin it leaves unserved for
        ``unserved_pin_timeout`` is taken from this node and that executor reported stalled
        (see ``core/lua/worker_tick.lua``)."""
        s = self.settings
        pin, epoch, stalled, released, instances = self.scripts.run(
            "worker_tick",
            node=node,
            backend=backend,
            ttl_ms=int(s.heartbeat_ttl * 1000),
            host=hostname(),
            pid=pid,
            started=started,
            concurrency=concurrency,
            device=device,
            **{f: getattr(s, f) for f in self.SYSTEM_FIELDS},
            consuming="1" if consuming else "0",
            executor=executor,
            unserved_after=s.unserved_pin_timeout,
        )
        return WorkerTick(pin, epoch, stalled, released, instances)

    def keep_alive(self, node: str) -> bool:
        """Refresh only the registry entry's expiry. For a Redis that refuses writes (out of
        memory under ``noeviction``): PEXPIRE is still allowed there, and a live worker must
        not be reaped as dead because its heartbeat script was refused."""
        return bool(self.redis.pexpire(self.keys.worker(node), int(self.settings.heartbeat_ttl * 1000)))

    def dead_workers(self) -> list[str]:
        nodes: list[str] = self.scripts.run("dead_workers")
        return nodes

    def rescue_unacked(self, min_age: float, limit: int = 100) -> tuple[int, int]:
        """Give back jobs whose fetched message was orphaned in kombu's unacked hash.

        Reads ``limit`` entries of the index from where the previous call stopped (a cursor
        in Redis), so repeated calls cover the whole hash. Returns (given back, inspected)."""
        rescued, seen = self.scripts.run("rescue_unacked", min_age=min_age, limit=limit)
        return int(rescued), int(seen)

    def reconcile_worker(
        self, node: str, suspects: dict[str, str], held: list[str], stale_fetch: list[str]
    ) -> Reconciled:
        """Square a live worker's run set and fetch list with what its process holds.

        ``held``: the job ids of the requests the worker process holds, read before this
        call. ``suspects`` and ``stale_fetch``: what the previous call returned (its
        ``suspects`` and ``fetch``). See ``core/lua/reconcile_worker.lua``."""
        requeued, again, given, fetch = self.scripts.run(
            "reconcile_worker",
            node=node,
            max_attempts=self.settings.max_attempts,
            suspects=json.dumps(suspects or {}),
            held=json.dumps(sorted(held)),
            stale_fetch=json.dumps(list(stale_fetch)),
        )
        return Reconciled(int(requeued), json.loads(again) or {}, int(given), list(json.loads(fetch) or []))

    def reap_worker(self, node: str, keep_pin: bool = False) -> int:
        """Requeue a dead worker's running jobs and give its session to the next worker."""
        requeued: int = self.scripts.run(
            "reap_worker",
            node=node,
            max_attempts=self.settings.max_attempts,
            keep_pin="1" if keep_pin else "0",
        )
        return requeued


INSTANCE_ERRORS = frozenset({"unknown_instance", "usage_limit", "max_sessions", "max_session_time"})


def instance_error(kind: str, detail: str, instance: str) -> SessionBrokerError:
    """A Lua script's refusal of an instance (see ``INSTANCE_ERRORS``) as our typed error."""
    if kind == "unknown_instance":
        known = ", ".join(detail.split(",")) if detail else "none"
        return UnknownInstanceError(
            f"instance {instance!r} is not configured here; the instances are: {known} "
            "(QiskitRuntimeService(instance=NAME); the operator adds one with `session-broker instance set NAME`)"
        )
    parts = detail.split("|")
    name = parts[0]
    if kind == "usage_limit":
        limit, used, reset = float(parts[1]), float(parts[2]), float(parts[3])
        when = datetime.fromtimestamp(reset, UTC)
        return UsageLimitReachedError(
            f"instance {name!r} has reached its usage limit of {limit:g} s for the period (used "
            f"{used:.1f} s); new jobs are refused until the period resets at "
            f"{when.isoformat(timespec='seconds')} (jobs already queued or running finish)",
            instance=name,
            limit=limit,
            used=used,
            reset_at=when,
        )
    if kind == "max_sessions":
        return InstanceLimitError(
            f"instance {name!r} already has {parts[1]} sessions open, its limit (max-sessions): "
            "close one, or use a Batch (batches are not capped)",
            instance=name,
        )
    return InstanceLimitError(
        f"instance {name!r} allows sessions of at most {parts[1]} s (max-session-time): ask for "
        "a shorter max_time, or leave it out to get that",
        instance=name,
    )


_CHECKED: set[str] = set()  # URLs whose settings this process has checked
_WARNED: set[str] = set()  # the warnings this process has logged (each once)
