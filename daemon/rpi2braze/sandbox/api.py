"""The checks a request to a Braze endpoint passes before the endpoint sees it, in Braze's order of failure.

Order for `POST /users/track`: latency, injected fault (drop, 5xx, 429: nothing is applied), API key (401),
rate limit (429), Content-Type (415), size (413), JSON syntax (400), then the endpoint; a slow request is
answered `slow_seconds` after it was applied. `POST /users/export/ids` passes the same checks except faults
and the rate limit, so tests can always read profiles back. A trailing slash on either path answers 403
(Braze: "can produce unexpected errors", listed under 403); any other path answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable

import orjson

from rpi2braze.sandbox import endpoints
from rpi2braze.sandbox.endpoints import Reply, fatal
from rpi2braze.sandbox.faults import Draw, Fault
from rpi2braze.sandbox.state import RequestRecord, SandboxState

TRACK_PATH = "/users/track"
EXPORT_PATH = "/users/export/ids"
PARSE_ERROR_MESSAGE = "Error while parsing request body. Please check your syntax."


@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request as the handler read it. `body` is None when it was over the size limit."""

    method: str
    path: str
    authorization: str | None
    content_type: str | None
    body: bytes | None
    arrived_monotonic: float
    arrived_wall_time: float


def handle_api(state: SandboxState, request: ApiRequest) -> Reply:
    """Answer one request to a Braze path and add it to the request log."""
    state.pause(state.injector.faults.latency_seconds)
    if state.stopping.is_set():
        return Reply(0)   # stopped during the latency: apply nothing, answer nothing
    fault = None
    if (request.method, request.path) == ("POST", TRACK_PATH):
        draw = state.injector.draw()
        fault = draw.fault
        reply = _track(state, request, draw)
    elif (request.method, request.path) == ("POST", EXPORT_PATH):
        reply = _export(state, request)
    elif request.path in (TRACK_PATH + "/", EXPORT_PATH + "/"):
        reply = fatal(403, "Forbidden: remove the trailing slash from the path")
    else:
        reply = fatal(404, "Not Found")
    state.record(_record_of(request, reply, fault))
    return reply


def _track(state: SandboxState, request: ApiRequest, draw: Draw) -> Reply:
    if draw.fault is not None:
        return _fault_reply(state, draw)
    if not _authorized(state, request.authorization):
        return _unauthorized()
    admission = state.rate_limiter.admit() if state.rate_limiter else None
    if admission is not None and not admission.allowed:
        return fatal(429, "Rate Limited").with_headers(admission.headers)
    reply = _decoded(request, lambda payload: endpoints.track(state.store, payload, state.max_objects))
    if draw.slow:
        state.pause(state.injector.faults.slow_seconds)
    return reply.with_headers(admission.headers) if admission is not None else reply


def _fault_reply(state: SandboxState, draw: Draw) -> Reply:
    if draw.fault is Fault.DROP:
        return Reply(0)
    if draw.fault is Fault.RATE_LIMITED:
        retry_after = str(state.injector.faults.retry_after_seconds)
        return fatal(429, "Rate Limited").with_headers((("X-Ratelimit-Retry-After", retry_after),))
    try:
        phrase = HTTPStatus(draw.error_status).phrase
    except ValueError:
        phrase = "Server Error"   # a 5xx without a standard name, such as Cloudflare's 520
    return fatal(draw.error_status, phrase)


def _export(state: SandboxState, request: ApiRequest) -> Reply:
    if not _authorized(state, request.authorization):
        return _unauthorized()
    return _decoded(request, lambda payload: endpoints.export_ids(state.store, payload))


def _decoded(request: ApiRequest, endpoint: Callable[[Any], Reply]) -> Reply:
    """Run the Content-Type, size and JSON checks, then return `endpoint(payload)`."""
    media_type = (request.content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return fatal(415, "Unsupported Media Type: send Content-Type: application/json")
    if request.body is None:
        return fatal(413, "Request Entity Too Large")
    try:
        payload = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return fatal(400, PARSE_ERROR_MESSAGE)
    return endpoint(payload)


def _authorized(state: SandboxState, authorization: str | None) -> bool:
    """Braze wants exactly `Authorization: Bearer KEY`; a quoted key or another scheme is a 401."""
    scheme, _, key = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and bool(key) and state.key_matches(key)


def _unauthorized() -> Reply:
    # Braze's wording varies; the key is never echoed back.
    return fatal(401, "Invalid API key")


def _record_of(request: ApiRequest, reply: Reply, fault: Fault | None) -> RequestRecord:
    payload = None
    if request.path == TRACK_PATH and request.body is not None:
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            payload = None
    return RequestRecord(
        monotonic=request.arrived_monotonic,
        wall_time=request.arrived_wall_time,
        method=request.method,
        path=request.path,
        status=reply.status,
        external_ids=endpoints.external_ids_of(payload),
        object_count=endpoints.object_count_of(payload),
        fault=fault.value if fault else None,
    )
