"""Error suppression and mitigation on the worker: what IBM's server does with
``dynamical_decoupling``, ``twirling``, ``resilience_level`` and ``resilience.*``.

Why this exists: IBM's local testing mode accepts these options and ignores them, so code
meant for a device cannot be checked offline. Our device backends are noisy simulators built
from real calibration snapshots, so each technique has a measurable effect here; this module
makes each one do what IBM documents, with Qiskit's own transpiler passes where they exist.

The pipeline, per PUB and per circuit actually executed::

    ISA circuit -> bind parameters -> fold 2q gates (ZNE, noise factor lambda)
      -> Pauli-twirl 2q gates (twirling.enable_gates, one draw per randomization)
      -> [estimator] rotate into each measurement basis, measure the observables' qubits
      -> twirl measurements (random X before measure, bits flipped back afterwards)
      -> merge 1q gates back into the device basis (Optimize1qGatesDecomposition)
      -> schedule with the device's durations and pad idle windows, with delays (which Aer's
         noise model turns into T1/T2 relaxation) or with a DD sequence
      -> one Aer run of every circuit of the job (seeded: same numbers twice)

The estimator on a device *samples* (shots = 1/precision^2, as IBM spends them), so readout
error, shot noise and what TREX removes are all there; Aer's own estimator computes exact
expectation values of the noisy state before any readout, which would hide the readout error
that measurement mitigation exists for. ``precision=0`` keeps that exact path (no readout,
no shots: only gate mitigation can act on it).

Metadata follows IBM's server: the job's ``dynamical_decoupling``, ``twirling`` and
``resilience`` groups (the values in effect), and per PUB ``num_randomizations`` and
``resilience`` (``zne.extrapolator`` per element); ours (gate counts of what ran) goes under
``metadata["session_broker"]["executed"]``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from qiskit import ClassicalRegister, QuantumCircuit
from qiskit.circuit import pauli_twirl_2q_gates
from qiskit.circuit.library import RZGate, XGate, YGate
from qiskit.primitives.containers import BitArray, DataBin, EstimatorPub, PubResult, SamplerPub
from qiskit.quantum_info import PauliList
from qiskit.transpiler import InstructionProperties, PassManager
from qiskit.transpiler.passes import (
    ALAPScheduleAnalysis,
    ASAPScheduleAnalysis,
    Optimize1qGatesDecomposition,
    PadDelay,
    PadDynamicalDecoupling,
)

from session_broker import backends
from session_broker.options import sampler_randomizations

from . import wide

#: 2-qubit gates of IBM's ISAs; each is its own inverse, so a fold G -> G G G stays ISA.
_TWO_Q = ("cx", "ecr", "cz")
EXTRAPOLATORS = (
    "linear",
    "exponential",
    "double_exponential",
    "fallback",
    *(f"polynomial_degree_{k}" for k in range(1, 8)),
)
_REQUIRED_FACTORS = {
    "linear": 2,
    "exponential": 2,
    "double_exponential": 4,
    "fallback": 2,
    **{f"polynomial_degree_{k}": k + 1 for k in range(1, 8)},
}


# ---------------------------------------------------------------------- settings
@dataclass
class Settings:
    """The techniques in effect for one job, after ``resilience_level``'s defaults."""

    kind: str
    level: int = 0
    dd: dict | None = None  # sequence_type, extra_slack_distribution, ...
    twirl_gates: bool = False
    twirl_measure: bool = False
    num_randomizations: Any = "auto"
    shots_per_randomization: Any = "auto"
    strategy: str = "active"  # what pauli_twirl_2q_gates does (options refuse others)
    trex: bool = False
    trex_randomizations: int = 32
    trex_shots: Any = "auto"
    zne: dict | None = None  # noise_factors, extrapolators, extrapolated, amplifier
    schedule: bool = False  # device backends: idle windows become delays

    @property
    def any(self) -> bool:
        return bool(self.dd or self.twirl_gates or self.twirl_measure or self.trex or self.zne)

    def metadata(self) -> dict:
        """The job metadata IBM's server returns for the techniques (values in effect)."""
        meta: dict = {}
        if self.dd:
            meta["dynamical_decoupling"] = {"enable": True, **self.dd}
        if self.twirl_gates or self.twirl_measure or self.kind == "estimator":
            meta["twirling"] = {
                "enable_gates": self.twirl_gates,
                "enable_measure": self.twirl_measure,
                "num_randomizations": self.num_randomizations,
                "shots_per_randomization": self.shots_per_randomization,
                "interleave_randomizations": True,
                "strategy": self.strategy,
            }
        if self.kind == "estimator":
            meta["resilience"] = {
                "measure_mitigation": self.trex,
                "zne_mitigation": bool(self.zne),
                "pec_mitigation": False,
            }
            if self.zne:
                meta["resilience"]["zne"] = {
                    "noise_factors": list(self.zne["noise_factors"]),
                    "extrapolator": list(self.zne["extrapolators"]),
                    "extrapolated_noise_factors": list(self.zne["extrapolated"]),
                    "amplifier": self.zne["amplifier"],
                }
        return meta


def _get(d: dict, dotted: str, default=None):
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def settings(kind: str, backend: str, ibm: dict) -> Settings:
    """The techniques for a job from IBM's params (``{"options": ..., "resilience_level"?}``).

    ``resilience_level`` sets defaults as IBM's server does (1: TREX with measurement
    twirling; 2: level 1 plus gate twirling and ZNE); options set explicitly win. Unset on an
    estimator, the level is IBM's default 1 on device backends and 0 on ideal ones (no noise:
    nothing to mitigate, and exact ``precision=0`` values stay exact).
    """
    o = ibm.get("options", {})
    device = backends.get_spec(backend).kind == "device"
    s = Settings(kind=kind, schedule=device)
    if kind == "estimator":
        level = ibm.get("resilience_level")
        s.level = int(level) if level is not None else (1 if device else 0)
        s.trex = bool(_get(o, "resilience.measure_mitigation", s.level >= 1))
        zne_on = bool(_get(o, "resilience.zne_mitigation", s.level >= 2))
        s.twirl_measure = bool(_get(o, "twirling.enable_measure", s.level >= 1))
        s.twirl_gates = bool(_get(o, "twirling.enable_gates", s.level >= 2))
        s.trex_randomizations = int(_get(o, "resilience.measure_noise_learning.num_randomizations", 32))
        s.trex_shots = _get(o, "resilience.measure_noise_learning.shots_per_randomization", "auto")
        if zne_on:
            zne = _get(o, "resilience.zne", {}) or {}
            factors = [float(f) for f in zne.get("noise_factors", (1, 3, 5))]
            extrap = zne.get("extrapolator", ("exponential", "linear"))
            extrap = [extrap] if isinstance(extrap, str) else list(extrap)
            s.zne = {
                "noise_factors": factors,
                "extrapolators": extrap,
                "extrapolated": [float(f) for f in zne.get("extrapolated_noise_factors", [0.0, *factors])],
                "amplifier": zne.get("amplifier", "gate_folding"),
            }
    else:
        s.twirl_gates = bool(_get(o, "twirling.enable_gates", False))
        s.twirl_measure = bool(_get(o, "twirling.enable_measure", False))
    s.num_randomizations = _get(o, "twirling.num_randomizations", "auto")
    s.shots_per_randomization = _get(o, "twirling.shots_per_randomization", "auto")
    s.strategy = _get(o, "twirling.strategy", "active")
    if _get(o, "dynamical_decoupling.enable", False):
        dd = _get(o, "dynamical_decoupling", {})
        s.dd = {
            "sequence_type": dd.get("sequence_type", "XX"),
            "extra_slack_distribution": dd.get("extra_slack_distribution", "middle"),
            "scheduling_method": dd.get("scheduling_method", "alap"),
            "skip_reset_qubits": dd.get("skip_reset_qubits", False),
        }
    return s


def randomizations(s: Settings, shots: int) -> tuple[int, int]:
    """(randomizations, shots each) for a PUB of ``shots``, by IBM's "auto" rules; one
    randomization of every shot when nothing is twirled."""
    if not (s.twirl_gates or s.twirl_measure or s.trex):
        return 1, shots
    # lazy: qiskit-ibm-runtime takes ~2 s to import; only twirled jobs need its shot rule
    from qiskit_ibm_runtime.executor.calculate_twirling_shots import calculate_twirling_shots

    num, per = calculate_twirling_shots(shots, s.num_randomizations, s.shots_per_randomization)
    return int(num), int(per)


# ---------------------------------------------------------------------- transformations
def fold_gates(
    circuit: QuantumCircuit,
    factor: float,
    amplifier: str = "gate_folding",
    rng: np.random.Generator | None = None,
) -> QuantumCircuit:
    """Amplify 2-qubit gate noise ``factor``-fold: every 2q gate G becomes G (G^-1 G)^k.

    ``factor = 1 + 2k`` folds every gate k times; a factor between odd integers folds a
    share of the gates once more so the count of 2q gates is ``factor`` times the original
    (rounded): chosen at random (``gate_folding``), first (``_front``) or last (``_back``)
    in circuit order, as IBM documents. A barrier separates the copies so nothing merges them.
    """
    positions = [i for i, inst in enumerate(circuit.data) if inst.operation.name in _TWO_Q]
    n = len(positions)
    base = int((factor - 1) // 2)
    extra = int(round((factor - 1 - 2 * base) / 2 * n))
    if amplifier == "gate_folding_front":
        chosen = set(positions[:extra])
    elif amplifier == "gate_folding_back":
        chosen = set(positions[n - extra :]) if extra else set()
    else:
        rng = rng or np.random.default_rng()
        chosen = set(rng.choice(positions, size=extra, replace=False).tolist()) if extra else set()
    out = circuit.copy_empty_like()
    for i, inst in enumerate(circuit.data):
        out.append(inst)
        if inst.operation.name in _TWO_Q:
            for _ in range(base + (1 if i in chosen else 0)):
                out.barrier(inst.qubits)
                out.append(inst.operation.inverse(), inst.qubits, inst.clbits)
                out.barrier(inst.qubits)
                out.append(inst)
    return out


def twirl_gates(circuit: QuantumCircuit, target, seed: int) -> QuantumCircuit:
    """One Pauli twirl of every 2q gate (Qiskit's ``pauli_twirl_2q_gates``: random Paulis
    before each gate and the ones that undo them after, folded into the device basis)."""
    names = [g for g in _TWO_Q if g in circuit.count_ops()]
    if not names:
        return circuit
    return pauli_twirl_2q_gates(circuit, twirling_gate=names, seed=seed, target=target)


@cache
def _dd_target(backend: str):
    """The device target plus a ``y`` gate timed as ``x``: Qiskit's DD pass only places gates
    its target has, and IBM's basis has no Y; we insert Y and then write it as X·RZ(pi)
    (RZ is virtual: zero duration, no error), which is what a device would play."""
    target = copy.deepcopy(backends.build_target(backend))
    x = target["x"]
    target.add_instruction(
        YGate(),
        {q: InstructionProperties(duration=p.duration, error=p.error) for q, p in x.items() if p is not None},
    )
    return target


_SEQUENCES = {"XX": ("X", "X"), "XpXm": ("X", "X"), "XY4": ("X", "Y", "X", "Y")}


def _durations_known(circuit: QuantumCircuit, target) -> bool:
    """Whether ``target`` gives a duration for every instruction of ``circuit`` (what the
    scheduling passes need)."""
    for inst in circuit.data:
        name = inst.operation.name
        if name in ("delay", "barrier"):
            continue
        qargs = tuple(circuit.find_bit(q).index for q in inst.qubits)
        props = target[name].get(qargs) if name in target else None
        if props is None or props.duration is None:
            return False
    return True


def schedule(circuit: QuantumCircuit, backend: str, dd: dict | None) -> QuantumCircuit:
    """Schedule with the device's durations and fill every idle window.

    Without DD the windows become ``delay``s: Aer's device noise model turns a delay into
    T1/T2 relaxation for its length, so idling costs what it costs on the device. With DD,
    Qiskit's ``PadDynamicalDecoupling`` fills them with the sequence (XpXm is X(+pi) X(-pi):
    the same unitary as XX up to a global phase, so it is simulated as XX).
    """
    if any(getattr(inst.operation, "blocks", ()) for inst in circuit.data):
        return circuit  # Qiskit's scheduling passes do not see inside control flow
    target = backends.build_target(backend)
    if not _durations_known(circuit, target):
        return circuit  # the oldest snapshots (2020) give no measure or reset durations
    method = (dd or {}).get("scheduling_method", "alap")
    analysis = ASAPScheduleAnalysis if method == "asap" else ALAPScheduleAnalysis
    if not dd:
        return _drop_idle_delays(PassManager([analysis(target=target), PadDelay(target=target)]).run(circuit))
    seq = [YGate() if g == "Y" else XGate() for g in _SEQUENCES[dd["sequence_type"]]]
    active = sorted(
        {
            circuit.find_bit(q).index
            for inst in circuit.data
            if inst.operation.name not in ("delay", "barrier")
            for q in inst.qubits
        }
    )
    dd_target = _dd_target(backend) if "Y" in _SEQUENCES[dd["sequence_type"]] else target
    pm = PassManager(
        [
            analysis(target=dd_target),
            PadDynamicalDecoupling(
                target=dd_target,
                dd_sequence=seq,
                qubits=active,
                extra_slack_distribution=dd["extra_slack_distribution"],
                skip_reset_qubits=dd["skip_reset_qubits"],
            ),
        ]
    )
    out = _drop_idle_delays(pm.run(circuit))  # DD only where the circuit acts (see above)
    if "Y" in _SEQUENCES[dd["sequence_type"]]:
        out = _y_as_x_rz(out)
    return out


def _drop_idle_delays(circuit: QuantumCircuit) -> QuantumCircuit:
    """Remove the delays padding put on qubits nothing else touches: they would decay a
    qubit that stays |0> anyway, and they stop Aer dropping idle qubits (on a 127-qubit
    device that doubles the run time for nothing)."""
    used = {
        q for inst in circuit.data if inst.operation.name not in ("delay", "barrier") for q in inst.qubits
    }
    if all(q in used for inst in circuit.data if inst.operation.name == "delay" for q in inst.qubits):
        return circuit
    out = circuit.copy_empty_like()
    for inst in circuit.data:
        if inst.operation.name != "delay" or any(q in used for q in inst.qubits):
            out._append(inst)  # already valid instructions: skip append's checks
    return out


def _y_as_x_rz(circuit: QuantumCircuit) -> QuantumCircuit:
    out = circuit.copy_empty_like()
    for inst in circuit.data:
        if inst.operation.name == "y":
            out.append(XGate(), inst.qubits)
            out.append(RZGate(math.pi), inst.qubits)
        else:
            out.append(inst)
    return out


def dd_gate_count(circuit: QuantumCircuit, original: QuantumCircuit) -> int:
    """How many X gates padding added (what a test or the metadata counts)."""
    return circuit.count_ops().get("x", 0) - original.count_ops().get("x", 0)


def _to_isa(circuit: QuantumCircuit, backend: str) -> QuantumCircuit:
    return PassManager([Optimize1qGatesDecomposition(target=backends.build_target(backend))]).run(circuit)


# ---------------------------------------------------------------------- measurement
def _measured(circuit: QuantumCircuit, basis: str, flips: np.ndarray) -> tuple[QuantumCircuit, list[int]]:
    """``circuit`` rotated into ``basis`` (a Pauli label, qubit 0 rightmost) and measured on
    its non-identity qubits, with an X before each measurement where ``flips`` says."""
    qubits = [q for q in range(circuit.num_qubits) if basis[-1 - q] != "I"]
    out = circuit.copy()
    creg = ClassicalRegister(len(qubits), "mitigation")
    out.add_register(creg)
    for i, q in enumerate(qubits):
        p = basis[-1 - q]
        if p == "X":
            out.h(q)
        elif p == "Y":
            out.sdg(q)
            out.h(q)
        if flips[i]:
            out.x(q)
    for i, q in enumerate(qubits):
        out.measure(q, creg[i])
    return out, qubits


def _bits(counts: dict, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(outcomes as a bool matrix [outcome, bit], their counts) for the ``mitigation`` register
    (the last register, so the leftmost ``width`` bits of Aer's keys)."""
    keys = list(counts)
    mat = np.zeros((len(keys), width), dtype=bool)
    for r, key in enumerate(keys):
        word = key.replace(" ", "")
        reg = word[:width]
        for i in range(width):
            mat[r, i] = reg[width - 1 - i] == "1"
    return mat, np.array([counts[k] for k in keys], dtype=float)


def _parity_mean(mat: np.ndarray, weights: np.ndarray, columns: list[int]) -> float:
    if not columns:
        return 1.0
    parity = np.logical_xor.reduce(mat[:, columns], axis=1)
    return float(np.sum(weights * (1 - 2 * parity)) / weights.sum())


def _groups(paulis: list[str]) -> list[tuple[str, list[str]]]:
    """Qubit-wise commuting groups: (measurement basis, the Pauli labels it gives)."""
    if not paulis:
        return []
    out = []
    for group in PauliList(paulis).group_qubit_wise_commuting():
        labels = group.to_labels()
        basis = "".join(next((lab[i] for lab in labels if lab[i] != "I"), "I") for i in range(len(labels[0])))
        out.append((basis, labels))
    return out


# ---------------------------------------------------------------------- extrapolation
def extrapolate(
    name: str, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, at: np.ndarray, bound: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Fit ``name`` (IBM's extrapolator names) to (x, y +- sigma); values and standard errors
    at ``at``, and whether the fit is trusted (finite, within the observable's bound at 0,
    error not larger than the bound): IBM's "first successful extrapolator" heuristic."""
    sigma = np.where(sigma > 1e-9, sigma, 1e-9)
    try:
        if name == "fallback":
            i = int(np.argmin(x))
            return np.full(at.shape, y[i]), np.full(at.shape, sigma[i]), True
        if name == "linear" or name.startswith("polynomial_degree_"):
            k = 1 if name == "linear" else int(name.rsplit("_", 1)[1])
            return _poly(k, x, y, sigma, at, bound)
        if name == "exponential":
            model = lambda t, a, tau: a * np.exp(-t / tau)  # noqa: E731
            p0 = [y[np.argmin(x)] * 1.1 or 1e-3, float(np.ptp(x) or 1.0) * 2]
            bounds = ([-np.inf, 1e-6], [np.inf, np.inf])
        else:  # double_exponential
            model = lambda t, a, ta, b, tb: a * np.exp(-t / ta) + b * np.exp(-t / tb)  # noqa: E731
            p0 = [y[np.argmin(x)] * 0.6 or 1e-3, 1.0, y[np.argmin(x)] * 0.6 or 1e-3, 10.0]
            bounds = ([-np.inf, 1e-6, -np.inf, 1e-6], [np.inf] * 4)
        # lazy: scipy.optimize is slow to import; only ZNE's exponential fits need it
        from scipy.optimize import curve_fit

        popt, pcov = curve_fit(
            model, x, y, p0=p0, sigma=sigma, absolute_sigma=True, bounds=bounds, maxfev=5000
        )
        values = model(at, *popt)
        eps = 1e-6
        grads = np.array(
            [(model(at, *(popt + eps * np.eye(len(popt))[j])) - values) / eps for j in range(len(popt))]
        )
        var = np.einsum("ia,ij,ja->a", grads, pcov, grads)
        stds = np.sqrt(np.clip(var, 0, None))
        ok = bool(
            np.all(np.isfinite(values))
            and np.all(np.isfinite(stds))
            and abs(model(0.0, *popt)) <= bound * 1.05
            and np.all(stds < 2 * bound + 1e-12)
        )
        return values, stds, ok
    except Exception:  # a fit that does not converge is an unsuccessful extrapolator
        return np.full(at.shape, np.nan), np.full(at.shape, np.nan), False


def _poly(k, x, y, sigma, at, bound):
    a = np.vander(x, k + 1, increasing=True)
    w = 1 / sigma**2
    cov = np.linalg.pinv(a.T @ (a * w[:, None]))
    beta = cov @ (a.T @ (w * y))
    ev = np.vander(at, k + 1, increasing=True)
    values = ev @ beta
    stds = np.sqrt(np.clip(np.einsum("ai,ij,aj->a", ev, cov, ev), 0, None))
    ok = bool(np.all(np.isfinite(values)) and np.all(np.isfinite(stds)) and abs(beta[0]) <= bound * 1.05)
    return values, stds, ok


# ---------------------------------------------------------------------- estimator
@dataclass
class _Run:
    """One circuit to execute and where its outcomes go."""

    circuit: QuantumCircuit
    shots: int
    pub: int
    param: int
    factor: int
    rand: int
    group: int
    flips: np.ndarray
    qubits: list[int]
    labels: list[str]


@dataclass
class Executed:
    """What ran, for the metadata and for tests: counts of the gates the techniques added."""

    circuits: int = 0
    shots: int = 0
    dd_gates: int = 0
    folded_2q_gates: list = field(default_factory=list)  # per noise factor, first circuit
    twirled_circuits: int = 0
    trex_circuits: int = 0
    #: large devices: circuits per simulation route (``wide.route``), e.g. {"stabilizer": 64}
    routes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _seeds(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def _prepare(
    circuit: QuantumCircuit,
    backend: str,
    s: Settings,
    factor: float,
    rng: np.random.Generator,
    twirl_seed: int | None,
) -> QuantumCircuit:
    out = circuit
    if factor != 1:
        out = fold_gates(out, factor, s.zne["amplifier"], rng)
    if s.twirl_gates and twirl_seed is not None:
        out = twirl_gates(out, backends.build_target(backend) if s.schedule else None, twirl_seed)
    return out


def _finish(circuit: QuantumCircuit, backend: str, s: Settings) -> QuantumCircuit:
    if not s.schedule:  # ideal backends: no durations, no idle noise, any gate runs
        return circuit
    return schedule(_to_isa(circuit, backend), backend, s.dd)


def run_estimator(
    backend: str, pubs: list[EstimatorPub], s: Settings, seed: int | None
) -> tuple[list[PubResult], Executed]:
    """Estimate every PUB by sampling, with the techniques of ``s``; see the module doc."""
    rng = _seeds(seed)
    executed = Executed()
    runs: list[_Run] = []
    factors = s.zne["noise_factors"] if s.zne else [1.0]
    plans = []
    for p, pub in enumerate(pubs):
        shots = max(1, math.ceil(1 / pub.precision**2))
        nrand, per = randomizations(s, shots)
        params = pub.parameter_values
        pshape = params.shape
        arr = params.as_array(pub.circuit.parameters) if pub.circuit.num_parameters else None
        nparams = int(np.prod(pshape, dtype=int)) if pshape else 1
        labels = sorted({lab for obs in pub.observables.ravel() for lab in obs if set(lab) != {"I"}})
        groups = _groups(labels)
        plans.append((pub, nrand, per, pshape, nparams, groups))
        for pi in range(nparams):
            bound = pub.circuit
            if arr is not None:
                values = arr.reshape(nparams, -1)[pi]
                bound = pub.circuit.assign_parameters(values)
            bound = bound.remove_final_measurements(inplace=False) if bound.num_clbits else bound
            for fi, factor in enumerate(factors):
                for r in range(nrand):
                    twirl_seed = int(rng.integers(2**31)) if s.twirl_gates else None
                    body = _prepare(bound, backend, s, factor, rng, twirl_seed)
                    if r == 0 and pi == 0 and p == 0:
                        executed.folded_2q_gates.append(sum(body.count_ops().get(g, 0) for g in _TWO_Q))
                    for gi, (basis, glabels) in enumerate(groups):
                        width = sum(c != "I" for c in basis)
                        flips = (
                            rng.integers(0, 2, width).astype(bool)
                            if (s.twirl_measure or s.trex)
                            else np.zeros(width, bool)
                        )
                        measured, qubits = _measured(body, basis, flips)
                        final = _finish(measured, backend, s)
                        if s.dd and not executed.dd_gates:
                            executed.dd_gates = dd_gate_count(final, _finish_no_dd(measured, backend, s))
                        runs.append(_Run(final, per, p, pi, fi, r, gi, flips, qubits, glabels))
    cal = _trex_calibration(backend, s, runs, rng, plans) if s.trex else None
    circuits = [run.circuit for run in runs] + (cal[0] if cal else [])
    shots = [run.shots for run in runs] + (cal[1] if cal else [])
    counts = _execute(backend, circuits, shots, seed, routes=executed.routes)
    executed.circuits = len(circuits)
    executed.shots = int(sum(shots))
    executed.twirled_circuits = sum(1 for _ in runs) if (s.twirl_gates or s.twirl_measure) else 0
    fidelity = _trex_fidelities(cal, counts[len(runs) :]) if cal else None
    executed.trex_circuits = len(cal[0]) if cal else 0
    # per (pub, param, factor, rand): Pauli label -> estimate
    estimates: dict = {}
    for run, cnt in zip(runs, counts[: len(runs)]):
        mat, weights = _bits(cnt, len(run.qubits))
        mat ^= run.flips[None, :]
        bucket = estimates.setdefault((run.pub, run.param, run.factor, run.rand), {})
        for lab in run.labels:
            cols = [i for i, q in enumerate(run.qubits) if lab[-1 - q] != "I"]
            value = _parity_mean(mat, weights, cols)
            if fidelity is not None:
                support = frozenset(run.qubits[c] for c in cols)
                value /= fidelity(support)
            bucket[lab] = (value, float(weights.sum()))
    results = [_estimator_pub_result(p, plan, s, estimates, fidelity) for p, plan in enumerate(plans)]
    return results, executed


def _finish_no_dd(circuit, backend, s):
    plain = Settings(kind=s.kind, schedule=s.schedule)
    return _finish(circuit, backend, plain)


def _execute(
    backend: str,
    circuits: list,
    shots: list[int],
    seed: int | None,
    memory: bool = False,
    routes: dict | None = None,
) -> list:
    """Run every circuit on the backend's simulator in one call per distinct shot count
    (Aer seeds circuit i of a call with seed + i: the same numbers twice); on a large device
    each circuit runs as ``wide.route`` says (density matrix when narrow, the Pauli-twirled
    noise model when wide). Counts, or with
    ``memory`` each shot's bitstring."""
    if not circuits:
        return []
    out: list = [None] * len(circuits)
    by_shots: dict[tuple[int, str], list[int]] = {}
    for i, n in enumerate(shots):
        by_shots.setdefault((int(n), wide.route(backend, circuits[i])), []).append(i)
    for (n, how), idx in sorted(by_shots.items()):
        if routes is not None and how != "exact":
            routes[how] = routes.get(how, 0) + len(idx)
        kwargs: dict = {"shots": n, "memory": memory}
        if seed is not None:
            kwargs["seed_simulator"] = int(seed) + n
        sim = backends.simulator(backend)
        if how == "density_matrix":  # narrow, on a large device (tasks/wide.py)
            kwargs["method"] = how
        elif how != "exact":  # wide, on a large device: the Pauli-twirled noise model
            sim, kwargs["method"] = wide.simulator(backend), how
        result = sim.run([circuits[i] for i in idx], **kwargs).result()
        for j, i in enumerate(idx):
            if not memory:
                out[i] = result.get_counts(j)
            else:
                out[i] = result.get_memory(j) if circuits[i].num_clbits else [""] * n
    return out


def _trex_calibration(backend, s, runs, rng, plans):
    """TREX's learning circuits: |0...0> with random X flips on every measured qubit, measured
    (then flipped back): each parity's mean is the twirled readout fidelity of that set of
    qubits, the factor by which readout shrank the observable's value."""
    qubits = sorted({q for run in runs for q in run.qubits})
    if not qubits:
        return None
    n = plans[0][0].circuit.num_qubits if plans else 0
    per = s.trex_shots
    if per == "auto":
        per = max(64, max((plan[2] for plan in plans), default=64))
    circuits, shots, flips = [], [], []
    for _ in range(s.trex_randomizations):
        f = rng.integers(0, 2, len(qubits)).astype(bool)
        qc = QuantumCircuit(n)
        creg = ClassicalRegister(len(qubits), "mitigation")
        qc.add_register(creg)
        for i, q in enumerate(qubits):
            if f[i]:
                qc.x(q)
        for i, q in enumerate(qubits):
            qc.measure(q, creg[i])
        circuits.append(qc if not s.schedule else schedule(qc, backend, None))
        shots.append(int(per))
        flips.append(f)
    return circuits, shots, flips, qubits


def _trex_fidelities(cal, counts):
    circuits, _, flips, qubits = cal
    data = []
    for f, cnt in zip(flips, counts):
        mat, weights = _bits(cnt, len(qubits))
        data.append((mat ^ f[None, :], weights))
    index = {q: i for i, q in enumerate(qubits)}
    cache: dict = {}

    def fidelity(support: frozenset) -> float:
        if support not in cache:
            cols = [index[q] for q in sorted(support)]
            num = sum(_parity_mean(m, w, cols) * w.sum() for m, w in data)
            den = sum(w.sum() for _, w in data)
            cache[support] = max(num / den, 1e-3)  # a dead qubit must not divide by ~0
        return cache[support]

    return fidelity


def _estimator_pub_result(p, plan, s: Settings, estimates, fidelity) -> PubResult:
    pub, nrand, per, pshape, nparams, groups = plan
    factors = s.zne["noise_factors"] if s.zne else [1.0]
    obs = pub.observables
    shape = pub.shape
    param_index = np.arange(nparams).reshape(pshape) if pshape else np.array(0)
    bc_param, bc_obs = (
        np.broadcast_arrays(param_index, obs) if obs.shape else (np.broadcast_to(param_index, shape), None)
    )
    nf = len(factors)
    evs_nf = np.zeros((*shape, nf))
    stds_nf = np.zeros((*shape, nf))
    ens_nf = np.zeros((*shape, nf))
    for index in np.ndindex(*shape):
        pi = int(bc_param[index])
        observable = bc_obs[index] if bc_obs is not None else obs[()]
        for fi in range(nf):
            per_rand = []
            ens_var = 0.0
            for r in range(nrand):
                bucket = estimates.get((p, pi, fi, r), {})
                total = 0.0
                for lab, coeff in observable.items():
                    if set(lab) == {"I"}:
                        total += coeff
                        continue
                    value, n = bucket[lab]
                    total += coeff * value
                    if r == 0:
                        n_all = n * nrand
                        ens_var += coeff**2 * max(1 - min(value**2, 1), 0) / n_all
                per_rand.append(total)
            per_rand = np.real(np.array(per_rand))
            evs_nf[(*index, fi)] = per_rand.mean()
            spread = per_rand.std(ddof=1) / math.sqrt(nrand) if nrand > 1 else 0.0
            # shot noise of the (TREX-rescaled) values; the spread over randomizations, when
            # there are several, also holds what twirling turned into noise
            ens = math.sqrt(ens_var)
            ens_nf[(*index, fi)] = ens
            stds_nf[(*index, fi)] = max(spread, ens) if nrand > 1 else ens
    meta = {
        "shots": nrand * per,
        "target_precision": float(pub.precision),
        "circuit_metadata": pub.circuit.metadata or {},
        "num_randomizations": nrand,
        "resilience": {},
    }
    if not s.zne:
        evs, stds, ens = evs_nf[..., 0], stds_nf[..., 0], ens_nf[..., 0]
        return PubResult(DataBin(evs=evs, stds=stds, ensemble_standard_error=ens, shape=shape), metadata=meta)
    x = np.array(factors, dtype=float)
    at = np.array(s.zne["extrapolated"], dtype=float)
    names = s.zne["extrapolators"]
    evs_ex = np.zeros((*shape, len(names), len(at)))
    stds_ex = np.zeros((*shape, len(names), len(at)))
    evs = np.zeros(shape)
    stds = np.zeros(shape)
    chosen = np.empty(shape, dtype=object)
    zero = np.array([0.0])
    for index in np.ndindex(*shape):
        observable = bc_obs[index] if bc_obs is not None else obs[()]
        bound = float(sum(abs(c) for c in observable.values())) or 1.0
        y, sig = evs_nf[index], stds_nf[index]
        picked = None
        for k, name in enumerate(names):
            vals, errs, ok = extrapolate(name, x, y, sig, at, bound)
            evs_ex[(*index, k)] = vals
            stds_ex[(*index, k)] = errs
            if ok and picked is None:
                v0, e0, _ = extrapolate(name, x, y, sig, zero, bound)
                picked = (name, float(v0[0]), float(e0[0]))
        if picked is None:  # nothing succeeded: the least-noisy data, as IBM's fallback
            i = int(np.argmin(x))
            picked = ("fallback", float(y[i]), float(sig[i]))
        chosen[index], evs[index], stds[index] = picked
    meta["resilience"] = {"zne": {"extrapolator": chosen if shape else chosen[()]}}
    data = DataBin(
        evs=evs,
        stds=stds,
        ensemble_standard_error=stds.copy(),
        evs_extrapolated=evs_ex,
        stds_extrapolated=stds_ex,
        evs_noise_factors=evs_nf,
        stds_noise_factors=stds_nf,
        ensemble_stds_noise_factors=ens_nf,
        shape=shape,
    )
    return PubResult(data, metadata=meta)


# ---------------------------------------------------------------------- sampler
def run_sampler(
    backend: str, pubs: list[SamplerPub], s: Settings, seed: int | None
) -> tuple[list[PubResult], Executed]:
    """Sample every PUB with DD and/or twirling: each randomization runs its share of the
    shots; measured bits are flipped back (measurement twirling) and the shots concatenated
    in randomization order, so ``data.<creg>`` has exactly the PUB's shots."""
    rng = _seeds(seed)
    executed = Executed()
    runs = []  # (pub, param, rand, circuit, shots, flips per clbit index)
    plans = []
    for p, pub in enumerate(pubs):
        twirled = s.twirl_gates or s.twirl_measure
        # the PUB's shots are always obeyed (IBM): more randomizations where both are fixed
        nrand, per = (
            sampler_randomizations(s.num_randomizations, s.shots_per_randomization, pub.shots)
            if twirled
            else (1, pub.shots)
        )
        params = pub.parameter_values
        pshape = params.shape
        nparams = int(np.prod(pshape, dtype=int)) if pshape else 1
        arr = params.as_array(pub.circuit.parameters) if pub.circuit.num_parameters else None
        plans.append((pub, nrand, per, pshape, nparams))
        for pi in range(nparams):
            bound = pub.circuit
            if arr is not None:
                bound = pub.circuit.assign_parameters(arr.reshape(nparams, -1)[pi])
            for r in range(nrand):
                body = bound
                if s.twirl_gates:
                    body = twirl_gates(
                        body, backends.build_target(backend) if s.schedule else None, int(rng.integers(2**31))
                    )
                flips = np.zeros(bound.num_clbits, dtype=bool)
                if s.twirl_measure:
                    body, flips = _twirl_measures(body, rng)
                final = _finish(body, backend, s)
                if s.dd and not executed.dd_gates:
                    executed.dd_gates = dd_gate_count(final, _finish_no_dd(body, backend, s))
                runs.append((p, pi, r, final, per, flips))
    counts_mem = _execute(
        backend, [r[3] for r in runs], [r[4] for r in runs], seed, memory=True, routes=executed.routes
    )
    executed.circuits = len(runs)
    executed.shots = int(sum(r[4] for r in runs))
    executed.twirled_circuits = len(runs) if (s.twirl_gates or s.twirl_measure) else 0
    results = []
    k = 0
    for pub, nrand, _per, pshape, nparams in plans:  # each PUB's own shape
        circuit = pub.circuit
        regs = {}
        for creg in circuit.cregs:
            regs[creg.name] = np.zeros((nparams, pub.shots, creg.size), dtype=bool)
        for pi in range(nparams):
            rows = []
            for _ in range(nrand):
                _, _, _, _, _, flips = runs[k]
                mem = counts_mem[k]
                k += 1
                bits = np.array(
                    [[c == "1" for c in word.replace(" ", "")[::-1]] for word in mem], dtype=bool
                ).reshape(len(mem), circuit.num_clbits)
                rows.append(bits ^ flips[None, :])
            allbits = np.concatenate(rows)[: pub.shots]
            for creg in circuit.cregs:
                cols = [circuit.find_bit(b).index for b in creg]
                regs[creg.name][pi] = allbits[:, cols]
        data = {}
        for creg in circuit.cregs:
            arr = regs[creg.name].reshape((*pshape, pub.shots, creg.size))
            data[creg.name] = BitArray.from_bool_array(arr, order="little")
        meta = {"shots": pub.shots, "circuit_metadata": circuit.metadata or {}, "num_randomizations": nrand}
        results.append(PubResult(DataBin(**data, shape=pshape), metadata=meta))
    return results, executed


def _twirl_measures(circuit: QuantumCircuit, rng) -> tuple[QuantumCircuit, np.ndarray]:
    """An X before each measurement that is not inside control flow, at random; the bits to
    flip back (by classical bit index)."""
    flips = np.zeros(circuit.num_clbits, dtype=bool)
    if any(getattr(inst.operation, "blocks", ()) for inst in circuit.data):
        return circuit, flips  # bits may feed conditions: IBM leaves those unflipped too
    out = circuit.copy_empty_like()
    for inst in circuit.data:
        if inst.operation.name == "measure":
            flip = bool(rng.integers(2))
            if flip:
                out.x(inst.qubits[0])
            flips[circuit.find_bit(inst.clbits[0]).index] = flip  # the last write wins
        out.append(inst)
    return out, flips
