"""The read model (core/read.py) over records the scripts wrote: every door lists jobs with
these filters, in this order."""

from __future__ import annotations

from session_broker.core.config import load_settings
from session_broker.core.read import JobQuery, iter_jobs, time_left
from session_broker.core.store import Store
from tests.lua.conftest import PREFIX


def store_of(lua) -> Store:
    url = "redis://{host}:{port}/0".format(**lua.r.connection_pool.connection_kwargs)
    return Store(load_settings({"SESSION_BROKER_URL": url, "SESSION_BROKER_KEY_PREFIX": PREFIX}))


def ids(store, **query) -> list[str]:
    return [jid for jid, _ in iter_jobs(store, JobQuery(**query))]


def test_filters_and_order(lua):
    lua.open("s1")
    lua.submit("j1", "s1", tags=["a", "b"])
    lua.submit("j2", tags=["a"])
    lua.submit("j3", "s1")
    lua.submit("j4", backend="b2")
    store = store_of(lua)
    assert ids(store) == ["j4", "j3", "j2", "j1"]
    assert ids(store, newest_first=False) == ["j1", "j2", "j3", "j4"]
    assert ids(store, session="s1") == ["j3", "j1"]
    assert ids(store, backend="b2") == ["j4"]
    assert ids(store, tags=frozenset({"a"})) == ["j2", "j1"]
    assert ids(store, tags=frozenset({"a", "b"})) == ["j1"]
    claim = lua.claim("j2")[2]
    lua.finish("j2", claim)
    assert ids(store, pending=False) == ["j2"]
    assert ids(store, pending=True) == ["j4", "j3", "j1"]
    assert ids(store, after=float(lua.job("j3")["created"])) == ["j4", "j3"]
    assert ids(store, before=float(lua.job("j2")["created"])) == ["j2", "j1"]


def test_time_left():
    assert time_left({"state": "closed", "started_at": "1", "max_time": "60"}, 30) == 0
    assert time_left({"state": "open", "started_at": "", "max_time": "60"}, -2) == 60
    assert time_left({"state": "active", "started_at": "1", "max_time": "60"}, 25) == 25
    assert time_left({"state": "active", "started_at": "1", "max_time": "60"}, -2) == 0
