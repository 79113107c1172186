"""Noisy jobs on the large (MPS) devices: which simulation each circuit gets, and that the
Pauli-twirled noise model used for wide circuits gives the exact model's values.

In-process (``tasks`` directly, no queue): what is checked is physics. The 127-qubit
simulators take 5-20 s to build, once per module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.transpiler import generate_preset_pass_manager

from session_broker import backends
from tasks import mitigation, wide

EAGLE = "ibm_sherbrooke"


def good_chain(n: int) -> list[int]:
    """``n`` physical qubits of the snapshot in a line whose 2q gates and readout are good
    (FakeSherbrooke has ECRs with error 1.0 and qubits with 25 % readout error)."""
    target = backends.build_target(EAGLE)
    props = backends.BrokerBackend(EAGLE).properties()
    good_q = {q for q in range(target.num_qubits) if props.readout_error(q) < 0.04}
    edges: dict[int, set[int]] = {}
    for (a, b), p in target["ecr"].items():
        if p is not None and p.error is not None and p.error < 0.02 and a in good_q and b in good_q:
            edges.setdefault(a, set()).add(b)
            edges.setdefault(b, set()).add(a)

    def walk(path):
        if len(path) == n:
            return path
        for nxt in sorted(edges.get(path[-1], ())):
            if nxt not in path and (found := walk([*path, nxt])):
                return found
        return None

    for start in sorted(edges):
        if found := walk([start]):
            return found
    raise AssertionError(f"no chain of {n} good qubits")


def ghz_on(chain: list[int]) -> QuantumCircuit:
    qc = QuantumCircuit(len(chain))
    qc.h(0)
    for q in range(len(chain) - 1):
        qc.cx(q, q + 1)
    pm = generate_preset_pass_manager(
        optimization_level=1, backend=backends.BrokerBackend(EAGLE), initial_layout=chain, seed_transpiler=1
    )
    return pm.run(qc)


def measured(isa: QuantumCircuit, chain: list[int], dd: dict | None) -> QuantumCircuit:
    basis = "".join("Z" if q in chain else "I" for q in reversed(range(isa.num_qubits)))
    circuit, _ = mitigation._measured(isa, basis, np.zeros(len(chain), bool))
    s = mitigation.settings("estimator", EAGLE, {"resilience_level": 0})
    s.dd = dd
    return mitigation._finish(circuit, EAGLE, s)


def correlators(counts: dict, chain: list[int]) -> float:
    """Mean of Z_i Z_i+1 along the chain from counts of the ``mitigation`` register (bit i
    is the i-th measured qubit in physical order)."""
    order = sorted(chain)
    total = sum(counts.values())
    out = []
    for a, b in zip(chain, chain[1:]):
        ia, ib = order.index(a), order.index(b)
        s = 0
        for key, n in counts.items():
            bits = key.replace(" ", "")[: len(chain)][::-1]
            s += n * (1 if bits[ia] == bits[ib] else -1)
        out.append(s / total)
    return float(np.mean(out))


def test_each_circuit_gets_the_simulation_its_width_allows():
    chain = good_chain(12)
    wide_isa = ghz_on(chain)
    narrow_isa = ghz_on(chain[:4])
    assert wide.route("ibm_manila", ghz_on(chain[:2]).copy_empty_like()) == "exact"  # not an MPS device
    assert wide.route(EAGLE, measured(narrow_isa, chain[:4], None)) == "density_matrix"
    assert wide.route(EAGLE, measured(wide_isa, chain, {"sequence_type": "XY4", **DD})) == "stabilizer"
    rotated = wide_isa.copy()
    rotated.rz(0.3, chain[0])
    assert wide.route(EAGLE, rotated) == "matrix_product_state"


DD = {"extra_slack_distribution": "middle", "scheduling_method": "alap", "skip_reset_qubits": False}


def test_pauli_twirl_keeps_each_errors_pauli_fidelities():
    from qiskit_aer.noise import pauli_error, thermal_relaxation_error

    t1, t2, t = 100e-6, 80e-6, 10e-6
    twirled = wide.pauli_twirl(thermal_relaxation_error(t1, t2, t))
    a, b = 1 - math.exp(-t / t1), 1 - math.exp(-t / t2)
    px = py = a / 4
    pz = b / 2 - a / 4
    assert sorted(twirled.probabilities) == pytest.approx(sorted([1 - px - py - pz, px, py, pz]))
    same = pauli_error([("XI", 0.1), ("II", 0.9)])
    assert sorted(wide.pauli_twirl(same).probabilities) == pytest.approx([0.1, 0.9])


def test_the_pauli_twirled_model_gives_the_exact_models_correlations():
    """An 8-qubit GHZ on the 127-qubit device, scheduled with XY4 DD as the guide's job is:
    the exact noise model (density matrix) and the Pauli-twirled one (stabilizer, what a
    100-qubit GHZ gets) agree on the Z_i Z_i+1 correlators within the shot noise."""
    chain = good_chain(8)
    circuit = measured(ghz_on(chain), chain, {"sequence_type": "XY4", **DD})
    shots = 4000
    exact = backends.simulator(EAGLE).run(circuit, shots=shots, method="density_matrix", seed_simulator=1)
    pauli = wide.simulator(EAGLE).run(circuit, shots=shots, method="stabilizer", seed_simulator=2)
    ideal = 1.0
    e, p = correlators(exact.result().get_counts(), chain), correlators(pauli.result().get_counts(), chain)
    assert 0.6 < e < ideal and 0.6 < p < ideal, (e, p)  # noisy, and not noise-dominated
    assert abs(e - p) < 0.04, (e, p)  # each mean of 7 correlators: shot noise about 0.01


def test_sampler_pubs_of_different_shapes_and_a_dynamic_circuit_on_the_large_device():
    """The plain sampler on an MPS device runs through ``mitigation.run_sampler`` (each
    circuit by its width): a PUB with two parameter sets beside a dynamic circuit keeps each
    PUB's own shape (the result assembly used the last PUB's shape for every PUB)."""
    from qiskit.circuit import Parameter
    from qiskit.primitives.containers import SamplerPub

    chain = good_chain(2)
    pm = generate_preset_pass_manager(
        optimization_level=1, backend=backends.BrokerBackend(EAGLE), initial_layout=chain
    )
    theta = Parameter("t")
    rotated = QuantumCircuit(2, 2)
    rotated.ry(theta, 0)
    rotated.cx(0, 1)
    rotated.measure([0, 1], [0, 1])
    dynamic = QuantumCircuit(2, 2)
    dynamic.h(0)
    dynamic.measure(0, 0)
    with dynamic.if_test((dynamic.clbits[0], 1)):
        dynamic.x(1)
    dynamic.measure(1, 1)
    pubs = [
        SamplerPub.coerce((pm.run(rotated), np.array([[0.0], [np.pi]])), shots=300),
        SamplerPub.coerce(pm.run(dynamic), shots=300),
    ]
    s = mitigation.settings("sampler", EAGLE, {})
    results, executed = mitigation.run_sampler(EAGLE, pubs, s, 7)
    assert executed.routes == {"density_matrix": 3}
    first, second = results
    assert first.data.c.shape == (2,) and second.data.c.shape == ()
    assert first.data.c[0].get_counts().get("00", 0) > 240 and first.data.c[1].get_counts().get("11", 0) > 240
    agree = second.data.c.get_counts()
    assert agree.get("00", 0) + agree.get("11", 0) > 270, agree  # the feed-forward copies the bit
