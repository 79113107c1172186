"""Request bodies of the REST API as pydantic models: a wrong type, a missing field or an
unknown field is a 400 naming it, before any route code runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

ID = r"^[A-Za-z0-9_.-]{1,64}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionCreate(Strict):
    """``POST /sessions``: ``dedicated`` is IBM's word for a session, ``batch`` for a batch."""

    mode: Literal["dedicated", "batch"] = "dedicated"
    backend: str = Field(min_length=1, max_length=64)
    instance: str | None = Field(default=None, max_length=512)
    max_ttl: StrictInt | None = Field(default=None, ge=1)


class SessionUpdate(Strict):
    """``PATCH /sessions/{id}``: ``{"accepting_jobs": false}`` closes the session."""

    accepting_jobs: StrictBool


class JobCreate(Strict):
    """``POST /jobs`` as the client writes it (``cost`` is its ``max_execution_time``)."""

    program_id: str = Field(min_length=1, max_length=64)
    backend: str | None = Field(default=None, max_length=64)
    params: dict[str, Any]
    session_id: str | None = Field(default=None, pattern=ID)
    tags: list[str] | None = None  # limits: SESSION_BROKER_API_MAX_TAGS, _MAX_TAG_LENGTH
    cost: StrictInt | None = Field(default=None, ge=1)
    log_level: str | None = Field(default=None, max_length=16)
    private: StrictBool | None = None
    runtime: str | None = Field(default=None, max_length=256)
    start_session: StrictBool | None = None
    session_time: StrictInt | None = None
    calibration_id: str | None = Field(default=None, max_length=128)


class TagsUpdate(Strict):
    tags: list[str]  # limits: SESSION_BROKER_API_MAX_TAGS, _MAX_TAG_LENGTH


class SearchRequest(BaseModel):
    """Global Search (``POST /v3/resources/search``): the client asks for quantum instances."""

    model_config = ConfigDict(extra="allow")
    query: str = Field(default="", max_length=1024)
    fields: list[str] | None = None
