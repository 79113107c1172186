"""core.program: IBM's executor params screened before pydantic and QPY see them, and the
result encoder that IBM's own decoder reads back."""

from __future__ import annotations

import base64
import io
import json
import struct
from datetime import UTC, datetime

import numpy as np
import pytest
from qiskit import qpy
from qiskit_ibm_runtime.decoders.executor.decoder import ExecutorResultDecoder
from qiskit_ibm_runtime.options_models.executor import ExecutorOptions
from qiskit_ibm_runtime.quantum_program import QuantumProgram
from qiskit_ibm_runtime.quantum_program.params_converters import QUANTUM_PROGRAM_PARAMS_CONVERTERS
from qiskit_ibm_runtime.results import QuantumProgramResult

from session_broker.core import program as wire
from session_broker.errors import InvalidPayloadError
from tests.support.circuits import ghz


def params_of(program: QuantumProgram) -> dict:
    params = QUANTUM_PROGRAM_PARAMS_CONVERTERS["v2.0"].encoder(program, ExecutorOptions())
    return params.model_dump(mode="json")


def test_a_program_of_several_circuits_passes_and_loads():
    program = QuantumProgram(shots=10)
    for n in (2, 3, 5):
        program.append_circuit_item(ghz(n))
    job = wire.decode_params(params_of(program))
    assert [item.circuit.num_qubits for item in job.program.items] == [2, 3, 5]


def test_a_circuit_offset_out_of_bounds_is_refused():
    buf = io.BytesIO()
    qpy.dump([ghz(2), ghz(3)], buf)
    raw = bytearray(buf.getvalue())
    struct.pack_into("!Q", raw, 19 + 1 + 8, len(raw) + 100)  # the second circuit's offset
    with pytest.raises(InvalidPayloadError, match="out of order or out of bounds"):
        wire._check_qpy_programs(bytes(raw), "circuits")


def lying_qpy_b64() -> str:
    buf = io.BytesIO()
    qpy.dump(ghz(2), buf)
    raw = bytearray(buf.getvalue())
    top = 19 + 1 + 8
    raw[top + 7 : top + 11] = (4_000_000_000).to_bytes(4, "big")  # num_qubits
    return base64.b64encode(bytes(raw)).decode()


def test_a_qpy_inside_a_samplex_json_string_is_checked():
    inner = json.dumps({"param_table": json.dumps({"qpy": "15", "circuit_base64": lying_qpy_b64()})})
    with pytest.raises(InvalidPayloadError, match="qubits"):
        wire._screen_samplex(json.dumps({"attrs": {"tables": inner}}), "samplex_json", 0)


def test_the_result_encoder_is_read_back_by_ibms_decoder():
    data = [{"meas": np.array([[True, False], [False, True]])}, {"c": np.zeros((3, 4, 1), bool)}]
    result = QuantumProgramResult(data, passthrough_data={"post": {"x": np.arange(3.0)}, "v": 1})
    result._semantic_role = "sampler_v2"
    now = datetime.now(UTC)
    decoded = ExecutorResultDecoder.decode(wire.encode_program_result(result, [1, 3], now, now))
    assert isinstance(decoded, QuantumProgramResult) and decoded._semantic_role == "sampler_v2"
    assert np.array_equal(decoded[0]["meas"], data[0]["meas"])
    assert decoded[1]["c"].shape == (3, 4, 1)
    assert np.array_equal(decoded.passthrough_data["post"]["x"], np.arange(3.0))
    assert [p.size for p in decoded.metadata.chunk_timing[0].parts] == [1, 3]
