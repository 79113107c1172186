"""Round trips and rejections of the wire format (session_broker.core.codec)."""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import struct

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, qpy
from qiskit.circuit import Parameter, ParameterVector, Qubit
from qiskit.primitives.containers import (
    BindingsArray,
    BitArray,
    DataBin,
    EstimatorPub,
    PrimitiveResult,
    PubResult,
    SamplerPub,
)
from qiskit.quantum_info import Pauli, SparseObservable, SparsePauliOp

from session_broker.core import codec
from session_broker.errors import InvalidInputError, InvalidPayloadError, PayloadTooLargeError

MAX = 1 << 20


from tests.support.faults import bell_circuit as bell  # noqa: E402  (one Bell circuit for all tests)


def ansatz(measure: bool = False) -> QuantumCircuit:
    """Two parameters, one from a vector: names like 't[0]' must survive the trip."""
    t = ParameterVector("t", 1)
    phi = Parameter("phi")
    qc = QuantumCircuit(2)
    qc.ry(t[0], 0)
    qc.rx(phi, 1)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def multi_creg() -> QuantumCircuit:
    qr = QuantumRegister(3, "q")
    alpha, beta = ClassicalRegister(2, "alpha"), ClassicalRegister(9, "beta")
    qc = QuantumCircuit(qr, alpha, beta)
    qc.x(0)
    qc.ry(Parameter("a"), 1)
    qc.h(2)
    qc.measure([0, 1], alpha)
    qc.measure(2, beta[8])
    qc.measure(0, beta[0])
    return qc


def sampler_rt(pubs, options=None):
    text = codec.encode_payload("sampler", codec.encode_sampler_pubs(pubs), options or {}, max_bytes=MAX)
    job = codec.decode_payload(text, max_bytes=MAX)
    assert job.primitive == "sampler"
    return job


def estimator_rt(pubs, options=None):
    text = codec.encode_payload("estimator", codec.encode_estimator_pubs(pubs), options or {}, max_bytes=MAX)
    job = codec.decode_payload(text.encode(), max_bytes=MAX)
    assert job.primitive == "estimator"
    return job


def assert_bindings_equal(got: BindingsArray, want: BindingsArray):
    assert got.shape == want.shape
    assert list(got.data) == list(want.data)
    for key, arr in want.data.items():
        assert got.data[key].dtype == np.float64
        np.testing.assert_array_equal(got.data[key], arr)
        assert got.data[key].shape == arr.shape


# --- round trips ---------------------------------------------------------------------------


def test_bell_sampler_round_trip():
    pub = SamplerPub.coerce(bell())
    job = sampler_rt([pub], {"default_shots": 1000, "seed": [1, "x"]})
    (got,) = job.pubs
    assert isinstance(got, SamplerPub)
    assert got.circuit == pub.circuit
    assert got.shots is None and got.shape == ()
    assert job.options == {"default_shots": 1000, "seed": [1, "x"]}


def test_encode_payload_is_compact_json_of_the_documented_form():
    text = codec.encode_payload("sampler", codec.encode_sampler_pubs([bell()]), {}, max_bytes=MAX)
    assert " " not in text
    obj = json.loads(text)
    assert obj["v"] == 1 and obj["primitive"] == "sampler" and obj["options"] == {}
    assert set(obj["pubs"][0]) == {"circuit", "params", "shots"}
    assert base64.b64decode(obj["pubs"][0]["circuit"])[:6] == b"QISKIT"


def test_sampler_parameter_array_and_per_pub_shots():
    values = np.random.default_rng(1).random((5, 3, 2))
    pubs = [SamplerPub.coerce((ansatz(True), values, 123)), SamplerPub.coerce((bell(), None, 7))]
    got, got_bell = sampler_rt(pubs).pubs
    assert got.shape == (5, 3) and got.shots == 123 and got_bell.shots == 7
    assert_bindings_equal(got.parameter_values, pubs[0].parameter_values)
    assert {p.name for p in got.circuit.parameters} == {"t[0]", "phi"}
    got.validate()


def test_bindings_with_several_keys_and_zero_d_shape():
    qc = multi_creg()
    b, c = Parameter("b"), Parameter("c")
    qc.rz(b, 0)
    qc.rz(c, 1)
    data = {("a", "b"): np.arange(8.0).reshape(4, 2), "c": np.array([0.5, 1, 2, 3])}
    pub = SamplerPub(qc, BindingsArray(data), shots=1)
    (got,) = sampler_rt([pub]).pubs
    assert got.shape == (4,)
    assert_bindings_equal(got.parameter_values, pub.parameter_values)
    zero_d = SamplerPub.coerce((ansatz(True), [0.1, 0.2]))
    (got,) = sampler_rt([zero_d]).pubs
    assert got.shape == ()
    assert_bindings_equal(got.parameter_values, zero_d.parameter_values)


def test_empty_bindings_with_a_shape_are_kept():
    pub = SamplerPub(bell(), BindingsArray(shape=(3,)))
    (got,) = sampler_rt([pub]).pubs
    assert got.shape == (3,) and got.parameter_values.data == {}


def test_estimator_broadcasting_and_precision():
    rng = np.random.default_rng(2)
    values = rng.random((5, 3, 2))
    obs_col = [[SparsePauliOp.from_list([("ZZ", 1.0), ("XI", -0.5)])], ["ZI"], ["IZ"], ["XX"], ["YY"]]
    obs_row = [[Pauli("ZZ"), {"XX": 0.25, "YY": 2}, SparseObservable("+0")]]
    pubs = [
        EstimatorPub.coerce((ansatz(), obs_col, values, 0.01)),
        EstimatorPub.coerce((ansatz(), obs_row, values)),
        EstimatorPub.coerce((ansatz(), "ZZ", [0.1, 0.2], 0)),
    ]
    got = estimator_rt(pubs).pubs
    assert [p.shape for p in got] == [(5, 3), (5, 3), ()]
    assert [p.precision for p in got] == [0.01, None, 0.0]
    assert [p.observables.shape for p in got] == [(5, 1), (1, 3), ()]
    for g, want in zip(got, pubs):
        assert isinstance(g, EstimatorPub)
        assert g.observables.equivalent(want.observables)
        assert g.observables.tolist() == want.observables.tolist()
        assert_bindings_equal(g.parameter_values, want.parameter_values)


def test_several_classical_registers_survive():
    pub = SamplerPub.coerce((multi_creg(), [0.3]))
    (got,) = sampler_rt([pub]).pubs
    assert [(r.name, r.size) for r in got.circuit.cregs] == [("alpha", 2), ("beta", 9)]
    assert got.circuit == pub.circuit


def test_pubs_sharing_a_circuit_share_it_after_decoding():
    qc = ansatz(True)
    pubs = [SamplerPub.coerce((qc, [[0.1, 0.2]])), SamplerPub.coerce((qc, [0.3, 0.4], 5))]
    got = sampler_rt(pubs).pubs
    assert got[0].circuit is got[1].circuit


def control_flow_circuit(blocks: int = 3, width: int = 4, clbits: int = 4) -> QuantumCircuit:
    """Nested circuits in QPY: if/else bodies and a custom gate's definition. Bare qubits: a
    register would be copied into every body."""
    qc = QuantumCircuit([Qubit() for _ in range(width)], ClassicalRegister(clbits, "c"))
    sub = QuantumCircuit(2, name="pair")
    sub.h(0)
    sub.cx(0, 1)
    qc.append(sub.to_gate(), [0, 1])
    for i in range(blocks):
        qc.measure(i % width, i % clbits)
        with qc.if_test((qc.clbits[i % clbits], 1)) as else_:
            qc.x(i % width)
        with else_:
            qc.h(i % width)
    return qc


def nested_header_offsets(raw: bytes) -> list[int]:
    """Where the if/else bodies' circuit headers are: after a 'q' parameter tag, empty name,
    float global phase."""
    return [m.start() + 9 for m in re.finditer(rb"q\x00{6}[\x00-\xff]{2}\x00\x00f\x00\x08", raw)]


def test_control_flow_and_custom_gates_round_trip():
    qc = control_flow_circuit()
    assert codec.decode_circuit(codec.encode_circuit(qc)) == qc
    (got,) = sampler_rt([SamplerPub.coerce((qc, None, 3))]).pubs
    assert got.circuit == qc


def test_nested_circuit_wider_than_its_circuit_is_refused():
    """qiskit builds a nested body's bits as declared: 5e8 clbits took 40 s and 8 GB."""
    raw = bytearray(codec._b64decode(codec.encode_circuit(control_flow_circuit()), "x"))
    (first, *_) = nested_header_offsets(bytes(raw))
    struct.pack_into("!I", raw, first + 9, 500_000_000)  # its num_clbits
    with pytest.raises(InvalidPayloadError, match="nested circuit .* 500000000 clbits"):
        codec.decode_circuit(qpy_b64(bytes(raw)))


def test_nested_circuits_wider_in_all_than_the_qpy_are_refused():
    """Each body may be as wide as the circuit, but their bits are also instruction arguments,
    so all of them together cannot outgrow the bytes."""
    raw = bytearray(codec._b64decode(codec.encode_circuit(control_flow_circuit(40, 1000, 2)), "x"))
    offsets = nested_header_offsets(bytes(raw))
    assert len(offsets) == 80  # 40 if and 40 else bodies
    codec.decode_circuit(qpy_b64(bytes(raw)))  # as written: fine
    for h in offsets:
        struct.pack_into("!I", raw, h + 5, 1000)  # as wide as the circuit
    with pytest.raises(InvalidPayloadError, match="bits in all"):
        codec.decode_circuit(qpy_b64(bytes(raw)))


@pytest.mark.parametrize("backend", ["FakeSherbrooke", "FakeTorino"])
def test_large_isa_circuits_pass_the_nested_circuit_check(backend):
    """IBM's guides' most common path: a 127-qubit ansatz transpiled for a 127- or 133-qubit
    device. Its qubit indices and parameter UUIDs once looked like nested-circuit records
    ("a nested circuit (byte 31643) declares 0 qubits ... or more data than the QPY holds")."""
    from qiskit import transpile
    from qiskit.circuit.library import efficient_su2
    from qiskit_ibm_runtime import fake_provider

    qc = efficient_su2(127, entanglement="linear")
    qc.measure_all()
    device = getattr(fake_provider, backend)()
    isa = transpile(qc, backend=device, optimization_level=1, seed_transpiler=1)
    assert isa.num_qubits == device.num_qubits
    (got,) = sampler_rt([SamplerPub.coerce((isa, np.zeros(qc.num_parameters)))], options={}).pubs
    assert got.circuit == isa


def test_decode_circuit_round_trip_and_rejection():
    qc = multi_creg()
    assert codec.decode_circuit(codec.encode_circuit(qc)) == qc
    with pytest.raises(InvalidPayloadError, match="base64"):
        codec.decode_circuit("not base64!")


# --- client-side refusals ------------------------------------------------------------------


def test_encode_payload_too_large():
    pubs = codec.encode_sampler_pubs([bell()])
    with pytest.raises(PayloadTooLargeError) as info:
        codec.encode_payload("sampler", pubs, {}, max_bytes=100)
    msg = str(info.value)
    assert "100 bytes" in msg and "SESSION_BROKER_MAX_PAYLOAD_BYTES" in msg
    assert str(len(codec.encode_payload("sampler", pubs, {}, max_bytes=MAX))) in msg
    assert isinstance(info.value, InvalidInputError)


def test_encoder_refuses_bad_input():
    with pytest.raises(InvalidInputError, match="primitive"):
        codec.encode_payload("qaoa", [], {}, max_bytes=MAX)
    with pytest.raises(InvalidInputError, match="JSON"):
        codec.encode_payload("sampler", [], {"x": float("nan")}, max_bytes=MAX)
    with pytest.raises(InvalidInputError, match="JSON"):
        codec.encode_payload("sampler", [], {"x": object()}, max_bytes=MAX)
    with pytest.raises(InvalidInputError, match="NaN"):
        codec.encode_sampler_pubs([(ansatz(True), [np.nan, 1.0])])
    with pytest.raises(InvalidInputError, match="shots"):
        codec.encode_sampler_pubs([(bell(), None, codec.MAX_SHOTS + 1)])
    with pytest.raises(InvalidInputError, match="qubits"):
        codec.encode_sampler_pubs([QuantumCircuit(codec.MAX_QUBITS + 1)])
    with pytest.raises(InvalidInputError):
        codec.encode_estimator_pubs([(bell(), "ZZZ")])


# --- results -------------------------------------------------------------------------------


def assert_results_equal(got: PrimitiveResult, want: PrimitiveResult):
    assert type(got) is PrimitiveResult and len(got) == len(want)
    assert got.metadata == want.metadata
    for g, w in zip(got, want):
        assert type(g) is type(w)
        assert g.metadata == w.metadata
        assert g.data.shape == w.data.shape and list(g.data) == list(w.data)
        for name, value in w.data.items():
            if isinstance(value, BitArray):
                assert isinstance(g.data[name], BitArray)
                assert g.data[name] == value
                assert g.data[name].shape == value.shape
                assert g.data[name].num_bits == value.num_bits
                assert g.data[name].num_shots == value.num_shots
                np.testing.assert_array_equal(g.data[name].array, value.array)
            else:
                assert g.data[name].dtype == value.dtype
                np.testing.assert_array_equal(g.data[name], value)
                assert g.data[name].flags.writeable


def test_sampler_result_round_trip_from_aer():
    from qiskit_aer.primitives import SamplerV2

    job = sampler_rt(
        [SamplerPub.coerce((multi_creg(), np.linspace(0, 3, 6).reshape(2, 3), 50)), SamplerPub.coerce(bell())]
    )
    result = SamplerV2(seed=7).run(job.pubs, shots=64).result()
    got = codec.decode_result(codec.encode_result(result))
    assert_results_equal(got, result)
    assert got[0].data.alpha.shape == (2, 3) and got[0].data.beta.num_bits == 9
    assert got[0].join_data().get_counts() == result[0].join_data().get_counts()


def test_estimator_result_round_trip_from_aer():
    from qiskit_aer.primitives import EstimatorV2

    values = np.random.default_rng(3).random((5, 3, 2))
    job = estimator_rt(
        [
            EstimatorPub.coerce((ansatz(), [["ZZ"], ["XI"], ["IZ"], ["XX"], ["YY"]], values, 0.05)),
            EstimatorPub.coerce((ansatz(), [["ZZ", "XX", "IY"]], values)),
        ]
    )
    result = EstimatorV2(options={"run_options": {"seed": 5}}).run(job.pubs).result()
    got = codec.decode_result(codec.encode_result(result))
    assert_results_equal(got, result)
    assert got[0].data.evs.shape == (5, 3) and got[1].data.stds.shape == (5, 3)


def test_zero_d_estimator_result_keeps_its_shape():
    from qiskit_aer.primitives import EstimatorV2

    job = estimator_rt([EstimatorPub.coerce((ansatz(), "ZZ", [0.1, 0.2]))])
    result = EstimatorV2().run(job.pubs).result()
    got = codec.decode_result(codec.encode_result(result))
    assert result[0].data.evs.shape == () and got[0].data.evs.shape == ()
    assert_results_equal(got, result)


def test_result_extra_fields_and_awkward_metadata():
    data = DataBin(
        evs=np.arange(6.0).reshape(2, 3),
        stds=np.zeros((2, 3)),
        ensemble_standard_error=np.ones((2, 3)),
        counts=np.arange(6, dtype=">i4").reshape(2, 3),
        note="hello",
        shape=(2, 3),
    )
    meta = {
        "n": np.int64(3),
        "x": np.float32(0.5),
        "arr": np.eye(2),
        "bad": float("nan"),
        1: (1, 2),
        "obj": object(),
        "nested": {"ok": [True, None]},
    }
    result = PrimitiveResult([PubResult(data, meta)], {"version": 2, "inf": np.inf})
    got = codec.decode_result(codec.encode_result(result))
    (pub,) = got
    assert type(pub) is PubResult and pub.data.shape == (2, 3)
    np.testing.assert_array_equal(pub.data.ensemble_standard_error, np.ones((2, 3)))
    np.testing.assert_array_equal(pub.data.counts, np.arange(6).reshape(2, 3))
    assert pub.data.note == "hello"
    assert pub.metadata["n"] == 3 and pub.metadata["x"] == 0.5
    assert pub.metadata["arr"] == [[1.0, 0.0], [0.0, 1.0]] and pub.metadata["bad"] == "nan"
    assert pub.metadata["1"] == [1, 2] and isinstance(pub.metadata["obj"], str)
    assert got.metadata == {"version": 2, "inf": "inf"}
    assert json.loads(codec.encode_result(result))  # strict JSON: no NaN literals


def test_decode_result_rejects_garbage():
    for bad in [
        "",
        "[]",
        '{"v":1}',
        '{"v":2,"metadata":{},"pubs":[]}',
        '{"v":1,"metadata":{},"pubs":[{"kind":"x","shape":[],"metadata":{},"fields":[]}]}',
    ]:
        with pytest.raises(InvalidPayloadError):
            codec.decode_result(bad)
    assert len(codec.decode_result('{"v":1,"metadata":{},"pubs":[]}')) == 0


# --- rejections by the worker's decoder ----------------------------------------------------


def payload(primitive: str = "sampler") -> dict:
    if primitive == "sampler":
        pubs = codec.encode_sampler_pubs([(ansatz(True), np.ones((2, 3, 2)), 10)])
    else:
        pub = (ansatz(), {"ZZ": 1.0, "XI": 0.5}, np.ones((3, 2)), 0.1)
        pubs = codec.encode_estimator_pubs([pub])
    return json.loads(codec.encode_payload(primitive, pubs, {"a": 1}, max_bytes=MAX))


def qpy_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def bell_qpy() -> bytes:
    buf = io.BytesIO()
    qpy.dump(bell(), buf)
    return buf.getvalue()


def with_header(**fields) -> str:
    """Bell QPY with some fields of its circuit header replaced (a lying header)."""
    raw = bytearray(bell_qpy())
    fmt = "!H1cHIIQIQI"
    names = ["name", "phase_type", "phase", "qubits", "clbits", "meta", "regs", "instrs", "vars"]
    offset = struct.unpack_from("!Q", raw, 20)[0]
    values = dict(zip(names, struct.unpack_from(fmt, raw, offset)))
    values.update(fields)
    struct.pack_into(fmt, raw, offset, *values.values())
    return qpy_b64(bytes(raw))


def set_path(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    if value is DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


DELETE = object()
SP = ("pubs", 0)  # path to the first PUB
ARR = SP + ("params", "data", 0, "array")
NAN_B64 = base64.b64encode(np.full(12, np.nan).tobytes()).decode()
GARBAGE_QPY = b"QISKIT\x12\x02\x06\x02" + b"\x00" * 7 + b"\x01pq" + b"\xff" * 200

CASES = {
    # name: (primitive, path, value, expected message substring)
    "unknown primitive": ("sampler", ("primitive",), "qaoa", "unknown primitive"),
    "missing pubs": ("sampler", ("pubs",), DELETE, "missing key 'pubs'"),
    "pubs not a list": ("sampler", ("pubs",), {"a": 1}, "non-empty list"),
    "empty pubs": ("sampler", ("pubs",), [], "non-empty list"),
    "options not an object": ("sampler", ("options",), [], "options"),
    "unknown top-level key": ("sampler", ("extra",), 1, "unknown key 'extra'"),
    "version 2": ("sampler", ("v",), 2, "unsupported wire version 2"),
    "version missing": ("sampler", ("v",), DELETE, "unsupported wire version"),
    "version true": ("sampler", ("v",), True, "unsupported wire version"),
    "version string": ("sampler", ("v",), "1", "unsupported wire version"),
    "pub not an object": ("sampler", SP, "x", "expected a JSON object"),
    "pub missing circuit": ("sampler", SP + ("circuit",), DELETE, "missing key 'circuit'"),
    "circuit not a string": ("sampler", SP + ("circuit",), 5, "expected a base64 string"),
    "bad base64": ("sampler", SP + ("circuit",), "QUJD$$$=", "invalid base64"),
    "truncated QPY": ("sampler", SP + ("circuit",), qpy_b64(bell_qpy()[:150]), "truncated"),
    "tiny QPY": ("sampler", SP + ("circuit",), qpy_b64(b"QISK"), "truncated"),
    "QPY of garbage": ("sampler", SP + ("circuit",), qpy_b64(b"garbage" * 20), "not QPY data"),
    "QPY offset out of bounds": ("sampler", SP + ("circuit",), qpy_b64(GARBAGE_QPY), "out of bounds"),
    "QPY corrupt body": (
        "sampler",
        SP + ("circuit",),
        qpy_b64(bell_qpy()[:-100] + b"\xee" * 100),
        "corrupt QPY",
    ),
    "QPY too many programs": (
        "sampler",
        SP + ("circuit",),
        qpy_b64(bell_qpy()[:10] + struct.pack("!Q", 2) + bell_qpy()[18:]),
        "exactly one circuit",
    ),
    "QPY future version": (
        "sampler",
        SP + ("circuit",),
        qpy_b64(b"QISKIT\x63" + bell_qpy()[7:]),
        "QPY version 99 is not supported",
    ),
    "QPY old version": (
        "sampler",
        SP + ("circuit",),
        qpy_b64(b"QISKIT\x05" + bell_qpy()[7:]),
        "QPY version 5 is not supported",
    ),
    "QPY header claims 4e9 qubits": (
        "sampler",
        SP + ("circuit",),
        with_header(qubits=4_000_000_000),
        "4000000000 qubits",
    ),
    "QPY header claims 4e9 clbits": (
        "sampler",
        SP + ("circuit",),
        with_header(clbits=4_000_000_000),
        "clbits",
    ),
    "QPY header claims 2^60 instructions": (
        "sampler",
        SP + ("circuit",),
        with_header(instrs=2**60),
        "declares more data",
    ),
    "QPY header huge metadata": ("sampler", SP + ("circuit",), with_header(meta=2**40), "declares more data"),
    "too wide circuit": (
        "sampler",
        SP + ("circuit",),
        codec.encode_circuit(QuantumCircuit(1001)),
        "at most 1000",
    ),
    "negative shots": ("sampler", SP + ("shots",), -5, "outside the allowed range"),
    "zero shots": ("sampler", SP + ("shots",), 0, "outside the allowed range"),
    "too many shots": ("sampler", SP + ("shots",), 10_000_001, "outside the allowed range"),
    "shots as string": ("sampler", SP + ("shots",), "100", "expected an integer"),
    "shots as float": ("sampler", SP + ("shots",), 100.0, "expected an integer"),
    "NaN in parameter values": ("sampler", ARR + ("b64",), NAN_B64, "NaN"),
    "array bytes vs shape": ("sampler", ARR + ("shape",), [2, 3, 3], "does not match shape"),
    "array b64 truncated": ("sampler", ARR + ("b64",), NAN_B64[:-8], "does not match shape"),
    "absurd declared shape": ("sampler", ARR + ("shape",), [10**9, 10**9, 2], "more than"),
    "absurd bindings shape": ("sampler", SP + ("params", "shape"), [10**12], "more than"),
    "negative dimension": ("sampler", ARR + ("shape",), [-2, 3, 2], "outside the allowed range"),
    "too many dimensions": ("sampler", ARR + ("shape",), [1] * 40, "at most 32"),
    "wrong dtype": ("sampler", ARR + ("dtype",), "|O", "expected one of"),
    "params shape mismatch": ("sampler", SP + ("params", "shape"), [3, 2], "not the bindings shape"),
    "unknown parameter name": (
        "sampler",
        SP + ("params", "data", 0, "names"),
        ["phi", "zz"],
        "parameter names",
    ),
    "duplicated parameter": (
        "sampler",
        SP + ("params", "data", 0, "names"),
        ["phi", "phi"],
        "more than once",
    ),
    "missing parameters": ("sampler", SP + ("params", "data"), [], "parameter names"),
    "invalid Pauli label": (
        "estimator",
        SP + ("observables", "terms", 0),
        {"ZQ": 1.0},
        "invalid Pauli label 'ZQ'",
    ),
    "coeff not a number": ("estimator", SP + ("observables", "terms", 0), {"ZZ": "1"}, "not a finite number"),
    "coeff huge int": ("estimator", SP + ("observables", "terms", 0), {"ZZ": 10**400}, "not a finite number"),
    "empty observable": ("estimator", SP + ("observables", "terms", 0), {}, "non-empty"),
    "observables count vs shape": ("estimator", SP + ("observables", "shape"), [4], "expected a list of 4"),
    "observable on wrong qubits": (
        "estimator",
        SP + ("observables", "terms", 0),
        {"ZZZ": 1.0},
        "number of qubits",
    ),
    "negative precision": ("estimator", SP + ("precision",), -0.1, "non-negative"),
    "precision as string": ("estimator", SP + ("precision",), "0.1", "non-negative"),
    "sampler pub to estimator": ("estimator", SP + ("shots",), 5, "unknown key 'shots'"),
    "not broadcastable": (
        "estimator",
        SP + ("observables",),
        {"shape": [2], "terms": [{"ZZ": 1}, {"XX": 1}]},
        "broadcastable",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decoder_rejects(name):
    primitive, path, value, expected = CASES[name]
    obj = payload(primitive)
    set_path(obj, path, value)
    text = json.dumps(obj)
    with pytest.raises(InvalidPayloadError) as info:
        codec.decode_payload(text, max_bytes=MAX)
    assert expected in str(info.value)
    assert str(info.value).startswith("invalid payload")


RAW_CASES = {
    "invalid JSON": ('{"v": 1, "pubs": [', "not valid JSON"),
    "empty input": ("", "not valid JSON"),
    "trailing garbage": ('{"v":1} x', "not valid JSON"),
    "non-dict top level": ("[1, 2]", "expected a JSON object, got list"),
    "JSON string top level": ('"hi"', "expected a JSON object, got str"),
    "NaN literal": ('{"v": 1, "x": NaN}', "NaN is not allowed"),
    "Infinity literal": ('{"v": -Infinity}', "Infinity is not allowed"),
    "overflowing float": ('{"v": 1e999}', "out of range"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "invalid UTF-8 bytes": (b'{"v": "\xff\xfe"}', "not valid UTF-8"),
    "pickle bytes": (pickle.dumps({"v": 1, "primitive": "sampler"}), "pickle"),
    "too many bytes": (b" " * (MAX + 1), "over the limit"),
    "too many characters": ("{}" + " " * MAX, "over the limit"),
    "not str or bytes": (12345, "expected str or bytes"),
}


@pytest.mark.parametrize("name", list(RAW_CASES))
def test_decoder_rejects_raw(name):
    data, expected = RAW_CASES[name]
    with pytest.raises(InvalidPayloadError) as info:
        codec.decode_payload(data, max_bytes=MAX)
    assert expected in str(info.value)


def test_decoder_max_bytes_counts_utf8_bytes():
    text = json.dumps(payload(), ensure_ascii=False)
    assert codec.decode_payload(text, max_bytes=len(text)).pubs
    with pytest.raises(InvalidPayloadError, match="over the limit"):
        codec.decode_payload(text, max_bytes=len(text) - 1)
    noisy = text[:-1] + ', "é": 1}'  # non-ASCII: 2 bytes per character
    with pytest.raises(InvalidPayloadError, match="over the limit"):
        codec.decode_payload(noisy, max_bytes=len(noisy))


def test_decoded_arrays_are_plain_float64():
    job = codec.decode_payload(json.dumps(payload()), max_bytes=MAX)
    (arr,) = job.pubs[0].parameter_values.data.values()
    assert arr.dtype == np.float64 and arr.shape == (2, 3, 2) and arr.flags.writeable
