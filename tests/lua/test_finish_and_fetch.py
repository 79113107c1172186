"""FINISH with the next message fetched in the same round trip (``Store.finish_and_fetch``, the
lean consumer's end of a job, issue 22), against a real redis-server."""

from __future__ import annotations

import redis

from session_broker.core.config import load_settings
from session_broker.core.store import Store
from tests.lua.conftest import PREFIX


def store_of(lua) -> Store:
    url = lua.r.connection_pool.connection_kwargs
    return Store(
        load_settings(
            {
                "SESSION_BROKER_URL": f"redis://{url['host']}:{url['port']}",
                "SESSION_BROKER_KEY_PREFIX": PREFIX,
            }
        ),
        client=lua.r,
    )


def finish_next(store: Store, lua, jid: str, claim: str, queue: str, node: str = "w1"):
    """FINISH + the next message, on a connection reading bytes (the lean consumer's): the
    message comes back as bytes, decoded here for the comparisons."""
    kw = lua.r.connection_pool.connection_kwargs
    with redis.Redis(host=kw["host"], port=kw["port"]) as raw:
        outcome, fetched = store.finish_and_fetch(
            jid, claim, "DONE", "R", "", "", 0.5, queue, lua.k.worker_fetch(node), raw
        )
    assert fetched is None or isinstance(fetched, bytes)
    return outcome, (fetched.decode() if fetched is not None else None)


def test_the_next_message_comes_with_the_finish(lua):
    store = store_of(lua)
    lua.submit("j1")
    lua.submit("j2")
    queue = lua.k.backend_queue(lua.backend)
    first = lua.r.rpop(queue)  # what the consumer fetched: j1's message
    claim = lua.claim("j1", fetched="")[2]
    outcome, fetched = finish_next(store, lua, "j1", claim, queue)
    assert outcome == "ok" and lua.job("j1")["status"] == "DONE"
    assert fetched == lua.message("j2") != first
    assert lua.r.lrange(lua.k.worker_fetch("w1"), 0, -1) == [fetched] and lua.r.llen(queue) == 0
    claim = lua.claim("j2", fetched=fetched)[2]  # CLAIM takes it off the fetch list
    assert lua.r.llen(lua.k.worker_fetch("w1")) == 0
    assert finish_next(store, lua, "j2", claim, queue) == ("ok", None)  # nothing waits


def test_a_stale_finish_still_fetches_and_a_forgotten_script_is_loaded_again(lua):
    """Redis forgets its scripts on a restart or a failover: the pipeline's EVALSHA meets
    NOSCRIPT, the script is loaded and FINISH runs once; the fetch ran once too."""
    store = store_of(lua)
    for jid in ("j1", "j2", "j3"):
        lua.submit(jid)
    queue = lua.k.backend_queue(lua.backend)
    lua.r.rpop(queue)
    claim = lua.claim("j1")[2]
    lua.r.script_flush()
    outcome, fetched = finish_next(store, lua, "j1", claim, queue)
    assert outcome == "ok" and fetched == lua.message("j2")
    assert lua.job("j1")["status"] == "DONE" and lua.r.lrange(queue, 0, -1) == [lua.message("j3")]
    outcome, fetched = finish_next(store, lua, "j1", claim, queue)  # a second FINISH is stale
    assert outcome == "stale" and fetched == lua.message("j3")
