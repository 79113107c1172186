"""``options.plan_memo`` (issue 13): the plan of IBM options, memoised on a snapshot of their
values, must equal a fresh ``plan`` after any change to the options, and hand out copies.
"""

from __future__ import annotations

import json

import pytest

from session_broker import options as opts
from session_broker.errors import OptionNotSupportedError


def _plans(kind, options):
    return opts.plan(
        "sampler" if kind == "sampler" else "estimator", "aer_simulator", options
    ), opts.plan_memo(kind, "aer_simulator", options)


@pytest.mark.parametrize("kind", ["sampler", "estimator"])
def test_plan_memo_follows_every_kind_of_change(kind):
    options = opts.SamplerOptions() if kind == "sampler" else opts.EstimatorOptions()
    changes = [
        lambda o: setattr(o, "default_shots", 100),
        lambda o: setattr(o, "default_shots", 200),  # same field, new value
        lambda o: setattr(o.twirling, "enable_gates", True),  # nested group
        lambda o: setattr(o.environment, "job_tags", ["a"]),
        lambda o: o.environment.job_tags.append("b"),  # a list changed in place
        lambda o: o.update(max_execution_time=30),
        lambda o: setattr(o.simulator, "seed_simulator", 7),
        lambda o: setattr(o.twirling, "enable_gates", False),
    ]
    seen = set()
    for change in changes:
        change(options)
        fresh, memo = _plans(kind, options)
        assert memo == fresh
        seen.add(json.dumps([memo.options, memo.runtime], sort_keys=True))
    assert len(seen) == len(changes)  # every change reached the plan


def test_plan_memo_hands_out_copies():
    options = opts.SamplerOptions(default_shots=10)
    options.environment.job_tags = ["x"]
    first = opts.plan_memo("sampler", "aer_simulator", options)
    first.options["options"]["default_shots"] = 999
    first.runtime["job_tags"].append("y")
    first.no_effect.append("z")
    again = opts.plan_memo("sampler", "aer_simulator", options)
    assert again == opts.plan("sampler", "aer_simulator", options)
    assert again.options["options"]["default_shots"] == 10 and again.runtime["job_tags"] == ["x"]


def test_plan_memo_refuses_every_time_and_keys_on_backend():
    options = opts.EstimatorOptions()
    options.resilience.pec_mitigation = True
    for _ in range(2):
        with pytest.raises(OptionNotSupportedError, match="pec_mitigation"):
            opts.plan_memo("estimator", "aer_simulator", options)
    options.resilience.pec_mitigation = False
    options.dynamical_decoupling.enable = True  # no effect on ideal backends, honoured on devices
    ideal = opts.plan_memo("estimator", "aer_simulator", options)
    device = opts.plan_memo("estimator", "ibm_manila", options)
    assert any("dynamical_decoupling" in n for n in ideal.no_effect) and not device.no_effect


def test_snapshot_tells_types_and_signed_zero_apart():
    assert opts._snap([1]) != opts._snap([True]) != opts._snap([1.0])
    assert opts._snap(0.0) != opts._snap(-0.0)
    assert opts._snap({"a": [1, 2]}) == opts._snap({"a": [1, 2]})
    with pytest.raises(opts._NotPlain):
        opts._snap(object())


def test_options_holding_objects_are_planned_afresh():
    from qiskit_aer.noise import NoiseModel

    options = opts.SamplerOptions()
    options.simulator.noise_model = NoiseModel()
    for _ in range(2):
        with pytest.raises(OptionNotSupportedError, match="noise_model"):
            opts.plan_memo("sampler", "aer_simulator", options)
