"""The wire format between clients and workers: JSON text only, never pickle.

A worker runs whatever arrives on its queue, so a payload is *data*: plain JSON whose decoding
imports, instantiates and evaluates nothing the sender names. Circuits travel as QPY, qiskit's
own binary format (read by its Rust reader; its gate lookup is the only name lookup). Numeric
arrays travel as base64 of their raw little-endian bytes plus a shape: a memcpy each way, where
nested JSON lists would build one Python float per element.

Job (``encode_payload`` / ``decode_payload``; every key is required, no other is allowed)::

    {"v": 1, "primitive": "sampler" | "estimator", "pubs": [PUB, ...], "options": {...}}
    sampler PUB:   {"circuit": QPY, "params": BINDINGS, "shots": int | null}
    estimator PUB: {"circuit": QPY, "observables": OBS, "params": BINDINGS,
                    "precision": number | null}
    QPY:      base64 of one circuit, QPY versions 13..18
    BINDINGS: {"shape": [int, ...], "data": [{"names": [str, ...], "array": ARRAY}, ...]}
              (one entry per BindingsArray.data key; array shape = shape + [len(names)])
    OBS:      {"shape": [int, ...], "terms": [{label: coeff, ...}, ...]}
              (one {Pauli label: real coeff} per element, C order; labels of "IXYZ01+-rl")
    ARRAY:    {"dtype": "<f8", "shape": [int, ...], "b64": base64 of the raw bytes}

Result (``encode_result`` / ``decode_result``)::

    {"v": 1, "metadata": {...}, "pubs": [{"kind": "sampler" | "pub", "shape": [int, ...],
                                          "metadata": {...}, "fields": [FIELD, ...]}, ...]}
    FIELD: {"name": str, "type": "bits", "num_bits": int, "array": ARRAY}  # a BitArray (|u1)
         | {"name": str, "type": "array", "array": ARRAY}   # evs, stds, ...: any LE numeric dtype
         | {"name": str, "type": "json", "value": ...}      # anything else, made JSON-safe

The decoder refuses NaN/Infinity, any count, shape or size that the bytes present cannot back
(checked *before* allocating: QPY's reader allocates whatever its headers declare), and
anything over the caps below, with an ``InvalidPayloadError`` that says what and where.
"""

from __future__ import annotations

import binascii
import io
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NoReturn, TypeAlias, TypedDict, TypeVar

import numpy as np
from qiskit import QuantumCircuit, qpy
from qiskit.primitives.containers import (
    BindingsArray,
    BitArray,
    DataBin,
    EstimatorPub,
    ObservablesArray,
    PrimitiveResult,
    PubResult,
    SamplerPub,
    SamplerPubResult,
)
from qiskit.qpy.common import QPY_VERSION

from session_broker.core.memo import BoundedMemo
from session_broker.errors import InvalidInputError, InvalidPayloadError, PayloadTooLargeError

__all__ = [
    "DecodedJob",
    "check_payload",
    "check_result_size",
    "decode_circuit",
    "decode_payload",
    "decode_result",
    "encode_circuit",
    "encode_estimator_pubs",
    "encode_payload",
    "encode_result",
    "encode_sampler_pubs",
    "result_bytes",
]

WIRE_VERSION = 1
PRIMITIVES = ("sampler", "estimator")
MAX_QUBITS = 1000
MAX_CLBITS = 100_000
MAX_SHOTS = 10_000_000
MAX_PUB_SIZE = 1_000_000  # elements of one PUB's (broadcast) shape
MAX_ARRAY_ELEMENTS = 10_000_000  # elements of one parameter array
MAX_NDIM = 32

# QPY 13 is the first version qiskit reads with its Rust reader (older ones go through the
# Python reader, which e.g. parses symbolic expressions); 18 is the newest whose headers
# _check_qpy knows. We write min(18, installed) so clients and workers on different
# qiskit 2.x releases still understand each other. Bump both after checking the header layout.
_QPY_MIN_READ = 13
_QPY_MAX_READ = min(QPY_VERSION, 18)
_QPY_FILE_HEADER = struct.Struct("!6sBBBBQc")  # FILE_HEADER_V10
_QPY_CIRCUIT_HEADER = struct.Struct("!H1cHIIQIQI")  # CIRCUIT_HEADER_V12
_QPY_MIN_INSTRUCTION, _QPY_MIN_REGISTER, _QPY_MIN_VAR = 25, 8, 19  # smallest record sizes

_PHASE_TYPES = np.zeros(256, bool)
_PHASE_TYPES[list(b"fpve")] = True  # global-phase types qiskit accepts (others fail early)
_LABEL = re.compile(r"[IXYZ01+\-rl]{1,%d}" % MAX_QUBITS)
_RESULT_DTYPE = re.compile(r"[<|][biufc](1|2|4|8|16)")
# ANSI colours (raw or repr-escaped), escaped newlines and box drawing in QPY's Rust errors.
_NOISE = re.compile(r"(\x1b|\\x1b)\[[0-9;]*m|\\n|[\u2500-\u257f]+|Backtrace")

# --- the wire's shapes, as the encoders write them (the decoders check what arrives) --------

#: A JSON-safe value (what ``_jsonable`` makes of anything).
JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"


class ArrayJSON(TypedDict):
    dtype: str
    shape: list[int]
    b64: str


class BindingJSON(TypedDict):
    names: list[str]
    array: ArrayJSON


class BindingsJSON(TypedDict):
    shape: list[int]
    data: list[BindingJSON]


class ObservablesJSON(TypedDict):
    shape: list[int]
    terms: list[dict[str, float]]


class SamplerPubJSON(TypedDict):
    circuit: str
    params: BindingsJSON
    shots: int | None


class EstimatorPubJSON(TypedDict):
    circuit: str
    observables: ObservablesJSON
    params: BindingsJSON
    precision: float | None


class BitsFieldJSON(TypedDict):
    name: str
    type: Literal["bits"]
    num_bits: int
    array: ArrayJSON


class ArrayFieldJSON(TypedDict):
    name: str
    type: Literal["array"]
    array: ArrayJSON


class ValueFieldJSON(TypedDict):
    name: str
    type: Literal["json"]
    value: JSONValue


FieldJSON: TypeAlias = "BitsFieldJSON | ArrayFieldJSON | ValueFieldJSON"


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


# Built once: json.loads/dumps with keyword arguments build a new coder on every call.
_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _bad(where: str, message: str) -> InvalidPayloadError:
    return InvalidPayloadError(f"invalid payload: {where}: {message}")


def _short(exc: BaseException) -> str:
    """One line of at most 300 characters (QPY's Rust errors carry ANSI-coloured backtraces)."""
    return f"{type(exc).__name__}: {' '.join(_NOISE.sub(' ', str(exc)).split())}"[:300]


def _fields(obj: object, keys: tuple[str, ...], where: str) -> list[Any]:
    """The values of exactly ``keys`` of JSON object ``obj`` (no key missing, none extra)."""
    if not isinstance(obj, dict):
        raise _bad(where, f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _bad(where, f"missing key {missing[0]!r}")
    if len(obj) != len(keys):
        extra = sorted(str(k) for k in obj if k not in keys)
        raise _bad(where, f"unknown key {extra[0][:40]!r}")
    return [obj[k] for k in keys]


def _int(value: object, where: str, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass; so is nothing else from JSON
        raise _bad(where, f"expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _bad(where, f"{value} is outside the allowed range {low}..{high}")
    return value


def _shape(value: object, where: str, max_size: int | None) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_NDIM:
        raise _bad(where, f"expected a list of at most {MAX_NDIM} dimensions")
    shape = tuple(_int(dim, f"{where}[{i}]", 0, 2**62) for i, dim in enumerate(value))
    if max_size is not None and math.prod(shape) > max_size:
        raise _bad(where, f"shape {list(shape)} has more than {max_size} elements")
    return shape


# --- arrays --------------------------------------------------------------------------------


def _enc_array(arr: np.ndarray) -> ArrayJSON:
    """Raw little-endian bytes, base64: no per-element Python objects on either side."""
    dtype = arr.dtype.newbyteorder("<")
    # asarray keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d: evs of shape ())
    arr = np.asarray(arr, dtype=dtype, order="C")  # a no-op for the usual arrays
    b64 = binascii.b2a_base64(arr.data, newline=False).decode("ascii")
    return {"dtype": dtype.str, "shape": list(arr.shape), "b64": b64}


def _dec_array(obj: object, where: str, dtypes: tuple[str, ...] | None, max_size: int | None) -> np.ndarray:
    dtype_str, shape, b64 = _fields(obj, ("dtype", "shape", "b64"), where)
    if dtypes is not None and dtype_str not in dtypes:
        raise _bad(f"{where}.dtype", f"expected one of {list(dtypes)}, got {dtype_str!r:.40}")
    # Canonical little-endian numeric dtypes only (what _enc_array writes): never "O", "V", ...
    if not isinstance(dtype_str, str) or not _RESULT_DTYPE.fullmatch(dtype_str):
        raise _bad(f"{where}.dtype", f"unsupported dtype {dtype_str!r:.40}")
    dtype: np.dtype[Any] | None
    try:
        dtype = np.dtype(dtype_str)
    except TypeError:
        dtype = None
    if dtype is None or dtype.str != dtype_str:
        raise _bad(f"{where}.dtype", f"unsupported dtype {dtype_str!r}")
    shape = _shape(shape, f"{where}.shape", max_size)
    nbytes = math.prod(shape) * dtype.itemsize
    # Compare lengths before decoding: a lying shape is refused without allocating anything.
    if not isinstance(b64, str) or len(b64) != 4 * ((nbytes + 2) // 3):
        got = len(b64) if isinstance(b64, str) else type(b64).__name__
        raise _bad(
            f"{where}.b64", f"length {got} does not match shape {list(shape)} of {dtype_str} ({nbytes} bytes)"
        )
    raw = _b64decode(b64, f"{where}.b64")
    if len(raw) != nbytes:
        raise _bad(
            f"{where}.b64",
            f"{len(raw)} bytes do not match shape {list(shape)} of {dtype_str} ({nbytes} bytes)",
        )
    # bytearray: callers get ordinary writable arrays, not read-only views of a bytes object.
    return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def _b64decode(text: str, where: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise _bad(where, f"invalid base64 ({exc})") from None


# --- circuits ------------------------------------------------------------------------------


def encode_circuit(circuit: QuantumCircuit) -> str:
    """Base64 of the circuit's QPY bytes."""
    buf = io.BytesIO()
    try:
        qpy.dump(circuit, buf, version=_QPY_MAX_READ)
    except Exception as exc:
        raise InvalidInputError(f"circuit cannot be serialised as QPY: {_short(exc)}") from exc
    return binascii.b2a_base64(buf.getbuffer(), newline=False).decode("ascii")


def _check_qpy(raw: bytes, where: str) -> None:
    """Refuse QPY whose headers lie, before qiskit reads it.

    qiskit's reader trusts declared counts once the binary parses: a 400-byte QPY claiming
    4e9 qubits got a worker OOM-killed at 24 GB; a nested body claiming 5e8 clbits took 40 s
    and 8 GB. So: one circuit of a known QPY version, widths within the caps, counts that fit
    the bytes, and nested circuits (control-flow bodies, gate definitions) no wider than the
    circuit and, together, no wider than len/4 bits (each nested bit is also a 5-byte argument
    of the instruction holding it).
    """
    if len(raw) < _QPY_FILE_HEADER.size + 9:
        raise _bad(where, f"truncated QPY ({len(raw)} bytes)")
    magic, version, _, _, _, programs, _ = _QPY_FILE_HEADER.unpack_from(raw)
    if magic != b"QISKIT":
        raise _bad(where, "not QPY data (no QISKIT magic)")
    if not _QPY_MIN_READ <= version <= _QPY_MAX_READ:
        raise _bad(
            where,
            f"QPY version {version} is not supported (this worker reads {_QPY_MIN_READ}..{_QPY_MAX_READ})",
        )
    if programs != 1:
        raise _bad(where, f"QPY must hold exactly one circuit, not {programs}")
    if raw[_QPY_FILE_HEADER.size] != ord("q"):
        raise _bad(where, "QPY program is not a circuit")
    top = _QPY_FILE_HEADER.size + 1
    if version >= 16:  # a table of program offsets
        (top,) = struct.unpack_from("!Q", raw, top)
    if top + _QPY_CIRCUIT_HEADER.size > len(raw):
        raise _bad(where, "truncated QPY (circuit header out of bounds)")
    qubits, clbits = _QPY_CIRCUIT_HEADER.unpack_from(raw, top)[3:5]
    if qubits > MAX_QUBITS or clbits > MAX_CLBITS:
        raise _bad(
            where,
            f"circuit has {qubits} qubits and {clbits} clbits; at most "
            f"{MAX_QUBITS} qubits and {MAX_CLBITS} clbits are allowed",
        )
    if _header_overflows(raw, top):
        raise _bad(where, "QPY header declares more data than it holds (truncated or corrupt)")
    total = 0
    for h in _nested_headers(raw, top):
        nq, nc = _QPY_CIRCUIT_HEADER.unpack_from(raw, h)[3:5]
        if nq > qubits or nc > clbits or _header_overflows(raw, h):
            raise _bad(
                where,
                f"a nested circuit (byte {h}) declares {nq} qubits and {nc} "
                f"clbits (its circuit has {qubits} and {clbits}) or more data "
                f"than the QPY holds",
            )
        total += nq + nc
    if total > len(raw) // 4:
        raise _bad(
            where, f"nested circuits declare {total} bits in all, more than {len(raw)} bytes of QPY can hold"
        )


def _header_overflows(raw: bytes, h: int) -> bool:
    """Whether the circuit header at ``h`` declares more records than the bytes after it."""
    name, _, phase, _, _, meta, regs, instrs, nvars = _QPY_CIRCUIT_HEADER.unpack_from(raw, h)
    rest = len(raw) - h - _QPY_CIRCUIT_HEADER.size
    return bool(
        name + phase + meta > rest
        or instrs * _QPY_MIN_INSTRUCTION > rest
        or regs * _QPY_MIN_REGISTER > rest
        or nvars * _QPY_MIN_VAR > rest
    )


def _nested_headers(raw: bytes, top: int) -> list[int]:
    """Offsets of the nested circuit headers in QPY ``raw`` (all of them, and no others in
    the circuits we tried: 68 of them, up to 3.4 MB, with control flow, custom gates, matrices).

    Finding them exactly takes a full parse, so screen every offset with whole-array byte tests
    (15-50 us for a small circuit, ~10 ms per 500 KB) for a header: global phase of a type
    qiskit accepts (f with 8 bytes, p, v, e), name, phase and metadata in bounds; at a place a
    parse reaches: right after a 'q' parameter's 9-byte tag, or as a custom definition's data.
    """
    n, size = len(raw), _QPY_CIRCUIT_HEADER.size
    count = n - size + 1
    if count <= 9:
        return []
    a = np.frombuffer(raw, np.uint8)
    screen = _PHASE_TYPES[a[2 : 2 + count]] & (np.ndarray((count,), "u4", raw, 13, (1,)) == 0)
    found = []
    for h in np.flatnonzero(screen).tolist():
        name, phase_type, phase, _, _, meta = _QPY_CIRCUIT_HEADER.unpack_from(raw, h)[:6]
        if (
            h != top
            and name + phase + meta <= n - h - size
            and (phase == 8 if phase_type == b"f" else phase > 0)
        ):
            found.append(h)
    if not found:
        return []
    # qiskit reads a nested circuit from exactly the `size` bytes its record declares, so a
    # record too small for a circuit header holds none (a 127-qubit circuit's qubit indices
    # and UUIDs otherwise look like records, and their "headers" like lying ones).
    reachable = np.zeros(n + 9, bool)
    param_size = np.ndarray((n - 8,), ">u8", raw, 1, (1,))
    tag = (a[: n - 8] == ord("q")) & (param_size >= size) & (param_size <= n)
    reachable[np.flatnonzero(tag) + 9] = True  # INSTRUCTION_PARAM 'q'
    k = n - 35  # CUSTOM_CIRCUIT_INST_DEF_V2
    starts = np.arange(k) + 36 + np.ndarray((k,), ">u2", raw, 0, (1,))
    def_size = np.ndarray((k,), ">u8", raw, 12, (1,))
    ok = (a[11 : 11 + k] == 1) & (def_size >= size) & (def_size <= n) & (starts < n)
    reachable[starts[ok]] = True
    return [h for h in found if reachable[h]]


def decode_circuit(data: str) -> QuantumCircuit:
    """The circuit in ``data`` (base64 QPY); ``InvalidPayloadError`` for anything else."""
    return _load_circuit(data, "circuit")


def _load_circuit(data: str, where: str) -> QuantumCircuit:
    if not isinstance(data, str):
        raise _bad(where, f"expected a base64 string, got {type(data).__name__}")
    raw = _b64decode(data, where)
    _check_qpy(raw, where)
    try:
        circuits = qpy.load(io.BytesIO(raw))
    except Exception as exc:
        raise _bad(where, f"corrupt QPY ({_short(exc)})") from None
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException
        if type(exc).__name__ != "PanicException":
            raise
        raise _bad(where, f"corrupt QPY ({_short(exc)})") from None
    if len(circuits) != 1 or not isinstance(circuits[0], QuantumCircuit):
        raise _bad(where, "QPY does not hold exactly one circuit")
    if circuits[0].num_qubits > MAX_QUBITS:
        raise _bad(where, f"circuit has more than {MAX_QUBITS} qubits")
    return circuits[0]


# --- PUBs ----------------------------------------------------------------------------------


def _enc_bindings(bindings: BindingsArray) -> BindingsJSON:
    data: list[BindingJSON] = []
    for names, arr in bindings.data.items():
        if not names:  # `[]`, `[[]]`, np.zeros((3, 0)) on a parameterless circuit: the shape
            continue  # is all they carry, and it travels in "shape"
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"parameter values for {list(names)[:3]} contain NaN or inf")
        data.append({"names": list(names), "array": _enc_array(arr.astype(np.float64, copy=False))})
    return {"shape": list(bindings.shape), "data": data}


def _circuit_encoder() -> Callable[[QuantumCircuit], str]:
    """encode_circuit, memoised per call by object identity: PUBs often share one circuit."""
    memo: dict[int, tuple[QuantumCircuit, str]] = {}

    def encode(circuit: QuantumCircuit) -> str:
        if circuit.num_qubits > MAX_QUBITS:
            raise InvalidInputError(
                f"circuit has {circuit.num_qubits} qubits; at most {MAX_QUBITS} are allowed"
            )
        if id(circuit) not in memo:
            memo[id(circuit)] = (circuit, encode_circuit(circuit))  # alive: ids stay unique
        return memo[id(circuit)][1]

    return encode


_Pub = TypeVar("_Pub", SamplerPub, EstimatorPub)


def _coerce(cls: type[_Pub], pub: object) -> _Pub:
    try:
        return cls.coerce(pub)
    except Exception as exc:
        raise InvalidInputError(f"invalid {cls.__name__}: {exc}") from exc


def encode_sampler_pubs(pubs: Sequence[SamplerPub]) -> list[SamplerPubJSON]:
    encode = _circuit_encoder()
    out: list[SamplerPubJSON] = []
    for pub in map(lambda p: _coerce(SamplerPub, p), pubs):
        if pub.shots is not None and not 0 < pub.shots <= MAX_SHOTS:
            raise InvalidInputError(f"shots must be in 1..{MAX_SHOTS}, got {pub.shots}")
        out.append(
            {
                "circuit": encode(pub.circuit),
                "params": _enc_bindings(pub.parameter_values),
                "shots": None if pub.shots is None else int(pub.shots),
            }
        )
    return out


def encode_estimator_pubs(pubs: Sequence[EstimatorPub]) -> list[EstimatorPubJSON]:
    encode = _circuit_encoder()
    out: list[EstimatorPubJSON] = []
    for pub in map(lambda p: _coerce(EstimatorPub, p), pubs):
        terms = [{str(k): float(v) for k, v in d.items()} for d in np.asarray(pub.observables).reshape(-1)]
        out.append(
            {
                "circuit": encode(pub.circuit),
                "observables": {"shape": list(pub.observables.shape), "terms": terms},
                "params": _enc_bindings(pub.parameter_values),
                "precision": None if pub.precision is None else float(pub.precision),
            }
        )
    return out


def _dec_bindings(obj: object, where: str, circuit: QuantumCircuit) -> BindingsArray:
    shape, entries = _fields(obj, ("shape", "data"), where)
    shape = _shape(shape, f"{where}.shape", MAX_PUB_SIZE)
    if not isinstance(entries, list):
        raise _bad(f"{where}.data", "expected a list")
    data: dict[tuple[str, ...], np.ndarray] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        at = f"{where}.data[{i}]"
        names, array = _fields(entry, ("names", "array"), at)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _bad(f"{at}.names", "expected a non-empty list of parameter names")
        if seen.intersection(names) or len(set(names)) != len(names):
            raise _bad(f"{at}.names", "a parameter is given more than once")
        seen.update(names)
        arr = _dec_array(array, f"{at}.array", ("<f8",), MAX_ARRAY_ELEMENTS)
        if arr.shape != shape + (len(names),):
            raise _bad(
                f"{at}.array",
                f"shape {list(arr.shape)} is not the bindings shape "
                f"{list(shape)} + [{len(names)} parameters]",
            )
        if not np.isfinite(arr).all():
            raise _bad(f"{at}.array", "parameter values contain NaN or inf")
        data[tuple(names)] = arr
    expected = {p.name for p in circuit.parameters} if seen or circuit.num_parameters else seen
    if seen != expected:
        unknown = sorted(seen - expected) or sorted(expected - seen)
        raise _bad(where, f"parameter names do not match the circuit's (first mismatch: {unknown[0][:40]!r})")
    return BindingsArray(data, shape=shape)


def _dec_observables(obj: object, where: str) -> ObservablesArray:
    shape, terms = _fields(obj, ("shape", "terms"), where)
    shape = _shape(shape, f"{where}.shape", MAX_PUB_SIZE)
    if not isinstance(terms, list) or len(terms) != math.prod(shape):
        raise _bad(f"{where}.terms", f"expected a list of {math.prod(shape)} term objects")
    flat = np.empty(len(terms), dtype=object)
    for i, term in enumerate(terms):
        if not isinstance(term, dict) or not term:
            raise _bad(f"{where}.terms[{i}]", "expected a non-empty object {label: coeff}")
        for label, coeff in term.items():
            if not _LABEL.fullmatch(label):
                raise _bad(
                    f"{where}.terms[{i}]",
                    f"invalid Pauli label {label[:40]!r} (allowed: IXYZ01+-rl, up to {MAX_QUBITS})",
                )
            if type(coeff) not in (int, float) or abs(coeff) > 1e300:
                raise _bad(f"{where}.terms[{i}]", f"coeff of {label[:40]!r} is not a finite number")
        flat[i] = term
    return ObservablesArray(flat.reshape(shape), copy=False)


def _dec_pub(obj: object, where: str, primitive: str, circuits: BoundedMemo) -> SamplerPub | EstimatorPub:
    if primitive == "sampler":
        qpy_b64, params, shots = _fields(obj, ("circuit", "params", "shots"), where)
        if shots is not None:
            shots = _int(shots, f"{where}.shots", 1, MAX_SHOTS)
    else:
        qpy_b64, observables, params, precision = _fields(
            obj, ("circuit", "observables", "params", "precision"), where
        )
        if precision is not None and (type(precision) not in (int, float) or not 0 <= precision <= 1e300):
            raise _bad(f"{where}.precision", "expected null or a non-negative finite number")
    if not isinstance(qpy_b64, str):
        raise _bad(f"{where}.circuit", f"expected a base64 string, got {type(qpy_b64).__name__}")
    circuit = circuits.get(qpy_b64)  # PUBs often repeat one circuit: load it once
    if circuit is None:
        circuit = _load_circuit(qpy_b64, f"{where}.circuit")
        circuits.put(qpy_b64, circuit, len(qpy_b64))
    bindings = _dec_bindings(params, f"{where}.params", circuit)
    try:
        if primitive == "sampler":
            pub = SamplerPub(circuit, bindings, shots)
        else:
            obs = _dec_observables(observables, f"{where}.observables")
            precision = None if precision is None else float(precision)
            pub = EstimatorPub(circuit, obs, bindings, precision)
    except InvalidPayloadError:
        raise
    except Exception as exc:  # qiskit's own validation: qubit counts, broadcasting ...
        raise _bad(where, _short(exc)) from None
    if math.prod(pub.shape) > MAX_PUB_SIZE:  # math.prod: np.prod costs ~5 us here
        raise _bad(where, f"PUB shape {list(pub.shape)} has more than {MAX_PUB_SIZE} elements")
    return pub


MAX_RESULT_BYTES = 1 << 30  # a sampler job's bit arrays: PUB size x shots x bytes per shot


def result_bytes(pubs: Iterable[SamplerPub]) -> int:
    """Bytes of the BitArrays a sampler job returns (client and worker check the same bound)."""
    return sum(
        int(np.prod(p.shape, dtype=np.int64)) * int(p.shots) * -(-p.circuit.num_clbits // 8) for p in pubs
    )


def check_result_size(pubs: Iterable[SamplerPub]) -> None:
    size = result_bytes(pubs)
    if size > MAX_RESULT_BYTES:
        raise InvalidInputError(
            f"this sampler job would return {size / 2**20:.0f} MiB of bits (PUB size x shots x "
            f"bytes per shot); the limit is {MAX_RESULT_BYTES >> 20} MiB: use fewer shots or split the job"
        )


#: Circuits the client's run of the decoder already loaded, by their base64 QPY text.
_CHECKED_CIRCUITS = BoundedMemo()


def check_payload(payload: str, *, max_bytes: int) -> None:
    """Run the worker's own decoder on a job before it is queued.

    One validation, shared: whatever the client's checks let through but a worker would
    refuse is an ``InvalidInputError`` in the caller's process, never a failed job.
    Loading a circuit (its QPY checks and qiskit's reader) is most of the cost, and the same
    text always loads to the same circuit, so circuits this decoder loaded before are taken
    from a memo keyed on that exact text: every other part of the job is decoded afresh,
    and the worker still decodes everything. The circuits are only read here, never returned.
    """
    try:
        _decode_payload(payload, max_bytes, _CHECKED_CIRCUITS)
    except InvalidPayloadError as exc:
        raise InvalidInputError(f"this job would be refused by the worker: {exc}") from None


def encode_payload(
    primitive: str,
    pubs: list[SamplerPubJSON] | list[EstimatorPubJSON],
    options: dict[str, Any],
    *,
    max_bytes: int,
) -> str:
    """Compact JSON text of a job; ``PayloadTooLargeError`` if it is over ``max_bytes``."""
    if primitive not in PRIMITIVES:
        raise InvalidInputError(f"primitive must be one of {PRIMITIVES}, not {primitive!r}")
    try:
        text = _ENCODER.encode({"v": WIRE_VERSION, "primitive": primitive, "pubs": pubs, "options": options})
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"options are not JSON-safe (finite numbers, str keys): {exc}") from exc
    if len(text) > max_bytes:  # ensure_ascii: characters == bytes
        raise PayloadTooLargeError(
            f"the encoded job is {len(text)} bytes, over the limit of {max_bytes} bytes; "
            "send fewer or smaller PUBs, or raise SESSION_BROKER_MAX_PAYLOAD_BYTES"
        )
    return text


@dataclass(frozen=True)
class DecodedJob:
    primitive: str  # "sampler" | "estimator"
    pubs: list[SamplerPub | EstimatorPub]  # validated
    options: dict[str, Any]  # JSON-safe, as sent


def _parse_json(data: object, max_bytes: int | None, what: str) -> Any:
    """Size check, then strict UTF-8 and JSON (no NaN/Infinity, no float overflow)."""
    if isinstance(data, str):
        size = len(data) if data.isascii() else len(data.encode("utf-8", "surrogatepass"))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        size = len(data)
    else:
        raise InvalidPayloadError(f"invalid {what}: expected str or bytes, got {type(data).__name__}")
    if max_bytes is not None and size > max_bytes:
        raise InvalidPayloadError(
            f"invalid {what}: {size} bytes is over the limit of {max_bytes} "
            "(SESSION_BROKER_MAX_PAYLOAD_BYTES)"
        )
    if isinstance(data, bytes):
        if data[:1] == b"\x80":
            raise InvalidPayloadError(f"invalid {what}: looks like a pickle; only JSON is accepted")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPayloadError(f"invalid {what}: not valid UTF-8 (byte {exc.start})") from None
    try:
        return _DECODER.decode(data)
    except RecursionError:
        raise InvalidPayloadError(f"invalid {what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidPayloadError(f"invalid {what}: not valid JSON ({_short(exc)})") from None


def decode_payload(data: str | bytes, *, max_bytes: int) -> DecodedJob:
    """The worker's decoder: a validated job, or ``InvalidPayloadError`` saying what is wrong.

    Nothing else escapes, whatever ``data`` holds: the last ``except`` turns any error that
    qiskit or numpy raise on input we did not foresee into ``InvalidPayloadError`` too.
    """
    # A memo that lives for this call only: the caller gets circuits nobody else holds.
    return _decode_payload(data, max_bytes, BoundedMemo(max_entries=1 << 30, max_chars=1 << 62))


def _decode_payload(data: object, max_bytes: int | None, circuits: BoundedMemo) -> DecodedJob:
    try:
        obj = _parse_json(data, max_bytes, "payload")
        if not isinstance(obj, dict):
            raise _bad("top level", f"expected a JSON object, got {type(obj).__name__}")
        if "v" not in obj or type(obj["v"]) is not int or obj["v"] != WIRE_VERSION:
            raise _bad(
                "v",
                f"unsupported wire version {obj.get('v')!r:.40}; this worker reads version {WIRE_VERSION}",
            )
        _, primitive, pubs, options = _fields(obj, ("v", "primitive", "pubs", "options"), "payload")
        if primitive not in PRIMITIVES:
            raise _bad(
                "primitive", f"unknown primitive {primitive!r:.40}; expected one of {list(PRIMITIVES)}"
            )
        if not isinstance(pubs, list) or not pubs:
            raise _bad("pubs", "expected a non-empty list of PUBs")
        if not isinstance(options, dict):
            raise _bad("options", f"expected a JSON object, got {type(options).__name__}")
        decoded = [_dec_pub(pub, f"pubs[{i}]", primitive, circuits) for i, pub in enumerate(pubs)]
        return DecodedJob(primitive, decoded, options)
    except InvalidPayloadError:
        raise
    except Exception as exc:
        raise InvalidPayloadError(f"invalid payload: {_short(exc)}") from None


# --- results -------------------------------------------------------------------------------


def _jsonable(value: object, depth: int = 0) -> JSONValue:
    """A JSON-safe copy: numpy to Python, non-finite floats and unknown objects to strings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, (np.generic, np.ndarray)):
        return _jsonable(value.tolist(), depth)
    if depth < 32 and isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 32 and isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, depth + 1) for v in value]
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _enc_field(name: str, value: object) -> FieldJSON:
    if isinstance(value, BitArray):
        return {"name": name, "type": "bits", "num_bits": value.num_bits, "array": _enc_array(value.array)}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return {"name": name, "type": "array", "array": _enc_array(value)}
    return {"name": name, "type": "json", "value": _jsonable(value)}


def encode_result(result: PrimitiveResult) -> str:
    pubs = [
        {
            "kind": "sampler" if isinstance(pr, SamplerPubResult) else "pub",
            "shape": list(pr.data.shape),
            "metadata": _jsonable(pr.metadata),
            "fields": [_enc_field(name, value) for name, value in pr.data.items()],
        }
        for pr in result
    ]
    return _ENCODER.encode({"v": WIRE_VERSION, "metadata": _jsonable(result.metadata), "pubs": pubs})


def _dec_field(obj: object, where: str) -> tuple[str, Any]:
    if not isinstance(obj, dict) or obj.get("type") not in ("bits", "array", "json"):
        raise _bad(where, "expected a field of type bits, array or json")
    if obj["type"] == "json":
        name, _, value = _fields(obj, ("name", "type", "value"), where)
    elif obj["type"] == "array":
        name, _, array = _fields(obj, ("name", "type", "array"), where)
        value = _dec_array(array, f"{where}.array", None, None)
    else:
        name, _, num_bits, array = _fields(obj, ("name", "type", "num_bits", "array"), where)
        num_bits = _int(num_bits, f"{where}.num_bits", 0, 2**31)
        value = BitArray(_dec_array(array, f"{where}.array", ("|u1",), None), num_bits)
    if not isinstance(name, str):
        raise _bad(f"{where}.name", "expected a string")
    return name, value


def decode_result(data: str) -> PrimitiveResult:
    """The ``PrimitiveResult`` in ``data``; ``InvalidPayloadError`` if it is not one."""
    try:
        obj = _parse_json(data, None, "result")
        _, metadata, pubs = _fields(obj, ("v", "metadata", "pubs"), "result")
        if obj["v"] != WIRE_VERSION or type(obj["v"]) is not int:
            raise _bad("result.v", f"unsupported wire version {obj['v']!r:.40}")
        if not isinstance(pubs, list) or not isinstance(metadata, dict):
            raise _bad("result", "expected pubs to be a list and metadata an object")
        out = []
        for i, pub in enumerate(pubs):
            where = f"result.pubs[{i}]"
            kind, shape, pub_meta, fields = _fields(pub, ("kind", "shape", "metadata", "fields"), where)
            if kind not in ("sampler", "pub") or not isinstance(fields, list):
                raise _bad(where, "expected kind sampler|pub and a list of fields")
            data_bin = DataBin(
                shape=_shape(shape, f"{where}.shape", None),
                **dict(_dec_field(f, f"{where}.fields[{j}]") for j, f in enumerate(fields)),
            )
            out.append((SamplerPubResult if kind == "sampler" else PubResult)(data_bin, pub_meta))
        return PrimitiveResult(out, metadata=_with_spans(metadata))
    except InvalidPayloadError:
        raise
    except Exception as exc:
        raise InvalidPayloadError(f"invalid result: {_short(exc)}") from None


def _with_spans(metadata: dict[str, Any]) -> dict[str, Any]:
    """IBM's ``ExecutionSpans`` in ``metadata["execution"]["execution_spans"]``.

    The worker writes each span as ``{"start": ISO, "stop": ISO, "data_slices": {pub index:
    [shape, start, stop]}}`` (IBM's ``SliceSpan`` fields); here they become IBM's objects,
    so code that reads ``result.metadata["execution"]["execution_spans"]`` runs unchanged.
    """
    spans = (
        metadata.get("execution", {}).get("execution_spans")
        if isinstance(metadata.get("execution"), dict)
        else None
    )
    if not isinstance(spans, list):
        return metadata
    # lazy: qiskit_ibm_runtime takes a second or more to import, and workers never need it
    from qiskit_ibm_runtime.execution_span import ExecutionSpans, SliceSpan

    objects = []
    for span in spans:
        slices = {
            int(i): (tuple(shape), slice(start, stop))
            for i, (shape, start, stop) in span["data_slices"].items()
        }
        objects.append(
            SliceSpan(datetime.fromisoformat(span["start"]), datetime.fromisoformat(span["stop"]), slices)
        )
    metadata = dict(metadata)
    metadata["execution"] = {**metadata["execution"], "execution_spans": ExecutionSpans(objects)}
    return metadata
