"""Worker transitions, one script at a time: worker_tick (registry, pins, liveness),
reap_worker, dead_workers, job_lost, executor_lost, rescue_unacked, reconcile_worker."""

from __future__ import annotations

import json


def queued_session(lua, sid="s1", jobs=("j1",)):
    lua.open(sid)
    for jid in jobs:
        assert lua.submit(jid, sid) == ["ok", "QUEUED"]
    return sid


def unacked(lua, tag: str, jid: str, age: float = 100) -> None:
    """kombu's record of a fetched message: unacked[tag] = [message, exchange, routing key]."""
    lua.r.hset(lua.k.unacked, tag, json.dumps([json.loads(lua.message(jid, tag)), "", "rk"]))
    lua.r.zadd(lua.k.unacked_index, {tag: lua.now() - age})


# ------------------------------------------------------------------ worker_tick
def test_a_heartbeat_registers_the_worker_and_restores_the_settings(lua):
    assert lua.tick("w1", ttl_ms=5000) == ["", "", "", "", ""]
    w = lua.r.hgetall(lua.k.worker("w1"))
    assert (w["node"], w["backend"], w["host"], w["pin"]) == ("w1", lua.backend, "h", "")
    assert 0 < lua.r.pttl(lua.k.worker("w1")) <= 5000
    assert lua.r.hget(lua.k.workers, "w1") == lua.backend
    assert lua.r.hgetall(lua.k.config) == {
        "max_time": "600",
        "interactive_timeout": "60",
        "open_session_timeout": "300",
        "result_ttl": "3600",
        "fair_share_half_life": "604800",
    }


def test_a_free_worker_takes_the_waiting_session(lua):
    queued_session(lua)
    pin, epoch, stalled, released, _ = lua.tick("w1")
    assert (pin, stalled, released) == ("s1", "", "")
    assert epoch == lua.r.get(lua.k.epoch) == "1"
    assert lua.r.get(lua.k.worker_pin("w1")) == "s1"
    s = lua.session("s1")
    assert (s["worker"], s["waiting"], s["epoch"]) == ("w1", "0", "1")
    assert lua.r.llen(lua.k.waiting(lua.backend)) == 0
    assert lua.tick("w2")[0] == ""  # nothing left for the next one
    assert lua.tick("w1")[:2] == ["s1", "1"]  # the pin is kept


def test_a_worker_not_consuming_or_busy_takes_no_session(lua):
    queued_session(lua)
    assert lua.tick("w1", consuming="0")[0] == ""
    lua.r.sadd(lua.k.worker_running("w2"), "other")
    assert lua.tick("w2")[0] == ""
    assert lua.r.lrange(lua.k.waiting(lua.backend), 0, -1) == ["s1"]


def test_a_pin_whose_session_moved_on_is_dropped(lua):
    queued_session(lua)
    lua.tick("w1")
    lua.r.hset(lua.k.session("s1"), "worker", "w2")
    assert lua.tick("w1")[0] == ""
    assert not lua.r.exists(lua.k.worker_pin("w1"))


def test_an_unserved_pin_is_freed_and_its_executor_marked_stalled(lua):
    queued_session(lua)
    lua.tick("w1", executor="100")
    fetched = lua.message("j1", "j1.0")
    lua.r.rpush(lua.k.worker_fetch("w1"), fetched)
    # nothing served the pin for longer than the bound
    past = lua.now() - 60
    lua.r.hset(lua.k.session("s1"), mapping={"served_at": past, "pinned_at": past})
    pin, _, stalled, released, _ = lua.tick("w1", executor="100", unserved_after=10)
    assert (pin, stalled, released) == ("", "100", "s1")
    s = lua.session("s1")
    assert (s["worker"], s["lost_worker"], s["waiting"]) == ("", "w1", "1")
    assert lua.r.lrange(lua.k.waiting(lua.backend), 0, -1) == ["s1"]  # at the front of the line
    assert lua.r.get(lua.k.worker_stalled("w1")) == "100"
    assert not lua.r.exists(lua.k.worker_fetch("w1"))  # its fetched message was given back
    assert lua.r.lindex(lua.k.session_queue("s1"), -1) == lua.message("j1", "j1.1")
    assert lua.r.hget(lua.k.counts, "unserved_pins") == "1"
    # while the stalled executor is the ready one, the node takes no session
    assert lua.tick("w1", executor="100") == ["", "", "100", "", ""]
    # another executor is ready: the mark goes and the node may take a session again
    assert lua.tick("w1", executor="200")[:3] == ["s1", "2", ""]
    assert not lua.r.exists(lua.k.worker_stalled("w1"))


def test_a_served_pin_is_kept(lua):
    queued_session(lua)
    lua.tick("w1")
    assert lua.tick("w1", unserved_after=10)[0] == "s1"  # served_at is now


# ------------------------------------------------------------------ reap / dead
def test_reaping_a_dead_worker_requeues_its_jobs_and_frees_its_session(lua):
    queued_session(lua)
    lua.tick("w1")
    lua.claim("j1", "w1")
    lua.r.delete(lua.k.worker("w1"))  # its registry entry expired
    assert lua.run("dead_workers") == ["w1"]
    assert lua.run("reap_worker", node="w1", max_attempts=3, keep_pin="0") == 1
    j = lua.job("j1")
    assert (j["status"], j["worker"], j["claim"]) == ("QUEUED", "", "")
    assert lua.r.lindex(lua.k.session_queue("s1"), -1) == lua.message("j1", "j1.1")
    s = lua.session("s1")
    assert (s["worker"], s["lost_worker"], s["queued"], s["running"]) == ("", "w1", "1", "0")
    assert lua.r.lrange(lua.k.waiting(lua.backend), 0, -1) == ["s1"]
    assert not any(lua.r.exists(k) for k in (lua.k.worker_pin("w1"), lua.k.worker_running("w1")))
    assert lua.r.hget(lua.k.workers, "w1") is None
    assert lua.run("dead_workers") == []


def test_reaping_with_keep_pin_keeps_the_pin_and_registry(lua):
    queued_session(lua)
    lua.tick("w1")
    lua.claim("j1", "w1")
    assert lua.run("reap_worker", node="w1", max_attempts=3, keep_pin="1") == 1
    assert lua.r.get(lua.k.worker_pin("w1")) == "s1"
    assert lua.session("s1")["worker"] == "w1"
    assert lua.r.hget(lua.k.workers, "w1") == lua.backend


# ------------------------------------------------------------------ job_lost / executor_lost
def test_job_lost_requeues_until_the_attempts_are_used(lua):
    lua.submit("j1")
    lua.claim("j1", "w1")
    assert (
        lua.run("job_lost", jid="j1", node="w2", max_attempts=2, code="worker_lost", message="x") == "stale"
    )
    assert (
        lua.run("job_lost", jid="j1", node="w1", max_attempts=2, code="worker_lost", message="died")
        == "requeued"
    )
    lua.claim("j1", "w1")
    assert (
        lua.run("job_lost", jid="j1", node="w1", max_attempts=2, code="worker_lost", message="died")
        == "failed"
    )
    j = lua.job("j1")
    assert (j["status"], j["error_code"]) == ("ERROR", "worker_lost")
    assert "SESSION_BROKER_MAX_ATTEMPTS=2" in j["error"]


def test_job_lost_over_its_time_limit_is_not_retried(lua):
    lua.submit("j1")
    lua.claim("j1", "w1")
    assert (
        lua.run(
            "job_lost", jid="j1", node="w1", max_attempts=5, code="max_execution_time", message="too long"
        )
        == "failed"
    )
    assert lua.job("j1")["error"] == "too long"


def test_a_job_lost_after_its_session_was_cancelled_does_not_run_again(lua):
    queued_session(lua)
    lua.tick("w1")
    lua.claim("j1", "w1")
    lua.run("cancel_session", sid="s1")
    assert (
        lua.run("job_lost", jid="j1", node="w1", max_attempts=3, code="worker_lost", message="died")
        == "requeued"
    )
    assert lua.job("j1")["status"] == "CANCELLED"
    assert lua.session("s1")["queued"] == "0"


def test_executor_lost_settles_its_job_and_gives_back_the_message_it_held(lua):
    lua.submit("run1")
    lua.claim("run1", "w1")
    lua.submit("fetched")
    lua.r.delete(lua.k.backend_queue(lua.backend))  # both messages were fetched
    unacked(lua, "tag-f", "fetched")
    assert (
        lua.run(
            "executor_lost",
            node="w1",
            max_attempts=3,
            jid="run1",
            code="worker_lost",
            message="killed",
            tag="tag-f",
        )
        == "requeued"
    )
    assert lua.job("run1")["status"] == "QUEUED"
    assert not lua.r.hexists(lua.k.unacked, "tag-f")
    queue = lua.r.lrange(lua.k.backend_queue(lua.backend), 0, -1)
    assert queue == [lua.message("run1", "run1.1"), lua.message("fetched", "fetched.1")]
    assert lua.run("executor_lost", node="w1", max_attempts=3, jid="", code="c", message="m", tag="") == ""


# ------------------------------------------------------------------ rescue / reconcile
def test_rescue_gives_back_queued_jobs_whose_message_was_orphaned(lua):
    lua.submit("lost")
    lua.submit("running")
    lua.r.delete(lua.k.backend_queue(lua.backend))
    lua.claim("running", "w1")
    unacked(lua, "t-lost", "lost")
    unacked(lua, "t-running", "running")
    unacked(lua, "t-young", "lost", age=0)
    assert lua.run("rescue_unacked", min_age=5, limit=10) == [1, 2]
    assert lua.r.lrange(lua.k.backend_queue(lua.backend), 0, -1) == [lua.message("lost", "lost.1")]
    assert lua.r.hkeys(lua.k.unacked) and not lua.r.hexists(lua.k.unacked, "t-lost")
    assert lua.job("lost")["requeued_at"]
    assert not lua.r.exists(lua.k.rescue_cursor)  # reached the end: starts over next time


def test_rescue_goes_on_from_its_cursor(lua):
    for i in range(3):
        lua.submit(f"j{i}")
        lua.claim(f"j{i}", "w1")  # running: not rescuable, inspected all the same
        unacked(lua, f"t{i}", f"j{i}", age=100 - i)
    assert lua.run("rescue_unacked", min_age=5, limit=2) == [0, 2]
    assert lua.r.hget(lua.k.rescue_cursor, "tag") == "t1"
    assert lua.run("rescue_unacked", min_age=5, limit=2) == [0, 1]


def test_reconcile_requeues_a_job_seen_twice_not_held(lua):
    lua.submit("j1")
    lua.submit("held")
    claim = lua.claim("j1", "w1")[2]
    lua.claim("held", "w1")
    lua.r.sadd(lua.k.worker_running("w1"), "ended")
    args = {"node": "w1", "max_attempts": 3, "held": json.dumps(["held"]), "stale_fetch": "[]"}
    requeued, suspects, given, fetch = lua.run("reconcile_worker", suspects="{}", **args)
    assert (requeued, json.loads(suspects), given, json.loads(fetch)) == (0, {"j1": claim}, 0, {})
    assert lua.r.smembers(lua.k.worker_running("w1")) == {"j1", "held"}  # 'ended' dropped
    requeued, suspects, _, _ = lua.run("reconcile_worker", suspects=suspects, **args)
    assert (requeued, json.loads(suspects)) == (1, {})
    assert lua.job("j1")["status"] == "QUEUED"
    assert lua.job("held")["status"] == "RUNNING"


def test_reconcile_gives_back_messages_left_on_the_fetch_list(lua):
    lua.submit("j1")
    lua.r.delete(lua.k.backend_queue(lua.backend))
    raw = lua.message("j1")
    lua.r.rpush(lua.k.worker_fetch("w1"), raw)
    args = {"node": "w1", "max_attempts": 3, "suspects": "{}", "held": "[]"}
    _, _, given, fetch = lua.run("reconcile_worker", stale_fetch="[]", **args)
    assert (given, json.loads(fetch)) == (0, [raw])
    _, _, given, fetch = lua.run("reconcile_worker", stale_fetch=fetch, **args)
    assert given == 1 and json.loads(fetch) == {}
    assert lua.r.lrange(lua.k.backend_queue(lua.backend), 0, -1) == [lua.message("j1", "j1.1")]
