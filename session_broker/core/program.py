"""The wire format of ``executor`` jobs: IBM's own executor schema (``ibm_quantum_schemas``
v2.0), carried as JSON, decoded with pydantic (never pickle, never ``RuntimeDecoder``).

Job (``encode_executor_payload`` / ``decode_executor_payload``; every key required)::

    {"v": 1, "primitive": "executor", "params": PARAMS, "options": {...}}
    PARAMS: IBM's ``ParamsModel`` v2.0 as ``model_dump(mode="json")`` (what IBM's client
            sends as the inputs of program ``executor``)
    options: ours: ``seed_simulator`` (int | null), ``max_execution_time`` (int | null)

Result (``encode_program_result``): IBM's ``QuantumProgramResultModel`` v2.0 as JSON, which
IBM's ``ExecutorResultDecoder`` reads (and, for ``executor_sampler``/``executor_estimator``
programs, the client-side decoders its semantic role names).

The schema's models decompress while they validate (``zlib.decompress`` without a bound) and
qiskit's QPY reader trusts the headers it reads, so before pydantic sees the params:
every compressed field is decompressed with a bound (a zlib bomb is refused, not inflated),
every circuit of the QPY blob and every QPY inside a samplex passes ``codec``'s header check,
and only QPY circuits (not OpenQASM) are taken. Anything else wrong is an
``InvalidPayloadError`` naming where.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from session_broker.core import codec
from session_broker.errors import InvalidInputError, InvalidPayloadError, PayloadTooLargeError

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "ExecutorJob",
    "check_executor_payload",
    "decode_executor_payload",
    "encode_executor_payload",
    "encode_program_result",
]

PRIMITIVE = "executor"
#: decompressed bytes (circuits, tensors, passthrough data) one job may hold, in all
MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024
_MAX_DEPTH = 64
_OPTION_KEYS = ("seed_simulator", "max_execution_time")


@dataclass(frozen=True)
class ExecutorJob:
    params: Any  # ibm_quantum_schemas' ParamsModel v2.0, validated
    program: Any  # qiskit_ibm_runtime's QuantumProgram
    options: dict[str, Any]  # ours, as sent


def encode_executor_payload(params: dict[str, Any], options: dict[str, Any], *, max_bytes: int) -> str:
    """Compact JSON text of an executor job; ``PayloadTooLargeError`` over ``max_bytes``."""
    try:
        text = codec._ENCODER.encode(
            {"v": codec.WIRE_VERSION, "primitive": PRIMITIVE, "params": params, "options": options}
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the program is not JSON-safe: {exc}") from exc
    if len(text) > max_bytes:
        raise PayloadTooLargeError(
            f"the encoded program is {len(text)} bytes, over the limit of {max_bytes} bytes; "
            "send fewer or smaller items, or raise SESSION_BROKER_MAX_PAYLOAD_BYTES"
        )
    return text


def check_executor_payload(payload: str, *, max_bytes: int) -> ExecutorJob:
    """The worker's decoder, run by the client before queueing (one validation, shared)."""
    try:
        return decode_executor_payload(payload, max_bytes=max_bytes)
    except InvalidPayloadError as exc:
        raise InvalidInputError(f"this job would be refused by the worker: {exc}") from None


def decode_executor_payload(data: str | bytes, *, max_bytes: int | None) -> ExecutorJob:
    """A validated executor job, or ``InvalidPayloadError`` saying what is wrong."""
    try:
        obj = codec._parse_json(data, max_bytes, "payload")
        if not isinstance(obj, dict):
            raise codec._bad("top level", f"expected a JSON object, got {type(obj).__name__}")
        version, primitive, params, options = codec._fields(
            obj, ("v", "primitive", "params", "options"), "payload"
        )
        if type(version) is not int or version != codec.WIRE_VERSION:
            raise codec._bad(
                "v", f"unsupported wire version {version!r:.40}; this worker reads {codec.WIRE_VERSION}"
            )
        if primitive != PRIMITIVE:
            raise codec._bad("primitive", f"expected {PRIMITIVE!r}, got {primitive!r:.40}")
        return decode_params(params, options)
    except InvalidPayloadError:
        raise
    except Exception as exc:
        raise InvalidPayloadError(f"invalid payload: {codec._short(exc)}") from None


def decode_params(params: object, options: object = None) -> ExecutorJob:
    """IBM's executor params (``ParamsModel`` v2.0 JSON) screened, validated and loaded."""
    try:
        options = {} if options is None else options
        if not isinstance(options, dict) or set(options) - set(_OPTION_KEYS):
            raise codec._bad("options", f"expected an object with keys among {list(_OPTION_KEYS)}")
        for key in _OPTION_KEYS:
            if options.get(key) is not None:
                codec._int(options[key], f"options.{key}", 0, 2**63 - 1)
        return _load(_screen_params(params), options)
    except InvalidPayloadError:
        raise
    except Exception as exc:
        raise InvalidPayloadError(f"invalid payload: params: {codec._short(exc)}") from None
    except BaseException as exc:  # a Rust panic (QPY's reader) surfaces as pyo3's PanicException
        if type(exc).__name__ != "PanicException":
            raise
        raise InvalidPayloadError(f"invalid payload: params: {codec._short(exc)}") from None


def _screen_params(params: object) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise codec._bad("params", f"expected a JSON object, got {type(params).__name__}")
    if params.get("schema_version", "v2.0") != "v2.0":
        raise codec._bad(
            "params.schema_version", f"{params.get('schema_version')!r:.40} is not served; send v2.0"
        )
    program = params.get("quantum_program")
    if not isinstance(program, dict):
        raise codec._bad("params.quantum_program", "expected a JSON object")
    circuits = program.get("circuits")
    if not isinstance(circuits, dict) or not isinstance(circuits.get("b64_data"), str):
        raise codec._bad(
            "params.quantum_program.circuits",
            "expected compressed QPY ({b64_data, qpy_version, num_programs}); OpenQASM circuits are not served",
        )
    budget = [MAX_DECOMPRESSED_BYTES]
    raw = _inflate(circuits["b64_data"], "params.quantum_program.circuits.b64_data", budget)
    if raw is None:
        raise codec._bad("params.quantum_program.circuits.b64_data", "not zlib-compressed QPY")
    _check_qpy_programs(raw, "params.quantum_program.circuits")
    _screen_tree(params, "params", budget, 0)
    return params


def _inflate(text: str, where: str, budget: list[int]) -> bytes | None:
    """``text`` (base64 of zlib data) decompressed within ``budget``; None if not zlib."""
    packed = codec._b64decode(text, where)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(packed, budget[0] + 1)
    except zlib.error:
        return None
    if len(out) > budget[0] or inflater.unconsumed_tail:
        raise codec._bad(
            where,
            f"decompresses to more than {budget[0]} bytes (a job may hold {MAX_DECOMPRESSED_BYTES} "
            "decompressed bytes in all)",
        )
    budget[0] -= len(out)
    return out


def _screen_tree(node: object, where: str, budget: list[int], depth: int) -> None:
    """Bound every compressed tensor and check every QPY a samplex carries."""
    if depth > _MAX_DEPTH:
        raise codec._bad(where, f"nested deeper than {_MAX_DEPTH}")
    if isinstance(node, dict):
        # every string ``data`` is inflated within the budget, ``dtype`` or not: IBM's
        # tensor models default it (f64), so a tensor may come without one
        if isinstance(node.get("data"), str):
            _inflate(node["data"], f"{where}.data", budget)
        if isinstance(node.get("samplex_json"), str):
            _screen_samplex(node["samplex_json"], f"{where}.samplex_json", 0)
        for key, value in node.items():
            if key not in ("b64_data", "samplex_json"):
                _screen_tree(value, f"{where}.{key}", budget, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _screen_tree(value, f"{where}[{i}]", budget, depth + 1)


def _screen_samplex(node: object, where: str, depth: int) -> None:
    """samplomatic's samplex JSON embeds QPY (parameter tables) that it loads unchecked, and
    JSON inside JSON strings: check every ``circuit_base64`` it holds."""
    if depth > _MAX_DEPTH:
        raise codec._bad(where, f"nested deeper than {_MAX_DEPTH}")
    if isinstance(node, str):
        text = node.lstrip()
        if text[:1] in ("{", "["):
            try:
                inner = codec._DECODER.decode(text)
            except ValueError:
                return
            _screen_samplex(inner, where, depth + 1)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "circuit_base64":
                if not isinstance(value, str):
                    raise codec._bad(f"{where}.circuit_base64", "expected a base64 string")
                codec._check_qpy(codec._b64decode(value, where), f"{where}.circuit_base64")
            else:
                _screen_samplex(value, where, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _screen_samplex(value, where, depth + 1)


_TABLE_ENTRY = struct.Struct("!Q")


def _check_qpy_programs(raw: bytes, where: str) -> None:
    """``codec``'s QPY header check on each circuit of a multi-circuit QPY file: each circuit
    (from QPY 16's offset table) is checked as a one-circuit file of its own bytes."""
    head = codec._QPY_FILE_HEADER
    if len(raw) < head.size + 1:
        raise codec._bad(where, f"truncated QPY ({len(raw)} bytes)")
    magic, version, major, minor, patch, programs, encoding = head.unpack_from(raw)
    if programs == 1:
        codec._check_qpy(raw, where)
        return
    if magic != b"QISKIT" or version < 16:
        raise codec._bad(
            where, f"several circuits need QPY 16 or later (got version {version}), with QISKIT magic"
        )
    if not 1 <= programs <= 10_000 or raw[head.size] != ord("q"):
        raise codec._bad(where, f"QPY declares {programs} circuits; 1..10000 circuits are allowed")
    table = head.size + 1
    if table + programs * _TABLE_ENTRY.size > len(raw):
        raise codec._bad(where, "truncated QPY (circuit table out of bounds)")
    offsets = [_TABLE_ENTRY.unpack_from(raw, table + 8 * i)[0] for i in range(programs)] + [len(raw)]
    body = table + programs * _TABLE_ENTRY.size
    for i in range(programs):
        start, stop = offsets[i], offsets[i + 1]
        if not body <= start < stop <= len(raw):
            raise codec._bad(where, f"circuit {i}'s offset {start} is out of order or out of bounds")
        single = head.pack(magic, version, major, minor, patch, 1, encoding) + b"q"
        single += _TABLE_ENTRY.pack(len(single) + _TABLE_ENTRY.size) + raw[start:stop]
        codec._check_qpy(single, f"{where}[{i}]")


def _load(params: dict[str, Any], options: dict[str, Any]) -> ExecutorJob:
    # lazy: IBM's client takes a second or more to import; only executor jobs need it
    from ibm_quantum_schemas.executor.version_2_0 import ParamsModel

    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.quantum_program.converters.converters_2_0 import quantum_program_from_2_0

    model = ParamsModel.model_validate(params)
    if model.quantum_program.meas_level != "classified":
        raise codec._bad(
            "params.quantum_program.meas_level",
            f"{model.quantum_program.meas_level!r} is not served: the simulator returns bits "
            "(meas_level 'classified'), not IQ data",
        )
    if not model.options.init_qubits:
        raise codec._bad(
            "params.options.init_qubits", "False is not served: every simulated shot starts in |0>"
        )
    if model.options.scheduler_timing or model.options.stretch_values:
        raise codec._bad(
            "params.options.scheduler_timing/stretch_values",
            "True is not served: no pulse schedule is simulated",
        )
    if model.options.experimental:
        raise codec._bad("params.options.experimental", f"{model.options.experimental!r:.80} is not served")
    program, _ = quantum_program_from_2_0(model)
    for i, item in enumerate(program.items):
        samplex = getattr(item, "samplex", None)
        if samplex is not None and not samplex._finalized:
            samplex.finalize()  # the serialized form is not finalized; sampling needs it
        size = int(item.size())
        if size > codec.MAX_PUB_SIZE:
            raise codec._bad(
                f"params.quantum_program.items[{i}]", f"{size} elements; at most {codec.MAX_PUB_SIZE}"
            )
        bits = size * program.shots * max(1, item.circuit.num_clbits)
        if bits // 8 > codec.MAX_RESULT_BYTES:
            raise codec._bad(
                f"params.quantum_program.items[{i}]",
                f"would return {bits // 8} bytes of bits; the limit is {codec.MAX_RESULT_BYTES}",
            )
    return ExecutorJob(model, program, options)


# --- results -------------------------------------------------------------------------------


def encode_program_result(result: Any, sizes: list[int], started: datetime, stopped: datetime) -> str:
    """IBM's ``QuantumProgramResultModel`` v2.0 JSON for ``result`` (a ``QuantumProgramResult``):
    the inverse of IBM's ``quantum_program_result_from_2_0``. One chunk span covers the whole
    program (``sizes``: each item's number of elements)."""
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from ibm_quantum_schemas.common import CompressedTensorModel

    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from ibm_quantum_schemas.executor.version_2_0 import (
        ChunkPart,
        ChunkSpan,
        ItemMetadataModel,
        MetadataModel,
        QuantumProgramResultItemModel,
        QuantumProgramResultModel,
    )

    # lazy: qiskit-ibm-runtime takes ~2 s to import; only this path needs it
    from qiskit_ibm_runtime.quantum_program.converters.converters_2_0 import passthrough_data_to_2_0

    items = [
        QuantumProgramResultItemModel(
            results={
                name: CompressedTensorModel.from_numpy(np.asarray(value)) for name, value in item.items()
            },
            metadata=ItemMetadataModel(),
        )
        for item in result
    ]
    parts = [
        ChunkPart(idx_item=i, size=size, permutation=[0], element_range=(0, size, 1))
        for i, size in enumerate(sizes)
        if size > 0
    ]
    model = QuantumProgramResultModel(
        data=items,
        metadata=MetadataModel(chunk_timing=[ChunkSpan(start=started, stop=stopped, parts=parts)]),
        passthrough_data=passthrough_data_to_2_0(result.passthrough_data),
        semantic_role=result._semantic_role,
    )
    return str(model.model_dump_json())
