"""The loader and the generated key header: the Lua's key names are ``Keys``'s, every script
has a contract and compiles, and arguments are checked by name."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import redis

from session_broker.core import scripts
from session_broker.core.keys import HISTOGRAM_BOUNDS, KOMBU_PRIORITY_SEP, Keys

LUA = Path(scripts.__file__).with_name("lua")
TRANSITIONS = {
    "open_session",
    "submit",
    "claim",
    "finish",
    "job_lost",
    "executor_lost",
    "notify",
    "cancel_job",
    "close_session",
    "cancel_session",
    "tick_session",
    "sweep_deadlines",
    "worker_tick",
    "reap_worker",
    "rescue_unacked",
    "reconcile_worker",
    "dead_workers",
    "update_tags",
    "instance_set",
    "instance_rm",
    "instance_report",
    "restore_instances",
}


def eval_header(r: redis.Redis, prefix: str, expr: str):
    """Evaluate a Lua expression after the generated key header (ARGV[1] = prefix)."""
    return r.eval(scripts.key_header() + f"return {expr}", 0, prefix)


@pytest.mark.parametrize("prefix", ["t", "sb", "a_x-9"])
def test_the_key_header_names_every_key_as_keys_does(lua, prefix):
    names = scripts.translated_members()
    assert {
        "session",
        "job",
        "timer",
        "worker_pin",
        "worker_stalled",
        "queue_keys",
        "deadlines",
        "unacked",
        "bindings",
    } <= set(names)
    keys, table = Keys(prefix), []
    expected = {}
    for name in names:
        attr = getattr(keys, name)
        if callable(attr):
            args = [f"a{i}.x:y" for i in range(len(inspect.signature(attr).parameters))]
            expected[name] = attr(*args)
            table.append(f"['{name}'] = K.{name}({', '.join(repr(a) for a in args)})")
        else:
            expected[name] = attr
            table.append(f"['{name}'] = K.{name}")
    got = json.loads(eval_header(lua.r, prefix, "cjson.encode({" + ", ".join(table) + "})"))
    assert got == expected


def test_one_key_by_hand(lua):
    assert eval_header(lua.r, "t", "K.worker_pin('n')") == Keys("t").worker_pin("n") == "t:w:n:pin"
    assert eval_header(lua.r, "t", "K.jobs") == "t:jobs"


def test_priority_sub_lists_keep_kombus_separator_byte_for_byte(lua, redis_url):
    raw = redis.Redis.from_url(redis_url)  # bytes: the separator is not printable
    got = raw.eval(scripts.key_header() + "return K.queue_keys('q')[2]", 0, "t")
    assert got == f"q{KOMBU_PRIORITY_SEP}3".encode()
    raw.close()


def test_bounds_are_the_histogram_bounds(lua):
    got = json.loads(eval_header(lua.r, "t", "cjson.encode(BOUNDS)"))
    assert got == [float(b) for b in HISTOGRAM_BOUNDS]


def test_error_codes_are_the_enumeration(lua):
    from session_broker.errors import ErrorCode

    got = json.loads(eval_header(lua.r, "t", "cjson.encode(CODE)"))
    assert got == {c.name: c.value for c in ErrorCode}


def test_no_error_code_is_written_in_the_lua():
    """A job's error_code comes from CODE (errors.ErrorCode), never a literal. ('failed' and
    'cancelled' are also a session's counters, 'first_job_cancelled' a session field: those
    uses are not codes.)"""
    from session_broker.errors import ErrorCode

    field = re.compile(r"(s, 'first_job_cancelled'|'first_job_cancelled', '')")
    for path in sorted(LUA.rglob("*.lua")):
        text = re.sub(r"--\[\[.*?\]\]", "", path.read_text(), flags=re.DOTALL)
        for line in text.splitlines():
            code = field.sub("", line.split("--", 1)[0])
            for c in set(ErrorCode) - {ErrorCode.FAILED, ErrorCode.CANCELLED}:
                assert f"'{c.value}'" not in code, f"{path.name}: {line.strip()}"


def test_every_transition_is_a_file_with_a_contract():
    assert set(scripts.names()) == TRANSITIONS
    for name in TRANSITIONS:
        c = scripts.contract(name)
        assert "KEYS: none" in c.text and c.returns, name
        assert c.text.strip().startswith(f"{name}:"), f"{name}.lua's contract opens with its name"


def test_no_key_name_is_written_in_the_lua():
    """Key names come from the generated header (K.*), never from string concatenation."""
    for path in sorted(LUA.rglob("*.lua")):
        text = path.read_text()
        assert not re.search(r"\bP \.\. '", text), f"{path.name} builds a key from P"
        assert "_kombu" not in text and ":w:" not in text and ":s:" not in text, path.name


def test_every_script_compiles_within_luas_limits(lua):
    """SCRIPT LOAD compiles it: a script over 200 locals or 60 upvalues fails here."""
    for name in scripts.names():
        sha = lua.r.script_load(scripts.source(name))
        assert lua.r.script_exists(sha) == [True]


def test_the_binding_line_follows_the_contract():
    c = scripts.contract("claim")
    assert c.argv == ("jid", "node", "pid", "context", "fetched")
    assert (
        scripts.binding(c)
        == "local jid, node, pid, context, fetched = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]"
    )
    assert "local P = ARGV[1]" in scripts.source("claim")


def test_arguments_are_checked_by_name(lua):
    with pytest.raises(TypeError, match="missing node, pid, context, fetched"):
        lua.run("claim", jid="j")
    with pytest.raises(TypeError, match="unknown bogus"):
        lua.run("claim", jid="j", node="n", pid=1, context="c", fetched="", bogus=1)
    with pytest.raises(TypeError, match="None"):
        lua.run("claim", jid=None, node="n", pid=1, context="c", fetched="")
    with pytest.raises(ValueError, match="no Lua script"):
        lua.run("nope")


def test_a_contract_without_argv_is_refused():
    with pytest.raises(ValueError, match="ARGV"):
        scripts.parse_contract("x", "--[[\nx: y\nKEYS: none\nReturns: 1\n]]\nreturn 1\n")
    with pytest.raises(ValueError, match="identifiers"):
        scripts.parse_contract("x", "--[[\nx: y\nKEYS: none\nARGV: a, end\nReturns: 1\n]]\n")
    c = scripts.parse_contract("x", "--[[\nx: y\nKEYS: none\nARGV: a,\n  b, c\nReturns: 1\n]]\n")
    assert c.argv == ("a", "b", "c")
