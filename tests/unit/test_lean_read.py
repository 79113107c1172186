"""The lean consumer's reading of a fetched message (``tasks/consumer.read``): a job message
gives its job id, task and hard limit; anything Celery's request path would refuse (or crash
on) is refused with the reason, for the dead-letter list. And the job path's setting."""

import base64
import json

import pytest

from session_broker.core.messages import task_message
from session_broker.errors import ConfigurationError
from tasks.consumer import Message, read
from tasks.link import job_path

JID = "a" * 20


def text(task="sampler", body=None, **headers) -> str:
    m = json.loads(
        task_message(task, JID, "sb.backend.x", {"backend": "x"}, argsrepr="job=a", time_limit=7.0)
    )
    m["headers"].update(headers)
    if body is not None:
        m["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(m)


def test_a_job_message_is_read():
    msg = read(text(), None)
    assert isinstance(msg, Message)
    assert (msg.job_id, msg.task, msg.task_id, msg.hard_limit) == (JID, "sampler", JID, 7.0)
    assert msg.delivery_info["routing_key"] == "sb.backend.x"


def test_a_plain_celery_producers_task_id_is_not_the_job_id():
    msg = read(text(id="0" * 36), None)
    assert isinstance(msg, Message) and msg.job_id == JID and msg.task_id == "0" * 36


def test_the_apps_time_limit_applies_when_the_message_names_none():
    assert read(text(timelimit=[None, None]), 30.0).hard_limit == 30.0
    assert read(text(timelimit=[None, None]), None).hard_limit == 0.0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (text(task="celery.ping"), "is not one of session-broker's"),
        (text(body=[[JID, "x"], {}, None]), "takes one argument"),
        (text(body=[[], {}, None]), "takes one argument"),
        (text(body=[[JID], {"job_id": JID}, None]), "takes one argument"),
        (text(body=[[123], {}, None]), "is not a job id"),
        (text(body=[["../../x"], {}, None]), "is not a job id"),
        ("garbage {", "envelope is not JSON"),
        (json.dumps([1, 2]), "envelope is a list"),
    ],
)
def test_what_celery_would_refuse_is_refused_with_its_reason(raw, why):
    refused = read(raw, None)
    assert isinstance(refused, str) and why in refused


def test_a_message_of_another_content_type_is_refused():
    m = json.loads(text())
    m["content-type"] = "application/x-python-serialize"
    assert "is refused" in read(json.dumps(m), None)


def test_the_job_path_setting_names_what_is_allowed(monkeypatch):
    monkeypatch.delenv("SESSION_BROKER_JOB_PATH", raising=False)
    assert job_path() == "lean"
    monkeypatch.setenv("SESSION_BROKER_JOB_PATH", "celery")
    assert job_path() == "celery"
    monkeypatch.setenv("SESSION_BROKER_JOB_PATH", "fast")
    with pytest.raises(ConfigurationError, match="'lean'.*'celery'"):
        job_path()
