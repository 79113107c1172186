"""A primitive's mode: the service, backend and session (if any) its jobs go to, as IBM's
primitives resolve ``mode=`` (a Session, a Batch, a backend object or name, or none inside
``with Session(...)``)."""

from __future__ import annotations

from session_broker import backends as catalog
from session_broker.errors import BackendMismatchError, InvalidInputError
from session_broker.service import QiskitRuntimeService, default_service
from session_broker.session import Session, current_context_session, current_session


def resolve_mode(mode, kind: str) -> tuple[QiskitRuntimeService, str, Session | None]:
    """(service, backend name, session or None) for a primitive's ``mode``.

    Without a mode the primitive joins the session of the ``with`` block (this thread's, or
    the only one open in the process). With a backend (a name, one of ours, or a fake
    backend / AerSimulator object as IBM's local testing mode passes them) it joins only a
    session this very thread or context opened on that backend.
    """
    if mode is None:
        ambient = current_session()
        if ambient is None:
            raise InvalidInputError(
                f"{kind} needs a mode: pass mode=session, mode=batch, mode=backend or a backend "
                "name, or create it inside `with Session(...)`"
            )
        return ambient.service, ambient.backend(), ambient
    if isinstance(mode, Session):
        return mode.service, mode.backend(), mode
    if isinstance(mode, str):
        name, service = catalog.canonical(mode), None
    elif hasattr(mode, "target") or type(mode).__name__ == "AerSimulator":
        name, service = catalog.name_of(mode), getattr(mode, "service", None)
    else:
        raise InvalidInputError(
            f"mode must be a Session, Batch, backend object or backend name, not {type(mode).__name__}"
        )
    ambient = current_context_session()
    if ambient is not None:
        if ambient.backend() != name:
            raise BackendMismatchError(
                f"{kind} targets backend {name!r} inside a session on {ambient.backend()!r}; "
                "a session has exactly one backend"
            )
        return ambient.service, name, ambient
    return service or default_service(), name, None
