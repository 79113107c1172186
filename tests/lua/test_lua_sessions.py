"""Session and job transitions, one script at a time: open_session, submit, claim, finish,
notify, cancel_job, close_session, cancel_session, tick_session, sweep_deadlines,
update_tags."""

from __future__ import annotations

import json

import pytest
import redis


def pinned(lua, sid="s1", node="w1"):
    """A session with one queued job, pinned to ``node`` by its heartbeat."""
    lua.open(sid)
    assert lua.submit("j1", sid) == ["ok", "QUEUED"]
    pin, epoch, *_ = lua.tick(node)
    assert pin == sid
    return epoch


# ------------------------------------------------------------------ open_session / submit
def test_open_session_starts_open_with_its_open_timer(lua):
    lua.open("s1", open_timeout=300)
    s = lua.session("s1")
    assert (s["state"], s["accepting"], s["worker"], s["queued"]) == ("open", "1", "", "0")
    assert 0 < lua.r.ttl(lua.k.timer("s1", "open")) <= 300
    assert lua.r.zscore(lua.k.sessions, "s1") is not None
    assert lua.r.zscore(lua.k.deadlines, "s1") is not None


def test_open_session_refuses_a_known_id(lua):
    lua.open("s1")
    with pytest.raises(redis.ResponseError, match="already exists"):
        lua.open("s1")


def test_the_published_settings_win_over_the_clients(lua):
    lua.r.hset(lua.k.config, mapping={"interactive_timeout": 7, "open_session_timeout": 9, "result_ttl": 99})
    lua.open("s1", interactive_timeout=60, open_timeout=300, ttl=3600)
    s = lua.session("s1")
    assert (s["interactive_timeout"], s["ttl"]) == ("7", "99")
    assert lua.r.ttl(lua.k.timer("s1", "open")) <= 9


def test_submit_queues_the_job_and_puts_the_session_in_line(lua):
    lua.open("s1")
    assert lua.submit("j1", "s1") == ["ok", "QUEUED"]
    j = lua.job("j1")
    assert (j["status"], j["session"], j["mode"], j["payload"]) == ("QUEUED", "s1", "session", "payload-j1")
    assert lua.r.lrange(lua.k.session_queue("s1"), 0, -1) == [lua.message("j1")]
    s = lua.session("s1")
    assert (s["queued"], s["first_job"], s["waiting"]) == ("1", "j1", "1")
    assert lua.r.lrange(lua.k.waiting(lua.backend), 0, -1) == ["s1"]
    assert lua.r.lrange(lua.k.session_jobs("s1"), 0, -1) == ["j1"]
    assert not lua.r.exists(lua.k.timer("s1", "open"))  # the first job stops the open timer
    assert lua.r.hget(lua.k.counts, "submitted") == "1"


def test_submit_without_session_goes_to_the_backend_queue(lua):
    assert lua.submit("j1") == ["ok", "QUEUED"]
    assert lua.r.llen(lua.k.backend_queue(lua.backend)) == 1
    assert lua.r.zscore(lua.k.jobs, "j1") is not None


def test_submit_refusals(lua):
    assert lua.submit("j1", "nope") == ["error", "not_found", "nope"]
    lua.open("s1")
    assert lua.submit("j1", "s1", backend="other") == ["error", "backend_mismatch", lua.backend]
    assert lua.submit("j1", "s1") == ["ok", "QUEUED"]
    # another job under the same id is refused ...
    assert lua.submit("j1", "s1", tags=["other"]) == ["error", "duplicate", "j1"]
    # ... the same submit again (redis-py's retry after a lost reply) answers as the first
    assert lua.submit("j1", "s1") == ["ok", "QUEUED"]
    assert lua.r.llen(lua.queue_of("s1")) == 1 and lua.session("s1")["queued"] == "1"
    assert lua.run("close_session", sid="s1") == "pending_closed"
    assert lua.submit("j2", "s1") == ["error", "closed", "pending_closed:"]


# ------------------------------------------------------------------ claim
def test_claim_by_the_pinned_worker_runs_the_job_and_activates_the_session(lua):
    epoch = pinned(lua)
    kind, payload, claim, sid, got_epoch = lua.claim("j1", "w1")
    assert (kind, payload, claim, sid, got_epoch) == ("run", "payload-j1", "w1/1", "s1", epoch)
    j = lua.job("j1")
    assert (j["status"], j["worker"], j["pid"], j["attempts"]) == ("RUNNING", "w1", "4242", "1")
    s = lua.session("s1")
    assert (s["state"], s["queued"], s["running"], s["context"]) == ("active", "0", "1", "ctx")
    assert s["started_at"] and lua.r.exists(lua.k.timer("s1", "max"))
    assert lua.r.smembers(lua.k.worker_running("w1")) == {"j1"}
    assert lua.r.hget(lua.k.histogram("queue_wait"), "count") == "1"


def test_claim_by_an_unpinned_worker_runs_a_job_without_session(lua):
    lua.submit("j1")
    assert lua.claim("j1", "w9")[:3] == ["run", "payload-j1", "w9/1"]


def test_claim_by_another_worker_gives_the_message_back(lua):
    pinned(lua, node="w1")
    assert lua.claim("j1", "w2") == ["skip", "session pinned elsewhere"]
    assert lua.job("j1")["status"] == "QUEUED"
    # pushed again at the head, under a delivery tag of its own
    assert lua.r.lindex(lua.k.session_queue("s1"), -1) == lua.message("j1", "j1.1")


def test_a_pinned_worker_runs_nothing_but_its_session(lua):
    pinned(lua, node="w1")
    lua.submit("free")
    assert lua.claim("free", "w1") == ["skip", "worker pinned to session s1"]
    assert lua.job("free")["status"] == "QUEUED"


def test_the_message_the_lean_consumer_fetched_leaves_its_fetch_list_whatever_the_claim_says(lua):
    """The lean consumer (tasks/consumer.py) keeps a fetched message on the worker's fetch
    list until CLAIM: run (the running set stands for it), bounced (a fresh copy is pushed),
    refused (the record says why): in each case the fetched copy goes, and only it."""
    pinned(lua, node="w1")
    lua.submit("free")
    fetch = lua.k.worker_fetch
    outcomes = []
    for jid, node in (("j1", "w2"), ("free", "w1"), ("j1", "w1"), ("j1", "w1"), ("gone", "w1")):
        text = lua.message(jid) if jid != "gone" else '{"headers":{"id":"gone"}}'
        lua.r.lpush(fetch(node), "other", text)
        outcomes.append(lua.claim(jid, node, fetched=text)[:2])
        assert lua.r.lrange(fetch(node), 0, -1) == ["other"], (jid, node)
        lua.r.delete(fetch(node))
    assert [o[0] for o in outcomes] == ["skip", "skip", "run", "skip", "skip"]
    assert outcomes[0][1] == "session pinned elsewhere" and outcomes[3][1] == "job is RUNNING"
    assert lua.job("free")["status"] == "QUEUED" and lua.r.llen(lua.k.backend_queue(lua.backend)) >= 1


def test_claim_refusals(lua):
    assert lua.claim("nope") == ["skip", "unknown job"]
    lua.submit("j1")
    lua.claim("j1", "w9")
    assert lua.claim("j1", "w9") == ["skip", "job is RUNNING"]


def test_a_worker_simulating_another_device_fails_the_job(lua):
    pinned(lua)
    lua.submit("j2", "s1")
    claim = lua.claim("j1", context="A")[2]
    lua.finish("j1", claim)
    assert lua.claim("j2", context="B") == ["skip", "context mismatch"]
    j = lua.job("j2")
    assert (j["status"], j["error_code"]) == ("ERROR", "failed")
    assert lua.session("s1")["failed"] == "1"


# ------------------------------------------------------------------ finish / notify
def test_finish_ends_the_job_wakes_waiters_and_starts_the_idle_timer(lua):
    pinned(lua)
    claim = lua.claim("j1")[2]
    lua.r.hset(lua.k.unacked, "tag1", "[]")
    lua.r.zadd(lua.k.unacked_index, {"tag1": 1})
    assert lua.finish("j1", claim, tag="tag1") == "ok"
    j = lua.job("j1")
    assert (j["status"], j["result"], j["usage"]) == ("DONE", "R", "0.5")
    assert "payload" not in j and "message" not in j
    assert lua.r.lrange(lua.k.job_done("j1"), 0, -1) == ["1"]
    s = lua.session("s1")
    assert (s["state"], s["running"], s["done"]) == ("active", "0", "1")
    assert lua.r.exists(lua.k.timer("s1", "idle"))
    assert not lua.r.hexists(lua.k.unacked, "tag1")  # acknowledged with the result
    assert lua.r.smembers(lua.k.worker_running("w1")) == set()
    assert lua.r.hget(lua.k.counts, "DONE") == "1"


def test_finish_with_a_stale_claim_changes_nothing(lua):
    pinned(lua)
    lua.claim("j1")
    assert lua.finish("j1", "w1/7") == "stale"
    assert lua.job("j1")["status"] == "RUNNING"
    assert lua.session("s1")["running"] == "1"


def test_a_stale_finish_of_a_job_queued_again_keeps_its_message_record(lua):
    """A crash took the claim back (the job reads QUEUED) but not the fetch: kombu's record
    is the only copy of the message left; the late finish must not delete it."""
    lua.submit("j1")
    lua.r.delete(lua.queue_of(""))  # the message was fetched: it lives in kombu's record only
    lua.r.hset(lua.k.unacked, "tag1", json.dumps([json.loads(lua.message("j1")), "", ""]))
    lua.r.zadd(lua.k.unacked_index, {"tag1": 1})
    assert lua.finish("j1", "w1/1", tag="tag1") == "stale"
    assert lua.r.hexists(lua.k.unacked, "tag1")
    assert lua.run("rescue_unacked", min_age=0, limit=10) == [1, 1]  # given back
    assert lua.r.llen(lua.queue_of("")) == 1


def test_a_quiet_finish_wakes_nobody_until_notify(lua):
    lua.submit("j1")
    claim = lua.claim("j1")[2]
    assert lua.run("notify", jid="j1") == 0  # not final yet
    assert lua.finish("j1", claim, quiet="1") == "ok"
    assert not lua.r.exists(lua.k.job_done("j1"))
    assert lua.run("notify", jid="j1") == 1
    assert lua.r.lrange(lua.k.job_done("j1"), 0, -1) == ["1"]


# ------------------------------------------------------------------ close / cancel
def test_close_with_work_drains_then_closes_at_the_last_finish(lua):
    pinned(lua)
    claim = lua.claim("j1")[2]
    assert lua.run("close_session", sid="s1") == "pending_closed"
    s = lua.session("s1")
    assert (s["state"], s["accepting"]) == ("pending_closed", "0")
    lua.finish("j1", claim)
    s = lua.session("s1")
    assert (s["state"], s["closed_reason"], s["worker"]) == ("closed", "closed", "")
    assert not lua.r.exists(lua.k.worker_pin("w1"))
    assert lua.r.ttl(lua.k.session("s1")) > 0  # kept for its ttl, then gone
    assert lua.r.zscore(lua.k.deadlines, "s1") is None


def test_close_without_work_closes_at_once(lua):
    lua.open("s1")
    assert lua.run("close_session", sid="s1") == "closed"
    assert lua.run("close_session", sid="s1") == "closed"
    assert lua.run("close_session", sid="nope") == ""


def test_cancel_session_fails_its_queued_jobs_and_drops_its_queue(lua):
    pinned(lua)
    lua.submit("j2", "s1")
    assert lua.run("cancel_session", sid="s1") == "closed"
    for jid in ("j1", "j2"):
        j = lua.job(jid)
        assert (j["status"], j["error_code"]) == ("CANCELLED", "cancelled")
    s = lua.session("s1")
    assert (s["state"], s["closed_reason"], s["queued"], s["cancelled"]) == ("closed", "cancelled", "0", "2")
    assert s["first_job_cancelled"] == "j1"
    assert not any(lua.r.exists(k) for k in lua.k.queue_keys(lua.k.session_queue("s1")))
    assert lua.run("cancel_session", sid="nope") == ""


def test_cancel_job(lua):
    lua.open("s1")
    lua.submit("j1", "s1")
    assert lua.run("cancel_job", jid="j1") == "cancelled"
    assert lua.r.llen(lua.k.session_queue("s1")) == 0  # its message is gone too
    assert lua.session("s1")["first_job_cancelled"] == "j1"
    assert lua.run("cancel_job", jid="j1") == "CANCELLED"
    assert lua.run("cancel_job", jid="nope") == "not_found"
    # every later job of a session whose first job was cancelled fails (IBM's rule)
    assert lua.submit("j2", "s1") == ["ok", "ERROR"]
    assert lua.job("j2")["error_code"] == "first_job_cancelled"
    lua.submit("free")
    lua.claim("free", "w9")
    assert lua.run("cancel_job", jid="free") == "running"


# ------------------------------------------------------------------ timers
def test_tick_deactivates_an_idle_session_and_frees_its_worker(lua):
    pinned(lua)
    lua.finish("j1", lua.claim("j1")[2])
    assert lua.run("tick_session", sid="s1") == "active"  # its idle timer still runs
    lua.expire_timer("s1", "idle")
    assert lua.run("tick_session", sid="s1") == "inactive"
    assert lua.session("s1")["worker"] == ""
    assert not lua.r.exists(lua.k.worker_pin("w1"))
    assert lua.run("tick_session", sid="nope") == ""


def test_tick_closes_a_session_never_used(lua):
    lua.open("s1")
    lua.expire_timer("s1", "open")
    assert lua.run("tick_session", sid="s1") == "closed"
    assert lua.session("s1")["closed_reason"] == "open_session_timeout"


def test_tick_at_max_time_fails_the_queued_jobs(lua):
    pinned(lua)
    lua.submit("j2", "s1")
    claim = lua.claim("j1")[2]
    lua.expire_timer("s1", "max")
    assert lua.run("tick_session", sid="s1") == "closed"
    j = lua.job("j2")
    assert (j["status"], j["error_code"]) == ("ERROR", "session_max_time")
    assert lua.session("s1")["closed_reason"] == "max_time"
    assert lua.finish("j1", claim) == "ok"  # the running job still finishes


def test_sweep_ticks_the_sessions_whose_deadline_passed(lua):
    lua.open("s1")
    lua.open("s2")
    lua.expire_timer("s1", "open")
    lua.r.zadd(lua.k.deadlines, {"s1": 1, "gone": 1})
    assert lua.run("sweep_deadlines", limit=10) == 2
    assert lua.session("s1")["state"] == "closed"
    assert lua.session("s2")["state"] == "open"
    assert lua.r.zscore(lua.k.deadlines, "gone") is None


# ------------------------------------------------------------------ tags
def test_update_tags(lua):
    lua.submit("j1", tags=["a"])
    assert lua.run("update_tags", jid="j1", tags=json.dumps(["x", "y"])) == "ok"
    assert json.loads(lua.job("j1")["summary"])["tags"] == ["x", "y"]
    assert lua.run("update_tags", jid="nope", tags="[]") == "not_found"
