"""The hand-written Celery contender: what a user would write without session-broker.

A minimal Celery app (JSON serializer, Redis broker and result backend), two tasks that run
qiskit-aer's SamplerV2 / EstimatorV2 on a circuit sent as QPY+base64 in the task's
arguments, and return plain JSON (a counts dict, an expectation value). One worker
subprocess, prefork pool, concurrency 1, its own queue on the benchmark's redis-server::

    BENCH_PLAIN_URL=redis://127.0.0.1:PORT/0 \
        python -m celery -A benchmarks.plain_celery worker -P prefork -c 1 -Q bench.plain

Celery's defaults are kept otherwise (no task events, results in the Redis backend,
``AsyncResult.get()`` waits on its pub/sub channel): this is the floor of "just use Celery".
"""

from __future__ import annotations

import base64
import io
import os
import sys

from celery import Celery

URL = os.environ.get("BENCH_PLAIN_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_PLAIN_QUEUE", "bench.plain")

app = Celery("bench_plain", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_primitives: dict[str, object] = {}


def _sampler():
    if "sampler" not in _primitives:
        from qiskit_aer.primitives import SamplerV2

        _primitives["sampler"] = SamplerV2()
    return _primitives["sampler"]


def _estimator():
    if "estimator" not in _primitives:
        from qiskit_aer.primitives import EstimatorV2

        _primitives["estimator"] = EstimatorV2()
    return _primitives["estimator"]


def encode_circuit(circuit) -> str:
    from qiskit import qpy

    buf = io.BytesIO()
    qpy.dump(circuit, buf)
    return base64.b64encode(buf.getvalue()).decode()


def decode_circuit(text: str):
    from qiskit import qpy

    return qpy.load(io.BytesIO(base64.b64decode(text)))[0]


@app.task(name="bench.sample")
def sample(circuit_b64: str, shots: int) -> dict:
    """Sampler: QPY circuit in, counts dict out."""
    result = _sampler().run([decode_circuit(circuit_b64)], shots=shots).result()
    return result[0].join_data().get_counts()


@app.task(name="bench.estimate")
def estimate(circuit_b64: str, terms: list, params: list | None = None) -> float:
    """Estimator: QPY circuit + [[pauli, coeff], ...] (+ parameter values) in, <O> out."""
    from qiskit.quantum_info import SparsePauliOp

    circuit = decode_circuit(circuit_b64)
    observable = SparsePauliOp.from_list([(p, c) for p, c in terms])
    pub = (circuit, observable) if params is None else (circuit, observable, params)
    result = _estimator().run([pub]).result()
    return float(result[0].data.evs)


@app.task(name="bench.noop")
def noop() -> int:
    return 0


def worker_argv(name: str = "plain@bench") -> list[str]:
    """The command line of the contender's one worker (prefork, concurrency 1)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "benchmarks.plain_celery",
        "worker",
        "-P",
        "prefork",
        "-c",
        "1",
        "-Q",
        QUEUE,
        "-n",
        name,
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
    ]


# ------------------------------------------------------------------ client side
def submit_sample(circuit, shots: int):
    return sample.apply_async(args=[encode_circuit(circuit), int(shots)], queue=QUEUE)


def submit_estimate(circuit, observable, params=None):
    terms = [[label, float(coeff.real)] for label, coeff in observable.to_list()]
    values = None if params is None else [float(v) for v in params]
    return estimate.apply_async(args=[encode_circuit(circuit), terms, values], queue=QUEUE)
