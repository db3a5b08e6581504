"""One keep-alive HTTP connection to Braze's /users/track, and the classification of its answers.

Failure is classified once, here (DESIGN.md): callers only ever see a `TrackResponse` or one of
RetryableDeliveryError, SplittableDeliveryError, PermanentDeliveryError. httpx exceptions do not
escape this module, and the API key is never part of a message.
"""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from typing import Mapping

import httpx
import orjson

from rpi2braze.errors import PermanentDeliveryError, RetryableDeliveryError, SplittableDeliveryError
from rpi2braze.settings import BrazeSettings

TRACK_PATH = "/users/track"
EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is epoch seconds, below a delta
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
SPLITTABLE_STATUSES = frozenset({400, 413})
PERMANENT_STATUSES = frozenset({401, 403, 404, 405, 415})


@dataclass(frozen=True)
class TrackResponse:
    """A 2xx answer: `errors` are Braze's per-object error items (may be empty)."""

    status: int
    errors: tuple[dict, ...] = ()
    rate_remaining: int | None = None
    rate_reset_seconds: float | None = None


def reset_delay(value: str | None, now: float) -> float | None:
    """Given an X-RateLimit-Reset or Retry-After header, return seconds from now, or None.

    Braze documents the reset both as UTC epoch seconds and as seconds remaining: a value above
    10**9 is taken as epoch seconds.
    """
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number > EPOCH_THRESHOLD:
        number -= now
    return max(0.0, number)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError):
        return None


def classify(status: int, headers: Mapping[str, str], body: bytes, now: float | None = None) -> TrackResponse:
    """Given a /users/track answer, return a TrackResponse for 2xx or raise what the caller must do.

    `headers` must match names case-insensitively (httpx.Headers does). Raise RetryableDeliveryError
    for 408/429/5xx (with Braze's retry delay when given), SplittableDeliveryError for 400/413,
    PermanentDeliveryError for 401/403/404 and other 4xx that resending cannot fix.
    """
    now = time.time() if now is None else now
    message = _message(body)
    if 200 <= status < 300:
        return TrackResponse(
            status=status,
            errors=_errors(body),
            rate_remaining=_header_int(headers, "x-ratelimit-remaining"),
            rate_reset_seconds=reset_delay(headers.get("x-ratelimit-reset"), now),
        )
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = reset_delay(
            headers.get("x-ratelimit-retry-after") or headers.get("retry-after") or (
                headers.get("x-ratelimit-reset") if status == 429 else None),
            now,
        )
        raise RetryableDeliveryError(f"Braze answered {status}: {message}", status, retry_after)
    if status in SPLITTABLE_STATUSES:
        raise SplittableDeliveryError(f"Braze answered {status}: {message}", status)
    hint = " (check braze.api_key, its users.track permission and braze.rest_endpoint)" if status in (401, 403, 404) else ""
    raise PermanentDeliveryError(f"Braze answered {status}: {message}{hint}", status)


def _decode(body: bytes) -> object:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _message(body: bytes) -> str:
    decoded = _decode(body)
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return decoded["message"][:300]
    return body[:200].decode("utf-8", "replace") or "(empty body)"


def _errors(body: bytes) -> tuple[dict, ...]:
    decoded = _decode(body)
    if not isinstance(decoded, dict) or not isinstance(decoded.get("errors"), list):
        return ()
    return tuple(item if isinstance(item, dict) else {"type": str(item)} for item in decoded["errors"])


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus `ca_file` when given (a TLS-inspecting proxy's CA).

    Shared by every sender: building a context costs ~1 MB and ~50 ms of CPU, once per client otherwise.
    """
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _certificate_refused(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class BrazeClient:
    """A keep-alive connection to one Braze REST endpoint. Not shared between threads: one
    client per sender thread is ~4x faster than one shared client (DESIGN.md, measured costs)."""

    def __init__(self, settings: BrazeSettings):
        self._client = httpx.Client(
            base_url=settings.rest_endpoint.rstrip("/"),
            headers={
                "Authorization": f"Bearer {settings.api_key.reveal()}",
                "Content-Type": "application/json",
                "User-Agent": "rpi2braze",
            },
            timeout=httpx.Timeout(settings.timeout_seconds),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=tls_context(settings.ca_file),
            follow_redirects=False,
        )

    def track(self, body: bytes) -> TrackResponse:
        """POST one encoded {"attributes": [...]} body; return or raise as `classify` does.

        Connection errors, timeouts and garbled answers raise RetryableDeliveryError (status None).
        """
        try:
            response = self._client.post(TRACK_PATH, content=body)
        except httpx.RequestError as error:
            if _certificate_refused(error):  # retrying cannot fix it: stop the workspace and alert
                raise PermanentDeliveryError(f"Braze's TLS certificate is not trusted: {error} "
                                             "(check braze.rest_endpoint and braze.ca_file)") from None
            raise RetryableDeliveryError(f"no answer from Braze: {type(error).__name__}: {error}") from None
        return classify(response.status_code, response.headers, response.content)

    def close(self) -> None:
        self._client.close()
