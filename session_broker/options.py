"""Primitive options: IBM's own option classes, and what a simulator does with each one.

``SamplerOptions`` and ``EstimatorOptions`` *are* qiskit-ibm-runtime's classes (not a
copy), so their fields, defaults, validation, error messages, nested attribute assignment
and ``update()`` behave exactly as IBM's. What we add is the one decision IBM's local
testing mode skips: every option that is *set* is either honoured by the worker, or
refused here with ``OptionNotSupportedError`` naming it and what is supported, before
anything is queued. Nothing is silently ignored; options that cannot mean anything on a
simulator but harm nothing (``execution.rep_delay``, ``environment.private``) are accepted
and listed in the result's ``metadata["session_broker"]["no_effect"]``.

``program_inputs`` turns options into exactly what IBM's client sends as a job's params
(``{"options": {...set options...}, "version": 2, "support_qiskit": True[,
"resilience_level": n]}``), so jobs from the Python API and from IBM's REST client reach the
worker in one shape; ``plan`` is the check, and what the worker needs to run them.

The guide's V1 ``Options`` (``optimization_level``, ``execution.shots``...) live here too.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np

from session_broker import backends as catalog
from session_broker.errors import OptionNotSupportedError

__all__ = [
    "DynamicalDecouplingOptions",
    "EnvironmentOptions",
    "EstimatorOptions",
    "ExecutionOptionsV2",
    "LayerNoiseLearningOptions",
    "MeasureNoiseLearningOptions",
    "NoiseLearnerOptions",
    "Options",
    "OptionsV2",
    "PecOptions",
    "ResilienceOptionsV2",
    "SamplerExecutionOptionsV2",
    "SamplerOptions",
    "SimulatorOptions",
    "TwirlingOptions",
    "ZneOptions",
]

_IBM_NAMES = frozenset(__all__) - {"Options"}


def __getattr__(name: str):
    """IBM's classes, imported on first use: qiskit-ibm-runtime takes about 2 s to import,
    which the CLI and ``import session_broker`` should not pay before they need it."""
    if name in _IBM_NAMES:
        # lazy: qiskit-ibm-runtime takes ~2 s to import; import session_broker and the CLI must not pay it
        import qiskit_ibm_runtime.options as ibm

        return getattr(ibm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: IBM's documented defaults that apply when an option is not set.
DEFAULT_SHOTS = 4096
DEFAULT_PRECISION = 1 / math.sqrt(DEFAULT_SHOTS)  # 0.015625, EstimatorOptions.default_precision


def _sampler_twirled(set_options: dict) -> bool:
    twirling = set_options.get("twirling") or {}
    return bool(twirling.get("enable_gates") or twirling.get("enable_measure"))


def sampler_default_shots(set_options: dict) -> int:
    """The shots of a sampler PUB that names none, when ``run()`` names none either.

    IBM's rule (``TwirlingOptions``): shots in a PUB or in ``run()`` are always obeyed;
    ``default_shots`` is a runtime option, so with twirling on and both
    ``num_randomizations`` and ``shots_per_randomization`` integers, their product takes
    precedence over it. Otherwise ``default_shots``, else 4096."""
    twirling = set_options.get("twirling") or {}
    num, per = twirling.get("num_randomizations"), twirling.get("shots_per_randomization")
    if _sampler_twirled(set_options) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in (num, per)
    ):
        return num * per
    return set_options.get("default_shots") or DEFAULT_SHOTS


def sampler_randomizations(num_randomizations, shots_per_randomization, shots: int) -> tuple[int, int]:
    """(randomizations, shots each) for a twirled sampler PUB of ``shots``: IBM's "auto"
    rules (its own ``calculate_twirling_shots``), and the PUB's shots always obeyed: where
    both are integers whose product falls short of them, more randomizations of
    ``shots_per_randomization`` each run (the worker keeps the PUB's first ``shots``)."""
    # lazy: qiskit-ibm-runtime takes ~2 s to import; import session_broker and the CLI must not pay it
    from qiskit_ibm_runtime.executor.calculate_twirling_shots import calculate_twirling_shots

    num, per = calculate_twirling_shots(shots, num_randomizations, shots_per_randomization)
    return max(int(num), math.ceil(shots / per)), int(per)


def check_sampler_randomizations(set_options: dict, pubs) -> None:
    """Refuse, before queueing, a twirled sampler PUB that would need more than
    ``MAX_RANDOMIZATIONS`` circuits (``num_randomizations="auto"`` with few shots each, or
    a PUB's shots far beyond both integers' product)."""
    if not _sampler_twirled(set_options):
        return
    twirling = set_options.get("twirling") or {}
    num = twirling.get("num_randomizations", "auto")
    per = twirling.get("shots_per_randomization", "auto")
    for i, pub in enumerate(pubs):
        nrand, each = sampler_randomizations(num, per, pub.shots)
        if nrand > MAX_RANDOMIZATIONS:
            raise OptionNotSupportedError(
                f"sampler PUB {i}: {pub.shots} shots at twirling.shots_per_randomization="
                f"{each} need {nrand} randomizations, more than {MAX_RANDOMIZATIONS} (each is a "
                "circuit the worker builds and runs): raise shots_per_randomization or lower "
                "the shots"
            )


def coerce(kind: str, options):
    """``options=`` as IBM's primitives take it: None, a dict (merged over the defaults, so
    nested groups may be partial) or an options object of the primitive's class (copied)."""
    # lazy: qiskit-ibm-runtime takes ~2 s to import; import session_broker and the CLI must not pay it
    import qiskit_ibm_runtime.options as ibm

    cls = ibm.SamplerOptions if kind == "sampler" else ibm.EstimatorOptions
    if options is None:
        return cls()
    if isinstance(options, dict):
        # lazy: qiskit-ibm-runtime takes ~2 s to import; import session_broker and the CLI must not pay it
        from qiskit_ibm_runtime.options.utils import merge_options_v2

        if "seed_simulator" in options:  # session-broker 0.1 took it at the top level
            seed = options["seed_simulator"]
            options = {k: v for k, v in options.items() if k != "seed_simulator"}
            options["simulator"] = {**options.get("simulator", {}), "seed_simulator": seed}
        return cls(**merge_options_v2(cls(), options))
    if isinstance(options, cls):
        return replace(options)
    raise TypeError(f"Invalid 'options' type. It can only be a dictionary of {cls}")


def program_inputs(options) -> tuple[dict, dict]:
    """(IBM's job params less the PUBs, IBM's runtime options) for ``options``."""
    as_dict = asdict(options)
    return type(options)._get_program_inputs(as_dict), type(options)._get_runtime_options(as_dict)


# ---------------------------------------------------------------------- what is honoured
_NO_EFFECT = {
    "execution.rep_delay": "a simulator has no repetition delay",
    # environment.* arrive as runtime options, checked at the end of plan()
    "environment.private": "results are visible only to this deployment's (tenant's) clients",
    "environment.log_level": "jobs log on the worker at the worker's own level",
}
#: Honoured everywhere (the worker applies them): dotted option names.
_HONOURED = {
    "default_shots",
    "default_precision",
    "seed_estimator",
    "simulator.seed_simulator",
    "execution.init_qubits",
    "execution.meas_type",
}
#: Error suppression and mitigation (``tasks/mitigation.py`` runs them): the groups, and
#: what within them no simulator here does (refused by name).
_MITIGATION_GROUPS = ("dynamical_decoupling", "twirling", "resilience")
_NEVER = {
    "resilience.pec_mitigation": "probabilistic error cancellation",
    "resilience.layer_noise_model": "a layer noise model",
}
_MITIGATION_SUPPORTED = (
    "dynamical_decoupling.* (sequence_type XX/XpXm/XY4, on device backends), "
    "twirling.* (strategy 'active'), resilience_level 0-2, resilience.measure_mitigation and "
    "measure_noise_learning.*, resilience.zne_mitigation and zne.* (amplifier gate_folding, "
    "gate_folding_front, gate_folding_back)"
)


def _flatten(options: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "experimental":
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _truthy(value) -> bool:
    return value not in (None, False, 0, "none", [], {})


@dataclass(frozen=True)
class Plan:
    """What the worker is asked to do, decided on the client from the options given."""

    options: dict  # IBM's job params (the full set that was given)
    runtime: dict  # max_execution_time, job_tags, ...
    no_effect: list = field(default_factory=list)


def plan(kind: str, backend: str, options) -> Plan:
    """Check every option that is set; ``OptionNotSupportedError`` for the first one that a
    simulator cannot honour, naming it and what is supported."""
    inputs, runtime = program_inputs(options)
    spec = catalog.get_spec(backend)
    ideal = spec.kind == "ideal"
    supported = (
        "supported: default_shots, default_precision, seed_estimator, "
        "simulator.seed_simulator, max_execution_time, environment.job_tags, "
        "execution.init_qubits=True, execution.meas_type='classified', " + _MITIGATION_SUPPORTED
    )
    no_effect = []
    set_options = _flatten(inputs["options"])
    level = inputs.get("resilience_level")
    if level is not None and (isinstance(level, bool) or level not in (0, 1, 2)):
        raise OptionNotSupportedError(f"resilience_level={level!r} must be 0, 1 or 2; {supported}")
    for name, value in set_options.items():
        if name in _HONOURED:
            _check_value(name, value, supported)
        elif name in _NO_EFFECT:
            no_effect.append(f"{name}={value!r}: {_NO_EFFECT[name]}")
        elif name in _NEVER and _truthy(value):
            raise OptionNotSupportedError(
                f"option {name}={_short(value)} ({_NEVER[name]}) is not implemented; {supported}"
            )
        elif name.split(".")[0] in _MITIGATION_GROUPS:
            why = _mitigation(kind, name, value, set_options, ideal)
            if why:
                no_effect.append(f"{name}={value!r}: {why}")
        else:  # simulator.noise_model / coupling_map / basis_gates, experimental.*
            raise OptionNotSupportedError(
                f"option {name}={_short(value)} is not supported: "
                + (
                    "each backend simulates one fixed device; choose a device backend "
                    "(service.backends(simulator=False): ibm_<name> for each fake backend of "
                    "qiskit_ibm_runtime.fake_provider, e.g. ibm_manila) instead of a custom noise "
                    "model, coupling map or basis"
                    if name.startswith("simulator.")
                    else "experimental options are not available"
                )
                + f"; {supported}"
            )
    if runtime.get("private"):
        no_effect.append(f"environment.private=True: {_NO_EFFECT['environment.private']}")
    if runtime.get("log_level", "WARNING") != "WARNING":
        no_effect.append(
            f"environment.log_level={runtime['log_level']!r}: {_NO_EFFECT['environment.log_level']}"
        )
    if (
        kind == "estimator"
        and set_options.get("default_shots") is not None
        and "default_precision" in set_options
    ):
        no_effect.append("default_precision: default_shots is set and overrides it (as IBM)")
    return Plan(inputs, runtime, no_effect)


# ---------------------------------------------------------------------- plans, memoised
class _NotPlain(Exception):
    """An option value that is not plain data (a NoiseModel, a CouplingMap...): no snapshot."""


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_PLAIN = frozenset({str, int, bool, type(None)})


def _snap(value):
    """A hashable copy of ``value`` that equals another only if the values are equal *and*
    of the same types (``True`` and ``1`` plan differently; ``-0.0`` and ``0.0`` encode
    differently), so two options with equal snapshots get the same plan. Option groups
    (dataclasses) are read from their ``__dict__``: this runs on every ``run()``."""
    t = type(value)
    if t in _PLAIN:
        return t, value
    names = _FIELD_NAMES.get(t)
    if names is not None:
        if not names:
            return t, ()
        try:
            d = value.__dict__
            return t, tuple([_snap(d[n]) for n in names])
        except (AttributeError, KeyError):  # a field kept elsewhere: no snapshot
            raise _NotPlain(t.__name__) from None
    if t is float:
        return t, repr(value)
    if t is list or t is tuple:
        return t, tuple([_snap(v) for v in value])
    if t is dict:
        return t, tuple([(_snap(k), _snap(v)) for k, v in value.items()])
    if not is_dataclass(value):
        raise _NotPlain(t.__name__)
    _FIELD_NAMES[t] = tuple(f.name for f in fields(value))
    return _snap(value)


def _copy(value):
    """A fresh copy of plain JSON-like data, so no caller can change a memoised plan."""
    t = type(value)
    if t is dict:
        return {k: _copy(v) for k, v in value.items()}
    if t is list or t is tuple:
        return t(_copy(v) for v in value)
    return value


_PLANS: dict[tuple, Plan] = {}
_PLANS_MAX = 128
_plans_lock = threading.Lock()


def plan_memo(kind: str, backend: str, options) -> Plan:
    """``plan``, computed once per (kind, backend, option values), returned as a fresh copy.

    IBM's option classes are mutable (``options.twirling.enable_gates = True``,
    ``options.environment.job_tags.append(...)``) and have no change counter, so the key is
    a snapshot of every field value, taken on each call (~15 us where ``plan`` costs ~300 us:
    ``asdict`` and IBM's deep copies). Options holding anything but plain data (a noise
    model object...) are planned afresh every time; refused options are never memoised.
    """
    # lazy: qiskit-ibm-runtime takes ~2 s to import; import session_broker and the CLI must not pay it
    from qiskit_ibm_runtime.options.utils import UnsetType

    _FIELD_NAMES.setdefault(UnsetType, ())  # IBM's singleton for "not set": no fields
    try:
        key = (kind, backend, _snap(options))
    except _NotPlain:
        return plan(kind, backend, options)
    done = _PLANS.get(key)
    if done is None:
        done = plan(kind, backend, options)
        with _plans_lock:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.pop(next(iter(_PLANS)), None)
            _PLANS[key] = done
    return Plan(_copy(done.options), _copy(done.runtime), list(done.no_effect))


def _inert(name: str, set_options: dict) -> bool:
    """A sub-option of a technique that is not switched on (IBM ignores those too)."""
    switches = {
        "dynamical_decoupling": ("dynamical_decoupling.enable",),
        "twirling": ("twirling.enable_gates", "twirling.enable_measure"),
        "resilience.measure_noise_learning": ("resilience.measure_mitigation",),
        "resilience.zne": ("resilience.zne_mitigation",),
        "resilience.pec": ("resilience.pec_mitigation",),
        "resilience.layer_noise_learning": ("resilience.pec_mitigation",),
    }
    group = next(
        (g for g in sorted(switches, key=len, reverse=True) if name == g or name.startswith(g + ".")), None
    )
    if group is None or name in switches[group]:
        return False
    if group == "twirling" and name in ("twirling.num_randomizations", "twirling.shots_per_randomization"):
        return False  # they also size TREX's and the estimator's default twirling
    return not any(_truthy(set_options.get(s)) for s in switches[group])


def _mitigation(kind: str, name: str, value, set_options: dict, ideal: bool) -> str | None:
    """Check one error suppression/mitigation option: refuse what cannot be done; the reason
    it has no effect (recorded in the result), or None when it is honoured."""
    if name == "resilience.zne.amplifier" and value == "pea":
        raise OptionNotSupportedError(
            "option resilience.zne.amplifier='pea' (probabilistic error amplification, which "
            "needs layer noise learning) is not implemented; supported amplifiers: "
            "gate_folding, gate_folding_front, gate_folding_back"
        )
    if name.startswith("resilience.layer_noise_learning") and _truthy(
        set_options.get("resilience.zne_mitigation")
    ):
        raise OptionNotSupportedError(
            f"option {name}={value!r} (layer noise learning, used by PEA and PEC) is not "
            f"implemented; ZNE here amplifies noise by gate folding; supported: " + _MITIGATION_SUPPORTED
        )
    if (
        name == "twirling.strategy"
        and value != "active"
        and (not _inert(name, set_options) or kind == "estimator")
    ):
        raise OptionNotSupportedError(
            f"option twirling.strategy={value!r} is not implemented: twirling here dresses "
            f"each 2-qubit gate's own qubits, which is strategy 'active'; supported: " + _MITIGATION_SUPPORTED
        )
    _check_mitigation_value(name, value)
    if not _truthy(value) and name in (
        "dynamical_decoupling.enable",
        "twirling.enable_gates",
        "twirling.enable_measure",
        "resilience.measure_mitigation",
        "resilience.zne_mitigation",
    ):
        return None  # switched off: honoured as off
    if _inert(name, set_options):
        return "technique not enabled"
    if name.startswith("dynamical_decoupling") and ideal:
        return "ideal simulator: no gate durations and no idle noise to decouple from"
    return None


#: Bounds IBM's classes leave open that a worker could not survive: every randomization and
#: every fold is a circuit built in the worker's memory.
MAX_RANDOMIZATIONS = 1000
MAX_NOISE_FACTOR = 99


def _check_mitigation_value(name: str, value) -> None:
    def finite(v):
        return (
            isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool)
            and math.isfinite(v)
        )

    if (
        name in ("twirling.num_randomizations", "resilience.measure_noise_learning.num_randomizations")
        and isinstance(value, int)
        and value > MAX_RANDOMIZATIONS
    ):
        raise OptionNotSupportedError(
            f"{name}={value} is more than {MAX_RANDOMIZATIONS}: each randomization is a circuit "
            "the worker builds and runs; use fewer with more shots each"
        )
    if name == "resilience.zne.noise_factors" and not all(finite(f) and f <= MAX_NOISE_FACTOR for f in value):
        raise OptionNotSupportedError(
            f"resilience.zne.noise_factors={_short(value)} must be finite numbers from 1 to "
            f"{MAX_NOISE_FACTOR} (a factor k runs k times the circuit's 2-qubit gates)"
        )
    if name == "resilience.zne.extrapolated_noise_factors" and not all(finite(f) for f in value):
        raise OptionNotSupportedError(
            f"resilience.zne.extrapolated_noise_factors={_short(value)} must be finite numbers"
        )


#: Seeds every path of the worker takes: Aer's (a signed 64-bit int) and numpy's generators
#: (no negative seed).
MAX_SEED = 2**63 - 1


def check_seed(name: str, value) -> int | None:
    """``value`` as an int seed (numpy integers too), or None; ``OptionNotSupportedError``
    naming what is allowed otherwise."""
    if value is None:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or not 0 <= value <= MAX_SEED
    ):
        raise OptionNotSupportedError(
            f"{name}={_short(value)} is not a valid seed: expected an int from 0 to 2**63 - 1 "
            "(Aer takes a 64-bit seed; the worker's random generators take no negative one)"
        )
    return int(value)


def _check_value(name: str, value, supported: str) -> None:
    if name == "default_shots" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise OptionNotSupportedError(f"default_shots={value!r} must be a positive int")
    if name in ("simulator.seed_simulator", "seed_estimator"):
        check_seed(name, value)
    if name == "execution.init_qubits" and value is not True:
        raise OptionNotSupportedError(
            "execution.init_qubits=False is not supported: every simulated shot starts in |0>; " + supported
        )
    if name == "execution.meas_type" and value != "classified":
        raise OptionNotSupportedError(
            f"execution.meas_type={value!r} is not supported: Aer returns classified bits, "
            f"not IQ data (kerneled); {supported}"
        )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# ---------------------------------------------------------------------- V1 (the guide)
class _Group:
    """A fixed group of V1 options (``options.execution.shots``): unknown names are errors."""

    def __init__(self, name: str, **defaults):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", defaults)

    def __getattr__(self, key):
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        if key not in self._values:
            raise OptionNotSupportedError(
                f"option {self._name}.{key} is not supported; supported: "
                + ", ".join(f"{self._name}.{k}" for k in self._values)
            )
        self._values[key] = value

    def to_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self):
        return f"{self._name}({self._values})"


@dataclass
class _OptionsData:
    optimization_level: int = 1
    resilience_level: int = 0
    max_execution_time: int | None = None
    execution: _Group = field(default_factory=lambda: _Group("execution", shots=4000, init_qubits=True))
    transpilation: _Group = field(
        default_factory=lambda: _Group(
            "transpilation",
            skip_transpilation=False,
            initial_layout=None,
            layout_method=None,
            routing_method=None,
            approximation_degree=None,
            seed_transpiler=None,
        )
    )
    simulator: _Group = field(default_factory=lambda: _Group("simulator", seed_simulator=None))
    environment: _Group = field(
        default_factory=lambda: _Group("environment", log_level="WARNING", callback=None, job_tags=None)
    )


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Options(_OptionsData):
    """The guide's V1 options. Defaults: optimization_level 1, resilience_level 0, 4000 shots.

    ``resilience_level`` 1-3 is accepted on ideal simulators, where there is no noise to
    mitigate (the result's metadata says so); on noisy device backends it is refused with
    ``OptionNotSupportedError``: mitigation runs for V2 jobs (``tasks/mitigation.py``). ``init_qubits`` must be
    True (simulators always start from |0>).
    """

    _TOP = (
        "optimization_level",
        "resilience_level",
        "max_execution_time",
        "execution",
        "transpilation",
        "simulator",
        "environment",
    )

    def __init__(self, **kwargs):
        super().__init__()
        for key, value in kwargs.items():
            if isinstance(value, dict) and key in ("execution", "transpilation", "simulator", "environment"):
                for sub, v in value.items():
                    setattr(getattr(self, key), sub, v)
            else:
                setattr(self, key, value)

    def __setattr__(self, key, value):
        if key not in self._TOP:
            raise OptionNotSupportedError(
                f"option {key!r} is not supported; supported: {', '.join(self._TOP)}"
            )
        object.__setattr__(self, key, value)

    def validated(self, backend: str) -> dict:
        """The options as the worker gets them, checked against the backend."""

        def level(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 3:
                raise OptionNotSupportedError(f"{name}={value!r} is not valid: expected an int from 0 to 3")
            return int(value)

        opt = level("optimization_level", self.optimization_level)
        res = level("resilience_level", self.resilience_level)
        if res and catalog.get_spec(backend).kind == "device":
            raise OptionNotSupportedError(
                f"resilience_level={res} is not available on device backend {backend!r} with the V1 "
                "primitives: error mitigation runs for V2 jobs (EstimatorV2(mode=backend, "
                "options={'resilience_level': 1}).run([(circuit, observable)])); use "
                "resilience_level=0 here (ideal simulators accept 0-3)"
            )
        shots = self.execution.shots
        if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
            raise OptionNotSupportedError(f"execution.shots={shots!r} must be a positive int")
        if self.execution.init_qubits is not True:
            raise OptionNotSupportedError(
                "execution.init_qubits must be True: simulators always start in |0>"
            )
        met = self.max_execution_time
        if met is not None and (isinstance(met, bool) or not isinstance(met, (int, np.integer)) or met <= 0):
            raise OptionNotSupportedError(f"max_execution_time={met!r} must be a positive int of seconds")
        transpilation = {k: v for k, v in self.transpilation.to_dict().items() if v is not None}
        skip = bool(transpilation.pop("skip_transpilation", False))
        if not skip:
            catalog.pass_manager(backend, opt, **transpilation)  # refuses unknown methods now
        seed = check_seed("simulator.seed_simulator", self.simulator.seed_simulator)
        env = self.environment
        if env.log_level not in _LOG_LEVELS:
            raise OptionNotSupportedError(
                f"environment.log_level={env.log_level!r} must be one of {', '.join(_LOG_LEVELS)}"
            )
        if env.callback is not None:
            raise OptionNotSupportedError(
                "environment.callback is not supported: jobs here stream no interim results; "
                "use job.result() (or job.status()) instead"
            )
        tags = env.job_tags or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise OptionNotSupportedError(f"environment.job_tags={tags!r} must be a list of strings")
        return {
            "api": "v1",
            "optimization_level": opt,
            "resilience_level": res,
            "shots": int(shots),
            "max_execution_time": int(met) if met else None,
            "skip_transpilation": skip,
            "transpilation": transpilation,
            "seed_simulator": seed,
            "job_tags": list(tags),
            # jobs log on the worker at the worker's own level (as for V2, recorded, no effect)
            "log_level": env.log_level,
        }

    def update(self, **fields) -> None:
        """IBM's V1 ``set_options(**fields)``: a top-level name (``optimization_level``), a
        group (``execution={"shots": 100}``), or a field of a group by its own name
        (``shots=4000`` is ``execution.shots``), as IBM's ``merge_options`` finds it."""
        groups = {g: getattr(self, g) for g in ("execution", "transpilation", "simulator", "environment")}
        for key, value in fields.items():
            if key in self._TOP:
                if key in groups and isinstance(value, dict):
                    for sub, v in value.items():
                        setattr(groups[key], sub, v)
                else:
                    setattr(self, key, value)
                continue
            owners = [g for g in groups.values() if key in g._values]
            if not owners:
                known = [f"{g._name}.{k}" for g in groups.values() for k in g._values]
                raise OptionNotSupportedError(
                    f"option {key!r} is not supported; supported: {', '.join(self._TOP)}, {', '.join(known)}"
                )
            setattr(owners[0], key, value)
