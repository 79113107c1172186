"""Backends as the stock client reads them: list, configuration, properties, status.

One source each, so what the client transpiles for is what our workers simulate:

* Device backends: the calibration snapshot files of ``qiskit_ibm_runtime.fake_provider``
  (``conf_*.json``, ``props_*.json``) as they are, renamed to our backend name. The client
  then builds the same target as the fake backend (``backends.build_target``).
* Ideal backends: a configuration generated from the catalog's own target
  (``backends.build_target``): its instruction names, no coupling map, no gate errors, so
  the client's target is all-to-all with the gates Aer runs natively.

Every backend says ``simulator: false``: with ``true`` the client opens no server session
at all. ``online_date`` is required (without it the client silently drops the backend).
Status comes from the live workers registered in Redis and the backend's queue length.
"""

from __future__ import annotations

from functools import cache

from session_broker import backends as catalog
from session_broker.core.store import Store

ONLINE_DATE = catalog.ONLINE_DATE


@cache
def configuration(name: str) -> dict:
    """The QasmBackendConfiguration dict the client builds ``backend(name)`` from: the
    catalog's (``backends.configuration_dict``), with ``simulator: false`` (module docstring)."""
    return {**catalog.configuration_dict(name), "simulator": False}


@cache
def properties(name: str) -> dict:
    """The snapshot's BackendProperties dict (devices); for ideal backends a minimal one (a
    zero readout error per qubit, no gate entries: the same all-to-all target as ``{}``).
    Not ``{}``: the client caches only a non-empty answer, and asks for it again three
    times before every job otherwise."""
    spec = catalog.get_spec(name)
    props = catalog.properties_dict(name)
    if props is not None:
        return props
    zero = [{"date": ONLINE_DATE, "name": "readout_error", "unit": "", "value": 0.0}]
    return {
        "backend_name": name,
        "backend_version": configuration(name)["backend_version"],
        "last_update_date": ONLINE_DATE,
        "qubits": [zero for _ in range(spec.num_qubits)],
        "gates": [],
        "general": [],
    }


def status(store: Store, name: str) -> dict:
    spec = catalog.get_spec(name)
    live = store.live_workers(name)
    queued = store.redis.llen(store.keys.backend_queue(name))
    return {
        "backend_name": name,
        "backend_version": configuration(name)["backend_version"],
        "state": bool(live),
        "status": "active" if live else "internal",
        "message": f"{len(live)} live worker(s)" if live else "no live worker: jobs wait in the queue",
        "length_queue": int(queued),
        "kind": spec.kind,
    }


def listing(store: Store) -> dict:
    """``GET /backends``: every catalog backend (the client caches this list)."""
    devices = []
    for name in catalog.known_backends():
        st = status(store, name)
        spec = catalog.get_spec(name)
        devices.append(
            {
                "name": name,
                "qubits": spec.num_qubits,
                "physical_qubits": spec.num_qubits,
                "status": {"name": "online" if st["state"] else "offline", "reason": st["message"]},
                "queue_length": st["length_queue"],
                "is_simulator": False,
                "processor_type": {"family": "Aer" if spec.kind == "ideal" else "Snapshot"},
                "performance_metrics": {},
                "wait_time_seconds": None,
            }
        )
    return {"devices": devices}
