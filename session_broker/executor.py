"""IBM's ``Executor`` and ``QuantumProgram`` (qiskit-ibm-runtime 0.51), run on our workers.

``QuantumProgram`` and ``ExecutorOptions`` are IBM's own classes. ``Executor.run`` encodes the
program as IBM's client does (``ParamsModel`` v2.0, the inputs of program ``executor``), runs
the worker's own decoder on it (``core.program``: bounded decompression, QPY header checks,
pydantic), and submits it through the one submit path every primitive uses. The worker runs
it with IBM's local-mode runner on its simulator; ``job.result()`` decodes the stored
``QuantumProgramResultModel`` with IBM's decoders: a ``QuantumProgramResult`` (or, for the
executor-based ``Sampler``/``Estimator``, a ``PrimitiveResult``).
"""

from __future__ import annotations

from typing import Any

from qiskit_ibm_runtime.options_models.executor import ExecutorOptions
from qiskit_ibm_runtime.quantum_program import QuantumProgram
from qiskit_ibm_runtime.quantum_program.params_converters import QUANTUM_PROGRAM_PARAMS_CONVERTERS

from session_broker import backends as catalog
from session_broker.core import program as wire
from session_broker.errors import InvalidInputError, OptionNotSupportedError
from session_broker.inputs import execution_time
from session_broker.job import RuntimeJobV2
from session_broker.modes import resolve_mode

__all__ = ["Executor", "ExecutorOptions", "QuantumProgram"]


class Executor:
    """IBM's ``Executor``: ``Executor(mode, options).run(QuantumProgram) -> job``.

    ``mode`` is a Session, a Batch, a backend (object or name), or none inside
    ``with Session(...)``; ``options`` IBM's ``ExecutorOptions`` (or a dict)."""

    _PROGRAM_ID = "executor"
    _SCHEMA_VERSION = "v2.0"

    options: ExecutorOptions

    def __init__(self, mode=None, options: ExecutorOptions | dict | None = None):
        self.options = options if options is not None else ExecutorOptions()  # type: ignore[assignment]
        self._service, self._backend_name, self._session = resolve_mode(mode, "Executor")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "options":  # as IBM's: a dict becomes ExecutorOptions
            if isinstance(value, dict):
                value = ExecutorOptions(**value)
            elif not isinstance(value, ExecutorOptions):
                raise TypeError(f"Expected ExecutorOptions or dict, got {type(value)}")
        super().__setattr__(name, value)

    def backend(self):
        return self._service.backend(self._backend_name)

    @property
    def mode(self):
        return self._session

    def run(self, program: QuantumProgram | Any, dry_run: bool = False) -> RuntimeJobV2:
        """Queue ``program``; returns the job (``job.result()``: IBM's result types)."""
        if dry_run:
            raise InvalidInputError(
                "dry_run=True is not available: IBM's dry run returns random mock data from "
                "its server; here, run the job itself (a simulator)"
            )
        if not isinstance(program, QuantumProgram):
            program = QuantumProgram.from_(program)
        _check_options(self.options)
        params = QUANTUM_PROGRAM_PARAMS_CONVERTERS[self._SCHEMA_VERSION].encoder(program, self.options)
        return self.submit_params(params.model_dump(mode="json"))

    def submit_params(self, inputs: dict) -> RuntimeJobV2:
        """Queue a program given as IBM's executor inputs (``ParamsModel`` v2.0 JSON, what
        IBM's client sends to program ``executor``; the REST API's door), with this
        executor's ``max_execution_time``, ``environment.job_tags`` and simulator seed."""
        met = execution_time(
            self.options.max_execution_time or self.options.environment.max_execution_time, self._session
        )
        tags = list(self.options.environment.job_tags or [])
        options = {"seed_simulator": self.options.simulator.seed_simulator, "max_execution_time": met}
        limit = self._service._store.settings.max_payload_bytes
        payload = wire.encode_executor_payload(inputs, options, max_bytes=limit)
        decoded = wire.check_executor_payload(payload, max_bytes=limit)  # the worker's decoder, here and now
        for item in decoded.program.items:  # width, as for the primitives (ISA: the worker's Aer)
            catalog.check_circuit(self._backend_name, item.circuit, require_isa=False)
        program = inputs["quantum_program"]  # valid: the decoder just read it
        job = self._service._submit(
            primitive=self._PROGRAM_ID,
            backend=self._backend_name,
            session=self._session,
            payload=payload,
            summary={
                "api": "executor",
                "tags": tags,
                "pubs": len(program["items"]),
                "shots": program["shots"],
            },
            max_execution_time=met,
        )
        job._inputs = inputs
        return job


def _check_options(options: ExecutorOptions) -> None:
    """Every option is honoured or refused by name (as the V2 primitives' options are); the
    execution options the program carries are checked by the worker's decoder."""
    if options.simulator.layer_noise_model is not None:
        raise OptionNotSupportedError(
            "simulator.layer_noise_model is not supported here: each backend simulates its "
            "device's own noise model. Supported: simulator.seed_simulator, max_execution_time, "
            "environment.job_tags; execution.rep_delay is accepted and has no effect"
        )


class ExecutorPrimitive:
    """Shared by ``executor_sampler.Sampler`` and ``executor_estimator.Estimator``: IBM's
    classes, with ``mode`` resolved as our other primitives resolve it and the program IBM's
    ``prepare`` builds run by this module's ``Executor`` (IBM's ``run`` names its own)."""

    _base: Any  # BaseSamplerV2 or BaseEstimatorV2
    _options_class: Any  # IBM's SamplerOptions or EstimatorOptions
    _semantic_role = ""  # what IBM's client-side decoder for the result reads
    _mode: Any
    _backend: Any
    options: Any

    def __init__(self, mode=None, options=None):
        self._base.__init__(self)
        service, name, session = resolve_mode(mode, type(self).__name__)
        self._mode, self._service, self._backend = session, service, service.backend(name)
        self.options = options if options is not None else self._options_class()

    @staticmethod
    def _prepare(pubs, options, value, *, add_tags: bool, backend) -> tuple:
        raise NotImplementedError

    def _run_program(self, pubs, value, dry_run: bool) -> RuntimeJobV2:
        program, executor_options = self._prepare(
            pubs, self.options, value, add_tags=False, backend=self._backend
        )
        program._semantic_role = self._semantic_role
        executor = Executor(mode=self._mode or self._backend.name, options=executor_options)
        return executor.run(program, dry_run=dry_run)
