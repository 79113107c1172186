"""Fuzz of the worker's decoder: whatever arrives, ``decode_payload`` returns a valid job or
raises ``InvalidPayloadError``. Nothing else may escape, nothing may take long, and memory
must not balloon (a crash of the worker process is what this guards against).

``SB_FUZZ_EXAMPLES`` sets the examples per test (300 by default for CI; 10000 for the
benchmark-sized run).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import resource
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter, ParameterVector
from qiskit.circuit.classical import expr
from qiskit.circuit.library import PauliEvolutionGate, UnitaryGate
from qiskit.primitives.containers import EstimatorPub, SamplerPub
from qiskit.quantum_info import SparsePauliOp

from session_broker.core import codec
from session_broker.errors import InvalidPayloadError

EXAMPLES = int(os.environ.get("SB_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PER_EXAMPLE_S = 5.0  # a decode takes well under 10 ms; 5 s means a hang
MAX_BYTES = 1 << 20
RSS_GROWTH_LIMIT_KB = 2 << 20  # 2 GiB over the whole module


class Hang(BaseException):
    """Raised by SIGALRM; a BaseException so the decoder's ``except Exception`` cannot eat it."""


def decode_or_reject(data):
    """The property under test, for one input."""

    def on_alarm(signum, frame):
        raise Hang

    can_alarm = hasattr(signal, "setitimer")
    if can_alarm:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, PER_EXAMPLE_S)
    start = time.perf_counter()
    try:
        job = codec.decode_payload(data, max_bytes=MAX_BYTES)
    except InvalidPayloadError as exc:
        message = str(exc)
        assert message.startswith("invalid payload"), message
        assert "MemoryError" not in message, message
        job = None
    except Hang:
        raise AssertionError(f"decode_payload ran over {PER_EXAMPLE_S} s") from None
    finally:
        if can_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    assert elapsed < PER_EXAMPLE_S, f"decode_payload took {elapsed:.1f} s"
    if job is not None:
        assert job.primitive in codec.PRIMITIVES and job.pubs and isinstance(job.options, dict)
        expected = SamplerPub if job.primitive == "sampler" else EstimatorPub
        for pub in job.pubs:
            assert type(pub) is expected
            pub.validate()
            assert pub.circuit.num_qubits <= codec.MAX_QUBITS
    return job


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """A decoder that allocates what a payload declares would show up as RSS growth."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < RSS_GROWTH_LIMIT_KB, f"peak RSS grew by {grown} kB while fuzzing"


# --- valid payloads to mutate ----------------------------------------------------------------


def rich_circuit() -> QuantumCircuit:
    """Most of what QPY can hold: custom gates, matrices, expressions, control flow, metadata."""
    a, v = Parameter("a"), ParameterVector("v", 3)
    c1, c2 = ClassicalRegister(2, "c1"), ClassicalRegister(3, "c2")
    qc = QuantumCircuit(QuantumRegister(4, "q"), c1, c2, global_phase=a / 2, metadata={"k": [1]})
    sub = QuantumCircuit(2, name="mygate")
    sub.h(0)
    sub.crz(v[0], 0, 1)
    qc.append(sub.to_gate(), [0, 1])
    qc.rx(a * v[1] + 1, 2)
    qc.u(v[0], v[1], v[2], 3)
    qc.append(UnitaryGate(np.eye(4)), [1, 2])
    qc.append(PauliEvolutionGate(SparsePauliOp(["XX", "ZZ"], [1.0, 0.5]), time=0.3), [0, 3])
    qc.barrier()
    qc.delay(100, 0, unit="dt")
    qc.measure([0, 1], c1)
    with qc.if_test((c1, 1)) as else_:
        qc.x(0)
    with else_:
        qc.y(1)
    with qc.for_loop(range(2)):
        qc.h(2)
    with qc.switch(expr.bit_and(c2, 3)) as case:
        with case(0):
            qc.z(3)
        with case(case.DEFAULT):
            qc.s(3)
    qc.measure(range(3), c2)
    return qc


from tests.support.faults import bell_circuit as bell  # noqa: E402  (one Bell circuit for all tests)


def ansatz() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.ry(Parameter("x"), 0)
    qc.rx(Parameter("y"), 1)
    qc.cx(0, 1)
    return qc


def _payload(primitive, pubs) -> dict:
    encode = codec.encode_sampler_pubs if primitive == "sampler" else codec.encode_estimator_pubs
    text = codec.encode_payload(
        primitive, encode(pubs), {"seed": 1, "opts": {"a": [1.5]}}, max_bytes=MAX_BYTES
    )
    return json.loads(text)


measured = ansatz()
measured.measure_all()
BASES = [
    _payload("sampler", [bell()]),
    _payload("sampler", [(measured, np.linspace(0, 1, 12).reshape(2, 3, 2), 100), (bell(), None, 5)]),
    _payload("sampler", [(rich_circuit(), np.ones((2, 4)), 10)]),
    _payload(
        "estimator",
        [
            (ansatz(), [["ZZ"], [{"XI": 0.5, "IY": -1}]], np.ones((1, 3, 2)), 0.1),
            (ansatz(), "+0", [0.1, 0.2]),
        ],
    ),
]

# --- strategies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
INTERESTING = [
    0,
    1,
    2,
    -1,
    255,
    256,
    1000,
    1001,
    65535,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    10**7,
    10**7 + 1,
    10**400,
]
interesting_numbers = st.sampled_from(INTERESTING) | st.integers() | st.floats() | st.booleans()
schema_shaped = st.fixed_dictionaries(
    {
        "v": st.just(1) | json_values,
        "primitive": st.sampled_from(codec.PRIMITIVES) | json_values,
        "pubs": st.lists(
            st.dictionaries(
                st.sampled_from(["circuit", "params", "shots", "observables", "precision"]), json_values
            ),
            max_size=3,
        ),
        "options": json_values,
    }
)
unstructured = st.one_of(
    st.binary(max_size=1024),
    st.text(max_size=256),
    json_values.map(json.dumps),
    json_values.map(lambda v: json.dumps(v).encode()),
    schema_shaped.map(json.dumps),
)


def _paths(obj, prefix=()):
    """Every place in a JSON value, as key paths from the root."""
    if isinstance(obj, dict):
        items = obj.items()
    else:
        items = enumerate(obj) if isinstance(obj, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _mutate_str(draw, text: str) -> str:
    if not text:
        return draw(st.text(max_size=8))
    i = draw(st.integers(0, len(text) - 1))
    how = draw(st.sampled_from(["flip", "truncate", "append", "drop"]))
    if how == "flip":
        return text[:i] + draw(st.sampled_from("A/+=_-Zz0\x00é")) + text[i + 1 :]
    if how == "truncate":
        return text[:i]
    if how == "drop":
        return text[:i] + text[i + 1 :]
    return text + draw(st.text(max_size=8))


def _mutate_bytes(rng, raw: bytes) -> bytes:
    """Byte-level damage to QPY: flips, lying integer fields, cuts and insertions, mostly past
    the file header (``rng``: positions uniform over the body, which integers() would not be)."""
    data = bytearray(raw)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        if len(data) < 40:
            break
        i = rng.randrange(len(data) - 8) if rng.random() < 0.1 else rng.randrange(28, len(data) - 8)
        how = rng.choice(["byte", "int", "int", "int", "cut", "insert", "truncate"])
        if how == "byte":
            data[i] = rng.randrange(256)
        elif how == "int":  # QPY's counts and sizes are big-endian 1/2/4/8 bytes
            width = rng.choice([1, 2, 4, 8])
            value = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.getrandbits(8 * width)
            data[i : i + width] = (value % 2 ** (8 * width)).to_bytes(width, "big")
        elif how == "cut":
            del data[i : i + rng.randrange(1, 16)]
        elif how == "insert":
            data[i:i] = rng.randbytes(rng.randrange(1, 16))
        else:
            del data[i:]
    return bytes(data)


@st.composite
def mutated_payloads(draw):
    """A valid payload with 1-4 structural changes, then maybe damaged as text."""
    obj = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(obj))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        key, value = path[-1], parent[path[-1]]
        how = draw(st.sampled_from(["delete", "replace", "number", "tweak"]))
        if how == "delete":
            del parent[key]
        elif how == "replace":
            parent[key] = draw(json_values)
        elif how == "number":
            parent[key] = draw(interesting_numbers)
        elif isinstance(value, str):
            parent[key] = _mutate_str(draw, value)
        elif isinstance(value, list):
            parent[key] = value + value[:1] if draw(st.booleans()) else []
        elif isinstance(value, dict):
            value[draw(st.text(max_size=6))] = draw(json_values)
    text = json.dumps(obj)
    if draw(st.integers(0, 9)) == 0:
        text = _mutate_str(draw, text)
    return text


@st.composite
def qpy_damaged_payloads(draw):
    """A valid payload whose circuit QPY bytes are damaged, so qiskit's own reader is fuzzed."""
    obj = copy.deepcopy(draw(st.sampled_from(BASES)))
    pub = draw(st.sampled_from(obj["pubs"]))
    raw = base64.b64decode(pub["circuit"])
    rng = draw(st.randoms(use_true_random=False))
    pub["circuit"] = base64.b64encode(_mutate_bytes(rng, raw)).decode()
    return json.dumps(obj)


# --- tests -----------------------------------------------------------------------------------


def test_fuzz_bases_are_valid():
    for base in BASES:
        assert decode_or_reject(json.dumps(base)) is not None


@FUZZ
@given(unstructured)
def test_fuzz_unstructured_input(data):
    decode_or_reject(data)


@FUZZ
@given(mutated_payloads())
def test_fuzz_mutated_payload(text):
    decode_or_reject(text)


@FUZZ
@given(qpy_damaged_payloads())
def test_fuzz_damaged_qpy(text):
    decode_or_reject(text)
