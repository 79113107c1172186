"""What one request and one connection may hold of the web front (``SESSION_BROKER_API_*``).

* ``RequestGuard`` (ASGI): reads every request body itself, before any route runs, under
  two limits. Its size: a job submission (``POST /jobs``) may carry 2 x
  ``SESSION_BROKER_MAX_PAYLOAD_BYTES``, every other request ``MAX_REQUEST_BYTES``; a declared
  ``Content-Length`` over the limit is refused before a byte is read, a chunked body as soon
  as it passes the limit (413), so no request holds more than its limit in memory. Its time:
  the body must arrive within ``READ_TIMEOUT`` (408, and the connection is closed).
  A job submission's token is checked before its body is read (401/403), so only a caller
  with a key can make the server hold a job-sized body. Reading the body here also keeps
  our errors ours: FastAPI turns any exception raised while it reads a body into a 400.
* ``guarded_protocol`` (uvicorn): its h11 protocol with a deadline for the request line and
  headers (``HEADER_TIMEOUT``), counted from the moment the connection opens or the previous
  response ends: a connection that sends nothing, sends its headers a byte at a time
  (slowloris), or keeps sending the body of a refused request, is closed when it passes.
  uvicorn itself closes idle keep-alive connections (``KEEP_ALIVE``), answers 503 past
  ``MAX_CONNECTIONS`` (its ``limit_concurrency``), and h11 refuses a request line and
  headers still incomplete past 16 KiB (400). h11, not httptools: httptools collects
  headers with no limit.
* ``check_tags``: IBM's limits on job tags (8 tags of at most 86 characters by default).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from session_broker.api.errors import ApiError, error_response

JOB_SUBMIT_PATHS = frozenset({"/api/v1/jobs", "/experimental/api/v1/jobs"})
CLOSE = {"Connection": "close"}


class RequestGuard:
    """The body of every HTTP request, read under a size and a time limit (see above)."""

    def __init__(self, app, *, job_limit: int, limit: int, read_timeout: float, authority=None):
        self.app, self.job_limit, self.limit, self.read_timeout = app, job_limit, limit, read_timeout
        self.authority = authority

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        submit = scope["method"] == "POST" and scope["path"].rstrip("/") in JOB_SUBMIT_PATHS
        limit = self.job_limit if submit else self.limit
        what = "a job submission" if submit else "this request"
        if submit and self.authority is not None:
            # a job-sized body is read only for a caller with a valid token (the route
            # checks it again): without one, no client makes us hold more than ``limit``
            try:
                await self._check_token(scope)
            except ApiError as exc:
                return await self._refuse(exc.status, exc.message, exc.code, scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(
                413,
                f"the body of {what} is over the {limit} byte limit",
                "payload_too_large",
                scope,
                receive,
                send,
            )
        chunks, seen = [], 0
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None  # the client left: nothing to answer
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > limit:
                        return await self._refuse(
                            413,
                            f"the body of {what} is over the {limit} byte limit",
                            "payload_too_large",
                            scope,
                            receive,
                            send,
                        )
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await self._refuse(
                408,
                f"the request body did not arrive within {self.read_timeout:g} s",
                "request_timeout",
                scope,
                receive,
                send,
            )
        body = b"".join(chunks)
        del chunks
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to leave

        await self.app(scope, replay, send)

    async def _check_token(self, scope) -> None:
        if self.authority._secret is None:  # first request only: the secret is in Redis
            try:
                await asyncio.to_thread(self.authority.secret)
            except Exception:  # noqa: BLE001 - Redis down: the route answers that (503)
                return
        self.authority.check_request(Request(scope))

    @staticmethod
    async def _refuse(status, message, code, scope, receive, send):
        # a 413 leaves the connection open: uvicorn reads and drops the rest of the body (no
        # memory held; the header deadline bounds the time), so its sender gets to read the
        # answer instead of a reset. A body too slow to arrive is not waited for again.
        await error_response(status, message, code, headers=CLOSE if status == 408 else None)(
            scope, receive, send
        )


def guarded_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a ``header_timeout`` deadline for each request's head."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = None
            self._arm_deadline()

        def _arm_deadline(self) -> None:
            self._cancel_deadline()
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:
                self._cancel_deadline()  # the next request's line and headers are in

        def on_response_complete(self) -> None:
            # from here: what is left of this request's body (a refused one is read and
            # dropped, so that its sender reads our answer) and the next request's head
            if not self.transport.is_closing():
                self._arm_deadline()
            super().on_response_complete()  # may start a pipelined request: that cancels it

        def connection_lost(self, exc) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

    return GuardedH11Protocol


def check_tags(tags, max_tags: int, max_length: int) -> list[str]:
    """``tags`` if within the limits; else a 400 that names the limit and its setting."""
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ApiError(400, "tags must be a list of strings", "invalid_tags")
    if len(tags) > max_tags:
        raise ApiError(
            400,
            f"a job may have at most {max_tags} tags, not {len(tags)} (SESSION_BROKER_API_MAX_TAGS)",
            "invalid_tags",
        )
    for i, tag in enumerate(tags):
        if len(tag) > max_length:
            raise ApiError(
                400,
                f"tags[{i}] has {len(tag)} characters; a tag may have at most "
                f"{max_length} (SESSION_BROKER_API_MAX_TAG_LENGTH)",
                "invalid_tags",
            )
    return tags
