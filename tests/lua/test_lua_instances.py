"""Instances in the Lua transitions: recording, unknown names, usage limits and their period,
the held lines and fair-share feed, fair pinning of waiting sessions, session caps, and the
workers' copy of the settings."""

from __future__ import annotations

import json
from collections import Counter


def configure(lua, name: str, **settings) -> None:
    settings.setdefault("share", 1)
    assert lua.run("instance_set", instance=name, settings=json.dumps(settings)) in ("created", "changed")


def run_next(lua, node: str = "w1", usage: str = "1.0") -> str:
    """A worker takes the next message of the backend's queue, runs it, finishes it: its job id."""
    raw = lua.r.rpop(lua.k.backend_queue(lua.backend))
    assert raw is not None, "nothing in the backend's queue"
    jid = json.loads(raw)["headers"]["id"]
    res = lua.claim(jid, node)
    assert res[0] == "run", res
    assert lua.finish(jid, res[2], usage=usage) == "ok"
    return jid


def test_without_instances_a_named_instance_is_ignored_and_jobs_queue_as_before(lua):
    assert lua.submit("j1", instance="physics") == ["ok", "QUEUED"]
    assert lua.job("j1")["instance"] == ""
    assert lua.r.llen(lua.k.backend_queue(lua.backend)) == 1
    assert not lua.r.exists(lua.k.held_instances(lua.backend))


def test_an_unknown_instance_is_refused_naming_the_known_ones(lua):
    configure(lua, "b-lab")
    configure(lua, "a-lab")
    assert lua.submit("j1", instance="nope") == ["error", "unknown_instance", "a-lab,b-lab"]
    assert not lua.r.exists(lua.k.job("j1"))
    assert lua.open_raw("s1", instance="nope") == ["error", "unknown_instance", "a-lab,b-lab"]


def test_usage_is_counted_at_finish_and_the_limit_refuses_new_jobs_until_the_period_resets(lua):
    configure(lua, "a", usage_limit=2, period="3600")
    configure(lua, "b")
    for n in range(3):
        assert lua.submit(f"a{n}", instance="a") == ["ok", "QUEUED"]
    run_next(lua, usage="1.5")
    assert lua.submit("a3", instance="a") == ["ok", "QUEUED"]  # 1.5 s < 2 s
    run_next(lua, usage="1.5")
    refused = lua.submit("a4", instance="a")
    assert refused[:2] == ["error", "usage_limit"]
    name, limit, used, reset = refused[2].split("|")
    assert (name, float(limit), float(used)) == ("a", 2.0, 3.0)
    assert float(reset) % 3600 == 0 and 0 < float(reset) - lua.now() <= 3600
    assert lua.submit("b1", instance="b") == ["ok", "QUEUED"]  # another instance still runs
    run_next(lua)  # jobs queued before the limit still run
    usage = lua.r.hgetall(lua.k.instance_usage("a"))
    assert float(usage["total"]) == 4.0 and usage["jobs"] == "3"
    # the period ends: the usage record is of an earlier period, so it counts from zero
    lua.r.hset(lua.k.instance_usage("a"), "period", float(usage["period"]) - 3600)
    assert lua.submit("a5", instance="a") == ["ok", "QUEUED"]
    assert float(lua.r.hget(lua.k.instance_usage("a"), "used")) == 0
    assert float(lua.r.hget(lua.k.instance_usage("a"), "total")) == 4.0


def test_calendar_periods_reset_at_midnight_monday_and_the_first(lua):
    expr = "local s, e = period_bounds(ARGV[2], tonumber(ARGV[3])); return {tostring(s), tostring(e)}"
    from session_broker.core import scripts

    def bounds(period: str, t: int) -> list[int]:
        src = scripts.key_header() + scripts.lib_source() + expr
        return [int(float(x)) for x in lua.r.eval(src, 0, "t", period, t)]

    t = 1764772373  # 2025-12-03 14:32:53 UTC, a Wednesday
    assert bounds("day", t) == [1764720000, 1764806400]
    assert bounds("week", t) == [1764547200, 1765152000]  # Mon 1 Dec .. Mon 8 Dec
    assert bounds("month", t) == [1764547200, 1767225600]  # 1 Dec .. 1 Jan 2026
    assert bounds("month", 1709251199) == [1706745600, 1709251200]  # Feb 2024 (leap year)


def test_the_held_lines_feed_the_queue_by_fair_share(lua):
    configure(lua, "A", share=1)
    configure(lua, "B", share=1)
    configure(lua, "C", share=2)
    for inst in "ABC":
        for n in range(12):
            assert lua.submit(f"{inst}{n}", instance=inst) == ["ok", "QUEUED"]
    q = lua.k.backend_queue(lua.backend)
    assert lua.r.llen(q) == 1  # one message in the queue; the rest wait in their lines
    assert lua.r.llen(lua.k.held(lua.backend, "A")) == 11
    order = [run_next(lua)[0] for _ in range(20)]
    first = Counter(order)
    assert first["C"] >= 9 and first["A"] >= 4 and first["B"] >= 4, order
    # FIFO within an instance
    assert [j for j in order if j[0] == "C"][:3] == ["C", "C", "C"]
    done = [run_next(lua) for _ in range(16)]
    assert len(set(done)) == 16 and lua.r.llen(q) == 0
    assert not lua.r.exists(lua.k.held_instances(lua.backend))


def test_fifo_within_an_instance(lua):
    configure(lua, "A")
    for n in range(4):
        lua.submit(f"A{n}", instance="A")
    assert [run_next(lua) for _ in range(4)] == ["A0", "A1", "A2", "A3"]


def test_a_held_job_cancelled_leaves_its_line(lua):
    configure(lua, "A")
    for n in range(3):
        lua.submit(f"A{n}", instance="A")
    assert lua.run("cancel_job", jid="A2") == "cancelled"
    assert lua.r.llen(lua.k.held(lua.backend, "A")) == 1
    assert lua.r.hget(lua.k.instance_usage("A"), "held") == "1"
    assert [run_next(lua) for _ in range(2)] == ["A0", "A1"]


def test_a_free_worker_pins_the_session_of_the_instance_with_least_usage(lua):
    configure(lua, "greedy")
    configure(lua, "other")
    lua.r.hset(lua.k.instance_usage("greedy"), mapping={"fair": 50, "fair_at": lua.now()})
    for n in range(3):
        lua.open(f"g{n}", instance="greedy")
        lua.submit(f"gj{n}", f"g{n}")
    lua.open("o1", instance="other")
    lua.submit("oj", "o1")
    assert lua.r.lrange(lua.k.waiting(lua.backend), 0, -1) == ["g0", "g1", "g2", "o1"]
    pin, *_ = lua.tick("w1")
    assert pin == "o1"
    pin, *_ = lua.tick("w2")
    assert pin == "g0"  # then FIFO


def test_sessions_are_capped_and_a_default_max_time_is_lowered(lua):
    configure(lua, "A", max_sessions=2, max_session_time=100)
    lua.open("s1", instance="A", max_time=50)
    assert lua.open_raw("s2", instance="A", max_time=600, explicit="0") == ["ok", "100"]
    assert lua.session("s2")["max_time"] == "100"
    assert lua.open_raw("s3", instance="A", max_time=600) == ["error", "max_session_time", "A|100"]
    assert lua.open_raw("s3", instance="A", max_time=60) == ["error", "max_sessions", "A|2"]
    assert lua.open_raw("b1", mode="batch", instance="A", max_time=60)[0] == "ok"  # batches are not capped
    assert lua.run("cancel_session", sid="s1") == "closed"
    assert lua.open_raw("s3", instance="A", max_time=60)[0] == "ok"


def test_workers_put_the_instances_back_when_redis_lost_them(lua):
    assert lua.tick("w1")[4] == ""  # none kept in Redis
    configure(lua, "A", share=3)
    assert lua.tick("w1")[4] == "1"  # the change counter: the agent refreshes its copy at once
    copy = lua.run("restore_instances", copy="{}")
    assert json.loads(json.loads(copy)["A"])["share"] == 3
    lua.r.flushdb()
    assert json.loads(lua.run("restore_instances", copy=copy)) == json.loads(copy)
    assert lua.r.hexists(lua.k.instances, "A")
    # removing the last instance is not a loss: the change counter keeps the hash
    assert lua.run("instance_rm", instance="A") == 1
    assert lua.r.exists(lua.k.instances)
    assert json.loads(lua.run("restore_instances", copy=copy)) == {".": "2"}


def test_the_report_lists_usage_waiting_work_and_sessions(lua):
    configure(lua, "A", usage_limit=10, period="day")
    for n in range(3):
        lua.submit(f"A{n}", instance="A")
    run_next(lua, usage="2.5")
    lua.open("s1", instance="A")
    (row,) = json.loads(lua.run("instance_report", instance=""))
    assert row["name"] == "A" and row["used"] == 2.5 and row["held"] == 1 and row["sessions"] == 1
    assert row["reset"] % 86400 == 0


def test_held_jobs_still_run_after_the_last_instance_is_removed(lua):
    configure(lua, "A")
    for n in range(3):
        lua.submit(f"A{n}", instance="A")
    assert lua.run("instance_rm", instance="A") == 1
    assert lua.submit("x", instance="A") == ["ok", "QUEUED"]  # no instance configured: as before
    assert sorted(run_next(lua) for _ in range(4)) == ["A0", "A1", "A2", "x"]
    assert not lua.r.exists(lua.k.held_instances(lua.backend))


def test_a_free_worker_feeds_its_queue_from_the_held_lines(lua):
    configure(lua, "A")
    for n in range(2):
        lua.submit(f"A{n}", instance="A")
    lua.r.delete(lua.k.backend_queue(lua.backend))  # say a requeue raced: the queue is empty
    lua.tick("w1")
    assert lua.r.llen(lua.k.backend_queue(lua.backend)) == 1
