"""The client's per-circuit memos (issue 13): ``codec.check_payload`` and the primitives'
ISA check are keyed on a circuit's QPY text; neither may serve a stale answer after the
circuit changes, nor hand a caller a circuit another caller holds.
"""

from __future__ import annotations

import json

import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from session_broker.core import codec
from session_broker.core.memo import BoundedMemo
from session_broker.errors import InvalidInputError

MAX = 1 << 20


# ------------------------------------------------------------------------------ BoundedMemo
def test_memo_forgets_the_oldest_beyond_its_entries_and_characters():
    memo = BoundedMemo(max_entries=3, max_chars=10)
    for key in "abc":
        memo.put(key, key.upper(), 1)
    memo.put("d", "D", 1)
    assert memo.get("a") is None and [memo.get(k) for k in "bcd"] == ["B", "C", "D"]
    memo.put("e", "E", 9)  # 3 + 9 > 10: the oldest go until it fits
    assert len(memo) == 2 and memo.get("d") == "D" and memo.get("e") == "E"
    memo.put("huge", "H", 11)  # bigger than the whole memo: not kept
    assert memo.get("huge") is None and memo.get("e") == "E"
    memo.put("e", "E2", 2)  # replacing an entry gives its room back
    assert memo.get("e") == "E2" and memo._chars == 3


# ------------------------------------------------------------------------------ check_payload
def _param_circuit() -> QuantumCircuit:
    qc = QuantumCircuit(1, 1)
    qc.rx(Parameter("theta"), 0)
    qc.measure(0, 0)
    return qc


def test_check_payload_decodes_all_but_a_known_circuit_afresh():
    from qiskit.primitives.containers import SamplerPub

    qc = _param_circuit()
    good = codec.encode_sampler_pubs([SamplerPub.coerce((qc, [0.5]), 10)])
    codec.check_payload(codec.encode_payload("sampler", good, {}, max_bytes=MAX), max_bytes=MAX)
    assert codec._CHECKED_CIRCUITS.get(good[0]["circuit"]) is not None
    # the same circuit text, now with parameters that are not the circuit's: still refused
    bad = json.loads(json.dumps(good))
    bad[0]["params"]["data"][0]["names"] = ["phi"]
    with pytest.raises(InvalidInputError, match="parameter names do not match"):
        codec.check_payload(codec.encode_payload("sampler", bad, {}, max_bytes=MAX), max_bytes=MAX)
    bad = json.loads(json.dumps(good))
    bad[0]["shots"] = codec.MAX_SHOTS + 1
    with pytest.raises(InvalidInputError, match="shots"):
        codec.check_payload(codec.encode_payload("sampler", bad, {}, max_bytes=MAX), max_bytes=MAX)


def test_decode_payload_gives_every_caller_its_own_circuits():
    from qiskit.primitives.containers import SamplerPub

    pubs = codec.encode_sampler_pubs([SamplerPub.coerce((_param_circuit(), [0.5]), 10)])
    text = codec.encode_payload("sampler", pubs, {}, max_bytes=MAX)
    codec.check_payload(text, max_bytes=MAX)
    one, two = (codec.decode_payload(text, max_bytes=MAX) for _ in range(2))
    assert one.pubs[0].circuit is not two.pubs[0].circuit
    assert one.pubs[0].circuit is not codec._CHECKED_CIRCUITS.get(pubs[0]["circuit"])
