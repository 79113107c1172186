"""A strict reader for the stock client's job ``params``: data in, never code.

The client writes params with its ``RuntimeEncoder``; IBM's ``RuntimeDecoder`` would read
them back, but it is for trusted input only (it loads QPY of any declared size, ``np.load``s
arrays and imports classes a payload names). We read exactly the shapes the client sends::

    {"pubs": [PUB, ...], "options": {...}, "version": 2, "support_qiskit": true,
     "resilience_level": n?}
    sampler PUB:   [CIRCUIT, VALUES, shots | null]
    estimator PUB: [CIRCUIT, OBSERVABLES, VALUES, precision | null]
    CIRCUIT = {"__type__": "QuantumCircuit", "__value__": base64(zlib(QPY))}
    VALUES  = {"__type__": "ndarray", "__value__": base64(zlib(.npy))}, shape (*shape, n_params)

Decompression stops at a limit (a zip bomb costs its limit, not its claim), a ``.npy``
header is parsed and judged before any array is read (numeric dtypes only, no pickle, a
bounded size), and QPY goes through our own header checks (``codec``) before qiskit reads
it. Anything else is an ``ApiError`` 400 that names the place and what is allowed.
"""

from __future__ import annotations

import binascii
import io
import math
import zlib

import numpy as np
from qiskit.primitives.containers.bindings_array import BindingsArray
from qiskit.primitives.containers.observables_array import ObservablesArray

from session_broker.api.errors import ApiError
from session_broker.core import codec
from session_broker.errors import InvalidPayloadError

TOP_KEYS = {"pubs", "options", "version", "support_qiskit", "resilience_level"}
MAX_PUBS = 10_000
MAX_CIRCUIT_BYTES = 16 * 1024 * 1024
MAX_ARRAY_BYTES = 8 * codec.MAX_ARRAY_ELEMENTS + 4096
MAX_OPTION_DEPTH = 8


def bad(where: str, message: str) -> ApiError:
    return ApiError(400, f"params{where}: {message}", "invalid_params")


def _b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise bad(where, f"expected a base64 string, not {type(text).__name__}")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        raise bad(where, "invalid base64") from None


def inflate(data: bytes, limit: int, where: str) -> bytes:
    """zlib-decompress at most ``limit`` bytes; more (a bomb) or a broken stream is a 400."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as exc:
        raise bad(where, f"not zlib data ({exc})") from None
    if d.unconsumed_tail or (not d.eof and len(out) >= limit):
        raise bad(where, f"decompresses to more than {limit} bytes (the limit)")
    if not d.eof:
        raise bad(where, "truncated zlib data")
    return out


def _typed(obj, type_name: str, where: str) -> str:
    if not isinstance(obj, dict) or set(obj) != {"__type__", "__value__"}:
        raise bad(where, f"expected {{'__type__': '{type_name}', '__value__': ...}}")
    if obj["__type__"] != type_name:
        raise bad(where, f"type {str(obj['__type__'])[:40]!r} is not allowed here; expected {type_name!r}")
    return obj["__value__"]


def read_circuit(obj, where: str):
    raw = inflate(_b64(_typed(obj, "QuantumCircuit", where), where), MAX_CIRCUIT_BYTES, where)
    try:
        return codec.decode_circuit(binascii.b2a_base64(raw, newline=False).decode("ascii"))
    except InvalidPayloadError as exc:
        raise bad(where, str(exc)) from None


def read_array(obj, where: str) -> np.ndarray:
    raw = inflate(_b64(_typed(obj, "ndarray", where), where), MAX_ARRAY_BYTES, where)
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        reader = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if reader is None:
            raise ValueError(f".npy version {version} is not supported")
        shape, fortran, dtype = reader(buf)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise bad(where, f"not a .npy array ({str(exc)[:200]})") from None
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise bad(where, f"array dtype {dtype.str!r} is not allowed; parameter values are real numbers")
    if len(shape) > codec.MAX_NDIM or math.prod(shape) > codec.MAX_ARRAY_ELEMENTS:
        raise bad(
            where,
            f"array shape {shape} is too large (at most {codec.MAX_ARRAY_ELEMENTS} "
            f"elements, {codec.MAX_NDIM} dimensions)",
        )
    if buf.tell() + math.prod(shape) * dtype.itemsize != len(raw):
        raise bad(where, "the .npy data does not match its header's shape and dtype")
    buf.seek(0)
    arr = np.load(buf, allow_pickle=False)
    if not np.all(np.isfinite(arr)):
        raise bad(where, "parameter values must be finite numbers")
    return np.asarray(arr, dtype=float)


def _bindings(circuit, values: np.ndarray, where: str) -> BindingsArray:
    n = circuit.num_parameters
    if values.ndim == 0 or values.shape[-1] != n:
        raise bad(
            where,
            f"parameter values have shape {values.shape}; the circuit has {n} "
            f"parameters, so the last dimension must be {n}",
        )
    data = {tuple(circuit.parameters): values} if n else {}
    return BindingsArray(data, shape=values.shape[:-1])


def _number(value, where: str, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(where, f"{what} must be a number or null")
    return value


def _observables(obj, where: str, depth: int = 0):
    """Nested lists of {pauli label: real coefficient} dicts (or labels), nothing else."""
    if depth > codec.MAX_NDIM:
        raise bad(where, "observables are nested too deeply")
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            if (
                not isinstance(k, str)
                or isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
            ):
                raise bad(where, "an observable is a {pauli label: real coefficient} object")
        return obj
    if isinstance(obj, list):
        return [_observables(x, where, depth + 1) for x in obj]
    raise bad(where, f"observables must be lists of {{label: coefficient}} objects, not {type(obj).__name__}")


def plain_json(obj, where: str, depth: int = 0):
    """Options are plain JSON: no ``__type__`` objects (the decoder would import them)."""
    if depth > MAX_OPTION_DEPTH:
        raise bad(where, "options are nested too deeply")
    if isinstance(obj, dict):
        if "__type__" in obj:
            raise bad(
                where,
                f"typed objects ({str(obj['__type__'])[:40]!r}) are not accepted in "
                "options; send plain JSON values",
            )
        return {str(k): plain_json(v, f"{where}.{k}", depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_json(v, where, depth + 1) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise bad(where, "NaN and infinity are not accepted")
    return obj


def read_params(program: str, params) -> tuple[list, dict]:
    """(pubs as tuples our primitives coerce, options dict) from the client's params."""
    if not isinstance(params, dict):
        raise bad("", "must be an object with 'pubs' and 'options'")
    extra = set(params) - TOP_KEYS
    if extra:
        raise bad("", f"unknown keys {sorted(extra)[:5]}; allowed: {sorted(TOP_KEYS)}")
    if params.get("version", 2) != 2:
        raise bad(".version", "only version 2 (SamplerV2/EstimatorV2) is served")
    pubs = params.get("pubs")
    if not isinstance(pubs, list) or not pubs or len(pubs) > MAX_PUBS:
        raise bad(".pubs", f"must be a list of 1 to {MAX_PUBS} PUBs")
    options = plain_json(params.get("options") or {}, ".options")
    if not isinstance(options, dict):
        raise bad(".options", "must be an object")
    if "resilience_level" in params:
        options["resilience_level"] = plain_json(params["resilience_level"], ".resilience_level")
    out = []
    for i, pub in enumerate(pubs):
        where = f".pubs[{i}]"
        size = 3 if program == "sampler" else 4
        if not isinstance(pub, list) or len(pub) != size:
            raise bad(where, f"a {program} PUB is a list of {size} items as the client writes it")
        circuit = read_circuit(pub[0], where + "[0]")
        if program == "sampler":
            shots = pub[2]
            if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots <= 0):
                raise bad(where + "[2]", "shots must be a positive int or null")
            out.append((circuit, _bindings(circuit, read_array(pub[1], where + "[1]"), where + "[1]"), shots))
        else:
            try:
                obs = ObservablesArray.coerce(_observables(pub[1], where + "[1]"))
            except (ValueError, TypeError, KeyError) as exc:
                raise bad(where + "[1]", f"invalid observables ({str(exc)[:200]})") from None
            values = _bindings(circuit, read_array(pub[2], where + "[2]"), where + "[2]")
            out.append((circuit, obs, values, _number(pub[3], where + "[3]", "precision")))
    return out, options
