"""One ``QiskitRuntimeService`` per tenant (Redis key prefix), sharing one Redis client.

An instance (``Service-CRN``, or the key's own ``KEY#INSTANCE``) gives a service whose jobs and
sessions count against it. An API key may name a tenant (``KEY@PREFIX`` in ``SESSION_BROKER_API_KEYS``); its sessions
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

    def __init__(self, settings: Settings, client, instance: str = ""):  # noqa: D401 - deliberately no super()
        self._settings = settings
        self._store = Store(settings, client=client)
        self.channel = "rest"
        self._instance = instance


class Tenants:
    def __init__(self, settings: Settings, client):
        self.settings = settings
        self.client = client
        self._services: dict[str, TenantService] = {}
        self._named: dict[tuple[str, str], TenantService] = {}
        self._lock = threading.Lock()

    def service(self, prefix: str | None, instance: str = "") -> TenantService:
        """The tenant's service; with ``instance``, one whose work counts against it. The name
        is checked once (then kept); an instance the operator removes later is refused by the
        submit and session-open scripts themselves."""
        prefix = prefix or self.settings.key_prefix
        with self._lock:
            svc = self._services.get(prefix)
            if svc is None:
                svc = TenantService(self.settings.model_copy(update={"key_prefix": prefix}), self.client)
                self._services[prefix] = svc
            if not instance:
                return svc
            named = self._named.get((prefix, instance))
        if named is None:
            named = TenantService(svc._settings, self.client)
            named._instance = named._check_instance(instance)  # UnknownInstanceError: not kept
            if named._instance:  # with no instance configured it is ignored: asked again next time
                with self._lock:
                    named = self._named.setdefault((prefix, instance), named)
        return named
