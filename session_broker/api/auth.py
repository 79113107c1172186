"""API keys, tokens, and the check every runtime route makes.

The stock client trades its API key for a token at ``POST /identity/token`` (IBM's IAM
protocol) and sends ``Authorization: Bearer <token>`` plus ``Service-CRN`` on every call.

* Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against *every*
  configured key (no early exit), so timing says nothing about which bytes matched. A key
  is never logged or echoed; only the first 12 hex digits of its digest appear in tokens.
* Tokens are HS256 JWTs (PyJWT) that carry the key's digest prefix and its tenant. The
  secret comes from ``SESSION_BROKER_API_SECRET`` or, failing that, is created once in
  Redis (SET NX), so a restarted or second server accepts tokens the first one issued (the
  client keeps its token until 80 % of its life). A key removed from the configuration
  stops its tokens at once: each request checks the token's key is still configured.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid

import jwt
from fastapi import Request

from session_broker.api.errors import ApiError
from session_broker.api.settings import ApiKey, ApiSettings, digest
from session_broker.core.instances import NAME

ISSUER = "session-broker"


class Authority:
    """Issues and checks tokens for one server (its keys, instance and secret)."""

    def __init__(self, api: ApiSettings, redis_client, secret_key: str):
        self.api = api
        self._redis = redis_client
        self._secret_key = secret_key
        self._secret = api.secret or None

    # ------------------------------------------------------------------ keys
    def match_key(self, given: str) -> ApiKey | None:
        """The configured key equal to ``given``; constant time over all of them."""
        if not isinstance(given, str) or not given or len(given) > 4096:
            return None
        mine = digest(given).encode()
        found = None
        for key in self.api.keys:
            if hmac.compare_digest(mine, key.sha256.encode()):
                found = key
        return found

    def _key_by_sub(self, sub: str) -> ApiKey | None:
        found = None
        for key in self.api.keys:
            if hmac.compare_digest(sub.encode(), key.sha256[:32].encode()):
                found = key
        return found

    # ------------------------------------------------------------------ tokens
    def secret(self) -> str:
        if self._secret is None:
            self._redis.set(self._secret_key, secrets.token_urlsafe(48), nx=True)
            self._secret = self._redis.get(self._secret_key)
        return self._secret

    def issue(self, key: ApiKey) -> dict:
        now = int(time.time())
        exp = now + self.api.token_ttl
        claims = {
            "iss": ISSUER,
            "sub": key.sha256[:32],
            "tnt": key.prefix or "",
            "iat": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.secret(), algorithm="HS256")
        return {
            "access_token": token,
            "refresh_token": "not_supported",
            "ims_user_id": 0,
            "token_type": "Bearer",
            "expires_in": self.api.token_ttl,
            "expiration": exp,
            "scope": "ibm openid",
        }

    def verify(self, token: str) -> ApiKey:
        try:
            claims = jwt.decode(
                token,
                self.secret(),
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(
                401, "the token has expired: request a new one at /identity/token", "token_expired"
            ) from None
        except jwt.PyJWTError:
            raise ApiError(
                401,
                "the token is not valid (bad signature, issuer or format): "
                "request one at /identity/token with your API key",
                "invalid_token",
            ) from None
        key = self._key_by_sub(str(claims.get("sub", "")))
        if key is None:
            raise ApiError(401, "the token's API key is no longer accepted", "invalid_token")
        return key

    # ------------------------------------------------------------------ the route check
    def check_request(self, request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing 'Authorization: Bearer <token>'; get a token at "
                "POST /identity/token with your API key",
                "missing_token",
            )
        key = self.verify(token.strip())
        crn = request.headers.get("service-crn", "")
        if hmac.compare_digest(crn.encode("utf-8", "replace"), self.api.instance.encode()):
            request.state.instance = ""
            return key
        named = self.named_instance(crn)
        if named is None:
            raise ApiError(
                403,
                f"Service-CRN does not name this server's instance; the instance here is "
                f"{self.api.instance} (or, for one of its instances NAME, that CRN with NAME "
                "in its instance field, or NAME itself)",
                "instance_mismatch",
            )
        request.state.instance = named
        return key

    def named_instance(self, crn: str) -> str | None:
        """The instance a Service-CRN names: the server's CRN with another instance field
        (``crn:v1:...:a/<account>:<NAME>::``), or a bare instance name; None for neither."""
        if crn.startswith("crn:"):
            mine, theirs = self.api.instance.split(":"), crn.split(":")
            if len(mine) != len(theirs) or len(mine) < 8:
                return None
            if mine[:7] != theirs[:7] or mine[8:] != theirs[8:] or not NAME.fullmatch(theirs[7]):
                return None
            return theirs[7]
        return crn if NAME.fullmatch(crn) else None

    def crn_of(self, name: str) -> str:
        """The CRN of instance ``name``: the server's with ``name`` in its instance field."""
        parts = self.api.instance.split(":")
        if len(parts) < 8:
            return self.api.instance
        parts[7] = name
        return ":".join(parts)
