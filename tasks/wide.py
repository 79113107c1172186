"""Wide noisy circuits on the large devices: the Pauli-twirled noise model.

Why: the 127-qubit and larger devices are simulated with Aer's ``matrix_product_state``
method, and their noise model (Aer's ``NoiseModel.from_backend``: depolarizing composed with
thermal relaxation on every gate, thermal relaxation on every delay) is made of Kraus
channels. Aer applies a Kraus channel to an MPS by computing its probabilities and then
restoring the canonical form along the whole chain (``MPS::apply_kraus`` ->
``propagate_to_neighbors``: a run of SVDs), for every noisy instruction of every shot. On a
100-qubit GHZ circuit with 99 observables at resilience level 1 with DD (IBM's "Hello world"
guide) that is 8,192 trajectories of about 3,000 noisy instructions each, each Kraus channel
up to 100 SVDs: py-spy put 95 % of the simulation's time there, and the job ran for more
than 8 minutes without finishing.

What: up to ``NARROW`` active qubits, a circuit runs on the density-matrix method with the
exact model (Aer drops the idle qubits: one evolution, every shot sampled from it); above
that, with the same noise model *Pauli-twirled*: each gate, delay and reset error becomes the
Pauli channel with the same Pauli fidelities (the diagonal of its chi matrix), readout
errors unchanged. A Pauli
channel is a mixture of unitaries: Aer samples it without touching the rest of the chain, and
a Clifford circuit (GHZ, DD, Pauli twirls) runs on the stabilizer method. What is dropped is
the channel's non-Pauli part (amplitude damping's drift towards |0>): the process fidelity of
every error and every Pauli observable's decay are kept, which is also what IBM's Pauli
twirling makes of a device's noise. ``tests/integration/test_wide_devices.py`` checks the two
models agree on a circuit narrow enough to run both.

Where: ``mitigation._execute`` asks ``route`` which simulator runs each circuit; every
estimator job on a device and every sampler job on an MPS device runs through it.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from qiskit import QuantumCircuit
from qiskit.quantum_info import Chi, pauli_basis
from qiskit_aer import AerSimulator
from qiskit_aer.noise import pauli_error
from qiskit_aer.utils import transform_noise_model

from session_broker import backends

#: On an MPS device, circuits acting on at most this many qubits run on Aer's density-matrix
#: method with the exact noise model (4^10 amplitudes: about a second for a thousand
#: noisy instructions); wider ones with the Pauli-twirled model.
NARROW = 10

#: Instructions the stabilizer method runs (``rz`` only at multiples of pi/2).
_CLIFFORD = frozenset(
    {"x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz", "ecr", "swap", "id", "delay"}
    | {"measure", "reset", "barrier"}
)


def active_qubits(circuit: QuantumCircuit) -> int:
    return len({q for inst in circuit.data if inst.operation.name != "barrier" for q in inst.qubits})


def is_clifford(circuit: QuantumCircuit) -> bool:
    for inst in circuit.data:
        op = inst.operation
        if op.name in _CLIFFORD:
            continue
        if op.name == "rz":
            try:
                quarter = float(op.params[0]) / (math.pi / 2)
            except (TypeError, ValueError):
                return False
            if abs(quarter - round(quarter)) < 1e-9:
                continue
        return False
    return True


def route(backend: str, circuit: QuantumCircuit) -> str:
    """How a circuit runs on ``backend``: ``"exact"`` (its simulator as built); on an MPS
    device, ``"density_matrix"`` (the exact noise model, one evolution per circuit, every
    shot sampled from it) up to ``NARROW`` active qubits, and above that
    ``"stabilizer"`` / ``"matrix_product_state"`` with the Pauli-twirled noise model."""
    if backends.get_spec(backend).method != "matrix_product_state":
        return "exact"
    if active_qubits(circuit) <= NARROW:
        return "density_matrix"
    return "stabilizer" if is_clifford(circuit) else "matrix_product_state"


def pauli_twirl(error):
    """The Pauli channel with ``error``'s Pauli fidelities (its chi matrix's diagonal)."""
    n = error.num_qubits
    probs = np.clip(Chi(error).data.diagonal().real / 2**n, 0.0, None)
    probs = probs / probs.sum()
    labels = pauli_basis(n).to_labels()
    return pauli_error([(lab, float(p)) for lab, p in zip(labels, probs) if p > 1e-12])


def simulator(backend: str):
    """The backend's simulator with its noise model Pauli-twirled (built once per process,
    on the first wide job: 10-45 s on a 127- or 133-qubit device, counted in that job)."""
    return _simulator(backends.get_spec(backend))


@cache
def _simulator(spec: backends.BackendSpec) -> AerSimulator:
    exact = backends.simulator(spec.name)
    noise = exact.options.noise_model
    twirled = transform_noise_model(noise, pauli_twirl)
    # the delay pass of the exact model is already memoized: wrap the pass it wraps, twirled
    twirled._custom_noise_passes = [
        backends.memoized_noise_pass(p, transform=pauli_twirl) for p in noise._custom_noise_passes
    ]
    options = {
        "device": exact.options.device,
        "max_parallel_threads": exact.options.max_parallel_threads,
        "noise_model": twirled,
    }
    return AerSimulator(configuration=exact.configuration(), target=exact.target, **options)
