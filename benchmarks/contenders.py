"""The contenders, behind one small interface, and the benchmark's circuits.

Every contender has ``sample(circuit, shots)``, ``estimate(circuit, observable, params)``
(both block until the result is back in this process) and ``submit_*`` / ``gather`` for
pipelined runs. ``loop_context()`` is what one iterative loop runs inside (a fresh session
for the session contenders, nothing for the others).

The session-broker contenders also record, per job, the client's wall-clock moments
(before ``run()``, after ``run()`` returned, after ``result()`` returned) so the job record's
server-side timestamps (created, running, finished) can split each job's latency into
phases afterwards (``phases``).
"""

from __future__ import annotations

import contextlib
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

BACKEND = "aer_simulator"


# ---------------------------------------------------------------------- circuits
def bell(measure: bool = True):
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    return qc


def ghz(n: int):
    """An n-qubit star GHZ state, measured: a job of one cost, repeated (the fair-share flood)."""
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(n)
    qc.h(0)
    qc.cx([0] * (n - 1), list(range(1, n)))
    qc.measure_all()
    return qc


def zz():
    from qiskit.quantum_info import SparsePauliOp

    return SparsePauliOp("ZZ")


def random20(backend, seed: int = 11):
    """random_circuit(20, 10, measure=True) transpiled for ``backend`` at level 1."""
    from qiskit.circuit.random import random_circuit
    from qiskit.transpiler import generate_preset_pass_manager

    circuit = random_circuit(20, 10, measure=True, seed=seed)
    return generate_preset_pass_manager(backend=backend, optimization_level=1).run(circuit)


def ansatz():
    """A 1-parameter ansatz and its Hamiltonian: E(t) = 0.5 + cos t + 0.3 sin t."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp

    theta = Parameter("theta")
    qc = QuantumCircuit(2)
    qc.ry(theta, 0)
    qc.cx(0, 1)
    return qc, SparsePauliOp.from_list([("ZZ", 0.5), ("IZ", 1.0), ("XX", 0.3)])


def counts_of(result) -> dict:
    if isinstance(result, dict):
        return result
    return result[0].join_data().get_counts()


def ev_of(result) -> float:
    if isinstance(result, (int, float)):
        return float(result)
    import numpy as np

    return float(np.asarray(result[0].data.evs).reshape(-1)[0])


# ---------------------------------------------------------------------- contenders
class Contender:
    name = ""
    label = ""

    def sample(self, circuit, shots: int):
        return self.gather(self.submit_sample(circuit, shots))

    def estimate(self, circuit, observable, params=None):
        return self.gather(self.submit_estimate(circuit, observable, params))

    def submit_sample(self, circuit, shots: int):
        raise NotImplementedError

    def submit_estimate(self, circuit, observable, params=None):
        raise NotImplementedError

    def gather(self, handle):
        return handle.result()

    @contextlib.contextmanager
    def loop_context(self):
        yield self

    def close(self) -> None:
        pass


class Direct(Contender):
    """qiskit-aer's SamplerV2/EstimatorV2 in this process: ``.run([...]).result()``."""

    name, label = "direct", "direct Aer (in-process)"

    def __init__(self):
        from qiskit_aer.primitives import EstimatorV2, SamplerV2

        self.sampler, self.estimator = SamplerV2(), EstimatorV2()

    def submit_sample(self, circuit, shots):
        return self.sampler.run([circuit], shots=shots)

    def submit_estimate(self, circuit, observable, params=None):
        pub = (circuit, observable) if params is None else (circuit, observable, params)
        return self.estimator.run([pub])


class PlainCelery(Contender):
    """A hand-written Celery task (see plain_celery.py); result via AsyncResult.get()."""

    name, label = "plain_celery", "plain Celery (prefork, c=1)"

    def __init__(self):
        from benchmarks import plain_celery

        self.mod = plain_celery

    def submit_sample(self, circuit, shots):
        return self.mod.submit_sample(circuit, shots)

    def submit_estimate(self, circuit, observable, params=None):
        return self.mod.submit_estimate(circuit, observable, params)

    def gather(self, handle):
        return handle.get(timeout=300)


class IBMLocal(Contender):
    """qiskit-ibm-runtime local testing mode: Session(backend=AerSimulator())."""

    name, label = "ibm_local", "IBM local mode (Session+AerSimulator)"

    def __init__(self):
        from qiskit_aer import AerSimulator
        from qiskit_ibm_runtime import EstimatorV2, SamplerV2, Session

        self._Session, self._Sampler, self._Estimator = Session, SamplerV2, EstimatorV2
        self.backend = AerSimulator()
        self._open()

    def _open(self):
        self.session = self._Session(backend=self.backend)
        self.sampler = self._Sampler(mode=self.session)
        self.estimator = self._Estimator(mode=self.session)

    def submit_sample(self, circuit, shots):
        return self.sampler.run([circuit], shots=shots)

    def submit_estimate(self, circuit, observable, params=None):
        pub = (circuit, observable) if params is None else (circuit, observable, params)
        return self.estimator.run([pub])

    @contextlib.contextmanager
    def loop_context(self):
        outer = self.session
        with self._Session(backend=self.backend) as session:
            self.session = session
            self.sampler, self.estimator = self._Sampler(mode=session), self._Estimator(mode=session)
            try:
                yield self
            finally:
                self.session = outer
                self.sampler, self.estimator = self._Sampler(mode=outer), self._Estimator(mode=outer)

    def close(self):
        self.session.close()


class _Broker(Contender):
    """Shared by the two session-broker contenders: per-job client timestamps."""

    def __init__(self):
        self.trace: list[tuple[str, float, float, float]] | None = None
        self._pending: dict[str, tuple[float, float]] = {}

    def _submitted(self, job, t0: float):
        if self.trace is not None:
            self._pending[job.job_id()] = (t0, time.time())
        return job

    def gather(self, handle):
        result = handle.result()
        if self.trace is not None:
            t2 = time.time()
            t0, t1 = self._pending.pop(handle.job_id(), (None, None))
            if t0 is not None:
                self.trace.append((handle.job_id(), t0, t1, t2))
        return result

    def submit_sample(self, circuit, shots):
        t0 = time.time()
        return self._submitted(self.sampler.run([circuit], shots=shots), t0)

    def submit_estimate(self, circuit, observable, params=None):
        pub = (circuit, observable) if params is None else (circuit, observable, params)
        t0 = time.time()
        return self._submitted(self.estimator.run([pub]), t0)


class BrokerJob(_Broker):
    """session-broker, a job outside any session: ``SamplerV2(mode="aer_simulator")``."""

    name, label = "sb_job", "session-broker job (no session)"

    def __init__(self, service):
        super().__init__()
        from session_broker import EstimatorV2, SamplerV2

        self.service = service
        self.sampler = SamplerV2(mode=BACKEND)
        self.estimator = EstimatorV2(mode=BACKEND)


class BrokerSession(_Broker):
    """session-broker, jobs inside one ``Session(backend=...)``."""

    name, label = "sb_session", "session-broker job in a Session"

    def __init__(self, service, open_now: bool = True):
        super().__init__()
        self.service = service
        self.session = None
        if open_now:
            self.open()

    def open(self):
        from session_broker import EstimatorV2, SamplerV2, Session

        self.session = Session(backend=self.service.backend(BACKEND))
        self.sampler = SamplerV2(mode=self.session)
        self.estimator = EstimatorV2(mode=self.session)
        return self.session

    def close(self):
        if self.session is not None:
            self.session.close()
            self.session = None

    @contextlib.contextmanager
    def loop_context(self):
        """One loop = one ``with Session(...)`` block (its first job waits for a pin)."""
        outer = self.session
        try:
            self.open()
            with self.session:
                yield self
        finally:
            self.session = outer
            if outer is not None:
                from session_broker import EstimatorV2, SamplerV2

                self.sampler, self.estimator = SamplerV2(mode=outer), EstimatorV2(mode=outer)


def phases(store, trace) -> dict[str, list[float]]:
    """Split each traced job's latency (seconds) using its record's server timestamps.

    client_submit: ``run()`` in the client (checks, encode, the submit script's round trip)
    queued_to_claim: record created -> claim script ran (queue, Celery fetch, prefork
        dispatch to the pool child, task start)
    claim_to_finish: claim -> finish script (decode, Aer, encode result, the Lua calls)
    worker_usage: the worker's own measure of decode + execute + encode
    finish_to_client: finish script -> ``result()`` returned (latch wake-up, read, decode)
    """
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "client_submit",
            "queued_to_claim",
            "claim_to_finish",
            "worker_usage",
            "finish_to_client",
            "total",
        )
    }
    if not trace:
        return out
    pipe = store.redis.pipeline(transaction=False)
    for jid, *_ in trace:
        pipe.hmget(store.keys.job(jid), ["created", "running", "finished", "usage"])
    for (_jid, t0, t1, t2), rec in zip(trace, pipe.execute()):
        try:
            created, running, finished, usage = (float(x) for x in rec)
        except (TypeError, ValueError):
            continue
        out["client_submit"].append(t1 - t0)
        out["queued_to_claim"].append(running - created)
        out["claim_to_finish"].append(finished - running)
        out["worker_usage"].append(usage)
        out["finish_to_client"].append(t2 - finished)
        out["total"].append(t2 - t0)
    return out
