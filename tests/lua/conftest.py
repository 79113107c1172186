"""Fixtures for the Lua unit tests: each script run on its own, by name, against a real
redis-server (one per test module, ``FLUSHDB`` before each test). No Celery, no worker.

``lua`` is a ``Lua`` helper: ``lua.run(name, **argv)`` runs one script; ``lua.k`` is
``Keys`` of the prefix; the other methods set up the state a test starts from (a session, a
job and its kombu message), each through the scripts themselves.
"""

from __future__ import annotations

import json

import pytest
import redis

from session_broker.core.keys import Keys
from session_broker.core.scripts import Scripts

PREFIX = "t"
BACKEND = "b1"


class Lua:
    backend = BACKEND

    def __init__(self, r: redis.Redis):
        self.r = r
        self.k = Keys(PREFIX)
        self.scripts = Scripts(r, PREFIX)

    def run(self, name: str, **argv):
        return self.scripts.run(name, **argv)

    def now(self) -> float:
        sec, usec = self.r.time()
        return sec + usec / 1e6

    # ------------------------------------------------------------------ set-ups
    def open(self, sid: str = "s1", **kw) -> str:
        """A new session (``open_raw``'s arguments by name), which must be accepted."""
        res = self.open_raw(sid, **kw)
        assert res[0] == "ok", res
        return sid

    def open_raw(
        self,
        sid: str = "s1",
        mode: str = "session",
        backend: str = BACKEND,
        max_time: int = 600,
        interactive_timeout: int = 60,
        open_timeout: int = 300,
        ttl: int = 3600,
        instance: str = "",
        explicit: str = "1",
    ):
        return self.run(
            "open_session",
            sid=sid,
            backend=backend,
            mode=mode,
            max_time=max_time,
            interactive_timeout=interactive_timeout,
            open_session_timeout=open_timeout,
            ttl=ttl,
            instance=instance,
            explicit=explicit,
        )

    def message(self, jid: str, tag: str | None = None) -> str:
        """A kombu envelope of a job, as the client queues it (compact JSON)."""
        return json.dumps(
            {
                "body": "e30=",
                "headers": {"id": jid, "task": "sampler"},
                "properties": {"delivery_tag": tag or f"{jid}.0"},
            },
            separators=(",", ":"),
        )

    def queue_of(self, sid: str) -> str:
        return self.k.session_queue(sid) if sid else self.k.backend_queue(BACKEND)

    def submit(
        self,
        jid: str,
        sid: str = "",
        backend: str = BACKEND,
        ttl: int = 3600,
        queue: str | None = None,
        tags=(),
        instance: str = "",
    ):
        return self.run(
            "submit",
            jid=jid,
            sid=sid,
            backend=backend,
            primitive="sampler",
            payload=f"payload-{jid}",
            message=self.message(jid),
            queue=queue or self.queue_of(sid),
            ttl=ttl,
            summary=json.dumps({"tags": list(tags)}),
            instance=instance,
        )

    def tick(
        self,
        node: str = "w1",
        backend: str = BACKEND,
        executor: str = "100",
        consuming: str = "1",
        unserved_after: float = 10,
        ttl_ms: int = 10000,
    ):
        return self.run(
            "worker_tick",
            node=node,
            backend=backend,
            ttl_ms=ttl_ms,
            host="h",
            pid=1,
            started=0,
            concurrency=1,
            device="dev",
            max_time=600,
            interactive_timeout=60,
            open_session_timeout=300,
            result_ttl=3600,
            fair_share_half_life=604800,
            consuming=consuming,
            executor=executor,
            unserved_after=unserved_after,
        )

    def claim(self, jid: str, node: str = "w1", context: str = "ctx", fetched: str = ""):
        return self.run("claim", jid=jid, node=node, pid=4242, context=context, fetched=fetched)

    def finish(
        self, jid: str, claim: str, status: str = "DONE", tag: str = "", quiet: str = "", usage: str = "0.5"
    ):
        return self.run(
            "finish",
            jid=jid,
            claim=claim,
            status=status,
            result="R",
            error_code="",
            error_message="",
            usage=usage,
            tag=tag,
            quiet=quiet,
        )

    def job(self, jid: str) -> dict:
        return self.r.hgetall(self.k.job(jid))

    def session(self, sid: str) -> dict:
        return self.r.hgetall(self.k.session(sid))

    def expire_timer(self, sid: str, which: str) -> None:
        """A timer ran out: its key is gone (the key's existence is the truth)."""
        self.r.delete(self.k.timer(sid, which))


@pytest.fixture(scope="module")
def lua_redis(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def lua(lua_redis) -> Lua:
    lua_redis.flushdb()
    return Lua(lua_redis)
