"""``POST /identity/token`` (IBM IAM's API-key exchange) and the Global Search / Catalog
answers that the client's instance lookup needs when ``GLOBAL_SEARCH_URL`` points here.

The token request is form-encoded (``grant_type=urn:ibm:params:oauth:grant-type:apikey&
apikey=...``); we parse it ourselves (no multipart dependency) and validate it with a model.
A wrong key gets IAM's 400 shape; the key itself is never logged or echoed.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError

from session_broker.api.errors import ApiError
from session_broker.api.models import SearchRequest

GRANT = "urn:ibm:params:oauth:grant-type:apikey"
router = APIRouter()


class TokenRequest(BaseModel):
    grant_type: str = Field(max_length=128)
    apikey: str = Field(min_length=1, max_length=4096)
    response_type: str | None = Field(default=None, max_length=64)


@router.post(
    "/identity/token",
    tags=["identity"],
    openapi_extra={
        "requestBody": {
            "content": {"application/x-www-form-urlencoded": {"schema": TokenRequest.model_json_schema()}},
            "required": True,
        }
    },
)
async def token(request: Request):
    raw = await request.body()
    if len(raw) > 8192:
        raise ApiError(413, "token request too large", "payload_too_large")
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), strict_parsing=False).items()}
        body = TokenRequest(**form)
    except (UnicodeDecodeError, ValidationError, TypeError):
        raise ApiError(
            400,
            "expected a form body grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=<your API key>",
            "BXNIM0109E",
        ) from None
    if body.grant_type != GRANT:
        raise ApiError(400, f"grant_type must be {GRANT}", "BXNIM0109E")
    front = request.app.state.front
    key = front.authority.match_key(body.apikey)
    if key is None:
        raise ApiError(
            400,
            "Provided API key could not be found (it is not one of SESSION_BROKER_API_KEYS)",
            "BXNIM0415E",
        )
    return front.authority.issue(key)


def _bearer(request: Request):
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "missing 'Authorization: Bearer <token>'", "missing_token")
    return request.app.state.front.authority.verify(value.strip())


@router.post("/v3/resources/search", tags=["global search"])
def search(body: SearchRequest, request: Request):
    """The instances this server answers for, as Global Search lists them: its own CRN and
    one per configured instance (its CRN: the server's with the name in its instance field)."""
    key = _bearer(request)
    front = request.app.state.front
    names = [("session-broker", front.api.instance)]
    if key.instance:  # a key tied to an instance sees that one
        names = [(key.instance, front.authority.crn_of(key.instance))]
    else:
        names += [
            (n, front.authority.crn_of(n)) for n in front.tenants.service(key.prefix)._store.instances()
        ]
    return {
        "items": [
            {
                "crn": crn,
                "name": name,
                "service_plan_unique_id": "session-broker",
                "tags": [],
                "doc": {"extensions": {"session_broker": True}},
            }
            for name, crn in names
        ],
        "limit": 100,
    }


@router.get("/api/v1/catalog/{plan_id}", tags=["global search"])
def catalog_entry(plan_id: str, request: Request):
    _bearer(request)
    return {
        "id": plan_id[:64],
        "overview_ui": {"en": {"display_name": "session-broker"}},
        "metadata": {"pricing": {"type": "free"}},
    }
