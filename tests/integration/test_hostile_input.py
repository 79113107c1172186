"""Hostile input at the worker: messages written straight into Redis, not by our client.

Anyone who can write to Redis can push anything onto a backend queue. Whatever arrives,
the worker must (1) never execute code named by the sender, (2) end a job whose payload
is bad in ERROR with ``invalid_payload`` and a message that says what was wrong, (3) drop
a message that is not a well-formed task for one of our jobs, and (4) keep running: after
every case below the same worker process runs a normal job to DONE. Every wait has a
deadline, so a worker that hangs or dies fails the test instead of stalling it.

The producer here is the test itself, writing job records like the SUBMIT script does
(``tests.support.faults.plant_job``) and messages built with ``messages.task_message``.
"""

from __future__ import annotations

import base64
import json
import pickle
import struct
import time

import pytest
from qiskit.primitives.containers import SamplerPub

from session_broker import InvalidPayloadError, SamplerV2
from session_broker.core import codec
from session_broker.core.messages import task_message
from session_broker.core.store import FINAL_JOB_STATUSES
from session_broker.ops.embedded import wait_for
from tests.conftest import make_cluster
from tests.support.faults import BACKEND, assert_bell_counts, bell_circuit, log_tail, plant_job

LIMIT = 200_000  # the workers' SESSION_BROKER_MAX_PAYLOAD_BYTES in this module
OPTIONS = {"api": "v2", "seed_simulator": None, "max_execution_time": None}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hc(stack, redis_url):
    c = make_cluster(stack, redis_url, env={"SESSION_BROKER_MAX_PAYLOAD_BYTES": str(LIMIT)})
    c.current = c.start_worker(BACKEND, name="hostile-0@%h")
    c.generation = 0
    c.deaths = []
    return c


@pytest.fixture
def worker(hc):
    """The module's worker; if an earlier case killed it, a fresh one (the death is recorded
    by that case's failure), so one bug does not fail every later case."""
    w = hc.current
    if w.proc.poll() is not None:
        if w in hc.stack.children:
            hc.stack.children.remove(w)
        # A worker that dies on a message gives it back on the way out ("Restoring 1
        # unacknowledged message(s)"), so every new worker would die on it too: clear the
        # queue and kombu's unacked index before starting the next one.
        r = hc.store.redis
        r.delete(queue(hc), hc.store.keys.unacked, hc.store.keys.unacked_index)
        hc.generation += 1
        hc.current = hc.start_worker(BACKEND, name=f"hostile-{hc.generation}@%h")
    return hc.current


def queue(c) -> str:
    return c.store.keys.backend_queue(BACKEND)


def bell_payload(shots: int = 32) -> str:
    pubs = codec.encode_sampler_pubs([SamplerPub.coerce(bell_circuit(), shots)])
    return codec.encode_payload("sampler", pubs, OPTIONS, max_bytes=10**8)


def with_circuit(qpy_b64: str) -> str:
    obj = json.loads(bell_payload())
    obj["pubs"][0]["circuit"] = qpy_b64
    return json.dumps(obj)


def qpy_bytes() -> bytes:
    return base64.b64decode(json.loads(bell_payload())["pubs"][0]["circuit"])


def assert_survives(c, w, what: str) -> None:
    """The hostile message left the queue, the worker process is alive, and it still runs a
    normal job to DONE (submitted after the hostile message, so it is fetched after it)."""
    try:
        wait_for(
            lambda: c.store.redis.llen(queue(c)) == 0 or w.proc.poll() is not None,
            60,
            f"the worker to take the message ({what})",
        )
    except TimeoutError:
        pytest.fail(f"{what}: the worker did not take the hostile message within 60 s\n{log_tail(w.log)}")
    job = SamplerV2(mode=c.service.backend(BACKEND)).run([bell_circuit()], shots=64)
    try:
        wait_for(
            lambda: w.proc.poll() is not None or job.status() in FINAL_JOB_STATUSES,
            90,
            f"a normal job after {what}",
        )
    except TimeoutError:
        pytest.fail(
            f"{what}: a normal job submitted after it did not finish within 90 s; the "
            f"worker hangs\n{log_tail(w.log)}"
        )
    assert w.proc.poll() is None, (
        f"{what}: the worker process exited (code {w.proc.returncode}): a hostile producer can stop "
        f"every worker of a backend with one message\n{log_tail(w.log, 60)}"
    )
    assert job.status() == "DONE", c.store.job(job.job_id())
    assert_bell_counts(job.result(timeout=10), 64)


def wait_job_final(c, jid: str, timeout: float = 60) -> dict:
    try:
        wait_for(
            lambda: c.store.job(jid, "status").get("status") in FINAL_JOB_STATUSES,
            timeout,
            f"job {jid} to end",
        )
    except TimeoutError:
        pytest.fail(
            f"planted job {jid} still {c.store.job(jid, 'status')} after {timeout} s\n"
            f"{log_tail(c.current.log)}"
        )
    return c.store.job(jid)


# ------------------------------------------------------------------------------ control
def test_control_a_planted_well_formed_job_runs(hc, worker):
    """The planting itself is right: a hostile producer's well-formed job runs DONE, so the
    ERRORs below come from the payloads, not from a broken record or message."""
    jid = plant_job(hc.store, payload=bell_payload(32))
    rec = wait_job_final(hc, jid)
    assert rec["status"] == "DONE", rec
    assert rec["attempts"] == "1" and rec["worker"] == worker.node
    assert_bell_counts(hc.service.job(jid).result(timeout=10), 32)


# ------------------------------------------------------------------------------ bad payloads
def _truncated_qpy() -> str:
    raw = qpy_bytes()
    return base64.b64encode(raw[: len(raw) // 2]).decode()


def _lying_qpy_header() -> str:
    """A QPY whose circuit header claims 2**31 qubits (qpy.load would try to allocate them)."""
    raw = bytearray(qpy_bytes())
    version = raw[6]
    pos = struct.calcsize("!6sBBBBQc") + 1
    if version >= 16:
        (pos,) = struct.unpack_from("!Q", raw, pos)
    # CIRCUIT_HEADER_V12 "!H1cHIIQIQI": name_size, global_phase_type, phase_size, num_qubits...
    struct.pack_into("!I", raw, pos + 2 + 1 + 2, 2**31)
    return base64.b64encode(bytes(raw)).decode()


def _scrambled_qpy() -> str:
    raw = bytearray(qpy_bytes())
    for i in range(60, len(raw) - 8, 7):  # keep the headers, scramble the instructions
        raw[i] ^= 0xA5
    return base64.b64encode(bytes(raw)).decode()


def _huge_payload() -> str:
    obj = json.loads(bell_payload())
    obj["options"]["padding"] = "x" * (LIMIT + 10_000)
    return json.dumps(obj)


def _lying_array() -> str:
    """Parameter bindings claiming a 10**9-element array backed by 8 bytes."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    theta = Parameter("t")
    qc = QuantumCircuit(1)
    qc.rx(theta, 0)
    qc.measure_all()
    pubs = codec.encode_sampler_pubs([SamplerPub.coerce((qc, [0.5]), 16)])
    pubs[0]["params"]["shape"] = [10**9]
    pubs[0]["params"]["data"][0]["array"]["shape"] = [10**9, 1]
    return codec.encode_payload("sampler", pubs, OPTIONS, max_bytes=10**8)


def _estimator_payload_for_sampler_task() -> str:
    from qiskit import QuantumCircuit
    from qiskit.primitives.containers import EstimatorPub

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    pubs = codec.encode_estimator_pubs([EstimatorPub.coerce((qc, "ZZ"))])
    return codec.encode_payload("estimator", pubs, OPTIONS, max_bytes=10**8)


BAD_PAYLOADS = {
    # (a) not JSON at all
    "invalid_json": ("{not json", "not valid JSON"),
    "nan_literal": (bell_payload().replace('"options":{', '"options":{"x":NaN,'), "not allowed"),
    "deeply_nested": ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    "empty_string": ("", "not valid JSON"),
    # (b) JSON, wrong schema
    "top_level_list": ("[1, 2, 3]", "expected a JSON object"),
    "wrong_version": (bell_payload().replace('"v":1', '"v":2'), "wire version"),
    "unknown_primitive": (
        bell_payload().replace('"primitive":"sampler"', '"primitive":"qaoa"'),
        "unknown primitive",
    ),
    "empty_pubs": (
        json.dumps({"v": 1, "primitive": "sampler", "pubs": [], "options": {}}),
        "non-empty list of PUBs",
    ),
    "pub_wrong_keys": (
        json.dumps({"v": 1, "primitive": "sampler", "pubs": [{"foo": 1}], "options": {}}),
        "missing key",
    ),
    "extra_top_key": (bell_payload()[:-1] + ',"exec":"import os"}', "unknown key"),
    "shots_negative": (bell_payload().replace('"shots":32', '"shots":-5'), "outside the allowed range"),
    "options_not_object": (
        bell_payload().replace(
            '"options":{"api":"v2","seed_simulator":null,"max_execution_time":null}', '"options":[1]'
        ),
        "expected a JSON object",
    ),
    "estimator_payload_to_sampler_task": (
        _estimator_payload_for_sampler_task(),
        "sent to the 'sampler' task",
    ),
    "lying_array_shape": (_lying_array(), "elements"),
    # (c) corrupt QPY
    "qpy_not_base64": (with_circuit("@@@ not base64 @@@"), "invalid base64"),
    "qpy_not_qpy": (with_circuit(base64.b64encode(b"MZ\x90\x00" * 40).decode()), "QPY"),
    "qpy_truncated": (with_circuit(_truncated_qpy()), "QPY"),
    "qpy_lying_header": (with_circuit(_lying_qpy_header()), "qubits"),
    "qpy_scrambled": (with_circuit(_scrambled_qpy()), "invalid payload"),
    # (d) over the workers' max_payload_bytes
    "huge_payload": (_huge_payload(), "over the limit"),
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payload_ends_in_error_and_worker_goes_on(hc, worker, case):
    payload, says = BAD_PAYLOADS[case]
    jid = plant_job(hc.store, payload=payload)
    rec = wait_job_final(hc, jid)
    assert rec["status"] == "ERROR", rec
    assert rec["error_code"] == "invalid_payload", rec
    assert says in rec["error"], rec["error"]
    assert len(rec["error"]) < 2000, "error messages must stay readable"
    assert rec["attempts"] == "1" and rec["worker"] == worker.node
    with pytest.raises(InvalidPayloadError, match="could not be decoded"):
        hc.service.job(jid).result(timeout=10)
    assert_survives(hc, worker, f"payload case {case!r}")


# ------------------------------------------------------------------------------ bad messages
def _message(jid: str, *, task: str = "sampler", body=None, raw_body: str | None = None, **fields) -> str:
    obj = json.loads(task_message(task, jid, "x", {}, argsrepr=f"job={jid}"))
    obj["properties"]["delivery_info"]["routing_key"] = "sb.backend." + BACKEND
    if body is not None:
        obj["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    if raw_body is not None:
        obj["body"] = raw_body
    obj.update(fields)
    return json.dumps(obj)


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# name -> function(jid of a planted, well-formed QUEUED job) -> the raw text to LPUSH
BAD_MESSAGES = {
    # (e) the Celery body is not JSON / not base64 / not [args, kwargs, embed]
    "body_not_json": lambda j: _message(
        j, raw_body=base64.b64encode(b'[["' + j.encode() + b'"], {').decode()
    ),
    "body_not_base64": lambda j: _message(j, raw_body="!!! not base64 !!!"),
    "body_json_string": lambda j: _message(j, body="x"),
    "body_json_number": lambda j: _message(j, body=5),
    "body_json_object": lambda j: _message(j, body={"args": "x"}),
    "body_two_items": lambda j: _message(j, body=[[j], {}]),
    "kwargs_not_a_dict": lambda j: _message(j, body=[[j], [1, 2], EMBED]),
    # (g) arguments of the wrong types
    "job_id_int": lambda j: _message(j, body=[[123], {}, EMBED]),
    "job_id_list": lambda j: _message(j, body=[[[j]], {}, EMBED]),
    "job_id_10kB": lambda j: _message(j, body=[["a" * 10_000], {}, EMBED]),
    "job_id_null": lambda j: _message(j, body=[[None], {}, EMBED]),
    "job_id_dict": lambda j: _message(j, body=[[{"id": j}], {}, EMBED]),
    "job_id_path": lambda j: _message(j, body=[["../../" + j], {}, EMBED]),
    "no_args": lambda j: _message(j, body=[[], {}, EMBED]),
    "too_many_args": lambda j: _message(j, body=[[j, "sampler", 3, 4], {}, EMBED]),
    "unknown_task": lambda j: _message(j, task="celery.contrib.abortable.evil"),
    "task_header_not_a_string": lambda j: _message(j, headers={"task": ["sampler"], "id": j}),
    # the envelope itself (kombu's JSON wrapper) is not a message
    "envelope_not_json": lambda j: "garbage {{ not json",
    "envelope_json_string": lambda j: json.dumps("hello"),
    "envelope_json_list": lambda j: json.dumps([1, 2]),
    "envelope_without_properties": lambda j: json.dumps({"body": "", "headers": {"task": "sampler"}}),
    "envelope_body_number": lambda j: json.dumps({"body": 5, "properties": {"delivery_tag": "t"}}),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_hostile_message_is_dropped_and_worker_goes_on(hc, worker, case):
    # A planted job the message points at: a dropped message must not run it, and nothing
    # else may run it either (its record stays QUEUED, attempts 0).
    jid = plant_job(hc.store, payload=bell_payload(), push=False)
    hc.store.redis.lpush(queue(hc), BAD_MESSAGES[case](jid))
    assert_survives(hc, worker, f"message case {case!r}")
    rec = hc.store.job(jid)
    assert rec["status"] == "QUEUED" and rec["attempts"] == "0", rec
    hc.store.cancel_job(jid)  # tidy: nothing else references it


def test_message_for_a_job_that_does_not_exist(hc, worker):
    """(f) A well-formed message naming no job: skipped, and no record is created for it."""
    ghost = "ghost" + "0" * 15
    hc.store.redis.lpush(queue(hc), task_message("sampler", ghost, queue(hc), {}, argsrepr="x"))
    assert_survives(hc, worker, "a message for an unknown job id")
    assert not hc.store.redis.exists(hc.store.keys.job(ghost))
    assert hc.store.redis.zscore(hc.store.keys.jobs, ghost) is None


def test_replayed_message_of_a_finished_job_does_not_run_again(hc, worker):
    """A captured message pushed again after its job ended is skipped by the claim."""
    job = SamplerV2(mode=hc.service.backend(BACKEND)).run([bell_circuit()], shots=16)
    job.result(timeout=60)
    before = hc.store.job(job.job_id())
    for _ in range(3):
        hc.store.redis.lpush(
            queue(hc), task_message("sampler", job.job_id(), queue(hc), {}, argsrepr="replay")
        )
    assert_survives(hc, worker, "a replayed message")
    after = hc.store.job(job.job_id())
    assert after == before, "a replayed message changed a finished job's record"
    assert after["attempts"] == "1"


class _Gadget:
    """Unpickling this creates a file: if the marker appears, the worker ran sender code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_message_is_refused(hc, worker, tmp_path):
    """(h) A pickle-serialized task (what a pickle task serializer would send) is refused:
    the gadget in it is never unpickled, the job it names never runs."""
    marker = tmp_path / "pwned"
    jid = plant_job(hc.store, payload=bell_payload(), push=False)
    body = pickle.dumps(([jid], {"x": _Gadget(str(marker))}, EMBED), protocol=2)
    msg = _message(
        jid,
        raw_body=base64.b64encode(body).decode(),
        **{"content-type": "application/x-python-serialize", "content-encoding": "binary"},
    )
    hc.store.redis.lpush(queue(hc), msg)
    assert_survives(hc, worker, "a pickled message")
    assert not marker.exists(), "the worker unpickled a message: remote code execution"
    rec = hc.store.job(jid)
    assert rec["status"] == "QUEUED" and rec["attempts"] == "0", rec
    hc.store.cancel_job(jid)


def test_the_same_worker_survived_every_case(hc):
    """Summary: every case above ran against one worker process unless a case killed it."""
    assert hc.current.proc.poll() is None
    assert hc.generation == 0, (
        f"{hc.generation} hostile message(s) stopped a worker process (see the failed cases)"
    )


def test_remote_control_and_events_still_pass_through_the_hardened_transport(hc, worker):
    """The check on task messages must not touch Celery's other traffic: remote-control
    broadcasts and their replies (``inspect().ping()``, revoke, add_consumer) and task/worker
    events (what Flower shows) have no task header, and must still arrive."""
    from session_broker.celery_app import make_app
    from session_broker.core.config import load_settings

    app = make_app(load_settings({"SESSION_BROKER_URL": hc.url}))
    replies = app.control.inspect(timeout=5, destination=[worker.node]).ping()
    assert replies == {worker.node: {"ok": "pong"}}, f"no ping reply from {worker.node}: {replies}"

    seen: list[str] = []
    deadline = time.monotonic() + 15
    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": lambda event: seen.append(event["type"])})
        while not seen and time.monotonic() < deadline:  # wakeup asks workers for a heartbeat
            try:
                receiver.capture(limit=5, timeout=5, wakeup=True)
            except TimeoutError:
                pass
    assert "worker-heartbeat" in seen or "worker-online" in seen, (
        f"no worker event reached an event consumer within 15 s (saw {seen})"
    )
