"""One ``QiskitRuntimeService`` per tenant (Redis key prefix), sharing one Redis client.

An API key may name a tenant (``KEY@PREFIX`` in ``SESSION_BROKER_API_KEYS``); its sessions
and jobs then live under that prefix, served by workers started with the same
``SESSION_BROKER_KEY_PREFIX``. Everything else goes through the service exactly as a Python
producer's would: the same ``Session``, ``SamplerV2``, ``RuntimeJobV2`` and submit path.
"""

from __future__ import annotations

import threading

from session_broker.core.config import Settings
from session_broker.core.store import Store
from session_broker.service import QiskitRuntimeService


class TenantService(QiskitRuntimeService):
    """A service bound to given settings and a shared Redis client (no ping per tenant)."""

    beats_producer = False  # REST clients say nothing of their liveness: their sessions show "-"

    def __init__(self, settings: Settings, client):  # noqa: D401 - deliberately no super()
        self._settings = settings
        self._store = Store(settings, client=client)
        self.channel = "rest"


class Tenants:
    def __init__(self, settings: Settings, client):
        self.settings = settings
        self.client = client
        self._services: dict[str, TenantService] = {}
        self._lock = threading.Lock()

    def service(self, prefix: str | None) -> TenantService:
        prefix = prefix or self.settings.key_prefix
        with self._lock:
            svc = self._services.get(prefix)
            if svc is None:
                svc = TenantService(self.settings.model_copy(update={"key_prefix": prefix}), self.client)
                self._services[prefix] = svc
            return svc
