"""The lean job consumer: how an executor takes its job messages, outside Celery's request path.

One thread per executor. Per job: ``BLMOVE`` the next message of the one queue it consumes
onto the worker's fetch list (so the message is in Redis at every instant), check the
envelope (a bad one goes to the dead-letter list), CLAIM (which also takes the message off
the fetch list: from then on the worker's running set stands for it), run, FINISH. Three
round trips, where Celery's path added kombu's unacked bookkeeping, a request object, the
tracer and a pool hand-over. The messages stay Celery protocol-2 messages in kombu's lists,
so plain Celery producers, ``celery inspect`` (which reports this consumer's queue and job)
and Flower (task events, sent from here while a monitor asks) keep working; Celery itself
still runs in the executor's main thread for remote control and events. Why, and what it
bought: docs/design.md, "The lean job path".
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from session_broker import backends
from session_broker.celery_app import app
from session_broker.core import transport
from session_broker.core.connection import redis_client
from session_broker.core.ids import valid_id

from . import link as inflight
from .celery_tasks import execute_claimed, node_backend, settled, store
from .link import link

log = logging.getLogger("session_broker.worker")

JOB_TASKS = ("sampler", "estimator", "executor")
BLOCK = 1.0  # s one fetch blocks; a switch of queues interrupts it (CLIENT UNBLOCK) where allowed
RETRY = 0.5  # s between fetches while Redis is away


@dataclass(frozen=True)
class Message:
    """A job message, read from its envelope: what the claim, the supervisor and events need."""

    raw: str
    job_id: str
    task: str
    task_id: str
    hard_limit: float
    headers: dict[str, Any]
    delivery_info: dict[str, Any]


def read(raw: str, time_limit: float | None) -> Message | str:
    """A fetched message's envelope -> the job message, or why it is refused."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"envelope is not JSON ({exc})"
    problem, body = transport.read_envelope(envelope)
    if problem is not None:
        return problem
    if body is None:
        return f"content type {envelope['content-type']!r} is refused: session-broker tasks take JSON"
    headers = envelope["headers"]
    if headers["task"] not in JOB_TASKS:
        return f"task {headers['task']!r} is not one of session-broker's ({', '.join(JOB_TASKS)})"
    args, kwargs = body[0], body[1]
    if len(args) != 1 or "job_id" in kwargs:
        return f"task {headers['task']!r} takes one argument, the job id ({len(args)} given)"
    job_id = args[0]
    if not isinstance(job_id, str) or not valid_id(job_id):
        return f"the argument {str(job_id)[:80]!r} is not a job id"
    hard = (headers.get("timelimit") or [None, None])[0] or time_limit or 0.0
    return Message(
        raw,
        job_id,
        headers["task"],
        headers["id"],
        float(hard),
        headers,
        envelope["properties"].get("delivery_info") or {},
    )


class JobConsumer:
    """The executor's job loop (``run``, in its own thread). ``switch`` (from the command
    thread) changes the queue it consumes; ``stop`` ends it after the job in hand."""

    def __init__(self, node: str, queue: str, *, events_on: Callable[[], bool] = lambda: False):
        self.node, self.wanted, self.queue = node, queue, ""
        self.store = store()
        self.fetch_key = self.store.keys.worker_fetch(node)
        # one connection of its own (it blocks on BLMOVE), named so that a switch can find it
        # whatever reconnects redis-py made, and reading replies as bytes: a message that is
        # not UTF-8 text is refused here, not an error that ends the executor
        self.name = f"sb-fetch:{node}:{os.getpid()}"
        self.client = redis_client(
            self.store.settings, decode_responses=False, client_name=self.name
        ).client()
        self.can_unblock = True  # CLIENT LIST / UNBLOCK: refused to a tenant's ACL user
        self.events_on = events_on  # whether a monitor asks for task events now
        self._dispatcher: Any = None  # this thread's own (Celery's is its loop's)
        self.context = backends.context_fingerprint(node_backend())
        self.stopping, self.finished = threading.Event(), threading.Event()
        self.current: tuple[Message, float] | None = None  # what ``celery inspect active`` shows
        self.next: str | None = None  # a message FINISH fetched with the last job's end
        self._lock = threading.Lock()
        self.app = app
        self.time_limit = app.conf.task_time_limit

    # ---------------------------------------------------------------- other threads
    def switch(self, queue: str) -> None:
        """Consume ``queue`` from the next fetch on ('' = none); interrupt a fetch blocked on
        another."""
        with self._lock:
            self.wanted = queue
        if queue != self.queue:
            self._unblock()

    def stop(self) -> None:
        """Take no new job (the one in hand ends first); ``finished`` is set once out. Called
        from Celery's signal handler: the Redis call that ends a blocked fetch runs apart."""
        self.stopping.set()
        threading.Thread(target=self._unblock, name="executor-jobs-stop", daemon=True).start()

    def _unblock(self) -> None:
        """End a BLMOVE this consumer's connection is blocked in (else it ends within BLOCK)."""
        if not self.can_unblock:
            return
        try:
            for client in self.store.redis.client_list():
                if client.get("name") == self.name:
                    self.store.redis.client_unblock(int(client["id"]))
        except redis.ResponseError:  # an ACL user may not: the fetch ends within BLOCK
            self.can_unblock = False
        except redis.RedisError:
            pass

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        try:
            self._loop()
            if self.next is not None:  # stopped with a message in hand: back to its queue
                self.give_back(self.next, self.queue)
        except BaseException:
            # the executor would stay up consuming nothing: end it, the supervisor settles
            # what it held and starts another
            log.critical("%s: the job consumer failed; the executor exits", self.node, exc_info=True)
            os._exit(3)
        finally:
            self.finished.set()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, self.next = self.next, None
                raw = raw or self.fetch()
            except redis.ResponseError as exc:
                # out of memory (BLMOVE writes), or a queue key someone made another type:
                # say so and try again, rather than end the executor into a restart loop
                log.error("%s: Redis refused the fetch from %s, paused: %s", self.node, self.queue, exc)
                time.sleep(RETRY)
                continue
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("%s: cannot fetch from Redis (%s); retrying", self.node, exc)
                time.sleep(RETRY)
                continue
            if raw is None:
                continue
            if self.stopping.is_set():  # fetched as the warm shutdown began: not ours to run
                if self.next is not None:
                    self.give_back(self.next, self.queue)
                self.next = raw
                break
            try:
                self.handle(raw)
            except Exception:
                # the job stays RUNNING in the running set, held by nobody: the reconcile
                # requeues it; the loop goes on
                log.exception("%s: the job path failed; the reconcile settles what it held", self.node)
                time.sleep(RETRY)

    def fetch(self) -> str | None:
        """One message of the wanted queue moved onto the fetch list, or None."""
        with self._lock:
            queue = self.wanted
        if queue != self.queue:
            self.queue = queue
            pipe = link()
            if pipe is not None and queue:
                pipe.send("consuming", queue)
        if not queue:  # an operator's `celery control cancel_consumer`: nothing to fetch from
            self.stopping.wait(BLOCK)
            return None
        # Nothing is in hand here, so anything already on the fetch list was stranded: a
        # command redis-py sent again after losing its reply (a blip, a failover) moved one
        # message more. The oldest is taken first, in the same round trip as the fetch.
        pipe = self.client.pipeline(transaction=False)
        pipe.lindex(self.fetch_key, -1).blmove(queue, self.fetch_key, BLOCK, "RIGHT", "LEFT")
        stranded, raw = pipe.execute()
        if stranded is None:
            return self.text(raw)
        log.warning("%s: a message was left on the fetch list; taking it first", self.node)
        self.next = self.text(raw)
        return self.text(stranded)

    def text(self, raw: bytes | None) -> str | None:
        """A fetched message as text; one that is not UTF-8 is refused (dead letter) here."""
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.refuse(raw, f"message is not UTF-8 text ({exc})")
            return None

    def handle(self, raw: str) -> None:
        message = read(raw, self.time_limit)
        if isinstance(message, str):
            self.refuse(raw, message)
            return
        try:
            self.run_one(message)
        finally:
            self.current = None
            if inflight.current.job_id is not None:
                inflight.current = inflight.InFlight(None)
                pipe = link()
                if pipe is not None:
                    pipe.idle()

    def run_one(self, message: Message) -> None:
        s, jid = self.store, message.job_id
        dispatcher = self.dispatcher()
        log.info("Task %s[%s] received", message.task, message.task_id)  # Celery's own log lines
        self.event(dispatcher, "task-received", message)
        try:
            claim = s.claim(jid, self.node, os.getpid(), self.context, fetched=message.raw)
        except redis.RedisError as exc:
            # the message is still on the fetch list: put it back in its queue, or leave it
            # there for the reconcile (Redis away), which gives it back while the job waits
            log.warning("%s: could not claim job %s (%s); giving its message back", self.node, jid, exc)
            self.give_back(message.raw, self.queue)
            time.sleep(RETRY)  # a claim that fails every time must not spin on Redis
            return
        if not claim.run:
            log.info("job %s not run here: %s", jid, claim.reason)
            self.event(dispatcher, "task-succeeded", message, result=repr(claim.reason), runtime=0.0)
            return
        # Told after the claim, not before: the supervisor's wake-up then overlaps the job
        # instead of delaying its claim. It enforces the hard limit from here, and settles the
        # job if this process dies; dying before this line, the job is in the run set, which
        # the supervisor's settling requeues too (executor_lost, then reap_worker).
        inflight.current = job = inflight.InFlight(jid, "", message.hard_limit)
        pipe = link()
        if pipe is not None:
            pipe.running(job)
        started = time.perf_counter()
        self.current = (message, time.time())
        self.event(dispatcher, "task-started", message)
        ended = execute_claimed(s, jid, claim, message.task, node_backend())
        # FINISH, and fetch the next message in the same round trip (a backlog's next job
        # costs no fetch of its own); none once told to stop or to consume another queue
        if self.stopping.is_set() or not self.queue or self.wanted != self.queue:
            outcome = s.finish(
                jid, claim.claim, ended.status, ended.result, ended.code, ended.error, ended.usage
            )
        else:
            outcome, fetched = s.finish_and_fetch(
                jid,
                claim.claim,
                ended.status,
                ended.result,
                ended.code,
                ended.error,
                ended.usage,
                self.queue,
                self.fetch_key,
                self.client,
            )
            self.next = self.text(fetched)
        status = settled(jid, claim, ended, outcome)
        runtime = time.perf_counter() - started
        log.info("Task %s[%s] succeeded in %.6fs: %r", message.task, message.task_id, runtime, status)
        self.event(dispatcher, "task-succeeded", message, result=repr(status), runtime=runtime)

    def give_back(self, raw: str, queue: str) -> None:
        """A fetched message not claimed: back to the head of ``queue``, off the fetch list
        (Redis away: the reconcile gives it back while its job waits)."""
        try:
            self.store.redis.pipeline().rpush(queue, raw).lrem(self.fetch_key, 1, raw).execute()
        except redis.RedisError as exc:
            log.warning("%s: left a fetched message on the fetch list for the reconcile: %s", self.node, exc)
            time.sleep(RETRY)

    def refuse(self, raw: str | bytes, why: str) -> None:
        log.error("refused a message that is not a well-formed task message: %s", why)
        try:
            pipe = transport.dead_letter(self.store.redis.pipeline(), self.store.keys, raw, why)
            pipe.lrem(self.fetch_key, 1, raw).execute()
        except redis.RedisError:  # never let bookkeeping of garbage stop a worker
            log.exception("could not record the refused message (the reconcile drops it)")

    # ---------------------------------------------------------------- monitors
    def dispatcher(self) -> Any:
        """This thread's Celery event dispatcher while a monitor asks for task events, else None."""
        if not self.events_on():
            return None
        if self._dispatcher is None:
            try:
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), hostname=self.node, enabled=True
                )
            except Exception as exc:
                log.warning("could not open the task-event channel: %s", exc)
        return self._dispatcher

    def event(self, dispatcher: Any, kind: str, message: Message, **fields: Any) -> None:
        """Celery's task event, as its worker would send it (only while a monitor asks)."""
        if dispatcher is None:
            return
        h = message.headers
        if kind == "task-received":
            fields.update(
                name=message.task,
                args=h.get("argsrepr") or "",
                kwargs=h.get("kwargsrepr") or "{}",
                root_id=h.get("root_id"),
                parent_id=h.get("parent_id"),
                retries=h.get("retries", 0),
                eta=None,
                expires=None,
            )
        try:
            dispatcher.send(kind, uuid=message.task_id, **fields)
        except Exception as exc:  # a monitor misses an event; the job goes on
            log.warning("could not send %s for job %s: %s", kind, message.job_id, exc)
            self._dispatcher = None
            try:
                dispatcher.close()
            except Exception:  # already broken
                pass

    def active(self) -> list[dict[str, Any]]:
        """The job running now, as ``celery inspect active`` lists a request."""
        current = self.current
        if current is None:
            return []
        message, since = current
        h = message.headers
        return [
            {
                "id": message.task_id,
                "name": message.task,
                "args": h.get("argsrepr") or "",
                "kwargs": h.get("kwargsrepr") or "{}",
                "type": message.task,
                "hostname": self.node,
                "time_start": since,
                "acknowledged": True,
                "delivery_info": {
                    "exchange": message.delivery_info.get("exchange", ""),
                    "routing_key": message.delivery_info.get("routing_key", self.queue),
                    "priority": 0,
                    "redelivered": False,
                },
                "worker_pid": os.getpid(),
            }
        ]
