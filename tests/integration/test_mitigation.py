"""Error suppression and mitigation (issue 11): each technique changes what runs, mitigated
values are unbiased where there is no noise, closer to ideal where there is, the metadata is
IBM's, seeded jobs repeat, and bad values are refused before anything is queued.

The transformations (folding, DD padding, twirling, extrapolation) are pure functions and are
checked directly; one real job per technique checks they reach the worker. Shot counts and
randomizations are small: CI runs this on 2 shared cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import Operator, SparsePauliOp
from qiskit.transpiler import generate_preset_pass_manager

from session_broker import EstimatorV2, OptionNotSupportedError, SamplerV2, backends
from tasks import mitigation as m
from tests.conftest import make_cluster

QASM = "ibmq_qasm_simulator"
DEVICE = "ibm_manila"


@pytest.fixture(scope="module")
def c(stack, redis_url):
    cluster = make_cluster(stack, redis_url)
    for backend in (QASM, DEVICE):
        cluster.start_worker(backend, wait=False)
    for node in list(cluster.workers):
        cluster.wait_registered(node, timeout=180)
    return cluster


def ghz(n: int = 5, measure: bool = False) -> QuantumCircuit:
    qc = QuantumCircuit(n)
    qc.h(0)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    if measure:
        qc.measure_all()
    return qc


def isa(circuit: QuantumCircuit, backend: str = DEVICE) -> QuantumCircuit:
    return generate_preset_pass_manager(1, target=backends.build_target(backend), seed_transpiler=1).run(
        circuit
    )


def correlators(n: int = 5) -> SparsePauliOp:
    """Mean of Z_i Z_i+1: 1 on a GHZ state; readout error is what lowers it."""
    return SparsePauliOp.from_sparse_list([("ZZ", [k, k + 1], 1 / (n - 1)) for k in range(n - 1)], n)


def device_pub(precision: float = 1 / 32):
    circuit = isa(ghz())
    return (circuit, correlators().apply_layout(circuit.layout), None, precision)


# --------------------------------------------------------------------------- transformations
def test_folding_multiplies_the_two_qubit_gates_and_keeps_the_unitary():
    circuit = ghz(5)  # 4 cx
    for factor, amplifier, expected in [
        (1, "gate_folding", 4),
        (3, "gate_folding", 12),
        (5, "gate_folding_front", 20),
        (2, "gate_folding", 8),
        (2, "gate_folding_front", 8),
        (2, "gate_folding_back", 8),
        (1.5, "gate_folding", 6),
    ]:
        folded = m.fold_gates(circuit, factor, amplifier, np.random.default_rng(0))
        assert folded.count_ops()["cx"] == expected, (factor, amplifier)
        assert Operator(folded).equiv(Operator(circuit))
    front = m.fold_gates(circuit, 2, "gate_folding_front")
    back = m.fold_gates(circuit, 2, "gate_folding_back")
    assert front.data[2].operation.name == "barrier" and back.data[2].operation.name == "cx"


def test_dd_fills_idle_windows_with_the_sequence_on_device_durations():
    circuit = isa(ghz(5, measure=True))
    plain = m.schedule(circuit, DEVICE, None)
    assert plain.count_ops().get("delay", 0) > 0
    counts = {}
    for seq in ("XX", "XpXm", "XY4"):
        dd = {
            "sequence_type": seq,
            "extra_slack_distribution": "middle",
            "scheduling_method": "alap",
            "skip_reset_qubits": False,
        }
        padded = m.schedule(circuit, DEVICE, dd)
        counts[seq] = m.dd_gate_count(padded, plain)
        assert "y" not in padded.count_ops()  # Y is played as X and a virtual RZ
        backends.check_circuit(DEVICE, padded, require_isa=True)
        assert Operator(padded.remove_final_measurements(inplace=False)).equiv(
            Operator(circuit.remove_final_measurements(inplace=False))
        )
    assert counts["XX"] > 0 and counts["XX"] % 2 == 0 and counts["XY4"] % 4 == 0
    asap = m.schedule(
        circuit,
        DEVICE,
        {
            "sequence_type": "XX",
            "extra_slack_distribution": "edges",
            "scheduling_method": "asap",
            "skip_reset_qubits": True,
        },
    )
    assert m.dd_gate_count(asap, plain) > 0


def test_gate_twirling_draws_differ_and_implement_the_same_unitary():
    circuit = isa(ghz(3))
    target = backends.build_target(DEVICE)
    draws = [m.twirl_gates(circuit, target, seed) for seed in range(4)]
    assert len({str(d.data) for d in draws}) > 1
    for d in draws:
        assert Operator(d).equiv(Operator(circuit))
        backends.check_circuit(DEVICE, d, require_isa=True)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("linear", lambda x: 0.9 - 0.1 * x),
        ("polynomial_degree_2", lambda x: 0.8 - 0.1 * x + 0.01 * x**2),
        ("exponential", lambda x: 0.9 * np.exp(-x / 4)),
        ("double_exponential", lambda x: 0.5 * np.exp(-x / 2) + 0.4 * np.exp(-x / 20)),
    ],
)
def test_extrapolators_recover_the_zero_noise_value_of_their_model(name, fn):
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    values, stds, ok = m.extrapolate(name, x, fn(x), np.full(5, 1e-4), np.array([0.0, 1.0]), 1.0)
    assert ok
    assert values[0] == pytest.approx(fn(0.0), abs=2e-3)
    assert np.all(stds >= 0)


def test_an_extrapolation_outside_the_observables_range_is_not_trusted():
    x = np.array([1.0, 3.0, 5.0])
    _, _, ok = m.extrapolate(
        "linear", x, np.array([0.5, 0.0, -0.5]), np.full(3, 0.01), np.array([0.0]), 0.6
    )  # 0.75 at zero: beyond |O| <= 0.6
    assert not ok
    values, _, ok = m.extrapolate(
        "fallback", x, np.array([0.5, 0.0, -0.5]), np.full(3, 0.01), np.array([0.0]), 0.6
    )
    assert ok and values[0] == 0.5


def test_resilience_levels_set_ibms_defaults_and_explicit_options_win():
    s0 = m.settings("estimator", DEVICE, {"options": {}, "resilience_level": 0})
    assert not s0.any and s0.schedule
    s1 = m.settings("estimator", DEVICE, {"options": {}, "resilience_level": 1})
    assert s1.trex and s1.twirl_measure and not s1.twirl_gates and not s1.zne
    s2 = m.settings("estimator", DEVICE, {"options": {}, "resilience_level": 2})
    assert s2.trex and s2.twirl_gates and s2.zne["noise_factors"] == [1, 3, 5]
    assert s2.zne["extrapolators"] == ["exponential", "linear"]
    unset = m.settings("estimator", DEVICE, {"options": {}})
    assert unset.level == 1 and unset.trex  # IBM's default, on devices
    assert m.settings("estimator", QASM, {"options": {}}).level == 0
    off = m.settings(
        "estimator", DEVICE, {"options": {"resilience": {"measure_mitigation": False}}, "resilience_level": 1}
    )
    assert not off.trex and off.twirl_measure
    assert m.randomizations(s1, 4096) == (32, 128) and m.randomizations(s0, 100) == (1, 100)
    s1.num_randomizations = 4
    assert m.randomizations(s1, 100) == (4, 25)


# --------------------------------------------------------------------------- real jobs
def test_level_1_removes_most_of_the_readout_error_and_says_so(c):
    raw = (
        EstimatorV2(mode=DEVICE, options={"resilience_level": 0, "seed_estimator": 3})
        .run([device_pub()])
        .result(timeout=300)
    )
    est = EstimatorV2(mode=DEVICE, options={"seed_estimator": 3})  # unset: IBM's level 1
    result = est.run([device_pub()]).result(timeout=300)
    raw_err = abs(float(raw[0].data.evs) - 1)
    err = abs(float(result[0].data.evs) - 1)
    assert raw_err > 0.05 and err < 0.5 * raw_err, (raw_err, err)
    meta = result.metadata
    assert meta["resilience"] == {
        "measure_mitigation": True,
        "zne_mitigation": False,
        "pec_mitigation": False,
    }
    assert meta["twirling"]["enable_measure"] is True and meta["twirling"]["enable_gates"] is False
    assert meta["session_broker"]["resilience_level"] == 1
    assert meta["session_broker"]["executed"]["trex_circuits"] == 32  # IBM default
    # 1024 shots: max(64, 1024/32) = 64 a randomization, so 16 randomizations (IBM "auto")
    assert result[0].metadata["num_randomizations"] == 16 and result[0].metadata["shots"] == 1024
    assert "resilience" not in raw.metadata or not raw.metadata["resilience"]["measure_mitigation"]
    again = est.run([device_pub()]).result(timeout=300)  # seeded: the same numbers
    assert float(again[0].data.evs) == float(result[0].data.evs)


def test_zne_folds_gates_extrapolates_and_returns_ibms_fields(c):
    options = {
        "resilience_level": 2,
        "seed_estimator": 5,
        "resilience": {"zne": {"noise_factors": [1, 3], "extrapolator": ["exponential", "linear"]}},
        "twirling": {"num_randomizations": 4},
    }
    circuit, obs, _, _ = device_pub()
    result = (
        EstimatorV2(mode=DEVICE, options=options)
        .run([(circuit, [obs, obs * 0.5], None, 1 / 16)])
        .result(timeout=300)
    )
    data = result[0].data
    assert data.evs.shape == (2,)
    assert data.evs_extrapolated.shape == (2, 2, 3)  # 2 extrapolators x [0, 1, 3]
    assert data.evs_noise_factors.shape == (2, 2) and data.stds_noise_factors.shape == (2, 2)
    assert data.ensemble_stds_noise_factors.shape == (2, 2)
    assert data.evs_noise_factors[0, 0] > data.evs_noise_factors[0, 1]  # more noise, lower
    executed = result.metadata["session_broker"]["executed"]
    assert executed["folded_2q_gates"] == [4, 12]  # GHZ-5: 4 cx, then 3x
    zne = result.metadata["resilience"]["zne"]
    assert result.metadata["resilience"]["zne_mitigation"] is True
    assert zne["noise_factors"] == [1, 3] and zne["extrapolated_noise_factors"] == [0, 1, 3]
    assert set(result[0].metadata["resilience"]["zne"]["extrapolator"]) <= {
        "exponential",
        "linear",
        "fallback",
    }
    assert result.metadata["twirling"]["enable_gates"] is True


@pytest.mark.parametrize("kind", ["sampler", "estimator"])
def test_dynamical_decoupling_runs_on_the_device(c, kind):
    options = {
        "dynamical_decoupling": {"enable": True, "sequence_type": "XY4"},
        "simulator": {"seed_simulator": 2},
    }
    if kind == "sampler":
        result = (
            SamplerV2(mode=DEVICE, options=options).run([isa(ghz(5, True))], shots=200).result(timeout=300)
        )
        assert result[0].data.meas.num_shots == 200
    else:
        options["resilience_level"] = 0
        result = EstimatorV2(mode=DEVICE, options=options).run([device_pub()]).result(timeout=300)
    assert result.metadata["dynamical_decoupling"]["sequence_type"] == "XY4"
    dd = result.metadata["session_broker"]["executed"]["dd_gates"]
    assert dd > 0 and dd % 4 == 0


def test_sampler_twirling_returns_the_pubs_shots_unflipped_and_repeats(c):
    options = {
        "twirling": {"enable_gates": True, "enable_measure": True, "num_randomizations": 5},
        "simulator": {"seed_simulator": 11},
    }
    sampler = SamplerV2(mode=QASM, options=options)
    result = sampler.run([ghz(4, True)], shots=103).result(timeout=120)
    counts = result[0].data.meas.get_counts()
    assert set(counts) == {"0000", "1111"} and sum(counts.values()) == 103  # un-flipped
    assert result[0].metadata["num_randomizations"] == 5
    assert result.metadata["twirling"]["enable_measure"] is True
    assert result.metadata["session_broker"]["executed"]["twirled_circuits"] == 5
    assert sampler.run([ghz(4, True)], shots=103).result(timeout=120)[0].data.meas.get_counts() == counts
    device = SamplerV2(mode=DEVICE, options=options).run([isa(ghz(3, True))], shots=64).result(timeout=300)
    assert device[0].data.meas.num_shots == 64


def test_sampler_twirling_shots_follow_ibms_precedence(c):
    """IBM's rule: shots in a PUB or in run() are always obeyed; otherwise, with both
    num_randomizations and shots_per_randomization integers, their product takes precedence
    over default_shots. Issue 20: 4 x 100 without shots ended in ERROR on the worker
    ("could not broadcast input array from shape (400,3) into shape (4096,3)")."""
    twirl = {"enable_gates": True, "num_randomizations": 4, "shots_per_randomization": 100}
    circuit = ghz(3, True)

    def sampler(**options):
        return SamplerV2(mode=QASM, options={**options, "simulator": {"seed_simulator": 3}})

    jobs = {  # name: (job, shots, randomizations)
        "product": (sampler(twirling=twirl).run([circuit]), 400, 4),
        "product over default_shots": (sampler(twirling=twirl, default_shots=50).run([circuit]), 400, 4),
        "run(shots=) beyond the product": (sampler(twirling=twirl).run([circuit], shots=1000), 1000, 10),
        "PUB shots within the product": (sampler(twirling=twirl).run([(circuit, None, 300)]), 300, 4),
        "one integer: default_shots": (
            sampler(twirling={"enable_gates": True, "num_randomizations": 4}, default_shots=200).run(
                [circuit]
            ),
            200,
            4,
        ),
        "auto": (sampler(twirling={"enable_measure": True}, default_shots=256).run([circuit]), 256, 4),
    }
    for name, (job, shots, nrand) in jobs.items():
        result = job.result(timeout=180)
        counts = result[0].data.meas.get_counts()
        assert result[0].data.meas.num_shots == shots == sum(counts.values()), (name, counts)
        assert set(counts) <= {"000", "111"}, (name, counts)
        assert result[0].metadata["num_randomizations"] == nrand, name


@pytest.mark.parametrize(
    "options",
    [
        {"resilience_level": 1},
        {
            "resilience_level": 2,
            "resilience": {"zne": {"noise_factors": [1, 3]}},
            "twirling": {"num_randomizations": 4},
        },
        {"twirling": {"enable_gates": True, "num_randomizations": 3}},
    ],
)
def test_mitigated_values_are_unbiased_without_noise(c, options):
    qc = QuantumCircuit(3)
    qc.ry(0.7, 0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    obs = SparsePauliOp.from_list([("ZZI", 0.5), ("IXI", 0.3), ("ZII", 0.2)])
    from qiskit.quantum_info import Statevector

    ideal = Statevector(qc).expectation_value(obs).real
    result = (
        EstimatorV2(mode=QASM, options={**options, "seed_estimator": 1})
        .run([(qc, obs)], precision=0.05)
        .result(timeout=180)
    )
    ev, std = float(result[0].data.evs), float(result[0].data.stds)
    assert 0 < std < 0.2
    assert abs(ev - ideal) < 4 * std + 1e-9, (ev, ideal, std)


def test_precision_zero_on_a_device_is_exact_and_says_mitigation_did_not_run(c):
    circuit, obs, _, _ = device_pub()
    result = EstimatorV2(mode=DEVICE).run([(circuit, obs)], precision=0).result(timeout=300)
    again = EstimatorV2(mode=DEVICE).run([(circuit, obs)], precision=0).result(timeout=300)
    assert float(result[0].data.evs) == float(again[0].data.evs) < 0.99  # gate noise, no shots
    assert any("precision=0" in n for n in result.metadata["session_broker"]["no_effect"])


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    "options, match",
    [
        ({"dynamical_decoupling": {"sequence_type": "YY"}}, "sequence_type"),
        ({"dynamical_decoupling": {"extra_slack_distribution": "left"}}, "extra_slack_distribution"),
        ({"dynamical_decoupling": {"scheduling_method": "now"}}, "scheduling_method"),
        ({"dynamical_decoupling": {"enable": "maybe"}}, "enable"),
        ({"twirling": {"num_randomizations": 0}}, "num_randomizations"),
        ({"twirling": {"shots_per_randomization": -1}}, "shots_per_randomization"),
        ({"twirling": {"strategy": "some"}}, "strategy"),
        ({"resilience_level": 3}, "resilience_level"),
        ({"resilience": {"zne": {"noise_factors": [0.5, 1]}}}, "noise_factors"),
        ({"resilience": {"zne": {"extrapolator": "cubic"}}}, "extrapolator"),
        (
            {"resilience": {"zne": {"noise_factors": [1, 3], "extrapolator": "double_exponential"}}},
            "double_exponential requires",
        ),
        ({"resilience": {"zne": {"amplifier": "louder"}}}, "amplifier"),
        ({"resilience": {"measure_noise_learning": {"num_randomizations": 0}}}, "num_randomizations"),
    ],
)
def test_bad_values_are_ibms_validation_errors(options, match):
    with pytest.raises(ValueError, match=match):
        EstimatorV2(mode=DEVICE, options=options)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"resilience": {"pec_mitigation": True}}, "resilience.pec_mitigation"),
        ({"resilience": {"zne_mitigation": True, "zne": {"amplifier": "pea"}}}, "amplifier='pea'"),
        (
            {"resilience": {"zne_mitigation": True, "layer_noise_learning": {"max_layers_to_learn": 2}}},
            "layer_noise_learning",
        ),
        ({"twirling": {"enable_gates": True, "strategy": "all"}}, "twirling.strategy='all'"),
        ({"twirling": {"enable_measure": True, "num_randomizations": 10**6}}, "twirling.num_randomizations"),
        (
            {
                "resilience": {
                    "measure_mitigation": True,
                    "measure_noise_learning": {"num_randomizations": 5000},
                }
            },
            "measure_noise_learning.num_randomizations",
        ),
        (
            {"resilience": {"zne_mitigation": True, "zne": {"noise_factors": [1, float("inf")]}}},
            "noise_factors",
        ),
        ({"resilience": {"zne_mitigation": True, "zne": {"noise_factors": [1, 1001]}}}, "noise_factors"),
        (
            {
                "resilience": {
                    "zne_mitigation": True,
                    "zne": {"extrapolated_noise_factors": [0, float("nan")]},
                }
            },
            "extrapolated_noise_factors",
        ),
    ],
)
def test_what_cannot_be_done_is_refused_by_name(c, options, name):
    est = EstimatorV2(mode=DEVICE, options=options)
    before = c.store.redis.zcard(c.store.keys.jobs)
    with pytest.raises(OptionNotSupportedError, match=name.replace(".", r"\.").replace("(", r"\(")) as info:
        est.run([device_pub()])
    assert "supported" in str(info.value) or "must be" in str(info.value) or "more than" in str(info.value)
    assert c.store.redis.zcard(c.store.keys.jobs) == before
