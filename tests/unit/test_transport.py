"""The worker's envelope check: each malformed message is named, a real one passes."""

import base64
import json

import pytest

from session_broker.core.messages import task_message
from session_broker.core.transport import envelope_problem


def good():
    return json.loads(task_message("sampler", "abc123", "sb.backend.x", {}, argsrepr="job=abc123"))


def with_body(body):
    m = good()
    m["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return m


def edit(path, value):
    m = good()
    target = m
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return m


CASES = {
    "not an object": (["x"], "not an object"),
    "no properties": (edit(["properties"], KeyError), "properties"),
    "delivery_tag not a string": (edit(["properties", "delivery_tag"], 5), "delivery_tag"),
    "task header not a string": (edit(["headers", "task"], ["sampler"]), "headers.task"),
    "no id": (edit(["headers", "id"], KeyError), "headers.id"),
    "bad timelimit": (edit(["headers", "timelimit"], "ten"), "timelimit"),
    "eta set": (edit(["headers", "eta"], "2020-01-01"), "headers.eta"),
    "retries not int": (edit(["headers", "retries"], "0"), "retries"),
    "body not base64": (edit(["body"], "not base64!"), "base64"),
    "unknown body encoding": (edit(["properties", "body_encoding"], "rot13"), "body_encoding"),
    "body not JSON": (edit(["body"], base64.b64encode(b"{oops").decode()), "not JSON"),
    "body a string": (with_body("hello"), "protocol 2"),
    "body two items": (with_body([[], {}]), "protocol 2"),
    "callbacks embedded": (with_body([["a"], {}, {"callbacks": [{"task": "x"}]}]), "callbacks"),
    "content-type missing": (edit(["content-type"], KeyError), "content-type"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_envelopes_are_named(name):
    message, words = CASES[name]
    problem = envelope_problem(message)
    assert problem is not None and words in problem


def test_our_own_message_passes():
    assert envelope_problem(good()) is None


def test_other_content_types_are_left_to_celery_to_refuse():
    m = good()
    m["content-type"] = "application/x-python-serialize"
    m["body"] = base64.b64encode(b"\x80\x04K\x01.").decode()
    assert envelope_problem(m) is None
