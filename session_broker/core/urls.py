"""Redis URLs: the TLS options a ``rediss://`` or ``sentinels://`` URL carries."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit


def split_tls_options(url: str) -> tuple[str, dict[str, Any]]:
    """Take ``ssl_*`` query options off a ``rediss://`` URL and return them as kwargs.

    redis-py, kombu and Celery's result backend each read TLS options differently; we parse
    them once here and hand each the form it wants (see ``celery_app.py``).
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    opts = {k: v for k, v in query.items() if k.startswith("ssl_")}
    rest = "&".join(f"{k}={v}" for k, v in query.items() if not k.startswith("ssl_"))
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    if parts.scheme not in ("rediss", "sentinels"):
        return bare, {}
    reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    kwargs: dict[str, Any] = {
        "ssl_cert_reqs": reqs.get(opts.get("ssl_cert_reqs", "required"), ssl.CERT_REQUIRED)
    }
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in opts:
            kwargs[name] = opts[name]
    return bare, kwargs
