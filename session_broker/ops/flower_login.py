"""Flower with every route but ``/healthcheck`` behind the login, and no secret in ``argv``.

Flower 2.2 answers ``/metrics`` (worker names, task counts and timings), ``/static`` and its
catch-all 404 page without checking credentials, and ``--basic-auth=user:password`` on its
command line is readable by every local user (``ps``). ``session-broker flower`` and ``up``
therefore start Flower through ``main`` here: the login travels in the environment (Flower
reads ``FLOWER_BASIC_AUTH`` itself; ``/proc/PID/environ`` is readable only by the process's
owner), and before Flower builds its application every route handler but ``/healthcheck``
(static files included) is wrapped so that a request without exactly the configured
``user:password`` gets 401 before Flower's own code runs. ``config`` refuses logins Flower
would split (a ``,``) or mangle.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import sys
import threading
import time

from celery.bin.celery import main as celery_main
from tornado.web import RequestHandler, StaticFileHandler, URLSpec

from session_broker.celery_app import app
from session_broker.core.config import get_settings
from session_broker.core.store import Store
from session_broker.errors import ConfigurationError

OPEN = {"/healthcheck"}  # answered without a login: health probes carry no credentials


def authorized(header: str, expected: str) -> bool:
    """Whether an ``Authorization`` header carries exactly ``expected`` (``user:password``)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected.encode())


class Denied(RequestHandler):
    """The answer to any request without the login: 401, whatever the method or path."""

    def check_xsrf_cookie(self) -> None:  # Tornado checks it before prepare: 401 comes first
        return None

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("401: log in with SESSION_BROKER_FLOWER_AUTH's user and password\n")


def guarded(handler_class: type, expected: str) -> type:
    """A stand-in for ``handler_class`` that builds it only for a request with the login.

    Deciding in ``__new__`` (not in ``prepare``) also covers handlers that build another
    class themselves (Flower's ``/login`` is a ``NotFoundErrorHandler`` unless OAuth is on)."""

    def __new__(cls, application, request, **kwargs):
        if authorized(request.headers.get("Authorization", ""), expected):
            return handler_class(application, request, **kwargs)
        return Denied(application, request)

    return type(f"Guarded{handler_class.__name__}", (handler_class,), {"__new__": __new__})


def protect(handlers: list, expected: str) -> list:
    """Wrap, in place, every route of a Tornado handler list but those in ``OPEN``."""
    for i, spec in enumerate(handlers):
        if not isinstance(spec, URLSpec):
            spec = URLSpec(*spec)
        if spec.regex.pattern.rstrip("$") in OPEN:
            continue
        handlers[i] = URLSpec(
            spec.regex.pattern, guarded(spec.handler_class, expected), spec.kwargs, spec.name
        )
    return handlers


MONITOR_TTL = 15  # s; refreshed every MONITOR_TTL / 3


def keep_events_on() -> None:
    """While this Flower runs: ask every worker for task events now (Flower itself first asks
    after 5 s) and keep ``Keys.monitor`` alive, so that an executor starting meanwhile sends
    events from its first job (workers start with events off: ``celery_app``)."""
    store, asked = Store(), False
    while True:
        try:
            store.redis.set(store.keys.monitor, "flower", ex=MONITOR_TTL)
            if not asked:
                app.control.enable_events()
                asked = True
        except Exception as exc:  # Redis away or not ours to write: Flower's own asking goes on
            logging.getLogger("session_broker.flower").warning("could not ask for task events: %s", exc)
        time.sleep(MONITOR_TTL / 3)


def main() -> None:
    """``python -m session_broker.ops.flower_login [FLOWER OPTIONS]``: ``celery flower`` for our app."""
    auth = get_settings().flower_auth
    if not auth:
        raise ConfigurationError("Flower refuses to start without SESSION_BROKER_FLOWER_AUTH=user:password")
    os.environ["FLOWER_BASIC_AUTH"] = auth  # Flower's own checks (its API wants a login configured)
    # lazy: Flower's modules read their settings when imported: after FLOWER_BASIC_AUTH is set above
    import flower.urls

    protect(flower.urls.handlers, auth)
    # Tornado serves static_path through its own route, ahead of the list above
    flower.urls.settings["static_handler_class"] = guarded(StaticFileHandler, auth)
    threading.Thread(target=keep_events_on, name="keep-events-on", daemon=True).start()

    sys.argv = ["celery", "-A", "session_broker.celery_app", "flower", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
